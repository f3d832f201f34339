//! Teardown: a grant the ledger calls settled holds nothing in the simulated EC2.

use std::collections::BTreeMap;

use backend_api::GrantId;

use super::{Context, Violation};

/// Checks every settled grant against the simulator's live resources.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut live_by_grant: BTreeMap<GrantId, Vec<String>> = BTreeMap::new();
    for resource in &ctx.live {
        if let Some(grant) = ctx.grant_of(&resource.tags) {
            live_by_grant.entry(grant).or_default().push(format!("{:?} {}", resource.kind, resource.id));
        }
    }
    ctx.backend.with_ledger(|ledger| {
        live_by_grant
            .iter()
            .filter(|(grant, _)| ledger.grant(grant).is_some_and(|s| s.is_settled()))
            .map(|(grant, held)| {
                Violation::safety("teardown", format!("grant {grant} is settled but EC2 still holds {held:?}"))
            })
            .collect()
    })
}
