//! Snapshot items and the position log's reads: what a takeover reads instead of a Scan.
//!
//! A snapshot is usage-ledger's snapshot encoding ([`usage_ledger::snapshot::encode_snapshot`],
//! with its CRC, at `Position { segment: 0, offset: <next position> }`), cut into part items of
//! at most [`PART_BYTES`] (`pk = snap#<position>#<epoch>`, `sk = part index`, `data`), and
//! published by a manifest item in one of [`SNAPSHOTS_KEPT`] slots (`pk = snaps`, `sk = 0` or
//! `1`) naming the parts, their total length, the record count, the log index after it, the
//! writer's epoch and group. A new snapshot takes the slot of the older one, whose parts are
//! then deleted. Parts, manifest and deletions are transactions conditional on the lease, so a
//! writer that lost the lease can neither write nor publish one; a snapshot whose parts are
//! missing or damaged fails its length or CRC check and is skipped.
//!
//! Every read here is by key (`BatchGetItem`, strongly consistent): the manifests' slots, the
//! parts, and the log items from the snapshot's log index to the first missing one. None of
//! them depends on the size of the history.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem};
use usage_ledger::file::decode_payload;
use usage_ledger::snapshot::{Position, SNAPSHOTS_KEPT, Snapshot, decode_snapshot};
use usage_ledger::{Lease, Record, StoreError};

use crate::table::{DynamoTable, EPOCH, LOG_PK, PK, POS, RECS, SK, n};

/// The partition of the snapshot manifests.
const SNAPS_PK: &str = "snaps";
/// The most snapshot bytes one part item holds (DynamoDB refuses items over 400 KB).
const PART_BYTES: usize = 350 << 10;
/// Parts per transaction: 8 × 350 KB stays under DynamoDB's 4 MB per transaction.
const PARTS_PER_TRANSACTION: usize = 8;
/// Deletes per transaction, besides the lease check (DynamoDB takes 100 items).
const DELETES_PER_TRANSACTION: usize = 99;
/// Keys per `BatchGetItem` (DynamoDB takes at most 100).
const KEYS_PER_BATCH_GET: usize = 100;

/// A published snapshot, as its manifest item describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotItem {
    /// Its manifest's slot.
    pub slot: u64,
    /// The position of the first record it does not cover.
    pub position: u64,
    /// The log index of the first log item it does not cover.
    pub log_index: u64,
    /// The records it covers.
    pub records: u64,
    /// The lease epoch of its writer.
    pub epoch: u64,
    /// The bridge group of its writer.
    pub group: String,
    /// The partition key of its parts.
    pub parts_pk: String,
    /// How many parts.
    pub parts: u64,
    /// Their total length in bytes.
    pub bytes: u64,
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

