//! The bridge runtime (`aws_backend::bridge`) on the simulator: it admits grants only once it
//! acts, refuses them retryably while it stands by or drains, lets a provision in flight finish
//! before a drain ends, and gives the group's lease up so that a standby takes over at once.

use std::sync::Arc;

use aws_backend::bridge::{Bridge, Ledgers, Open, Phase, Quiet, Settings, Stopped};
use aws_backend::standby::{LeaseTable, LeaseTimes};
use aws_backend::{BackendLedger, TestSwitches};
use backend_api::{Backend, BackendError, Clock};
use sim_ec2::FaultConfig;
use tests::checkers::fence::FenceLog;
use tests::fixture;
use tests::framestore::FrameStore;
use tests::replicas::SimLeases;
use usage_ledger::Ledger;

use crate::backend_sim::{Rig, grant, manifest, us_east};

/// A drain's bound in these tests: longer than a provision takes on the simulator.
const DRAIN_MS: u64 = 10 * 60_000;

fn open(rig: &Rig, incarnation: u64) -> Open {
    let (cfg, port, clock) =
        (rig.cfg.clone(), rig.sim.clone() as Arc<dyn aws_backend::port::Ec2Port>, rig.clock.clone());
    Box::new(move |ledger: BackendLedger, tenure| {
        Box::pin(async move {
            fixture::backend_with(&cfg, port, clock, ledger, 7, incarnation, TestSwitches::default(), tenure).await
        })
    })
}

fn settings() -> Settings {
    Settings { reaper_every_ms: 5 * 60_000, drain_ms: DRAIN_MS }
}

fn unavailable(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<BackendError>(), Some(e @ BackendError::Unavailable { .. }) if e.is_retryable())
}

async fn until_phase(bridge: &Bridge, rig: &Rig, phase: Phase) {
    for _ in 0..600 {
        if bridge.phase() == phase {
            return;
        }
        rig.clock.sleep_ms(100).await;
    }
    panic!("the bridge never reached {phase:?}; it is {:?}", bridge.phase());
}

#[tokio::test(start_paused = true)]
async fn a_drain_refuses_new_grants_and_lets_the_one_in_flight_finish() {
    let rig = Rig::new(41, FaultConfig::default());
    let bridge = Bridge::new(rig.clock.clone());
    let ledger = Ledger::open(aws_backend::DynStore(Box::new(rig.store.clone())), Vec::new()).expect("an empty ledger");
    let run = tokio::spawn({
        let (bridge, open) = (bridge.clone(), open(&rig, 0));
        async move { bridge.run(Ledgers::Own(ledger), open, settings(), Arc::new(Quiet)).await }
    });
    until_phase(&bridge, &rig, Phase::Admitting).await;

    let m = manifest();
    let now = rig.now_tick();
    let in_flight = tokio::spawn({
        let bridge = bridge.clone();
        let m = m.clone();
        async move { bridge.provision(&grant(1, &m, now, 3_600), &us_east()).await }
    });
    for _ in 0..100 {
        if bridge.in_flight() > 0 || in_flight.is_finished() {
            break;
        }
        rig.clock.sleep_ms(10).await;
    }
    assert_eq!(bridge.in_flight(), 1, "the provision is in flight");
    bridge.drain();
    assert_eq!(bridge.phase(), Phase::Admitting, "the phase changes when the run sees the drain");
    let refused = bridge.provision(&grant(2, &m, now, 3_600), &us_east()).await.expect_err("a draining bridge refuses");
    assert!(unavailable(&refused), "refused as unavailable, retryable: {refused:#}");
    assert!(format!("{refused:#}").contains("draining"), "{refused:#}");

    let instance = in_flight.await.expect("joined").expect("the provision in flight finishes");
    assert!(!instance.instance_id.is_empty());
    match run.await.expect("joined") {
        Stopped::Drained { cut_short: 0 } => {}
        other => panic!("expected a clean drain, got {other:?}"),
    }
    assert_eq!(bridge.phase(), Phase::Stopped);
    // A stopped bridge acts no more: what it provisioned is the next process's (its recovery)
    // and the guest's (its power-off), as after a crash.
    let refused = bridge.terminate(&instance).await.expect_err("a stopped bridge refuses");
    assert!(unavailable(&refused), "{refused:#}");
}

#[tokio::test(start_paused = true)]
async fn a_standby_refuses_grants_and_takes_over_at_once_when_the_holder_drains() {
    let rig = Rig::new(42, FaultConfig::default());
    let store = FrameStore::new(None);
    let times = LeaseTimes::for_duration(60_000);
    let table = |clock: Arc<dyn Clock>| {
        Arc::new(SimLeases::new(store.clone(), clock, FenceLog::default())) as Arc<dyn LeaseTable>
    };
    let start = |holder: &str, incarnation: u64| {
        let bridge = Bridge::new(rig.clock.clone());
        let ledgers = Ledgers::Group { table: table(rig.clock.clone()), holder: holder.to_string(), times };
        let run = tokio::spawn({
            let (bridge, open) = (bridge.clone(), open(&rig, incarnation));
            async move { bridge.run(ledgers, open, settings(), Arc::new(Quiet)).await }
        });
        (bridge, run)
    };
    let (first, first_run) = start("bridge-a", 1);
    until_phase(&first, &rig, Phase::Admitting).await;
    let (second, second_run) = start("bridge-b", 2);
    until_phase(&second, &rig, Phase::StandingBy).await;

    let m = manifest();
    let refused =
        second.provision(&grant(3, &m, rig.now_tick(), 3_600), &us_east()).await.expect_err("a standby refuses");
    assert!(unavailable(&refused) && format!("{refused:#}").contains("stands by"), "{refused:#}");

    first.drain();
    let drained_at = rig.clock.now_unix_ms();
    assert!(matches!(first_run.await.expect("joined"), Stopped::Drained { cut_short: 0 }));
    until_phase(&second, &rig, Phase::Admitting).await;
    let took = rig.clock.now_unix_ms() - drained_at;
    assert!(
        took < times.duration_ms / 2,
        "the standby took over {took} ms after the drain: it waited for the lease to expire instead of its release"
    );
    second.drain();
    assert!(matches!(second_run.await.expect("joined"), Stopped::Drained { cut_short: 0 }));
}

#[tokio::test(start_paused = true)]
async fn a_backend_shut_down_refuses_calls_instead_of_waiting_forever() {
    let rig = Rig::new(43, FaultConfig::default());
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(4, &m, rig.now_tick(), 3_600);
    let instance = backend.provision(&g, &us_east()).await.expect("provisioned");
    backend.shutdown();
    // Its pollers are stopped: a call that waits on one would wait forever.
    let day = std::time::Duration::from_secs(24 * 3_600);
    for (what, outcome) in [
        ("terminate", tokio::time::timeout(day, backend.terminate(&instance)).await.map(|r| r.map(|_| ()))),
        (
            "watch_until_exit",
            tokio::time::timeout(day, backend.watch_until_exit(&instance, g.valid_to)).await.map(|r| r.map(|_| ())),
        ),
    ] {
        let err = outcome.unwrap_or_else(|_| panic!("{what} on a shut-down backend waited a virtual day"));
        let err = err.expect_err("a shut-down backend refuses");
        assert!(unavailable(&err), "{what}: {err:#}");
    }
}
