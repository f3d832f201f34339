//! The table: how records are laid out in items, the table's creation, the reads a full replay
//! makes, and the lease check every write carries. The writes are in `write.rs`, the snapshot
//! items and the takeover's reads in `snapshot.rs` and `open.rs`.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, ScalarAttributeType, TransactWriteItem,
};
use backend_api::{GrantId, Secret};
use usage_ledger::file::decode_payload;
use usage_ledger::{Record, StoreError};

use usage_ledger::Lease;

/// How long one HTTP attempt may take before it counts as failed. An append blocks its caller
/// for at most the SDK's attempts times this, so a partitioned table fails appends (and the
/// ledger degrades) instead of hanging the bridge.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
pub(crate) const POS: &str = "pos";
pub(crate) const REC: &str = "rec";
/// A position-log item's records' payloads, in order.
pub(crate) const RECS: &str = "recs";
/// The epoch of the lease holder that wrote an item.
pub(crate) const EPOCH: &str = "ep";
const GRANT_PREFIX: &str = "grant#";
/// The partition of the position log: one item per written chunk, sorted by first position.
pub(crate) const LOG_PK: &str = "log";

/// Where the table is and who signs for it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// An endpoint other than AWS's (moto, DynamoDB Local), or `None` for the SDK's own
    /// resolution (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL`, then AWS).
    pub endpoint_url: Option<String>,
    /// An access key id and its secret; `None` uses the standard AWS credential chain.
    pub static_credentials: Option<(String, Secret)>,
    /// The session token that goes with temporary `static_credentials`.
    pub session_token: Option<Secret>,
}

impl Connection {
    /// A DynamoDB client for this connection. It reads the environment and profile files but
    /// makes no network call. The SDK's standard retries stay on: every write is conditional
    /// and every transaction carries a ClientRequestToken, so a retried call cannot apply twice.
    pub async fn client(&self) -> Client {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(self.region.clone())).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some((id, secret)) = &self.static_credentials {
            // The only place the secret leaves its wrapper: into the SDK's signer.
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.expose().to_string(),
                self.session_token.as_ref().map(|token| token.expose().to_string()),
                None,
                "ledger-dynamodb",
            ));
        }
        Client::new(&loader.load().await)
    }
}

/// What a replay of the table found: every record with its payload as stored, in the order
/// they were appended, and the position the next append takes.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The records and their stored payloads, in append order (`pos`).
    pub records: Vec<(Record, Vec<u8>)>,
    /// One past the highest `pos` in the table.
    pub next_pos: u64,
    /// One past the highest position-log index in the table (0 when it has no log item).
    pub next_log: u64,
}

/// One DynamoDB table holding one ledger and the lease of the bridge group that owns it.
#[derive(Debug, Clone)]
pub struct DynamoTable {
    client: Client,
    name: String,
}

