//! The conditional transactions every append and heal is made of.
//!
//! A chunk of an append (at most [`MAX_RECORDS_PER_TRANSACTION`] records) is one
//! `TransactWriteItems`: the lease check, one item per record (`pk = grant#<hex>`, `sk = seq`,
//! conditional on the sequence being new), and one position-log item (`pk = log`, `sk = the
//! chunk's log index`, `pos` = its first record's position) holding the same payloads in order.
//! The record items serve a full replay (a Scan) and a grant's own history (a Query); the log
//! items serve a takeover, which reads only the log items after its snapshot's log index. Both
//! are written, and deleted by a heal, in the same transaction, so they always hold the same
//! records.
//!
//! Log indexes are dense: each chunk takes the next index, a heal deletes a failed append's
//! chunks newest first and the next append reuses their indexes, so the log items written are
//! always indexes `0..n` (or, on a table upgraded from a build without the log, `k..n`) and a
//! takeover reads them with `BatchGetItem` until the first missing index, without a Query.

use std::ops::Range;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use backend_api::GrantId;
use usage_ledger::file::encode_payload;
use usage_ledger::{Lease, Record, StoreError};

use crate::table::{DynamoTable, EPOCH, LOG_PK, PK, POS, REC, RECS, SK, grant_pk, n};

/// The most records one `TransactWriteItems` carries: DynamoDB takes at most 100 items per
/// transaction, and two of them are the lease check and the position-log item.
pub const MAX_RECORDS_PER_TRANSACTION: usize = 98;
/// The most payload bytes one chunk carries: the position-log item holds them all and DynamoDB
/// refuses items over 400 KB, names included. A transaction then carries under 1 MB, well
/// under DynamoDB's 4 MB.
const MAX_CHUNK_PAYLOAD_BYTES: usize = 300 << 10;
/// The largest record payload an item holds (alone in its chunk, its log item stays under
/// 400 KB).
pub(crate) const MAX_ITEM_PAYLOAD_BYTES: usize = 350 << 10;

/// One chunk of a failed append: its first position, its log index and its records' keys, in
/// order.
pub(crate) type UnackedChunk = (u64, u64, Vec<(GrantId, u64)>);

/// Encodes each record's payload in the current format version.
pub(crate) fn encode_all(records: &[Record]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut payloads = Vec::with_capacity(records.len());
    for record in records {
        let mut payload = Vec::new();
        encode_payload(record, &mut payload)?;
        payloads.push(payload);
    }
    Ok(payloads)
}

/// How an append of these payloads splits into transactions: ranges of records, in order, each
/// at most [`MAX_RECORDS_PER_TRANSACTION`] records and [`MAX_CHUNK_PAYLOAD_BYTES`] (or one
/// record). Refuses a payload larger than an item holds.
pub(crate) fn plan_chunks(records: &[Record], payloads: &[Vec<u8>]) -> Result<Vec<Range<usize>>, StoreError> {
    for (record, payload) in records.iter().zip(payloads) {
        if payload.len() > MAX_ITEM_PAYLOAD_BYTES {
            return Err(StoreError::Encode {
                grant: record.grant.to_hex(),
                seq: record.seq,
                reason: format!(
                    "{} bytes is more than a DynamoDB item holds ({MAX_ITEM_PAYLOAD_BYTES})",
                    payload.len()
                ),
            });
        }
    }
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < payloads.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < payloads.len()
            && end - start < MAX_RECORDS_PER_TRANSACTION
            && (end == start || bytes + payloads[end].len() <= MAX_CHUNK_PAYLOAD_BYTES)
        {
            bytes += payloads[end].len();
            end += 1;
        }
        chunks.push(start..end);
        start = end;
    }
    Ok(chunks)
}

/// The keys of each chunk of a planned append whose first record is at `first_pos` and first
/// chunk at log index `first_log`.
pub(crate) fn chunk_keys(
    records: &[Record],
    chunks: &[Range<usize>],
    first_pos: u64,
    first_log: u64,
) -> Vec<UnackedChunk> {
    chunks
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let keys = records[range.clone()].iter().map(|r| (r.grant, r.seq)).collect();
            (first_pos + range.start as u64, first_log + i as u64, keys)
        })
        .collect()
}

impl DynamoTable {
    /// Writes `records`, each with its payload as already encoded (an import keeps a file's
    /// bytes, older versions included, so the records hash stays the same), at positions
    /// `first_pos..` and log indexes `first_log..`, in transactions of at most [`MAX_RECORDS_PER_TRANSACTION`] records, in
    /// order, each conditional on the lease and on every sequence being new. Stops at the first
    /// transaction that fails: those before it are written, it and those after it are not.
    pub(crate) async fn write_encoded(
        &self,
        lease: &Lease,
        records: &[Record],
        payloads: &[Vec<u8>],
        first_pos: u64,
        first_log: u64,
    ) -> Result<(), StoreError> {
        let chunks = plan_chunks(records, payloads)?;
        self.write_planned(lease, records, payloads, &chunks, (first_pos, first_log)).await
    }

    /// Writes each planned chunk as one transaction, in order.
    pub(crate) async fn write_planned(
        &self,
        lease: &Lease,
        records: &[Record],
        payloads: &[Vec<u8>],
        chunks: &[Range<usize>],
        (first_pos, first_log): (u64, u64),
    ) -> Result<(), StoreError> {
        for (i, range) in chunks.iter().enumerate() {
            let at = (first_pos + range.start as u64, first_log + i as u64);
            self.write_chunk(lease, &records[range.clone()], &payloads[range.clone()], at).await?;
        }
        Ok(())
    }

