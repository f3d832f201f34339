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

use tokio::runtime::Runtime;
use usage_ledger::{EventStore, Ledger, LedgerError, Record, StoreError};

use backend_api::GrantId;

use crate::table::DynamoTable;
use usage_ledger::Lease;

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
    /// The keys and first position of an append that failed, until healed.
    unacknowledged: Option<(Vec<(GrantId, u64)>, u64)>,
    /// Always `Some` until drop.
    runtime: Option<Runtime>,
}

/// Replays `table` and opens a ledger over it, writing under `lease`. Acquire the lease first:
/// a replay made before acquiring could miss the last appends of the previous holder.
pub async fn open_ledger(table: DynamoTable, lease: Lease) -> Result<Ledger<DynamoStore>, LedgerError> {
    open_ledger_as(table, lease, |store| store).await
}

/// [`open_ledger`] with the store wrapped by `wrap` (a caller that keeps its ledgers behind one
/// store type, such as a box of any [`EventStore`]).
pub async fn open_ledger_as<S: EventStore>(
    table: DynamoTable,
    lease: Lease,
    wrap: impl FnOnce(DynamoStore) -> S,
) -> Result<Ledger<S>, LedgerError> {
    let replayed = table.replay().await?;
    let store = DynamoStore::new(table, lease, replayed.next_pos)?;
    Ledger::open_replayed(wrap(store), replayed.records)
}

impl DynamoStore {
    /// A store writing to `table` under `lease`, its next record at position `next_pos` (from
    /// [`DynamoTable::replay`]).
    pub fn new(table: DynamoTable, lease: Lease, next_pos: u64) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ledger-dynamodb")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io { op: "start the runtime of", path: table.label().into(), source })?;
        Ok(Self { table, lease, next_pos, unacknowledged: None, runtime: Some(runtime) })
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
        let first_pos = self.next_pos;
        self.next_pos += records.len() as u64;
        let (table, lease, owned) = (self.table.clone(), self.lease.clone(), records.to_vec());
        let result = self.block_on(async move { table.write(&lease, &owned, first_pos).await })?;
        if result.is_err() {
            self.unacknowledged = Some((records.iter().map(|r| (r.grant, r.seq)).collect(), first_pos));
        }
        result
    }

    fn heal(&mut self) -> Result<(), StoreError> {
        let Some((keys, first_pos)) = self.unacknowledged.clone() else { return Ok(()) };
        let (table, lease) = (self.table.clone(), self.lease.clone());
        self.block_on(async move { table.delete_unacknowledged(&lease, &keys, first_pos).await })??;
        self.unacknowledged = None;
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
