//! The guest's backstop: with the bridge down across a grant's deadline, the guest's own
//! power-off at `valid_to + deadline_grace_s` ends the instance (the shutdown behaviour turns it
//! into termination), and the restarted bridge settles the grant, bills it and leaves nothing.

use aws_backend::port::InstanceState;
use backend_api::{Backend, Clock};
use sim_ec2::FaultConfig;

use crate::backend_sim::{Rig, grant, manifest, us_east};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_bridge_down_for_three_hours_across_the_deadline_finds_the_guest_ended_its_instance() {
    let rig = Rig::new(31, FaultConfig::default());
    let m = manifest();
    let g = grant(0x31, &m, rig.now_tick(), 600);
    let valid_to_ms = rig.cfg.almanac.tick_to_unix_ms(g.valid_to);
    let poweroff_ms = valid_to_ms + rig.cfg.deadline_grace_ms();
    let doomed = rig.backend().await;
    let instance = doomed.provision(&g, &us_east()).await.expect("provision");
    let watching = {
        let (backend, instance, valid_to) = (doomed.clone(), instance.clone(), g.valid_to);
        tokio::spawn(async move { backend.watch_until_exit(&instance, valid_to).await })
    };
    // The bridge dies five minutes before the deadline and is back three hours later.
    rig.clock.sleep_until_unix_ms(valid_to_ms - 300_000).await;
    watching.abort();
    let _ = watching.await;
    doomed.shutdown();
    drop(doomed);
    rig.clock.sleep_ms(3 * 3_600_000).await;

    // The guest powered off at its time, and EC2 terminated the instance.
    let truth = &rig.instances_of(&g.id)[0];
    assert_eq!(truth.state, InstanceState::Terminated, "the instance outlived its guest: {truth:?}");
    assert_eq!(truth.up_until_ms(), Some(poweroff_ms));
    let ending = truth.intervals.iter().find(|i| i.state == InstanceState::ShuttingDown).expect("it shut down");
    assert_eq!(ending.reason_code.as_deref(), Some("Client.InstanceInitiatedShutdown"));
    let guest = rig.sim.guest_of(&truth.instance_id).expect("known");
    assert_eq!(guest.poweroff_at_ms, Some(poweroff_ms), "the user data carries valid_to + grace");

    // The bridge is back: it settles the grant and leaves nothing behind.
    let backend = rig.backend().await;
    let report = backend.recover().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    rig.clock.sleep_ms(rig.cfg.reaper_grace_ms + 60_000).await;
    let reaped = backend.reap(false).await;
    assert!(reaped.errors.is_empty(), "{:?}", reaped.errors);
    let state = backend.grant_state(&g.id).expect("known");
    assert!(state.is_settled(), "grant left in phase {:?}", state.phase());
    assert!(rig.left_of(&g.id).is_empty(), "left behind: {:?}", rig.left_of(&g.id));
    assert_eq!(rig.instances_of(&g.id).len(), 1, "one instance for the grant");

    // The bill: what the instance ran up to its grant's deadline (the grace after it, and the
    // downtime, are the bridge's, not the requester's; docs/metering.md), never the hours the
    // bridge was down.
    let running_from = truth.intervals.iter().find(|i| i.state == InstanceState::Running).expect("it ran").from_ms;
    let billed_s = state.usage().cpu_seconds / u64::from(truth.vcpus);
    let owed_s = (valid_to_ms - running_from).div_ceil(1_000);
    let ran_s = truth.running_ms.div_ceil(1_000);
    assert!(billed_s <= ran_s, "billed {billed_s} s for an instance that ran {ran_s} s");
    assert!(billed_s.abs_diff(owed_s) <= 5, "billed {billed_s} s, the run up to valid_to is {owed_s} s");
}
