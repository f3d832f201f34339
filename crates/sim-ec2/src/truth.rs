//! Ground truth for invariant checkers: what really exists and happened, regardless of what
//! the API (eventually consistent, throttled, faulty) lets a caller see.

use std::collections::BTreeMap;

use aws_backend::port::{InstanceState, Operation, Tags};
use backend_api::RegionLabel;
use serde::{Deserialize, Serialize};

/// The kinds of resource the simulator holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// An instance not yet terminated (stopped instances count).
    Instance,
    /// An instance's root EBS volume; it exists until the instance is terminated
    /// (DeleteOnTermination is set).
    Volume,
    /// A key pair.
    KeyPair,
    /// A security group (the undeletable `default` group is never listed).
    SecurityGroup,
}

/// A resource that exists right now.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LiveResource {
    /// Where it lives.
    pub region: RegionLabel,
    /// What it is.
    pub kind: ResourceKind,
    /// Its id (`i-`, `vol-`, `key-`, `sg-`).
    pub id: String,
    /// Its name, for key pairs and groups; empty otherwise.
    pub name: String,
    /// Its tags.
    pub tags: Tags,
}

/// One stretch of an instance's life in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInterval {
    /// The state.
    pub state: InstanceState,
    /// When it began, unix ms.
    pub from_ms: u64,
    /// When it ended, unix ms; `None` while it lasts.
    pub to_ms: Option<u64>,
    /// The StateReason code in force, e.g. `Client.UserInitiatedShutdown`.
    pub reason_code: Option<String>,
}

/// Everything about one instance ever launched, as of now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTruth {
    /// Its region.
    pub region: RegionLabel,
    /// Its availability zone, e.g. `us-east-1b`.
    pub availability_zone: String,
    /// Its id.
    pub instance_id: String,
    /// Its root volume's id.
    pub volume_id: String,
    /// Its type.
    pub instance_type: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its memory in MiB.
    pub memory_mib: u64,
    /// The ClientToken it was launched with.
    pub client_token: String,
    /// Its key pair's name.
    pub key_name: String,
    /// Its security groups.
    pub security_group_ids: Vec<String>,
    /// Its current tags.
    pub tags: Tags,
    /// Its volume's tags.
    pub volume_tags: Tags,
    /// When it was launched, unix ms.
    pub launch_time_unix_ms: u64,
    /// Its state now.
    pub state: InstanceState,
    /// Its life so far, in order; the last interval is open.
    pub intervals: Vec<StateInterval>,
    /// Milliseconds spent in `running` so far.
    pub running_ms: u64,
    /// Bytes received so far.
    pub network_bytes_in: u64,
    /// Bytes sent so far.
    pub network_bytes_out: u64,
    /// What CloudWatch's `NetworkIn` datapoints of the instance so far add up to once every
    /// one that will be is published: `network_bytes_in` less the periods CloudWatch never
    /// publishes (gaps, `FaultConfig::metrics_gap_probability`). What a meter reading
    /// CloudWatch can at best bill.
    pub cloudwatch_bytes_in: u64,
    /// The same for `NetworkOut`.
    pub cloudwatch_bytes_out: u64,
    /// Each change in the state DescribeInstances showed a caller, in order: (unix ms, state).
    /// What a poller could have known, and when: the bound on how late it can observe.
    pub shown: Vec<(u64, InstanceState)>,
    /// Its root volume's size, GiB.
    pub root_volume_gib: u32,
    /// What its guest does (see [`SimEc2::guest_plan_of`](crate::SimEc2::guest_plan_of)): fixed
    /// at launch, so checkers that look at every instance often read it here rather than ask
    /// the simulator each time. Not serialized: the guest's model is the simulator's own.
    #[serde(skip)]
    pub guest: Option<crate::guest::GuestPlan>,
}

/// One injected fault, with what the call was about, so a checker can tell which grant it hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// When, unix ms.
    pub at_unix_ms: u64,
    /// The region of the call, if the fault hit a call.
    pub region: Option<RegionLabel>,
    /// The operation, if the fault hit a call.
    pub operation: Option<Operation>,
    /// The kind, as counted in [`SimStats::faults`].
    pub kind: String,
    /// The tags of the resources the call created or touched (empty for region-wide calls such
    /// as Describe, whose faults hit every caller in the region).
    pub subjects: Vec<Tags>,
}

impl InstanceTruth {
    /// When the instance stopped being pending or running (entered any other state), or `None`
    /// while it still is.
    pub fn up_until_ms(&self) -> Option<u64> {
        self.intervals
            .iter()
            .find(|i| !matches!(i.state, InstanceState::Pending | InstanceState::Running))
            .map(|i| i.from_ms)
    }
}

