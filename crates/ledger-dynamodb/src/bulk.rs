//! Loading a large history quickly, for benchmarks: the items an append writes (record items
//! and position-log items, chunked as an append chunks them), sent with `BatchWriteItem`, which
//! checks neither the lease nor the sequences. Only for a table nobody else writes; the bridge
//! never calls it.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use tokio::task::JoinSet;
use usage_ledger::{Record, StoreError};

use crate::table::{DynamoTable, EPOCH, LOG_PK, PK, POS, REC, RECS, SK, grant_pk, n};
use crate::write::plan_chunks;

/// `BatchWriteItem` takes at most 25 items per request.
const ITEMS_PER_BATCH: usize = 25;
/// Requests in flight at once.
const CONCURRENT_BATCHES: usize = 4;

impl DynamoTable {
    /// Writes `records` (with their encoded `payloads`) at positions `first_pos..` and log
    /// indexes `first_log..` as if a holder at `epoch` had appended them, without any condition:
    /// for benchmarks populating a table nobody else writes. Returns the number of items
    /// written and the next log index.
    pub async fn bulk_load_unchecked(
        &self,
        epoch: u64,
        records: &[Record],
        payloads: &[Vec<u8>],
        first_pos: u64,
        first_log: u64,
    ) -> Result<(u64, u64), StoreError> {
        let chunks = plan_chunks(records, payloads)?;
        let next_log = first_log + chunks.len() as u64;
        let mut requests = Vec::with_capacity(records.len() + chunks.len());
        for (index, range) in chunks.into_iter().enumerate() {
            for i in range.clone() {
                requests.push(put(vec![
                    (PK, AttributeValue::S(grant_pk(&records[i].grant))),
                    (SK, n(records[i].seq)),
                    (POS, n(first_pos + i as u64)),
                    (REC, AttributeValue::B(Blob::new(payloads[i].clone()))),
                ])?);
            }
            let recs = payloads[range.clone()].iter().map(|p| AttributeValue::B(Blob::new(p.clone()))).collect();
            requests.push(put(vec![
                (PK, AttributeValue::S(LOG_PK.to_string())),
                (SK, n(first_log + index as u64)),
                (POS, n(first_pos + range.start as u64)),
                (EPOCH, n(epoch)),
                (RECS, AttributeValue::L(recs)),
            ])?);
        }
        let written = requests.len() as u64;
        let mut batches = requests.chunks(ITEMS_PER_BATCH).map(<[WriteRequest]>::to_vec);
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() < CONCURRENT_BATCHES {
                let Some(batch) = batches.next() else { break };
                let table = self.clone();
                in_flight.spawn(async move { table.batch_write(batch).await });
            }
            match in_flight.join_next().await {
                Some(joined) => joined.map_err(|e| StoreError::Remote {
                    store: self.label(),
                    op: "BatchWriteItem",
                    reason: format!("the task failed: {e}"),
                })??,
                None => return Ok((written, next_log)),
            }
        }
    }

    /// One `BatchWriteItem`, sent again with whatever DynamoDB left unprocessed.
    async fn batch_write(&self, mut batch: Vec<WriteRequest>) -> Result<(), StoreError> {
        while !batch.is_empty() {
            let out = self
                .client()
                .batch_write_item()
                .request_items(self.name(), batch)
                .send()
                .await
                .map_err(|e| self.remote("BatchWriteItem", &e))?;
            batch = out.unprocessed_items.and_then(|mut left| left.remove(self.name())).unwrap_or_default();
            if !batch.is_empty() {
                // Throttled: give the table a moment before sending the rest.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

fn put(attributes: Vec<(&str, AttributeValue)>) -> Result<WriteRequest, StoreError> {
    let mut request = PutRequest::builder();
    for (name, value) in attributes {
        request = request.item(name, value);
    }
    let request = request.build().map_err(|e| StoreError::Remote {
        store: "dynamodb".to_string(),
        op: "build a request",
        reason: e.to_string(),
    })?;
    Ok(WriteRequest::builder().put_request(request).build())
}
