//! Snapshot items and the position log's reads: what a takeover reads instead of a Scan.
//!
//! A snapshot is usage-ledger's snapshot encoding ([`usage_ledger::snapshot::encode_snapshot`],
//! with its CRC, at `Position { segment: 0, offset: <next position> }`), cut into part items of
//! at most [`PART_BYTES`] (`pk = snap#<position>#<epoch>`, `sk = part index`, `data`), and
//! published by a manifest item (`pk = snaps`, `sk = position`) naming the parts, their total
//! length, the record count, the writer's epoch and group. Parts and manifest are written in
//! transactions conditional on the lease, so a writer that lost the lease can neither write nor
//! publish one; a snapshot whose parts are missing or damaged fails its length or CRC check
//! and is skipped. The newest [`SNAPSHOTS_KEPT`] manifests are kept.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use usage_ledger::file::decode_payload;
use usage_ledger::snapshot::{Position, SNAPSHOTS_KEPT, Snapshot, decode_snapshot};
use usage_ledger::{Lease, Record, StoreError};

use crate::table::{DynamoTable, EPOCH, LOG_PK, PK, RECS, SK, n};

/// The partition of the snapshot manifests.
const SNAPS_PK: &str = "snaps";
/// The most snapshot bytes one part item holds (DynamoDB refuses items over 400 KB).
const PART_BYTES: usize = 350 << 10;
/// Parts per transaction: 8 × 350 KB stays under DynamoDB's 4 MB per transaction.
const PARTS_PER_TRANSACTION: usize = 8;
/// Deletes per transaction, besides the lease check (DynamoDB takes 100 items).
const DELETES_PER_TRANSACTION: usize = 99;