impl DynamoTable {
    /// Writes `bytes` (an encoded snapshot covering `records` records, up to `position` and
    /// log index `log_index`) as part items and publishes it with its manifest in the slot of
    /// the older snapshot, every transaction conditional on `lease`; then deletes the replaced
    /// snapshot's parts.
    pub(crate) async fn write_snapshot(
        &self,
        lease: &Lease,
        (position, log_index): (u64, u64),
        records: u64,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let parts_pk = format!("snap#{position:020}#{}", lease.epoch);
        let parts: Vec<&[u8]> = bytes.chunks(PART_BYTES).collect();
        for (batch_index, batch) in parts.chunks(PARTS_PER_TRANSACTION).enumerate() {
            let mut items = vec![self.lease_check(lease)?];
            for (i, part) in batch.iter().enumerate() {
                let put = Put::builder()
                    .table_name(self.name())
                    .item(PK, AttributeValue::S(parts_pk.clone()))
                    .item(SK, n((batch_index * PARTS_PER_TRANSACTION + i) as u64))
                    .item("data", AttributeValue::B(Blob::new(part.to_vec())))
                    .build()
                    .map_err(|e| self.build(e))?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            self.transact(lease, items, "TransactWriteItems (write snapshot parts)").await?;
        }
        // The slot of the older snapshot, or an empty one.
        let existing = self.snapshots().await?;
        if existing.iter().any(|s| s.parts_pk == parts_pk) {
            // Published already (the same position at the same epoch holds the same records).
            return Ok(());
        }
        let slot = (0..SNAPSHOTS_KEPT as u64)
            .find(|slot| existing.iter().all(|s| s.slot != *slot))
            .or_else(|| existing.last().map(|s| s.slot))
            .unwrap_or(0);
        let replaced = existing.into_iter().find(|s| s.slot == slot && s.parts_pk != parts_pk);
        let manifest = Put::builder()
            .table_name(self.name())
            .item(PK, AttributeValue::S(SNAPS_PK.to_string()))
            .item(SK, n(slot))
            .item(POS, n(position))
            .item("log_index", n(log_index))
            .item("records", n(records))
            .item(EPOCH, n(lease.epoch))
            .item("grp", AttributeValue::S(lease.group.clone()))
            .item("parts_pk", AttributeValue::S(parts_pk))
            .item("parts", n(parts.len() as u64))
            .item("bytes", n(bytes.len() as u64))
            .build()
            .map_err(|e| self.build(e))?;
        let items = vec![self.lease_check(lease)?, TransactWriteItem::builder().put(manifest).build()];
        self.transact(lease, items, "TransactWriteItems (publish a snapshot)").await?;
        if let Some(old) = replaced {
            self.delete_parts(lease, &old).await?;
        }
        Ok(())
    }

    /// Deletes the parts of `snapshot`, whose manifest slot holds another snapshot now (a
    /// crash before this leaves parts no manifest names, which nothing reads), under `lease`.
    async fn delete_parts(&self, lease: &Lease, snapshot: &SnapshotItem) -> Result<(), StoreError> {
        let parts: Vec<u64> = (0..snapshot.parts).collect();
        for batch in parts.chunks(DELETES_PER_TRANSACTION) {
            let mut items = vec![self.lease_check(lease)?];
            for part in batch {
                let delete = Delete::builder()
                    .table_name(self.name())
                    .key(PK, AttributeValue::S(snapshot.parts_pk.clone()))
                    .key(SK, n(*part))
                    .build()
                    .map_err(|e| self.build(e))?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            self.transact(lease, items, "TransactWriteItems (delete a replaced snapshot's parts)").await?;
        }
        Ok(())
    }

    /// Sends one transaction whose first item is the lease check; a failed check is
    /// [`StoreError::Fenced`].
    async fn transact(&self, lease: &Lease, items: Vec<TransactWriteItem>, op: &'static str) -> Result<(), StoreError> {
        let sent = self.client().transact_write_items().set_transact_items(Some(items)).send().await;
        let Err(err) = sent else { return Ok(()) };
        if let Some(
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
                cancel,
            ),
        ) = err.as_service_error()
            && cancel.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed")
        {
            return Err(self.fenced(lease).await);
        }
        Err(self.remote(op, &err))
    }

    /// Every published snapshot, newest first (a strongly consistent read of the manifests'
    /// slots).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotItem>, StoreError> {
        let keys = (0..SNAPSHOTS_KEPT as u64).map(|slot| (SNAPS_PK.to_string(), slot)).collect();
        let mut found = Vec::new();
        for (slot, item) in self.batch_get(keys, "BatchGetItem (snapshot manifests)").await? {
            let parsed = (|| {
                Some(SnapshotItem {
                    slot: slot.1,
                    position: number(&item, POS)?,
                    log_index: number(&item, "log_index")?,
                    records: number(&item, "records")?,
                    epoch: number(&item, EPOCH)?,
                    group: string(&item, "grp")?,
                    parts_pk: string(&item, "parts_pk")?,
                    parts: number(&item, "parts")?,
                    bytes: number(&item, "bytes")?,
                })
            })();
            // A manifest that does not parse names no snapshot a takeover could use.
            found.extend(parsed);
        }
        found.sort_by_key(|s| std::cmp::Reverse(s.position));
        Ok(found)
    }

    /// Reads and checks the snapshot `item` publishes: `Ok(Err(why))` when it is damaged (a
    /// part missing or altered, another version), `Err` when the reads fail.
    pub async fn read_snapshot(&self, item: &SnapshotItem) -> Result<Result<Snapshot, String>, StoreError> {
        let keys = (0..item.parts).map(|part| (item.parts_pk.clone(), part)).collect();
        let parts = self.batch_get(keys, "BatchGetItem (snapshot parts)").await?;
        let mut bytes = Vec::with_capacity(usize::try_from(item.bytes).unwrap_or(0));
        for index in 0..item.parts {
            let Some(part) = parts.get(&(item.parts_pk.clone(), index)) else {
                return Ok(Err(format!("part {index} of {} is missing (torn)", item.parts)));
            };
            match part.get("data").and_then(|v| v.as_b().ok()) {
                Some(data) => bytes.extend_from_slice(data.as_ref()),
                None => return Ok(Err(format!("part {index} holds no binary `data`"))),
            }
        }
        if bytes.len() as u64 != item.bytes {
            return Ok(Err(format!("its parts hold {} bytes, the manifest says {} (torn)", bytes.len(), item.bytes)));
        }
        let snapshot = match decode_snapshot(&bytes) {
            Ok(snapshot) => snapshot,
            Err(why) => return Ok(Err(why)),
        };
        if snapshot.position != (Position { segment: 0, offset: item.position }) || snapshot.records != item.records {
            return Ok(Err(format!(
                "it covers {} records up to {:?}, its manifest says {} up to position {}",
                snapshot.records, snapshot.position, item.records, item.position
            )));
        }
        Ok(Ok(snapshot))
    }