pub(crate) fn grant_pk(grant: &GrantId) -> String {
    format!("{GRANT_PREFIX}{}", grant.to_hex())
}

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl DynamoTable {
    /// The table `name`, reached through `client`.
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self { client, name: name.into() }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client it is reached through (for tools and tests that read or damage items).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn label(&self) -> String {
        format!("dynamodb table {}", self.name)
    }

    /// A store error for a failed call, naming the table and, for the answers an operator can
    /// fix, the fix.
    pub(crate) fn remote<E, R>(&self, op: &'static str, err: &SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let hint = match err.code() {
            Some("ResourceNotFoundException") => format!(
                ": the table does not exist in this region: create it (`ledger-dynamodb create-table --table {}`, docs/operations.md)",
                self.name
            ),
            Some("AccessDeniedException" | "UnrecognizedClientException") => {
                ": the credentials may not use this table: grant the IAM actions listed in docs/operations.md"
                    .to_string()
            }
            Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => {
                ": throttled: use on-demand capacity (docs/operations.md) and retry".to_string()
            }
            _ => String::new(),
        };
        StoreError::Remote { store: self.label(), op, reason: format!("{}{hint}", DisplayErrorContext(err)) }
    }

    /// Creates the table with on-demand capacity, waits until it is active, and turns
    /// point-in-time recovery on. For tests and operators (docs/operations.md); the bridge never
    /// creates tables.
    pub async fn create(&self) -> Result<(), StoreError> {
        let attribute = |name: &str, kind| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(kind).build().map_err(|e| self.build(e))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(|e| self.build(e))
        };
        self.client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(PK, ScalarAttributeType::S)?)
            .attribute_definitions(attribute(SK, ScalarAttributeType::N)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .send()
            .await
            .map_err(|e| self.remote("CreateTable", &e))?;
        self.client.wait_until_table_exists().table_name(&self.name).wait(Duration::from_secs(300)).await.map_err(
            |e| StoreError::Remote {
                store: self.label(),
                op: "wait for the table to be active (DescribeTable)",
                reason: DisplayErrorContext(&e).to_string(),
            },
        )?;
        let recovery = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(|e| self.build(e))?;
        self.client
            .update_continuous_backups()
            .table_name(&self.name)
            .point_in_time_recovery_specification(recovery)
            .send()
            .await
            .map_err(|e| self.remote("UpdateContinuousBackups (point-in-time recovery)", &e))?;
        Ok(())
    }

    pub(crate) fn build(&self, err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
        StoreError::Remote { store: self.label(), op: "build a request", reason: err.to_string() }
    }

    pub(crate) fn corrupt(&self, item: &std::collections::HashMap<String, AttributeValue>, why: &str) -> StoreError {
        let key = |name: &str| item.get(name).map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
        StoreError::Remote {
            store: self.label(),
            op: "decode a record item",
            reason: format!(
                "item pk={} sk={}: {why}; it was not written by ledger-dynamodb: remove it, or restore the table with point-in-time recovery",
                key(PK),
                key(SK)
            ),
        }
    }

    /// Decodes a record item: the record, its stored payload and its position.
    fn decode(
        &self,
        item: &std::collections::HashMap<String, AttributeValue>,
    ) -> Result<(Record, Vec<u8>, u64), StoreError> {
        let number = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| self.corrupt(item, &format!("`{name}` is not a whole number")))
        };
        let pk = item.get(PK).and_then(|v| v.as_s().ok()).ok_or_else(|| self.corrupt(item, "`pk` is not a string"))?;
        let seq = number(SK)?;
        let pos = number(POS)?;
        let payload = item
            .get(REC)
            .and_then(|v| v.as_b().ok())
            .ok_or_else(|| self.corrupt(item, "`rec` is not binary"))?
            .as_ref()
            .to_vec();
        let record = decode_payload(&payload).map_err(|e| self.corrupt(item, &e))?;
        if *pk != grant_pk(&record.grant) || seq != record.seq {
            return Err(self.corrupt(item, &format!("holds grant {} seq {}", record.grant.to_hex(), record.seq)));
        }
        Ok((record, payload, pos))
    }

    /// Every record in the table, in the order they were appended, read with strongly
    /// consistent scans (a new lease holder must see every acknowledged append).
    pub async fn replay(&self) -> Result<Replayed, StoreError> {
        let mut found = Vec::new();
        let mut next_log = 0;
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.remote("Scan", &e))?;
            for item in page.items() {
                let pk = item.get(PK).and_then(|v| v.as_s().ok());
                if pk.is_some_and(|pk| pk.starts_with(GRANT_PREFIX)) {
                    found.push(self.decode(item)?);
                } else if pk.is_some_and(|pk| pk == LOG_PK) {
                    let index = item.get(SK).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<u64>().ok());
                    let index = index.ok_or_else(|| self.corrupt(item, "`sk` is not a whole number"))?;
                    next_log = next_log.max(index + 1);
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        // Append order; within one position (never written twice by one lease holder) the
        // grant's own order.
        found.sort_by_key(|(record, _, pos)| (*pos, record.grant, record.seq));
        let next_pos = found.last().map_or(0, |(_, _, pos)| pos + 1);
        Ok(Replayed {
            records: found.into_iter().map(|(record, payload, _)| (record, payload)).collect(),
            next_pos,
            next_log,
        })
    }

    /// Every record of `grant`, in sequence order (a strongly consistent, paginated Query).
    pub async fn grant_records(&self, grant: &GrantId) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.name)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(grant_pk(grant)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.remote("Query", &e))?;
            for item in page.items() {
                records.push(self.decode(item)?.0);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(records)
    }

    /// The lease check every write transaction starts with: the lease item still names this
    /// holder at this epoch.
    pub(crate) fn lease_check(&self, lease: &Lease) -> Result<TransactWriteItem, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(&self.name)
            .set_key(Some(crate::lease::lease_key(&lease.group)))
            .condition_expression("holder = :holder AND epoch = :epoch")
            .expression_attribute_values(":holder", AttributeValue::S(lease.holder.clone()))
            .expression_attribute_values(":epoch", n(lease.epoch))
            .build()
            .map_err(|e| self.build(e))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// The fencing error for `lease`, naming who holds the lease now when that can be read.
    pub(crate) async fn fenced(&self, lease: &Lease) -> StoreError {
        let reason = match self.lease_holder(&lease.group).await {
            Ok(Some(now)) => format!("the lease is now held by {} at epoch {}", now.holder, now.epoch),
            Ok(None) => "the lease item is gone".to_string(),
            Err(err) => format!("the lease item no longer names this holder at this epoch (reading it failed: {err})"),
        };
        StoreError::Fenced { group: lease.group.clone(), epoch: lease.epoch, reason }
    }
}
