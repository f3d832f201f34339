//! API economy under EC2's ordinary delays: lags waited out instead of discovered by failing
//! mutating calls, and what EC2 lets us batch, batched.

use std::sync::Arc;

use aws_backend::port::Operation;
use backend_api::{AlmanacTick, Backend, Clock, ComputeGrant, GrantId};
use sim_ec2::FaultConfig;

use crate::backend_sim::{Rig, manifest, us_east};

fn calls(rig: &Rig, op: Operation) -> u64 {
    rig.sim.stats().calls.get(&op).copied().unwrap_or(0)
}

/// Twenty grants ending in the same instant are terminated with one TerminateInstances call, on
/// time.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn grants_ending_in_the_same_instant_share_one_terminate_call() {
    let rig = Rig::new(41, FaultConfig::default());
    let backend = rig.backend().await;
    let m = Arc::new(manifest());
    let valid_to = AlmanacTick(rig.now_tick().0 + 900);
    let mut provisions = Vec::new();
    for i in 0..20u8 {
        let (backend, m, now) = (backend.clone(), m.clone(), rig.now_tick());
        provisions.push(tokio::spawn(async move {
            let g = ComputeGrant { id: GrantId([0x40 + i; 32]), manifest: &m, valid_from: now, valid_to };
            backend.provision(&g, &us_east()).await
        }));
    }
    for p in provisions {
        p.await.expect("task").expect("provision");
    }
    let before = calls(&rig, Operation::TerminateInstances);
    let deadline_ms = rig.cfg.almanac.tick_to_unix_ms(valid_to);
    rig.clock.sleep_until_unix_ms(deadline_ms + 5_000).await;
    let sent = calls(&rig, Operation::TerminateInstances) - before;
    assert_eq!(sent, 1, "20 instances ending at once took {sent} TerminateInstances calls");
    for i in 0..20u8 {
        let instances = rig.instances_of(&GrantId([0x40 + i; 32]));
        let ended = instances[0].up_until_ms().expect("terminated");
        assert!(ended <= deadline_ms + 1_000, "grant {i} ended {} ms late", ended - deadline_ms);
    }
}

/// Once the backend has learned a region's lags, a new group is authorized with about one
/// call and deleted with about one: EC2's visibility and DependencyViolation lags are waited
/// out, not discovered by failing mutating calls.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn learned_lags_spare_the_mutating_calls() {
    let rig = Rig::new(42, FaultConfig::default());
    let backend = rig.backend().await;
    let m = manifest();
    let lifecycle = |i: u8| {
        let (backend, rig, m) = (&backend, &rig, &m);
        async move {
            let g = ComputeGrant {
                id: GrantId([i; 32]),
                manifest: m,
                valid_from: rig.now_tick(),
                valid_to: AlmanacTick(rig.now_tick().0 + 600),
            };
            let instance = backend.provision(&g, &us_east()).await.expect("provision");
            rig.clock.sleep_ms(60_000).await;
            backend.terminate(&instance).await.expect("terminate");
        }
    };
    // The first grants teach the backend the region's lags (it starts low, for regions without).
    for i in 0..10u8 {
        lifecycle(0x60 + i).await;
    }
    let before = rig.sim.stats();
    let grants = 40u8;
    for i in 0..grants {
        lifecycle(0x80 + i).await;
    }
    let after = rig.sim.stats();
    let calls =
        |op: Operation| after.calls.get(&op).copied().unwrap_or(0) - before.calls.get(&op).copied().unwrap_or(0);
    let errors =
        |code: &str| after.errors.get(code).copied().unwrap_or(0) - before.errors.get(code).copied().unwrap_or(0);
    let n = u64::from(grants);
    let (authorize, run, delete) = (
        calls(Operation::AuthorizeSecurityGroupIngress),
        calls(Operation::RunInstances),
        calls(Operation::DeleteSecurityGroup),
    );
    let wasted = errors("InvalidGroup.NotFound") + errors("InvalidKeyPair.NotFound") + errors("DependencyViolation");
    assert!(authorize <= n * 12 / 10, "{authorize} AuthorizeSecurityGroupIngress for {n} groups");
    assert!(run <= n * 105 / 100, "{run} RunInstances for {n} grants");
    assert!(delete <= n * 12 / 10, "{delete} DeleteSecurityGroup for {n} groups");
    assert!(wasted <= n / 4, "{wasted} calls failed on a lag");
}

/// Holds every DescribeInstanceTypeOfferings for a second of virtual time, as a real endpoint
/// takes a round trip, and counts them.
struct SlowOfferings {
    clock: Arc<dyn Clock>,
    asked: std::sync::atomic::AtomicU64,
}

impl tests::gated::Gate for SlowOfferings {
    async fn pass<T: Send>(
        &self,
        op: Operation,
        call: impl std::future::Future<Output = Result<T, aws_backend::port::Ec2Error>> + Send,
    ) -> Result<T, aws_backend::port::Ec2Error> {
        if op == Operation::DescribeInstanceTypeOfferings {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.clock.sleep_ms(1_000).await;
        }
        call.await
    }
}

/// A burst of grants on a cold backend asks for a region's zone offerings once: the first asks,
/// the others wait for its answer instead of asking too (the simulator answers without a
/// round trip, so the port here holds each answer for a second).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_burst_on_a_cold_backend_asks_for_the_zone_offerings_once() {
    let rig = Rig::new(43, FaultConfig::default());
    let gate = SlowOfferings { clock: rig.clock.clone(), asked: Default::default() };
    let port = Arc::new(tests::gated::GatedPort::with_gate(rig.sim.clone(), gate));
    let backend = rig.backend_over(port.clone()).await;
    let m = Arc::new(manifest());
    let valid_to = AlmanacTick(rig.now_tick().0 + 900);
    let mut provisions = Vec::new();
    for i in 0..10u8 {
        let (backend, m, now) = (backend.clone(), m.clone(), rig.now_tick());
        provisions.push(tokio::spawn(async move {
            let g = ComputeGrant { id: GrantId([0x60 + i; 32]), manifest: &m, valid_from: now, valid_to };
            backend.provision(&g, &us_east()).await
        }));
    }
    for p in provisions {
        p.await.expect("task").expect("provision");
    }
    let asked = port.gate().asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 1, "10 grants at once asked for us-east-1's offerings {asked} times");
}