/// Counters over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Calls received, per operation (throttled and failed ones included).
    pub calls: BTreeMap<Operation, u64>,
    /// Calls answered `RequestLimitExceeded` (or CloudWatch's `Throttling`), per operation.
    pub throttles: BTreeMap<Operation, u64>,
    /// Error answers, per error code (throttles included).
    pub errors: BTreeMap<String, u64>,
    /// Faults injected, per kind: `InternalError`, `Unavailable`, `ResponseLost`,
    /// `InsufficientInstanceCapacity`, `RequestLimitExceeded` (random, beyond the buckets),
    /// CloudWatch's `Throttling` (random, beyond its bucket), `InternalFailure` and
    /// `ServiceUnavailable`,
    /// `RegionOutage`, `fail_next:<code>`, `exit:<StateReason code>` (spontaneous exits),
    /// `interrupt:<StateReason code>`.
    pub faults: BTreeMap<String, u64>,
    /// Instances launched.
    pub instances_launched: u64,
}

impl SimStats {
    /// All calls received.
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// All throttled calls.
    pub fn total_throttles(&self) -> u64 {
        self.throttles.values().sum()
    }

    /// All faults injected.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// Every instance's ground truth, each with a note its owner derives from it, kept up to date by
/// [`SimEc2::refresh_instances`](crate::SimEc2::refresh_instances) at the cost of what changed.
///
/// A refresh rebuilds only the instances a call changed since the last one (a termination, new
/// tags, a Describe that showed a new state), moves on the figures of instances still changing by
/// themselves (pending, running, shutting down), and adds the instances launched since; an
/// instance whose last planned state has begun costs nothing. The truths are always equal to
/// what [`SimEc2::instances`](crate::SimEc2::instances) would return, in the same order. Keep one
/// per simulator: it remembers how far it has followed that simulator's calls.
#[derive(Debug)]
pub struct InstanceTruths<N> {
    /// Per region, in the simulator's region order, each instance in launch order.
    pub(crate) regions: Vec<Vec<TruthEntry<N>>>,
    /// How many truth-changing calls the last refresh had taken in.
    pub(crate) seen_seq: u64,
}

/// One instance's truth, its note, and whether time alone can still change it.
#[derive(Debug)]
pub(crate) struct TruthEntry<N> {
    pub(crate) truth: InstanceTruth,
    pub(crate) note: N,
    pub(crate) settled: bool,
}

impl<N> Default for InstanceTruths<N> {
    fn default() -> Self {
        Self { regions: Vec::new(), seen_seq: 0 }
    }
}

impl<N> InstanceTruths<N> {
    /// None yet: the first refresh reads every instance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every instance with its note, region by region, each in launch order.
    pub fn iter(&self) -> impl Iterator<Item = (&InstanceTruth, &N)> {
        self.regions.iter().flatten().map(|e| (&e.truth, &e.note))
    }

    /// Every instance, region by region, each in launch order.
    pub fn truths(&self) -> impl Iterator<Item = &InstanceTruth> {
        self.regions.iter().flatten().map(|e| &e.truth)
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.regions.iter().map(Vec::len).sum()
    }

    /// True before any instance was launched.
    pub fn is_empty(&self) -> bool {
        self.regions.iter().all(Vec::is_empty)
    }
}

/// Every live resource, each with a note its owner derives from it, kept up to date by
/// [`SimEc2::refresh_live`](crate::SimEc2::refresh_live) at the cost of what changed.
///
/// A refresh drops what stopped existing and builds only what came or changed since the last
/// one (an instance launched, terminated or tagged; a key pair or group imported, created,
/// deleted or tagged). The resources are always those
/// [`SimEc2::live_resources`](crate::SimEc2::live_resources) would return, in the same order.
/// Keep one per simulator: it remembers how far it has followed that simulator's calls.
#[derive(Debug)]
pub struct LiveResources<N> {
    /// Per region, in the simulator's region order.
    pub(crate) regions: Vec<RegionLive<N>>,
    /// How many changes the last refresh had taken in.
    pub(crate) seen_seq: u64,
}

/// One region's live resources, in the order `live_resources` lists them.
#[derive(Debug)]
pub(crate) struct RegionLive<N> {
    /// Instances not terminated, by launch index, each with its volume.
    pub(crate) instances: BTreeMap<usize, [(LiveResource, N); 2]>,
    /// Key pairs, by name.
    pub(crate) key_pairs: BTreeMap<String, (LiveResource, N)>,
    /// Security groups but the default one, by id.
    pub(crate) groups: BTreeMap<String, (LiveResource, N)>,
}

impl<N> Default for RegionLive<N> {
    fn default() -> Self {
        Self { instances: BTreeMap::new(), key_pairs: BTreeMap::new(), groups: BTreeMap::new() }
    }
}

impl<N> Default for LiveResources<N> {
    fn default() -> Self {
        Self { regions: Vec::new(), seen_seq: 0 }
    }
}

impl<N> LiveResources<N> {
    /// None yet: the first refresh reads every resource.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every live resource with its note: per region, instances each followed by its volume,
    /// then key pairs by name, then security groups by id.
    pub fn iter(&self) -> impl Iterator<Item = (&LiveResource, &N)> {
        self.regions
            .iter()
            .flat_map(|r| r.instances.values().flatten().chain(r.key_pairs.values()).chain(r.groups.values()))
            .map(|(resource, note)| (resource, note))
    }

    /// How many live resources.
    pub fn len(&self) -> usize {
        self.regions.iter().map(|r| 2 * r.instances.len() + r.key_pairs.len() + r.groups.len()).sum()
    }

    /// True when nothing lives.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
