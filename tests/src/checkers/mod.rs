//! Invariant checkers, one module each, run after every step of a simulation.
//!
//! Safety failures (an invariant broke) are reported apart from liveness failures (work did not
//! finish in time); the harness adds the liveness checks of the quiet phase.

pub mod deadline;
pub mod idempotency;
pub mod ledger;
pub mod metering;
pub mod teardown;

use std::collections::BTreeMap;

use aws_backend::{AwsBackend, GRANT_TAG};
use backend_api::GrantId;
use serde::Serialize;
use sim_ec2::{InstanceTruth, LiveResource, SimEc2};
use usage_ledger::MemoryStore;

use crate::scenario::GrantPlan;

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

/// What the checkers look at: the simulator's ground truth, the backend's ledger and the plan.
pub struct Context<'a> {
    /// The present, unix ms.
    pub now_unix_ms: u64,
    /// The simulated EC2.
    pub sim: &'a SimEc2,
    /// The backend in service.
    pub backend: &'a AwsBackend,
    /// The ledger's store (what a restart would replay).
    pub store: &'a MemoryStore,
    /// The workload, by grant.
    pub plans: &'a BTreeMap<GrantId, GrantPlan>,
    /// How long after valid_to an instance may still be up.
    pub grace_ms: u64,
    /// The backend's poll interval.
    pub poll_interval_ms: u64,
    /// The longest time the backend was down in one crash (0 without crashes).
    pub downtime_ms_max: u64,
    /// The simulated network rate ceiling, bytes per second per direction.
    pub network_bytes_per_s_max: u64,
    /// Every instance ever launched (read once per step).
    pub instances: Vec<InstanceTruth>,
    /// Every live resource (read once per step).
    pub live: Vec<LiveResource>,
}

impl Context<'_> {
    /// The grant a tag set names, if it is one of the plan's.
    pub fn grant_of(&self, tags: &aws_backend::port::Tags) -> Option<GrantId> {
        tags.get(GRANT_TAG).and_then(|hex| hex.parse().ok())
    }
}

/// Runs every checker; `Measures` collects the figures the summary prints.
pub fn check_all(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    violations.extend(deadline::check(ctx, measures));
    violations.extend(teardown::check(ctx));
    violations.extend(idempotency::check(ctx));
    violations.extend(metering::check(ctx, measures));
    violations.extend(ledger::check(ctx));
    violations
}

/// Figures the checkers measure along the way.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measures {
    /// The latest an instance left pending/running after its grant's valid_to, ms.
    pub termination_lateness_ms_max: u64,
    /// Instances that were still up after valid_to + grace.
    pub deadline_overruns: u64,
    /// The largest |metered - true| cpu seconds over settled grants.
    pub metering_error_cpu_seconds_max: u64,
    /// The largest |metered - true| RAM MiB-seconds over settled grants.
    pub metering_error_ram_mib_seconds_max: u64,
    /// The largest |metered - true| network bytes over settled grants.
    pub metering_error_network_bytes_max: u64,
}
