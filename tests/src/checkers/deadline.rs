//! Deadline: nothing is pending or running past its grant's valid_to plus the grace.

use super::{Context, Measures, Violation};

/// Checks every instance ever launched against its grant's deadline.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut overruns = 0;
    for instance in &ctx.instances {
        let Some(plan) = ctx.grant_of(&instance.tags).and_then(|g| ctx.plans.get(&g)) else { continue };
        let end = instance.up_until_ms().unwrap_or(ctx.now_unix_ms);
        let lateness = end.saturating_sub(plan.valid_to_unix_ms);
        measures.termination_lateness_ms_max = measures.termination_lateness_ms_max.max(lateness);
        if lateness > ctx.grace_ms {
            overruns += 1;
            violations.push(Violation::safety(
                "deadline",
                format!(
                    "instance {} of grant {} was up {lateness} ms past valid_to ({} ms), beyond the {} ms grace",
                    instance.instance_id, plan.id, plan.valid_to_unix_ms, ctx.grace_ms
                ),
            ));
        }
    }
    measures.deadline_overruns = measures.deadline_overruns.max(overruns);
    violations
}