/// A published snapshot, as its manifest item describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotItem {
    /// The position of the first record it does not cover.
    pub position: u64,
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
    /// Writes `bytes` (an encoded snapshot covering `records` records, up to `position`) as
    /// part items and publishes it with its manifest, every transaction conditional on `lease`;
    /// then deletes the manifests (and parts) older than the newest [`SNAPSHOTS_KEPT`].
    pub(crate) async fn write_snapshot(
        &self,
        lease: &Lease,
        position: u64,
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
        let manifest = Put::builder()
            .table_name(self.name())
            .item(PK, AttributeValue::S(SNAPS_PK.to_string()))
            .item(SK, n(position))
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
        for old in self.snapshots().await?.into_iter().skip(SNAPSHOTS_KEPT) {
            self.delete_snapshot(lease, &old).await?;
        }
        Ok(())
    }

    /// Deletes `snapshot`'s manifest, then its parts (a crash between leaves parts no manifest
    /// names, which nothing reads), under `lease`.
    async fn delete_snapshot(&self, lease: &Lease, snapshot: &SnapshotItem) -> Result<(), StoreError> {
        let key = |pk: &str, sk: u64| -> Result<TransactWriteItem, StoreError> {
            let delete = Delete::builder()
                .table_name(self.name())
                .key(PK, AttributeValue::S(pk.to_string()))
                .key(SK, n(sk))
                .build()
                .map_err(|e| self.build(e))?;
            Ok(TransactWriteItem::builder().delete(delete).build())
        };
        let items = vec![self.lease_check(lease)?, key(SNAPS_PK, snapshot.position)?];
        self.transact(lease, items, "TransactWriteItems (delete an old snapshot)").await?;
        let parts: Vec<u64> = (0..snapshot.parts).collect();
        for batch in parts.chunks(DELETES_PER_TRANSACTION) {
            let mut items = vec![self.lease_check(lease)?];
            for part in batch {
                items.push(key(&snapshot.parts_pk, *part)?);
            }
            self.transact(lease, items, "TransactWriteItems (delete an old snapshot's parts)").await?;
        }
        Ok(())
    }

    /// Sends one transaction whose first item is the lease check; a failed check is
    /// [`StoreError::Fenced`].
    async fn transact(&self, lease: &Lease, items: Vec<TransactWriteItem>, op: &'static str) -> Result<(), StoreError> {
        let sent = self.client().transact_write_items().set_transact_items(Some(items)).send().await;
        let Err(err) = sent else { return Ok(()) };
        if let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
            cancel,
        )) = err.as_service_error()
            && cancel.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed")
        {
            return Err(self.fenced(lease).await);
        }
        Err(self.remote(op, &err))
    }

    /// Every published snapshot, newest first (a strongly consistent Query of the manifests).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotItem>, StoreError> {
        let mut found = Vec::new();
        for item in self.query_all(SNAPS_PK, None, false, "Query (snapshot manifests)").await? {
            let parsed = (|| {
                Some(SnapshotItem {
                    position: number(&item, SK)?,
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
        Ok(found)
    }

    /// Reads and checks the snapshot `item` publishes: `Ok(Err(why))` when it is damaged (a
    /// part missing or altered, another version), `Err` when the reads fail.
    pub async fn read_snapshot(&self, item: &SnapshotItem) -> Result<Result<Snapshot, String>, StoreError> {
        let parts = self.query_all(&item.parts_pk, None, true, "Query (snapshot parts)").await?;
        let mut bytes = Vec::with_capacity(usize::try_from(item.bytes).unwrap_or(0));
        for (index, part) in parts.iter().enumerate() {
            if number(part, SK) != Some(index as u64) {
                return Ok(Err(format!("part {index} of {} is missing", item.parts)));
            }
            match part.get("data").and_then(|v| v.as_b().ok()) {
                Some(data) => bytes.extend_from_slice(data.as_ref()),
                None => return Ok(Err(format!("part {index} holds no binary `data`"))),
            }
        }
        if parts.len() as u64 != item.parts || bytes.len() as u64 != item.bytes {
            return Ok(Err(format!(
                "{} parts of {} bytes, the manifest says {} parts of {} bytes (torn)",
                parts.len(),
                bytes.len(),
                item.parts,
                item.bytes
            )));
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

    /// The records of the position log from `position` on, in order, with their stored
    /// payloads, and one past the last position (at least `position`): a strongly consistent,
    /// paginated Query. `Ok(Err(why))` when an item does not decode.
    pub(crate) async fn log_after(
        &self,
        position: u64,
    ) -> Result<Result<(Vec<(Record, Vec<u8>)>, u64), String>, StoreError> {
        let mut records = Vec::new();
        let mut next_pos = position;
        for item in self.query_all(LOG_PK, Some(position), true, "Query (position log)").await? {
            let Some(first) = number(&item, SK) else { return Ok(Err("a log item's `sk` is not a number".into())) };
            let Some(payloads) = item.get(RECS).and_then(|v| v.as_l().ok()) else {
                return Ok(Err(format!("log item {first} holds no list `recs`")));
            };
            for payload in payloads {
                let Ok(bytes) = payload.as_b() else { return Ok(Err(format!("log item {first}: a record is not binary"))) };
                match decode_payload(bytes.as_ref()) {
                    Ok(record) => records.push((record, bytes.as_ref().to_vec())),
                    Err(why) => return Ok(Err(format!("log item {first}: {why}"))),
                }
            }
            next_pos = next_pos.max(first + payloads.len() as u64);
        }
        Ok(Ok((records, next_pos)))
    }

    /// Every item of partition `pk` (from sort key `from` on), in sort-key order or the
    /// reverse, with strongly consistent reads, page after page (DynamoDB returns at most 1 MB
    /// per page).
    async fn query_all(
        &self,
        pk: &str,
        from: Option<u64>,
        forward: bool,
        op: &'static str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client()
                .query()
                .table_name(self.name())
                .consistent_read(true)
                .scan_index_forward(forward)
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()))
                .set_exclusive_start_key(start.take());
            query = match from {
                Some(from) => query
                    .key_condition_expression("pk = :pk AND sk >= :from")
                    .expression_attribute_values(":from", n(from)),
                None => query.key_condition_expression("pk = :pk"),
            };
            let page = query.send().await.map_err(|e| self.remote(op, &e))?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(items)
    }
}
