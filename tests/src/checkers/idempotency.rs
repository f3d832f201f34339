//! Idempotency: a provision attempt launches at most one instance, whatever crashes, lost
//! responses and retries it meets (a retried RunInstances reuses its ClientToken), and two
//! instances of one grant are never up at once (a retried provision, with tokens of its own,
//! starts only after the failed attempt was rolled back).

use std::collections::BTreeMap;

use sim_ec2::InstanceTruth;

use super::{Context, Violation, names};

/// The provision attempt a ClientToken belongs to: the token without its last part, the index
/// of the instance type tried (`aws_backend::names::client_token_for`).
fn attempt_of(token: &str) -> &str {
    token.rsplit_once('-').map_or(token, |(attempt, _)| attempt)
}

/// From launch until terminated (or now).
fn up(instance: &InstanceTruth, now: u64) -> (u64, u64) {
    let end = instance
        .intervals
        .iter()
        .find(|i| i.state == aws_backend::port::InstanceState::Terminated)
        .map_or(now, |i| i.from_ms);
    (instance.launch_time_unix_ms, end)
}

/// Checks the instances ever launched, grant by grant.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (grant, group) in ctx.grant_groups().filter(|(_, group)| group.len() > 1) {
        let instances: Vec<&InstanceTruth> = group.iter().map(|(_, i)| *i).collect();
        let mut by_attempt: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for i in &instances {
            by_attempt.entry(attempt_of(&i.client_token)).or_default().push(&i.instance_id);
        }
        for (attempt, ids) in by_attempt.into_iter().filter(|(_, ids)| ids.len() > 1) {
            violations.push(Violation::safety(
                names::IDEMPOTENCY,
                format!("grant {grant}: one provision attempt ({attempt}) launched {} instances: {ids:?}", ids.len()),
            ));
        }
        for (k, a) in instances.iter().enumerate() {
            for b in &instances[k + 1..] {
                let ((a0, a1), (b0, b1)) = (up(a, ctx.now_unix_ms), up(b, ctx.now_unix_ms));
                if a0 < b1 && b0 < a1 {
                    violations.push(Violation::safety(
                        names::IDEMPOTENCY,
                        format!("grant {grant}: instances {} and {} were up at once", a.instance_id, b.instance_id),
                    ));
                }
            }
        }
    }
    violations
}
