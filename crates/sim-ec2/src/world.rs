//! The simulated EC2: the world's state (regions, and in them key pairs, security groups and
//! instances, each instance with its timeline), built from a `SimConfig` and brought up to the
//! present. The operations on it are `impl World` blocks in the submodules, one concern each:
//! `gate` (what every call goes through), `key_pairs`, `groups`, `launch` (RunInstances),
//! `instances` (DescribeInstances, TerminateInstances), `tags`, `console`, `placement`,
//! `cloudwatch`, `ssm`, `targeted` (the faults a test aims) and `truth` (what checkers read);
//! `timeline` reads an instance's state off its planned changes, and `filters` matches
//! Describe filters.
//!
//! Nothing runs in the background. Each instance carries a timeline of planned state changes
//! drawn when it launched (or when it was told to terminate); its state at any moment is read
//! off that timeline, so bringing the world up to the present costs nothing per instance.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use aws_backend::port::{
    Ec2Error, Filter, InstanceState, Operation, Page, PageRequest, RUN_INSTANCES_RESOURCE_CAPACITY,
    RUN_INSTANCES_RESOURCE_REFILL_PER_S, ShutdownBehavior, TERMINATE_INSTANCES_RESOURCE_CAPACITY,
    TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S, Tags,
};
use backend_api::RegionLabel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smol_str::SmolStr;

use crate::audit::Audit;
use crate::bucket::TokenBucket;
use crate::catalogue::InstanceTypeSpec;
use crate::config::{FaultConfig, SimConfig, SimError};
use crate::consistency::TagView;
use crate::fxhash::FxHashMap;
use crate::idmap::IdMap;
use crate::taglist::TagList;
use crate::truth::{FaultRecord, SimStats};

mod cloudwatch;
mod console;
mod filters;
mod gate;
mod groups;
mod instances;
mod key_pairs;
mod launch;
mod placement;
mod ssm;
mod tags;
mod targeted;
mod timeline;
mod truth;

pub use cloudwatch::Datapoint;

/// StateReason codes, as EC2 spells them (EC2 API reference, "StateReason").
pub mod reasons {
    /// A pending instance.
    pub const PENDING: &str = "pending";
    /// TerminateInstances was called.
    pub const USER_INITIATED_SHUTDOWN: &str = "Client.UserInitiatedShutdown";
    /// The guest powered off.
    pub const INSTANCE_INITIATED_SHUTDOWN: &str = "Client.InstanceInitiatedShutdown";
    /// EC2 reclaimed a Spot instance.
    pub const SPOT_INSTANCE_TERMINATION: &str = "Server.SpotInstanceTermination";
    /// EC2 stopped the instance for a scheduled retirement (its host is degraded).
    pub const SCHEDULED_STOP: &str = "Server.ScheduledStop";
    /// An internal error ended the instance during launch.
    pub const INTERNAL_ERROR: &str = "Server.InternalError";
}

/// Error codes the simulator returns beyond those in [`codes`](aws_backend::port::codes).
pub mod extra_codes {
    /// The region is not enabled for the account (here: not simulated).
    pub const OPT_IN_REQUIRED: &str = "OptInRequired";
    /// A malformed instance id.
    pub const INSTANCE_ID_MALFORMED: &str = "InvalidInstanceID.Malformed";
    /// A malformed security group id.
    pub const GROUP_ID_MALFORMED: &str = "InvalidGroupId.Malformed";
    /// A malformed AMI id.
    pub const AMI_ID_MALFORMED: &str = "InvalidAMIID.Malformed";
    /// A public key EC2 cannot parse.
    pub const KEY_FORMAT: &str = "InvalidKey.Format";
    /// The default security group cannot be deleted.
    pub const CANNOT_DELETE: &str = "CannotDelete";
    /// A ClientToken reused after its instance terminated (EC2 since January 2025).
    pub const IDEMPOTENT_INSTANCE_TERMINATED: &str = "IdempotentInstanceTerminated";
    /// A required parameter is missing.
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    /// More than 50 tags on a resource.
    pub const TAG_LIMIT_EXCEEDED: &str = "TagLimitExceeded";
    /// A resource id of no known kind.
    pub const INVALID_ID: &str = "InvalidID";
    /// An unknown volume.
    pub const VOLUME_NOT_FOUND: &str = "InvalidVolume.NotFound";
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    state: InstanceState,
    from_ms: u64,
    reason: Option<&'static str>,
}

