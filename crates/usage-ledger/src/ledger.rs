//! The ledger: the fold kept up to date in memory over a durable store, and the queries the
//! backend asks of it.
//!
//! The in-memory side is [`Books`]: every grant's state, the hash of the records, and the records
//! staged but not yet durable, with what each replaced so a failed write can be undone. A
//! [`Ledger`] owns books and a store and makes each append durable before it returns; a
//! [`SharedLedger`](crate::SharedLedger) shares them between tasks and lets concurrent appends
//! share one write and one `fsync` (group commit).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use backend_api::{GrantId, UsageMetrics};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use crate::event::{Event, Record};
use crate::file::encode_payload;
use crate::file_store::{FileOptions, FileStore, ReplayReport, lock_ledger, read_anchor};
use crate::snapshot::{Snapshot, SnapshotData, list_snapshots, read_snapshot};
use crate::state::{ApplyError, GrantState, apply};
use crate::store::{EventStore, MemoryStore, StoreError};
use replay::Replay;

mod replay;

/// A ledger operation that failed. Nothing was acknowledged and the in-memory state is
/// unchanged.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The event cannot follow the grant's earlier events; nothing was written.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A staged record's place in the order of appends: the count of records staged before it, plus
/// one. Tickets only grow, across failures too.
pub(crate) type Ticket = u64;

/// The records one store write carries, as their appenders see it: the write's outcome, once
/// settled. Each staged record belongs to the open group until a leader takes it.
#[derive(Debug, Default)]
pub(crate) struct Group {
    outcome: OnceLock<Result<(), StoreError>>,
}

impl Group {
    /// The group's outcome, once its write is settled (each appender gets its own copy of an
    /// error).
    pub(crate) fn outcome(&self) -> Option<Result<(), StoreError>> {
        self.outcome.get().map(|r| r.as_ref().map(|_| ()).map_err(StoreError::duplicate))
    }

    fn settle(&self, result: Result<(), &StoreError>) {
        let _ = self.outcome.set(result.map_err(StoreError::duplicate));
    }
}

/// Every grant's state, with the records staged on top of what is durable.
///
/// Queries see staged records as soon as they are staged: an appender's own call returns only
/// once its record is durable, but another task looking at the grant meanwhile sees it (as it
/// would see any fact the appender learnt from EC2 before recording it). When a write fails,
/// every staged record is undone, in reverse order, and the books are as they were at the last
/// durable record.
///
/// Memory: settled grants are compacted to their final usage (a few dozen bytes each); only
/// live grants keep their details.
#[derive(Debug, Default)]
pub struct Books {
    grants: BTreeMap<GrantId, GrantState>,
    hasher: Sha256,
    /// Durable records, replayed and appended.
    records: u64,
    scratch: Vec<u8>,
    /// Records staged and not yet handed to a store, in order.
    staged: Vec<Record>,
    /// For each record past `settled` (handed to a store or still staged), in order: its grant
    /// and that grant's state before it.
    undo: Vec<(GrantId, Option<GrantState>)>,
    /// Tickets issued so far.
    issued: Ticket,
    /// Every ticket up to this one is settled: durable, or failed and undone.
    settled: Ticket,
    /// The group the records staged now belong to.
    open: Arc<Group>,
}

impl Books {
    pub(crate) fn replay(&mut self, record: &Record, payload: &[u8]) -> Result<(), LedgerError> {
        match self.grants.get_mut(&record.grant) {
            Some(state) => state.step(record)?,
            None => {
                self.grants.insert(record.grant, GrantState::first(record)?);
            }
        }
        self.hasher.update(payload);
        self.records += 1;
        Ok(())
    }

    /// Books resumed from a snapshot: its grants, record count and hash state. Fails, saying
    /// why, when the snapshot's hash state does not load (use an older snapshot or replay the
    /// whole log); open a ledger over them with [`Ledger::open_after`].
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Books, String> {
        let state = SerializedState::<Sha256>::try_from(&snapshot.hash_state[..]).map_err(|_| {
            format!("the records hash state is {} bytes, not a SHA-256 state", snapshot.hash_state.len())
        })?;
        let hasher = Sha256::deserialize(&state).map_err(|_| "the records hash state does not load".to_string())?;
        Ok(Books { grants: snapshot.grants, hasher, records: snapshot.records, ..Books::default() })
    }

