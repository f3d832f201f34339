//! Idempotency: at most one instance per grant, ever (crashes, lost responses and retries
//! included: a retried RunInstances reuses its ClientToken).

use std::collections::BTreeMap;

use backend_api::GrantId;

use super::{Context, Violation, names};

/// Counts the instances ever launched per grant.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut per_grant: BTreeMap<GrantId, Vec<&str>> = BTreeMap::new();
    for instance in &ctx.instances {
        if let Some(grant) = ctx.grant_of(&instance.tags) {
            per_grant.entry(grant).or_default().push(&instance.instance_id);
        }
    }
    per_grant
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(grant, ids)| {
            Violation::safety(names::IDEMPOTENCY, format!("grant {grant} had {} instances: {ids:?}", ids.len()))
        })
        .collect()
}