struct Instance {
    id: SmolStr,
    volume_id: String,
    spec: &'static InstanceTypeSpec,
    /// Its zone, an index into its region's `azs`.
    az: u8,
    /// The zone's name, as answers give it.
    az_name: SmolStr,
    client_token: SmolStr,
    key_name: String,
    group_ids: Vec<String>,
    shutdown_behavior: ShutdownBehavior,
    /// Its tags; change them only through [`Instance::merge_tags`], which keeps `shown_tags`.
    tags: TagList,
    /// `tags` as DescribeInstances answers them, shared by every answer until they change.
    shown_tags: Arc<Tags>,
    volume_tags: TagList,
    launched_ms: u64,
    visible_at_ms: u64,
    dependency_lag_ms: u64,
    public_dns: SmolStr,
    bytes_in_per_s: u64,
    bytes_out_per_s: u64,
    /// Planned and past state changes, ordered by `from_ms`, never empty. The last segment
    /// lasts forever.
    timeline: Vec<Segment>,
    /// Each change in the state DescribeInstances showed for this instance: (when, state).
    shown: Vec<(u64, InstanceState)>,
    root_volume_gib: u32,
    /// Until when tag-filtered DescribeInstances leaves this instance out (a targeted fault:
    /// tags propagate after id lookups).
    hidden_from_tag_filters_until_ms: u64,
    /// The value of [`World::truth_seq`] when a call last changed what [`World::truth`] reports
    /// of this instance (its timeline, tags or `shown`), so that a refresh of
    /// [`InstanceTruths`] rebuilds only instances changed since.
    changed_seq: u64,
    /// The host key the user data shipped (`ssh_keys`), which cloud-init installs instead of
    /// generating one; `None`: the guest generates its own (see `console`).
    shipped_host_key: Option<String>,
    /// The IMDS options it was launched with: tokens required, PUT response hop limit.
    imds: (bool, u8),
    /// The tags tag filters still see while newer ones propagate (see `consistency`).
    tag_view: TagView<TagList>,
    /// Until when DescribeInstances still shows this segment from before TerminateInstances.
    stale: Option<(u64, Segment)>,
    /// What its guest does, when its user data is the backend's (see `guest`).
    guest: Option<crate::guest::GuestPlan>,
    /// The key of its CloudWatch publication draws (see `cloudwatch`), a hash of the seed and
    /// its id: worked out at the first query of its metrics, not at every one.
    cloudwatch_key: std::cell::OnceCell<u64>,
    /// The host key its guest generates (see `console`), derived at the first look and kept:
    /// an ed25519 key costs more than the rest of a console read.
    generated_host_key: std::cell::OnceCell<String>,
}

struct KeyPair {
    id: String,
    tags: Tags,
    /// The tags tag filters still see while newer ones propagate.
    tag_view: TagView<Tags>,
    created_ms: u64,
    visible_at_ms: u64,
    /// The value of [`World::truth_seq`] when it was imported or last tagged.
    changed_seq: u64,
}

struct Group {
    name: String,
    description: String,
    tags: Tags,
    /// The tags tag filters still see while newer ones propagate.
    tag_view: TagView<Tags>,
    visible_at_ms: u64,
    rules: BTreeSet<(u16, String)>,
    /// Instances launched into the group (indexes into the region's instances).
    users: Vec<usize>,
    is_default: bool,
    /// The VPC it belongs to (empty for the default group of a region without a default VPC).
    vpc_id: String,
    /// The value of [`World::truth_seq`] when it was created or last tagged.
    changed_seq: u64,
}

