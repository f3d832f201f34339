//! The simulated EC2 itself: regions, resources, lifecycle timelines, and the operations on them.
//!
//! Nothing runs in the background. Each instance carries a timeline of planned state changes
//! drawn when it launched (or when it was told to terminate); its state at any moment is read
//! off that timeline, so bringing the world up to the present costs nothing per instance.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceState, InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, Operation, Page,
    PageRequest, RUN_INSTANCES_RESOURCE_CAPACITY, RUN_INSTANCES_RESOURCE_REFILL_PER_S, RunInstancesRequest,
    SecurityGroupInfo, ShutdownBehavior, SubnetInfo, TERMINATE_INSTANCES_RESOURCE_CAPACITY,
    TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S, Tags, ThrottleClass, codes,
};
use backend_api::RegionLabel;
use base64::Engine;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::InterruptReason;
use crate::audit::{Audit, op_tag};
use crate::bucket::TokenBucket;
use crate::catalogue::{self, InstanceTypeSpec};
use crate::config::{FaultConfig, SimConfig, SimError};
use crate::consistency::{self, LagKind, TagView};
use crate::fxhash::FxHashMap;
use crate::pagination;
use crate::taglist::TagList;
use crate::truth::{
    FaultRecord, InstanceTruth, InstanceTruths, LiveResource, LiveResources, ResourceKind, SimStats, StateInterval,
    TruthEntry,
};

mod cloudwatch;
mod ssm;

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

/// Error codes the simulator returns beyond those in [`codes`].
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
    id: String,
    volume_id: String,
    spec: &'static InstanceTypeSpec,
    az: u8,
    /// The zone's name, as Describe shows it.
    zone: String,
    client_token: String,
    key_name: String,
    group_ids: Vec<String>,
    shutdown_behavior: ShutdownBehavior,
    tags: TagList,
    volume_tags: TagList,
    launched_ms: u64,
    visible_at_ms: u64,
    dependency_lag_ms: u64,
    public_dns: String,
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
}

impl Instance {
    /// When the guest first ran, if it has.
    fn running_since(&self) -> Option<u64> {
        self.timeline.iter().find(|s| s.state == InstanceState::Running).map(|s| s.from_ms)
    }

    fn segment_at(&self, t: u64) -> Segment {
        let i = self.timeline.partition_point(|s| s.from_ms <= t);
        self.timeline[i.saturating_sub(1)]
    }

    fn state_at(&self, t: u64) -> InstanceState {
        self.segment_at(t).state
    }

    /// True when nothing about the instance changes with time any more after `t` (its last
    /// planned state has begun and is not `running`, whose figures grow): its truth then stays
    /// as it is until a call changes it.
    fn settled_by(&self, t: u64) -> bool {
        self.timeline.last().is_some_and(|s| s.from_ms <= t && s.state != InstanceState::Running)
    }

    /// Brings `truth`, built from this instance's timeline as it still is at some earlier time,
    /// up to `now`: the intervals that began since, and the figures that grow. What it gives is
    /// what [`World::truth`] would build afresh.
    fn advance_truth(&self, truth: &mut InstanceTruth, now: u64) {
        let past = self.timeline.partition_point(|s| s.from_ms <= now);
        let known = truth.intervals.len();
        if past > known {
            if let Some(open) = truth.intervals.last_mut() {
                open.to_ms = Some(self.timeline[known].from_ms);
            }
            for k in known..past {
                let seg = self.timeline[k];
                truth.intervals.push(StateInterval {
                    state: seg.state,
                    from_ms: seg.from_ms,
                    to_ms: (k + 1 < past).then(|| self.timeline[k + 1].from_ms),
                    reason_code: seg.reason.map(str::to_string),
                });
            }
        }
        truth.state = self.state_at(now);
        truth.running_ms = self.running_ms_until(now);
        (truth.network_bytes_in, truth.network_bytes_out) = self.bytes_until(now);
    }

    /// When the instance leaves `pending`/`running` for good, as planned now.
    fn exit_from(&self) -> Option<u64> {
        self.timeline
            .iter()
            .find(|s| !matches!(s.state, InstanceState::Pending | InstanceState::Running))
            .map(|s| s.from_ms)
    }

    /// True when its guest's own power-off ended it by `t` (nothing ended it before).
    fn guest_powered_off_by(&self, t: u64) -> bool {
        self.guest.as_ref().is_some_and(|g| {
            g.powers_off_at_ms <= t
                && self
                    .timeline
                    .iter()
                    .any(|s| s.from_ms == g.powers_off_at_ms && s.reason == Some(reasons::INSTANCE_INITIATED_SHUTDOWN))
        })
    }

    /// When the instance is (or is planned to be) terminated.
    fn terminated_from(&self) -> Option<u64> {
        self.timeline.last().filter(|s| s.state == InstanceState::Terminated).map(|s| s.from_ms)
    }

    fn expired(&self, now: u64, visible_ms: u64) -> bool {
        self.terminated_from().is_some_and(|t| now >= t.saturating_add(visible_ms))
    }

    fn describable(&self, now: u64, visible_ms: u64) -> bool {
        now >= self.visible_at_ms && !self.expired(now, visible_ms)
    }

    /// True while the instance's security groups count as in use.
    fn holds_groups(&self, now: u64) -> bool {
        self.terminated_from().is_none_or(|t| now < t.saturating_add(self.dependency_lag_ms))
    }

    fn running_ms_until(&self, t: u64) -> u64 {
        let mut total = 0;
        for (i, seg) in self.timeline.iter().enumerate() {
            if seg.state != InstanceState::Running {
                continue;
            }
            let end = self.timeline.get(i + 1).map_or(u64::MAX, |next| next.from_ms).min(t);
            total += end.saturating_sub(seg.from_ms);
        }
        total
    }

    /// Cumulative (bytes in, bytes out) up to `t`: traffic flows only while running.
    fn bytes_until(&self, t: u64) -> (u64, u64) {
        let ms = u128::from(self.running_ms_until(t));
        let scale = |rate: u64| u64::try_from(u128::from(rate) * ms / 1_000).unwrap_or(u64::MAX);
        (scale(self.bytes_in_per_s), scale(self.bytes_out_per_s))
    }

    fn info(&self, now: u64) -> InstanceInfo {
        self.info_of(self.segment_at(now))
    }

    /// The segment DescribeInstances shows at `now`: a stale one for a moment after
    /// TerminateInstances (see `consistency`), else the true one.
    fn described_segment(&self, now: u64) -> Segment {
        match self.stale {
            Some((until, seg)) if now < until => seg,
            _ => self.segment_at(now),
        }
    }

    fn info_of(&self, seg: Segment) -> InstanceInfo {
        let public_dns_name = match seg.state {
            InstanceState::Running | InstanceState::ShuttingDown | InstanceState::Stopping => self.public_dns.clone(),
            _ => String::new(),
        };
        InstanceInfo {
            instance_id: self.id.clone(),
            instance_type: self.spec.name.to_string(),
            state: seg.state,
            state_reason_code: seg.reason.map(str::to_string),
            public_dns_name,
            launch_time_unix_ms: self.launched_ms,
            tags: self.tags.to_tags(),
            client_token: self.client_token.clone(),
            availability_zone: self.zone.clone(),
        }
    }

    /// Replaces every planned change from `at` on with an exit: shutting-down then terminated,
    /// or stopping then stopped. Returns when the instance will be terminated, if it will.
    fn plan_exit(&mut self, at: u64, reason: &'static str, stop: bool, delay_ms: u64) -> Option<u64> {
        self.timeline.retain(|s| s.from_ms < at);
        let (first, then) = if stop {
            (InstanceState::Stopping, InstanceState::Stopped)
        } else {
            (InstanceState::ShuttingDown, InstanceState::Terminated)
        };
        let end = at.saturating_add(delay_ms);
        self.timeline.push(Segment { state: first, from_ms: at, reason: Some(reason) });
        self.timeline.push(Segment { state: then, from_ms: end, reason: Some(reason) });
        (!stop).then_some(end)
    }
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
    instance_ids: FxHashMap<String, usize>,
    volume_ids: FxHashMap<String, usize>,
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

fn is_mutating(op: Operation) -> bool {
    !matches!(
        op.throttle_class(),
        ThrottleClass::NonMutating | ThrottleClass::GetMetricData | ThrottleClass::GetParameter
    )
}

fn err(op: Operation, code: &str, message: impl Into<String>) -> Ec2Error {
    Ec2Error::new(op, code, message)
}

fn draw(rng: &mut ChaCha8Rng, min: u64, max: u64) -> u64 {
    if max <= min { min } else { rng.gen_range(min..=max) }
}

fn new_id(rng: &mut ChaCha8Rng, prefix: &str) -> String {
    format!("{prefix}-0{:016x}", rng.r#gen::<u64>())
}

/// EC2's Describe wildcards: `*` for any run, `?` for one character.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

enum FilterName {
    Tag(String),
    TagKey,
    Field(&'static str),
}

struct ParsedFilter {
    name: FilterName,
    values: Vec<String>,
}

fn parse_filters(op: Operation, filters: Vec<Filter>, fields: &[&'static str]) -> Result<Vec<ParsedFilter>, Ec2Error> {
    filters
        .into_iter()
        .map(|f| {
            let name = if let Some(key) = f.name.strip_prefix("tag:") {
                FilterName::Tag(key.to_string())
            } else if f.name == "tag-key" {
                FilterName::TagKey
            } else if let Some(field) = fields.iter().find(|n| **n == f.name) {
                FilterName::Field(field)
            } else {
                return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("The filter '{}' is invalid", f.name)));
            };
            Ok(ParsedFilter { name, values: f.values })
        })
        .collect()
}

/// The lookups Describe filters make, over either form the simulator keeps tags in.
trait TagSet {
    fn tag(&self, key: &str) -> Option<&str>;
    fn any_key(&self, pred: impl FnMut(&str) -> bool) -> bool;
}

impl TagSet for Tags {
    fn tag(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn any_key(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.keys().any(|k| pred(k))
    }
}

impl TagSet for TagList {
    fn tag(&self, key: &str) -> Option<&str> {
        self.get(key)
    }

    fn any_key(&self, pred: impl FnMut(&str) -> bool) -> bool {
        self.keys().any(pred)
    }
}

fn matches<'a>(filters: &[ParsedFilter], tags: &impl TagSet, field: impl Fn(&str) -> Option<&'a str>) -> bool {
    filters.iter().all(|f| {
        let any = |text: &str| f.values.iter().any(|p| glob(p, text));
        match &f.name {
            FilterName::Tag(key) => tags.tag(key).is_some_and(any),
            FilterName::TagKey => tags.any_key(any),
            FilterName::Field(name) => field(name).is_some_and(any),
        }
    })
}

fn validate_tags(op: Operation, tags: &Tags) -> Result<(), Ec2Error> {
    if tags.len() > 50 {
        return Err(err(op, extra_codes::TAG_LIMIT_EXCEEDED, "The maximum number of tags for a resource is 50"));
    }
    for (key, value) in tags {
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
            return Err(err(
                op,
                codes::INVALID_PARAMETER_VALUE,
                format!("Tag {key:?} has an invalid key or value length"),
            ));
        }
        if key.get(..4).is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws:")) {
            return Err(err(
                op,
                codes::INVALID_PARAMETER_VALUE,
                format!("Tag key {key:?}: keys starting with 'aws:' are reserved for internal use"),
            ));
        }
    }
    Ok(())
}

