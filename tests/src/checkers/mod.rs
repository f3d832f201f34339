//! Invariant checkers, one module each, run every few virtual seconds of a simulation.
//!
//! Every promise the `Backend` trait and `docs/ARCHITECTURE.md` make has a checker here, and
//! every checker has a deliberate bug ([`crate::scenario::Breakage`]) that `cargo xtask sim
//! --self-test` switches on to see it fire. Safety failures (an invariant broke) are reported
//! apart from liveness failures (work did not finish in time). The checkers read the
//! simulator's ground truth and the ledger as stored, never the backend's own arithmetic.

pub mod admission;
pub mod backstop;
pub mod contract;
pub mod deadline;
pub mod drain;
pub mod early_end;
pub mod fence;
pub mod guest;
pub mod idempotency;
pub mod ledger;
pub mod metering;
pub mod pacing;
pub mod pagination;
pub mod secrets;
pub mod sizing;
pub mod snapshot;
pub mod tags;
pub mod teardown;

use std::collections::BTreeMap;

use aws_backend::port::{Operation, Tags};
use aws_backend::{AwsBackend, GRANT_TAG};
use backend_api::{GrantId, RegionLabel};
use serde::Serialize;
use sim_ec2::fxhash::FxHashMap;
use sim_ec2::{FaultConfig, InstanceTruth, InstanceTruths, LiveResource, LiveResources, SimEc2};

use crate::scenario::GrantPlan;
pub use ledger::Replay;

/// The harness's named bounds: how late or how far off a correct bridge may be, each derived
/// from EC2's documented behaviour and the run's own settings, never from the backend's
/// constants (loosening the backend must not loosen a check). docs/simulation.md, "Bounds",
/// says why each is its size.
pub mod bounds {
    /// How late after `valid_to` an instance may leave `running` when a bridge was acting
    /// then and nothing touched its termination: EC2 moves an instance to `shutting-down` the
    /// moment it accepts TerminateInstances, so this is the timer and one call.
    pub const PROMPT_MS: u64 = 1_000;
    /// How long after it is back a bridge that was down at `valid_to` may take to end an
    /// overdue instance: its start-up (the catalogue, a few paced calls) and recovery's first
    /// TerminateInstances.
    pub const RECOVERY_MS: u64 = 10_000;
    /// How much longer an injected fault on a promise's own calls may delay it. The swarm's
    /// random failures (throttle, internal error, unavailable, lost response) add up to at most
    /// 0.12 per call, so eight failures of one call in a row happen less than once in twenty
    /// million calls; a correct client retries every failure and waits no more than 20 s
    /// between two tries ("Retry behavior", AWS SDKs and Tools Reference Guide: the standard
    /// mode's 20 s backoff cap), so eight failures cost it well under a minute.
    pub const FAULT_BUDGET_MS: u64 = 60_000;
    /// How long after a state change EC2 shows it to Describe and a bridge acting all along
    /// records it, besides its poll interval (the run's own setting, `Scenario::poll_interval_ms`):
    /// the Describe, its pages, and the append.
    pub const SIGHTING_MS: u64 = 1_000;
    /// At most this many answered listings of our instances per region within one poll
    /// interval, across every bridge process: the poller's, a reaper pass's, and around a
    /// crash or a takeover the same two of a second process (the one ending and the one
    /// starting). A watch that lists per instance makes as many as there are instances.
    pub const LISTINGS_PER_POLL_MAX: usize = 4;
    /// How long after EC2 last answered `VcpuLimitExceeded` in a region a bridge may still
    /// refuse a grant for the quota without asking EC2 again: long enough to spare EC2 a
    /// launch per grant while the account is full, short enough that a raised quota or freed
    /// vCPUs are used within minutes. A bridge that remembers longer refuses grants EC2 would
    /// now launch.
    pub const QUOTA_MEMORY_MS: u64 = 10 * 60_000;
    /// How long a drain may take: the time its provisions in flight have to finish (the
    /// simulated operator's drain time), as long again for the rollbacks of those cut short,
    /// and a minute for the last appends and the lease's release.
    pub const DRAIN_ENDS_WITHIN_MS: u64 = 2 * crate::processes::DRAIN_MS + 60_000;
}

