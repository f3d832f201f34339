//! Appending to the usage ledger, and the degraded state a ledger that cannot be written puts the
//! backend in.

use backend_api::{BackendError, GrantId};
use usage_ledger::{Books, Event, GrantState};

use super::{AwsBackend, local};
use crate::pacing::lock;

impl AwsBackend {
    /// Appends `event` for `grant`, stamped with the clock; returns once it is durable.
    pub(crate) async fn record(&self, grant: GrantId, event: Event) -> Result<GrantState, BackendError> {
        let now = self.now_ms();
        let result = self.inner.ledger.append(grant, now, event).await;
        self.note_ledger(result.as_ref().err());
        result.map_err(local)
    }

    /// Appends the events `decide` returns, looking at the books atomically with the append,
    /// with one durable write; returns what `decide` returned besides the events.
    pub(crate) async fn record_with<T>(
        &self,
        decide: impl FnOnce(&Books) -> (Vec<(GrantId, u64, Event)>, T),
    ) -> Result<T, BackendError> {
        let mut wrote = false;
        let result = self
            .inner
            .ledger
            .append_with(|books| {
                let (events, value) = decide(books);
                wrote = !events.is_empty();
                (events, value)
            })
            .await;
        // Only a write says the store takes appends again: a decision to append nothing never
        // reached it, so it must not clear a failure (the bridge would take new grants on a
        // store that still fails).
        if result.is_err() || wrote {
            self.note_ledger(result.as_ref().err());
        }
        result.map_err(local)
    }

    /// Appends the event `decide` returns for the grant's current state, atomically with the
    /// look at the state; nothing when it returns `None`.
    pub(crate) async fn record_if(
        &self,
        grant: GrantId,
        decide: impl FnOnce(Option<&GrantState>) -> Option<Event>,
    ) -> Result<(), BackendError> {
        let now = self.now_ms();
        self.record_with(|l| (decide(l.grant(&grant)).map(|e| (grant, now, e)).into_iter().collect(), ())).await
    }

    /// Keeps track of whether the ledger takes appends (see `Inner::ledger_failure`).
    fn note_ledger(&self, failure: Option<&usage_ledger::LedgerError>) {
        let mut slot = lock(&self.inner.ledger_failure);
        match failure {
            Some(usage_ledger::LedgerError::Store(err)) => {
                if slot.is_none() {
                    tracing::error!(error = %err, "the usage ledger cannot be written: refusing new grants, still terminating");
                }
                *slot = Some(err.to_string());
                if matches!(err, usage_ledger::StoreError::Fenced { .. }) {
                    drop(slot);
                    self.lose_lease(&err.to_string());
                }
            }
            Some(_) => {}
            None => {
                if slot.take().is_some() {
                    tracing::info!("the usage ledger takes appends again");
                }
            }
        }
    }

    /// Refuses new work while the ledger cannot be written, after asking the store to heal.
    pub(super) fn ensure_ledger_writable(&self) -> Result<(), BackendError> {
        if lock(&self.inner.ledger_failure).is_none() {
            return Ok(());
        }
        let healed = self.inner.ledger.heal();
        self.note_ledger(healed.as_ref().err());
        match lock(&self.inner.ledger_failure).as_ref() {
            None => Ok(()),
            Some(err) => Err(BackendError::Local(format!(
                "the usage ledger cannot be written ({err}): new grants are refused until it can (free space or fix the disk under ledger_path); grants in flight are still terminated at their deadline"
            ))),
        }
    }
}
