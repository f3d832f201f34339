//! One test per simulated EC2 behaviour: each fails if the behaviour is removed.
//!
//! Tests run on tokio's paused clock (`start_paused = true`), so `sleep` moves virtual time at once.

use std::sync::Arc;

use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Ec2PortExt, Filter, ImportKeyPairRequest,
    InstanceState, Operation, RunInstancesRequest, ShutdownBehavior, Tags, codes,
};
use backend_api::{Clock, RegionLabel, TokioClock};
use base64::Engine;
use rand::SeedableRng;
use sim_ec2::{FaultConfig, InterruptReason, ResourceKind, SimConfig, SimEc2};

const T0: u64 = 1_700_000_000_000;
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0c2ltdWxhdGVkLWtleS1mb3ItdGVzdHMtb25seQ== test";

fn us_east() -> RegionLabel {
    RegionLabel::new("us-east-1").expect("valid region")
}

fn eu_west() -> RegionLabel {
    RegionLabel::new("eu-west-1").expect("valid region")
}

struct World {
    sim: Arc<SimEc2>,
    clock: Arc<TokioClock>,
}

impl World {
    fn new(seed: u64, faults: FaultConfig) -> Self {
        Self::with_config(SimConfig::new(seed, vec![us_east(), eu_west()]).with_faults(faults))
    }

    fn with_config(config: SimConfig) -> Self {
        let clock = Arc::new(TokioClock::starting_at(T0));
        let sim = Arc::new(SimEc2::new(config, clock.clone()).expect("valid config"));
        Self { sim, clock }
    }

    async fn sleep_ms(&self, ms: u64) {
        self.clock.sleep_ms(ms).await;
    }

    fn now(&self) -> u64 {
        self.clock.now_unix_ms()
    }

    /// A key pair and a security group, visible.
    async fn prerequisites(&self, grant: &str) -> (String, String) {
        let region = us_east();
        let key = format!("key-{grant}");
        self.sim
            .import_key_pair(
                &region,
                ImportKeyPairRequest {
                    key_name: key.clone(),
                    public_key_openssh: PUBLIC_KEY.into(),
                    tags: grant_tags(grant),
                },
            )
            .await
            .expect("import key pair");
        let group = self
            .sim
            .create_security_group(
                &region,
                CreateSecurityGroupRequest {
                    vpc_id: None,
                    group_name: format!("sg-of-{grant}").replace("sg-of", "grp"),
                    description: "test".into(),
                    tags: grant_tags(grant),
                },
            )
            .await
            .expect("create group");
        self.sleep_ms(self.sim.faults().visibility_delay_ms_max + 1).await;
        (key, group)
    }

    async fn run(&self, req: RunInstancesRequest) -> Result<aws_backend::port::InstanceInfo, Ec2Error> {
        self.sim.run_instance(&us_east(), req).await
    }

    async fn describe(&self, id: &str) -> Result<Vec<aws_backend::port::InstanceInfo>, Ec2Error> {
        self.sim.describe_instances(&us_east(), vec![id.to_string()], vec![]).await
    }

    async fn state(&self, id: &str) -> InstanceState {
        self.describe(id).await.expect("describe")[0].state
    }
}

fn grant_tags(grant: &str) -> Tags {
    Tags::from([("grant".to_string(), grant.to_string())])
}

fn request(token: &str, key: &str, group: &str, grant: &str) -> RunInstancesRequest {
    RunInstancesRequest {
        image_id: "ami-0123456789abcdef0".into(),
        instance_type: "m6i.large".into(),
        key_name: key.into(),
        security_group_ids: vec![group.into()],
        user_data_base64: base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\necho hello\n"),
        client_token: token.into(),
        root_volume_gib: 20,
        root_device_name: "/dev/xvda".into(),
        imdsv2_required: true,
        imds_hop_limit: 1,
        shutdown_behavior: ShutdownBehavior::Terminate,
        instance_tags: grant_tags(grant),
        volume_tags: grant_tags(grant),
        subnet_id: None,
        availability_zone: None,
    }
}

/// Fixed delays so that tests can name exact instants.
fn fixed() -> FaultConfig {
    FaultConfig {
        launch_delay_ms_min: 10_000,
        launch_delay_ms_max: 10_000,
        termination_delay_ms_min: 20_000,
        termination_delay_ms_max: 20_000,
        ..FaultConfig::none()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, Ec2Error>) -> String {
    result.expect_err("the call must fail").code
}

#[tokio::test(start_paused = true)]
async fn lifecycle_runs_pending_running_shutting_down_terminated_with_delays() {
    let w = World::new(1, fixed());
    let (key, group) = w.prerequisites("g1").await;
    let t_launch = w.now();
    let info = w.run(request("tok-1", &key, &group, "g1")).await.expect("launch");
    assert_eq!(info.state, InstanceState::Pending);
    assert_eq!(info.state_reason_code.as_deref(), Some("pending"));
    assert!(info.public_dns_name.is_empty(), "no DNS name while pending");
    w.sleep_ms(9_999).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Pending);
    w.sleep_ms(1).await;
    let running = &w.describe(&info.instance_id).await.expect("describe")[0];
    assert_eq!(running.state, InstanceState::Running);
    assert!(running.public_dns_name.ends_with(".compute-1.amazonaws.com"), "{}", running.public_dns_name);

    w.sleep_ms(5_000).await;
    let t_term = w.now();
    let changes = w.sim.terminate_instances(&us_east(), vec![info.instance_id.to_string()]).await.expect("terminate");
    assert_eq!(changes[0].previous_state, InstanceState::Running);
    assert_eq!(changes[0].current_state, InstanceState::ShuttingDown);
    w.sleep_ms(19_999).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::ShuttingDown);
    w.sleep_ms(1).await;
    let gone = &w.describe(&info.instance_id).await.expect("describe")[0];
    assert_eq!(gone.state, InstanceState::Terminated);
    assert_eq!(gone.state_reason_code.as_deref(), Some("Client.UserInitiatedShutdown"));

    // Terminating again is idempotent.
    let again = w.sim.terminate_instances(&us_east(), vec![info.instance_id.to_string()]).await.expect("terminate");
    assert_eq!(
        (again[0].previous_state, again[0].current_state),
        (InstanceState::Terminated, InstanceState::Terminated)
    );

    // Ground truth has the exact intervals.
    let truth = w.sim.instance(&info.instance_id).expect("truth");
    let intervals: Vec<_> = truth.intervals.iter().map(|i| (i.state, i.from_ms, i.to_ms)).collect();
    assert_eq!(
        intervals,
        vec![
            (InstanceState::Pending, t_launch, Some(t_launch + 10_000)),
            (InstanceState::Running, t_launch + 10_000, Some(t_term)),
            (InstanceState::ShuttingDown, t_term, Some(t_term + 20_000)),
            (InstanceState::Terminated, t_term + 20_000, None),
        ]
    );
    assert_eq!(truth.running_ms, 5_000);
}

#[tokio::test(start_paused = true)]
async fn terminated_instances_stay_visible_about_an_hour_then_vanish() {
    let w = World::new(2, FaultConfig::none());
    let (key, group) = w.prerequisites("g").await;
    let info = w.run(request("t", &key, &group, "g")).await.expect("launch");
    w.sim.terminate_instances(&us_east(), vec![info.instance_id.to_string()]).await.expect("terminate");
    w.sleep_ms(3_600_000 - 1).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Terminated);
    let by_tag =
        w.sim.describe_instances(&us_east(), vec![], vec![Filter::tag("grant", ["g"])]).await.expect("describe");
    assert_eq!(by_tag.len(), 1);
    w.sleep_ms(1).await;
    assert_eq!(code(w.describe(&info.instance_id).await), codes::INSTANCE_NOT_FOUND);
    let by_tag =
        w.sim.describe_instances(&us_east(), vec![], vec![Filter::tag("grant", ["g"])]).await.expect("describe");
    assert!(by_tag.is_empty(), "gone from filtered Describe too");
    assert!(w.sim.instance(&info.instance_id).is_some(), "ground truth remembers every instance");
}

#[tokio::test(start_paused = true)]
async fn guest_shutdown_honours_instance_initiated_shutdown_behavior() {
    let w = World::new(3, fixed());
    let (key, group) = w.prerequisites("g").await;
    let mut stop_req = request("stop", &key, &group, "g");
    stop_req.shutdown_behavior = ShutdownBehavior::Stop;
    let stopper = w.run(stop_req).await.expect("launch");
    let terminator = w.run(request("term", &key, &group, "g")).await.expect("launch");
    w.sleep_ms(10_000).await;
    assert!(w.sim.interrupt(&stopper.instance_id, InterruptReason::GuestShutdown).expect("known"));
    assert!(w.sim.interrupt(&terminator.instance_id, InterruptReason::GuestShutdown).expect("known"));
    assert_eq!(w.state(&stopper.instance_id).await, InstanceState::Stopping);
    assert_eq!(w.state(&terminator.instance_id).await, InstanceState::ShuttingDown);
    w.sleep_ms(20_000).await;
    let stopped = &w.describe(&stopper.instance_id).await.expect("describe")[0];
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(stopped.state_reason_code.as_deref(), Some("Client.InstanceInitiatedShutdown"));
    assert_eq!(w.state(&terminator.instance_id).await, InstanceState::Terminated);
    // A stopped instance still exists (and still holds its volume); a terminated one does not.
    let live: Vec<_> =
        w.sim.live_resources_tagged("grant", "g").into_iter().filter(|r| r.kind == ResourceKind::Instance).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, stopper.instance_id);
}

#[tokio::test(start_paused = true)]
async fn instances_end_on_their_own_with_real_state_reason_codes() {
    let faults = FaultConfig { spontaneous_exit_probability: 1.0, spontaneous_exit_after_ms_max: 60_000, ..fixed() };
    let w = World::new(4, faults);
    let (key, group) = w.prerequisites("g").await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let info = w.run(request(&format!("t{n}"), &key, &group, "g")).await.expect("launch");
        ids.push(info.instance_id);
        w.sleep_ms(600).await; // RunInstances refills 2 tokens/s.
    }
    w.sleep_ms(200_000).await;
    let mut reasons = std::collections::BTreeSet::new();
    for id in &ids {
        let truth = w.sim.instance(id).expect("truth");
        let reason = truth.intervals.last().and_then(|i| i.reason_code.clone()).expect("a reason");
        // A retirement stops the instance even though its shutdown behaviour is terminate.
        let end = if reason == "Server.ScheduledStop" { InstanceState::Stopped } else { InstanceState::Terminated };
        assert_eq!(truth.state, end, "every instance ended by itself: {truth:?}");
        if reason == "Server.InternalError" {
            assert_eq!(truth.running_ms, 0, "a failed launch never runs");
        }
        reasons.insert(reason);
    }
    // On-demand instances are retired (stopped), shut down by their guest, or fail to launch;
    // Spot reclaims are for Spot instances, which the port does not launch.
    let expected: std::collections::BTreeSet<String> =
        ["Server.ScheduledStop", "Client.InstanceInitiatedShutdown", "Server.InternalError"].map(String::from).into();
    assert_eq!(reasons, expected);
    assert!(w.sim.stats().faults.keys().any(|k| k.starts_with("exit:")));
}

