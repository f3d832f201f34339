//! AMIs by alias and architecture on the simulator: the backend resolves SSM aliases, records
//! the id it launched, picks a republished alias up after the refresh interval, keeps the last
//! good id when a refresh fails, and launches Graviton types with the arm64 AMI.

use std::collections::BTreeMap;

use aws_backend::config::{AmiEntry, PriceEntry};
use aws_backend::port::{Architecture, Operation, codes};
use backend_api::{Backend, BackendError, Clock, GrantId};
use sim_ec2::ssm::{AL2023_ARM64_ALIAS, AL2023_X86_64_ALIAS, DEFAULT_AL2023_ARM64_AMI, DEFAULT_AL2023_X86_64_AMI};
use sim_ec2::{FaultConfig, SimImage};
use tests::fixture;
use usage_ledger::Event;

use crate::backend_sim::{Rig, grant, manifest, us_east};

fn alias(name: &str) -> String {
    format!("resolve:ssm:{name}")
}

/// A rig whose us-east-1 AMIs are `ami` (by architecture name), with `families`.
fn rig_with_amis(seed: u64, families: &[&str], ami: &[(&str, String)]) -> Rig {
    let mut rig = Rig::new(seed, FaultConfig::none());
    rig.cfg.instance_families = families.iter().map(|f| f.to_string()).collect();
    let entry: BTreeMap<String, String> = ami.iter().map(|(arch, v)| (arch.to_string(), v.clone())).collect();
    rig.cfg.ami.insert("us-east-1".into(), AmiEntry::PerArchitecture(entry));
    rig
}

/// The (instance type, image id) of every `LaunchRequested` of `grant` in the ledger.
fn launches(rig: &Rig, grant: &GrantId) -> Vec<(String, Option<String>)> {
    rig.store
        .records()
        .into_iter()
        .filter(|r| r.grant == *grant)
        .filter_map(|r| match r.event {
            Event::LaunchRequested { instance_type, image_id, .. } => Some((instance_type, image_id)),
            _ => None,
        })
        .collect()
}