/// The checkers' names, as violations and `--disable-checker` spell them.
pub mod names {
    /// Nothing is up past its deadline; nothing launches after it.
    pub const DEADLINE: &str = "deadline";
    /// No handed-over instance is ended by the bridge before its deadline.
    pub const EARLY_END: &str = "early-end";
    /// A settled grant holds nothing in EC2.
    pub const TEARDOWN: &str = "teardown";
    /// At most one instance per grant.
    pub const IDEMPOTENCY: &str = "idempotency";
    /// `can_satisfy` and `provision` agree with the plan.
    pub const ADMISSION: &str = "admission";
    /// A provision fails only for a reason EC2 gave.
    pub const PROVISION: &str = "provision";
    /// Settled usage matches the oracle.
    pub const METERING: &str = "metering";
    /// The stored log decodes and replays to the live ledger.
    pub const LEDGER: &str = "ledger";
    /// Every grant ends; no task, recovery or reaper pass fails or outlives the run.
    pub const LIVENESS: &str = "liveness";
    /// Nothing panics.
    pub const PANIC: &str = "panic";
    /// Every instance is at least as big as its grant asked.
    pub const SIZING: &str = "sizing";
    /// Everything created carries our owner tag and its grant's tag.
    pub const TAGS: &str = "tags";
    /// EC2 never refuses a call for an empty bucket.
    pub const PACING: &str = "pacing";
    /// No requester's private key reaches EC2's API.
    pub const SECRETS: &str = "secrets";
    /// The requester pins the guest's own host key; its IMDS is IMDSv2 with a hop limit of 1.
    pub const GUEST: &str = "guest";
    /// The guest powers off by valid_to + grace, which ends its instance; the bill stops there.
    pub const BACKSTOP: &str = "backstop";
    /// Every listing is read to its last page.
    pub const PAGINATION: &str = "pagination";
    /// Once a replica has taken the ledger lease, no other replica acts.
    pub const FENCE: &str = "fence";
    /// The `Backend` trait's own promises: provision returns a running instance; the usage
    /// watch returns is the settled one; watch and terminate fail only for a reason.
    pub const CONTRACT: &str = "contract";
    /// Nothing is created for a grant before the ledger durably holds why (see `witness`).
    pub const RECORD_FIRST: &str = "record-first";
    /// One listing of our instances per region per poll interval (see `witness`).
    pub const LISTING: &str = "listing";
    /// A drain ends within its bound, and every provision it cut short is rolled back as
    /// retryable (see `checkers::drain`).
    pub const DRAIN: &str = "drain";
    /// A process restarted on its ledger opens from the newest snapshot, and its books, record
    /// count and records hash equal a full replay's (see `checkers::snapshot`).
    pub const SNAPSHOT: &str = "snapshot";
    /// Every checker.
    pub const ALL: [&str; 23] = [
        DEADLINE,
        EARLY_END,
        TEARDOWN,
        IDEMPOTENCY,
        ADMISSION,
        PROVISION,
        METERING,
        LEDGER,
        LIVENESS,
        PANIC,
        SIZING,
        TAGS,
        PACING,
        SECRETS,
        GUEST,
        BACKSTOP,
        PAGINATION,
        FENCE,
        CONTRACT,
        RECORD_FIRST,
        LISTING,
        DRAIN,
        SNAPSHOT,
    ];
}

/// Whether a violation breaks safety or liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// Something that must never happen happened.
    Safety,
    /// Something that must happen did not, in time.
    Liveness,
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The checker that found it.
    pub checker: &'static str,
    /// Safety or liveness.
    pub severity: Severity,
    /// What broke, naming grant, resource and times.
    pub message: String,
}