struct Region {
    label: RegionLabel,
    azs: Vec<String>,
    /// Its VPCs and subnets (see `network`).
    networks: crate::network::Networks,
    /// One request bucket per action, indexed by [`Operation::index`], each sized by its
    /// category ("Request throttling for the Amazon EC2 API": each API has its own bucket).
    buckets: [TokenBucket; Operation::ALL.len()],
    run_instances_resource: TokenBucket,
    /// TerminateInstances' resource bucket: one token per instance terminated.
    terminate_instances_resource: TokenBucket,
    outage_until_ms: u64,
    /// The value of [`World::truth_seq`] when a key pair or group of the region last came,
    /// went or was tagged.
    resources_seq: u64,
    key_pairs: BTreeMap<String, KeyPair>,
    groups: BTreeMap<String, Group>,
    group_names: BTreeMap<String, String>,
    default_group_id: String,
    instances: Vec<Instance>,
    instance_ids: IdMap,
    volume_ids: IdMap,
    /// Instances DescribeInstances may still list (not yet an hour past termination).
    listed: BTreeSet<usize>,
    /// When terminated instances drop out of `listed`.
    expiry: BinaryHeap<Reverse<(u64, usize)>>,
    client_tokens: FxHashMap<String, ([u8; 32], usize)>,
    capacity_short_until_ms: BTreeMap<(&'static str, u8), u64>,
    /// Deleted groups Describe still lists, by id, with the end of their lingering: their
    /// names stay taken meanwhile (see `consistency`).
    deleted_groups: BTreeMap<String, (u64, Group)>,
    /// Deleted key pairs DescribeKeyPairs still lists, by name, likewise.
    deleted_key_pairs: BTreeMap<String, (u64, KeyPair)>,
}

fn err(op: Operation, code: &str, message: impl Into<String>) -> Ec2Error {
    Ec2Error::new(op, code, message)
}

fn draw(rng: &mut ChaCha8Rng, min: u64, max: u64) -> u64 {
    if max <= min { min } else { rng.gen_range(min..=max) }
}

fn new_id(rng: &mut ChaCha8Rng, prefix: &str) -> String {
    crate::idmap::spell(prefix, rng.r#gen::<u64>())
}

/// What a call is about, for attributing its faults to the grants they hit: named cheaply, and
/// turned into the resources' tags only when a fault is injected.
#[derive(Clone, Copy)]
enum About<'a> {
    /// Nothing in particular: Describe calls, whose faults hit every caller in the region.
    Nothing,
    /// The resources the call creates, tagged so.
    Tags(&'a Tags),
    /// A key pair, by name.
    KeyPair(&'a str),
    /// A security group, by id.
    Group(&'a str),
    /// Instances, by id.
    Instances(&'a [String]),
}

/// The whole simulated EC2. Every method takes the present as already set by [`World::advance`].
pub(crate) struct World {
    faults: FaultConfig,
    network_bytes_per_s_min: u64,
    network_bytes_per_s_max: u64,
    rng: ChaCha8Rng,
    now_ms: u64,
    regions: Vec<Region>,
    fail_next: BTreeMap<Operation, VecDeque<String>>,
    stats: SimStats,
    audit: Audit,
    /// The call in progress and the index of its region, once known.
    current: Option<(Operation, usize)>,
    /// Every fault injected, in order.
    fault_log: Vec<FaultRecord>,
    /// Every call refused because its bucket was empty (not injected): when, where, what.
    bucket_throttles: Vec<(u64, RegionLabel, Operation)>,
    /// The NextTokens handed out that no call has presented yet: token, and when, where and
    /// by what it was handed out.
    unfollowed_tokens: BTreeMap<String, (u64, RegionLabel, Operation)>,
    /// Every text a call handed EC2 that a reader of EC2's API can read back (tag values, key
    /// material, group descriptions, user data, decoded), one after the other: the texts end
    /// at `exposed_ends`. One buffer instead of a string each keeps a long run's memory small.
    exposed: String,
    /// Where each text in `exposed` ends.
    exposed_ends: Vec<usize>,
    /// Counts the changes to ground truth: an instance's truth (see `Instance::changed_seq`),
    /// a key pair or group that came, went or was tagged.
    truth_seq: u64,
    /// DescribeInstances' working lists (the instances it looks at, those it answers), kept
    /// between calls so that a poll allocates none of its own; empty outside a call.
    describe_scratch: (Vec<usize>, Vec<(usize, Segment)>),
    /// The run's seed, from which the simulated guests' host keys are derived.
    seed: u64,
    /// CloudWatch's GetMetricData buckets (see `cloudwatch`).
    cloudwatch: cloudwatch::CloudWatch,
    /// The account's default VPC and AMIs, for the placement rules (see `placement`).
    account: crate::placement::Account,
    /// SSM's public parameters: value by (region index, name) (see `ssm`).
    parameters: BTreeMap<(usize, String), String>,
}

impl World {
    pub(crate) fn new(config: &SimConfig, now_ms: u64) -> Result<Self, SimError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut labels = config.regions.clone();
        labels.dedup();
        let mut regions = Vec::with_capacity(labels.len());
        for label in labels {
            let azs = (0..config.availability_zones_per_region)
                .map(|i| format!("{label}{}", char::from(b'a' + i)))
                .collect::<Vec<String>>();
            let buckets = Operation::ALL.map(|op| {
                let class = op.throttle_class();
                TokenBucket::full(class.capacity(), class.refill_per_s(), now_ms)
            });
            let default_group_id = new_id(&mut rng, "sg");
            let networks =
                crate::network::Networks::new(config.seed, &label, &azs, config.default_vpc, &config.subnets);
            let default_group = Group {
                vpc_id: networks.default_vpc_id.clone().unwrap_or_default(),
                name: "default".into(),
                description: "default VPC security group".into(),
                tags: Tags::new(),
                tag_view: None,
                visible_at_ms: 0,
                rules: BTreeSet::new(),
                users: Vec::new(),
                is_default: true,
                changed_seq: 0,
            };
            regions.push(Region {
                azs,
                networks,
                buckets,
                run_instances_resource: TokenBucket::full(
                    RUN_INSTANCES_RESOURCE_CAPACITY,
                    RUN_INSTANCES_RESOURCE_REFILL_PER_S,
                    now_ms,
                ),
                terminate_instances_resource: TokenBucket::full(
                    TERMINATE_INSTANCES_RESOURCE_CAPACITY,
                    TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S,
                    now_ms,
                ),
                outage_until_ms: 0,
                resources_seq: 0,
                key_pairs: BTreeMap::new(),
                groups: BTreeMap::from([(default_group_id.clone(), default_group)]),
                group_names: BTreeMap::from([("default".to_string(), default_group_id.clone())]),
                default_group_id,
                instances: Vec::new(),
                instance_ids: IdMap::new("i"),
                volume_ids: IdMap::new("vol"),
                listed: BTreeSet::new(),
                expiry: BinaryHeap::new(),
                client_tokens: FxHashMap::default(),
                capacity_short_until_ms: BTreeMap::new(),
                deleted_groups: BTreeMap::new(),
                deleted_key_pairs: BTreeMap::new(),
                label,
            });
        }
        let cloudwatch = cloudwatch::CloudWatch::new(regions.len(), now_ms);
        let mut published = Vec::new();
        let mut parameters = BTreeMap::new();
        for (r, region) in regions.iter().enumerate() {
            let given: Vec<crate::ssm::SimParameter> =
                config.public_parameters.iter().filter(|p| p.region == region.label).cloned().collect();
            let params = if config.public_parameters.is_empty() {
                let (params, images) = crate::ssm::defaults(&region.label, &config.images);
                published.extend(images);
                params
            } else {
                given
            };
            for p in params {
                parameters.insert((r, p.name), p.value);
            }
        }
        Ok(Self {
            faults: config.faults.clone(),
            network_bytes_per_s_min: config.network_bytes_per_s_min,
            network_bytes_per_s_max: config.network_bytes_per_s_max,
            rng,
            now_ms,
            regions,
            fail_next: BTreeMap::new(),
            stats: SimStats::default(),
            audit: Audit::new(config.seed),
            current: None,
            fault_log: Vec::new(),
            bucket_throttles: Vec::new(),
            unfollowed_tokens: BTreeMap::new(),
            exposed: String::new(),
            exposed_ends: Vec::new(),
            truth_seq: 0,
            describe_scratch: (Vec::new(), Vec::new()),
            seed: config.seed,
            cloudwatch,
            account: crate::placement::Account {
                seed: config.seed,
                default_vpc: config.default_vpc,
                images: config.images.clone(),
                published,
            },
            parameters,
        })
    }

    /// Brings the world up to `now_ms` (time never goes back) and returns the present.
    pub(crate) fn advance(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        let (now, visible_ms) = (self.now_ms, self.faults.terminated_visible_ms);
        for region in &mut self.regions {
            while let Some(Reverse((at, idx))) = region.expiry.peek().copied() {
                if at > now {
                    break;
                }
                region.expiry.pop();
                // A stale entry (the plan changed since) leaves the instance listed.
                if region.instances[idx].expired(now, visible_ms) {
                    region.listed.remove(&idx);
                }
            }
        }
        now
    }

    pub(crate) fn faults(&self) -> &FaultConfig {
        &self.faults
    }

    pub(crate) fn stats(&self) -> &SimStats {
        &self.stats
    }

    pub(crate) fn audit_hex(&self) -> String {
        self.audit.hex()
    }

    pub(crate) fn region_labels(&self) -> Vec<RegionLabel> {
        self.regions.iter().map(|r| r.label.clone()).collect()
    }

    fn region_index(&self, region: &RegionLabel) -> Option<usize> {
        self.regions.iter().position(|r| r.label == *region)
    }

    pub(crate) fn fault_log(&self) -> &[FaultRecord] {
        &self.fault_log
    }

    pub(crate) fn bucket_throttles(&self) -> &[(u64, RegionLabel, Operation)] {
        &self.bucket_throttles
    }

    pub(crate) fn unfollowed_tokens(&self) -> Vec<(u64, RegionLabel, Operation)> {
        self.unfollowed_tokens.values().cloned().collect()
    }

    /// The exposed texts from the `from`-th on (see `exposed`).
    pub(crate) fn exposed_since(&self, from: usize) -> Vec<String> {
        (from..self.exposed_ends.len())
            .map(|k| {
                let start = if k == 0 { 0 } else { self.exposed_ends[k - 1] };
                self.exposed[start..self.exposed_ends[k]].to_string()
            })
            .collect()
    }

    /// Keeps what a call handed EC2 that the API shows again (see `exposed`).
    fn expose<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) {
        for text in texts.into_iter().filter(|t| !t.is_empty()) {
            self.exposed.push_str(text);
            self.exposed_ends.push(self.exposed.len());
        }
    }

    /// Counts one more change to ground truth and returns its number (see `truth_seq`).
    fn next_seq(&mut self) -> u64 {
        self.truth_seq += 1;
        self.truth_seq
    }
}

fn audit_page(audit: &mut Audit, page: &PageRequest) {
    audit.u64(page.max_results.map_or(0, |m| u64::from(m) + 1));
    audit.str(page.next_token.as_deref().unwrap_or(""));
}

fn audit_next_token<T>(audit: &mut Audit, page: &Page<T>) {
    audit.u64(page.items.len() as u64);
    audit.str(page.next_token.as_deref().unwrap_or(""));
}

fn audit_filters(audit: &mut Audit, filters: &[Filter]) {
    audit.u64(filters.len() as u64);
    for f in filters {
        audit.str(&f.name);
        audit.strs(&f.values);
    }
}
