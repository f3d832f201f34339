//! [`DynamoStore`]: the synchronous [`EventStore`] over the asynchronous SDK.
//!
//! [`EventStore::append`] is synchronous, and a [`SharedLedger`](usage_ledger::SharedLedger)
//! calls it from inside an async task, on whatever runtime the backend runs (a current-thread
//! one in tests and in the simulation). Blocking that thread on a future that needs the same
//! runtime would deadlock it, and `block_in_place` panics on a current-thread runtime. So the
//! store owns a small runtime of its own (one worker thread): an append spawns its requests
//! there and waits on a channel. The caller's thread blocks for the round trip, as it blocks on
//! `fdatasync` with the file store, but nothing the store's runtime does ever waits for the
//! caller's runtime, so it cannot deadlock. The SDK's timeouts bound the wait.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use usage_ledger::snapshot::{Position, encode_snapshot};
use usage_ledger::{EventStore, Lease, Record, SnapshotData, SnapshotPolicy, StoreError};

use crate::table::DynamoTable;
use crate::write::{UnackedChunk, chunk_keys, encode_all, plan_chunks};

/// The snapshot policy of a DynamoDB ledger unless its owner says otherwise: every 20,000
/// records or 6 hours of record time. A takeover reads the position log after the newest
/// snapshot, so the record count bounds its tail (about 200 log items, a few MB) whatever the
/// history. The time period only keeps a quiet ledger's tail from growing without bound; it is
/// long because every snapshot rewrites every grant (about 72 bytes each, 7 MB for 100,000
/// grants, written twice over as transactional writes).
pub const DEFAULT_SNAPSHOT_POLICY: SnapshotPolicy = SnapshotPolicy { every_records: 20_000, every_ms: 6 * 3600 * 1000 };

/// The ledger's store in a DynamoDB table, written under a [`Lease`].
///
/// An append is one `TransactWriteItems` per [`MAX_RECORDS_PER_TRANSACTION`] records (more
/// records are several transactions, in order), each conditional on the lease item still
/// holding this store's epoch and on every record's sequence being new. When one fails the
/// append fails and none of its records is acknowledged, but the transactions before it are
/// written. The store then takes no append until [`EventStore::heal`] (which the next append
/// tries first) has deleted every item of the failed append, under the same lease check, as the
/// file store cuts an unacknowledged tail. Should the process die first, the next holder
/// replays those items: a prefix, in order, of records each validated against the ones before
/// it, which the EventStore contract allows ("some may have reached the disk").
///
/// [`MAX_RECORDS_PER_TRANSACTION`]: crate::MAX_RECORDS_PER_TRANSACTION
#[derive(Debug)]
pub struct DynamoStore {
    table: DynamoTable,
    lease: Lease,
    /// The position the next append's first record takes: one past every position tried, so a
    /// failed append's positions (and ClientRequestTokens) are never reused.
    next_pos: u64,
    /// The log index the next append's first chunk takes (see `write.rs`: indexes are dense, a
    /// failed append's are reused once healed).
    next_log: u64,
    /// The chunks (first position and keys) of an append that failed, until healed.
    unacknowledged: Option<Vec<UnackedChunk>>,
    /// Always `Some` until drop.
    runtime: Option<Runtime>,
    snapshots: SnapshotState,
}

/// When the store snapshots, and the snapshot being written in the background.
#[derive(Debug)]
struct SnapshotState {
    policy: Option<SnapshotPolicy>,
    /// Records acknowledged since the last snapshot (or, after opening, since the snapshot the
    /// open used: its tail).
    since: u64,
    /// The newest record time seen, and its value at the last snapshot.
    clock_unix_ms: u64,
    clock_at_last_unix_ms: Option<u64>,
    /// Snapshot at the next chance: the open used no snapshot, or skipped a damaged one.
    soon: bool,
    in_flight: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    last_error: Mutex<Option<String>>,
}