    /// The SHA-256 state of the records hash after the durable records.
    pub(crate) fn hash_state(&self) -> Vec<u8> {
        self.hasher.serialize().to_vec()
    }

    /// Every grant's state after the durable records alone: the books themselves when nothing
    /// is staged or being written, else a copy with each such record's grant put back as it was
    /// before the first of them.
    pub(crate) fn durable_grants(&self) -> Cow<'_, BTreeMap<GrantId, GrantState>> {
        if self.undo.is_empty() {
            return Cow::Borrowed(&self.grants);
        }
        let mut grants = self.grants.clone();
        // Newest first, so that each grant ends as it was before its oldest undurable record.
        for (grant, before) in self.undo.iter().rev() {
            match before {
                Some(state) => grants.insert(*grant, state.clone()),
                None => grants.remove(grant),
            };
        }
        Cow::Owned(grants)
    }

    /// Validates `event` against the grant's state (staged records included), assigns the
    /// grant's next sequence number and stages the record. Nothing changes when it is impossible.
    pub(crate) fn stage(&mut self, grant: GrantId, at_unix_ms: u64, event: Event) -> Result<Ticket, ApplyError> {
        let current = self.grants.get(&grant);
        let seq = current.map_or(0, GrantState::next_seq);
        let record = Record { grant, seq, at_unix_ms, event };
        let next = apply(current, &record)?;
        let before = self.grants.insert(grant, next);
        self.undo.push((grant, before));
        self.staged.push(record);
        self.issued += 1;
        Ok(self.issued)
    }

    /// Stages several events, all or none: on the first impossible one, the ones this call
    /// staged are undone and the error returned. Returns the last ticket (or the last issued
    /// one when `events` is empty).
    pub(crate) fn stage_all(
        &mut self,
        events: impl IntoIterator<Item = (GrantId, u64, Event)>,
    ) -> Result<Ticket, ApplyError> {
        let first = self.issued;
        for (grant, at_unix_ms, event) in events {
            if let Err(err) = self.stage(grant, at_unix_ms, event) {
                self.unstage_after(first);
                return Err(err);
            }
        }
        Ok(self.issued)
    }

    /// Undoes the records staged after ticket `keep`, newest first. They must still be staged
    /// (not handed to a store).
    fn unstage_after(&mut self, keep: Ticket) {
        while self.issued > keep {
            self.staged.pop();
            self.undo_one();
            self.issued -= 1;
        }
    }

    fn undo_one(&mut self) {
        if let Some((grant, before)) = self.undo.pop() {
            match before {
                Some(state) => {
                    self.grants.insert(grant, state);
                }
                None => {
                    self.grants.remove(&grant);
                }
            }
        }
    }

    /// Whether any record is staged and not yet taken.
    pub(crate) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The group a record staged now belongs to.
    pub(crate) fn open_group(&self) -> Arc<Group> {
        self.open.clone()
    }

    /// Hands every staged record to the caller, to write; returns them, the last ticket and
    /// their group, and opens a new group.
    pub(crate) fn take_staged(&mut self) -> (Vec<Record>, Ticket, Arc<Group>) {
        let group = std::mem::take(&mut self.open);
        (std::mem::take(&mut self.staged), self.issued, group)
    }

    /// Settles the write of `records` (taken by [`Books::take_staged`] up to ticket `through`,
    /// with `group`): durable on `Ok`; on `Err`, every record past the settled ones is undone,
    /// those written and those staged since (they were validated against the failed ones), and
    /// both groups fail with the store's error.
    pub(crate) fn settle_group(
        &mut self,
        through: Ticket,
        records: &[Record],
        group: &Group,
        result: Result<(), &StoreError>,
    ) {
        self.settle(through, records, result);
        group.settle(result);
        if result.is_err() {
            std::mem::take(&mut self.open).settle(result);
        }
    }

    /// [`Books::settle_group`] without the groups, for a single owner.
    pub(crate) fn settle(&mut self, through: Ticket, records: &[Record], result: Result<(), &StoreError>) {
        match result {
            Ok(()) => {
                for record in records {
                    self.scratch.clear();
                    // The store encoded the same record a moment ago; this cannot fail.
                    if encode_payload(record, &mut self.scratch).is_ok() {
                        self.hasher.update(&self.scratch);
                    }
                }
                self.records += records.len() as u64;
                let done = usize::try_from(through - self.settled).unwrap_or(usize::MAX).min(self.undo.len());
                self.undo.drain(..done);
                self.settled = through;
            }
            Err(_) => {
                self.staged.clear();
                while !self.undo.is_empty() {
                    self.undo_one();
                }
                self.settled = self.issued;
            }
        }
    }

    /// The state of one grant.
    pub fn grant(&self, id: &GrantId) -> Option<&GrantState> {
        self.grants.get(id)
    }

    /// Every grant, settled or not, in id order.
    pub fn grants(&self) -> impl Iterator<Item = (&GrantId, &GrantState)> {
        self.grants.iter()
    }

    /// The grants recovery must look at: every grant not settled (a settled grant holds nothing),
    /// in id order.
    pub fn live_grants(&self) -> impl Iterator<Item = (&GrantId, &GrantState)> {
        self.grants.iter().filter(|(_, state)| !state.is_settled())
    }

    /// The usage of one grant so far (final once settled).
    pub fn usage(&self, id: &GrantId) -> Option<UsageMetrics> {
        self.grants.get(id).map(GrantState::usage)
    }

    /// The usage of every grant, summed (saturating).
    pub fn total_usage(&self) -> UsageMetrics {
        self.grants.values().map(GrantState::usage).sum()
    }

    /// How many durable records the ledger holds (replayed and appended).
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// SHA-256 over the payload encoding of every durable record, replayed and appended, in
    /// order: two ledgers with the same history have the same hash.
    pub fn records_hash(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// Every grant's state over a store, for one owner.
///
/// Each [`Ledger::append`] validates the event with [`apply`] first (nothing is written when it
/// is impossible), assigns the grant's next sequence number, persists the record (durable when
/// the call returns) and keeps the new state in memory; when the store fails, the state is as
/// before the call.
#[derive(Debug)]
pub struct Ledger<S: EventStore> {
    store: S,
    books: Books,
}

impl Ledger<MemoryStore> {
    /// An empty ledger in memory.
    pub fn in_memory() -> Self {
        Self::empty(MemoryStore::new())
    }

    /// A ledger over a memory store, replaying what the store (or a clone of it) already holds,
    /// as a restarted process would.
    pub fn reopen_memory(store: MemoryStore) -> Result<Self, LedgerError> {
        let records = store.records();
        Self::open(store, records)
    }
}

/// What opening a file ledger did (see [`Ledger::open_file_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOpenReport {
    /// What was replayed after the snapshot (or from the start), and the torn tail truncated.
    pub replay: ReplayReport,
    /// The snapshot the books were resumed from, if any.
    pub snapshot: Option<PathBuf>,
    /// Newer snapshots that were skipped, and why (torn, corrupt, of another version, or the
    /// replay after them failed).
    pub skipped_snapshots: Vec<(PathBuf, String)>,
}