fn get_parameter_calls(rig: &Rig) -> u64 {
    rig.sim.stats().calls.get(&Operation::GetParameter).copied().unwrap_or(0)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_grant_launches_the_ami_its_alias_resolves_to_and_the_ledger_records_it() {
    let rig = rig_with_amis(60, &["m6i"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x60, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    assert_eq!(launches(&rig, &g.id), [("m6i.large".to_string(), Some(DEFAULT_AL2023_X86_64_AMI.to_string()))]);
    assert_eq!(get_parameter_calls(&rig), 1);
    backend.terminate(&instance).await.expect("terminate");
    assert!(rig.left_of(&g.id).is_empty(), "left: {:?}", rig.left_of(&g.id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_republished_alias_is_used_once_the_refresh_interval_has_passed() {
    let mut rig = rig_with_amis(61, &["m6i"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    rig.cfg.ami_refresh_s = 600;
    let backend = rig.backend().await;
    let m = manifest();
    let provision = |id: u8| {
        let backend = backend.clone();
        let m = m.clone();
        let now = rig.now_tick();
        async move {
            let g = grant(id, &m, now, 900);
            let instance = backend.provision(&g, &us_east()).await.expect("provision");
            backend.terminate(&instance).await.expect("terminate");
            g.id
        }
    };
    let first = provision(0x61).await;
    // AWS releases a new AMI under the alias.
    let release = SimImage {
        region: fixture::region("us-east-1"),
        image_id: "ami-0b2023112000000a1".into(),
        root_snapshot_gib: 8,
        architecture: Architecture::X86_64,
    };
    rig.sim.publish_image(AL2023_X86_64_ALIAS, release.clone()).expect("published");
    // Within the refresh interval the cached id is launched, without asking SSM again.
    let second = provision(0x62).await;
    assert_eq!(get_parameter_calls(&rig), 1);
    rig.clock.sleep_ms(600_000).await;
    let third = provision(0x63).await;
    assert_eq!(get_parameter_calls(&rig), 2);
    let image_of = |g: &GrantId| launches(&rig, g)[0].1.clone();
    assert_eq!(image_of(&first).as_deref(), Some(DEFAULT_AL2023_X86_64_AMI));
    assert_eq!(image_of(&second).as_deref(), Some(DEFAULT_AL2023_X86_64_AMI));
    assert_eq!(image_of(&third), Some(release.image_id));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_refresh_keeps_the_last_good_ami() {
    let mut rig = rig_with_amis(62, &["m6i"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    rig.cfg.ami_refresh_s = 60;
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(0x64, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    backend.terminate(&instance).await.expect("terminate");
    rig.clock.sleep_ms(61_000).await;
    // The refresh is refused (a changed IAM policy, say): the last good id is launched.
    rig.sim.fail_next(Operation::GetParameter, "AccessDeniedException");
    let g = grant(0x65, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision with the last good AMI");
    assert_eq!(launches(&rig, &g.id)[0].1.as_deref(), Some(DEFAULT_AL2023_X86_64_AMI));
    assert_eq!(get_parameter_calls(&rig), 2, "the refresh was tried");
    backend.terminate(&instance).await.expect("terminate");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_alias_that_never_resolved_fails_the_provision_before_anything_is_created() {
    // Throttled for longer than the pacer retries: retryable, and nothing was created.
    let rig = rig_with_amis(63, &["m6i"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    let backend = rig.backend().await;
    for _ in 0..10 {
        rig.sim.fail_next(Operation::GetParameter, codes::THROTTLING_EXCEPTION);
    }
    let m = manifest();
    let g = grant(0x66, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("never resolved");
    let err = err.downcast_ref::<BackendError>().expect("a backend error");
    assert!(err.is_retryable(), "{err}");
    assert!(backend.grant_state(&g.id).is_none(), "not even admitted");
    assert!(rig.left_of(&g.id).is_empty());
    // Retried once Parameter Store answers, it launches.
    let g = grant(0x66, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("the retry resolves");
    backend.terminate(&instance).await.expect("terminate");

    // A parameter that does not exist is the configuration's fault: not retryable, and named.
    let missing = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_65";
    let rig = rig_with_amis(64, &["m6i"], &[("x86_64", alias(missing))]);
    let backend = rig.backend().await;
    let g = grant(0x67, &m, rig.now_tick(), 900);
    let err = backend.provision(&g, &us_east()).await.expect_err("no such parameter");
    match err.downcast_ref::<BackendError>() {
        Some(BackendError::Provider { code, message, retryable: false, .. }) => {
            assert_eq!(code, codes::PARAMETER_NOT_FOUND);
            assert!(message.contains(missing) && message.contains("ami.us-east-1.x86_64"), "{message}");
        }
        other => panic!("expected a non-retryable ParameterNotFound, got {other:?}"),
    }
    assert!(backend.grant_state(&g.id).is_none() && rig.left_of(&g.id).is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_graviton_type_is_chosen_when_cheaper_and_launches_the_arm64_ami() {
    let amis = [("x86_64", alias(AL2023_X86_64_ALIAS)), ("arm64", alias(AL2023_ARM64_ALIAS))];
    let m = manifest();

    // Without prices the smallest fitting type goes first: m6i.large sorts before m7g.large.
    let rig = rig_with_amis(65, &["m6i", "m7g"], &amis);
    let backend = rig.backend().await;
    let g = grant(0x68, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    assert_eq!(launches(&rig, &g.id), [("m6i.large".to_string(), Some(DEFAULT_AL2023_X86_64_AMI.to_string()))]);
    backend.terminate(&instance).await.expect("terminate");

    // With Graviton cheaper per the operator's prices, m7g.large, with the arm64 AMI (the
    // simulator refuses an AMI of the other architecture, as EC2 does).
    let mut rig = rig_with_amis(66, &["m6i", "m7g"], &amis);
    rig.cfg.prices = BTreeMap::from([
        ("m6i.large".to_string(), PriceEntry::UsdPerHour(0.096)),
        ("m7g.large".to_string(), PriceEntry::UsdPerHour(0.0816)),
    ]);
    let backend = rig.backend().await;
    let g = grant(0x69, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    assert_eq!(launches(&rig, &g.id), [("m7g.large".to_string(), Some(DEFAULT_AL2023_ARM64_AMI.to_string()))]);
    assert_eq!(rig.instances_of(&g.id)[0].instance_type, "m7g.large");
    backend.terminate(&instance).await.expect("terminate");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn types_of_an_architecture_without_an_ami_are_never_chosen() {
    let m = manifest();
    // Graviton is the only family: with an arm64 AMI it launches there.
    let rig = rig_with_amis(67, &["m7g"], &[("arm64", alias(AL2023_ARM64_ALIAS))]);
    let backend = rig.backend().await;
    let g = grant(0x6a, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    assert_eq!(launches(&rig, &g.id), [("m7g.large".to_string(), Some(DEFAULT_AL2023_ARM64_AMI.to_string()))]);
    backend.terminate(&instance).await.expect("terminate");

    // With only an x86_64 AMI, the cheaper Graviton type is left out.
    let mut rig = rig_with_amis(68, &["m6i", "m7g"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    rig.cfg.prices = BTreeMap::from([("m7g.large".to_string(), PriceEntry::UsdPerHour(0.0816))]);
    let backend = rig.backend().await;
    let g = grant(0x6b, &m, rig.now_tick(), 900);
    let instance = backend.provision(&g, &us_east()).await.expect("provision");
    assert_eq!(launches(&rig, &g.id)[0].0, "m6i.large");
    backend.terminate(&instance).await.expect("terminate");

    // Graviton only, and no arm64 AMI: refused before anything is created, naming the fix.
    let rig = rig_with_amis(69, &["m7g"], &[("x86_64", alias(AL2023_X86_64_ALIAS))]);
    let backend = rig.backend().await;
    let g = grant(0x6c, &m, rig.now_tick(), 900);
    assert!(!backend.can_satisfy(&g), "can_satisfy agrees with provision");
    let err = backend.provision(&g, &us_east()).await.expect_err("no arm64 AMI");
    assert!(format!("{err:#}").contains("ami.us-east-1.arm64"), "{err:#}");
    assert!(backend.grant_state(&g.id).is_none());
}
