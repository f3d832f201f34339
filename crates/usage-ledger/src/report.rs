//! What the ledger tools print of folded grants: `usage-ledger usage` over a file and
//! `ledger-dynamodb usage` over a table print the same shape.

use std::collections::BTreeMap;

use backend_api::{GrantId, UsageMetrics};

use crate::state::GrantState;

/// One grant: `{grant, phase, usage}`.
pub fn grant_json(id: &GrantId, state: &GrantState) -> serde_json::Value {
    serde_json::json!({ "grant": id.to_hex(), "phase": state.phase(), "usage": state.usage() })
}

/// The usage of `grant` alone, or of every grant with their total (`{grants, total}`); `None`
/// when `grant` has no events.
pub fn usage_json(grants: &BTreeMap<GrantId, GrantState>, grant: Option<GrantId>) -> Option<serde_json::Value> {
    match grant {
        Some(id) => grants.get(&id).map(|state| grant_json(&id, state)),
        None => {
            let total: UsageMetrics = grants.values().map(GrantState::usage).sum();
            let list: Vec<_> = grants.iter().map(|(id, state)| grant_json(id, state)).collect();
            Some(serde_json::json!({ "grants": list, "total": total }))
        }
    }
}
