//! Invariant checkers, one module each, run every few virtual seconds of a simulation.
//!
//! Every promise the `Backend` trait and `docs/ARCHITECTURE.md` make has a checker here, and
//! every checker has a deliberate bug ([`crate::scenario::Breakage`]) that `cargo xtask sim
//! --self-test` switches on to see it fire. Safety failures (an invariant broke) are reported
//! apart from liveness failures (work did not finish in time). The checkers read the
//! simulator's ground truth and the ledger as stored, never the backend's own arithmetic.

pub mod admission;
pub mod deadline;
pub mod early_end;
pub mod idempotency;
pub mod ledger;
pub mod metering;
pub mod pacing;
pub mod secrets;
pub mod sizing;
pub mod tags;
pub mod teardown;

use std::collections::BTreeMap;

use aws_backend::port::{Operation, Tags};
use aws_backend::{AwsBackend, GRANT_TAG};
use backend_api::{GrantId, RegionLabel};
use serde::Serialize;
use sim_ec2::{InstanceTruth, LiveResource, SimEc2};

use crate::scenario::GrantPlan;
pub use ledger::Replay;

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
    /// Every checker.
    pub const ALL: [&str; 14] = [
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
}

impl Default for GrantFacts {
    fn default() -> Self {
        Self {
            can_satisfy: None,
            outcome: Outcome::Waiting,
            outcome_at_unix_ms: 0,
            handed_over: false,
            handed_over_at_unix_ms: 0,
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
}

impl Downtime {
    /// True when this downtime overlaps `[from, to]`.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.from_unix_ms <= to && from <= self.to_unix_ms
    }
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

    /// True when a fault in `[from, to]` hit `grant` or its region (see [`FaultIndex::region_wide`]).
    pub fn touched(&self, grant: &GrantId, region: &RegionLabel, from: u64, to: u64) -> bool {
        !self.on_grant(grant, from, to, None).is_empty() || !self.region_wide(region, from, to).is_empty()
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
    /// The workload, by grant.
    pub plans: &'a BTreeMap<GrantId, GrantPlan>,
    /// What the harness saw of each grant.
    pub facts: &'a BTreeMap<GrantId, GrantFacts>,
    /// The guest's own backstop after valid_to (bounds lateness only while the bridge is down).
    pub grace_ms: u64,
    /// The backend's poll interval.
    pub poll_interval_ms: u64,
    /// How long a termination may take when faults hit its path (see `deadline`).
    pub faulted_termination_bound_ms: u64,
    /// The times the backend was down so far.
    pub downtimes: &'a [Downtime],
    /// The faults injected so far.
    pub faults: &'a FaultIndex,
    /// The ledger as stored, decoded and replayed.
    pub replay: &'a Replay,
    /// Every instance ever launched (read once per check).
    pub instances: Vec<InstanceTruth>,
    /// Every live resource (read once per check).
    pub live: Vec<LiveResource>,
}

impl Context<'_> {
    /// The grant a tag set names, if it is one of the plan's.
    pub fn grant_of(&self, tags: &Tags) -> Option<GrantId> {
        grant_tag(tags).filter(|g| self.plans.contains_key(g))
    }

    /// True when the backend was down at some time in `[from, to]`.
    pub fn down_during(&self, from: u64, to: u64) -> bool {
        self.downtimes.iter().any(|d| d.overlaps(from, to))
    }
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