impl Violation {
    /// A safety violation found by `checker`.
    pub fn safety(checker: &'static str, message: String) -> Self {
        Self { checker, severity: Severity::Safety, message }
    }

    /// A liveness violation found by `checker`.
    pub fn liveness(checker: &'static str, message: String) -> Self {
        Self { checker, severity: Severity::Liveness, message }
    }
}

/// How a grant's lifecycle ended, as the harness saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not arrived, or still in flight.
    Waiting,
    /// Refused before anything was created.
    Refused(String),
    /// Provision failed after something was created (and was rolled back).
    ProvisionFailed(String),
    /// Provisioned, watched to its end and torn down.
    Completed,
    /// Watching or tearing down failed after provision succeeded.
    AfterProvisionFailed(String),
    /// In flight when the backend crashed; recovery finishes it.
    Interrupted,
    /// Its lifecycle task panicked.
    Panicked,
}

/// What the harness learnt about one grant.
#[derive(Clone, Debug)]
pub struct GrantFacts {
    /// `can_satisfy`'s answer when the grant arrived.
    pub can_satisfy: Option<bool>,
    /// The outcome.
    pub outcome: Outcome,
    /// When the outcome was reached, unix ms.
    pub outcome_at_unix_ms: u64,
    /// Provision returned the instance to the requester (who may be using it).
    pub handed_over: bool,
    /// When it did, unix ms.
    pub handed_over_at_unix_ms: u64,
    /// What it handed over of the guest, with the simulator's truth about it.
    pub guest: Option<guest::GuestFacts>,
    /// The state EC2 showed the instance in when provision returned it.
    pub handed_over_state: Option<aws_backend::port::InstanceState>,
    /// What `watch_until_exit` returned, when it returned.
    pub watched_usage: Option<backend_api::UsageMetrics>,
    /// Its provision was refused as unavailable (a drain), and compute-bridge waits to send it
    /// again to the process acting next.
    pub resending: bool,
}

impl Default for GrantFacts {
    fn default() -> Self {
        Self {
            can_satisfy: None,
            outcome: Outcome::Waiting,
            outcome_at_unix_ms: 0,
            handed_over: false,
            handed_over_at_unix_ms: 0,
            guest: None,
            handed_over_state: None,
            watched_usage: None,
            resending: false,
        }
    }
}

/// A time the backend was down: from the crash until it was back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downtime {
    /// When it crashed, unix ms.
    pub from_unix_ms: u64,
    /// When the new backend started, unix ms.
    pub to_unix_ms: u64,
    /// The process acting before it may carry on after it (a pause or a partition of a
    /// replica), with what it saw before: a run that started meanwhile is first seen by it
    /// after the downtime, not found as one nobody watched.
    pub resumed: bool,
}

impl Downtime {
    /// True when this downtime overlaps `[from, to]`.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.from_unix_ms <= to && from <= self.to_unix_ms
    }
}

/// How many transient failures of one operation explain a failed call (see
/// [`FaultIndex::explain_failure`]): as for [`bounds::FAULT_BUDGET_MS`], eight in a row are
/// vanishingly rare at the swarm's rates, and a client that retries gives up only after more.
pub const TRANSIENT_RUN: usize = 8;

/// True for a fault a correct client rides out by retrying.
fn is_transient(kind: &str) -> bool {
    matches!(
        kind,
        "RequestLimitExceeded"
            | "InternalError"
            | "Unavailable"
            | "ResponseLost"
            | "Throttling"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "InternalServerError"
    )
}

/// One injected fault, as the checkers need it.
#[derive(Clone, Debug)]
pub struct Fault {
    /// When, unix ms.
    pub at_unix_ms: u64,
    /// The operation it hit, if a call.
    pub operation: Option<Operation>,
    /// Its kind, e.g. `InternalError` or `exit:Server.InternalError`.
    pub kind: String,
}

