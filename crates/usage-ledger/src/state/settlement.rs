//! Settlement: `GrantSettled` (final usage, nothing held), and what may follow it (an orphan
//! reaped, a network figure completed, a new attempt).

use backend_api::UsageMetrics;

use super::{ApplyError, GrantState, Impossible, Phase};
use crate::event::{Event, Record};

impl GrantState {
    /// `GrantSettled` of a live grant whose grant clock is now `now`: nothing may be held and
    /// the recorded usage must be the fold's. The grant is compacted.
    pub(super) fn settle(&mut self, record: &Record, now: u64, usage: &UsageMetrics) -> Result<(), ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        let held: Vec<String> = self.held_resources().iter().map(|(kind, id)| format!("{kind:?} {id}")).collect();
        if !held.is_empty() {
            return fail(Impossible::StillHolding { resources: held });
        }
        let computed = self.usage();
        if *usage != computed {
            return fail(Impossible::UsageMismatch { recorded: *usage, computed });
        }
        self.phase = Phase::Settled;
        self.settled_unix_ms = now;
        self.next_seq += 1;
        self.latest_unix_ms = now;
        self.settled_usage = self.base_usage();
        self.live = None;
        self.compact_network();
        Ok(())
    }

    /// The next event of a settled grant (or an orphan tombstone): only informational events
    /// may follow, and a new attempt after a retryable failure.
    pub(super) fn step_settled(&mut self, record: &Record) -> Result<(), ApplyError> {
        match &record.event {
            Event::OrphanReaped { .. } => {}
            Event::NetworkMeasured {
                instance_id,
                bytes_in,
                bytes_out,
                window_start_unix_ms,
                window_end_unix_ms,
                complete,
            } => {
                let bytes = bytes_in.saturating_add(*bytes_out);
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                self.amend_network(record, instance_id, bytes, window, *complete)?;
            }
            Event::GrantRetried { attempt, .. } => self.retried(record, *attempt)?,
            _ => return Err(ApplyError::new(record, Impossible::AfterSettlement)),
        }
        self.next_seq += 1;
        self.latest_unix_ms = self.latest_unix_ms.max(record.at_unix_ms);
        Ok(())
    }
}
