//! Group commit: one ledger shared by concurrent tasks, whose appends share writes and `fsync`s.
//!
//! An append stages its record in the [`Books`] (validated, sequenced, visible to queries) under
//! a short lock, then waits until the record is durable. The first waiter to find the store free
//! leads: it takes every record staged so far, writes them with one store append (one `fsync`
//! for the file store) and settles them; the others wait for its word and return, or lead the
//! next group if their record came too late for this one. While a leader syncs, new appends
//! stage freely, so under load each `fsync` carries every append that arrived during the last
//! one (the scheme of PostgreSQL's and InnoDB's group commit).
//!
//! No append returns before its record is durable, so "recorded before the next step starts"
//! holds for every caller. A failed write undoes every record past the durable ones (those
//! written and those staged since, which were validated against them) and fails each of their
//! appends with the store's error.
//!
//! The leader writes on the thread it runs on, as a [`Ledger`] does. With a store that never
//! blocks (the simulator's memory store) and a single-threaded runtime no task ever finds a
//! leader at work, so appends complete in the order they are made and a run stays deterministic.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use backend_api::GrantId;
use tokio::sync::watch;

use crate::event::Event;
use std::sync::Arc;

use crate::ledger::{Books, Group, Ledger, LedgerError};
use crate::snapshot::SnapshotData;
use crate::state::GrantState;
use crate::store::{EventStore, StoreError};

/// A ledger shared by concurrent tasks (see the module documentation).
#[derive(Debug)]
pub struct SharedLedger<S: EventStore> {
    books: Mutex<Books>,
    /// Held by the leader of a group while it writes.
    store: Mutex<S>,
    /// Counts settled groups: waiters wake on each.
    settled: watch::Sender<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: EventStore> SharedLedger<S> {
    /// Shares `ledger`.
    pub fn new(ledger: Ledger<S>) -> Self {
        let (store, books) = ledger.into_parts();
        Self { books: Mutex::new(books), store: Mutex::new(store), settled: watch::Sender::new(0) }
    }

    /// Records `event` for `grant` at `at_unix_ms`; returns, once it is durable, the grant's state
    /// right after it.
    ///
    /// Nothing is staged when the event is impossible ([`LedgerError::Apply`]); when the store
    /// fails ([`LedgerError::Store`]) nothing of it is acknowledged and the books are as before.
    pub async fn append(&self, grant: GrantId, at_unix_ms: u64, event: Event) -> Result<GrantState, LedgerError> {
        let (group, state) = {
            let mut books = lock(&self.books);
            books.stage(grant, at_unix_ms, event)?;
            (books.open_group(), books.grant(&grant).cloned())
        };
        self.durable(&group).await?;
        Ok(state.expect("a grant whose record was staged is in the books"))
    }

    /// Records the events `decide` returns, looking at the books atomically with the staging (no
    /// other append comes between), with one durable write; all or none. Returns what `decide`
    /// returned besides the events.
    pub async fn append_with<T>(
        &self,
        decide: impl FnOnce(&Books) -> (Vec<(GrantId, u64, Event)>, T),
    ) -> Result<T, LedgerError> {
        let (group, value) = {
            let mut books = lock(&self.books);
            let (events, value) = decide(&books);
            if events.is_empty() {
                return Ok(value);
            }
            books.stage_all(events)?;
            (books.open_group(), value)
        };
        self.durable(&group).await?;
        Ok(value)
    }

    /// Runs `f` on the books (staged records included, see [`Books`]).
    pub fn with_books<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        f(&lock(&self.books))
    }

    /// Asks the store to recover from a failed append (see [`EventStore::heal`]).
    pub fn heal(&self) -> Result<(), LedgerError> {
        let healed = lock(&self.store).heal();
        // An appender that found the store held while it healed waits for a word.
        self.settled.send_modify(|n| *n += 1);
        Ok(healed?)
    }

    /// Runs `f` on the store, while no group is being written.
    pub fn with_store<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        let value = f(&lock(&self.store));
        // As in `heal`: whoever found the store held waits for a word.
        self.settled.send_modify(|n| *n += 1);
        value
    }

    /// Waits until `group` is settled, leading a write when the store is free.
    async fn durable(&self, group: &Arc<Group>) -> Result<(), StoreError> {
        let mut watcher = self.settled.subscribe();
        loop {
            watcher.borrow_and_update();
            if let Some(outcome) = group.outcome() {
                return outcome;
            }
            let led = match self.store.try_lock() {
                Ok(store) => self.lead(store),
                Err(TryLockError::Poisoned(poisoned)) => self.lead(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => false,
            };
            if !led {
                // A leader is writing: its word comes after it lets go of the store, so this
                // wakes either to find the ticket settled or to lead the next group.
                let _ = watcher.changed().await;
            }
        }
    }

    /// Saves a snapshot of the durable books through `store`, which the caller holds so that no
    /// other write comes between. The books are copied under their lock (appends stage again as
    /// soon as it is released); the snapshot is written while the store is held, so the next
    /// group's write waits for it. Its failure fails no append: the store keeps the reason.
    fn snapshot(books: &Mutex<Books>, store: &mut S) {
        let (records, hash_state, grants) = {
            let books = lock(books);
            (books.record_count(), books.hash_state(), books.durable_grants().into_owned())
        };
        let _ = store.save_snapshot(&SnapshotData { records, hash_state: &hash_state, grants: &grants });
    }

    /// Writes every staged record with one store append and settles them, then tells waiters.
    /// Returns `true`.
    fn lead(&self, mut store: MutexGuard<'_, S>) -> bool {
        let taken = {
            let mut books = lock(&self.books);
            books.has_staged().then(|| books.take_staged())
        };
        if let Some((records, through, group)) = taken {
            let result = store.append(&records);
            // Settled while the store is still held: no other group can fail and undo these
            // records before they are marked durable.
            lock(&self.books).settle_group(through, &records, &group, result.as_ref().map(|_| ()));
            if result.is_ok() && store.snapshot_due() && !store.start_snapshot() {
                Self::snapshot(&self.books, &mut store);
            }
        }
        drop(store);
        self.settled.send_modify(|n| *n += 1);
        true
    }
}
