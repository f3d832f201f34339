//! Crash recovery: the backend dies at any EC2 call of provision, watch or terminate (before or
//! after the call takes effect), is reopened on the same ledger and the same simulated EC2, and
//! recovery plus one reaper pass leave nothing behind, overrun no deadline and never launch a
//! second instance.

use std::sync::Arc;

use aws_backend::port::Operation;
use backend_api::{Backend, Clock, ComputeGrant};
use proptest::prelude::*;
use sim_ec2::FaultConfig;
use tests::crashpoint::{CrashPoint, CrashingPort};

use crate::backend_sim::{Rig, grant, manifest, us_east};

/// Crashes a lifecycle at `crash_at`, then (with `recovery_crash_at`) the recovery that follows
/// at that call of its own, then recovers for good. Returns whether the first crash happened
/// (a lifecycle may end before it makes that many calls).
fn crash_and_recover(
    seed: u64,
    crash_at: CrashPoint,
    effect_first: bool,
    faults: FaultConfig,
    recovery_crash_at: Option<u64>,
) -> Result<bool, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    runtime.block_on(async move {
        let rig = Rig::new(seed, faults);
        let m = manifest();
        let g = grant(0x42, &m, rig.now_tick(), 1_200);
        let (id, valid_from, valid_to) = (g.id, g.valid_from, g.valid_to);
        let crashing = Arc::new(CrashingPort::disarmed(rig.sim.clone(), crash_at, effect_first));
        let doomed = rig.backend_over(crashing.clone()).await;
        crashing.arm();
        let m2 = m.clone();
        let lifecycle = tokio::spawn(async move {
            let g = ComputeGrant { id, manifest: &m2, valid_from, valid_to };
            if let Ok(instance) = doomed.provision(&g, &us_east()).await {
                let _ = doomed.watch_until_exit(&instance, valid_to).await;
                let _ = doomed.terminate(&instance).await;
            }
        });
        while !crashing.crashed() && !lifecycle.is_finished() {
            rig.clock.sleep_ms(250).await;
        }
        lifecycle.abort();
        let _ = lifecycle.await;
        let crashed = crashing.crashed();

        // Recovery itself dies at one of its calls, before or after the call takes effect.
        if let Some(at) = recovery_crash_at.filter(|_| crashed) {
            let crashing = Arc::new(CrashingPort::disarmed(rig.sim.clone(), CrashPoint::Call(at), effect_first));
            let doomed = rig.backend_over(crashing.clone()).await;
            crashing.arm();
            let recovering = tokio::spawn(doomed.recover());
            while !crashing.crashed() && !recovering.is_finished() {
                rig.clock.sleep_ms(250).await;
            }
            recovering.abort();
            let _ = recovering.await;
        }

        // The process is back: recovery, then a reaper pass once the orphan grace has passed.
        let backend = rig.backend().await;
        let report = backend.recover().await;
        prop_assert!(report.failed.is_empty(), "recovery failed: {:?}", report.failed);
        rig.clock.sleep_ms(rig.cfg.reaper_grace_ms + 60_000).await;
        let reaped = backend.reap(false).await;
        prop_assert!(reaped.errors.is_empty(), "reaper errors: {:?}", reaped.errors);

        if let Some(state) = backend.grant_state(&g.id) {
            prop_assert!(state.is_settled(), "grant left in phase {:?}", state.phase());
        }
        prop_assert!(rig.left_of(&g.id).is_empty(), "left behind: {:?}", rig.left_of(&g.id));
        let instances = rig.instances_of(&g.id);
        prop_assert!(instances.len() <= 1, "{} instances for one grant", instances.len());
        let limit = rig.cfg.almanac.tick_to_unix_ms(g.valid_to) + rig.cfg.deadline_grace_ms();
        for instance in &instances {
            let up_until = instance.up_until_ms().unwrap_or_else(|| rig.clock.now_unix_ms());
            prop_assert!(up_until <= limit, "instance up until {up_until}, past valid_to + grace {limit}");
        }
        Ok(crashed)
    })
}

#[test]
fn a_crash_at_every_call_of_a_quiet_lifecycle_is_recovered() {
    // Without faults a lifecycle makes a fixed sequence of calls; crash at each in turn.
    let mut points: Vec<CrashPoint> = (0..24).map(CrashPoint::Call).collect();
    // The teardown's calls come after hundreds of polls: reach them by operation.
    points.extend(
        [
            Operation::TerminateInstances,
            Operation::GetNetworkUsage,
            Operation::DeleteKeyPair,
            Operation::DeleteSecurityGroup,
        ]
        .map(CrashPoint::Operation),
    );
    for crash_at in points {
        for effect_first in [false, true] {
            let crashed = crash_and_recover(11, crash_at, effect_first, FaultConfig::default(), None)
                .unwrap_or_else(|e| panic!("crash at {crash_at:?} (effect first: {effect_first}): {e}"));
            assert!(crashed, "the lifecycle never reached {crash_at:?}: the case tested nothing");
        }
    }
}

#[test]
fn a_crash_during_recovery_is_recovered_too() {
    // Crash the lifecycle once it has launched, then crash the recovery at each of its first calls.
    for recovery_crash_at in 0..8 {
        for effect_first in [false, true] {
            let crashed = crash_and_recover(
                13,
                CrashPoint::Operation(Operation::RunInstances),
                effect_first,
                FaultConfig::default(),
                Some(recovery_crash_at),
            )
            .unwrap_or_else(|e| panic!("recovery crash at {recovery_crash_at}: {e}"));
            assert!(crashed, "the lifecycle never reached RunInstances");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_crash_at_any_call_under_faults_is_recovered(
        seed in any::<u64>(),
        crash_at in 0u64..12,
        effect_first in any::<bool>(),
        swarm_seed in any::<u64>(),
        recovery_crash_at in proptest::option::of(0u64..12),
    ) {
        use rand_chacha::rand_core::SeedableRng;
        let faults = FaultConfig::swarm(&mut rand_chacha::ChaCha8Rng::seed_from_u64(swarm_seed));
        let crashed = crash_and_recover(seed, CrashPoint::Call(crash_at), effect_first, faults, recovery_crash_at)?;
        // Provision makes at least a dozen calls whatever the faults, and the watch polls on.
        prop_assert!(crashed, "no crash at call {crash_at}: the case tested nothing");
    }
}
