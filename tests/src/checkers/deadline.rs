//! Deadline: no instance launches before its grant's `valid_from` or at or after its `valid_to`,
//! and none stays pending or running past `valid_to` by more than its bound.
//!
//! The bound, per instance: 1 s when nothing touched the termination (the backend arms a timer
//! for `valid_to` and TerminateInstances takes effect at once); `faulted_termination_bound_ms`
//! when an injected fault hit the grant's TerminateInstances calls or its region's API in that
//! time (two full retry cycles of the pacer plus a poll interval); the guest's grace when the
//! backend was down at some point between `valid_to` and the end, since then only the guest's own
//! power-off is left.

use aws_backend::port::Operation;

use super::{Context, Measures, Violation, names};

/// The lateness allowed when nothing touched the termination.
pub const UNFAULTED_LATENESS_MS_MAX: u64 = 1_000;

/// Checks every instance ever launched against its grant's deadline.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut overruns = 0;
    for (grant, instance) in ctx.granted_instances() {
        let plan = &ctx.plans[&grant];
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
        let (bound, why) = if ctx.down_during(valid_to, end) {
            (ctx.grace_ms, "the backend was down, so the guest's grace")
        } else if !ctx.faults.on_grant(&grant, valid_to, end, Some(Operation::TerminateInstances)).is_empty()
            || !ctx.faults.region_wide(&instance.region, valid_to, end).is_empty()
        {
            (ctx.faulted_termination_bound_ms, "faults hit the termination, so the retry bound")
        } else {
            measures.termination_lateness_ms_max_unfaulted =
                measures.termination_lateness_ms_max_unfaulted.max(lateness);
            (UNFAULTED_LATENESS_MS_MAX, "nothing touched the termination")
        };
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