/// The simulator's fault log, sorted by the grant each fault hit (by the grant tag of the
/// resources its call named), or by region for calls about no grant (Describe, region outages).
#[derive(Debug, Default)]
pub struct FaultIndex {
    seen: usize,
    by_grant: BTreeMap<GrantId, Vec<Fault>>,
    by_region: BTreeMap<RegionLabel, Vec<Fault>>,
    /// When EC2 answered `VcpuLimitExceeded` in each region, whichever grant asked.
    quota_met: BTreeMap<RegionLabel, Vec<u64>>,
}

fn grant_tag(tags: &Tags) -> Option<GrantId> {
    tags.get(GRANT_TAG).and_then(|hex| hex.parse().ok())
}

impl FaultIndex {
    /// Takes in the faults the simulator injected since the last call.
    pub fn absorb(&mut self, sim: &SimEc2) {
        let new = sim.fault_log_since(self.seen);
        self.seen += new.len();
        for record in new {
            let fault = Fault { at_unix_ms: record.at_unix_ms, operation: record.operation, kind: record.kind };
            let grants: Vec<GrantId> = record.subjects.iter().filter_map(grant_tag).collect();
            if fault.kind == aws_backend::port::codes::VCPU_LIMIT_EXCEEDED
                && let Some(region) = &record.region
            {
                self.quota_met.entry(region.clone()).or_default().push(fault.at_unix_ms);
            }
            if grants.is_empty() {
                if let Some(region) = record.region {
                    self.by_region.entry(region).or_default().push(fault);
                }
            } else {
                for grant in grants {
                    self.by_grant.entry(grant).or_default().push(fault.clone());
                }
            }
        }
    }

    /// True when a fault hit `grant`'s own calls in `[from, to]`, of `operation` if given: the
    /// same as `!on_grant(..).is_empty()`, without gathering them.
    pub fn on_grant_any(&self, grant: &GrantId, from: u64, to: u64, operation: Option<Operation>) -> bool {
        self.by_grant
            .get(grant)
            .into_iter()
            .flatten()
            .any(|f| (from..=to).contains(&f.at_unix_ms) && operation.is_none_or(|op| f.operation == Some(op)))
    }

    /// True when a fault on calls about no grant in `region` within `[from, to]` can fail a
    /// grant's work (see [`FaultIndex::region_wide`]), without gathering them.
    pub fn region_wide_any(&self, region: &RegionLabel, from: u64, to: u64) -> bool {
        self.by_region.get(region).into_iter().flatten().any(|f| {
            (from..=to).contains(&f.at_unix_ms)
                && (f.operation != Some(Operation::DescribeInstances) || f.kind == "RegionOutage")
        })
    }

    /// Faults that hit `grant`'s own calls in `[from, to]`, of `operation` if given.
    pub fn on_grant(&self, grant: &GrantId, from: u64, to: u64, operation: Option<Operation>) -> Vec<&Fault> {
        self.by_grant
            .get(grant)
            .into_iter()
            .flatten()
            .filter(|f| (from..=to).contains(&f.at_unix_ms))
            .filter(|f| operation.is_none_or(|op| f.operation == Some(op)))
            .collect()
    }

    /// Faults on calls about no grant in `region` within `[from, to]` that can fail a grant's
    /// work: anything but the poller's DescribeInstances, whose failures only delay it.
    pub fn region_wide(&self, region: &RegionLabel, from: u64, to: u64) -> Vec<&Fault> {
        self.by_region
            .get(region)
            .into_iter()
            .flatten()
            .filter(|f| (from..=to).contains(&f.at_unix_ms))
            .filter(|f| f.operation != Some(Operation::DescribeInstances) || f.kind == "RegionOutage")
            .collect()
    }