/// An IPv4 (`CidrIp`, prefix up to 32) or IPv6 (`CidrIpv6`, up to 128) range.
fn valid_cidr(cidr: &str) -> bool {
    let Some((ip, prefix)) = cidr.split_once('/') else { return false };
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

/// True for an OpenSSH public key EC2 imports: RSA or ED25519 only, whose base64 body is a key
/// blob of the kind its first word names. ECDSA (`ecdsa-sha2-nistp256` ...) and DSA keys are
/// refused: "ImportKeyPair" API reference ("Imports the public key from an RSA or ED25519 key
/// pair"), and "Create a key pair using a third-party tool" (supported types: RSA, ED25519).
fn valid_public_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else { return false };
    if !matches!(kind, "ssh-ed25519" | "ssh-rsa") {
        return false;
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(body) else { return false };
    // The blob opens with the key type as an SSH string: a 4-byte big-endian length, then it.
    let named = blob.get(..4).and_then(|len| {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        blob.get(4..4usize.checked_add(len)?)
    });
    named == Some(kind.as_bytes())
}

/// A digest of every RunInstances parameter except the token, to detect reuse with other parameters.
fn run_fingerprint(req: &RunInstancesRequest) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut s = |v: &str| {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    };
    s(&req.image_id);
    s(&req.instance_type);
    s(&req.key_name);
    for g in &req.security_group_ids {
        s(g);
    }
    s("|");
    s(&req.user_data_base64);
    s(&req.root_volume_gib.to_string());
    s(&req.root_device_name);
    s(if req.imdsv2_required { "imdsv2" } else { "imdsv1" });
    s(req.subnet_id.as_deref().unwrap_or("-"));
    s(req.availability_zone.as_deref().unwrap_or("-"));
    s(&req.imds_hop_limit.to_string());
    s(match req.shutdown_behavior {
        ShutdownBehavior::Stop => "stop",
        ShutdownBehavior::Terminate => "terminate",
    });
    for (k, v) in req.instance_tags.iter().chain(std::iter::once((&String::new(), &String::new()))) {
        s(k);
        s(v);
    }
    for (k, v) in &req.volume_tags {
        s(k);
        s(v);
    }
    h.finalize().into()
}

