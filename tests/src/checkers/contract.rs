//! The `Backend` trait's own promises (`backend-api`'s `Backend`):
//! - `provision` returns only an instance EC2 shows `running` at that moment, or one that left
//!   `running` so shortly before that no sighting could have shown it yet: within one sighting
//!   (the poll interval plus [`bounds::SIGHTING_MS`], plus [`bounds::FAULT_BUDGET_MS`] when
//!   faults hit the region's Describe then);
//! - the usage `watch_until_exit` returns never exceeds the grant's settled usage, and its
//!   cpu-seconds, MiB-seconds and storage equal it (the network figure may still be amended
//!   upwards by the final measurement);
//! - `watch_until_exit` and `terminate` fail only when something explains it: the bridge process
//!   that ran them stopped (a crash or a lost lease: `Outcome::Interrupted`), a partition cut it
//!   off its ledger meanwhile (replicas), or an injected fault hit the grant's own calls or its
//!   region (not the poller's Describe) in the meantime.

use aws_backend::port::InstanceState;

use super::{Context, Outcome, Violation, bounds, names};

/// Checks what the harness saw of each grant's trait calls against the promises.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut fail = |message: String| violations.push(Violation::safety(names::CONTRACT, message));
    for (grant, facts) in ctx.facts {
        if let Some(state) = facts.handed_over_state
            && state != InstanceState::Running
        {
            let at = facts.handed_over_at_unix_ms;
            let instance = facts
                .guest
                .as_ref()
                .and_then(|g| ctx.group_of(grant).iter().map(|(_, i)| *i).find(|i| i.instance_id == g.instance_id));
            let left = instance.and_then(|i| i.up_until_ms().map(|t| (t, i.region.clone())));
            let unseeable = left.as_ref().is_some_and(|(t, region)| {
                let budget = if ctx.faults.describe_hit(region, *t, at) { bounds::FAULT_BUDGET_MS } else { 0 };
                at < t + ctx.poll_interval_ms + bounds::SIGHTING_MS + budget
            });
            if !unseeable {
                fail(format!(
                    "grant {grant}: provision returned an instance EC2 showed {} at that moment (it left running at {:?})",
                    state.name(),
                    left.map(|(t, _)| t)
                ));
            }
        }
        let Some(plan) = ctx.plan(grant) else { continue };
        if let Some(watched) = &facts.watched_usage
            && ctx.replay.settled.contains_key(grant)
            && let Some(state) = ctx.replay.states.get(grant)
        {
            let settled = state.usage();
            let same = watched.cpu_seconds == settled.cpu_seconds
                && watched.ram_mib_seconds == settled.ram_mib_seconds
                && watched.storage_bytes == settled.storage_bytes
                && watched.network_bytes <= settled.network_bytes;
            if !same {
                fail(format!("grant {grant}: watch_until_exit returned {watched:?}, the settled usage is {settled:?}"));
            }
        }
        if let Outcome::AfterProvisionFailed(err) = &facts.outcome {
            let (from, to) = (facts.handed_over_at_unix_ms, facts.outcome_at_unix_ms);
            // With replicas, a partition cuts the process off its ledger: what it cannot record
            // it must not pretend done (the harness counts a partition as a downtime).
            let partitioned =
                err.contains(crate::framestore::PARTITIONED) && ctx.downtimes.iter().any(|d| d.overlaps(from, to));
            let explained = partitioned || ctx.faults.touched(grant, &plan.region, from, to);
            if !explained {
                fail(format!(
                    "grant {grant}: watch_until_exit or terminate failed with no injected fault to explain it: {err}"
                ));
            }
        }
    }
    violations
}