    async fn write_chunk(
        &self,
        lease: &Lease,
        records: &[Record],
        payloads: &[Vec<u8>],
        (first_pos, log_index): (u64, u64),
    ) -> Result<(), StoreError> {
        let mut items = vec![self.lease_check(lease)?];
        for (i, (record, payload)) in records.iter().zip(payloads).enumerate() {
            let put = Put::builder()
                .table_name(self.name())
                .item(PK, AttributeValue::S(grant_pk(&record.grant)))
                .item(SK, n(record.seq))
                .item(POS, n(first_pos + i as u64))
                .item(REC, AttributeValue::B(Blob::new(payload.clone())))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| self.build(e))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let log = Put::builder()
            .table_name(self.name())
            .item(PK, AttributeValue::S(LOG_PK.to_string()))
            .item(SK, n(log_index))
            .item(POS, n(first_pos))
            .item(EPOCH, n(lease.epoch))
            .item(RECS, AttributeValue::L(payloads.iter().map(|p| AttributeValue::B(Blob::new(p.clone()))).collect()))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| self.build(e))?;
        items.push(TransactWriteItem::builder().put(log).build());
        // Positions are never reused by one holder (a failed append's are skipped), so the
        // token names one request: a retry of it returns its first outcome and applies nothing
        // twice.
        let token = format!("e{:x}p{first_pos:x}", lease.epoch);
        let sent = self
            .client()
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(token)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) => Err(self.cancelled(lease, &err, |i| records.get(i)).await),
        }
    }

    /// Names why a write transaction was refused: the lease check failed (fenced), a record's
    /// sequence was taken, or something else.
    async fn cancelled<'a, R: std::fmt::Debug>(
        &self,
        lease: &Lease,
        err: &SdkError<TransactWriteItemsError, R>,
        record_at: impl Fn(usize) -> Option<&'a Record>,
    ) -> StoreError {
        let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = err.as_service_error() else {
            return self.remote("TransactWriteItems", err);
        };
        let reasons = cancel.cancellation_reasons();
        let failed = |i: usize| reasons.get(i).and_then(|r| r.code()) == Some("ConditionalCheckFailed");
        if failed(0) {
            return self.fenced(lease).await;
        }
        if let Some(record) = (1..reasons.len()).find(|&i| failed(i)).and_then(|i| record_at(i - 1)) {
            return StoreError::SequenceTaken { grant: record.grant.to_hex(), seq: record.seq };
        }
        self.remote("TransactWriteItems", err)
    }

    /// Deletes the items of a failed append, chunk by chunk as it was written, newest first (so
    /// the log items left are always a prefix: the log stays dense), each chunk's position-log
    /// item and record items in one transaction conditional on the lease (so the log and the
    /// record items never disagree). A record item is deleted only when it holds
    /// the position this append gave it, so a record another writer put at one of those keys is
    /// never deleted: it is left in place and the rest are deleted.
    pub(crate) async fn delete_unacknowledged(&self, lease: &Lease, chunks: &[UnackedChunk]) -> Result<(), StoreError> {
        for (first_pos, log_index, keys) in chunks.iter().rev() {
            let mut left: Vec<(GrantId, u64, u64)> =
                keys.iter().enumerate().map(|(i, (grant, seq))| (*grant, *seq, first_pos + i as u64)).collect();
            let mut attempt = 0u32;
            loop {
                let mut items = vec![self.lease_check(lease)?];
                let log = Delete::builder()
                    .table_name(self.name())
                    .key(PK, AttributeValue::S(LOG_PK.to_string()))
                    .key(SK, n(*log_index))
                    .condition_expression("attribute_not_exists(pk) OR ep = :ep")
                    .expression_attribute_values(":ep", n(lease.epoch))
                    .build()
                    .map_err(|e| self.build(e))?;
                items.push(TransactWriteItem::builder().delete(log).build());
                for (grant, seq, pos) in &left {
                    let delete = Delete::builder()
                        .table_name(self.name())
                        .key(PK, AttributeValue::S(grant_pk(grant)))
                        .key(SK, n(*seq))
                        .condition_expression("attribute_not_exists(pk) OR pos = :pos")
                        .expression_attribute_values(":pos", n(*pos))
                        .build()
                        .map_err(|e| self.build(e))?;
                    items.push(TransactWriteItem::builder().delete(delete).build());
                }
                let token = format!("e{:x}d{first_pos:x}a{attempt:x}", lease.epoch);
                let sent = self
                    .client()
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .client_request_token(token)
                    .send()
                    .await;
                let Err(err) = sent else { break };
                let reasons = match err.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(cancel)) => {
                        cancel.cancellation_reasons().to_vec()
                    }
                    _ => Vec::new(),
                };
                let failed = |i: usize| reasons.get(i).and_then(|r| r.code()) == Some("ConditionalCheckFailed");
                if failed(0) {
                    return Err(self.fenced(lease).await);
                }
                let before = left.len();
                let mut index = 1;
                // Item i + 2 of the transaction is left[i]: drop the keys another writer holds.
                left.retain(|_| {
                    index += 1;
                    !failed(index)
                });
                if failed(1) || left.len() == before {
                    return Err(self.remote("TransactWriteItems (remove the items of an unacknowledged append)", &err));
                }
                attempt += 1;
            }
        }
        Ok(())
    }
}
