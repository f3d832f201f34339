//! Teardown: a grant the ledger calls settled holds nothing in the simulated EC2.

use std::collections::BTreeMap;

use backend_api::GrantId;

use super::{Context, Violation, names};

/// Checks every settled grant against the simulator's live resources.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut live_by_grant: BTreeMap<GrantId, Vec<String>> = BTreeMap::new();
    for resource in &ctx.live {
        if let Some(grant) = ctx.grant_of(&resource.tags) {
            live_by_grant.entry(grant).or_default().push(format!("{:?} {}", resource.kind, resource.id));
        }
    }
    live_by_grant
        .iter()
        .filter(|(grant, _)| ctx.replay.settled.contains_key(grant))
        .map(|(grant, held)| {
            Violation::safety(names::TEARDOWN, format!("grant {grant} is settled but EC2 still holds {held:?}"))
        })
        .collect()
}
