//! The backend meeting a fresh account's first refusals on the simulator (issue 14): the
//! On-Demand vCPU quota, a type a zone does not offer, an AMI the region does not know or a root
//! volume smaller than its snapshot, an account without a default VPC, and an on-demand
//! instance retired (stopped) by EC2. Each test checks the error's class and words and that
//! nothing the attempt created is left.

use std::sync::Arc;

use aws_backend::config::AmiEntry;
use aws_backend::port::{Architecture, Operation};
use backend_api::{Backend, BackendError, Clock, TokioClock};
use sim_ec2::{FaultConfig, InterruptReason, SimConfig, SimEc2, SimImage};
use tests::fixture::{self, START_UNIX_MS};
use usage_ledger::MemoryStore;

use crate::backend_sim::{Rig, grant, manifest, us_east};

/// A rig whose simulator is set up by `edit` on top of `faults`.
fn rig_with(seed: u64, faults: FaultConfig, edit: impl FnOnce(&mut SimConfig)) -> Rig {
    let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
    let regions = fixture::ALLOWED_REGIONS.iter().map(|r| fixture::region(r)).collect();
    let mut config = SimConfig::new(seed, regions).with_faults(faults);
    edit(&mut config);
    let sim = SimEc2::new(config, clock.clone()).unwrap_or_else(|e| panic!("sim config: {e}"));
    Rig { cfg: fixture::config(5_000), clock, sim: Arc::new(sim), store: MemoryStore::new() }
}

