//! No early end: an instance handed to its requester leaves `running` before `valid_to` only
//! when EC2 or the guest ends it, never because the bridge terminated it, and when EC2 or the
//! guest does end it, the ledger says so (the grant's termination reason is `Exited`) whenever
//! the backend could know before the deadline: the exit came more than one sighting (the poll
//! interval plus [`bounds::SIGHTING_MS`], plus [`bounds::FAULT_BUDGET_MS`] when faults hit the
//! region's Describe) before `valid_to`, and the backend was up from then on. EC2's truth, not
//! what the backend's polls were shown, decides.

use sim_ec2::reasons;
use usage_ledger::TerminationReason;

use super::{Context, Violation, bounds, names};

/// True when the backend, up all along, must have seen the exit before `valid_to`.
fn knowable_before(ctx: &Context<'_>, instance: &sim_ec2::InstanceTruth, valid_to: u64) -> bool {
    let Some(left_at) = instance.up_until_ms() else { return false };
    let budget = if ctx.faults.describe_hit(&instance.region, left_at, valid_to) { bounds::FAULT_BUDGET_MS } else { 0 };
    left_at + ctx.poll_interval_ms + bounds::SIGHTING_MS + budget < valid_to && !ctx.down_during(left_at, valid_to)
}

/// Checks the first exit of every handed-over instance.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (grant, instance) in ctx.granted_instances() {
        // The cheapest tests first: most instances end at their deadline, and the facts are
        // looked up only for those that ended before it.
        let Some(exit) = instance.intervals.iter().find(|i| {
            !matches!(i.state, aws_backend::port::InstanceState::Pending | aws_backend::port::InstanceState::Running)
        }) else {
            continue;
        };
        let valid_to = ctx.plan_of_workload(&grant).valid_to_unix_ms;
        if exit.from_ms >= valid_to {
            continue;
        }
        let Some(handed_over_at) = ctx.facts.get(&grant).filter(|f| f.handed_over).map(|f| f.handed_over_at_unix_ms)
        else {
            continue;
        };
        // Before the hand-over the requester had nothing to lose (an earlier attempt's
        // instance, rolled back); from valid_to on, ending it is the promise.
        if exit.from_ms < handed_over_at {
            continue;
        }
        let reason = exit.reason_code.as_deref().unwrap_or("none");
        if reason == reasons::USER_INITIATED_SHUTDOWN {
            violations.push(Violation::safety(
                names::EARLY_END,
                format!(
                    "instance {} of grant {grant} was terminated by the bridge at {}, {} ms before valid_to ({valid_to})",
                    instance.instance_id,
                    exit.from_ms,
                    valid_to - exit.from_ms
                ),
            ));
        } else if let Some(recorded) = ctx.replay.first_reason.get(&grant)
            && *recorded != TerminationReason::Exited
            && knowable_before(ctx, instance, valid_to)
        {
            violations.push(Violation::safety(
                names::EARLY_END,
                format!(
                    "instance {} of grant {grant} ended on its own ({reason}) at {}, before valid_to, but the ledger records the termination as {recorded:?}",
                    instance.instance_id, exit.from_ms
                ),
            ));
        }
    }
    violations
}
