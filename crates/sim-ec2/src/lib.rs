//! A deterministic, in-memory EC2 that behaves like the real one, for simulation.
//!
//! [`SimEc2`] implements [`aws_backend::port::Ec2Port`], so the unchanged provisioning logic runs
//! against it. It models what makes real EC2 hard to program against: instances that take time
//! to start and stop and sometimes die on their own, eventual consistency, per-region token-bucket
//! throttling, ClientToken idempotency, `DependencyViolation`, capacity shortages and internal
//! errors. Every behaviour and its source is listed in `docs/simulation.md`.
//!
//! Determinism: everything random is drawn from one ChaCha8 PRNG seeded by [`SimConfig::seed`],
//! time comes only from the injected [`backend_api::Clock`], and all collections that reach an
//! answer are ordered. The same seed and the same calls give the same answers and the same
//! [`SimEc2::audit_hash`].
//!
//! Nothing runs in the background: each instance's future is drawn when it launches (or is told
//! to terminate) as a timeline, and every call reads the world at `clock.now_unix_ms()`.

pub mod catalogue;

mod audit;
mod bucket;
mod clock;
mod config;
mod consistency;
pub mod console;
pub mod fxhash;
pub mod guest;
mod idmap;
pub mod network;
mod pagination;
pub mod placement;
pub mod ssm;
mod taglist;
mod truth;
mod world;

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
};
use backend_api::{Clock, RegionLabel};
use serde::{Deserialize, Serialize};

pub use clock::ManualClock;
pub use config::{DEFAULT_ON_DEMAND_VCPU_QUOTA, FaultConfig, SimConfig, SimError};
pub use placement::SimImage;
pub use ssm::SimParameter;
pub use truth::{
    FaultRecord, InstanceTruth, InstanceTruths, LiveResource, LiveResources, ResourceKind, SimStats, StateInterval,
};
pub use world::{Datapoint, extra_codes, reasons};

use world::World;

/// Why an instance ends when [`SimEc2::interrupt`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InterruptReason {
    /// EC2 reclaims the capacity: `Server.SpotInstanceTermination`, then terminated.
    SpotReclaim,
    /// The guest powers off: `Client.InstanceInitiatedShutdown`; the instance stops or terminates
    /// as its InstanceInitiatedShutdownBehavior says.
    GuestShutdown,
    /// An internal error ends it: `Server.InternalError`, then terminated.
    InternalError,
    /// EC2 retires it (its host is degraded): `Server.ScheduledStop`, stopping then stopped,
    /// whatever its shutdown behaviour ("Instance retirement", Amazon EC2 User Guide).
    ScheduledRetirement,
}

impl InterruptReason {
    /// The StateReason code the instance reports afterwards.
    pub fn state_reason_code(self) -> &'static str {
        match self {
            InterruptReason::SpotReclaim => reasons::SPOT_INSTANCE_TERMINATION,
            InterruptReason::GuestShutdown => reasons::INSTANCE_INITIATED_SHUTDOWN,
            InterruptReason::InternalError => reasons::INTERNAL_ERROR,
            InterruptReason::ScheduledRetirement => reasons::SCHEDULED_STOP,
        }
    }
}

/// The simulated EC2. Share it as `Arc<SimEc2>` (or `Arc<dyn Ec2Port>`); every method takes `&self`.
pub struct SimEc2 {
    world: Mutex<World>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SimEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEc2").field("regions", &self.regions()).finish_non_exhaustive()
    }
}

impl SimEc2 {
    /// A fresh EC2 with nothing in it but each region's `default` security group; every token
    /// bucket starts full at `clock.now_unix_ms()`.
    pub fn new(config: SimConfig, clock: Arc<dyn Clock>) -> Result<Self, SimError> {
        let world = World::new(&config, clock.now_unix_ms())?;
        Ok(Self { world: Mutex::new(world), clock })
    }

