//! Deadline: no instance launches before its grant's `valid_from`, at or after its `valid_to`, or
//! within the configured `min_lifetime_s` of it,
//! and none stays pending or running past `valid_to` by more than its bound.
//!
//! The bound comes from EC2's truth, the run's plan and the harness's named bounds
//! ([`super::bounds`]), never from the backend's own constants:
//! - a bridge acting at `valid_to` (no downtime overlaps it): [`bounds::PROMPT_MS`]; TerminateInstances
//!   takes effect the moment EC2 accepts it;
//! - the bridge down at `valid_to` (or at some time before the instance ended): the end of the
//!   last such downtime plus [`bounds::RECOVERY_MS`], never the guest's grace;
//! - either, plus [`bounds::FAULT_BUDGET_MS`] when an injected fault hit the grant's
//!   TerminateInstances, or a call about no grant in its region (not the poller's Describe), in
//!   the window: the fault explains the delay, for at most the budget.

use aws_backend::port::Operation;

use super::{Context, Measures, Violation, bounds, names};

/// Checks every instance ever launched against its grant's deadline.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut overruns = 0;
    for (grant, instance) in ctx.granted_instances() {
        let plan = ctx.plan_of_workload(&grant);
        let valid_to = plan.valid_to_unix_ms;
        if instance.launch_time_unix_ms >= valid_to {
            violations.push(Violation::safety(
                names::DEADLINE,
                format!(
                    "instance {} of grant {grant} was launched at {}, {} ms after valid_to ({valid_to})",
                    instance.instance_id,
                    instance.launch_time_unix_ms,
                    instance.launch_time_unix_ms - valid_to
                ),
            ));
        }
        if instance.launch_time_unix_ms < valid_to && instance.launch_time_unix_ms + ctx.min_lifetime_ms > valid_to {
            violations.push(Violation::safety(
                names::DEADLINE,
                format!(
                    "instance {} of grant {grant} was launched at {}, {} ms before valid_to ({valid_to}): within min_lifetime_s",
                    instance.instance_id,
                    instance.launch_time_unix_ms,
                    valid_to - instance.launch_time_unix_ms
                ),
            ));
        }
        let valid_from = plan.valid_from_unix_ms();
        if instance.launch_time_unix_ms < valid_from {
            violations.push(Violation::safety(
                names::DEADLINE,
                format!(
                    "instance {} of grant {grant} was launched at {}, {} ms before valid_from ({valid_from})",
                    instance.instance_id,
                    instance.launch_time_unix_ms,
                    valid_from - instance.launch_time_unix_ms
                ),
            ));
        }
        let end = instance.up_until_ms().unwrap_or(ctx.now_unix_ms);
        let lateness = end.saturating_sub(valid_to);
        measures.termination_lateness_ms_max = measures.termination_lateness_ms_max.max(lateness);
        if lateness == 0 {
            continue;
        }
        // The last downtime between valid_to and the end: the bridge acts again from its end.
        let back = ctx
            .downtimes
            .iter()
            .filter(|d| d.to_unix_ms >= valid_to && d.from_unix_ms <= end)
            .map(|d| d.to_unix_ms)
            .max();
        let (from, base, why) = match back {
            Some(back) => (back.max(valid_to), bounds::RECOVERY_MS, "the bridge was down, so its return plus recovery"),
            None => (valid_to, bounds::PROMPT_MS, "a bridge was acting at valid_to"),
        };
        let faulted = ctx.faults.on_grant_any(&grant, valid_to, end, Some(Operation::TerminateInstances))
            || ctx.faults.region_wide_any(&instance.region, valid_to, end);
        let budget = if faulted { bounds::FAULT_BUDGET_MS } else { 0 };
        if back.is_none() && !faulted {
            measures.termination_lateness_ms_max_unfaulted =
                measures.termination_lateness_ms_max_unfaulted.max(lateness);
        }
        let bound = (from - valid_to) + base + budget;
        let why = if faulted { format!("{why}, and faults hit its calls") } else { why.to_string() };
        if lateness > bound {
            overruns += 1;
            violations.push(Violation::safety(
                names::DEADLINE,
                format!(
                    "instance {} of grant {grant} was up {lateness} ms past valid_to ({valid_to}); {why} allows {bound} ms",
                    instance.instance_id
                ),
            ));
        }
    }
    measures.deadline_overruns = measures.deadline_overruns.max(overruns);
    violations
}
