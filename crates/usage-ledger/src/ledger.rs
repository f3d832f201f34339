//! The ledger: the fold kept up to date in memory over a durable store, and the queries the
//! backend asks of it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::Path;

use backend_api::{GrantId, UsageMetrics};
use sha2::{Digest, Sha256};

use crate::event::{Event, Record};
use crate::file::{FileStore, ReplayReport, encode_payload};
use crate::state::{ApplyError, GrantState, apply};
use crate::store::{EventStore, MemoryStore, StoreError};

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

/// Every grant's state over a store.
///
/// Each [`Ledger::append`] validates the event with [`apply`] first (nothing is written when it
/// is impossible), assigns the grant's next sequence number, persists the record (durable when
/// the call returns) and only then updates the state in memory.
///
/// Memory: settled grants are compacted to their final usage (a few dozen bytes each); only
/// live grants keep their details.
#[derive(Debug)]
pub struct Ledger<S: EventStore> {
    store: S,
    grants: BTreeMap<GrantId, GrantState>,
    hasher: Sha256,
    records: u64,
    scratch: Vec<u8>,
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

impl Ledger<FileStore> {
    /// Opens (creating if missing) the file ledger at `path`, replaying it as a stream so that
    /// memory stays proportional to live grants. A torn tail is truncated and reported.
    pub fn open_file(path: impl AsRef<Path>) -> Result<(Self, ReplayReport), LedgerError> {
        let mut grants = BTreeMap::new();
        let mut hasher = Sha256::new();
        let (store, report) = FileStore::open_with(path, |_, record, payload| {
            hasher.update(payload);
            step_in_place(&mut grants, &record)
        })?;
        let ledger = Self { store, grants, hasher, records: report.records, scratch: Vec::new() };
        Ok((ledger, report))
    }
}

fn step_in_place(grants: &mut BTreeMap<GrantId, GrantState>, record: &Record) -> Result<(), LedgerError> {
    match grants.get_mut(&record.grant) {
        Some(state) => state.step(record)?,
        None => {
            grants.insert(record.grant, GrantState::first(record)?);
        }
    }
    Ok(())
}

impl<S: EventStore> Ledger<S> {
    /// A ledger over `store`, which holds nothing yet.
    pub fn empty(store: S) -> Self {
        Self { store, grants: BTreeMap::new(), hasher: Sha256::new(), records: 0, scratch: Vec::new() }
    }

    /// A ledger over `store`, whose existing records are `replayed` (as [`FileStore::open`]
    /// returns them). Fails on the first impossible transition among them.
    pub fn open(store: S, replayed: Vec<Record>) -> Result<Self, LedgerError> {
        let mut ledger = Self::empty(store);
        for record in &replayed {
            step_in_place(&mut ledger.grants, record)?;
            ledger.hash(record)?;
        }
        Ok(ledger)
    }

    fn hash(&mut self, record: &Record) -> Result<(), StoreError> {
        self.scratch.clear();
        encode_payload(record, &mut self.scratch)?;
        self.hasher.update(&self.scratch);
        self.records += 1;
        Ok(())
    }

    /// Records `event` for `grant` at `at_unix_ms` and returns the grant's new state.
    ///
    /// Nothing is written when the event is impossible ([`LedgerError::Apply`]) or when the store
    /// fails ([`LedgerError::Store`]); in both cases the state is unchanged.
    pub fn append(&mut self, grant: GrantId, at_unix_ms: u64, event: Event) -> Result<&GrantState, LedgerError> {
        let current = self.grants.get(&grant);
        let seq = current.map_or(0, GrantState::next_seq);
        let record = Record { grant, seq, at_unix_ms, event };
        let next = apply(current, &record)?;
        self.store.append(std::slice::from_ref(&record))?;
        self.hash(&record)?;
        let slot = match self.grants.entry(grant) {
            Entry::Occupied(entry) => {
                let slot = entry.into_mut();
                *slot = next;
                slot
            }
            Entry::Vacant(entry) => entry.insert(next),
        };
        Ok(slot)
    }

    /// Records several events with one durable write (group commit). All are validated first,
    /// in order; when any is impossible or the store fails nothing is written or changed.
    pub fn append_batch(&mut self, events: impl IntoIterator<Item = (GrantId, u64, Event)>) -> Result<(), LedgerError> {
        let mut touched: BTreeMap<GrantId, GrantState> = BTreeMap::new();
        let mut records = Vec::new();
        for (grant, at_unix_ms, event) in events {
            let current = touched.get(&grant).or_else(|| self.grants.get(&grant));
            let seq = current.map_or(0, GrantState::next_seq);
            let record = Record { grant, seq, at_unix_ms, event };
            let next = apply(current, &record)?;
            touched.insert(grant, next);
            records.push(record);
        }
        self.store.append(&records)?;
        for record in &records {
            self.hash(record)?;
        }
        self.grants.extend(touched);
        Ok(())
    }

    /// Asks the store to recover from a failed append (see [`EventStore::heal`]).
    pub fn heal(&mut self) -> Result<(), LedgerError> {
        Ok(self.store.heal()?)
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

    /// How many records the ledger holds (replayed and appended).
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// SHA-256 over the payload encoding of every record, replayed and appended, in order: two
    /// ledgers with the same history have the same hash.
    pub fn records_hash(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// The store, e.g. to clone a [`MemoryStore`] for a simulated restart.
    pub fn store(&self) -> &S {
        &self.store
    }
}