    /// True when a fault within `[from, to]` hit a DescribeInstances call in `region` (the
    /// poller's listing, whose failures delay sightings) or the whole region (an outage).
    pub fn describe_hit(&self, region: &RegionLabel, from: u64, to: u64) -> bool {
        self.by_region.get(region).into_iter().flatten().any(|f| {
            (from..=to).contains(&f.at_unix_ms)
                && (f.operation == Some(Operation::DescribeInstances) || f.kind == "RegionOutage")
        })
    }

    /// True when the faults within `[from, to]` can explain a failed provision of `grant`, as the
    /// docs say a provision may fail: a fault that is not transient on the grant's own calls or
    /// its instance (a capacity shortage, a quota, an instance that died, a targeted failure,
    /// an outage of its region), or a transient one (throttling, internal errors, unavailable,
    /// lost answers) persisting: [`TRANSIENT_RUN`] of them on one operation, of the grant's or
    /// about no grant in its region (not the poller's Describe, whose failures only delay it).
    pub fn explain_failure(&self, grant: &GrantId, region: &RegionLabel, from: u64, to: u64) -> bool {
        let own = self.on_grant(grant, from, to, None);
        let wide = self.region_wide(region, from, to);
        if own.iter().chain(&wide).any(|f| !is_transient(&f.kind)) {
            return true;
        }
        let mut runs: BTreeMap<Option<Operation>, usize> = BTreeMap::new();
        for f in own.iter().chain(&wide) {
            *runs.entry(f.operation).or_default() += 1;
        }
        runs.values().any(|n| *n >= TRANSIENT_RUN)
    }

    /// True when a fault in `[from, to]` hit `grant` or its region (see [`FaultIndex::region_wide`]).
    pub fn touched(&self, grant: &GrantId, region: &RegionLabel, from: u64, to: u64) -> bool {
        self.on_grant_any(grant, from, to, None) || self.region_wide_any(region, from, to)
    }

    /// True when EC2 answered `VcpuLimitExceeded` in `region` within `[from, to]`, to any grant.
    pub fn quota_met(&self, region: &RegionLabel, from: u64, to: u64) -> bool {
        self.quota_met.get(region).into_iter().flatten().any(|at| (from..=to).contains(at))
    }

    /// Faults injected so far.
    pub fn seen(&self) -> usize {
        self.seen
    }
}

/// What the checkers look at: the simulator's ground truth, the ledger as stored, the plan and
/// what the harness saw.
pub struct Context<'a> {
    /// The present, unix ms.
    pub now_unix_ms: u64,
    /// The backend in service.
    pub backend: &'a AwsBackend,
    /// The simulated EC2.
    pub sim: &'a SimEc2,
    /// Its fault configuration (`SimEc2::faults`), read once per check.
    pub sim_faults: FaultConfig,
    /// The workload, by grant.
    pub plans: &'a BTreeMap<GrantId, GrantPlan>,
    /// The same, hashed: what [`Context::plan`] looks up, once or more per instance per check.
    pub plan_of: FxHashMap<GrantId, &'a GrantPlan>,
    /// What the harness saw of each grant.
    pub facts: &'a BTreeMap<GrantId, GrantFacts>,
    /// The guest's own backstop after valid_to (bounds lateness only while the bridge is down).
    pub grace_ms: u64,
    /// The configured `min_lifetime_s`, in ms: nothing launches closer to `valid_to`.
    pub min_lifetime_ms: u64,
    /// The backend's poll interval.
    pub poll_interval_ms: u64,
    /// The times the backend was down so far.
    pub downtimes: &'a [Downtime],
    /// The faults injected so far.
    pub faults: &'a FaultIndex,
    /// The ledger as stored, decoded and replayed.
    pub replay: &'a Replay,
    /// Every instance ever launched, each with what the checkers note of it, brought up to date
    /// before each check.
    pub instances: &'a InstanceTruths<InstanceNote>,
    /// The instances whose tags name one of the workload's grants, with it, sorted by grant and
    /// each grant's in launch order ([`by_grant`]): grouped once per check for the checkers that
    /// look grant by grant.
    pub by_grant: Vec<(GrantId, &'a InstanceTruth)>,
    /// Every live resource, each with what the checkers note of it, brought up to date before
    /// each check.
    pub live: &'a LiveResources<LiveNote>,
    /// The workload's grants by their tag value.
    pub grant_tags: &'a GrantTags,
}