#[tokio::test(start_paused = true)]
async fn new_instances_are_invisible_for_a_while_by_id_and_to_terminate() {
    let faults = FaultConfig { visibility_delay_ms_min: 3_000, visibility_delay_ms_max: 3_000, ..fixed() };
    let w = World::new(5, faults);
    let (key, group) = w.prerequisites("g").await;
    let info = w.run(request("t", &key, &group, "g")).await.expect("launch");
    assert_eq!(code(w.describe(&info.instance_id).await), codes::INSTANCE_NOT_FOUND);
    let terminate = w.sim.terminate_instances(&us_east(), vec![info.instance_id.to_string()]).await;
    assert_eq!(code(terminate), codes::INSTANCE_NOT_FOUND);
    // Describe by filter simply leaves it out.
    let listed =
        w.sim.describe_instances(&us_east(), vec![], vec![Filter::tag("grant", ["g"])]).await.expect("describe");
    assert!(listed.is_empty());
    // The failed terminate did nothing: the instance goes on to run.
    w.sleep_ms(10_000).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Running);
    assert_eq!(w.sim.instance(&info.instance_id).expect("truth").state, InstanceState::Running);
}

#[tokio::test(start_paused = true)]
async fn new_groups_are_invisible_for_a_while() {
    let faults = FaultConfig { visibility_delay_ms_min: 2_000, visibility_delay_ms_max: 2_000, ..FaultConfig::none() };
    let w = World::new(6, faults);
    let region = us_east();
    let req = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: "g".into(),
        description: "d".into(),
        tags: grant_tags("g"),
    };
    let id = w.sim.create_security_group(&region, req).await.expect("create");
    let ingress = AuthorizeIngressRequest { group_id: id.clone(), port: 22, cidrs: vec!["0.0.0.0/0".into()] };
    assert_eq!(code(w.sim.authorize_ingress(&region, ingress.clone()).await), codes::GROUP_NOT_FOUND);
    assert_eq!(code(w.sim.describe_security_groups(&region, vec![id.clone()], vec![]).await), codes::GROUP_NOT_FOUND);
    assert_eq!(code(w.sim.delete_security_group(&region, &id).await), codes::GROUP_NOT_FOUND);
    let filtered = w.sim.describe_security_groups(&region, vec![], vec![Filter::tag("grant", ["g"])]).await;
    assert!(filtered.expect("describe").is_empty());
    w.sleep_ms(2_000).await;
    w.sim.authorize_ingress(&region, ingress.clone()).await.expect("visible now");
    assert_eq!(code(w.sim.authorize_ingress(&region, ingress).await), codes::PERMISSION_DUPLICATE);
    let found = w.sim.describe_security_groups(&region, vec![id.clone()], vec![]).await.expect("describe");
    assert_eq!(found[0].group_name, "g");
}

#[tokio::test(start_paused = true)]
async fn client_token_makes_run_instances_idempotent() {
    let w = World::new(7, fixed());
    let (key, group) = w.prerequisites("g").await;
    let first = w.run(request("token-A", &key, &group, "g")).await.expect("launch");
    let again = w.run(request("token-A", &key, &group, "g")).await.expect("replay");
    assert_eq!(first.instance_id, again.instance_id);
    let mut other = request("token-A", &key, &group, "g");
    other.instance_type = "m6i.xlarge".into();
    assert_eq!(code(w.run(other).await), codes::IDEMPOTENT_PARAMETER_MISMATCH);

    // While it shuts down the token still names it; once it has terminated EC2 answers
    // IdempotentInstanceTerminated (since January 2025), for good, and launches nothing.
    w.sim.terminate_instances(&us_east(), vec![first.instance_id.to_string()]).await.expect("terminate");
    let shutting = w.run(request("token-A", &key, &group, "g")).await.expect("replay while shutting down");
    assert_eq!(
        (shutting.instance_id.as_str(), shutting.state),
        (first.instance_id.as_str(), InstanceState::ShuttingDown)
    );
    w.sleep_ms(120_000).await;
    assert_eq!(code(w.run(request("token-A", &key, &group, "g")).await), "IdempotentInstanceTerminated");
    w.sleep_ms(2 * 3_600_000).await;
    assert_eq!(code(w.run(request("token-A", &key, &group, "g")).await), "IdempotentInstanceTerminated");
    assert_eq!(w.sim.stats().instances_launched, 1);

    assert_eq!(code(w.run(request(&"x".repeat(65), &key, &group, "g")).await), codes::INVALID_PARAMETER_VALUE);
    assert_eq!(code(w.run(request("tökén", &key, &group, "g")).await), codes::INVALID_PARAMETER_VALUE);
    w.run(request(&"x".repeat(64), &key, &group, "g")).await.expect("64 ASCII characters are fine");
}

#[tokio::test(start_paused = true)]
async fn token_buckets_throttle_per_region_and_class_and_throttled_calls_take_no_tokens() {
    let w = World::new(8, FaultConfig::none());
    let (east, west) = (us_east(), eu_west());
    // The non-mutating bucket holds 100 tokens (the prerequisites above used none of them).
    for _ in 0..100 {
        w.sim.describe_instances(&east, vec![], vec![]).await.expect("within the bucket");
    }
    for _ in 0..1_000 {
        assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    }
    // Other classes and other regions have their own buckets.
    w.sim.delete_key_pair(&east, "nothing").await.expect("mutating bucket is separate");
    w.sim.describe_instances(&west, vec![], vec![]).await.expect("eu-west-1 is separate");
    // 20 tokens per second: one token every 50 ms, and the throttled calls above took none.
    w.sleep_ms(49).await;
    assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    w.sleep_ms(1).await;
    w.sim.describe_instances(&east, vec![], vec![]).await.expect("refilled one token");
    assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    let stats = w.sim.stats();
    assert_eq!(stats.throttles[&Operation::DescribeInstances], 1_002);
    assert_eq!(stats.calls[&Operation::DescribeInstances], 1_104, "eu-west-1 included");
}

#[tokio::test(start_paused = true)]
async fn a_thousand_run_instances_take_at_least_497_virtual_seconds() {
    let w = World::new(9, FaultConfig::none());
    let (key, group) = w.prerequisites("g").await;
    let start = w.now();
    let (mut launched, mut throttled) = (0, 0);
    while launched < 1_000 {
        match w.run(request(&format!("t{launched}"), &key, &group, "g")).await {
            Ok(_) => launched += 1,
            Err(e) if e.is_throttle() => {
                throttled += 1;
                w.sleep_ms(100).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let elapsed_ms = w.now() - start;
    assert!(elapsed_ms >= 497_000, "1,000 launches took only {elapsed_ms} ms");
    assert!(elapsed_ms < 510_000, "as fast as allowed: {elapsed_ms} ms");
    assert!(throttled > 0);
    assert_eq!(w.sim.stats().throttles[&Operation::RunInstances], throttled);
}

#[tokio::test(start_paused = true)]
async fn run_instances_instance_bucket_is_separate_from_the_request_bucket() {
    let w = World::new(10, FaultConfig::none());
    let (key, group) = w.prerequisites("g").await;
    // Launching 1,000 instances at the request rate (2/s) never drains the 1,000-instance bucket
    // (it refills 2/s too), so drain it by idling between bursts is impossible; instead check
    // that a replayed token takes a request token but launches nothing.
    let first = w.run(request("same", &key, &group, "g")).await.expect("launch");
    for _ in 0..4 {
        assert_eq!(w.run(request("same", &key, &group, "g")).await.expect("replay").instance_id, first.instance_id);
    }
    assert_eq!(code(w.run(request("same", &key, &group, "g")).await), codes::REQUEST_LIMIT_EXCEEDED);
    assert_eq!(w.sim.stats().instances_launched, 1);
}

#[tokio::test(start_paused = true)]
async fn groups_in_use_cannot_be_deleted_until_a_lag_after_termination() {
    let faults =
        FaultConfig { dependency_violation_lag_ms_min: 15_000, dependency_violation_lag_ms_max: 15_000, ..fixed() };
    let w = World::new(11, faults);
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    let info = w.run(request("t", &key, &group, "g")).await.expect("launch");
    assert_eq!(code(w.sim.delete_security_group(&region, &group).await), codes::DEPENDENCY_VIOLATION);
    w.sleep_ms(10_000).await;
    w.sim.terminate_instances(&region, vec![info.instance_id.to_string()]).await.expect("terminate");
    assert_eq!(code(w.sim.delete_security_group(&region, &group).await), codes::DEPENDENCY_VIOLATION);
    w.sleep_ms(20_000).await; // terminated now
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Terminated);
    assert_eq!(code(w.sim.delete_security_group(&region, &group).await), codes::DEPENDENCY_VIOLATION);
    w.sleep_ms(15_000).await;
    w.sim.delete_security_group(&region, &group).await.expect("released after the lag");
    assert_eq!(code(w.sim.delete_security_group(&region, &group).await), codes::GROUP_NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn duplicate_names_fail_and_deleting_a_missing_key_pair_succeeds() {
    let w = World::new(12, FaultConfig::none());
    let region = us_east();
    let (key, _group) = w.prerequisites("g").await;
    let dup_key =
        ImportKeyPairRequest { key_name: key.clone(), public_key_openssh: PUBLIC_KEY.into(), tags: Tags::new() };
    assert_eq!(code(w.sim.import_key_pair(&region, dup_key.clone()).await), codes::KEY_PAIR_DUPLICATE);
    let dup_group = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: "grp-g".into(),
        description: "d".into(),
        tags: Tags::new(),
    };
    assert_eq!(code(w.sim.create_security_group(&region, dup_group.clone()).await), codes::GROUP_DUPLICATE);
    // Names are per region.
    w.sim.import_key_pair(&eu_west(), dup_key.clone()).await.expect("another region");
    w.sim.delete_key_pair(&region, &key).await.expect("delete");
    w.sim.delete_key_pair(&region, &key).await.expect("deleting a missing key pair succeeds");
    w.sim.delete_key_pair(&region, "never-existed").await.expect("deleting a missing key pair succeeds");
    w.sim.import_key_pair(&region, dup_key).await.expect("the name is free again");
    let bad =
        ImportKeyPairRequest { key_name: "bad".into(), public_key_openssh: "not a key".into(), tags: Tags::new() };
    assert_eq!(code(w.sim.import_key_pair(&region, bad).await), "InvalidKey.Format");
}

#[tokio::test(start_paused = true)]
async fn capacity_runs_out_per_instance_type_and_zone_pool() {
    let w = World::new(13, FaultConfig::none());
    let (key, group) = w.prerequisites("g").await;
    w.sim.exhaust_capacity(&us_east(), "m6i.large", 60_000).expect("known type");
    assert_eq!(code(w.run(request("a", &key, &group, "g")).await), codes::INSUFFICIENT_INSTANCE_CAPACITY);
    let mut bigger = request("b", &key, &group, "g");
    bigger.instance_type = "m6i.xlarge".into();
    w.run(bigger).await.expect("another type is another pool");
    w.sim.run_instance(&eu_west(), request("c", "x", "sg-0", "g")).await.expect_err("no key there, but not ICE");
    w.sleep_ms(60_000).await;
    w.run(request("a", &key, &group, "g")).await.expect("capacity is back");

    // Random shortages: with probability 1 every pool runs dry on first use.
    let faults = FaultConfig { insufficient_capacity_probability: 1.0, ..FaultConfig::none() };
    let w = World::new(13, faults);
    let (key, group) = w.prerequisites("g").await;
    assert_eq!(code(w.run(request("a", &key, &group, "g")).await), codes::INSUFFICIENT_INSTANCE_CAPACITY);
    assert_eq!(w.sim.stats().faults[codes::INSUFFICIENT_INSTANCE_CAPACITY], 1);
}

#[tokio::test(start_paused = true)]
async fn internal_errors_and_unavailable_come_at_the_configured_rates() {
    let faults = FaultConfig { internal_error_probability: 0.2, unavailable_probability: 0.1, ..FaultConfig::none() };
    let w = World::new(14, faults);
    let region = us_east();
    let (mut internal, mut unavailable) = (0, 0);
    for _ in 0..2_000 {
        match w.sim.describe_instance_types(&region, vec![]).await {
            Ok(_) => {}
            Err(e) if e.code == codes::INTERNAL_ERROR => internal += 1,
            Err(e) if e.code == codes::UNAVAILABLE => unavailable += 1,
            Err(e) => panic!("unexpected {e}"),
        }
        w.sleep_ms(50).await;
    }
    assert!((320..480).contains(&internal), "internal errors {internal} of 2,000 at 20%");
    assert!((110..210).contains(&unavailable), "unavailable {unavailable} of 1,600 at 10%");
    let stats = w.sim.stats();
    assert_eq!(stats.faults[codes::INTERNAL_ERROR], internal);
    assert_eq!(stats.faults[codes::UNAVAILABLE], unavailable);
}

#[tokio::test(start_paused = true)]
async fn a_lost_response_still_takes_effect() {
    let faults = FaultConfig { response_lost_probability: 1.0, ..FaultConfig::none() };
    let w = World::new(15, faults);
    let region = us_east();
    let req = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: "g".into(),
        description: "d".into(),
        tags: grant_tags("g"),
    };
    assert_eq!(code(w.sim.create_security_group(&region, req.clone()).await), codes::INTERNAL_ERROR);
    assert_eq!(w.sim.live_resources_tagged("grant", "g").len(), 1, "the group exists although the call failed");
    assert_eq!(code(w.sim.create_security_group(&region, req).await), codes::GROUP_DUPLICATE);
}

#[tokio::test(start_paused = true)]
async fn user_data_must_be_base64_and_at_most_16_kib_decoded() {
    let w = World::new(16, FaultConfig::none());
    let (key, group) = w.prerequisites("g").await;
    let encode = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n]);
    let mut req = request("a", &key, &group, "g");
    req.user_data_base64 = "not base64!".into();
    assert_eq!(code(w.run(req).await), codes::INVALID_PARAMETER_VALUE);
    let mut req = request("b", &key, &group, "g");
    req.user_data_base64 = encode(16_385);
    assert_eq!(code(w.run(req).await), codes::INVALID_PARAMETER_VALUE);
    let mut req = request("c", &key, &group, "g");
    req.user_data_base64 = encode(16_384);
    w.run(req).await.expect("exactly 16 KiB is allowed");
}