    /// The records of the position log from log index `log_index` to the first missing index,
    /// in order, with their stored payloads; one past the last position (at least `position`,
    /// the snapshot's); and one past the last log index. `Ok(Err(why))` when an item does not
    /// decode or the log's positions do not follow `position`.
    pub(crate) async fn log_after(&self, position: u64, log_index: u64) -> Result<Result<LogTail, String>, StoreError> {
        let mut tail = LogTail { records: Vec::new(), next_pos: position, next_log: log_index };
        loop {
            let keys: Vec<(String, u64)> =
                (tail.next_log..tail.next_log + KEYS_PER_BATCH_GET as u64).map(|i| (LOG_PK.to_string(), i)).collect();
            let mut found = self.batch_get(keys, "BatchGetItem (position log)").await?;
            let mut whole = true;
            for index in tail.next_log..tail.next_log + KEYS_PER_BATCH_GET as u64 {
                let Some(item) = found.remove(&(LOG_PK.to_string(), index)) else {
                    whole = false;
                    break;
                };
                let Some(first) = number(&item, POS) else {
                    return Ok(Err(format!("log item {index}: `pos` is not a number")));
                };
                if first < tail.next_pos {
                    return Ok(Err(format!("log item {index} starts at position {first}, before {}", tail.next_pos)));
                }
                let Some(payloads) = item.get(RECS).and_then(|v| v.as_l().ok()) else {
                    return Ok(Err(format!("log item {index} holds no list `recs`")));
                };
                for payload in payloads {
                    let Ok(bytes) = payload.as_b() else {
                        return Ok(Err(format!("log item {index}: a record is not binary")));
                    };
                    match decode_payload(bytes.as_ref()) {
                        Ok(record) => tail.records.push((record, bytes.as_ref().to_vec())),
                        Err(why) => return Ok(Err(format!("log item {index}: {why}"))),
                    }
                }
                tail.next_pos = first + payloads.len() as u64;
                tail.next_log = index + 1;
            }
            if !whole {
                return Ok(Ok(tail));
            }
        }
    }

    /// The items at `keys` (partition key, sort key), read with strongly consistent
    /// `BatchGetItem`s of at most 100 keys, the keys DynamoDB leaves unprocessed (a response is
    /// at most 16 MB) asked again.
    async fn batch_get(
        &self,
        keys: Vec<(String, u64)>,
        op: &'static str,
    ) -> Result<HashMap<(String, u64), HashMap<String, AttributeValue>>, StoreError> {
        let mut found = HashMap::new();
        for batch in keys.chunks(KEYS_PER_BATCH_GET) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for (pk, sk) in batch {
                request = request
                    .keys(HashMap::from([(PK.to_string(), AttributeValue::S(pk.clone())), (SK.to_string(), n(*sk))]));
            }
            let mut pending = Some(request.build().map_err(|e| self.build(e))?);
            while let Some(request) = pending.take() {
                let out = self
                    .client()
                    .batch_get_item()
                    .request_items(self.name(), request)
                    .send()
                    .await
                    .map_err(|e| self.remote(op, &e))?;
                for item in out.responses.and_then(|mut r| r.remove(self.name())).unwrap_or_default() {
                    let key = (string(&item, PK).unwrap_or_default(), number(&item, SK).unwrap_or(u64::MAX));
                    found.insert(key, item);
                }
                pending =
                    out.unprocessed_keys.and_then(|mut left| left.remove(self.name())).filter(|k| !k.keys.is_empty());
            }
        }
        Ok(found)
    }
}

/// What a takeover read from the position log after a snapshot.
#[derive(Debug)]
pub(crate) struct LogTail {
    /// The records, in order, with their stored payloads.
    pub(crate) records: Vec<(Record, Vec<u8>)>,
    /// One past the last record's position.
    pub(crate) next_pos: u64,
    /// One past the last log index read.
    pub(crate) next_log: u64,
}