/// The workload's grants by the value of their grant tag (the grant's hex, as the backend writes
/// it): naming the grant of a tag set is then one lookup, not a hex parse, for every resource
/// at every check.
#[derive(Debug, Default)]
pub struct GrantTags {
    by_hex: FxHashMap<String, GrantId>,
}

impl GrantTags {
    /// The tag values of `grants`.
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a GrantId>) -> Self {
        Self { by_hex: grants.into_iter().map(|g| (g.to_hex(), *g)).collect() }
    }

    /// The grant `tags` names, if it is one of `plans` (those `new` was given): the same answer
    /// as parsing the tag, which a value spelt otherwise (upper-case hex) still gets.
    pub fn grant_of(&self, plans: &BTreeMap<GrantId, GrantPlan>, tags: &Tags) -> Option<GrantId> {
        let value = tags.get(GRANT_TAG)?;
        match self.by_hex.get(value) {
            Some(grant) => Some(*grant),
            None => value.parse().ok().filter(|g| plans.contains_key(g)),
        }
    }
}

/// What the checkers need of an instance beyond its truth, worked out again only when its truth
/// changes.
#[derive(Clone, Debug, Default)]
pub struct InstanceNote {
    /// The workload's grant its tags name.
    pub grant: Option<GrantId>,
    /// What its own tags lack, if anything (see [`tags`]).
    pub instance_tags_missing: Option<String>,
    /// What its volume's tags lack, if anything.
    pub volume_tags_missing: Option<String>,
}

/// What the checkers need of a live resource beyond what it is, worked out again only when it
/// changes.
#[derive(Clone, Debug, Default)]
pub struct LiveNote {
    /// The workload's grant its tags name.
    pub grant: Option<GrantId>,
    /// What its tags lack, if anything (see [`tags`]).
    pub tags_missing: Option<String>,
}

impl LiveNote {
    /// The note of `resource`, for the workload `plans`.
    pub fn of(resource: &LiveResource, plans: &BTreeMap<GrantId, GrantPlan>, grant_tags: &GrantTags) -> Self {
        let grant_of = |tags: &Tags| grant_tags.grant_of(plans, tags);
        Self { grant: grant_of(&resource.tags), tags_missing: tags::missing(grant_of, &resource.tags) }
    }
}

impl InstanceNote {
    /// The note of `instance`, for the workload `plans`.
    pub fn of(instance: &InstanceTruth, plans: &BTreeMap<GrantId, GrantPlan>, grant_tags: &GrantTags) -> Self {
        let grant_of = |tags: &Tags| grant_tags.grant_of(plans, tags);
        Self {
            grant: grant_of(&instance.tags),
            instance_tags_missing: tags::missing(grant_of, &instance.tags),
            volume_tags_missing: tags::missing(grant_of, &instance.volume_tags),
        }
    }
}

/// `plans` hashed by grant, for [`Context::plan_of`].
pub fn plan_index(plans: &BTreeMap<GrantId, GrantPlan>) -> FxHashMap<GrantId, &GrantPlan> {
    plans.iter().map(|(grant, plan)| (*grant, plan)).collect()
}