#[tokio::test(start_paused = true)]
async fn describe_instance_types_answers_from_a_realistic_catalogue() {
    let w = World::new(17, FaultConfig::none());
    let all = w.sim.describe_instance_types(&us_east(), vec![]).await.expect("describe");
    for family in ["t3", "m5", "m6i", "c5", "c6i", "r5", "r6i"] {
        assert!(all.iter().any(|t| t.instance_type.starts_with(&format!("{family}."))), "{family}");
    }
    let find = |name: &str| all.iter().find(|t| t.instance_type == name).map(|t| (t.vcpus, t.memory_mib));
    assert_eq!(find("m6i.large"), Some((2, 8_192)));
    assert_eq!(find("c6i.xlarge"), Some((4, 8_192)));
    assert_eq!(find("r5.24xlarge"), Some((96, 786_432)));
    assert_eq!(find("m6i.32xlarge"), Some((128, 524_288)));
    assert_eq!(find("t3.micro"), Some((2, 1_024)));
    let m6i = w.sim.describe_instance_types(&us_east(), vec!["m6i".into()]).await.expect("describe");
    assert_eq!(m6i.len(), 10);
    assert!(m6i.iter().all(|t| t.instance_type.starts_with("m6i.")));
}

/// GetNetworkUsage over `[from, to)` of one instance: (bytes in, bytes out).
async fn usage(w: &World, id: &str, from: u64, to: u64) -> (u64, u64) {
    let list = w.sim.network_usage(&us_east(), &[id.to_string()], from, to).await.expect("usage");
    list.iter().find(|u| u.instance_id == id).map_or((0, 0), |u| (u.bytes_in, u.bytes_out))
}

/// Launches one instance, lets it run `run_ms`, terminates it and waits `after_ms`.
async fn ran(w: &World, run_ms: u64, after_ms: u64) -> String {
    let (key, group) = w.prerequisites("g").await;
    let id = w.run(request("a", &key, &group, "g")).await.expect("launch").instance_id.to_string();
    w.sleep_ms(run_ms).await;
    w.sim.terminate_instances(&us_east(), vec![id.clone()]).await.expect("terminate");
    w.sleep_ms(after_ms).await;
    id
}

const PERIOD_MS: u64 = aws_backend::port::METRIC_PERIOD_MS;

#[tokio::test(start_paused = true)]
async fn cloudwatch_answers_five_minute_sums_aligned_to_periods() {
    // No publication lag and no gaps: only the datapoints' shape is at stake.
    let w = World::new(18, fixed());
    let t0 = w.now();
    let id = ran(&w, 20 * 60_000, 10 * 60_000).await;
    let truth = w.sim.instance(&id).expect("truth");
    let points = w.sim.cloudwatch_datapoints(&id).expect("known");
    // One datapoint per 5-minute period it ran in, stamped with the period's start (aligned
    // to the clock, not to the launch), holding that period's bytes: together, the truth.
    assert!(points.iter().all(|d| d.timestamp_unix_ms.is_multiple_of(PERIOD_MS)), "{points:?}");
    assert!(points.windows(2).all(|p| p[1].timestamp_unix_ms == p[0].timestamp_unix_ms + PERIOD_MS));
    let first = &points[0];
    assert!(first.timestamp_unix_ms < t0 && t0 < first.timestamp_unix_ms + PERIOD_MS, "t0 is mid-period here");
    assert_eq!(points.iter().map(|d| d.bytes_in).sum::<u64>(), truth.network_bytes_in);
    assert_eq!(points.iter().map(|d| d.bytes_out).sum::<u64>(), truth.network_bytes_out);
    assert!(points.iter().all(|d| d.bytes_in > 0));
    // A window starting at the launch misses the first period: its datapoint is stamped before
    // the window (StartTime rounds down to the minute, not to the period).
    let (from_launch, _) = usage(&w, &id, t0, w.now()).await;
    assert_eq!(from_launch, truth.network_bytes_in - first.bytes_in);
    // Widened to whole periods (`metric_window`, what the backend asks for), it is whole.
    let (start, end) = aws_backend::port::metric_window(t0, w.now());
    assert_eq!(usage(&w, &id, start, end).await, (truth.network_bytes_in, truth.network_bytes_out));
    // A window inside a period, not holding its start, holds no datapoint, though bytes flowed.
    let mid = points[1].timestamp_unix_ms;
    assert_eq!(usage(&w, &id, mid + 60_000, mid + 240_000).await, (0, 0));
    assert_eq!(usage(&w, &id, mid, mid + 60_000).await.0, points[1].bytes_in, "the period's Sum, whole");
    // Windows split at a period boundary add up.
    let split = points[2].timestamp_unix_ms;
    let (a, b) = (usage(&w, &id, start, split).await, usage(&w, &id, split, end).await);
    assert_eq!((a.0 + b.0, a.1 + b.1), (truth.network_bytes_in, truth.network_bytes_out));
    // Nothing after the instance ended.
    assert_eq!(usage(&w, &id, end, end + 3_600_000).await, (0, 0));
}

#[tokio::test(start_paused = true)]
async fn cloudwatch_publishes_each_datapoint_minutes_after_its_period_ends() {
    let lag_ms = 3 * 60_000;
    let w = World::new(20, FaultConfig { metrics_lag_ms_min: lag_ms, metrics_lag_ms_max: lag_ms, ..fixed() });
    let (key, group) = w.prerequisites("g").await;
    let id = w.run(request("a", &key, &group, "g")).await.expect("launch").instance_id.to_string();
    // The first whole period it runs in (it runs 10 s after launch, `fixed`).
    let from = (w.now() + 10_000).div_ceil(PERIOD_MS) * PERIOD_MS;
    let to = from + PERIOD_MS;
    w.sleep_ms(to + lag_ms - 1 - w.now()).await;
    assert_eq!(usage(&w, &id, from, to).await, (0, 0), "the period ended {lag_ms} ms - 1 ago: not yet");
    let d = w.sim.cloudwatch_datapoints(&id).expect("known").into_iter().find(|d| d.timestamp_unix_ms == from);
    let d = d.expect("a datapoint for the period");
    assert_eq!(d.published_unix_ms, Some(to + lag_ms));
    assert!(d.bytes_in > 0);
    w.sleep_ms(1).await;
    assert_eq!(usage(&w, &id, from, to).await, (d.bytes_in, d.bytes_out), "published");
    // Drawn per datapoint: within the range, not all alike.
    let w = World::new(21, FaultConfig { metrics_lag_ms_min: 60_000, metrics_lag_ms_max: 5 * 60_000, ..fixed() });
    let id = ran(&w, 2 * 3_600_000, 0).await;
    let lags: Vec<u64> = w
        .sim
        .cloudwatch_datapoints(&id)
        .expect("known")
        .iter()
        .map(|d| d.published_unix_ms.expect("no gaps") - (d.timestamp_unix_ms + PERIOD_MS))
        .collect();
    assert!(lags.iter().all(|l| (60_000..=5 * 60_000).contains(l)), "{lags:?}");
    assert!(lags.iter().any(|l| *l != lags[0]), "{lags:?}");
    // Ordinary CloudWatch: the default configuration publishes late too.
    let default = FaultConfig::default();
    assert!(default.metrics_lag_ms_min > 0 && default.metrics_lag_ms_max >= default.metrics_lag_ms_min);
}

