//! Teardown: a grant the ledger calls settled holds nothing in the simulated EC2.

use std::collections::BTreeMap;

use backend_api::GrantId;

use super::{Context, Violation, names};

/// Checks every settled grant against the simulator's live resources.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut live_by_grant: BTreeMap<GrantId, Vec<String>> = BTreeMap::new();
    for (resource, note) in ctx.live.iter() {
        // Only a settled grant's resources are named in a violation, so only theirs are listed.
        if let Some(grant) = note.grant.filter(|g| ctx.replay.settled.contains_key(g)) {
            live_by_grant.entry(grant).or_default().push(format!("{:?} {}", resource.kind, resource.id));
        }
    }
    live_by_grant
        .iter()
        .map(|(grant, held)| {
            Violation::safety(names::TEARDOWN, format!("grant {grant} is settled but EC2 still holds {held:?}"))
        })
        .collect()
}