fn public_dns(region: &RegionLabel, ip: [u8; 4]) -> String {
    let [a, b, c, d] = ip;
    if region.as_str() == "us-east-1" {
        format!("ec2-{a}-{b}-{c}-{d}.compute-1.amazonaws.com")
    } else {
        format!("ec2-{a}-{b}-{c}-{d}.{region}.compute.amazonaws.com")
    }
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
                instance_ids: FxHashMap::default(),
                volume_ids: FxHashMap::default(),
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

    /// Records a fault of `kind` hitting the call in progress, which was about `subjects`.
    fn fault(&mut self, kind: &str, subjects: Vec<Tags>) {
        if let Some(count) = self.stats.faults.get_mut(kind) {
            *count += 1;
        } else {
            self.stats.faults.insert(kind.to_string(), 1);
        }
        let (operation, region) = match self.current {
            Some((op, r)) => (Some(op), Some(self.regions[r].label.clone())),
            None => (None, None),
        };
        self.fault_log.push(FaultRecord {
            at_unix_ms: self.now_ms,
            region,
            operation,
            kind: kind.to_string(),
            subjects,
        });
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

    /// Notes a call presenting `page`'s token (whatever becomes of the call: a retry of a
    /// refused page presents it again).
    fn presented(&mut self, page: &PageRequest) {
        if let Some(token) = &page.next_token {
            self.unfollowed_tokens.remove(token);
        }
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

    /// The tags of what a call in region `r` is about, as they are now.
    fn subjects(&self, r: usize, about: About<'_>) -> Vec<Tags> {
        let region = &self.regions[r];
        match about {
            About::Nothing => Vec::new(),
            About::Tags(tags) => vec![tags.clone()],
            About::KeyPair(name) => region.key_pairs.get(name).map(|k| vec![k.tags.clone()]).unwrap_or_default(),
            About::Group(id) => region.groups.get(id).map(|g| vec![g.tags.clone()]).unwrap_or_default(),
            About::Instances(ids) => ids
                .iter()
                .filter_map(|id| region.instance_ids.get(id))
                .map(|&i| region.instances[i].tags.to_tags())
                .collect(),
        }
    }

    /// Records a fault of `kind` hitting a call in region `r` about `about`.
    fn fault_about(&mut self, kind: &str, r: usize, about: About<'_>) {
        let subjects = self.subjects(r, about);
        self.fault(kind, subjects);
    }

    /// The page `window` asks for out of `answer` (sorted by key), keys dropped; see
    /// `pagination`.
    fn page_of<T>(&mut self, window: pagination::Window, answer: Vec<(String, T)>) -> Page<T> {
        let page = pagination::cut(window, answer, self.faults.page_short_probability, &mut self.rng);
        if let (Some(token), Some((op, r))) = (&page.next_token, self.current) {
            let region = self.regions[r].label.clone();
            self.unfollowed_tokens.insert(token.clone(), (self.now_ms, region, op));
        }
        Page { items: page.items.into_iter().map(|(_, item)| item).collect(), next_token: page.next_token }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.rng.gen_bool(p))
    }

    /// What every service's gate does first: the region (`OptInRequired` when it is not
    /// simulated), an outage (answered with the service's own `unavailable` code), and a
    /// targeted `fail_next`. Returns the region's index.
    fn gate_common(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
        unavailable: &str,
    ) -> Result<usize, Ec2Error> {
        let Some(r) = self.region_index(region) else {
            return Err(err(
                op,
                extra_codes::OPT_IN_REQUIRED,
                format!("region {region} is not simulated: add it to SimConfig::regions"),
            ));
        };
        self.current = Some((op, r));
        if self.regions[r].outage_until_ms > self.now_ms {
            self.fault_about("RegionOutage", r, about);
            return Err(err(op, unavailable, format!("The service is unavailable in {region}")));
        }
        if let Some(queue) = self.fail_next.get_mut(&op)
            && let Some(code) = queue.pop_front()
        {
            self.fault_about(&format!("fail_next:{code}"), r, about);
            return Err(err(op, &code, "injected by fail_next"));
        }
        Ok(r)
    }

    /// Everything that happens before a call reaches its operation: region, outage, targeted
    /// faults, throttling (a throttled call takes no token), random failures.
    fn gate(&mut self, op: Operation, region: &RegionLabel, about: About<'_>) -> Result<usize, Ec2Error> {
        if op.throttle_class() == ThrottleClass::GetMetricData {
            return self.cloudwatch_gate(op, region, about);
        }
        if op.throttle_class() == ThrottleClass::GetParameter {
            return self.ssm_gate(op, region, about);
        }
        let now = self.now_ms;
        let r = self.gate_common(op, region, about, codes::UNAVAILABLE)?;
        if self.chance(self.faults.throttle_probability) {
            self.fault_about(codes::REQUEST_LIMIT_EXCEEDED, r, about);
            return Err(err(op, codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded."));
        }
        // TerminateInstances also needs one token per instance of its resource bucket (taken
        // when the call succeeds, as RunInstances' is).
        let terminating = match about {
            About::Instances(ids) if op == Operation::TerminateInstances => ids.len() as u64,
            _ => 0,
        };
        let reg = &mut self.regions[r];
        let bucket = op.index();
        let allowed = reg.buckets[bucket].has_token(now)
            && (op != Operation::RunInstances || reg.run_instances_resource.has_token(now))
            && reg.terminate_instances_resource.has_tokens(now, terminating);
        if !allowed {
            self.bucket_throttles.push((now, region.clone(), op));
            return Err(err(op, codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded."));
        }
        reg.buckets[bucket].take_token();
        if self.chance(self.faults.internal_error_probability) {
            self.fault_about(codes::INTERNAL_ERROR, r, about);
            return Err(err(op, codes::INTERNAL_ERROR, "An internal error has occurred"));
        }
        if self.chance(self.faults.unavailable_probability) {
            self.fault_about(codes::UNAVAILABLE, r, about);
            return Err(err(op, codes::UNAVAILABLE, "The service is unavailable. Please try again shortly."));
        }
        Ok(r)
    }

    /// Serves one call of `op` about `about`: the gate, then `exec` in the region, then a lost
    /// response perhaps, counting it all.
    fn serve<T>(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
        exec: impl FnOnce(&mut Self, usize) -> Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        *self.stats.calls.entry(op).or_default() += 1;
        let result = match self.gate(op, region, about) {
            Ok(r) => {
                // A lost response is attributed to what the call was about before it ran (a
                // deleted key pair has no tags afterwards), so that is read now whenever one
                // may be drawn.
                let lost_response_may_be_drawn = is_mutating(op) && self.faults.response_lost_probability > 0.0;
                let before = lost_response_may_be_drawn.then(|| self.subjects(r, about));
                let result = exec(self, r);
                if result.is_ok() && is_mutating(op) && self.chance(self.faults.response_lost_probability) {
                    self.fault("ResponseLost", before.unwrap_or_default());
                    Err(err(op, codes::INTERNAL_ERROR, "An internal error has occurred"))
                } else {
                    result
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_throttle() {
                *self.stats.throttles.entry(op).or_default() += 1;
            }
            if let Some(count) = self.stats.errors.get_mut(&e.code) {
                *count += 1;
            } else {
                self.stats.errors.insert(e.code.clone(), 1);
            }
        }
        self.current = None;
        result
    }

    // ---------------------------------------------------------------- key pairs

    pub(crate) fn import_key_pair(
        &mut self,
        region: &RegionLabel,
        req: ImportKeyPairRequest,
    ) -> Result<KeyPairInfo, Ec2Error> {
        let op = Operation::ImportKeyPair;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.key_name);
        self.audit.str(&req.public_key_openssh);
        self.audit.tags(&req.tags);
        self.expose(req.tags.values().map(String::as_str).chain([req.public_key_openssh.as_str()]));
        let result = self.serve(op, region, About::Tags(&req.tags), |w, r| w.import_key_pair_in(r, &req));
        self.audit.outcome(&result, |a, kp| {
            a.str(&kp.key_pair_id);
            a.u64(kp.create_time_unix_ms);
        });
        result
    }

    fn import_key_pair_in(&mut self, r: usize, req: &ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        let op = Operation::ImportKeyPair;
        let name = &req.key_name;
        if name.is_empty() || name.len() > 255 || !name.is_ascii() {
            return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("Invalid key pair name {name:?}")));
        }
        if !valid_public_key(&req.public_key_openssh) {
            return Err(err(op, extra_codes::KEY_FORMAT, "Key is not in valid OpenSSH public key format"));
        }
        validate_tags(op, &req.tags)?;
        if self.regions[r].key_pairs.contains_key(name) || self.deleted_key_pair_lingers(r, name) {
            return Err(err(op, codes::KEY_PAIR_DUPLICATE, format!("The keypair '{name}' already exists.")));
        }
        let id = new_id(&mut self.rng, "key");
        let visible_at_ms =
            self.now_ms + draw(&mut self.rng, self.faults.visibility_delay_ms_min, self.faults.visibility_delay_ms_max);
        let info = KeyPairInfo {
            key_name: name.clone(),
            key_pair_id: id.clone(),
            tags: req.tags.clone(),
            create_time_unix_ms: self.now_ms,
        };
        let changed_seq = self.next_seq();
        let tag_view = self.new_tag_view(&id, &Tags::new());
        let key_pair =
            KeyPair { id, tags: req.tags.clone(), tag_view, created_ms: self.now_ms, visible_at_ms, changed_seq };
        self.regions[r].key_pairs.insert(name.clone(), key_pair);
        self.regions[r].resources_seq = changed_seq;
        Ok(info)
    }

    pub(crate) fn describe_key_pairs(
        &mut self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        let op = Operation::DescribeKeyPairs;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        audit_filters(&mut self.audit, &filters);
        let result: Result<Vec<KeyPairInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let filters = parse_filters(op, filters, &["key-name", "key-pair-id"])?;
            let now = w.now_ms;
            let region = &w.regions[r];
            // Deleted key pairs linger in the list for a while (see `consistency`).
            let lingering = region.deleted_key_pairs.iter().filter(|(_, (until, _))| now < *until);
            let mut listed: Vec<(&String, &KeyPair)> =
                region.key_pairs.iter().chain(lingering.map(|(name, (_, kp))| (name, kp))).collect();
            listed.sort_by(|a, b| a.0.cmp(b.0));
            Ok(listed
                .into_iter()
                .filter(|(_, kp)| now >= kp.visible_at_ms)
                .filter(|(name, kp)| {
                    matches(&filters, consistency::filter_tags(&kp.tags, &kp.tag_view, now), |f| match f {
                        "key-name" => Some(name.as_str()),
                        "key-pair-id" => Some(kp.id.as_str()),
                        _ => None,
                    })
                })
                .map(|(name, kp)| KeyPairInfo {
                    key_name: name.clone(),
                    key_pair_id: kp.id.clone(),
                    tags: kp.tags.clone(),
                    create_time_unix_ms: kp.created_ms,
                })
                .collect())
        });
        self.audit.outcome(&result, |a, list| {
            a.u64(list.len() as u64);
            for kp in list {
                a.str(&kp.key_pair_id);
                a.tags(&kp.tags);
            }
        });
        result
    }

    pub(crate) fn delete_key_pair(&mut self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteKeyPair;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(key_name);
        // EC2 answers success whether or not the key pair exists.
        let result = self.serve(op, region, About::KeyPair(key_name), |w, r| {
            if let Some(kp) = w.regions[r].key_pairs.remove(key_name) {
                w.regions[r].resources_seq = w.next_seq();
                w.linger_key_pair(r, key_name, kp);
            }
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    // ---------------------------------------------------------------- security groups

    pub(crate) fn create_security_group(
        &mut self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        let op = Operation::CreateSecurityGroup;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.group_name);
        self.audit.str(&req.description);
        self.audit.tags(&req.tags);
        self.expose(req.tags.values().map(String::as_str).chain([req.description.as_str()]));
        let result = self.serve(op, region, About::Tags(&req.tags), |w, r| w.create_security_group_in(r, &req));
        self.audit.outcome(&result, |a, id| a.str(id));
        result
    }

    fn create_security_group_in(&mut self, r: usize, req: &CreateSecurityGroupRequest) -> Result<String, Ec2Error> {
        let op = Operation::CreateSecurityGroup;
        let name = &req.group_name;
        if name.is_empty() || name.len() > 255 || !name.is_ascii() || name.starts_with("sg-") {
            return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("Invalid security group name {name:?}")));
        }
        if req.description.is_empty() {
            return Err(err(
                op,
                extra_codes::MISSING_PARAMETER,
                "The request must contain the parameter GroupDescription",
            ));
        }
        validate_tags(op, &req.tags)?;
        // A named VPC must exist; without one the group goes to the default VPC.
        let vpc_id = match &req.vpc_id {
            Some(vpc) if self.regions[r].networks.has_vpc(vpc) => vpc.clone(),
            Some(vpc) => return Err(err(op, codes::VPC_NOT_FOUND, format!("The vpc ID '{vpc}' does not exist"))),
            None => {
                self.account.default_vpc(op, &self.regions[r].label)?;
                self.regions[r].networks.default_vpc_id.clone().unwrap_or_default()
            }
        };
        if self.regions[r].group_names.contains_key(name) || self.deleted_group_lingers(r, name) {
            return Err(err(op, codes::GROUP_DUPLICATE, format!("The security group '{name}' already exists")));
        }
        let id = new_id(&mut self.rng, "sg");
        let tag_view = self.new_tag_view(&id, &Tags::new());
        let visible_at_ms =
            self.now_ms + draw(&mut self.rng, self.faults.visibility_delay_ms_min, self.faults.visibility_delay_ms_max);
        let changed_seq = self.next_seq();
        let region = &mut self.regions[r];
        region.resources_seq = changed_seq;
        region.group_names.insert(name.clone(), id.clone());
        region.groups.insert(
            id.clone(),
            Group {
                name: name.clone(),
                description: req.description.clone(),
                tags: req.tags.clone(),
                tag_view,
                visible_at_ms,
                rules: BTreeSet::new(),
                users: Vec::new(),
                is_default: false,
                vpc_id,
                changed_seq,
            },
        );
        Ok(id)
    }

    /// The group `id` if it is visible now, else EC2's error for it.
    fn visible_group(&self, op: Operation, r: usize, id: &str) -> Result<&Group, Ec2Error> {
        if !id.starts_with("sg-") {
            return Err(err(op, extra_codes::GROUP_ID_MALFORMED, format!("Invalid id: \"{id}\"")));
        }
        self.regions[r]
            .groups
            .get(id)
            .filter(|g| self.now_ms >= g.visible_at_ms)
            .ok_or_else(|| err(op, codes::GROUP_NOT_FOUND, format!("The security group '{id}' does not exist")))
    }

    pub(crate) fn authorize_ingress(
        &mut self,
        region: &RegionLabel,
        req: AuthorizeIngressRequest,
    ) -> Result<(), Ec2Error> {
        let op = Operation::AuthorizeSecurityGroupIngress;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.group_id);
        self.audit.u64(u64::from(req.port));
        self.audit.strs(&req.cidrs);
        let result = self.serve(op, region, About::Group(&req.group_id), |w, r| {
            w.visible_group(op, r, &req.group_id)?;
            if req.cidrs.is_empty() {
                return Err(err(op, extra_codes::MISSING_PARAMETER, "The request must contain an IP range"));
            }
            if let Some(bad) = req.cidrs.iter().find(|c| !valid_cidr(c)) {
                return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("CIDR block {bad} is malformed")));
            }
            let Some(group) = w.regions[r].groups.get_mut(&req.group_id) else {
                return Err(err(
                    op,
                    codes::GROUP_NOT_FOUND,
                    format!("The security group '{}' does not exist", req.group_id),
                ));
            };
            if let Some(dup) = req.cidrs.iter().find(|c| group.rules.contains(&(req.port, (*c).clone()))) {
                return Err(err(
                    op,
                    codes::PERMISSION_DUPLICATE,
                    format!(
                        "the specified rule \"peer: {dup}, TCP, from port: {0}, to port: {0}, ALLOW\" already exists",
                        req.port
                    ),
                ));
            }
            group.rules.extend(req.cidrs.iter().map(|c| (req.port, c.clone())));
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    pub(crate) fn describe_security_groups(
        &mut self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        let op = Operation::DescribeSecurityGroups;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&group_ids);
        audit_filters(&mut self.audit, &filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<SecurityGroupInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = pagination::fingerprint(op, &[&region, &group_ids, &filters]);
            let window = pagination::window(op, &page, !group_ids.is_empty(), fingerprint)?;
            let filters = parse_filters(op, filters, &["group-name", "group-id", "description"])?;
            let mut ids: Vec<&str> = Vec::new();
            let now = w.now_ms;
            if group_ids.is_empty() {
                ids.extend(
                    w.regions[r].groups.iter().filter(|(_, g)| now >= g.visible_at_ms).map(|(id, _)| id.as_str()),
                );
                // Deleted groups linger in listings (not in lookups by id) for a while.
                ids.extend(
                    w.regions[r]
                        .deleted_groups
                        .iter()
                        .filter(|(_, (until, _))| now < *until)
                        .map(|(id, _)| id.as_str()),
                );
                ids.sort_unstable();
            } else {
                for id in &group_ids {
                    w.visible_group(op, r, id)?;
                    ids.push(id);
                }
                ids.sort_unstable();
                ids.dedup();
            }
            let groups = &w.regions[r].groups;
            let deleted = &w.regions[r].deleted_groups;
            let answer: Vec<(String, SecurityGroupInfo)> = ids
                .into_iter()
                .filter_map(|id| {
                    groups.get_key_value(id).or_else(|| deleted.get_key_value(id).map(|(k, (_, g))| (k, g)))
                })
                .filter(|(id, g)| {
                    matches(&filters, consistency::filter_tags(&g.tags, &g.tag_view, now), |f| match f {
                        "group-name" => Some(g.name.as_str()),
                        "group-id" => Some(id.as_str()),
                        "description" => Some(g.description.as_str()),
                        _ => None,
                    })
                })
                .map(|(id, g)| {
                    (
                        id.clone(),
                        SecurityGroupInfo { group_id: id.clone(), group_name: g.name.clone(), tags: g.tags.clone() },
                    )
                })
                .collect();
            Ok(w.page_of(window, answer))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for g in &page.items {
                a.str(&g.group_id);
                a.str(&g.group_name);
                a.tags(&g.tags);
            }
        });
        result
    }

    pub(crate) fn delete_security_group(&mut self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteSecurityGroup;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(group_id);
        let result = self.serve(op, region, About::Group(group_id), |w, r| {
            let group = w.visible_group(op, r, group_id)?;
            if group.is_default {
                return Err(err(
                    op,
                    extra_codes::CANNOT_DELETE,
                    format!("the specified group: \"{group_id}\" name: \"default\" cannot be deleted by a user"),
                ));
            }
            let now = w.now_ms;
            let instances = &w.regions[r].instances;
            if group.users.iter().any(|&i| instances[i].holds_groups(now)) {
                return Err(err(
                    op,
                    codes::DEPENDENCY_VIOLATION,
                    format!("resource {group_id} has a dependent object"),
                ));
            }
            let seq = w.next_seq();
            let region = &mut w.regions[r];
            if let Some(group) = region.groups.remove(group_id) {
                region.group_names.remove(&group.name);
                region.resources_seq = seq;
                w.linger_group(r, group_id, group);
            }
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    // ---------------------------------------------------------------- instances

    pub(crate) fn run_instance(
        &mut self,
        region: &RegionLabel,
        req: RunInstancesRequest,
    ) -> Result<InstanceInfo, Ec2Error> {
        let op = Operation::RunInstances;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.client_token);
        self.audit.str(&req.instance_type);
        self.audit.str(&req.key_name);
        self.audit.strs(&req.security_group_ids);
        self.audit.tags(&req.instance_tags);
        // Decoded once: what a reader can see again, and what the launch checks.
        let user_data = base64::engine::general_purpose::STANDARD.decode(&req.user_data_base64);
        let user_data_text = user_data.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        self.expose(
            req.instance_tags
                .values()
                .chain(req.volume_tags.values())
                .map(String::as_str)
                .chain([user_data_text.as_ref()]),
        );
        // cloud-init installs a shipped host key instead of generating one.
        let shipped = if user_data_text.contains("\"ssh_keys\"") {
            crate::console::shipped_host_key(&req.user_data_base64)
        } else {
            None
        };
        // The backend's boot script reads its vars file; other user data gets no guest model.
        let guest_vars = if user_data_text.contains(aws_backend::guest::VARS_PATH) {
            crate::guest::guest_vars(&user_data_text)
        } else {
            None
        };
        let user_data_len = user_data.map(|bytes| bytes.len());
        let result = self.serve(op, region, About::Tags(&req.instance_tags), |w, r| {
            w.run_instance_in(r, &req, user_data_len, shipped, guest_vars)
        });
        self.audit.outcome(&result, |a, info| a.instance(info));
        result
    }

    /// RunInstances in region `r`; `user_data_len` is the length of the decoded user data, or
    /// the error decoding it gave.
    fn run_instance_in(
        &mut self,
        r: usize,
        req: &RunInstancesRequest,
        user_data_len: Result<usize, base64::DecodeError>,
        shipped_host_key: Option<String>,
        guest_vars: Option<crate::guest::GuestVars>,
    ) -> Result<InstanceInfo, Ec2Error> {
        let op = Operation::RunInstances;
        let now = self.now_ms;
        let invalid = |message: String| err(op, codes::INVALID_PARAMETER_VALUE, message);
        let token = &req.client_token;
        if token.len() > 64 || !token.is_ascii() {
            return Err(invalid(format!(
                "Value ({token}) for parameter clientToken is invalid: use at most 64 ASCII characters"
            )));
        }
        let fingerprint = run_fingerprint(req);
        if !token.is_empty()
            && let Some((previous, idx)) = self.regions[r].client_tokens.get(token)
        {
            if *previous != fingerprint {
                return Err(err(
                    op,
                    codes::IDEMPOTENT_PARAMETER_MISMATCH,
                    format!("The client token {token} was used before with different parameters"),
                ));
            }
            // Same token, same parameters: the same instance, as it is now; once it has
            // terminated, EC2 answers IdempotentInstanceTerminated instead (since January 2025;
            // shared/EC2-FACTS.md, Idempotency).
            let instance = &self.regions[r].instances[*idx];
            if instance.state_at(now) == InstanceState::Terminated {
                return Err(err(
                    op,
                    extra_codes::IDEMPOTENT_INSTANCE_TERMINATED,
                    format!("The instance {} launched with client token {token} has terminated", instance.id),
                ));
            }
            return Ok(instance.info(now));
        }
        let Some(spec) = catalogue::lookup(&req.instance_type) else {
            return Err(invalid(format!("Invalid value '{}' for InstanceType.", req.instance_type)));
        };
        let (snapshot_gib, image_arch) = self.account.image(op, &self.regions[r].label, &req.image_id)?;
        if let Some(image_arch) = image_arch
            && image_arch != spec.architecture
        {
            return Err(crate::placement::architecture_mismatch(op, spec.architecture, image_arch));
        }
        // The network: the subnet's VPC and zone, or the default VPC and the zone Placement
        // names (or one EC2 picks below). See `network`.
        let (vpc_id, placed_az) = match &req.subnet_id {
            Some(id) => {
                let Some(subnet) = self.regions[r].networks.subnet(id) else {
                    return Err(err(op, codes::SUBNET_NOT_FOUND, format!("The subnet ID '{id}' does not exist")));
                };
                let az = self.regions[r].azs.iter().position(|z| *z == subnet.availability_zone).unwrap_or(0);
                (subnet.vpc_id.clone(), Some(az as u8))
            }
            None => {
                self.account.default_vpc(op, &self.regions[r].label)?;
                let az = match &req.availability_zone {
                    Some(zone) => match self.regions[r].azs.iter().position(|z| z == zone) {
                        Some(az) => Some(az as u8),
                        None => return Err(invalid(format!("Invalid availability zone: [{zone}]"))),
                    },
                    None => None,
                };
                (self.regions[r].networks.default_vpc_id.clone().unwrap_or_default(), az)
            }
        };
        let key_visible = self.regions[r].key_pairs.get(&req.key_name).is_some_and(|kp| now >= kp.visible_at_ms);
        if !key_visible {
            return Err(err(op, codes::KEY_PAIR_NOT_FOUND, format!("The key pair '{}' does not exist", req.key_name)));
        }
        let mut group_ids = req.security_group_ids.clone();
        if group_ids.is_empty() {
            group_ids.push(self.regions[r].default_group_id.clone());
        }
        for id in &group_ids {
            let group = self.visible_group(op, r, id)?;
            if group.vpc_id != vpc_id {
                let subnet = req.subnet_id.as_deref().unwrap_or("the default subnet");
                return Err(err(
                    op,
                    codes::INVALID_PARAMETER,
                    format!("Security group {id} and subnet {subnet} belong to different networks."),
                ));
            }
        }
        let user_data_len = user_data_len.map_err(|_| invalid("Invalid BASE64 encoding of user data.".into()))?;
        if user_data_len > 16_384 {
            return Err(invalid(format!("User data is limited to 16384 bytes; got {user_data_len} bytes")));
        }
        // RunInstances' InstanceMetadataOptionsRequest: HttpPutResponseHopLimit is 1 to 64.
        if !(1..=64).contains(&req.imds_hop_limit) {
            return Err(invalid(format!(
                "The HttpPutResponseHopLimit '{}' is not valid: use 1 to 64",
                req.imds_hop_limit
            )));
        }
        if req.root_volume_gib == 0 || req.root_volume_gib > 16_384 {
            return Err(invalid(format!("Volume of {} GiB is outside gp3's 1 to 16384 GiB", req.root_volume_gib)));
        }
        if req.root_volume_gib < snapshot_gib {
            return Err(crate::placement::root_volume_too_small(op, &req.image_id, req.root_volume_gib, snapshot_gib));
        }
        validate_tags(op, &req.instance_tags)?;
        validate_tags(op, &req.volume_tags)?;

        self.within_vcpu_quota(r, spec, &req.instance_tags)?;

        // Capacity: EC2 places the instance in one of the region's zones; that zone's pool for
        // the type may be short, for a while.
        let az = match placed_az {
            Some(az) => az,
            None => self.rng.gen_range(0..self.regions[r].azs.len()) as u8,
        };
        self.offered_in(r, spec, az, &req.instance_tags)?;
        let pool = (spec.name, az);
        let short = self.regions[r].capacity_short_until_ms.get(&pool).is_some_and(|until| *until > now);
        let starts_shortage = !short && self.chance(self.faults.insufficient_capacity_probability);
        if short || starts_shortage {
            if starts_shortage {
                let length =
                    draw(&mut self.rng, self.faults.capacity_shortage_ms_min, self.faults.capacity_shortage_ms_max);
                self.start_shortage(r, spec, az, now + length);
            }
            self.fault(codes::INSUFFICIENT_INSTANCE_CAPACITY, vec![req.instance_tags.clone()]);
            let zone = &self.regions[r].azs[usize::from(az)];
            return Err(err(
                op,
                codes::INSUFFICIENT_INSTANCE_CAPACITY,
                format!(
                    "We currently do not have sufficient {} capacity in the Availability Zone you requested ({zone}).",
                    spec.name
                ),
            ));
        }

        self.regions[r].run_instances_resource.take_token();
        let instance = self.launch(r, now, spec, az, req, group_ids, shipped_host_key, guest_vars);
        let info = instance.0;
        let idx = instance.1;
        if !token.is_empty() {
            self.regions[r].client_tokens.insert(token.clone(), (fingerprint, idx));
        }
        Ok(info)
    }

    #[allow(clippy::too_many_arguments, reason = "one launch's inputs, each already checked by the caller")]
    fn launch(
        &mut self,
        r: usize,
        now: u64,
        spec: &'static InstanceTypeSpec,
        az: u8,
        req: &RunInstancesRequest,
        group_ids: Vec<String>,
        shipped_host_key: Option<String>,
        guest_vars: Option<crate::guest::GuestVars>,
    ) -> (InstanceInfo, usize) {
        let f = &self.faults;
        let rng = &mut self.rng;
        let mut id = new_id(rng, "i");
        while self.regions[r].instance_ids.contains_key(&id) {
            id = new_id(rng, "i");
        }
        let volume_id = new_id(rng, "vol");
        let ip: [u8; 4] = [rng.gen_range(3..=54), rng.r#gen(), rng.r#gen(), rng.gen_range(1..=254)];
        let bytes_in_per_s = draw(rng, self.network_bytes_per_s_min, self.network_bytes_per_s_max);
        let bytes_out_per_s = draw(rng, self.network_bytes_per_s_min, self.network_bytes_per_s_max);
        let visible_at_ms = now + draw(rng, f.visibility_delay_ms_min, f.visibility_delay_ms_max);
        let running_at = now + draw(rng, f.launch_delay_ms_min, f.launch_delay_ms_max);
        let dependency_lag_ms = draw(rng, f.dependency_violation_lag_ms_min, f.dependency_violation_lag_ms_max);
        let mut instance = Instance {
            id: id.clone(),
            volume_id: volume_id.clone(),
            spec,
            az,
            zone: self.regions[r].azs[usize::from(az)].clone(),
            client_token: req.client_token.clone(),
            key_name: req.key_name.clone(),
            group_ids,
            shutdown_behavior: req.shutdown_behavior,
            tags: TagList::from_tags(&req.instance_tags),
            volume_tags: TagList::from_tags(&req.volume_tags),
            launched_ms: now,
            visible_at_ms,
            dependency_lag_ms,
            public_dns: public_dns(&self.regions[r].label, ip),
            bytes_in_per_s,
            bytes_out_per_s,
            timeline: vec![
                Segment { state: InstanceState::Pending, from_ms: now, reason: Some(reasons::PENDING) },
                Segment { state: InstanceState::Running, from_ms: running_at, reason: None },
            ],
            shown: Vec::new(),
            root_volume_gib: req.root_volume_gib,
            hidden_from_tag_filters_until_ms: 0,
            changed_seq: 0,
            shipped_host_key,
            imds: (req.imdsv2_required, req.imds_hop_limit),
            tag_view: None,
            stale: None,
            guest: None,
        };
        instance.tag_view = self.new_tag_view(&instance.id, &TagList::default());
        let mut exit_kind = None;
        let mut terminated_at = None;
        if self.chance(self.faults.spontaneous_exit_probability) {
            let f = &self.faults;
            let rng = &mut self.rng;
            let delay = draw(rng, f.termination_delay_ms_min, f.termination_delay_ms_max);
            let roll = rng.gen_range(0..10u8);
            let (at, reason, stop) = if roll < 2 {
                // A failed launch: the instance never reaches running.
                (rng.gen_range(now..=running_at), reasons::INTERNAL_ERROR, false)
            } else {
                let at = running_at + 1 + draw(rng, 0, f.spontaneous_exit_after_ms_max);
                if roll < 6 {
                    // A retirement: EC2 stops an EBS-backed On-Demand instance whose host is
                    // degraded, whatever its shutdown behaviour ("Instance retirement", Amazon
                    // EC2 User Guide). Spot reclaims are for Spot instances, which the port
                    // does not launch.
                    (at, reasons::SCHEDULED_STOP, true)
                } else {
                    let stop = instance.shutdown_behavior == ShutdownBehavior::Stop;
                    (at, reasons::INSTANCE_INITIATED_SHUTDOWN, stop)
                }
            };
            terminated_at = instance.plan_exit(at, reason, stop, delay);
            exit_kind = Some(reason);
        }
        if let Some(reason) = exit_kind {
            self.fault(&format!("exit:{reason}"), vec![req.instance_tags.clone()]);
        }
        if let Some(vars) = guest_vars
            && let Some(t) = self.plan_guest(&mut instance, vars, running_at, &req.instance_tags)
        {
            terminated_at = t;
        }
        let info = instance.info(now);
        let region = &mut self.regions[r];
        let idx = region.instances.len();
        for g in &instance.group_ids {
            if let Some(group) = region.groups.get_mut(g) {
                group.users.push(idx);
            }
        }
        if let Some(t) = terminated_at {
            region.expiry.push(Reverse((t.saturating_add(self.faults.terminated_visible_ms), idx)));
        }
        region.instance_ids.insert(id, idx);
        region.volume_ids.insert(volume_id, idx);
        region.listed.insert(idx);
        region.instances.push(instance);
        self.stats.instances_launched += 1;
        (info, idx)
    }

    // ---------------------------------------------------------------- eventual consistency (issue 14)

    /// The tag view of a resource `id` created now with `tags`: tag filters see `nothing`
    /// until its tags propagate (see `consistency`).
    fn new_tag_view<T: Clone>(&self, id: &str, nothing: &T) -> TagView<T> {
        let now = self.now_ms;
        let lag = consistency::lag_ms(self.seed, LagKind::Tags, id, now, self.faults.tag_propagation_ms_max);
        let mut view = None;
        consistency::tags_changing(&mut view, nothing, now, now + lag);
        view
    }

    /// Keeps a group deleted now listed for its lingering lag.
    fn linger_group(&mut self, r: usize, id: &str, group: Group) {
        let now = self.now_ms;
        let lag = consistency::lag_ms(self.seed, LagKind::Deleted, id, now, self.faults.deleted_visible_ms_max);
        let deleted = &mut self.regions[r].deleted_groups;
        deleted.retain(|_, (until, _)| now < *until);
        if lag > 0 {
            deleted.insert(id.to_string(), (now + lag, group));
        }
    }

    /// Keeps a key pair deleted now listed for its lingering lag.
    fn linger_key_pair(&mut self, r: usize, name: &str, key_pair: KeyPair) {
        let now = self.now_ms;
        let lag =
            consistency::lag_ms(self.seed, LagKind::Deleted, &key_pair.id, now, self.faults.deleted_visible_ms_max);
        let deleted = &mut self.regions[r].deleted_key_pairs;
        deleted.retain(|_, (until, _)| now < *until);
        if lag > 0 {
            deleted.insert(name.to_string(), (now + lag, key_pair));
        }
    }

    /// True while a deleted group named `name` still lingers (its name is taken).
    fn deleted_group_lingers(&self, r: usize, name: &str) -> bool {
        self.regions[r].deleted_groups.values().any(|(until, g)| g.name == name && self.now_ms < *until)
    }

    /// True while a deleted key pair named `name` still lingers (its name is taken).
    fn deleted_key_pair_lingers(&self, r: usize, name: &str) -> bool {
        self.regions[r].deleted_key_pairs.get(name).is_some_and(|(until, _)| self.now_ms < *until)
    }

    /// Gives `instance`, about to be launched with the backend's user data and running from
    /// `running_at`, its guest (see `guest`): the guest powers off at its power-off time, or
    /// earlier when it refuses the image, unless something ends the instance first. Returns when
    /// the instance will be terminated, when the guest's power-off is what ends it.
    fn plan_guest(
        &mut self,
        instance: &mut Instance,
        vars: crate::guest::GuestVars,
        running_at: u64,
        tags: &Tags,
    ) -> Option<Option<u64>> {
        let f = &self.faults;
        let plan = crate::guest::plan(vars, running_at, self.seed, &instance.id, f.image_fetch_failure_probability);
        let at = plan.powers_off_at_ms;
        let ended_before = instance.exit_from().is_some_and(|t| t <= at);
        let mut terminated_at = None;
        if !ended_before {
            let delay = crate::guest::draw_ms(
                self.seed,
                &instance.id,
                "termination",
                f.termination_delay_ms_min,
                f.termination_delay_ms_max,
            );
            let stop = instance.shutdown_behavior == ShutdownBehavior::Stop;
            terminated_at = Some(instance.plan_exit(at, reasons::INSTANCE_INITIATED_SHUTDOWN, stop, delay));
            if let Some(kind) = plan.fault_kind() {
                self.fault(kind, vec![tags.clone()]);
            }
        }
        instance.guest = Some(plan);
        terminated_at
    }

    /// GetConsoleOutput: what the guest printed, once EC2 publishes it (a while after the guest
    /// first ran; see `console`). Terminated instances keep theirs while they are listed.
    pub(crate) fn get_console_output(
        &mut self,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<Option<String>, Ec2Error> {
        let op = Operation::GetConsoleOutput;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(instance_id);
        let ids = [instance_id.to_owned()];
        let result = self.serve(op, region, About::Instances(&ids), |w, r| {
            let i = w.visible_instance(op, r, instance_id)?;
            let inst = &w.regions[r].instances[i];
            let Some(ran) = inst.running_since().filter(|t| *t <= w.now_ms) else { return Ok(None) };
            if w.now_ms < ran.saturating_add(w.console_delay_ms(instance_id)) {
                return Ok(None);
            }
            let key = match &inst.shipped_host_key {
                Some(key) => key.clone(),
                None => crate::console::guest_host_key(w.seed, instance_id),
            };
            let mut text = crate::console::console_text(&inst.id, &key);
            if let Some(plan) = inst.guest.as_ref().filter(|_| inst.guest_powered_off_by(w.now_ms)) {
                text.push_str(&plan.console_tail());
            }
            Ok(Some(text))
        });
        self.audit.outcome(&result, |a, text| a.str(text.as_deref().unwrap_or_default()));
        result
    }

    /// How long after its guest first ran EC2 publishes an instance's console output: drawn
    /// from the instance's id and the seed rather than the PRNG, so that adding this did not
    /// change any other draw of a run.
    fn console_delay_ms(&self, instance_id: &str) -> u64 {
        let (min, max) = (self.faults.console_delay_ms_min, self.faults.console_delay_ms_max);
        if max <= min {
            return min;
        }
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(instance_id.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let draw = u64::from_le_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        min + draw % (max - min + 1)
    }

    /// What checkers may know of the guest of `instance_id`, when the instance exists.
    pub(crate) fn ingress_of(&self, group_id: &str) -> Option<Vec<(u16, String)>> {
        self.regions.iter().find_map(|region| region.groups.get(group_id)).map(|g| g.rules.iter().cloned().collect())
    }

    pub(crate) fn guest_of(&self, instance_id: &str) -> Option<crate::console::GuestTruth> {
        let (r, i) = self.find_instance(instance_id)?;
        let inst = &self.regions[r].instances[i];
        let host_key =
            inst.shipped_host_key.clone().unwrap_or_else(|| crate::console::guest_host_key(self.seed, instance_id));
        let console_at_ms = inst.running_since().map(|t| t.saturating_add(self.console_delay_ms(instance_id)));
        Some(crate::console::GuestTruth {
            host_key,
            imds: inst.imds,
            console_at_ms,
            poweroff_at_ms: inst.guest.as_ref().map(|g| g.vars.poweroff_at_unix_s.saturating_mul(1_000)),
            powers_off_at_ms: inst.guest.as_ref().map(|g| g.powers_off_at_ms),
            refusal: inst.guest.as_ref().and_then(|g| g.refusal.clone()),
        })
    }

    /// What the guest of `instance_id` does (see `guest`), when the instance exists and its
    /// user data was the backend's: cheaper than `guest_of`, which derives the host key.
    pub(crate) fn guest_plan_of(&self, instance_id: &str) -> Option<crate::guest::GuestPlan> {
        let (r, i) = self.find_instance(instance_id)?;
        self.regions[r].instances[i].guest.clone()
    }

    /// The instance `id` if DescribeInstances can see it now, else EC2's error for it.
    fn visible_instance(&self, op: Operation, r: usize, id: &str) -> Result<usize, Ec2Error> {
        if !id.starts_with("i-") {
            return Err(err(op, extra_codes::INSTANCE_ID_MALFORMED, format!("Invalid id: \"{id}\"")));
        }
        let region = &self.regions[r];
        region
            .instance_ids
            .get(id)
            .copied()
            .filter(|&i| region.instances[i].describable(self.now_ms, self.faults.terminated_visible_ms))
            .ok_or_else(|| err(op, codes::INSTANCE_NOT_FOUND, format!("The instance ID '{id}' does not exist")))
    }

    pub(crate) fn describe_instances(
        &mut self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        let op = Operation::DescribeInstances;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&instance_ids);
        audit_filters(&mut self.audit, &filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = pagination::fingerprint(op, &[&region, &instance_ids, &filters]);
            let window = pagination::window(op, &page, !instance_ids.is_empty(), fingerprint)?;
            let fields = [
                "instance-state-name",
                "key-name",
                "instance-id",
                "instance-type",
                "client-token",
                "availability-zone",
            ];
            let filters = parse_filters(op, filters, &fields)?;
            let by_tag = filters.iter().any(|f| matches!(f.name, FilterName::Tag(_) | FilterName::TagKey));
            let (now, visible_ms) = (w.now_ms, w.faults.terminated_visible_ms);
            let mut handles: Vec<usize> = Vec::new();
            if instance_ids.is_empty() {
                let region = &w.regions[r];
                // Sized once: the list is rebuilt on every poll and grows to hundreds.
                handles.reserve(region.listed.len());
                handles.extend(
                    region.listed.iter().copied().filter(|&i| region.instances[i].describable(now, visible_ms)),
                );
            } else {
                for id in &instance_ids {
                    handles.push(w.visible_instance(op, r, id)?);
                }
                handles.sort_unstable();
                handles.dedup();
            }
            let region = &w.regions[r];
            let azs = &region.azs;
            // Keyed by handle, which is creation order: a page resumes after the last
            // instance it held, and instances launched meanwhile come later.
            let mut answer: Vec<(String, (usize, InstanceInfo))> = Vec::new();
            for i in handles {
                let inst = &region.instances[i];
                let hidden = by_tag && now < inst.hidden_from_tag_filters_until_ms;
                let described = inst.described_segment(now);
                let shown = !hidden
                    && matches(&filters, consistency::filter_tags(&inst.tags, &inst.tag_view, now), |f| match f {
                        "instance-state-name" => Some(described.state.name()),
                        "key-name" => Some(inst.key_name.as_str()),
                        "instance-id" => Some(inst.id.as_str()),
                        "instance-type" => Some(inst.spec.name),
                        "client-token" => Some(inst.client_token.as_str()),
                        "availability-zone" => Some(azs[usize::from(inst.az)].as_str()),
                        _ => None,
                    });
                if shown {
                    answer.push((format!("{i:010}"), (i, inst.info_of(described))));
                }
            }
            let page = w.page_of(window, answer);
            // Only what the page holds counts as shown.
            let mut items = Vec::with_capacity(page.items.len());
            for (i, info) in page.items {
                let inst = &mut w.regions[r].instances[i];
                if inst.shown.last().is_none_or(|&(_, s)| s != info.state) {
                    inst.shown.push((now, info.state));
                    w.truth_seq += 1;
                    inst.changed_seq = w.truth_seq;
                }
                items.push(info);
            }
            Ok(Page { items, next_token: page.next_token })
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for info in &page.items {
                a.instance(info);
            }
        });
        result
    }

    pub(crate) fn terminate_instances(
        &mut self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        let op = Operation::TerminateInstances;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&instance_ids);
        let about = About::Instances(&instance_ids);
        let result: Result<Vec<InstanceStateChange>, Ec2Error> = self.serve(op, region, about, |w, r| {
            if instance_ids.is_empty() {
                return Err(err(
                    op,
                    extra_codes::MISSING_PARAMETER,
                    "The request must contain the parameter InstanceId",
                ));
            }
            // Every id must be visible before anything changes: EC2 fails the whole call.
            let mut handles = Vec::with_capacity(instance_ids.len());
            for id in &instance_ids {
                let i = w.visible_instance(op, r, id)?;
                if !handles.contains(&i) {
                    handles.push(i);
                }
            }
            let now = w.now_ms;
            w.regions[r].terminate_instances_resource.take_tokens(handles.len() as u64);
            let mut changes = Vec::with_capacity(handles.len());
            for i in handles {
                let previous_state = w.regions[r].instances[i].state_at(now);
                let current_state = match previous_state {
                    InstanceState::ShuttingDown | InstanceState::Terminated => previous_state,
                    _ => {
                        let delay =
                            draw(&mut w.rng, w.faults.termination_delay_ms_min, w.faults.termination_delay_ms_max);
                        let stale_ms = consistency::lag_ms(
                            w.seed,
                            LagKind::StaleState,
                            &w.regions[r].instances[i].id,
                            now,
                            w.faults.stale_state_ms_max,
                        );
                        let region = &mut w.regions[r];
                        let before = region.instances[i].segment_at(now);
                        if stale_ms > 0 {
                            region.instances[i].stale = Some((now + stale_ms, before));
                        }
                        let planned =
                            region.instances[i].plan_exit(now, reasons::USER_INITIATED_SHUTDOWN, false, delay);
                        w.truth_seq += 1;
                        region.instances[i].changed_seq = w.truth_seq;
                        if let Some(t) = planned {
                            region.expiry.push(Reverse((t.saturating_add(w.faults.terminated_visible_ms), i)));
                        }
                        region.instances[i].state_at(now)
                    }
                };
                changes.push(InstanceStateChange {
                    instance_id: w.regions[r].instances[i].id.clone(),
                    previous_state,
                    current_state,
                });
            }
            Ok(changes)
        });
        self.audit.outcome(&result, |a, list| {
            a.u64(list.len() as u64);
            for c in list {
                a.str(&c.instance_id);
                a.str(c.previous_state.name());
                a.str(c.current_state.name());
            }
        });
        result
    }

    pub(crate) fn describe_instance_types(
        &mut self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        let op = Operation::DescribeInstanceTypes;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&families);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceTypeInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, _| {
            let window = pagination::window(op, &page, false, pagination::fingerprint(op, &[&region, &families]))?;
            let answer = catalogue::CATALOGUE
                .iter()
                .filter(|spec| families.is_empty() || families.iter().any(|f| f == spec.family()))
                .map(|spec| {
                    let info = InstanceTypeInfo {
                        instance_type: spec.name.to_string(),
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        architecture: spec.architecture,
                    };
                    (spec.name.to_string(), info)
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            Ok(w.page_of(window, answer))
        });
        self.audit.outcome(&result, audit_next_token);
        result
    }

    pub(crate) fn create_tags(
        &mut self,
        region: &RegionLabel,
        resource_ids: Vec<String>,
        tags: Tags,
    ) -> Result<(), Ec2Error> {
        let op = Operation::CreateTags;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&resource_ids);
        self.audit.tags(&tags);
        let result = self.serve(op, region, About::Nothing, |w, r| w.create_tags_in(r, &resource_ids, tags));
        self.audit.outcome(&result, |_, _| {});
        result
    }

    fn create_tags_in(&mut self, r: usize, resource_ids: &[String], tags: Tags) -> Result<(), Ec2Error> {
        let op = Operation::CreateTags;
        enum Target {
            Instance(usize),
            Volume(usize),
            Group(String),
            KeyPair(String),
        }
        validate_tags(op, &tags)?;
        let now = self.now_ms;
        let mut targets = Vec::with_capacity(resource_ids.len());
        for id in resource_ids {
            let region = &self.regions[r];
            let target = if id.starts_with("i-") {
                Target::Instance(self.visible_instance(op, r, id)?)
            } else if id.starts_with("sg-") {
                self.visible_group(op, r, id)?;
                Target::Group(id.clone())
            } else if id.starts_with("vol-") {
                let i = region
                    .volume_ids
                    .get(id.as_str())
                    .copied()
                    .filter(|&i| {
                        now >= region.instances[i].visible_at_ms
                            && region.instances[i].state_at(now) != InstanceState::Terminated
                    })
                    .ok_or_else(|| {
                        err(op, extra_codes::VOLUME_NOT_FOUND, format!("The volume '{id}' does not exist."))
                    })?;
                Target::Volume(i)
            } else if id.starts_with("key-") {
                let name = region
                    .key_pairs
                    .iter()
                    .find(|(_, kp)| kp.id == *id && now >= kp.visible_at_ms)
                    .map(|(name, _)| name.clone())
                    .ok_or_else(|| err(op, codes::KEY_PAIR_NOT_FOUND, format!("The key pair '{id}' does not exist")))?;
                Target::KeyPair(name)
            } else {
                return Err(err(op, extra_codes::INVALID_ID, format!("The ID '{id}' is not valid")));
            };
            targets.push(target);
        }
        let region = &mut self.regions[r];
        let merged_too_big =
            |len: usize, has: &dyn Fn(&str) -> bool| len + tags.keys().filter(|k| !has(k)).count() > 50;
        for target in &targets {
            let too_big = match target {
                Target::Instance(i) => {
                    let existing = &region.instances[*i].tags;
                    merged_too_big(existing.len(), &|k| existing.contains_key(k))
                }
                Target::Volume(i) => {
                    let existing = &region.instances[*i].volume_tags;
                    merged_too_big(existing.len(), &|k| existing.contains_key(k))
                }
                Target::Group(id) => match region.groups.get(id) {
                    Some(g) => merged_too_big(g.tags.len(), &|k| g.tags.contains_key(k)),
                    None => continue,
                },
                Target::KeyPair(name) => match region.key_pairs.get(name) {
                    Some(kp) => merged_too_big(kp.tags.len(), &|k| kp.tags.contains_key(k)),
                    None => continue,
                },
            };
            if too_big {
                return Err(err(
                    op,
                    extra_codes::TAG_LIMIT_EXCEEDED,
                    "The maximum number of tags for a resource is 50",
                ));
            }
        }
        let (seed, tag_lag_max) = (self.seed, self.faults.tag_propagation_ms_max);
        let until = |id: &str| now + consistency::lag_ms(seed, LagKind::Tags, id, now, tag_lag_max);
        for target in targets {
            let existing = match target {
                Target::Instance(i) => {
                    let inst = &mut region.instances[i];
                    let before = inst.tags.clone();
                    consistency::tags_changing(&mut inst.tag_view, &before, now, until(&inst.id));
                    region.instances[i].tags.merge(&tags);
                    self.truth_seq += 1;
                    region.instances[i].changed_seq = self.truth_seq;
                    continue;
                }
                Target::Volume(i) => {
                    region.instances[i].volume_tags.merge(&tags);
                    self.truth_seq += 1;
                    region.instances[i].changed_seq = self.truth_seq;
                    continue;
                }
                Target::Group(id) => region.groups.get_mut(&id).map(|g| {
                    consistency::tags_changing(&mut g.tag_view, &g.tags, now, until(&id));
                    (&mut g.tags, &mut g.changed_seq)
                }),
                Target::KeyPair(name) => region.key_pairs.get_mut(&name).map(|kp| {
                    consistency::tags_changing(&mut kp.tag_view, &kp.tags, now, until(&kp.id));
                    (&mut kp.tags, &mut kp.changed_seq)
                }),
            };
            if let Some((existing, changed_seq)) = existing {
                existing.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.truth_seq += 1;
                *changed_seq = self.truth_seq;
                region.resources_seq = self.truth_seq;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- targeted faults

    /// Publishes `image` in its region and points the parameter `alias` there at it.
    pub(crate) fn publish_image(&mut self, alias: &str, image: crate::placement::SimImage) -> Result<(), SimError> {
        crate::placement::validate_images(std::slice::from_ref(&image))?;
        let r = self.region_index(&image.region).ok_or_else(|| SimError::UnknownRegion(image.region.to_string()))?;
        self.account.published.retain(|i| !(i.region == image.region && i.image_id == image.image_id));
        let id = image.image_id.clone();
        self.account.published.push(image);
        self.set_parameter(r, alias, &id);
        Ok(())
    }

    pub(crate) fn fail_next(&mut self, op: Operation, code: &str) {
        self.audit.begin(0xF0, "", self.now_ms);
        self.audit.u8(op_tag(op));
        self.audit.str(code);
        self.fail_next.entry(op).or_default().push_back(code.to_string());
    }

    fn find_instance(&self, instance_id: &str) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(r, region)| region.instance_ids.get(instance_id).map(|&i| (r, i)))
    }

    pub(crate) fn interrupt(&mut self, instance_id: &str, reason: InterruptReason) -> Result<bool, SimError> {
        let (r, i) =
            self.find_instance(instance_id).ok_or_else(|| SimError::UnknownInstance(instance_id.to_string()))?;
        let now = self.now_ms;
        self.audit.begin(0xF1, self.regions[r].label.as_str(), now);
        self.audit.str(instance_id);
        let code = reason.state_reason_code();
        self.audit.str(code);
        let instance = &self.regions[r].instances[i];
        if !matches!(instance.state_at(now), InstanceState::Pending | InstanceState::Running) {
            self.audit.u8(0);
            return Ok(false);
        }
        let stop = reason == InterruptReason::ScheduledRetirement
            || reason == InterruptReason::GuestShutdown && instance.shutdown_behavior == ShutdownBehavior::Stop;
        let delay = draw(&mut self.rng, self.faults.termination_delay_ms_min, self.faults.termination_delay_ms_max);
        let region = &mut self.regions[r];
        if let Some(t) = region.instances[i].plan_exit(now, code, stop, delay) {
            region.expiry.push(Reverse((t.saturating_add(self.faults.terminated_visible_ms), i)));
        }
        self.truth_seq += 1;
        region.instances[i].changed_seq = self.truth_seq;
        self.audit.u8(1);
        let tags = region.instances[i].tags.to_tags();
        self.current = Some((Operation::TerminateInstances, r));
        self.fault(&format!("interrupt:{code}"), vec![tags]);
        self.current = None;
        Ok(true)
    }

    pub(crate) fn hide_from_tag_filters(&mut self, instance_id: &str, duration_ms: u64) -> Result<(), SimError> {
        let (r, i) =
            self.find_instance(instance_id).ok_or_else(|| SimError::UnknownInstance(instance_id.to_string()))?;
        let now = self.now_ms;
        self.audit.begin(0xF3, self.regions[r].label.as_str(), now);
        self.audit.str(instance_id);
        self.audit.u64(duration_ms);
        let until = now.saturating_add(duration_ms);
        let inst = &mut self.regions[r].instances[i];
        inst.hidden_from_tag_filters_until_ms = inst.hidden_from_tag_filters_until_ms.max(until);
        let tags = inst.tags.to_tags();
        self.current = Some((Operation::DescribeInstances, r));
        self.fault("hide_from_tag_filters", vec![tags]);
        self.current = None;
        Ok(())
    }

    pub(crate) fn region_outage(&mut self, region: &RegionLabel, duration_ms: u64) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        self.audit.begin(0xF2, region.as_str(), self.now_ms);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        let reg = &mut self.regions[r];
        reg.outage_until_ms = reg.outage_until_ms.max(until);
        Ok(())
    }

    pub(crate) fn exhaust_capacity(
        &mut self,
        region: &RegionLabel,
        instance_type: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        let spec =
            catalogue::lookup(instance_type).ok_or_else(|| SimError::UnknownInstanceType(instance_type.to_string()))?;
        self.audit.begin(0xF3, region.as_str(), self.now_ms);
        self.audit.str(instance_type);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        let reg = &mut self.regions[r];
        for az in 0..reg.azs.len() as u8 {
            let slot = reg.capacity_short_until_ms.entry((spec.name, az)).or_default();
            *slot = (*slot).max(until);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- ground truth

    fn truth(&self, r: usize, i: usize) -> InstanceTruth {
        let region = &self.regions[r];
        let inst = &region.instances[i];
        let now = self.now_ms;
        let past: Vec<&Segment> = inst.timeline.iter().filter(|s| s.from_ms <= now).collect();
        let intervals = past
            .iter()
            .enumerate()
            .map(|(k, seg)| StateInterval {
                state: seg.state,
                from_ms: seg.from_ms,
                to_ms: past.get(k + 1).map(|next| next.from_ms),
                reason_code: seg.reason.map(str::to_string),
            })
            .collect();
        let (network_bytes_in, network_bytes_out) = inst.bytes_until(now);
        let (cloudwatch_bytes_in, cloudwatch_bytes_out) = self.cloudwatch_bytes(inst);
        InstanceTruth {
            region: region.label.clone(),
            availability_zone: region.azs[usize::from(inst.az)].clone(),
            instance_id: inst.id.clone(),
            volume_id: inst.volume_id.clone(),
            instance_type: inst.spec.name.to_string(),
            vcpus: inst.spec.vcpus,
            memory_mib: inst.spec.memory_mib,
            client_token: inst.client_token.clone(),
            key_name: inst.key_name.clone(),
            security_group_ids: inst.group_ids.clone(),
            tags: inst.tags.to_tags(),
            volume_tags: inst.volume_tags.to_tags(),
            launch_time_unix_ms: inst.launched_ms,
            state: inst.state_at(now),
            intervals,
            running_ms: inst.running_ms_until(now),
            network_bytes_in,
            network_bytes_out,
            cloudwatch_bytes_in,
            cloudwatch_bytes_out,
            shown: inst.shown.clone(),
            root_volume_gib: inst.root_volume_gib,
        }
    }

    pub(crate) fn instance_truth(&self, instance_id: &str) -> Option<InstanceTruth> {
        self.find_instance(instance_id).map(|(r, i)| self.truth(r, i))
    }

    /// Brings `truths` up to the present: rebuilds the instances a call changed since its last
    /// refresh, moves the time-dependent figures of those still changing on by themselves, adds
    /// the instances launched since, and leaves the rest. `note` is taken again of every truth
    /// that changed.
    pub(crate) fn refresh_truths<N>(&self, truths: &mut InstanceTruths<N>, mut note: impl FnMut(&InstanceTruth) -> N) {
        let now = self.now_ms;
        let seen_seq = truths.seen_seq;
        truths.regions.resize_with(self.regions.len(), Vec::new);
        for (r, (region, entries)) in self.regions.iter().zip(&mut truths.regions).enumerate() {
            for (i, inst) in region.instances.iter().enumerate() {
                match entries.get_mut(i) {
                    None => {
                        let truth = self.truth(r, i);
                        let note = note(&truth);
                        entries.push(TruthEntry { truth, note, settled: inst.settled_by(now) });
                    }
                    Some(entry) if inst.changed_seq > seen_seq => {
                        entry.truth = self.truth(r, i);
                        entry.note = note(&entry.truth);
                        entry.settled = inst.settled_by(now);
                    }
                    Some(entry) if !entry.settled => {
                        inst.advance_truth(&mut entry.truth, now);
                        (entry.truth.cloudwatch_bytes_in, entry.truth.cloudwatch_bytes_out) =
                            self.cloudwatch_bytes(inst);
                        entry.note = note(&entry.truth);
                        entry.settled = inst.settled_by(now);
                    }
                    Some(_) => {}
                }
            }
        }
        truths.seen_seq = self.truth_seq;
    }

    /// Brings `live` up to the present: drops what stopped existing, and builds (taking `note`
    /// of) what came or changed since its last refresh; key pairs and groups are looked at only
    /// in regions where one came, went or was tagged.
    pub(crate) fn refresh_live<N>(&self, live: &mut LiveResources<N>, mut note: impl FnMut(&LiveResource) -> N) {
        let now = self.now_ms;
        let seen_seq = live.seen_seq;
        live.regions.resize_with(self.regions.len(), Default::default);
        for (region, cached) in self.regions.iter().zip(&mut live.regions) {
            let mut noted = |kind, id: &str, name: &str, tags: Tags| {
                let resource = LiveResource {
                    region: region.label.clone(),
                    kind,
                    id: id.to_string(),
                    name: name.to_string(),
                    tags,
                };
                let n = note(&resource);
                (resource, n)
            };
            for (i, inst) in region.instances.iter().enumerate() {
                let exists = inst.state_at(now) != InstanceState::Terminated;
                let known = cached.instances.contains_key(&i);
                if exists && (!known || inst.changed_seq > seen_seq) {
                    let pair = [
                        noted(ResourceKind::Instance, &inst.id, "", inst.tags.to_tags()),
                        noted(ResourceKind::Volume, &inst.volume_id, "", inst.volume_tags.to_tags()),
                    ];
                    cached.instances.insert(i, pair);
                } else if !exists && known {
                    cached.instances.remove(&i);
                }
            }
            if region.resources_seq > seen_seq {
                cached.key_pairs.retain(|name, _| region.key_pairs.contains_key(name));
                for (name, kp) in &region.key_pairs {
                    if kp.changed_seq > seen_seq || !cached.key_pairs.contains_key(name) {
                        let entry = noted(ResourceKind::KeyPair, &kp.id, name, kp.tags.clone());
                        cached.key_pairs.insert(name.clone(), entry);
                    }
                }
                cached.groups.retain(|id, _| region.groups.contains_key(id));
                for (id, g) in region.groups.iter().filter(|(_, g)| !g.is_default) {
                    if g.changed_seq > seen_seq || !cached.groups.contains_key(id) {
                        let entry = noted(ResourceKind::SecurityGroup, id, &g.name, g.tags.clone());
                        cached.groups.insert(id.clone(), entry);
                    }
                }
            }
        }
        live.seen_seq = self.truth_seq;
    }

    pub(crate) fn all_instance_truths(&self) -> Vec<InstanceTruth> {
        let mut out = Vec::new();
        for (r, region) in self.regions.iter().enumerate() {
            out.extend((0..region.instances.len()).map(|i| self.truth(r, i)));
        }
        out
    }

    pub(crate) fn live_resources(&self) -> Vec<LiveResource> {
        let now = self.now_ms;
        let mut out = Vec::new();
        for region in &self.regions {
            let live = |kind, id: &str, name: &str, tags: Tags| LiveResource {
                region: region.label.clone(),
                kind,
                id: id.to_string(),
                name: name.to_string(),
                tags,
            };
            for inst in &region.instances {
                if inst.state_at(now) != InstanceState::Terminated {
                    out.push(live(ResourceKind::Instance, &inst.id, "", inst.tags.to_tags()));
                    out.push(live(ResourceKind::Volume, &inst.volume_id, "", inst.volume_tags.to_tags()));
                }
            }
            for (name, kp) in &region.key_pairs {
                out.push(live(ResourceKind::KeyPair, &kp.id, name, kp.tags.clone()));
            }
            for (id, g) in &region.groups {
                if !g.is_default {
                    out.push(live(ResourceKind::SecurityGroup, id, &g.name, g.tags.clone()));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------- placement (issue 14)

impl World {
    /// `VcpuLimitExceeded` when launching `spec` would take the region's pending and running
    /// standard-class instances past the account's On-Demand vCPU quota (see `placement`).
    fn within_vcpu_quota(&mut self, r: usize, spec: &InstanceTypeSpec, tags: &Tags) -> Result<(), Ec2Error> {
        let quota = self.faults.on_demand_vcpu_quota;
        if quota == u32::MAX || !crate::placement::is_standard_class(spec) {
            return Ok(());
        }
        let now = self.now_ms;
        let region = &self.regions[r];
        // Instances not listed any more terminated over an hour ago: only listed ones can count.
        let used: u64 = region
            .listed
            .iter()
            .map(|&i| &region.instances[i])
            .filter(|inst| {
                matches!(inst.state_at(now), InstanceState::Pending | InstanceState::Running)
                    && crate::placement::is_standard_class(inst.spec)
            })
            .map(|inst| u64::from(inst.spec.vcpus))
            .sum();
        if used + u64::from(spec.vcpus) <= u64::from(quota) {
            return Ok(());
        }
        self.fault(codes::VCPU_LIMIT_EXCEEDED, vec![tags.clone()]);
        Err(crate::placement::vcpu_limit_exceeded(Operation::RunInstances, quota))
    }

    /// `Unsupported` when zone `az` of region `r` does not offer `spec` (see `placement`).
    fn offered_in(&mut self, r: usize, spec: &InstanceTypeSpec, az: u8, tags: &Tags) -> Result<(), Ec2Error> {
        let gap = self.faults.zone_offering_gap_probability;
        let region = &self.regions[r];
        if self.account.offers(&region.label, spec.name, az, gap) {
            return Ok(());
        }
        let offering: Vec<String> = (0..region.azs.len() as u8)
            .filter(|z| self.account.offers(&region.label, spec.name, *z, gap))
            .map(|z| region.azs[usize::from(z)].clone())
            .collect();
        let e =
            crate::placement::unsupported(Operation::RunInstances, spec.name, &region.azs[usize::from(az)], &offering);
        self.fault(codes::UNSUPPORTED, vec![tags.clone()]);
        Err(e)
    }

    /// Drains `spec`'s pool in zone `az` until `until_ms`, and (as drawn) its neighbouring sizes
    /// or its whole family in that zone: sizes of a family share hosts, so a shortage seldom
    /// stops at one size (see `placement::shortage_sizes`).
    fn start_shortage(&mut self, r: usize, spec: &'static InstanceTypeSpec, az: u8, until_ms: u64) {
        let family = self.chance(self.faults.capacity_shortage_family_probability);
        let neighbours = !family && self.chance(self.faults.capacity_shortage_neighbours_probability);
        for size in crate::placement::shortage_sizes(spec, neighbours, family) {
            let slot = self.regions[r].capacity_short_until_ms.entry((size, az)).or_default();
            *slot = (*slot).max(until_ms);
        }
    }

    /// A capacity shortage starting now in the pool of `instance_type` in zone `zone`, as a
    /// random one would: spreading to neighbouring sizes or the family as the knobs draw.
    pub(crate) fn start_capacity_shortage(
        &mut self,
        region: &RegionLabel,
        instance_type: &str,
        zone: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        let spec =
            catalogue::lookup(instance_type).ok_or_else(|| SimError::UnknownInstanceType(instance_type.to_string()))?;
        let az = self.regions[r].azs.iter().position(|z| z == zone).ok_or_else(|| {
            SimError::Config(format!(
                "zone {zone} is not simulated in {region}: use {}",
                self.regions[r].azs.join(", ")
            ))
        })?;
        self.audit.begin(0xF4, region.as_str(), self.now_ms);
        self.audit.str(instance_type);
        self.audit.str(zone);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        self.start_shortage(r, spec, az as u8, until);
        Ok(())
    }

    /// DescribeInstanceTypeOfferings by availability zone: each (type, zone) the region offers,
    /// by type then zone, for `instance_types` (empty: all of the catalogue).
    pub(crate) fn describe_instance_type_offerings(
        &mut self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        let op = Operation::DescribeInstanceTypeOfferings;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&instance_types);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceTypeOffering>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = pagination::fingerprint(op, &[&region, &instance_types]);
            let window = pagination::window(op, &page, false, fingerprint)?;
            let gap = w.faults.zone_offering_gap_probability;
            let region = &w.regions[r];
            let mut answer = Vec::new();
            for spec in catalogue::CATALOGUE {
                // EC2's instance-type filter takes wildcards, as Describe filters do.
                if !instance_types.is_empty() && !instance_types.iter().any(|p| glob(p, spec.name)) {
                    continue;
                }
                for (z, zone) in region.azs.iter().enumerate() {
                    if w.account.offers(&region.label, spec.name, z as u8, gap) {
                        let offering = InstanceTypeOffering {
                            instance_type: spec.name.to_string(),
                            availability_zone: zone.clone(),
                        };
                        answer.push((format!("{zone}/{}", spec.name), offering));
                    }
                }
            }
            answer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(w.page_of(window, answer))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for o in &page.items {
                a.str(&o.instance_type);
                a.str(&o.availability_zone);
            }
        });
        result
    }
}

impl World {
    pub(crate) fn describe_subnets(
        &mut self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        let op = Operation::DescribeSubnets;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&subnet_ids);
        audit_filters(&mut self.audit, &filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<SubnetInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = pagination::fingerprint(op, &[&region, &subnet_ids, &filters]);
            let window = pagination::window(op, &page, !subnet_ids.is_empty(), fingerprint)?;
            let fields = ["vpc-id", "availability-zone", "subnet-id", "default-for-az"];
            let filters = parse_filters(op, filters, &fields)?;
            let networks = &w.regions[r].networks;
            for id in &subnet_ids {
                if networks.subnet(id).is_none() {
                    return Err(err(op, codes::SUBNET_NOT_FOUND, format!("The subnet ID '{id}' does not exist")));
                }
            }
            let mut answer: Vec<(String, SubnetInfo)> = networks
                .subnets
                .iter()
                .filter(|s| subnet_ids.is_empty() || subnet_ids.contains(&s.subnet_id))
                .filter(|s| {
                    matches(&filters, &s.tags, |f| match f {
                        "vpc-id" => Some(s.vpc_id.as_str()),
                        "availability-zone" => Some(s.availability_zone.as_str()),
                        "subnet-id" => Some(s.subnet_id.as_str()),
                        "default-for-az" => Some(if s.default_for_az { "true" } else { "false" }),
                        _ => None,
                    })
                })
                .map(|s| (s.subnet_id.clone(), s.clone()))
                .collect();
            answer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(w.page_of(window, answer))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for s in &page.items {
                a.str(&s.subnet_id);
            }
        });
        result
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_ec2_wildcards() {
        assert!(glob("grant-*", "grant-42"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*b*d", "abcbd"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("exact", "exact"));
    }

    #[test]
    fn cidrs_and_keys_are_checked() {
        assert!(valid_cidr("0.0.0.0/0"));
        assert!(valid_cidr("10.1.2.3/32"));
        assert!(!valid_cidr("10.1.2.3/33"));
        assert!(!valid_cidr("10.1.2/8"));
        assert!(valid_cidr("::/0"));
        assert!(valid_cidr("2001:db8::/32"));
        assert!(!valid_cidr("2001:db8::/129"));
        assert!(!valid_cidr("2001:db8::/+3"));
        assert!(valid_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host"
        ));
        assert!(!valid_public_key("ssh-ed25519"));
        assert!(!valid_public_key("ssh-dss AAAA"));
        // The body must name the same kind as the first word.
        assert!(!valid_public_key(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host"
        ));
    }
}
