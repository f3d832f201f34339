//! The AWS backend on the simulator: the conformance suite, and the EC2 behaviours moto lacks
//! (deadlines, DependencyViolation, crashes around RunInstances, failed launches, eventual
//! consistency).

use std::sync::Arc;

use async_trait::async_trait;
use aws_backend::port::{Ec2Port, Ec2PortExt, Operation};
use aws_backend::{AwsBackend, AwsBootConfig, GRANT_TAG, OWNER_TAG, TestSwitches};
use backend_api::conformance::{self, CloudInspector, Setup};
use backend_api::{
    AlmanacTick, Backend, BackendError, Clock, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, TokioClock,
};
use sim_ec2::{FaultConfig, InterruptReason, SimConfig, SimEc2};
use tests::crashpoint::{CrashPoint, CrashingPort};
use tests::fixture::{self, START_UNIX_MS};
use usage_ledger::MemoryStore;

/// A simulated EC2, its clock, and the ledger store a backend reopens after a crash.
pub struct Rig {
    pub cfg: AwsBootConfig,
    pub clock: Arc<TokioClock>,
    pub sim: Arc<SimEc2>,
    pub store: MemoryStore,
}

impl Rig {
    pub fn new(seed: u64, faults: FaultConfig) -> Self {
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let regions = fixture::ALLOWED_REGIONS.iter().map(|r| fixture::region(r)).collect();
        let sim = SimEc2::new(SimConfig::new(seed, regions).with_faults(faults), clock.clone())
            .unwrap_or_else(|e| panic!("sim config: {e}"));
        Self { cfg: fixture::config(5_000), clock, sim: Arc::new(sim), store: MemoryStore::new() }
    }

    pub async fn backend_over(&self, port: Arc<dyn Ec2Port>) -> AwsBackend {
        fixture::backend(&self.cfg, port, self.clock.clone(), &self.store, 7, TestSwitches::default())
            .await
            .unwrap_or_else(|e| panic!("backend: {e:#}"))
    }

    pub async fn backend(&self) -> AwsBackend {
        self.backend_over(self.sim.clone()).await
    }

    pub fn now_tick(&self) -> AlmanacTick {
        self.cfg.almanac.unix_ms_to_tick(self.clock.now_unix_ms())
    }

    /// Provisions `g` on a backend that crashes right after its first RunInstances took
    /// effect, and waits until it has.
    pub async fn crash_after_run_instances(&self, g: &ComputeGrant<'_>) {
        let crashing = Arc::new(CrashingPort::new(self.sim.clone(), CrashPoint::Effect(Operation::RunInstances), true));
        let doomed = self.backend_over(crashing.clone()).await;
        let m = g.manifest.clone();
        let (id, valid_from, valid_to) = (g.id, g.valid_from, g.valid_to);
        let task = tokio::spawn(async move {
            let g = ComputeGrant { id, manifest: &m, valid_from, valid_to };
            let _ = doomed.provision(&g, &us_east()).await;
        });
        while !crashing.crashed() {
            self.clock.sleep_ms(100).await;
        }
        task.abort();
        let _ = task.await;
    }

    /// Resources of `grant` that still exist, as ground truth sees them.
    pub fn left_of(&self, grant: &GrantId) -> Vec<String> {
        self.sim
            .live_resources_tagged(GRANT_TAG, &grant.to_hex())
            .iter()
            .map(|r| format!("{:?} {}", r.kind, r.id))
            .collect()
    }

    /// Instances ever launched for `grant`.
    pub fn instances_of(&self, grant: &GrantId) -> Vec<sim_ec2::InstanceTruth> {
        let hex = grant.to_hex();
        self.sim.instances().into_iter().filter(|i| i.tags.get(GRANT_TAG) == Some(&hex)).collect()
    }
}

#[async_trait]
impl CloudInspector for Rig {
    async fn resources_of(&self, grant: GrantId) -> anyhow::Result<Vec<String>> {
        Ok(self.left_of(&grant))
    }
}

pub fn manifest() -> ComputeManifest {
    ComputeManifest {
        cpu_millicores: 2_000,
        ram_mib: 4_096,
        storage_gib: 20,
        tdx_required: false,
        image_post_hash: ImageHash([0x11; 32]),
    }
}

pub fn grant<'a>(id: u8, manifest: &'a ComputeManifest, now: AlmanacTick, lifetime_s: u64) -> ComputeGrant<'a> {
    ComputeGrant { id: GrantId([id; 32]), manifest, valid_from: now, valid_to: AlmanacTick(now.0 + lifetime_s) }
}

