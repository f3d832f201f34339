//! `Journal`: the only writer of the usage ledger. It appends (with group commit, through
//! `SharedLedger`), and keeps the backend's degraded state: while the store refuses appends, new
//! grants are refused and terminations go on.

use std::sync::Mutex;

use backend_api::{BackendError, GrantId};
use usage_ledger::{Books, Event, GrantState, LedgerError, SharedLedger, StoreError};

use crate::backend::{BackendLedger, DynStore};
use crate::errors::local;
use crate::pacing::lock;

/// The ledger and whether it takes appends.
pub(crate) struct Journal {
    /// Shared by every task, with group commit: concurrent grants' appends share an `fsync`.
    ledger: SharedLedger<DynStore>,
    /// Why the ledger last failed to take an append, while it has not taken one since: the
    /// backend is degraded, refuses new grants and keeps terminating.
    failure: Mutex<Option<String>>,
}

/// A write the ledger did not take.
pub(crate) struct NotWritten {
    /// What the caller reports.
    pub(crate) error: BackendError,
    /// Set when the store fenced the write: another bridge holds the lease, and this one must
    /// stop acting (the fenced-append rule, `AwsBackend::lose_lease`).
    pub(crate) fenced: Option<String>,
}

impl Journal {
    /// A journal over `ledger`, already replayed.
    pub(crate) fn new(ledger: BackendLedger) -> Self {
        Self { ledger: SharedLedger::new(ledger), failure: Mutex::new(None) }
    }

    /// Runs `f` on the books (every grant's state).
    pub(crate) fn with_books<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        self.ledger.with_books(f)
    }

    /// True while the ledger refuses appends.
    pub(crate) fn degraded(&self) -> bool {
        lock(&self.failure).is_some()
    }

    /// Appends `event` for `grant` at `now`; returns once it is durable.
    pub(crate) async fn record(&self, grant: GrantId, now: u64, event: Event) -> Result<GrantState, NotWritten> {
        let result = self.ledger.append(grant, now, event).await;
        let fenced = self.note(result.as_ref().err());
        result.map_err(|err| NotWritten { error: local(err), fenced })
    }

    /// Appends the events `decide` returns, looking at the books atomically with the append,
    /// with one durable write; returns what `decide` returned besides the events.
    pub(crate) async fn record_with<T>(
        &self,
        decide: impl FnOnce(&Books) -> (Vec<(GrantId, u64, Event)>, T),
    ) -> Result<T, NotWritten> {
        let mut wrote = false;
        let result = self
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
        let fenced = if result.is_err() || wrote { self.note(result.as_ref().err()) } else { None };
        result.map_err(|err| NotWritten { error: local(err), fenced })
    }

    /// Refuses new work while the ledger cannot be written, after asking the store to heal.
    pub(crate) fn ensure_writable(&self) -> Result<(), NotWritten> {
        if !self.degraded() {
            return Ok(());
        }
        let healed = self.ledger.heal();
        let fenced = self.note(healed.as_ref().err());
        match lock(&self.failure).as_ref() {
            None => Ok(()),
            Some(err) => Err(NotWritten {
                error: BackendError::Local(format!(
                    "the usage ledger cannot be written ({err}): new grants are refused until it can (free space or fix the disk under ledger_path); grants in flight are still terminated at their deadline"
                )),
                fenced,
            }),
        }
    }

    /// Keeps track of whether the ledger takes appends; returns why, when the store fenced the
    /// write.
    fn note(&self, failure: Option<&LedgerError>) -> Option<String> {
        let mut slot = lock(&self.failure);
        match failure {
            Some(LedgerError::Store(err)) => {
                if slot.is_none() {
                    tracing::error!(error = %err, "the usage ledger cannot be written: refusing new grants, still terminating");
                }
                *slot = Some(err.to_string());
                matches!(err, StoreError::Fenced { .. }).then(|| err.to_string())
            }
            Some(_) => None,
            None => {
                if slot.take().is_some() {
                    tracing::info!("the usage ledger takes appends again");
                }
                None
            }
        }
    }
}