impl Ledger<FileStore> {
    /// Opens (creating if missing) the file ledger at `path` with the default [`FileOptions`]
    /// (see [`Ledger::open_file_with`]). A torn tail is truncated and reported.
    pub fn open_file(path: impl AsRef<Path>) -> Result<(Self, ReplayReport), LedgerError> {
        let (ledger, report) = Self::open_file_with(path, FileOptions::default())?;
        Ok((ledger, report.replay))
    }

    /// Opens (creating if missing) the file ledger at `path`: resumes the books from the newest
    /// snapshot that reads back whole and replays the segments after its position, as a stream
    /// so that memory stays proportional to the grants, not to the history. A snapshot that
    /// fails any check, or whose replay fails, is skipped for the one before it, and after the
    /// last for a full replay, whose error (if it fails too) is the one returned. A torn tail
    /// of the last segment is truncated and reported. When the options ask for snapshots and
    /// none was usable (a ledger written before snapshots), or the tail is due one, a snapshot
    /// is taken before this returns.
    pub fn open_file_with(path: impl AsRef<Path>, options: FileOptions) -> Result<(Self, FileOpenReport), LedgerError> {
        let path = path.as_ref();
        let lock = lock_ledger(path)?;
        let relock =
            || lock.try_clone().map_err(|source| StoreError::Io { op: "lock", path: path.to_path_buf(), source });
        let mut skipped_snapshots = Vec::new();
        for (_, snapshot_path) in list_snapshots(path)? {
            let snapshot = match read_snapshot(&snapshot_path) {
                Ok(snapshot) => snapshot,
                Err(reason) => {
                    skipped_snapshots.push((snapshot_path, reason));
                    continue;
                }
            };
            let (position, anchor) = (snapshot.position, snapshot.anchor);
            let anchored = match anchor {
                Some(anchor) => read_anchor(path, anchor.at)?.is_some_and(|header| header == anchor.header),
                None => snapshot.records == 0,
            };
            if !anchored {
                skipped_snapshots.push((snapshot_path, "its last frame does not match the log's".into()));
                continue;
            }
            let books = match Books::from_snapshot(snapshot) {
                Ok(books) => books,
                Err(reason) => {
                    skipped_snapshots.push((snapshot_path, reason));
                    continue;
                }
            };
            let mut replaying = Replay::new(books);
            let opened = FileStore::open_locked(path, options, relock()?, Some(position), |_, record, payload| {
                replaying.record(&record, payload)
            });
            match opened {
                Ok((mut store, replay)) => {
                    store.restart_snapshot_clock(anchor.map(|a| a.at));
                    let mut ledger = Self { store, books: replaying.finish() };
                    ledger.snapshot_if_due();
                    let report = FileOpenReport { replay, snapshot: Some(snapshot_path), skipped_snapshots };
                    return Ok((ledger, report));
                }
                Err(err) => skipped_snapshots.push((snapshot_path, format!("the replay after it failed: {err}"))),
            }
        }
        let mut replaying = Replay::new(Books::default());
        let (store, replay) = FileStore::open_locked(path, options, relock()?, None, |_, record, payload| {
            replaying.record(&record, payload)
        })?;
        let mut ledger = Self { store, books: replaying.finish() };
        // A ledger with records and no usable snapshot (written before snapshots, or every
        // snapshot damaged) gains one now, when its owner wants snapshots at all.
        if options.snapshots.is_some() && ledger.books.records > 0 {
            let _ = ledger.snapshot();
        }
        Ok((ledger, FileOpenReport { replay, snapshot: None, skipped_snapshots }))
    }
}