    /// The world, brought up to the clock's present.
    fn world(&self) -> MutexGuard<'_, World> {
        let now = self.clock.now_unix_ms();
        // No call panics while holding the lock, so a poisoned lock still holds a consistent world.
        let mut world = self.world.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        world.advance(now);
        world
    }

    // ---------------------------------------------------------------- targeted faults

    /// AWS releases a new AMI under `alias` (an SSM parameter name such as
    /// [`ssm::AL2023_X86_64_ALIAS`]): `image` exists in its region from now on, and
    /// GetParameter of `alias` there answers its id.
    pub fn publish_image(&self, alias: &str, image: SimImage) -> Result<(), SimError> {
        self.world().publish_image(alias, image)
    }

    /// The next call of `op` (in any region) fails with `code` and does nothing.
    pub fn fail_next(&self, op: Operation, code: &str) {
        self.world().fail_next(op, code);
    }

    /// Ends a pending or running instance now, for `reason`. Returns false (and changes nothing)
    /// when the instance is already past running.
    pub fn interrupt(&self, instance_id: &str, reason: InterruptReason) -> Result<bool, SimError> {
        self.world().interrupt(instance_id, reason)
    }

    /// DescribeInstances with a tag filter (`tag:KEY`, `tag-key`) leaves the instance out for the
    /// next `duration_ms`, as when tags have not propagated yet; lookups by id and other
    /// filters still find it.
    pub fn hide_from_tag_filters(&self, instance_id: &str, duration_ms: u64) -> Result<(), SimError> {
        self.world().hide_from_tag_filters(instance_id, duration_ms)
    }

    /// Every call in `region` fails with `Unavailable` for the next `duration_ms`; instances
    /// keep running.
    pub fn region_outage(&self, region: &RegionLabel, duration_ms: u64) -> Result<(), SimError> {
        self.world().region_outage(region, duration_ms)
    }

    /// Every availability zone of `region` has no `instance_type` capacity for `duration_ms`.
    pub fn exhaust_capacity(
        &self,
        region: &RegionLabel,
        instance_type: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        self.world().exhaust_capacity(region, instance_type, duration_ms)
    }

    /// A capacity shortage starts now in `zone`'s pool of `instance_type` for `duration_ms`,
    /// as a random one would: it also drains the neighbouring sizes, or the whole family, in
    /// that zone as `capacity_shortage_neighbours_probability` and
    /// `capacity_shortage_family_probability` draw.
    pub fn start_capacity_shortage(
        &self,
        region: &RegionLabel,
        instance_type: &str,
        zone: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        self.world().start_capacity_shortage(region, instance_type, zone, duration_ms)
    }

    // ---------------------------------------------------------------- ground truth

    /// Every resource that exists now: instances not terminated, their volumes, key pairs and
    /// security groups (not the `default` groups), whether or not the API would show them yet.
    pub fn live_resources(&self) -> Vec<LiveResource> {
        self.world().live_resources()
    }

    /// Brings `live` up to the present, at the cost of what changed since its last refresh (see
    /// [`LiveResources`]); `note` is taken of each resource that came or changed. `note` runs
    /// while the simulator is locked: it must not call the simulator.
    pub fn refresh_live<N>(&self, live: &mut LiveResources<N>, note: impl FnMut(&LiveResource) -> N) {
        self.world().refresh_live(live, note);
    }

    /// The live resources carrying the tag `key` = `value`.
    pub fn live_resources_tagged(&self, key: &str, value: &str) -> Vec<LiveResource> {
        let mut all = self.live_resources();
        all.retain(|r| r.tags.get(key).is_some_and(|v| v == value));
        all
    }

    /// Every instance ever launched, in launch order per region, with its exact history.
    pub fn instances(&self) -> Vec<InstanceTruth> {
        self.world().all_instance_truths()
    }

    /// Brings `truths` up to the present, at the cost of what changed since its last refresh
    /// (see [`InstanceTruths`]); `note` is taken again of each instance whose truth changed.
    /// `note` runs while the simulator is locked: it must not call the simulator.
    pub fn refresh_instances<N>(&self, truths: &mut InstanceTruths<N>, note: impl FnMut(&InstanceTruth) -> N) {
        self.world().refresh_truths(truths, note);
    }

    /// One instance's history, if it was ever launched.
    pub fn instance(&self, instance_id: &str) -> Option<InstanceTruth> {
        self.world().instance_truth(instance_id)
    }

    /// Every CloudWatch `NetworkIn`/`NetworkOut` datapoint of `instance_id` so far, in order,
    /// with when it is (or was) published, `None` for a gap: ground truth for tests and
    /// checkers (see `docs/simulation.md`, CloudWatch).
    pub fn cloudwatch_datapoints(&self, instance_id: &str) -> Option<Vec<Datapoint>> {
        self.world().cloudwatch_datapoints(instance_id)
    }

    /// Every fault injected so far, in order, with the tags of what each hit.
    pub fn fault_log(&self) -> Vec<FaultRecord> {
        self.world().fault_log().to_vec()
    }

    /// Every call refused with `RequestLimitExceeded` because its bucket was empty (throttles
    /// injected at random are in the fault log instead): (unix ms, region, operation).
    pub fn bucket_throttles(&self) -> Vec<(u64, RegionLabel, Operation)> {
        self.world().bucket_throttles().to_vec()
    }

    /// The NextTokens EC2 handed out that no call has presented since: when, where and by which
    /// Describe each was handed out. A listing that stops before its last page leaves one.
    pub fn unfollowed_page_tokens(&self) -> Vec<(u64, RegionLabel, Operation)> {
        self.world().unfollowed_tokens()
    }

    /// The texts calls handed EC2 that a reader of its API can read back (tag values, imported
    /// key material, group descriptions, decoded user data), from the `from`-th on.
    pub fn exposed_since(&self, from: usize) -> Vec<String> {
        self.world().exposed_since(from)
    }

    /// How many faults were injected so far.
    pub fn faults_injected(&self) -> usize {
        self.world().fault_log().len()
    }

    /// The faults injected since the `from`-th (for checkers that look at each new stretch).
    pub fn fault_log_since(&self, from: usize) -> Vec<FaultRecord> {
        self.world().fault_log().get(from..).map(<[FaultRecord]>::to_vec).unwrap_or_default()
    }

    /// The faults injected at or after `from_unix_ms` (the log is in time order).
    pub fn faults_from(&self, from_unix_ms: u64) -> Vec<FaultRecord> {
        let world = self.world();
        let log = world.fault_log();
        log[log.partition_point(|f| f.at_unix_ms < from_unix_ms)..].to_vec()
    }

    /// Counters: calls and throttles per operation, errors per code, faults injected.
    pub fn stats(&self) -> SimStats {
        self.world().stats().clone()
    }

    /// The ingress rules (TCP port, CIDR) of security group `group_id`, in any region, while it
    /// exists: ground truth for checkers.
    pub fn ingress_of(&self, group_id: &str) -> Option<Vec<(u16, String)>> {
        self.world().ingress_of(group_id)
    }

    /// What the guest of `instance_id` holds and when its console shows it (see
    /// [`console::GuestTruth`]), when the instance exists: ground truth for checkers.
    pub fn guest_of(&self, instance_id: &str) -> Option<console::GuestTruth> {
        self.world().guest_of(instance_id)
    }

    /// What the guest of `instance_id` does (its power-off time, and when and why it powers
    /// off), when the instance exists and was launched with the backend's user data; `None`
    /// otherwise. A cheap part of [`SimEc2::guest_of`], for checkers that look often.
    pub fn guest_plan_of(&self, instance_id: &str) -> Option<guest::GuestPlan> {
        self.world().guest_plan_of(instance_id)
    }

    /// A SHA-256 over every call, its inputs and its outcome, and every targeted fault, in
    /// order (hex, then `-` and the number of records). Equal for two runs with the same seed
    /// and the same calls.
    pub fn audit_hash(&self) -> String {
        self.world().audit_hex()
    }

    /// The fault configuration in force.
    pub fn faults(&self) -> FaultConfig {
        self.world().faults().clone()
    }

    /// The simulated regions.
    pub fn regions(&self) -> Vec<RegionLabel> {
        self.world().region_labels()
    }

    /// The present as the simulator sees it.
    pub fn now_unix_ms(&self) -> u64 {
        self.world().advance(0)
    }
}

#[async_trait]
impl Ec2Port for SimEc2 {
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        self.world().import_key_pair(region, req)
    }

    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        self.world().describe_key_pairs(region, filters)
    }

    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        self.world().delete_key_pair(region, key_name)
    }

    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        self.world().create_security_group(region, req)
    }

    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
        self.world().authorize_ingress(region, req)
    }

    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        self.world().describe_security_groups(region, group_ids, filters, page)
    }

    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        self.world().delete_security_group(region, group_id)
    }

    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
        self.world().run_instance(region, req)
    }

    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        filters: &[Filter],
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        self.world().describe_instances(region, instance_ids, filters, page)
    }

    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        self.world().terminate_instances(region, instance_ids)
    }

    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        self.world().describe_instance_types(region, families, page)
    }

    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error> {
        self.world().create_tags(region, resource_ids, tags)
    }

    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        self.world().network_usage(region, instance_ids, start_unix_ms, end_unix_ms)
    }

    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        self.world().get_console_output(region, instance_id)
    }

    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        self.world().describe_subnets(region, subnet_ids, filters, page)
    }

    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        self.world().describe_instance_type_offerings(region, instance_types, page)
    }

    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        self.world().get_parameter(region, name)
    }
}
