//! Ledger: replaying the stored log gives exactly the live state.

use usage_ledger::Ledger;

use super::{Context, Violation};

/// Replays the store and compares the hash and every grant's state with the live ledger.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let replayed = match Ledger::reopen_memory(ctx.store.clone()) {
        Ok(ledger) => ledger,
        Err(err) => return vec![Violation::safety("ledger", format!("the stored log does not replay: {err}"))],
    };
    ctx.backend.with_ledger(|live| {
        let mut violations = Vec::new();
        if replayed.records_hash() != live.records_hash() {
            violations.push(Violation::safety(
                "ledger",
                format!(
                    "replayed {} records, live ledger has {}: hashes differ",
                    replayed.record_count(),
                    live.record_count()
                ),
            ));
        }
        let live_states: Vec<_> = live.grants().collect();
        let replayed_states: Vec<_> = replayed.grants().collect();
        if live_states != replayed_states {
            violations.push(Violation::safety(
                "ledger",
                "replaying the log gives other grant states than the live ledger".into(),
            ));
        }
        violations
    })
}