pub fn us_east() -> Envelope {
    Envelope::for_region(fixture::region("us-east-1"))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn conformance_suite_passes_on_the_simulator() {
    let rig = Rig::new(1, FaultConfig::default());
    let backend = rig.backend().await;
    let setup = Setup {
        allowed_region: fixture::region("us-east-1"),
        disallowed_region: fixture::region(fixture::DISALLOWED_REGION),
        now: AlmanacTick(rig.now_tick().0 + 10),
        lifetime_ticks: 900,
        run_salt: *b"simconf1",
    };
    conformance::run_all(&backend, &rig, &setup).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(rig.sim.live_resources_tagged(OWNER_TAG, fixture::OWNER).is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn terminate_instances_is_called_at_valid_to_not_on_the_next_poll() {
    let rig = Rig::new(2, FaultConfig::none());
    let backend = rig.backend().await;
    let m = manifest();
    // 10 minutes and 2.5 s: the deadline falls between two polls of the 5 s poller.
    let g = ComputeGrant { valid_to: AlmanacTick(rig.now_tick().0 + 602), ..grant(1, &m, rig.now_tick(), 0) };
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    let usage = backend.watch_until_exit(&instance, g.valid_to).await.expect("watch");
    backend.terminate(&instance).await.expect("terminate");
    let truth = rig.sim.instance(&instance.instance_id).expect("launched");
    let valid_to_ms = rig.cfg.almanac.tick_to_unix_ms(g.valid_to);
    let left = truth.up_until_ms().expect("it ended");
    let lateness_ms = left.saturating_sub(valid_to_ms);
    assert!(left >= valid_to_ms, "terminated {} ms before the deadline", valid_to_ms - left);
    assert!(lateness_ms <= 1_000, "TerminateInstances came {lateness_ms} ms after valid_to");
    assert!(usage.cpu_seconds > 0, "{usage:?}");
    assert!(rig.left_of(&g.id).is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dependency_violation_storm_still_ends_with_the_group_deleted() {
    let faults = FaultConfig {
        dependency_violation_lag_ms_min: 4 * 60_000,
        dependency_violation_lag_ms_max: 6 * 60_000,
        ..FaultConfig::none()
    };
    let rig = Rig::new(3, faults);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(2, &m, rig.now_tick(), 300);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    backend.watch_until_exit(&instance, g.valid_to).await.expect("watch");
    backend.terminate(&instance).await.expect("terminate through the storm");
    let violations = rig.sim.stats().errors.get("DependencyViolation").copied().unwrap_or(0);
    assert!(violations >= 5, "the storm was too weak to test anything: {violations} DependencyViolation");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("known").is_settled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_crash_between_run_instances_and_its_record_then_a_retry_launches_no_second_instance() {
    let rig = Rig::new(4, FaultConfig::default());
    let m = manifest();
    let g = grant(3, &m, rig.now_tick(), 1_800);
    rig.crash_after_run_instances(&g).await;
    assert_eq!(
        rig.instances_of(&g.id).len(),
        1,
        "RunInstances took effect before the crash: {:?}",
        rig.sim.stats().errors
    );

    // The bridge restarts and retries the grant: the launch resumes with the same token.
    let backend = rig.backend().await;
    let instance = backend.provision(&g, &us_east()).await.expect("the retry provisions");
    let launched = rig.instances_of(&g.id);
    assert_eq!(launched.len(), 1, "a second instance was launched: {launched:?}");
    assert_eq!(launched[0].instance_id, instance.instance_id);
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty());
}

/// A crash right after RunInstances; the instance runs and is reclaimed while the bridge is
/// down. The retry's RunInstances reuses the token and EC2 answers IdempotentInstanceTerminated
/// (since January 2025): the attempt's instance is adopted into the ledger (so it is billed and
/// accounted for), the attempt fails retryably, and the next attempt provisions afresh.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_token_whose_instance_terminated_while_the_bridge_was_down_is_adopted_then_retried() {
    let rig = Rig::new(9, FaultConfig::default());
    let m = manifest();
    let g = grant(9, &m, rig.now_tick(), 3_600);
    rig.crash_after_run_instances(&g).await;
    let first = rig.instances_of(&g.id)[0].instance_id.clone();
    // While the bridge is down the instance runs, then EC2 reclaims it.
    rig.clock.sleep_ms(120_000).await;
    assert!(rig.sim.interrupt(&first, InterruptReason::SpotReclaim).expect("known instance"));
    rig.clock.sleep_ms(300_000).await;

    let backend = rig.backend().await;
    let err = backend.provision(&g, &us_east()).await.expect_err("the attempt's instance is gone");
    let typed = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert!(
        matches!(typed, BackendError::Provider { code, retryable: true, .. } if code == "IdempotentInstanceTerminated"),
        "{typed:?}"
    );
    // The attempt was rolled back with its instance known: its network is measured (the time
    // it ran while nobody watched is not billed: the ledger bills only observed running, see
    // docs/metering.md).
    let state = backend.grant_state(&g.id).expect("known");
    assert!(state.is_settled() && state.retry_allowed(), "{state:?}");
    assert!(
        state.network_pending().iter().any(|p| p.instance_id == first),
        "the terminated instance was adopted: {state:?}"
    );
    // The retry provisions a new instance with a new token.
    let instance = backend.provision(&g, &us_east()).await.expect("the retry provisions");
    assert_ne!(instance.instance_id, first);
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_launch_refused_by_ec2_rolls_back_to_nothing() {
    let rig = Rig::new(5, FaultConfig::default());
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(4, &m, rig.now_tick(), 1_800);
    rig.sim.fail_next(Operation::RunInstances, "InvalidAMIID.NotFound");
    let err = backend.provision(&g, &us_east()).await.expect_err("EC2 refused the launch");
    let typed = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert!(matches!(typed, BackendError::Provider { code, .. } if code == "InvalidAMIID.NotFound"), "{typed:?}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("admitted").is_settled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_instance_that_dies_while_pending_rolls_back_to_nothing() {
    let faults = FaultConfig { launch_delay_ms_min: 60_000, launch_delay_ms_max: 60_000, ..FaultConfig::none() };
    let rig = Rig::new(6, faults);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(5, &m, rig.now_tick(), 1_800);
    let provisioning = {
        let backend = backend.clone();
        let m = m.clone();
        let (id, valid_from, valid_to) = (g.id, g.valid_from, g.valid_to);
        tokio::spawn(async move {
            let g = ComputeGrant { id, manifest: &m, valid_from, valid_to };
            backend.provision(&g, &us_east()).await.map(|i| i.instance_id)
        })
    };
    let instance_id = loop {
        if let Some(i) = rig.instances_of(&g.id).first() {
            break i.instance_id.clone();
        }
        rig.clock.sleep_ms(500).await;
    };
    assert!(rig.sim.interrupt(&instance_id, InterruptReason::InternalError).expect("known instance"));
    let result = provisioning.await.expect("task");
    assert!(result.is_err(), "provision returned an instance that failed to launch");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("admitted").is_settled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_grant_under_eventual_consistency_is_provisioned_and_torn_down() {
    let faults =
        FaultConfig { visibility_delay_ms_min: 20_000, visibility_delay_ms_max: 40_000, ..FaultConfig::default() };
    let rig = Rig::new(7, faults);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(6, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision despite invisible resources");
    backend.watch_until_exit(&instance, g.valid_to).await.expect("watch");
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    let not_found: u64 =
        rig.sim.stats().errors.iter().filter(|(code, _)| code.ends_with(".NotFound")).map(|(_, n)| n).sum();
    assert!(not_found > 0, "eventual consistency was never exercised");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn refusals_create_nothing_and_name_the_value() {
    let rig = Rig::new(8, FaultConfig::none());
    let backend = rig.backend().await;
    let mut big = manifest();
    big.cpu_millicores = 10_000_000;
    let g = grant(7, &big, rig.now_tick(), 600);
    assert!(!backend.can_satisfy(&g));
    let err = backend.provision(&g, &us_east()).await.expect_err("too big");
    assert!(err.to_string().contains("10000000 millicores"), "{err}");
    assert!(backend.grant_state(&g.id).is_none(), "a refused grant reached the ledger");
    assert_eq!(
        rig.sim.stats().total_calls(),
        rig.sim.stats().calls.get(&Operation::DescribeInstanceTypes).copied().unwrap_or(0)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn insufficient_capacity_falls_back_to_the_next_fitting_type() {
    let rig = Rig::new(9, FaultConfig::none());
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(8, &m, rig.now_tick(), 900);
    // 2 vCPU / 4 GiB fits c6i.large first (sorted by size, then name); take its capacity away.
    let types = aws_backend::sizing::sorted(
        rig.sim
            .describe_instance_types(&fixture::region("us-east-1"), rig.cfg.instance_families.clone())
            .await
            .expect("catalogue"),
    );
    let fitting = aws_backend::sizing::fitting(&types, &m).expect("fits");
    rig.sim.exhaust_capacity(&fixture::region("us-east-1"), &fitting[0].instance_type, 3_600_000).expect("region");
    let instance = backend.provision(&g, &us_east()).await.expect("provision on the next type");
    let launched = rig.instances_of(&g.id);
    assert_eq!(launched.len(), 1);
    assert_eq!(launched[0].instance_type, fitting[1].instance_type, "not the next fitting type");
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_grant_waits_out_the_names_its_rollback_just_deleted() {
    // Issue 14: a deleted key pair and group stay listed, their names taken, for up to a minute.
    let faults = FaultConfig { deleted_visible_ms_max: 60_000, ..FaultConfig::none() };
    let rig = Rig::new(10, faults);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(10, &m, rig.now_tick(), 3_600);
    // Every attempt of the first RunInstances fails: the provision fails retryably and rolls
    // back, deleting the key pair and the group.
    for _ in 0..10 {
        rig.sim.fail_next(Operation::RunInstances, "Unavailable");
    }
    let err = backend.provision(&g, &us_east()).await.expect_err("EC2 is unavailable");
    let typed = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert!(matches!(typed, BackendError::Provider { retryable: true, .. }), "{typed:?}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    // The retry meets both names still taken, and waits until they are free.
    let instance = backend.provision(&g, &us_east()).await.expect("the retry provisions");
    let errors = rig.sim.stats().errors;
    assert!(errors.contains_key("InvalidKeyPair.Duplicate"), "the key pair's name never lingered: {errors:?}");
    assert!(errors.contains_key("InvalidGroup.Duplicate"), "the group's name never lingered: {errors:?}");
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stale_running_after_terminate_neither_delays_the_end_nor_leaks() {
    // Issue 14: DescribeInstances may show `running` for up to 15 s after TerminateInstances.
    let faults = FaultConfig { stale_state_ms_max: 15_000, tag_propagation_ms_max: 20_000, ..FaultConfig::default() };
    let rig = Rig::new(11, faults);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(11, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    backend.watch_until_exit(&instance, g.valid_to).await.expect("watch");
    backend.terminate(&instance).await.expect("terminate");
    let truth = &rig.instances_of(&g.id)[0];
    let ended = truth
        .intervals
        .iter()
        .find(|i| i.state != aws_backend::port::InstanceState::Running && i.from_ms > truth.intervals[0].from_ms);
    let deadline_ms = rig.cfg.almanac.tick_to_unix_ms(g.valid_to);
    assert!(ended.is_some_and(|i| i.from_ms <= deadline_ms + 60_000), "ended late: {truth:?}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_reaper_reads_every_page_of_its_listings() {
    // EC2 may cut any page short, even to nothing, while more remain; only a missing NextToken
    // ends a listing (EC2 API Reference, "Pagination").
    let faults = FaultConfig { page_short_probability: 0.8, ..FaultConfig::none() };
    let rig = Rig::new(13, faults);
    let region = fixture::region("us-east-1");
    let orphan = GrantId([0xee; 32]);
    let tags = aws_backend::port::Tags::from([
        (OWNER_TAG.to_string(), fixture::OWNER.to_string()),
        (GRANT_TAG.to_string(), orphan.to_hex()),
    ]);
    let key = aws_backend::port::ImportKeyPairRequest {
        key_name: "orphan-key".into(),
        public_key_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0c2ltdWxhdGVkLWtleS1mb3ItdGVzdHMtb25seQ== o".into(),
        tags: tags.clone(),
    };
    rig.sim.import_key_pair(&region, key).await.expect("key pair");
    let group = aws_backend::port::CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: "orphan-group".into(),
        description: "an orphan".into(),
        tags: tags.clone(),
    };
    let group_id = rig.sim.create_security_group(&region, group).await.expect("group");
    for n in 0..12 {
        let request = aws_backend::port::RunInstancesRequest {
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "m6i.large".into(),
            key_name: "orphan-key".into(),
            security_group_ids: vec![group_id.clone()],
            user_data_base64: String::new(),
            client_token: format!("orphan-{n}"),
            root_volume_gib: 20,
            root_device_name: "/dev/xvda".into(),
            imdsv2_required: true,
            imds_hop_limit: 1,
            shutdown_behavior: aws_backend::port::ShutdownBehavior::Terminate,
            instance_tags: tags.clone(),
            volume_tags: tags.clone(),
            subnet_id: None,
            availability_zone: None,
        };
        rig.sim.run_instance(&region, request).await.expect("launch");
        rig.clock.sleep_ms(600).await; // RunInstances' bucket refills 2 a second
    }
    rig.clock.sleep_ms(rig.cfg.reaper_grace_ms + 60_000).await;
    let orphans = || rig.instances_of(&orphan).iter().filter(|i| !i.state.has_exited()).count();
    assert_eq!(orphans(), 12);

    // A reaper that reads only the first page misses orphans (the check can fail)...
    let switches = TestSwitches { first_page_only: true, ..TestSwitches::default() };
    let broken =
        fixture::backend(&rig.cfg, rig.sim.clone(), rig.clock.clone(), &rig.store, 7, switches).await.expect("backend");
    broken.reap(false).await;
    let missed = orphans();
    assert!(missed > 0, "the first pages held every orphan: the case tests nothing");
    drop(broken);
    // ... and one that follows every token finds them all in one pass.
    assert!(!rig.sim.unfollowed_page_tokens().is_empty(), "the broken reaper followed its pages");
    rig.clock.sleep_ms(1_000).await;
    let since = rig.clock.now_unix_ms();
    let backend = rig.backend().await;
    let report = backend.reap(false).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(orphans(), 0, "{missed} orphans before the pass, {} after", orphans());
    let abandoned: Vec<_> = rig.sim.unfollowed_page_tokens().into_iter().filter(|(at, _, _)| *at >= since).collect();
    assert!(abandoned.is_empty(), "listings stopped before their last page: {abandoned:?}");
}

/// A crash right after RunInstances, the instance still invisible to EC2's API: recovery rolls
/// the provision back, and its TerminateInstances waits out the visibility lag while the
/// instance starts running. It ran, so EC2 bills it (at least 60 s); so must the ledger: the
/// rollback watches the instance from the moment it knows it, and records what finding it
/// showed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_instance_that_runs_while_its_rollback_waits_for_it_to_be_visible_is_billed() {
    let faults = FaultConfig {
        visibility_delay_ms_min: 12_000,
        visibility_delay_ms_max: 12_000,
        launch_delay_ms_min: 3_000,
        launch_delay_ms_max: 3_000,
        termination_delay_ms_min: 2_000,
        termination_delay_ms_max: 2_000,
        ..FaultConfig::none()
    };
    let rig = Rig::new(21, faults);
    let m = manifest();
    let g = grant(21, &m, rig.now_tick(), 3_600);
    rig.crash_after_run_instances(&g).await;
    let backend = rig.backend().await;
    let report = backend.recover().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let truth = &rig.instances_of(&g.id)[0];
    assert!(truth.running_ms > 0, "the instance never ran: the case tests nothing: {truth:?}");
    let state = backend.grant_state(&g.id).expect("known");
    assert!(state.is_settled(), "{state:?}");
    let billed_s = state.usage().cpu_seconds / u64::from(truth.vcpus);
    assert!(billed_s >= 60, "EC2 bills at least 60 s for a run; the ledger billed {billed_s} s: {truth:?}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_terminates_of_one_grant_at_once_both_end_promptly_and_settle_it_once() {
    // A DELETE from compute-bridge racing the watch's own teardown at valid_to, or recovery's.
    let rig = Rig::new(12, FaultConfig::default());
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(12, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    let started = rig.clock.now_unix_ms();
    let ten_minutes = std::time::Duration::from_secs(600);
    let (a, b) = tokio::time::timeout(ten_minutes, async {
        tokio::join!(backend.terminate(&instance), backend.terminate(&instance))
    })
    .await
    .expect("both terminates end within ten virtual minutes");
    a.expect("the first terminate");
    b.expect("the second terminate");
    let took_ms = rig.clock.now_unix_ms() - started;
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    let records = rig.store.records();
    let settled =
        records.iter().filter(|r| r.grant == g.id && matches!(r.event, usage_ledger::Event::GrantSettled { .. }));
    assert_eq!(settled.count(), 1, "settled once");
    // Under the default faults EC2 ends an instance within a minute and frees its group within
    // 30 s more: the pair takes what one takes. (Two teardowns at once used to take 318 s here:
    // the later DeleteSecurityGroup, answered NotFound, waited out the visibility window.)
    assert!(took_ms <= 3 * 60_000, "two terminates at once took {took_ms} virtual ms");
}
