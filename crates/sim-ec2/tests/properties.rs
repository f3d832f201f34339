//! Properties over random call sequences: determinism, and ground truth that hangs together.

use std::sync::Arc;

use aws_backend::port::{
    CreateSecurityGroupRequest, Ec2Port, Ec2PortExt, Filter, ImportKeyPairRequest, InstanceState, RunInstancesRequest,
    ShutdownBehavior, Tags,
};
use backend_api::RegionLabel;
use proptest::prelude::*;
use rand::SeedableRng;
use sim_ec2::{FaultConfig, InstanceTruths, InterruptReason, LiveResources, ManualClock, SimConfig, SimEc2};

const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f p";

#[derive(Clone, Debug)]
enum Step {
    Run(u8),
    Describe(u8),
    DescribeByTag(u8),
    Terminate(u8),
    Interrupt(u8),
    DeleteGroup(u8),
    Usage(u8),
    Wait(u32),
    TagInstance(u8),
    TagVolume(u8),
    TagGroup(u8),
    TagKeyPair(u8),
    DeleteKeyPair(u8),
    Hide(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6).prop_map(Step::Run),
        (0u8..6).prop_map(Step::Describe),
        (0u8..6).prop_map(Step::DescribeByTag),
        (0u8..6).prop_map(Step::Terminate),
        (0u8..6).prop_map(Step::Interrupt),
        (0u8..6).prop_map(Step::DeleteGroup),
        (0u8..6).prop_map(Step::Usage),
        (0u32..120_000).prop_map(Step::Wait),
        (0u8..6).prop_map(Step::TagInstance),
        (0u8..6).prop_map(Step::TagVolume),
        (0u8..6).prop_map(Step::TagGroup),
        (0u8..6).prop_map(Step::TagKeyPair),
        (0u8..6).prop_map(Step::DeleteKeyPair),
        (0u8..6).prop_map(Step::Hide),
    ]
}

/// Runs `steps` on a fresh simulator and returns every answer, the ground truth and the audit hash.
fn run(seed: u64, steps: &[Step]) -> (Vec<String>, Vec<sim_ec2::InstanceTruth>, String) {
    run_watched(seed, steps, &mut |_| {})
}

/// Runs `steps` like [`run`], handing the simulator to `after_step` after each.
fn run_watched(
    seed: u64,
    steps: &[Step],
    after_step: &mut dyn FnMut(&SimEc2),
) -> (Vec<String>, Vec<sim_ec2::InstanceTruth>, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let region = RegionLabel::new("us-east-1").expect("region");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let faults = FaultConfig::swarm(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let sim =
            SimEc2::new(SimConfig::new(seed, vec![region.clone()]).with_faults(faults), clock.clone()).expect("config");
        let mut answers = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        let mut groups: Vec<String> = Vec::new();
        let mut key_ids: Vec<String> = Vec::new();
        for n in 0..6 {
            let tags = Tags::from([("grant".to_string(), format!("g{n}"))]);
            let key = ImportKeyPairRequest {
                key_name: format!("k{n}"),
                public_key_openssh: PUBLIC_KEY.into(),
                tags: tags.clone(),
            };
            let imported = sim.import_key_pair(&region, key).await;
            answers.push(format!("{imported:?}"));
            key_ids.push(imported.map(|k| k.key_pair_id).unwrap_or_default());
            let group =
                CreateSecurityGroupRequest { vpc_id: None, group_name: format!("g{n}"), description: "d".into(), tags };
            let id = sim.create_security_group(&region, group).await;
            answers.push(format!("{id:?}"));
            groups.push(id.unwrap_or_default());
        }
        clock.advance_ms(20_000);
        let pick = |list: &[String], i: u8| list.get(usize::from(i) % list.len().max(1)).cloned().unwrap_or_default();
        for step in steps {
            clock.advance_ms(250);
            let answer = match step {
                Step::Run(n) => {
                    let tags = Tags::from([("grant".to_string(), format!("g{n}"))]);
                    let req = RunInstancesRequest {
                        image_id: "ami-0123456789abcdef0".into(),
                        instance_type: "c6i.large".into(),
                        key_name: format!("k{n}"),
                        security_group_ids: vec![pick(&groups, *n)],
                        user_data_base64: String::new(),
                        client_token: format!("tok-{n}"),
                        root_volume_gib: 8,
                        root_device_name: "/dev/xvda".into(),
                        imdsv2_required: true,
                        imds_hop_limit: 1,
                        shutdown_behavior: if n % 2 == 0 {
                            ShutdownBehavior::Stop
                        } else {
                            ShutdownBehavior::Terminate
                        },
                        instance_tags: tags.clone(),
                        volume_tags: tags,
                        subnet_id: None,
                        availability_zone: None,
                    };
                    let result = sim.run_instance(&region, req).await;
                    if let Ok(info) = &result
                        && !ids.iter().any(|id| *id == info.instance_id)
                    {
                        ids.push(info.instance_id.to_string());
                    }
                    format!("{result:?}")
                }
                Step::Describe(i) => {
                    format!("{:?}", sim.describe_instances(&region, vec![pick(&ids, *i)], vec![]).await)
                }
                Step::DescribeByTag(n) => {
                    let filters = vec![Filter::tag("grant", [format!("g{n}")])];
                    format!("{:?}", sim.describe_instances(&region, vec![], filters).await)
                }
                Step::Terminate(i) => format!("{:?}", sim.terminate_instances(&region, vec![pick(&ids, *i)]).await),
                Step::Interrupt(i) => format!("{:?}", sim.interrupt(&pick(&ids, *i), InterruptReason::GuestShutdown)),
                Step::DeleteGroup(i) => format!("{:?}", sim.delete_security_group(&region, &pick(&groups, *i)).await),
                Step::Usage(i) => {
                    let now = sim.now_unix_ms();
                    format!("{:?}", sim.network_usage(&region, &[pick(&ids, *i)], now - 100_000, now).await)
                }
                Step::Wait(ms) => {
                    clock.advance_ms(u64::from(*ms));
                    String::new()
                }
                Step::TagInstance(i) | Step::TagVolume(i) | Step::TagGroup(i) | Step::TagKeyPair(i) => {
                    let target = match step {
                        Step::TagInstance(_) => pick(&ids, *i),
                        Step::TagVolume(_) => sim.instance(&pick(&ids, *i)).map(|t| t.volume_id).unwrap_or_default(),
                        Step::TagGroup(_) => pick(&groups, *i),
                        _ => pick(&key_ids, *i),
                    };
                    let tags = Tags::from([("extra".to_string(), format!("t{i}"))]);
                    format!("{:?}", sim.create_tags(&region, vec![target], tags).await)
                }
                Step::DeleteKeyPair(n) => format!("{:?}", sim.delete_key_pair(&region, &format!("k{n}")).await),
                Step::Hide(i) => format!("{:?}", sim.hide_from_tag_filters(&pick(&ids, *i), 30_000)),
            };
            answers.push(answer);
            after_step(&sim);
        }
        (answers, sim.instances(), sim.audit_hash())
    })
}