impl<S: EventStore> Ledger<S> {
    /// A ledger over `store`, which holds nothing yet.
    pub fn empty(store: S) -> Self {
        Self { store, books: Books::default() }
    }

    /// A ledger over `store`, whose existing records are `replayed` (as [`FileStore::open`]
    /// returns them). Fails on the first impossible transition among them.
    pub fn open(store: S, replayed: Vec<Record>) -> Result<Self, LedgerError> {
        let mut replaying = Replay::new(Books::default());
        let mut payload = Vec::new();
        for record in &replayed {
            payload.clear();
            encode_payload(record, &mut payload)?;
            replaying.record(record, &payload)?;
        }
        Ok(Self { store, books: replaying.finish() })
    }

    /// A ledger over `store`, whose existing records are `replayed` with their payloads as
    /// stored (the bytes [`encode_payload`](crate::file::encode_payload) wrote, perhaps in an
    /// older version). The records hash is over the stored bytes, as [`Ledger::open_file`]'s is,
    /// so a ledger copied between stores keeps its hash. Fails on the first impossible
    /// transition.
    pub fn open_replayed<P: AsRef<[u8]>>(
        store: S,
        replayed: impl IntoIterator<Item = (Record, P)>,
    ) -> Result<Self, LedgerError> {
        Self::open_after(store, Books::default(), replayed)
    }

    /// A ledger over `store`, resumed from `books` (see [`Books::from_snapshot`]) with the
    /// records after the snapshot `replayed`, with their payloads as stored. Folding a snapshot
    /// and the tail after it gives the books, record count and records hash of a replay of the
    /// whole log. Fails on the first impossible transition in the tail.
    pub fn open_after<P: AsRef<[u8]>>(
        store: S,
        books: Books,
        replayed: impl IntoIterator<Item = (Record, P)>,
    ) -> Result<Self, LedgerError> {
        let mut replaying = Replay::new(books);
        for (record, payload) in replayed {
            replaying.record(&record, payload.as_ref())?;
        }
        Ok(Self { store, books: replaying.finish() })
    }

