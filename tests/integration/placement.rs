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
