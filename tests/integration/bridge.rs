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

/// A provision that waits this long for its instance to run is still in flight when a short
/// drain runs out.
const SLOW_LAUNCH_MS: u64 = 20 * 60_000;

/// The grant's state as the store's records fold it (what the next process replays).
fn replayed(rig: &Rig, id: &backend_api::GrantId) -> Option<usage_ledger::GrantState> {
    usage_ledger::fold(&rig.store.records()).expect("the records fold").remove(id)
}

/// Starts a bridge with a ledger of its own, replayed from the rig's store.
fn start_own(rig: &Rig, incarnation: u64, settings: Settings) -> (Bridge, tokio::task::JoinHandle<Stopped>) {
    let bridge = Bridge::new(rig.clock.clone());
    let ledger = Ledger::open(aws_backend::DynStore(Box::new(rig.store.clone())), rig.store.records())
        .expect("the ledger replays");
    let run = tokio::spawn({
        let (bridge, open) = (bridge.clone(), open(rig, incarnation));
        async move { bridge.run(Ledgers::Own(ledger), open, settings, Arc::new(Quiet)).await }
    });
    (bridge, run)
}

/// Waits until `bridge` has a provision in flight, for at most a virtual minute.
async fn until_in_flight(bridge: &Bridge, rig: &Rig) {
    for _ in 0..600 {
        if bridge.in_flight() > 0 {
            return;
        }
        rig.clock.sleep_ms(100).await;
    }
    panic!("no provision in flight");
}

/// Starts provisioning `g` on its own task and returns once its instance is pending, two
/// minutes into a launch that takes longer.
async fn provision_in_flight(
    bridge: &Bridge,
    rig: &Rig,
    g: &backend_api::ComputeGrant<'_>,
    m: &backend_api::ComputeManifest,
) -> tokio::task::JoinHandle<anyhow::Result<backend_api::ProvisionedInstance>> {
    let in_flight = tokio::spawn({
        let (bridge, m, id, valid_from, valid_to) = (bridge.clone(), m.clone(), g.id, g.valid_from, g.valid_to);
        async move {
            let g = backend_api::ComputeGrant { id, manifest: &m, valid_from, valid_to };
            bridge.provision(&g, &us_east()).await
        }
    });
    until_in_flight(bridge, rig).await;
    // The launch is under way: the instance is pending.
    rig.clock.sleep_ms(2 * 60_000).await;
    in_flight
}

#[tokio::test(start_paused = true)]
async fn a_drain_out_of_time_rolls_the_provision_back_as_retryable_and_it_provisions_again() {
    let faults =
        FaultConfig { launch_delay_ms_min: SLOW_LAUNCH_MS, launch_delay_ms_max: SLOW_LAUNCH_MS, ..FaultConfig::none() };
    let rig = Rig::new(44, faults);
    let short = Settings { reaper_every_ms: 5 * 60_000, drain_ms: 60_000 };
    let (bridge, run) = start_own(&rig, 1, short);
    until_phase(&bridge, &rig, Phase::Admitting).await;
    let m = manifest();
    let g = grant(5, &m, rig.now_tick(), 7_200);
    let in_flight = provision_in_flight(&bridge, &rig, &g, &m).await;

    bridge.drain();
    let day = std::time::Duration::from_secs(24 * 3_600);
    let err = tokio::time::timeout(day, in_flight)
        .await
        .expect("the provision in flight ends with the drain, not a virtual day later")
        .expect("joined")
        .expect_err("the drain ran out of time before the instance ran");
    assert!(unavailable(&err) && format!("{err:#}").contains("drained"), "{err:#}");
    match run.await.expect("joined") {
        Stopped::Drained { cut_short: 1 } => {}
        other => panic!("expected a drain that cut one provision short, got {other:?}"),
    }
    let state = replayed(&rig, &g.id).expect("the grant is in the ledger");
    assert!(state.retry_allowed(), "the rolled-back provision must be retryable: {state:?}");

    // The next process finishes what the rollback left, and the grant provisions again.
    let (next, next_run) = start_own(&rig, 2, settings());
    until_phase(&next, &rig, Phase::Admitting).await;
    let mut provisioned = None;
    for _ in 0..60 {
        match next.provision(&g, &us_east()).await {
            Ok(instance) => {
                provisioned = Some(instance);
                break;
            }
            Err(err) if err.downcast_ref::<BackendError>().is_some_and(BackendError::is_retryable) => {
                rig.clock.sleep_ms(30_000).await;
            }
            Err(err) => panic!("sent again, the grant was refused for good: {err:#}"),
        }
    }
    let instance = provisioned.expect("the grant provisioned again within half an hour");
    assert!(replayed(&rig, &g.id).is_some_and(|s| s.attempt() == 1), "a second attempt");
    next.terminate(&instance).await.expect("terminated");
    next.drain();
    assert!(matches!(next_run.await.expect("joined"), Stopped::Drained { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_provision_cut_by_a_crash_is_rolled_back_by_recovery_as_retryable() {
    let faults =
        FaultConfig { launch_delay_ms_min: SLOW_LAUNCH_MS, launch_delay_ms_max: SLOW_LAUNCH_MS, ..FaultConfig::none() };
    let rig = Rig::new(45, faults);
    let (bridge, run) = start_own(&rig, 1, settings());
    until_phase(&bridge, &rig, Phase::Admitting).await;
    let m = manifest();
    let g = grant(6, &m, rig.now_tick(), 7_200);
    let in_flight = provision_in_flight(&bridge, &rig, &g, &m).await;
    // The process dies: its run, the provision's task and the backend's own tasks.
    run.abort();
    in_flight.abort();
    let _ = run.await;
    let _ = in_flight.await;
    if let Some(backend) = bridge.backend() {
        backend.shutdown();
    }
    assert!(replayed(&rig, &g.id).is_some_and(|s| !s.is_settled() && !s.retry_allowed()), "mid-provision");

    let (next, next_run) = start_own(&rig, 2, settings());
    until_phase(&next, &rig, Phase::Admitting).await;
    for _ in 0..120 {
        if replayed(&rig, &g.id).is_some_and(|s| s.is_settled()) {
            break;
        }
        rig.clock.sleep_ms(10_000).await;
    }
    let state = replayed(&rig, &g.id).expect("in the ledger");
    assert!(state.is_settled() && state.retry_allowed(), "recovery rolls it back as retryable: {state:?}");
    let instance = next.provision(&g, &us_east()).await.expect("the grant provisions again");
    next.terminate(&instance).await.expect("terminated");
    next.drain();
    assert!(matches!(next_run.await.expect("joined"), Stopped::Drained { .. }));
}
