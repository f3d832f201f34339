//! The phases' way into the journal: appends stamped with the clock, and the fenced-append rule
//! (a write the store fenced loses the lease).

use backend_api::{BackendError, GrantId};
use usage_ledger::{Books, Event, GrantState};

use super::AwsBackend;
use crate::journal::NotWritten;

impl AwsBackend {
    /// Appends `event` for `grant`, stamped with the clock; returns once it is durable.
    pub(crate) async fn record(&self, grant: GrantId, event: Event) -> Result<GrantState, BackendError> {
        let now = self.now_ms();
        let result = self.shared.journal.record(grant, now, event).await;
        crate::telemetry::ledger_append(self.now_ms().saturating_sub(now), 1, result.is_ok());
        self.written(result)
    }

    /// Appends the events `decide` returns, looking at the books atomically with the append,
    /// with one durable write; returns what `decide` returned besides the events.
    pub(crate) async fn record_with<T>(
        &self,
        decide: impl FnOnce(&Books) -> (Vec<(GrantId, u64, Event)>, T),
    ) -> Result<T, BackendError> {
        let started = self.now_ms();
        let mut events = 0;
        let result = self
            .shared
            .journal
            .record_with(|books| {
                let (chosen, value) = decide(books);
                events = chosen.len();
                (chosen, value)
            })
            .await;
        if events > 0 || result.is_err() {
            crate::telemetry::ledger_append(self.now_ms().saturating_sub(started), events, result.is_ok());
        }
        self.written(result)
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

    /// Refuses new work while the ledger cannot be written, after asking the store to heal.
    pub(super) fn ensure_ledger_writable(&self) -> Result<(), BackendError> {
        let result = self.shared.journal.ensure_writable();
        self.written(result)
    }

    /// The fenced-append rule: a write the store fenced means another bridge holds the lease,
    /// and this one stops acting.
    fn written<T>(&self, result: Result<T, NotWritten>) -> Result<T, BackendError> {
        result.map_err(|not| {
            if let Some(why) = &not.fenced {
                self.lose_lease(why);
            }
            not.error
        })
    }
}