proptest! {
    // 48 cases unless PROPTEST_CASES says otherwise (a local soak).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    /// The same seed and the same calls give the same answers, ground truth and audit hash.
    #[test]
    fn runs_are_reproducible(seed in 0u64..1_000, steps in proptest::collection::vec(step(), 1..60)) {
        let first = run(seed, &steps);
        let second = run(seed, &steps);
        prop_assert_eq!(&first.0, &second.0);
        prop_assert_eq!(&first.1, &second.1);
        prop_assert_eq!(&first.2, &second.2);
    }

    /// The incrementally refreshed views (instance truths and live resources, each with a note
    /// taken of it) are, after every call, exactly what reading everything afresh gives.
    #[test]
    fn incremental_views_match_full_reads(seed in 0u64..1_000, steps in proptest::collection::vec(step(), 1..80)) {
        let mut truths = InstanceTruths::new();
        let mut live = LiveResources::new();
        let mut mismatch = None;
        run_watched(seed, &steps, &mut |sim| {
            sim.refresh_instances(&mut truths, |t| (t.instance_id.clone(), t.tags.clone()));
            sim.refresh_live(&mut live, |r| r.tags.clone());
            let full = sim.instances();
            let cached: Vec<_> = truths.truths().cloned().collect();
            let notes_agree = truths.iter().all(|(t, (id, tags))| *id == t.instance_id && *tags == t.tags);
            let live_full = sim.live_resources();
            let live_cached: Vec<_> = live.iter().map(|(r, _)| r.clone()).collect();
            let live_notes_agree = live.iter().all(|(r, tags)| *tags == r.tags);
            if mismatch.is_none() && (cached != full || !notes_agree || live_cached != live_full || !live_notes_agree) {
                mismatch = Some(format!("truths {cached:?}\nvs {full:?}\nlive {live_cached:?}\nvs {live_full:?}"));
            }
            if truths.len() != full.len() || live.len() != live_full.len() {
                mismatch.get_or_insert_with(|| "lengths differ".to_string());
            }
        });
        prop_assert!(mismatch.is_none(), "{}", mismatch.unwrap_or_default());
    }

    /// Every instance's history is a chain of contiguous intervals that starts at launch, never
    /// leaves `terminated`, and agrees with its running time.
    #[test]
    fn state_intervals_hang_together(seed in 0u64..1_000, steps in proptest::collection::vec(step(), 1..60)) {
        let (_, instances, _) = run(seed, &steps);
        for truth in instances {
            let intervals = &truth.intervals;
            prop_assert!(!intervals.is_empty());
            prop_assert_eq!(intervals[0].from_ms, truth.launch_time_unix_ms);
            for pair in intervals.windows(2) {
                prop_assert_eq!(pair[0].to_ms, Some(pair[1].from_ms));
                prop_assert!(pair[0].state != InstanceState::Terminated, "nothing follows terminated: {:?}", intervals);
            }
            prop_assert_eq!(intervals.last().and_then(|i| i.to_ms), None);
            prop_assert_eq!(intervals.last().map(|i| i.state), Some(truth.state));
            let now = intervals.last().map_or(0, |i| i.from_ms);
            let running: u64 = intervals
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .map(|i| i.to_ms.unwrap_or(now.max(i.from_ms)) - i.from_ms)
                .sum();
            if truth.state != InstanceState::Running {
                prop_assert_eq!(running, truth.running_ms);
            }
        }
    }
}