impl DynamoStore {
    /// A store writing to `table` under `lease`, its next record at position `next_pos` (from
    /// [`DynamoTable::replay`]) and its next log item at index `next_pos` too (set it with
    /// [`DynamoStore::with_next_log`]), taking no snapshots.
    pub fn new(table: DynamoTable, lease: Lease, next_pos: u64) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ledger-dynamodb")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io { op: "start the runtime of", path: table.label().into(), source })?;
        let snapshots = SnapshotState {
            policy: None,
            since: 0,
            clock_unix_ms: 0,
            clock_at_last_unix_ms: None,
            soon: false,
            in_flight: Mutex::new(None),
            last_error: Mutex::new(None),
        };
        Ok(Self { table, lease, next_pos, next_log: next_pos, unacknowledged: None, runtime: Some(runtime), snapshots })
    }

    /// The same store, its next log item at index `next_log` (from [`DynamoTable::replay`], or
    /// the end of the log a takeover read).
    pub fn with_next_log(mut self, next_log: u64) -> Self {
        self.next_log = next_log;
        self
    }

    /// Takes snapshots by `policy` from now on; `tail` records are already past the last
    /// snapshot, and `soon` asks for one at the first chance (the open found none to use).
    pub fn with_snapshots(mut self, policy: SnapshotPolicy, tail: u64, soon: bool) -> Self {
        self.snapshots.policy = Some(policy);
        self.snapshots.since = tail;
        self.snapshots.soon = soon;
        self
    }

    /// The position the next append's first record takes.
    pub fn next_position(&self) -> u64 {
        self.next_pos
    }

    /// Waits for the snapshot being written in the background, if any, and returns its outcome.
    pub fn flush_snapshot(&self) -> Result<(), StoreError> {
        let handle = self.snapshots.in_flight.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(handle) = handle else { return Ok(()) };
        let label = self.table.label();
        let result = self.block_on(async move {
            handle.await.unwrap_or_else(|e| {
                Err(StoreError::Remote {
                    store: label,
                    op: "write a snapshot",
                    reason: format!("its task failed: {e}"),
                })
            })
        })?;
        *self.snapshots.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
            result.as_ref().err().map(ToString::to_string);
        result
    }

    /// Why the last snapshot that finished failed, if it did (as far as this store has seen:
    /// [`DynamoStore::flush_snapshot`] and each new snapshot look).
    pub fn last_snapshot_error(&self) -> Option<String> {
        self.snapshots.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// True while a snapshot is being written.
    fn snapshot_running(&self) -> bool {
        self.snapshots
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// The lease this store writes under.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The table.
    pub fn table(&self) -> &DynamoTable {
        &self.table
    }

    /// Runs `future` on the store's own runtime and waits for it on this thread.
    fn block_on<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let stopped = || StoreError::Remote {
            store: self.table.label(),
            op: "wait for the store's runtime",
            reason: "its thread stopped: restart the bridge".to_string(),
        };
        let runtime = self.runtime.as_ref().ok_or_else(stopped)?;
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| stopped())
    }
}

impl EventStore for DynamoStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if self.unacknowledged.is_some() {
            self.heal()?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let payloads = encode_all(records)?;
        let chunks = plan_chunks(records, &payloads)?;
        let first_pos = self.next_pos;
        self.next_pos += records.len() as u64;
        let first_log = self.next_log;
        let keys = chunk_keys(records, &chunks, first_pos, first_log);
        let chunk_count = chunks.len() as u64;
        let (table, lease, owned) = (self.table.clone(), self.lease.clone(), records.to_vec());
        let result = self.block_on(async move {
            table.write_planned(&lease, &owned, &payloads, &chunks, (first_pos, first_log)).await
        })?;
        match &result {
            Ok(()) => {
                self.next_log += chunk_count;
                self.snapshots.since += records.len() as u64;
                let newest = records.iter().map(|r| r.at_unix_ms).max().unwrap_or(0);
                self.snapshots.clock_unix_ms = self.snapshots.clock_unix_ms.max(newest);
                self.snapshots.clock_at_last_unix_ms.get_or_insert(self.snapshots.clock_unix_ms);
            }
            Err(_) => self.unacknowledged = Some(keys),
        }
        result
    }

    fn heal(&mut self) -> Result<(), StoreError> {
        let Some(chunks) = self.unacknowledged.clone() else { return Ok(()) };
        let (table, lease) = (self.table.clone(), self.lease.clone());
        self.block_on(async move { table.delete_unacknowledged(&lease, &chunks).await })??;
        self.unacknowledged = None;
        Ok(())
    }

    fn snapshot_due(&self) -> bool {
        let s = &self.snapshots;
        s.policy.is_some_and(|p| {
            s.since > 0
                && (s.soon
                    || s.since >= p.every_records
                    || s.clock_at_last_unix_ms.is_some_and(|c| s.clock_unix_ms.saturating_sub(c) >= p.every_ms))
        }) && !self.snapshot_running()
    }

    /// Encodes `data` here (the caller holds the store, so no append comes between) and writes
    /// it on the store's runtime in the background: appends go on meanwhile. A snapshot asked
    /// for while another is being written is skipped (the next chance takes it).
    fn save_snapshot(&mut self, data: &SnapshotData<'_>) -> Result<(), StoreError> {
        if self.unacknowledged.is_some() {
            return Err(StoreError::Remote {
                store: self.table.label(),
                op: "snapshot",
                reason: "a failed append is not healed yet: heal first".to_string(),
            });
        }
        if self.snapshot_running() {
            return Ok(());
        }
        // The outcome of the previous snapshot, now that it has finished.
        let finished = self.snapshots.in_flight.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = finished {
            let previous = self.block_on(async move { handle.await.ok() })?;
            *self.snapshots.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                previous.and_then(|r| r.err()).map(|e| e.to_string());
        }
        let (position, log_index) = (self.next_pos, self.next_log);
        let bytes = encode_snapshot(Position { segment: 0, offset: position }, None, data)
            .map_err(|reason| StoreError::Encode { grant: "(snapshot)".to_string(), seq: data.records, reason })?;
        self.snapshots.since = 0;
        self.snapshots.soon = false;
        self.snapshots.clock_at_last_unix_ms = Some(self.snapshots.clock_unix_ms);
        let (table, lease, records) = (self.table.clone(), self.lease.clone(), data.records);
        let runtime = self.runtime.as_ref().ok_or_else(|| StoreError::Remote {
            store: self.table.label(),
            op: "snapshot",
            reason: "the store's runtime stopped: restart the bridge".to_string(),
        })?;
        let handle =
            runtime.spawn(async move { table.write_snapshot(&lease, (position, log_index), records, bytes).await });
        *self.snapshots.in_flight.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(())
    }
}

impl Drop for DynamoStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's task; a store is
        // often dropped there. Nothing is in flight once an append has returned.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
