//! Ledger: the log as stored decodes (through the file format's own decoder) and replays to
//! exactly the live ledger, grant by grant. The replay is also what `metering`, `teardown` and
//! `early-end` read: a usage that never reached the store was never billed.

use std::collections::BTreeMap;

use backend_api::{GrantId, UsageMetrics};
use sim_ec2::fxhash::FxHashMap;
use usage_ledger::{Event, GrantState, TerminationReason, apply};

use super::{Context, Violation, names};
use crate::framestore::{FrameStore, decode_frames};

/// The stored log, decoded and folded as far as it has been read.
#[derive(Debug, Default)]
pub struct Replay {
    offset: usize,
    /// Records decoded.
    pub records: u64,
    /// Every grant's state, folded with `usage_ledger::apply` (looked up, never iterated: the
    /// checkers ask it about one grant at a time, thousands of times per check).
    pub states: FxHashMap<GrantId, GrantState>,
    /// The usage each settled grant was settled with (its `GrantSettled` event).
    pub settled: BTreeMap<GrantId, UsageMetrics>,
    /// The reason of each grant's first `TerminationRequested` (looked up, never iterated).
    pub first_reason: FxHashMap<GrantId, TerminationReason>,
    /// Why the log stopped decoding or replaying, if it did.
    pub error: Option<String>,
}

impl Replay {
    /// Decodes and folds whatever the store gained since the last call.
    pub fn absorb(&mut self, store: &FrameStore) {
        if self.error.is_some() {
            return;
        }
        let (decoded, used, error) = store.with_bytes_from(self.offset, |bytes| decode_frames(bytes, self.offset));
        self.offset += used;
        self.error = error;
        for record in decoded {
            match apply(self.states.get(&record.grant), &record) {
                Ok(state) => {
                    self.states.insert(record.grant, state);
                }
                Err(err) => {
                    self.error = Some(format!("the stored log does not replay: {err}"));
                    return;
                }
            }
            self.records += 1;
            match record.event {
                Event::GrantSettled { usage } => {
                    self.settled.insert(record.grant, usage);
                }
                Event::TerminationRequested { reason } => {
                    self.first_reason.entry(record.grant).or_insert(reason);
                }
                Event::GrantRetried { .. } => {
                    self.first_reason.remove(&record.grant);
                    self.settled.remove(&record.grant);
                }
                _ => {}
            }
        }
    }
}

/// Compares the replay with the live ledger.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    if let Some(error) = &ctx.replay.error {
        violations.push(Violation::safety(names::LEDGER, error.clone()));
        return violations;
    }
    ctx.backend.with_ledger(|live| {
        if live.record_count() != ctx.replay.records {
            violations.push(Violation::safety(
                names::LEDGER,
                format!(
                    "the store holds {} records, the live ledger {}: an acknowledged append is missing",
                    ctx.replay.records,
                    live.record_count()
                ),
            ));
        }
        // Both sides are in grant order, so the replay is walked alongside the live ledger
        // rather than searched for each grant; a grant not met on the walk is looked up.
        for (grant, state) in live.grants() {
            if ctx.replay.states.get(grant) != Some(state) {
                violations.push(Violation::safety(
                    names::LEDGER,
                    format!("grant {grant}: replaying the stored log gives another state than the live ledger"),
                ));
                break;
            }
        }
    });
    violations
}