#[tokio::test(start_paused = true)]
async fn cloudwatch_gaps_are_missing_for_good_and_every_answer_agrees() {
    let w = World::new(22, FaultConfig { metrics_gap_probability: 0.3, ..fixed() });
    let id = ran(&w, 2 * 3_600_000, 0).await;
    let truth = w.sim.instance(&id).expect("truth");
    let points = w.sim.cloudwatch_datapoints(&id).expect("known");
    let gaps = points.iter().filter(|d| d.published_unix_ms.is_none()).count();
    assert!(gaps > 0 && gaps < points.len(), "{gaps} gaps of {}", points.len());
    let published_in: u64 = points.iter().filter(|d| d.published_unix_ms.is_some()).map(|d| d.bytes_in).sum();
    let published_out: u64 = points.iter().filter(|d| d.published_unix_ms.is_some()).map(|d| d.bytes_out).sum();
    assert!(published_in < truth.network_bytes_in);
    // What CloudWatch will ever report, as ground truth for checkers.
    assert_eq!((truth.cloudwatch_bytes_in, truth.cloudwatch_bytes_out), (published_in, published_out));
    // A gap never fills in: the same answer now, in an hour and in a day, asked again and again.
    let (start, end) = aws_backend::port::metric_window(truth.launch_time_unix_ms, w.now());
    for wait_ms in [0, 3_600_000, 86_400_000] {
        w.sleep_ms(wait_ms).await;
        for _ in 0..3 {
            assert_eq!(usage(&w, &id, start, end).await, (published_in, published_out));
        }
    }
    assert_eq!(w.sim.cloudwatch_datapoints(&id).expect("known"), points, "the draws do not change");
}

#[tokio::test(start_paused = true)]
async fn get_metric_data_throttles_on_its_own_bucket_with_throttling() {
    let w = World::new(23, FaultConfig::none());
    let (east, west) = (us_east(), eu_west());
    let metrics = |region: RegionLabel| {
        let sim = w.sim.clone();
        async move { sim.network_usage(&region, &[], 0, 1).await }
    };
    // 50 requests at once (50 TPS), then CloudWatch's own code.
    for _ in 0..50 {
        metrics(east.clone()).await.expect("within CloudWatch's quota");
    }
    let throttled = metrics(east.clone()).await.expect_err("the 51st is throttled");
    assert_eq!(throttled.code, codes::THROTTLING);
    assert!(throttled.is_throttle());
    assert_eq!(
        w.sim.bucket_throttles().last().map(|(_, r, op)| (r.clone(), *op)),
        Some((east.clone(), Operation::GetNetworkUsage))
    );
    metrics(west).await.expect("eu-west-1 has its own quota");
    // None of it came out of EC2's buckets: the non-mutating one still holds its 100 tokens.
    for _ in 0..100 {
        w.sim.describe_instances(&east, vec![], vec![]).await.expect("EC2's bucket is untouched");
    }
    assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    // 50 a second: one token 20 ms on, while EC2's bucket (20 a second) is still empty.
    w.sleep_ms(19).await;
    assert_eq!(code(metrics(east.clone()).await), codes::THROTTLING);
    w.sleep_ms(1).await;
    metrics(east.clone()).await.expect("refilled one token");
    assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    // Other callers of the account's quota: random `Throttling`, and EC2's random throttles do
    // not reach CloudWatch.
    let w = World::new(24, FaultConfig { cloudwatch_throttle_probability: 1.0, ..FaultConfig::none() });
    assert_eq!(code(w.sim.network_usage(&us_east(), &[], 0, 1).await), codes::THROTTLING);
    assert_eq!(w.sim.fault_log().last().map(|f| f.kind.clone()), Some(codes::THROTTLING.to_string()));
    w.sim.describe_instances(&us_east(), vec![], vec![]).await.expect("EC2 is not throttled by CloudWatch's faults");
    let w = World::new(25, FaultConfig { throttle_probability: 1.0, ..FaultConfig::none() });
    w.sim.network_usage(&us_east(), &[], 0, 1).await.expect("CloudWatch is not throttled by EC2's faults");
    assert!(w.sim.bucket_throttles().is_empty());
}

#[tokio::test(start_paused = true)]
async fn describe_filters_select_by_tag_state_key_and_group_name() {
    let w = World::new(19, fixed());
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    let a = w.run(request("a", &key, &group, "alpha")).await.expect("launch");
    let mut req = request("b", &key, &group, "beta");
    req.instance_tags.insert("extra".into(), "1".into());
    let b = w.run(req).await.expect("launch");
    w.sleep_ms(10_000).await;
    w.sim.terminate_instances(&region, vec![b.instance_id.to_string()]).await.expect("terminate");
    let ids = |list: Vec<aws_backend::port::InstanceInfo>| list.into_iter().map(|i| i.instance_id).collect::<Vec<_>>();
    let describe = |filters: Vec<Filter>| {
        let sim = w.sim.clone();
        async move { sim.describe_instances(&us_east(), vec![], filters).await.expect("describe") }
    };
    assert_eq!(ids(describe(vec![Filter::tag("grant", ["alpha"])]).await), vec![a.instance_id.to_string()]);
    assert_eq!(ids(describe(vec![Filter::tag("grant", ["al*"])]).await), vec![a.instance_id.to_string()], "wildcards");
    assert_eq!(ids(describe(vec![Filter::tag_key("extra")]).await), vec![b.instance_id.to_string()]);
    let running = describe(vec![Filter::instance_states(&[InstanceState::Running])]).await;
    assert_eq!(ids(running), vec![a.instance_id.to_string()]);
    let by_key = Filter { name: "key-name".into(), values: vec![key.clone()] };
    assert_eq!(describe(vec![by_key]).await.len(), 2);
    let both = vec![Filter::tag("grant", ["alpha", "beta"]), Filter::instance_states(&[InstanceState::ShuttingDown])];
    assert_eq!(ids(describe(both).await), vec![b.instance_id.to_string()]);
    let bad = w.sim.describe_instances(&region, vec![], vec![Filter { name: "colour".into(), values: vec![] }]).await;
    assert_eq!(code(bad), codes::INVALID_PARAMETER_VALUE);

    let by_name = Filter { name: "group-name".into(), values: vec!["grp-g".into()] };
    let groups = w.sim.describe_security_groups(&region, vec![], vec![by_name]).await.expect("describe");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, group);
    let keys = w.sim.describe_key_pairs(&region, vec![Filter::tag("grant", ["g"])]).await.expect("describe");
    assert_eq!(keys.len(), 1);
    let keys = w.sim.describe_key_pairs(&region, vec![Filter { name: "key-name".into(), values: vec!["nope".into()] }]);
    assert!(keys.await.expect("describe").is_empty());
}

#[tokio::test(start_paused = true)]
async fn ground_truth_lists_live_resources_by_tag_including_volumes() {
    let w = World::new(20, fixed());
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    let info = w.run(request("a", &key, &group, "g")).await.expect("launch");
    let mut kinds: Vec<_> = w.sim.live_resources_tagged("grant", "g").into_iter().map(|r| r.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![ResourceKind::Instance, ResourceKind::Volume, ResourceKind::KeyPair, ResourceKind::SecurityGroup]
    );
    w.sim
        .create_tags(&region, vec![info.instance_id.to_string()], Tags::from([("owner".into(), "me".into())]))
        .await
        .expect("tag");
    assert_eq!(w.sim.live_resources_tagged("owner", "me").len(), 1);

    w.sim.terminate_instances(&region, vec![info.instance_id.to_string()]).await.expect("terminate");
    let kinds: Vec<_> = w.sim.live_resources_tagged("grant", "g").into_iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&ResourceKind::Instance), "still shutting down");
    w.sleep_ms(20_000).await;
    w.sim.delete_security_group(&region, &group).await.expect("delete group");
    w.sim.delete_key_pair(&region, &key).await.expect("delete key");
    assert!(w.sim.live_resources_tagged("grant", "g").is_empty(), "{:?}", w.sim.live_resources());
    assert!(w.sim.live_resources().is_empty(), "the default groups are not listed");
    assert_eq!(w.sim.instances().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn targeted_faults_fail_next_and_region_outage() {
    let w = World::new(21, FaultConfig::none());
    let region = us_east();
    w.sim.fail_next(Operation::DescribeInstances, codes::INTERNAL_ERROR);
    assert_eq!(code(w.sim.describe_instances(&region, vec![], vec![]).await), codes::INTERNAL_ERROR);
    w.sim.describe_instances(&region, vec![], vec![]).await.expect("only the next call fails");

    w.sim.region_outage(&region, 30_000).expect("known region");
    assert_eq!(code(w.sim.describe_instance_types(&region, vec![]).await), codes::UNAVAILABLE);
    w.sim.describe_instance_types(&eu_west(), vec![]).await.expect("other regions are up");
    w.sleep_ms(30_000).await;
    w.sim.describe_instance_types(&region, vec![]).await.expect("the outage is over");
    let stats = w.sim.stats();
    assert_eq!(stats.faults["RegionOutage"], 1);
    assert_eq!(stats.faults["fail_next:InternalError"], 1);

    let unknown = RegionLabel::new("mars-north-1").expect("valid label");
    assert_eq!(code(w.sim.describe_instance_types(&unknown, vec![]).await), "OptInRequired");
    assert!(w.sim.region_outage(&unknown, 1).is_err());
    assert!(w.sim.interrupt("i-0000000000000000", InterruptReason::SpotReclaim).is_err());
}

/// The same seed and the same calls give the same answers and the same audit hash.
async fn scripted_run(seed: u64) -> (Vec<String>, String) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = World::new(seed, FaultConfig::swarm(&mut rng));
    let region = us_east();
    let mut answers = Vec::new();
    let (key, group) = w.prerequisites("g").await;
    for n in 0..30 {
        let result = w.run(request(&format!("t{n}"), &key, &group, "g")).await;
        answers.push(format!("{result:?}"));
        w.sleep_ms(700).await;
        let listed = w.sim.describe_instances(&region, vec![], vec![Filter::tag("grant", ["g"])]).await;
        answers.push(format!("{listed:?}"));
        if let Ok(info) = result {
            let terminated = w.sim.terminate_instances(&region, vec![info.instance_id.to_string()]).await;
            answers.push(format!("{terminated:?}"));
        }
    }
    w.sleep_ms(600_000).await;
    answers.push(format!("{:?}", w.sim.instances()));
    answers.push(format!("{:?}", w.sim.stats()));
    (answers, w.sim.audit_hash())
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_calls_same_results_and_audit_hash() {
    let (answers_a, hash_a) = scripted_run(42).await;
    let (answers_b, hash_b) = scripted_run(42).await;
    assert_eq!(answers_a, answers_b);
    assert_eq!(hash_a, hash_b);
    let (_, hash_c) = scripted_run(43).await;
    assert_ne!(hash_a, hash_c, "another seed gives another run");
}

#[test]
fn fault_config_displays_serializes_and_swarms_deterministically() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let a = FaultConfig::swarm(&mut rng);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    assert_eq!(a, FaultConfig::swarm(&mut rng));
    a.validate().expect("swarm draws valid configs");
    let line = a.to_string();
    assert!(line.contains("throttle_probability=") && line.contains("launch_delay_ms="), "{line}");
    let json = serde_json::to_string(&a).expect("serialize");
    assert_eq!(serde_json::from_str::<FaultConfig>(&json).expect("deserialize"), a);
    let distinct: std::collections::BTreeSet<String> =
        (0..20u64).map(|s| FaultConfig::swarm(&mut rand_chacha::ChaCha8Rng::seed_from_u64(s)).to_string()).collect();
    assert!(distinct.len() > 15, "each seed draws its own mix");
    let bad = FaultConfig { throttle_probability: 1.5, ..FaultConfig::none() };
    assert!(bad.validate().is_err());
    let clock = Arc::new(sim_ec2::ManualClock::new(T0));
    assert!(SimEc2::new(SimConfig::new(1, vec![]), clock).is_err());
}