    /// Writes what is staged; on failure everything staged is undone.
    fn commit(&mut self) -> Result<(), LedgerError> {
        let (records, through, _) = self.books.take_staged();
        if records.is_empty() {
            return Ok(());
        }
        let result = self.store.append(&records);
        self.books.settle(through, &records, result.as_ref().map(|_| ()));
        result?;
        self.snapshot_if_due();
        Ok(())
    }

    /// Takes a snapshot when the store's policy says one is due. Its failure does not fail the
    /// append that came before (that record is durable); the store keeps the reason.
    fn snapshot_if_due(&mut self) {
        if self.store.snapshot_due() && !self.store.start_snapshot() {
            let _ = self.snapshot();
        }
    }

    /// Saves a snapshot of the books now (a store that keeps none does nothing).
    pub fn snapshot(&mut self) -> Result<(), LedgerError> {
        let hash_state = self.books.hash_state();
        let grants = self.books.durable_grants();
        let data = SnapshotData { records: self.books.records, hash_state: &hash_state, grants: &grants };
        Ok(self.store.save_snapshot(&data)?)
    }

    /// The same books over another store, e.g. the store boxed behind a trait object.
    pub fn map_store<T: EventStore>(self, f: impl FnOnce(S) -> T) -> Ledger<T> {
        Ledger { store: f(self.store), books: self.books }
    }

    /// Records `event` for `grant` at `at_unix_ms` and returns the grant's new state.
    ///
    /// Nothing is written when the event is impossible ([`LedgerError::Apply`]) or when the store
    /// fails ([`LedgerError::Store`]); in both cases the state is unchanged.
    pub fn append(&mut self, grant: GrantId, at_unix_ms: u64, event: Event) -> Result<&GrantState, LedgerError> {
        self.books.stage(grant, at_unix_ms, event)?;
        self.commit()?;
        Ok(self.books.grant(&grant).expect("a grant whose record is durable is in the books"))
    }

    /// Records several events with one durable write (group commit). All are validated first,
    /// in order; when any is impossible or the store fails nothing is written or changed.
    pub fn append_batch(&mut self, events: impl IntoIterator<Item = (GrantId, u64, Event)>) -> Result<(), LedgerError> {
        self.books.stage_all(events)?;
        self.commit()
    }

    /// Asks the store to recover from a failed append (see [`EventStore::heal`]).
    pub fn heal(&mut self) -> Result<(), LedgerError> {
        Ok(self.store.heal()?)
    }

    /// The in-memory side: every grant's state and the records' hash.
    pub fn books(&self) -> &Books {
        &self.books
    }

    /// The state of one grant.
    pub fn grant(&self, id: &GrantId) -> Option<&GrantState> {
        self.books.grant(id)
    }

    /// Every grant, settled or not, in id order.
    pub fn grants(&self) -> impl Iterator<Item = (&GrantId, &GrantState)> {
        self.books.grants()
    }

    /// Every grant not settled, in id order (see [`Books::live_grants`]).
    pub fn live_grants(&self) -> impl Iterator<Item = (&GrantId, &GrantState)> {
        self.books.live_grants()
    }

    /// The usage of one grant so far (final once settled).
    pub fn usage(&self, id: &GrantId) -> Option<UsageMetrics> {
        self.books.usage(id)
    }

    /// The usage of every grant, summed (saturating).
    pub fn total_usage(&self) -> UsageMetrics {
        self.books.total_usage()
    }

    /// How many records the ledger holds (replayed and appended).
    pub fn record_count(&self) -> u64 {
        self.books.record_count()
    }

    /// SHA-256 over the payload encoding of every record, replayed and appended, in order (see
    /// [`Books::records_hash`]).
    pub fn records_hash(&self) -> [u8; 32] {
        self.books.records_hash()
    }

    /// The store, e.g. to clone a [`MemoryStore`] for a simulated restart.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store and the books, apart: what a [`SharedLedger`](crate::SharedLedger) keeps.
    pub fn into_parts(self) -> (S, Books) {
        (self.store, self.books)
    }
}