impl Context<'_> {
    /// The plan of `grant`: `plans.get(grant)`, hashed.
    pub fn plan(&self, grant: &GrantId) -> Option<&GrantPlan> {
        self.plan_of.get(grant).copied()
    }

    /// The plan of `grant`, one of the workload's (an instance's note names only those):
    /// `plans[grant]`, hashed.
    pub fn plan_of_workload(&self, grant: &GrantId) -> &GrantPlan {
        match self.plan_of.get(grant) {
            Some(plan) => plan,
            None => panic!("grant {grant} is not one of the workload's"),
        }
    }

    /// The grant a tag set names, if it is one of the plan's.
    pub fn grant_of(&self, tags: &Tags) -> Option<GrantId> {
        self.grant_tags.grant_of(self.plans, tags)
    }

    /// Every instance ever launched whose tags name one of the workload's grants, with it.
    pub fn granted_instances(&self) -> impl Iterator<Item = (GrantId, &InstanceTruth)> {
        self.instances.iter().filter_map(|(instance, note)| note.grant.map(|g| (g, instance)))
    }

    /// Each grant that has instances, in id order, with its instances (see [`Context::by_grant`]).
    pub fn grant_groups(&self) -> impl Iterator<Item = (GrantId, &[(GrantId, &InstanceTruth)])> {
        self.by_grant.chunk_by(|a, b| a.0 == b.0).map(|group| (group[0].0, group))
    }

    /// The instances of `grant`, in launch order (see [`Context::by_grant`]).
    pub fn group_of(&self, grant: &GrantId) -> &[(GrantId, &InstanceTruth)] {
        let start = self.by_grant.partition_point(|(g, _)| g < grant);
        let len = self.by_grant[start..].iter().take_while(|(g, _)| g == grant).count();
        &self.by_grant[start..start + len]
    }

    /// True when the backend was down at some time in `[from, to]`.
    pub fn down_during(&self, from: u64, to: u64) -> bool {
        self.downtimes.iter().any(|d| d.overlaps(from, to))
    }
}

/// The instances of `truths` whose tags name a grant of the workload, with it, sorted by grant
/// and, within a grant, in launch order (the sort is stable): [`Context::by_grant`].
pub fn by_grant(truths: &InstanceTruths<InstanceNote>) -> Vec<(GrantId, &InstanceTruth)> {
    let mut grouped: Vec<_> = truths.iter().filter_map(|(t, note)| note.grant.map(|g| (g, t))).collect();
    grouped.sort_by_key(|(grant, _)| *grant);
    grouped
}

/// Runs every checker that runs during the run; `Measures` collects the figures the summary
/// prints.
pub fn check_all(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    violations.extend(deadline::check(ctx, measures));
    violations.extend(early_end::check(ctx));
    violations.extend(teardown::check(ctx));
    violations.extend(idempotency::check(ctx));
    violations.extend(metering::check(ctx, measures));
    violations.extend(ledger::check(ctx));
    violations.extend(sizing::check(ctx));
    violations.extend(tags::check(ctx));
    violations.extend(pacing::check(ctx));
    violations.extend(pagination::check(ctx));
    violations.extend(guest::check(ctx));
    violations.extend(backstop::check(ctx));
    violations.extend(contract::check(ctx));
    violations
}

/// Figures the checkers measure along the way.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measures {
    /// The latest an instance left pending/running after its grant's valid_to, ms.
    pub termination_lateness_ms_max: u64,
    /// The same, over terminations no fault or downtime touched (the bound is 1 s).
    pub termination_lateness_ms_max_unfaulted: u64,
    /// Instances up past their lateness bound.
    pub deadline_overruns: u64,
    /// The largest |metered - true| cpu seconds over settled grants.
    pub metering_error_cpu_seconds_max: u64,
    /// The largest |metered - true| RAM MiB-seconds over settled grants.
    pub metering_error_ram_mib_seconds_max: u64,
    /// The largest |metered - true| network bytes over settled grants.
    pub metering_error_network_bytes_max: u64,
    /// The largest |metered - true| billed seconds of one grant, over settled grants.
    pub metering_error_seconds_max: u64,
}
