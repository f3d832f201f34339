//! Where records go: the [`EventStore`] trait, the in-memory store, and the store errors.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::event::Record;
use crate::snapshot::SnapshotData;

/// An append-only home for records.
pub trait EventStore: Send {
    /// Appends `records` in order. When this returns `Ok` every record is durable (for the
    /// file store: written and `fsync`ed); when it returns `Err` none of them is acknowledged
    /// (some may have reached the disk, and will be replayed if they did).
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// Makes a store that failed an append usable again, or says why it still is not. A store
    /// that cannot fail, or recovers by itself, needs nothing here.
    fn heal(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// True when the store wants a snapshot of the books now (its owner's policy). A store that
    /// keeps no snapshots never does.
    fn snapshot_due(&self) -> bool {
        false
    }

    /// Saves `data`, the books' state after exactly the records this store has acknowledged,
    /// as a snapshot at the store's current end. An error leaves the records as they were: a
    /// snapshot only ever saves a replay. A store that keeps no snapshots does nothing.
    fn save_snapshot(&mut self, data: &SnapshotData<'_>) -> Result<(), StoreError> {
        let _ = data;
        Ok(())
    }

    /// Takes the snapshot that is due by itself, from its own durable records and without
    /// holding up the appends that follow (in the background), and returns `true`; or returns
    /// `false` when it cannot, and its owner hands it the books with
    /// [`EventStore::save_snapshot`] instead. A store that keeps no snapshots never needs this.
    fn start_snapshot(&mut self) -> bool {
        false
    }
}

/// A store in memory, for simulation and tests.
///
/// Clones share the same records, so a simulated crash is dropping the ledger and opening a new
/// one on a clone. [`MemoryStore::fail_next_appends`] injects store failures.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    records: Vec<Record>,
    failures_left: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every record appended so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).records.clone()
    }

    /// Makes the next `count` appends fail with [`StoreError::Injected`] without storing
    /// anything.
    pub fn fail_next_appends(&self, count: u32) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).failures_left = count;
    }
}

impl EventStore for MemoryStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.failures_left > 0 {
            inner.failures_left -= 1;
            return Err(StoreError::Injected);
        }
        inner.records.extend_from_slice(records);
        Ok(())
    }

    fn heal(&mut self) -> Result<(), StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.failures_left > 0 { Err(StoreError::Injected) } else { Ok(()) }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused an operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with a usage-ledger header.
    #[error("{path} is not a usage ledger: {reason}")]
    NotALedger {
        /// The file.
        path: PathBuf,
        /// What is wrong with the header.
        reason: String,
    },
    /// The file was written by a newer format than this build reads.
    #[error("{path} has format version {found}, this build reads up to {supported}: upgrade usage-ledger")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The file's version.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// A frame before the end of the file is damaged. Nothing after it was read; the file was
    /// not modified.
    #[error(
        "{path}: corrupt frame at byte offset {offset}: {reason}; the file was not modified: restore it from a replica or cut it at this offset by hand"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the damaged frame's start.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded (or is larger than a frame can hold).
    #[error("cannot encode record for grant {grant} seq {seq}: {reason}")]
    Encode {
        /// The record's grant, in hex.
        grant: String,
        /// The record's sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A failure injected by [`MemoryStore::fail_next_appends`].
    #[error("injected store failure")]
    Injected,
    /// This writer no longer holds the ledger's lease: another owner took it (a higher epoch),
    /// so nothing of the append was written. Retrying cannot help: the process must stop acting
    /// for the ledger and leave its grants to the new holder's recovery.
    #[error(
        "lost the ledger lease of bridge group {group} (held epoch {epoch}): {reason}; nothing was written: stop this bridge, the lease holder recovers its grants"
    )]
    Fenced {
        /// The bridge group whose lease was lost.
        group: String,
        /// The epoch this writer held.
        epoch: u64,
        /// What the store found instead.
        reason: String,
    },
    /// The record's place in its grant's sequence is already taken in the store: another writer
    /// appended it. Nothing of the append was written.
    #[error(
        "grant {grant} seq {seq} is already in the store and was not overwritten: another writer appended it; reopen the ledger to replay it"
    )]
    SequenceTaken {
        /// The record's grant, in hex.
        grant: String,
        /// The sequence number already taken.
        seq: u64,
    },
    /// A store reached over the network failed or did not answer; what was written is unknown
    /// until the store heals (see [`EventStore::heal`]).
    #[error("{store}: {op} failed: {reason}")]
    Remote {
        /// The store (e.g. `dynamodb table usage-ledger`).
        store: String,
        /// What was being done.
        op: &'static str,
        /// The service's answer, with what to do when it says.
        reason: String,
    },
}

impl StoreError {
    /// An equal error, for each of the appends a failed group commit fails (an OS error keeps
    /// its kind and message).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { op, path, source } => StoreError::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::NotALedger { path, reason } => {
                StoreError::NotALedger { path: path.clone(), reason: reason.clone() }
            }
            StoreError::UnsupportedVersion { path, found, supported } => {
                StoreError::UnsupportedVersion { path: path.clone(), found: *found, supported: *supported }
            }
            StoreError::Corrupt { path, offset, reason } => {
                StoreError::Corrupt { path: path.clone(), offset: *offset, reason: reason.clone() }
            }
            StoreError::Encode { grant, seq, reason } => {
                StoreError::Encode { grant: grant.clone(), seq: *seq, reason: reason.clone() }
            }
            StoreError::Injected => StoreError::Injected,
            StoreError::Fenced { group, epoch, reason } => {
                StoreError::Fenced { group: group.clone(), epoch: *epoch, reason: reason.clone() }
            }
            StoreError::SequenceTaken { grant, seq } => StoreError::SequenceTaken { grant: grant.clone(), seq: *seq },
            StoreError::Remote { store, op, reason } => {
                StoreError::Remote { store: store.clone(), op, reason: reason.clone() }
            }
        }
    }
}