// ---------------------------------------------------------------- issue 14: throttling scope

#[tokio::test(start_paused = true)]
async fn each_action_has_its_own_bucket_of_its_categorys_size() {
    let w = World::new(31, FaultConfig::none());
    let east = us_east();
    let (_key, group) = w.prerequisites("g").await;
    for _ in 0..100 {
        w.sim.describe_instances(&east, vec![], vec![]).await.expect("within the bucket");
    }
    assert_eq!(code(w.sim.describe_instances(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    // Another non-mutating action is not throttled with it: its own bucket of 100.
    for _ in 0..100 {
        w.sim.describe_security_groups(&east, vec![], vec![]).await.expect("DescribeSecurityGroups' own bucket");
    }
    assert_eq!(code(w.sim.describe_security_groups(&east, vec![], vec![]).await), codes::REQUEST_LIMIT_EXCEEDED);
    w.sim.describe_key_pairs(&east, vec![]).await.expect("DescribeKeyPairs' own bucket");

    // CreateTags: 100 tokens refilling 10 per second (not the mutating 50 / 5).
    for _ in 0..100 {
        w.sim.create_tags(&east, vec![group.clone()], grant_tags("g")).await.expect("within CreateTags' bucket");
    }
    assert_eq!(
        code(w.sim.create_tags(&east, vec![group.clone()], grant_tags("g")).await),
        codes::REQUEST_LIMIT_EXCEEDED
    );
    // Another mutating action keeps its own bucket.
    w.sim.delete_key_pair(&east, "nothing").await.expect("DeleteKeyPair's own bucket");
    w.sleep_ms(99).await;
    assert_eq!(
        code(w.sim.create_tags(&east, vec![group.clone()], grant_tags("g")).await),
        codes::REQUEST_LIMIT_EXCEEDED
    );
    w.sleep_ms(1).await;
    w.sim.create_tags(&east, vec![group], grant_tags("g")).await.expect("one token every 100 ms");
}

#[tokio::test(start_paused = true)]
async fn terminate_instances_has_an_instance_bucket_besides_its_request_bucket() {
    let w = World::new(32, FaultConfig::none());
    let east = us_east();
    let (key, group) = w.prerequisites("g").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        loop {
            match w.run(request(&format!("t{n}"), &key, &group, "g")).await {
                Ok(info) => break ids.push(info.instance_id.to_string()),
                Err(e) if e.is_throttle() => w.sleep_ms(500).await,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    w.sleep_ms(200_000).await; // every bucket full again
    // 100 calls of 10 ids: the request bucket (100) and the instance bucket (1,000) both empty.
    for _ in 0..100 {
        w.sim.terminate_instances(&east, ids.clone()).await.expect("within both buckets");
    }
    // A second later the request bucket holds 5 tokens and the instance bucket 20 instances:
    // two calls of 10 go, the third is refused although request tokens remain.
    w.sleep_ms(1_000).await;
    w.sim.terminate_instances(&east, ids.clone()).await.expect("10 of 20 instances");
    w.sim.terminate_instances(&east, ids.clone()).await.expect("20 of 20 instances");
    assert_eq!(code(w.sim.terminate_instances(&east, ids.clone()).await), codes::REQUEST_LIMIT_EXCEEDED);
    assert_eq!(code(w.sim.terminate_instances(&east, vec![ids[0].clone()]).await), codes::REQUEST_LIMIT_EXCEEDED);
    // 20 instances per second: one every 50 ms.
    w.sleep_ms(50).await;
    w.sim.terminate_instances(&east, vec![ids[0].clone()]).await.expect("one instance token refilled");
}

// ---------------------------------------------------------------- issue 14: ImportKeyPair key types

/// An OpenSSH public key line of `kind` whose blob holds `kind` and then `rest`.
fn openssh_key(kind: &str, rest: &[u8]) -> String {
    let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
    blob.extend_from_slice(kind.as_bytes());
    blob.extend_from_slice(rest);
    format!("{kind} {} test", base64::engine::general_purpose::STANDARD.encode(blob))
}

#[tokio::test(start_paused = true)]
async fn import_key_pair_accepts_only_rsa_and_ed25519() {
    let w = World::new(33, FaultConfig::none());
    let region = us_east();
    let import = |name: &str, key: String| {
        let sim = w.sim.clone();
        let (region, name) = (region.clone(), name.to_string());
        async move {
            sim.import_key_pair(
                &region,
                ImportKeyPairRequest { key_name: name, public_key_openssh: key, tags: Tags::new() },
            )
            .await
        }
    };
    let body = [0u8, 0, 0, 32].iter().copied().chain([7u8; 32]).collect::<Vec<u8>>();
    import("ed", openssh_key("ssh-ed25519", &body)).await.expect("ED25519 is imported");
    import("rsa", openssh_key("ssh-rsa", &[0, 0, 0, 3, 1, 0, 1, 0, 0, 1, 1, 0xc5])).await.expect("RSA is imported");
    for kind in ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-dss"] {
        assert_eq!(code(import(kind, openssh_key(kind, &body)).await), "InvalidKey.Format", "{kind}");
    }
}

// ---------------------------------------------------------------- issue 14: eventual consistency beyond existence

#[tokio::test(start_paused = true)]
async fn tags_reach_tag_filters_after_a_lag_while_lookups_by_id_show_them() {
    let w = World::new(34, FaultConfig { tag_propagation_ms_max: 60_000, ..fixed() });
    let region = us_east();
    let by_grant = || vec![Filter::tag("grant", ["g"])];
    // A new group's tags lag too.
    let group = w
        .sim
        .create_security_group(
            &region,
            CreateSecurityGroupRequest {
                vpc_id: None,
                group_name: "grp-new".into(),
                description: "d".into(),
                tags: grant_tags("g"),
            },
        )
        .await
        .expect("create group");
    let listed = w.sim.describe_security_groups(&region, vec![], by_grant()).await.expect("describe");
    assert!(listed.iter().all(|g| g.group_id != group), "a new group's tags have not reached tag filters");
    assert!(
        w.sim
            .describe_security_groups(&region, vec![], vec![])
            .await
            .expect("describe")
            .iter()
            .any(|g| g.group_id == group)
    );

    let (key, group) = w.prerequisites("g").await;
    let id = w.run(request("t", &key, &group, "g")).await.expect("launch").instance_id.to_string();
    let by_id = w.describe(&id).await.expect("by id");
    assert_eq!(by_id[0].tags.get("grant").map(String::as_str), Some("g"), "lookups by id show the tags");
    let tagged = w.sim.describe_instances(&region, vec![], by_grant()).await.expect("describe");
    assert!(tagged.is_empty(), "tag filters do not see a new instance's tags yet");
    let untagged = w.sim.describe_instances(&region, vec![], vec![]).await.expect("describe");
    assert_eq!(untagged.len(), 1, "other answers list it");
    w.sleep_ms(60_001).await;
    assert_eq!(w.sim.describe_instances(&region, vec![], by_grant()).await.expect("describe").len(), 1);

    // Tags added by CreateTags lag the same way; the tags it had still match meanwhile.
    let extra = Tags::from([("extra".to_string(), "1".to_string())]);
    w.sim.create_tags(&region, vec![id.clone()], extra).await.expect("tag");
    let by_extra = || vec![Filter::tag("extra", ["1"])];
    assert!(w.sim.describe_instances(&region, vec![], by_extra()).await.expect("describe").is_empty());
    assert_eq!(w.sim.describe_instances(&region, vec![], by_grant()).await.expect("describe").len(), 1);
    assert!(w.describe(&id).await.expect("by id")[0].tags.contains_key("extra"));
    w.sleep_ms(60_001).await;
    assert_eq!(w.sim.describe_instances(&region, vec![], by_extra()).await.expect("describe").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn describe_can_show_the_state_from_before_terminate_instances_for_a_moment() {
    let w = World::new(35, FaultConfig { stale_state_ms_max: 10_000, ..fixed() });
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    let id = w.run(request("t", &key, &group, "g")).await.expect("launch").instance_id.to_string();
    w.sleep_ms(10_000).await;
    assert_eq!(w.state(&id).await, InstanceState::Running);
    let change = w.sim.terminate_instances(&region, vec![id.clone()]).await.expect("terminate");
    assert_eq!(change[0].current_state, InstanceState::ShuttingDown, "TerminateInstances' own answer is current");
    // Ground truth has moved on; Describe still says running, by id and by state filter.
    assert_eq!(w.sim.instance(&id).expect("truth").state, InstanceState::ShuttingDown);
    assert_eq!(w.state(&id).await, InstanceState::Running);
    let running = w.sim.describe_instances(&region, vec![], vec![Filter::instance_states(&[InstanceState::Running])]);
    assert_eq!(running.await.expect("describe").len(), 1);
    w.sleep_ms(10_001).await;
    assert_eq!(w.state(&id).await, InstanceState::ShuttingDown);
    w.sleep_ms(20_000).await;
    assert_eq!(w.state(&id).await, InstanceState::Terminated);
}

#[tokio::test(start_paused = true)]
async fn deleted_groups_and_key_pairs_stay_listed_and_keep_their_names_for_a_while() {
    let w = World::new(36, FaultConfig { deleted_visible_ms_max: 30_000, ..FaultConfig::none() });
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    w.sim.delete_key_pair(&region, &key).await.expect("delete key pair");
    w.sim.delete_security_group(&region, &group).await.expect("delete group");
    assert!(w.sim.live_resources().is_empty(), "ground truth: both are gone");

    // Listed still, by filter and without.
    let by_name = vec![Filter { name: "key-name".into(), values: vec![key.clone()] }];
    assert_eq!(w.sim.describe_key_pairs(&region, by_name.clone()).await.expect("describe").len(), 1);
    let groups = w.sim.describe_security_groups(&region, vec![], vec![Filter::tag("grant", ["g"])]).await;
    assert_eq!(groups.expect("describe").len(), 1);
    // A lookup by id, and every other call, knows the group is gone.
    assert_eq!(
        code(w.sim.describe_security_groups(&region, vec![group.clone()], vec![]).await),
        codes::GROUP_NOT_FOUND
    );
    assert_eq!(code(w.sim.delete_security_group(&region, &group).await), codes::GROUP_NOT_FOUND);
    assert_eq!(code(w.run(request("t", &key, "", "g")).await), codes::KEY_PAIR_NOT_FOUND);
    // The names are still taken.
    let key_again =
        ImportKeyPairRequest { key_name: key.clone(), public_key_openssh: PUBLIC_KEY.into(), tags: Tags::new() };
    let group_again = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: "grp-g".into(),
        description: "d".into(),
        tags: Tags::new(),
    };
    assert_eq!(code(w.sim.import_key_pair(&region, key_again.clone()).await), codes::KEY_PAIR_DUPLICATE);
    assert_eq!(code(w.sim.create_security_group(&region, group_again.clone()).await), codes::GROUP_DUPLICATE);

    w.sleep_ms(30_001).await;
    assert!(w.sim.describe_key_pairs(&region, by_name).await.expect("describe").is_empty());
    assert!(
        w.sim.describe_security_groups(&region, vec![], vec![Filter::tag("grant", ["g"])]).await.expect("d").is_empty()
    );
    w.sim.import_key_pair(&region, key_again).await.expect("the name is free");
    w.sim.create_security_group(&region, group_again).await.expect("the name is free");
}

/// The backend's user data for a grant whose deadline is `valid_to_unix_s`, with a grace of 60 s.
fn backend_user_data(valid_to_unix_s: u64) -> String {
    use aws_backend::guest::{GuestConfig, GuestSpec, render_user_data};
    let login = aws_backend::keys::SshKeyPair::ed25519_from_seed([7; 32], "grant").expect("key");
    let cfg = GuestConfig::with_content_store("https://store.example/blobs/{hash}");
    let spec = GuestSpec {
        grant_id: backend_api::GrantId([9; 32]),
        image_hash: backend_api::ImageHash([3; 32]),
        authorized_key_openssh: &login.public_openssh,
        host_key: None,
        valid_to_unix_s,
    };
    let text = render_user_data(&cfg, &spec).expect("render");
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(start_paused = true)]
async fn the_guest_powers_off_at_the_time_its_user_data_gives_and_ec2_ends_the_instance() {
    let w = World::new(5, fixed());
    let (key, group) = w.prerequisites("g").await;
    let valid_to_s = T0 / 1_000 + 600;
    let poweroff_ms = (valid_to_s + 60) * 1_000;
    let mut term = request("term", &key, &group, "g");
    term.user_data_base64 = backend_user_data(valid_to_s);
    let mut stop = term.clone();
    stop.client_token = "stop".into();
    stop.shutdown_behavior = ShutdownBehavior::Stop;
    // Another caller's user data: no guest model, so nothing powers it off.
    let other = w.run(request("other", &key, &group, "g")).await.expect("launch");
    let term = w.run(term).await.expect("launch");
    let stop = w.run(stop).await.expect("launch");
    let truth = w.sim.guest_of(&term.instance_id).expect("known");
    assert_eq!(truth.poweroff_at_ms, Some(poweroff_ms));
    assert_eq!(truth.powers_off_at_ms, Some(poweroff_ms));
    assert_eq!(w.sim.guest_of(&other.instance_id).expect("known").poweroff_at_ms, None);

    w.sleep_ms(poweroff_ms - 1 - w.now()).await;
    assert_eq!(w.state(&term.instance_id).await, InstanceState::Running);
    w.sleep_ms(1).await;
    let ending = &w.describe(&term.instance_id).await.expect("describe")[0];
    assert_eq!(ending.state, InstanceState::ShuttingDown);
    assert_eq!(ending.state_reason_code.as_deref(), Some("Client.InstanceInitiatedShutdown"));
    assert_eq!(w.state(&stop.instance_id).await, InstanceState::Stopping);
    w.sleep_ms(20_000).await;
    assert_eq!(w.state(&term.instance_id).await, InstanceState::Terminated);
    assert_eq!(w.state(&stop.instance_id).await, InstanceState::Stopped);
    let console = w.sim.get_console_output(&us_east(), &term.instance_id).await.expect("console").expect("text");
    assert!(console.contains("reboot: Power down"), "{console}");
    w.sleep_ms(3 * 3_600_000).await;
    assert_eq!(w.state(&other.instance_id).await, InstanceState::Running, "other user data gets no guest");

    // A power-off time already past at boot: the guest powers off as soon as its script runs.
    let mut late = request("late", &key, &group, "g");
    late.user_data_base64 = backend_user_data(T0 / 1_000);
    let late = w.run(late).await.expect("launch");
    w.sleep_ms(10_000 + sim_ec2::guest::RUNCMD_AFTER_RUNNING_MS).await;
    assert_eq!(w.state(&late.instance_id).await, InstanceState::ShuttingDown);
}

#[tokio::test(start_paused = true)]
async fn a_guest_that_cannot_use_its_image_powers_off_early_and_says_why() {
    let faults = FaultConfig { image_fetch_failure_probability: 1.0, ..fixed() };
    let w = World::new(6, faults);
    let (key, group) = w.prerequisites("g").await;
    let mut ids = Vec::new();
    for k in 0..8 {
        let mut req = request(&format!("t{k}"), &key, &group, "g");
        req.user_data_base64 = backend_user_data(T0 / 1_000 + 3_600);
        ids.push(w.run(req).await.expect("launch").instance_id);
        w.sleep_ms(1_000).await;
    }
    // Running at 10 s; five failed fetches take at most 50 s of back-off and 10 s each.
    w.sleep_ms(10_000 + 10_000 + 50_000 + 50_000 + 20_000).await;
    let mut why = std::collections::BTreeSet::new();
    for id in &ids {
        let info = &w.describe(id).await.expect("describe")[0];
        assert_eq!(info.state, InstanceState::Terminated, "{id}");
        assert_eq!(info.state_reason_code.as_deref(), Some("Client.InstanceInitiatedShutdown"));
        let truth = w.sim.guest_of(id).expect("known");
        assert!(truth.powers_off_at_ms < truth.poweroff_at_ms, "{truth:?}");
        let console = w.sim.get_console_output(&us_east(), id).await.expect("console").expect("text");
        let line = console.lines().find(|l| l.starts_with("grant-guest: refusing: ")).expect("the guest says why");
        why.insert(line.contains("sha256"));
    }
    assert_eq!(why.len(), 2, "both a failed fetch and a hash mismatch among eight guests");
    assert!(w.sim.fault_log().iter().any(|f| f.kind.starts_with("exit:guest-image")));
    // Off by default.
    assert_eq!(FaultConfig::default().image_fetch_failure_probability, 0.0);
}

// ---------------------------------------------------------------- quotas and placement (issue 14)

#[tokio::test(start_paused = true)]
async fn launches_past_the_on_demand_vcpu_quota_answer_vcpu_limit_exceeded() {
    let w = World::new(21, FaultConfig { on_demand_vcpu_quota: 6, ..fixed() });
    let (key, group) = w.prerequisites("g").await;
    // Two m6i.large (2 vCPUs each) fit a quota of 6; an m6i.xlarge (4 more) does not.
    let a = w.run(request("a", &key, &group, "g")).await.expect("2 of 6 vCPUs");
    w.run(request("b", &key, &group, "g")).await.expect("4 of 6 vCPUs");
    let mut big = request("c", &key, &group, "g");
    big.instance_type = "m6i.xlarge".into();
    let refused = w.run(big.clone()).await.expect_err("8 of 6 vCPUs");
    assert_eq!(refused.code, codes::VCPU_LIMIT_EXCEEDED);
    assert!(refused.message.contains("vCPU limit of 6"), "{}", refused.message);
    assert!(w.sim.instances().iter().all(|i| i.instance_type == "m6i.large"), "nothing launched");
    assert_eq!(w.sim.stats().faults[codes::VCPU_LIMIT_EXCEEDED], 1);
    // Pending instances count as well as running ones; terminated ones stop counting.
    w.sim.terminate_instances(&us_east(), vec![a.instance_id.to_string()]).await.expect("terminate");
    w.run(big).await.expect("only pending and running instances count, and a is shutting down");
}

#[tokio::test(start_paused = true)]
async fn a_type_not_offered_in_the_chosen_zone_answers_unsupported() {
    // Every (type, zone) pair but the first zone's is missing: only us-east-1a offers anything.
    let w = World::new(22, FaultConfig { zone_offering_gap_probability: 1.0, ..fixed() });
    let offerings = w
        .sim
        .describe_instance_type_offerings(&us_east(), vec!["m6i.large".into(), "c5.*".into()])
        .await
        .expect("offerings");
    assert_eq!(offerings.len(), 10, "m6i.large and the nine c5 sizes, each in one zone: {offerings:?}");
    assert!(offerings.iter().all(|o| o.availability_zone == "us-east-1a"));
    let (key, group) = w.prerequisites("g").await;
    let (mut unsupported, mut launched) = (0u64, 0);
    for n in 0..30 {
        match w.run(request(&format!("t{n}"), &key, &group, "g")).await {
            Ok(info) => {
                launched += 1;
                let truth = w.sim.instance(&info.instance_id).expect("truth");
                assert_eq!(truth.availability_zone, "us-east-1a", "launched only where offered");
            }
            Err(e) => {
                assert_eq!(e.code, codes::UNSUPPORTED);
                assert!(e.message.contains("m6i.large") && e.message.contains("choosing us-east-1a"), "{}", e.message);
                unsupported += 1;
            }
        }
        w.sleep_ms(600).await;
    }
    assert!(unsupported > 10 && launched > 3, "{unsupported} unsupported, {launched} launched");
    assert_eq!(w.sim.stats().faults[codes::UNSUPPORTED], unsupported);

    // With no gaps every zone offers every type.
    let w = World::new(22, fixed());
    let all = w.sim.describe_instance_type_offerings(&us_east(), vec![]).await.expect("offerings");
    assert_eq!(all.len(), sim_ec2::catalogue::CATALOGUE.len() * 3);
}

#[tokio::test(start_paused = true)]
async fn unknown_or_malformed_amis_and_small_root_volumes_are_refused() {
    let mut config = SimConfig::new(23, vec![us_east(), eu_west()]).with_faults(fixed());
    config.images = vec![
        sim_ec2::SimImage {
            region: us_east(),
            image_id: "ami-0123456789abcdef0".into(),
            root_snapshot_gib: 30,
            architecture: aws_backend::port::Architecture::X86_64,
        },
        sim_ec2::SimImage {
            region: eu_west(),
            image_id: "ami-0fedcba9876543210".into(),
            root_snapshot_gib: 8,
            architecture: aws_backend::port::Architecture::X86_64,
        },
    ];
    let w = World::with_config(config);
    let (key, group) = w.prerequisites("g").await;
    let with = |token: &str, image: &str, gib: u32| RunInstancesRequest {
        image_id: image.into(),
        root_volume_gib: gib,
        ..request(token, &key, &group, "g")
    };
    assert_eq!(code(w.run(with("a", "ami-xyz", 40)).await), codes::AMI_MALFORMED);
    assert_eq!(code(w.run(with("b", "ami-0123456789ABCDEF0", 40)).await), codes::AMI_MALFORMED);
    // An AMI of another region is unknown here.
    let missing = w.run(with("c", "ami-0fedcba9876543210", 40)).await.expect_err("not in us-east-1");
    assert_eq!(missing.code, codes::AMI_NOT_FOUND);
    assert!(missing.message.contains("ami-0fedcba9876543210"), "{}", missing.message);
    let small = w.run(with("d", "ami-0123456789abcdef0", 20)).await.expect_err("20 GiB < 30 GiB snapshot");
    assert_eq!(small.code, codes::INVALID_BLOCK_DEVICE_MAPPING);
    assert!(small.message.contains("20GB") && small.message.contains(">= 30GB"), "{}", small.message);
    assert!(w.sim.instances().is_empty(), "nothing launched");
    w.run(with("e", "ami-0123456789abcdef0", 30)).await.expect("as large as the snapshot");
    // Without a list, every well-formed id is known with an 8 GiB snapshot.
    let w = World::new(23, fixed());
    let (key, group) = w.prerequisites("g").await;
    let tiny = RunInstancesRequest { root_volume_gib: 7, ..request("a", &key, &group, "g") };
    assert_eq!(code(w.run(tiny).await), codes::INVALID_BLOCK_DEVICE_MAPPING);
}

#[tokio::test(start_paused = true)]
async fn without_a_default_vpc_groups_and_launches_need_a_vpc() {
    let mut config = SimConfig::new(24, vec![us_east()]).with_faults(fixed());
    config.default_vpc = false;
    let w = World::with_config(config);
    let region = us_east();
    let group = w
        .sim
        .create_security_group(
            &region,
            CreateSecurityGroupRequest {
                vpc_id: None,
                group_name: "grp".into(),
                description: "test".into(),
                tags: grant_tags("g"),
            },
        )
        .await;
    assert_eq!(code(group), codes::VPC_ID_NOT_SPECIFIED);
    // Key pairs are not in a VPC.
    let key =
        ImportKeyPairRequest { key_name: "k".into(), public_key_openssh: PUBLIC_KEY.into(), tags: grant_tags("g") };
    w.sim.import_key_pair(&region, key).await.expect("key pairs need no VPC");
    w.sleep_ms(1_000).await;
    let launch = RunInstancesRequest { security_group_ids: vec![], ..request("a", "k", "", "g") };
    assert_eq!(code(w.run(launch).await), codes::VPC_ID_NOT_SPECIFIED);
    assert!(w.sim.instances().is_empty());
    assert!(w.sim.live_resources().iter().all(|r| r.kind == ResourceKind::KeyPair));
}

#[tokio::test(start_paused = true)]
async fn capacity_shortages_reach_neighbouring_sizes_in_the_same_zone() {
    let faults = FaultConfig { capacity_shortage_neighbours_probability: 1.0, ..fixed() };
    let w = World::new(25, faults);
    let (key, group) = w.prerequisites("g").await;
    w.sim.start_capacity_shortage(&us_east(), "m6i.2xlarge", "us-east-1b", 600_000).expect("known pool");
    // m6i.xlarge, the next smaller size, is short in us-east-1b too, and fine elsewhere.
    let mut short_zones = std::collections::BTreeSet::new();
    let mut launched_zones = std::collections::BTreeSet::new();
    for (n, size) in ["m6i.xlarge", "m6i.4xlarge"].iter().cycle().take(40).enumerate() {
        let req = RunInstancesRequest { instance_type: (*size).into(), ..request(&format!("t{n}"), &key, &group, "g") };
        match w.run(req).await {
            Ok(info) => {
                launched_zones.insert(w.sim.instance(&info.instance_id).expect("truth").availability_zone);
            }
            Err(e) => {
                assert_eq!(e.code, codes::INSUFFICIENT_INSTANCE_CAPACITY);
                assert!(e.message.contains("us-east-1b"), "only us-east-1b is short: {}", e.message);
                short_zones.insert((*size).to_string());
            }
        }
        w.sleep_ms(600).await;
    }
    let both: std::collections::BTreeSet<String> = ["m6i.xlarge", "m6i.4xlarge"].map(String::from).into();
    assert_eq!(short_zones, both, "both neighbours are short in us-east-1b");
    assert!(!launched_zones.contains("us-east-1b") && launched_zones.len() == 2, "{launched_zones:?}");
    // Two sizes away is another pool.
    let far = RunInstancesRequest { instance_type: "m6i.large".into(), ..request("far", &key, &group, "g") };
    let mut far_ok = 0;
    for n in 0..12 {
        let req = RunInstancesRequest { client_token: format!("far{n}"), ..far.clone() };
        far_ok += usize::from(w.run(req).await.is_ok());
        w.sleep_ms(600).await;
    }
    assert_eq!(far_ok, 12, "m6i.large is two sizes from m6i.2xlarge");

    // The whole family, when the family knob says so.
    let faults = FaultConfig { capacity_shortage_family_probability: 1.0, ..fixed() };
    let w = World::new(25, faults);
    let (key, group) = w.prerequisites("g").await;
    w.sim.start_capacity_shortage(&us_east(), "m6i.2xlarge", "us-east-1b", 600_000).expect("known pool");
    let mut refused = 0;
    for n in 0..30 {
        let req = request(&format!("t{n}"), &key, &group, "g");
        if let Err(e) = w.run(req).await {
            assert!(e.message.contains("us-east-1b"), "{}", e.message);
            refused += 1;
        }
        w.sleep_ms(600).await;
    }
    assert!(refused > 3, "m6i.large is short in us-east-1b with its family: {refused}");
}

#[tokio::test(start_paused = true)]
async fn retirement_stops_an_on_demand_instance_whatever_its_shutdown_behaviour() {
    let w = World::new(26, fixed());
    let (key, group) = w.prerequisites("g").await;
    let info = w.run(request("a", &key, &group, "g")).await.expect("launch");
    w.sleep_ms(11_000).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Running);
    assert!(w.sim.interrupt(&info.instance_id, InterruptReason::ScheduledRetirement).expect("known"));
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Stopping);
    w.sleep_ms(20_000).await;
    let stopped = &w.describe(&info.instance_id).await.expect("describe")[0];
    assert_eq!(stopped.state, InstanceState::Stopped, "shutdown behaviour terminate does not apply");
    assert_eq!(stopped.state_reason_code.as_deref(), Some("Server.ScheduledStop"));
    // Stopped is not billed, and terminating it still works.
    let running_ms = w.sim.instance(&info.instance_id).expect("truth").running_ms;
    w.sleep_ms(60_000).await;
    assert_eq!(w.sim.instance(&info.instance_id).expect("truth").running_ms, running_ms);
    let change = w.sim.terminate_instances(&us_east(), vec![info.instance_id.to_string()]).await.expect("terminate");
    assert_eq!(change[0].previous_state, InstanceState::Stopped);
    w.sleep_ms(20_000).await;
    assert_eq!(w.state(&info.instance_id).await, InstanceState::Terminated);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn describes_answer_in_pages_that_may_be_short_or_empty_until_the_token_runs_out() {
    // EC2 API Reference, "Pagination": a page holds at most MaxResults items, may hold fewer
    // (even none) while more remain, and only a missing NextToken ends the listing.
    let w = World::new(31, FaultConfig { page_short_probability: 0.5, ..FaultConfig::none() });
    let region = us_east();
    let (key, group) = w.prerequisites("g").await;
    let mut launched = Vec::new();
    for n in 0..23 {
        launched.push(w.run(request(&format!("t{n}"), &key, &group, "g")).await.expect("launch").instance_id);
        w.sleep_ms(600).await; // RunInstances' bucket refills 2 a second
    }
    launched.sort();
    let by_grant = vec![Filter::tag("grant", ["g"])];
    let (mut seen, mut pages, mut short, mut empty) = (Vec::new(), 0, 0, 0);
    let mut page = aws_backend::port::PageRequest::first(5);
    loop {
        let answer = w.sim.describe_instances_page(&region, &[], &by_grant, page.clone()).await.expect("page");
        pages += 1;
        assert!(answer.items.len() <= 5, "a page longer than MaxResults: {}", answer.items.len());
        short += usize::from(answer.items.len() < 5 && answer.next_token.is_some());
        empty += usize::from(answer.items.is_empty() && answer.next_token.is_some());
        seen.extend(answer.items.into_iter().map(|i| i.instance_id));
        match answer.next_token {
            Some(token) => page.next_token = Some(token),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, launched, "following every token lists every instance exactly once");
    assert!(pages > 5 && short > 0 && empty > 0, "pages {pages}, short {short}, empty {empty}: nothing was cut");
    // The first page alone misses instances.
    let first = w.sim.describe_instances_page(&region, &[], &by_grant, aws_backend::port::PageRequest::first(5));
    assert!(first.await.expect("page").items.len() < launched.len());
    // Without MaxResults the whole answer comes at once, and the unpaced helper follows pages.
    let all = w.sim.describe_instances_page(&region, &[], &by_grant, Default::default()).await.expect("all");
    assert_eq!((all.items.len(), all.next_token), (23, None));
    assert_eq!(w.sim.describe_instances(&region, vec![], by_grant.clone()).await.expect("followed").len(), 23);

    // EC2's refusals: MaxResults with ids, out of bounds, and a token of another query.
    let code =
        |r: Result<aws_backend::port::Page<aws_backend::port::InstanceInfo>, Ec2Error>| r.expect_err("refused").code;
    let paged = aws_backend::port::PageRequest::first(5);
    let with_ids = w.sim.describe_instances_page(&region, &[launched[0].to_string()], &[], paged.clone()).await;
    assert_eq!(code(with_ids), codes::INVALID_PARAMETER_COMBINATION);
    let too_many = aws_backend::port::PageRequest::first(1_001);
    assert_eq!(code(w.sim.describe_instances_page(&region, &[], &[], too_many).await), codes::INVALID_PARAMETER_VALUE);
    let types_page = aws_backend::port::PageRequest::first(101);
    let types = w.sim.describe_instance_types_page(&region, vec![], types_page).await;
    assert_eq!(types.expect_err("DescribeInstanceTypes takes 5 to 100").code, codes::INVALID_PARAMETER_VALUE);
    let mut token = None;
    while token.is_none() {
        token = w.sim.describe_instances_page(&region, &[], &by_grant, paged.clone()).await.expect("p").next_token;
    }
    let foreign = aws_backend::port::PageRequest { next_token: token, ..paged };
    assert_eq!(code(w.sim.describe_instances_page(&region, &[], &[], foreign).await), codes::INVALID_PAGINATION_TOKEN);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn subnets_place_instances_in_their_vpc_and_zone_and_groups_must_share_the_vpc() {
    // "RunInstances" (SubnetId, Placement), "CreateSecurityGroup" (VpcId), "DescribeSubnets".
    let own = sim_ec2::network::SimSubnet {
        region: us_east(),
        subnet_id: "subnet-0aaaaaaaaaaaaaaa1".into(),
        vpc_id: "vpc-0bbbbbbbbbbbbbbb1".into(),
        availability_zone: "us-east-1c".into(),
        tags: grant_tags("net"),
    };
    let mut config = SimConfig::new(32, vec![us_east(), eu_west()]).with_faults(FaultConfig::none());
    config.subnets = vec![own.clone()];
    let w = World::with_config(config);
    let region = us_east();
    // The default VPC's subnets, one per zone, and the operator's, chosen by tag.
    let all = w.sim.describe_subnets(&region, vec![], vec![]).await.expect("subnets");
    assert_eq!((all.len(), all.iter().filter(|s| s.default_for_az).count()), (4, 3));
    let tagged = w.sim.describe_subnets(&region, vec![], vec![Filter::tag("grant", ["net"])]).await.expect("by tag");
    assert_eq!(tagged.iter().map(|s| s.subnet_id.as_str()).collect::<Vec<_>>(), [own.subnet_id.as_str()]);
    let missing = w.sim.describe_subnets(&region, vec!["subnet-0dead0dead0dead0d".into()], vec![]).await;
    assert_eq!(code(missing), codes::SUBNET_NOT_FOUND);

    let (key, default_group) = w.prerequisites("g").await;
    let group = |name: &str, vpc: Option<&str>| CreateSecurityGroupRequest {
        vpc_id: vpc.map(str::to_string),
        group_name: name.into(),
        description: "d".into(),
        tags: grant_tags("g"),
    };
    let unknown = w.sim.create_security_group(&region, group("grp-x", Some("vpc-0ccccccccccccccc1"))).await;
    assert_eq!(code(unknown), codes::VPC_NOT_FOUND);
    let in_vpc = w.sim.create_security_group(&region, group("grp-vpc", Some(&own.vpc_id))).await.expect("group");
    // Into the subnet: its zone; a group of the default VPC is of another network.
    let into = |token: &str, group: &str| RunInstancesRequest {
        subnet_id: Some(own.subnet_id.clone()),
        ..request(token, &key, group, "g")
    };
    assert_eq!(code(w.run(into("t1", &default_group)).await), codes::INVALID_PARAMETER);
    let launched = w.run(into("t2", &in_vpc)).await.expect("into the subnet");
    assert_eq!(launched.availability_zone, "us-east-1c");
    // Without a subnet, Placement names the zone of the default VPC; the VPC's group is refused.
    let placed = RunInstancesRequest {
        availability_zone: Some("us-east-1b".into()),
        ..request("t3", &key, &default_group, "g")
    };
    assert_eq!(w.run(placed).await.expect("placed").availability_zone, "us-east-1b");
    let elsewhere = RunInstancesRequest {
        availability_zone: Some("us-east-1z".into()),
        ..request("t4", &key, &default_group, "g")
    };
    assert_eq!(code(w.run(elsewhere).await), codes::INVALID_PARAMETER_VALUE);
    assert_eq!(code(w.run(request("t5", &key, &in_vpc, "g")).await), codes::INVALID_PARAMETER);
}

#[tokio::test(start_paused = true)]
async fn get_parameter_answers_the_public_ami_aliases_and_parameter_not_found() {
    use sim_ec2::ssm::{AL2023_ARM64_ALIAS, AL2023_X86_64_ALIAS, DEFAULT_AL2023_ARM64_AMI, DEFAULT_AL2023_X86_64_AMI};
    let w = World::new(30, fixed());
    // Without configured parameters every region serves the AL2023 aliases.
    for region in [us_east(), eu_west()] {
        assert_eq!(w.sim.get_parameter(&region, AL2023_X86_64_ALIAS).await.expect("x86_64"), DEFAULT_AL2023_X86_64_AMI);
        assert_eq!(w.sim.get_parameter(&region, AL2023_ARM64_ALIAS).await.expect("arm64"), DEFAULT_AL2023_ARM64_AMI);
    }
    let missing = w.sim.get_parameter(&us_east(), "/aws/service/ami-amazon-linux-latest/al2029").await;
    let missing = missing.expect_err("no such parameter");
    assert_eq!(missing.code, codes::PARAMETER_NOT_FOUND);
    assert!(missing.message.contains("al2029"), "{}", missing.message);
    assert!(!missing.is_transient());

    // Configured parameters replace the defaults, and must name images the region knows.
    let mut config = SimConfig::new(31, vec![us_east()]).with_faults(fixed());
    let image = sim_ec2::SimImage {
        region: us_east(),
        image_id: "ami-0123456789abcdef0".into(),
        root_snapshot_gib: 8,
        architecture: aws_backend::port::Architecture::X86_64,
    };
    config.images = vec![image.clone()];
    config.public_parameters =
        vec![sim_ec2::SimParameter { region: us_east(), name: "/golden-ami".into(), value: image.image_id.clone() }];
    let w = World::with_config(config.clone());
    assert_eq!(w.sim.get_parameter(&us_east(), "/golden-ami").await.expect("configured"), image.image_id);
    assert_eq!(code(w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await), codes::PARAMETER_NOT_FOUND);
    config.public_parameters[0].value = "ami-0fedcba9876543210".into();
    let err = SimEc2::new(config, Arc::new(TokioClock::starting_at(T0))).expect_err("names an unlisted image");
    assert!(err.to_string().contains("/golden-ami") && err.to_string().contains("ami-0fedcba9876543210"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_republished_alias_answers_the_new_ami_which_then_launches() {
    use sim_ec2::ssm::AL2023_X86_64_ALIAS;
    let w = World::new(32, fixed());
    let before = w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await.expect("resolves");
    let release = sim_ec2::SimImage {
        region: us_east(),
        image_id: "ami-0b2023112000000a1".into(),
        root_snapshot_gib: 8,
        architecture: aws_backend::port::Architecture::X86_64,
    };
    w.sim.publish_image(AL2023_X86_64_ALIAS, release.clone()).expect("published");
    let after = w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await.expect("resolves");
    assert_ne!(before, after);
    assert_eq!(after, release.image_id);
    // Other regions keep theirs.
    let eu = w.sim.get_parameter(&eu_west(), AL2023_X86_64_ALIAS).await.expect("resolves");
    assert_eq!(eu, before);
    let (key, group) = w.prerequisites("g").await;
    w.run(RunInstancesRequest { image_id: after, ..request("new", &key, &group, "g") }).await.expect("launches");
    // A malformed id is not published.
    let bad = sim_ec2::SimImage { image_id: "ami-new".into(), ..release };
    assert!(w.sim.publish_image(AL2023_X86_64_ALIAS, bad).is_err());
}

#[tokio::test(start_paused = true)]
async fn get_parameter_has_parameter_stores_own_bucket_and_throttling_exception() {
    use sim_ec2::ssm::AL2023_X86_64_ALIAS;
    let w = World::new(33, FaultConfig::none());
    // 40 at once pass, the 41st is throttled with SSM's code; EC2's buckets are untouched.
    for n in 0..40 {
        w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await.unwrap_or_else(|e| panic!("call {n}: {e}"));
    }
    let throttled = w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await.expect_err("bucket empty");
    assert_eq!(throttled.code, codes::THROTTLING_EXCEPTION);
    assert!(throttled.is_throttle());
    w.sim.describe_instance_types(&us_east(), vec!["m6i".into()]).await.expect("EC2 is not throttled");
    // It refills 40 a second.
    w.sleep_ms(1_000).await;
    w.sim.get_parameter(&us_east(), AL2023_X86_64_ALIAS).await.expect("refilled");
}

#[tokio::test(start_paused = true)]
async fn an_ami_of_another_architecture_than_the_type_is_refused() {
    use aws_backend::port::Architecture;
    use sim_ec2::ssm::{DEFAULT_AL2023_ARM64_AMI, DEFAULT_AL2023_X86_64_AMI};
    let w = World::new(34, fixed());
    let (key, group) = w.prerequisites("g").await;
    let launch = |token: &str, image: &str, itype: &str| RunInstancesRequest {
        image_id: image.into(),
        instance_type: itype.into(),
        ..request(token, &key, &group, "g")
    };
    let err = w.run(launch("a", DEFAULT_AL2023_X86_64_AMI, "m7g.large")).await.expect_err("arm64 type, x86_64 AMI");
    assert_eq!(err.code, codes::INVALID_PARAMETER_VALUE);
    assert!(err.message.contains("'arm64' of the specified instance type") && err.message.contains("'x86_64'"));
    assert_eq!(code(w.run(launch("b", DEFAULT_AL2023_ARM64_AMI, "m6i.large")).await), codes::INVALID_PARAMETER_VALUE);
    w.run(launch("c", DEFAULT_AL2023_ARM64_AMI, "m7g.large")).await.expect("matching architectures");
    // Graviton types are in the catalogue with their architecture.
    let types = w.sim.describe_instance_types(&us_east(), vec!["m7g".into()]).await.expect("m7g");
    assert!(!types.is_empty() && types.iter().all(|t| t.architecture == Architecture::Arm64), "{types:?}");
}