/// The provider error a failed provision carries.
fn provider_error(err: &anyhow::Error) -> (String, String, bool) {
    match err.downcast_ref::<BackendError>() {
        Some(BackendError::Provider { code, message, retryable, .. }) => (code.clone(), message.clone(), *retryable),
        other => panic!("expected a provider error, got {other:?}: {err:#}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_vcpu_quota_refusal_is_retryable_later_and_leaves_nothing() {
    // A quota of 1 vCPU: no type of the catalogue fits.
    let rig = rig_with(41, FaultConfig { on_demand_vcpu_quota: 1, ..FaultConfig::default() }, |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x41, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("over the quota");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!(code, "VcpuLimitExceeded");
    assert!(retryable, "the quota frees up as instances end: retry later");
    assert!(message.contains("L-1216C47A") && message.contains("quota increase"), "{message}");
    // A larger type needs more vCPUs, so the next fitting type is not tried.
    assert_eq!(rig.sim.stats().errors.get("VcpuLimitExceeded").copied(), Some(1));
    assert!(rig.instances_of(&g.id).is_empty());
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("admitted").is_settled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_type_not_offered_in_the_zone_falls_back_to_the_next_fitting_type() {
    // Only the first zone offers anything: EC2 places two launches in three elsewhere.
    let rig = rig_with(42, FaultConfig { zone_offering_gap_probability: 1.0, ..FaultConfig::default() }, |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x42, &m, rig.now_tick(), 900);
    // Whichever zone EC2 draws first, the first fitting type meets Unsupported.
    rig.sim.fail_next(Operation::RunInstances, "Unsupported");
    let instance = backend.provision(&g, &us_east()).await.expect("a later fitting type lands in us-east-1a");
    let unsupported = rig.sim.stats().errors.get("Unsupported").copied().unwrap_or(0);
    assert!(unsupported >= 1, "the test never met Unsupported");
    let launched = rig.instances_of(&g.id);
    assert_eq!(launched.len(), 1);
    let calls = rig.sim.stats().calls.get(&Operation::RunInstances).copied().unwrap_or(0);
    assert!(calls > unsupported, "the launch after the Unsupported ones");
    assert!(launched[0].availability_zone.ends_with('a'), "{}", launched[0].availability_zone);
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unknown_or_malformed_ami_fails_provision_for_good_and_leaves_nothing() {
    // us-east-1 knows one AMI, not the one the fixture configures.
    let rig = rig_with(43, FaultConfig::default(), |c| {
        c.images = vec![SimImage {
            region: fixture::region("us-east-1"),
            image_id: "ami-0aaaaaaaaaaaaaaaa".into(),
            root_snapshot_gib: 8,
            architecture: Architecture::X86_64,
        }];
    });
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x43, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("unknown AMI");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!(code, "InvalidAMIID.NotFound");
    assert!(!retryable, "the same AMI stays unknown: fix the configuration");
    let configured = rig.cfg.image_source("us-east-1", Architecture::X86_64).expect("configured").to_string();
    assert!(message.contains(configured.as_str()) && message.contains("ami.us-east-1"), "{message}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("admitted").is_settled());

    // An id the configuration check lets through but EC2 calls malformed.
    let mut rig = rig_with(44, FaultConfig::default(), |_| {});
    rig.cfg.ami.insert("us-east-1".into(), AmiEntry::X86_64("ami-notahexid".into()));
    let backend = rig.backend().await;
    let g = grant(0x44, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("malformed AMI");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!(code, "InvalidAMIID.Malformed");
    assert!(!retryable && message.contains("ami-notahexid"), "{message}");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_root_volume_smaller_than_the_snapshot_fails_provision_for_good() {
    let rig = rig_with(45, FaultConfig::default(), |c| {
        c.images = vec![SimImage {
            region: fixture::region("us-east-1"),
            image_id: "ami-0123456789abcdef0".into(),
            root_snapshot_gib: 500,
            architecture: Architecture::X86_64,
        }];
    });
    assert_eq!(rig.cfg.ami["us-east-1"], AmiEntry::X86_64("ami-0123456789abcdef0".into()), "the fixture's AMI");
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x45, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("root volume below the snapshot");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!(code, "InvalidBlockDeviceMapping");
    assert!(!retryable);
    assert!(
        message.contains("ami-0123456789abcdef0")
            && message.contains("min_root_volume_gib")
            && message.contains(">= 500GB"),
        "{message}"
    );
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_account_without_a_default_vpc_fails_provision_for_good_and_leaves_nothing() {
    let rig = rig_with(46, FaultConfig::default(), |c| c.default_vpc = false);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x46, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("no default VPC");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!(code, "VPCIdNotSpecified");
    assert!(!retryable);
    assert!(message.contains("create-default-vpc --region us-east-1"), "{message}");
    // The key pair, imported alongside the failed group, is deleted by the rollback.
    assert!(rig.sim.stats().calls.contains_key(&Operation::ImportKeyPair));
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    assert!(backend.grant_state(&g.id).expect("admitted").is_settled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retired_instance_is_terminated_billed_only_while_running_and_torn_down() {
    let faults = FaultConfig { launch_delay_ms_min: 10_000, launch_delay_ms_max: 10_000, ..FaultConfig::default() };
    let rig = rig_with(47, faults, |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x47, &m, rig.now_tick(), 3_600);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    rig.clock.sleep_ms(10 * 60_000).await;
    assert!(rig.sim.interrupt(&instance.instance_id, InterruptReason::ScheduledRetirement).expect("known"));
    backend.watch_until_exit(&instance, g.valid_to).await.expect("watch sees the stop");
    backend.terminate(&instance).await.expect("terminate");
    let truth = &rig.instances_of(&g.id)[0];
    let states: Vec<_> = truth.intervals.iter().map(|i| (i.state, i.reason_code.clone())).collect();
    assert!(
        states.iter().any(|(s, r)| matches!(
            s,
            aws_backend::port::InstanceState::Stopping | aws_backend::port::InstanceState::Stopped
        ) && r.as_deref() == Some("Server.ScheduledStop")),
        "{states:?}"
    );
    assert_eq!(truth.state, aws_backend::port::InstanceState::Terminated, "the stopped instance was terminated");
    // Well before valid_to: the backend neither waited for the deadline nor billed the stop.
    assert!(rig.clock.now_unix_ms() < fixture::START_UNIX_MS + 30 * 60_000);
    let state = backend.grant_state(&g.id).expect("known");
    assert!(state.is_settled());
    let billed_s = state.usage().cpu_seconds / u64::from(truth.vcpus);
    let ran_s = truth.running_ms / 1_000;
    assert!(billed_s <= ran_s + 10 && billed_s + 10 >= ran_s, "billed {billed_s} s, ran {ran_s} s");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

// ------------------------------------------------------------------- zones, subnets, quotas

/// The type and zone of the only instance of grant `id` so far.
fn placed(rig: &Rig, g: &backend_api::ComputeGrant<'_>) -> (String, String) {
    let launched = rig.instances_of(&g.id);
    assert_eq!(launched.len(), 1, "{launched:?}");
    (launched[0].instance_type.clone(), launched[0].availability_zone.clone())
}

/// A shortage confined to the pool it starts in.
fn confined_shortages() -> FaultConfig {
    FaultConfig {
        capacity_shortage_neighbours_probability: 0.0,
        capacity_shortage_family_probability: 0.0,
        ..FaultConfig::default()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_zone_out_of_capacity_for_a_type_moves_the_grant_to_the_same_type_in_another_zone() {
    let rig = rig_with(51, confined_shortages(), |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let first = grant(0x51, &m, rig.now_tick(), 900);
    let instance = backend.provision(&first, &us_east()).await.expect("the first grant");
    let (itype, zone) = placed(&rig, &first);
    // That zone, the one that launched last and so the first tried, runs out of the type.
    rig.sim.start_capacity_shortage(&fixture::region("us-east-1"), &itype, &zone, 3_600_000).expect("shortage");
    let second = grant(0x52, &m, rig.now_tick(), 900);
    let other = backend.provision(&second, &us_east()).await.expect("another zone has the type");
    let (itype2, zone2) = placed(&rig, &second);
    assert_eq!(itype2, itype, "the same type, not another size");
    assert_ne!(zone2, zone, "another zone");
    assert_eq!(rig.sim.stats().errors.get("InsufficientInstanceCapacity").copied(), Some(1));
    // The exhausted (type, zone) is not tried again for a while: a third grant goes straight on.
    let third = grant(0x53, &m, rig.now_tick(), 900);
    let last = backend.provision(&third, &us_east()).await.expect("third");
    assert_eq!(
        rig.sim.stats().errors.get("InsufficientInstanceCapacity").copied(),
        Some(1),
        "tried the short zone again"
    );
    for (i, g) in [(instance, &first), (other, &second), (last, &third)] {
        backend.terminate(&i).await.expect("terminate");
        assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_family_short_in_every_zone_falls_back_to_the_next_size_after_trying_every_zone() {
    // A shortage drains the whole family in its zone.
    let faults = FaultConfig { capacity_shortage_family_probability: 1.0, ..confined_shortages() };
    let rig = rig_with(52, faults, |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let probe = grant(0x54, &m, rig.now_tick(), 900);
    let instance = backend.provision(&probe, &us_east()).await.expect("probe");
    let (itype, _) = placed(&rig, &probe);
    backend.terminate(&instance).await.expect("terminate");
    let region = fixture::region("us-east-1");
    for zone in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        rig.sim.start_capacity_shortage(&region, &itype, zone, 3_600_000).expect("shortage");
    }
    let g = grant(0x55, &m, rig.now_tick(), 900);
    let other = backend.provision(&g, &us_east()).await.expect("the next size of another family");
    let (itype2, _) = placed(&rig, &g);
    let family = |t: &str| t.split('.').next().unwrap_or_default().to_string();
    assert_ne!(family(&itype2), family(&itype), "{itype2} is of the short family of {itype}");
    // The short type was tried in each zone that offers it before any other size.
    let short = rig.sim.stats().errors.get("InsufficientInstanceCapacity").copied().unwrap_or(0);
    assert!(short >= 3, "{short} shortages met: not every zone was tried first");
    backend.terminate(&other).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

/// Calls that create something, so far.
fn creations(rig: &Rig) -> u64 {
    let calls = rig.sim.stats().calls;
    [Operation::ImportKeyPair, Operation::CreateSecurityGroup, Operation::RunInstances]
        .iter()
        .map(|op| calls.get(op).copied().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_quota_learnt_from_ec2_refuses_the_next_grant_before_anything_is_created_until_headroom_returns() {
    // Room for two 2-vCPU instances.
    let rig = rig_with(53, FaultConfig { on_demand_vcpu_quota: 4, ..FaultConfig::default() }, |_| {});
    let backend = rig.backend().await;
    let m = manifest();
    let ids = [0x56, 0x57];
    let mut running = Vec::new();
    for id in ids {
        let g = grant(id, &m, rig.now_tick(), 3_600);
        running.push(backend.provision(&g, &us_east()).await.expect("within the quota"));
    }
    // The third meets EC2's VcpuLimitExceeded: the bridge learns the quota from it.
    let third = grant(0x58, &m, rig.now_tick(), 3_600);
    let (code, _, retryable) = provider_error(&backend.provision(&third, &us_east()).await.expect_err("quota"));
    assert_eq!((code.as_str(), retryable), ("VcpuLimitExceeded", true));
    assert_eq!(backend.vcpu_headroom(&fixture::region("us-east-1")), Some(1));
    let capabilities = backend.capabilities().await.expect("capabilities");
    assert_eq!(capabilities.vcpu_headroom.get(&fixture::region("us-east-1")), Some(&1), "{capabilities:?}");
    assert_eq!(capabilities.vcpu_headroom.get(&fixture::region("eu-west-1")), None, "no quota known there");
    // The fourth is refused before anything is created, retryably.
    let fourth = grant(0x59, &m, rig.now_tick(), 3_600);
    let before = creations(&rig);
    let err = backend.provision(&fourth, &us_east()).await.expect_err("no headroom");
    let (code, message, retryable) = provider_error(&err);
    assert_eq!((code.as_str(), retryable), ("VcpuLimitExceeded", true), "{message}");
    assert!(message.contains("nothing was created") && message.contains("L-1216C47A"), "{message}");
    assert_eq!(creations(&rig), before, "the refused grant created something");
    assert!(backend.grant_state(&fourth.id).is_none(), "the refused grant was admitted");
    // Headroom returns when a grant ends; the refused grant's retry then provisions.
    backend.terminate(&running.remove(0)).await.expect("terminate");
    let retried = backend.provision(&fourth, &us_east()).await.expect("headroom returned");
    for instance in running.into_iter().chain([retried]) {
        backend.terminate(&instance).await.expect("terminate");
    }
    for id in [0x56, 0x57, 0x58, 0x59] {
        assert!(rig.left_of(&backend_api::GrantId([id; 32])).is_empty());
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_configured_quota_refuses_a_grant_before_ec2_ever_does() {
    let mut rig = rig_with(54, FaultConfig { on_demand_vcpu_quota: 4, ..FaultConfig::default() }, |_| {});
    rig.cfg.vcpu_quota.insert("us-east-1".into(), 2);
    let backend = rig.backend().await;
    let m = manifest();
    let first = grant(0x5a, &m, rig.now_tick(), 3_600);
    let instance = backend.provision(&first, &us_east()).await.expect("within the quota");
    let second = grant(0x5b, &m, rig.now_tick(), 3_600);
    let before = creations(&rig);
    let (code, _, retryable) = provider_error(&backend.provision(&second, &us_east()).await.expect_err("quota"));
    assert_eq!((code.as_str(), retryable), ("VcpuLimitExceeded", true));
    assert_eq!(creations(&rig), before);
    assert_eq!(rig.sim.stats().errors.get("VcpuLimitExceeded"), None, "EC2 was asked");
    backend.terminate(&instance).await.expect("terminate");
}

fn grant_subnets() -> Vec<sim_ec2::network::SimSubnet> {
    let subnet = |id: &str, vpc: &str, zone: &str, tier: &str| sim_ec2::network::SimSubnet {
        region: fixture::region("us-east-1"),
        subnet_id: id.into(),
        vpc_id: vpc.into(),
        availability_zone: zone.into(),
        tags: aws_backend::port::Tags::from([("tier".to_string(), tier.to_string())]),
    };
    vec![
        subnet("subnet-0aaaaaaaaaaaaaaa1", "vpc-0bbbbbbbbbbbbbbb1", "us-east-1b", "grants"),
        subnet("subnet-0aaaaaaaaaaaaaaa2", "vpc-0bbbbbbbbbbbbbbb1", "us-east-1c", "grants"),
        subnet("subnet-0aaaaaaaaaaaaaaa3", "vpc-0bbbbbbbbbbbbbbb2", "us-east-1a", "other"),
    ]
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn subnets_chosen_by_tag_take_the_grant_without_a_default_vpc() {
    let mut rig = rig_with(55, FaultConfig::default(), |c| {
        c.default_vpc = false;
        c.subnets = grant_subnets();
    });
    let network = aws_backend::config::NetworkConfig {
        subnet_ids: Vec::new(),
        subnet_tags: [("tier".to_string(), "grants".to_string())].into(),
    };
    rig.cfg.network.insert("us-east-1".into(), network);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x5c, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("launches into a tagged subnet");
    let (_, zone) = placed(&rig, &g);
    assert!(["us-east-1b", "us-east-1c"].contains(&zone.as_str()), "launched in {zone}, which has no tagged subnet");
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_missing_subnet_or_subnets_of_two_vpcs_fail_the_start_naming_the_fix() {
    let start = |rig: Rig| async move {
        fixture::backend(&rig.cfg, rig.sim.clone(), rig.clock.clone(), &rig.store, 7, Default::default())
            .await
            .err()
            .map(|e| format!("{e:#}"))
    };
    let mut rig = rig_with(56, FaultConfig::default(), |c| c.subnets = grant_subnets());
    let missing = aws_backend::config::NetworkConfig {
        subnet_ids: vec!["subnet-0dead0dead0dead0d".into()],
        ..Default::default()
    };
    rig.cfg.network.insert("us-east-1".into(), missing);
    let message = start(rig).await.expect("a subnet that does not exist fails the start");
    assert!(message.contains("network.us-east-1") && message.contains("subnet-0dead0dead0dead0d"), "{message}");

    let mut rig = rig_with(57, FaultConfig::default(), |c| c.subnets = grant_subnets());
    let two_vpcs = aws_backend::config::NetworkConfig {
        subnet_ids: vec!["subnet-0aaaaaaaaaaaaaaa1".into(), "subnet-0aaaaaaaaaaaaaaa3".into()],
        ..Default::default()
    };
    rig.cfg.network.insert("us-east-1".into(), two_vpcs);
    let message = start(rig).await.expect("subnets of two VPCs fail the start");
    assert!(message.contains("vpc-0bbbbbbbbbbbbbbb1") && message.contains("vpc-0bbbbbbbbbbbbbbb2"), "{message}");
}
