//! [`DynamoLeases`]: the [`LeaseTable`] of a bridge group whose ledger is a DynamoDB table
//! (`[ledger] store = "dynamodb"`), over `ledger-dynamodb`.

use std::sync::Arc;

use async_trait::async_trait;
use backend_api::Clock;
use ledger_dynamodb::{Connection, DynamoTable};
use usage_ledger::{Lease, LeaseError, LeaseInfo, LedgerError, Record, StoreError};

use crate::backend::{BackendLedger, DynStore};
use crate::config::{AwsBootConfig, DynamoLedger};
use crate::standby::LeaseTable;

/// A bridge group's lease and shared ledger in one DynamoDB table.
pub struct DynamoLeases {
    table: DynamoTable,
    group: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DynamoLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoLeases").field("table", &self.table.name()).field("group", &self.group).finish()
    }
}

impl DynamoLeases {
    /// The lease of `group` in `table`, its expiries read from `clock`.
    pub fn new(table: DynamoTable, group: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self { table, group: group.into(), clock }
    }

    /// The table and group `ledger` names, reached with `cfg`'s credentials (or the standard
    /// chain) at `ledger`'s endpoint (or the SDK's own resolution: `AWS_ENDPOINT_URL_DYNAMODB`,
    /// `AWS_ENDPOINT_URL`, then AWS). Makes no network call.
    pub async fn connect(cfg: &AwsBootConfig, ledger: &DynamoLedger, clock: Arc<dyn Clock>) -> Self {
        let connection = Connection {
            region: ledger.region.to_string(),
            endpoint_url: ledger.endpoint_url.clone(),
            static_credentials: cfg
                .credentials
                .as_ref()
                .map(|c| (c.access_key_id.clone(), c.secret_access_key.clone())),
            session_token: cfg.credentials.as_ref().and_then(|c| c.session_token.clone()),
        };
        Self::new(DynamoTable::new(connection.client().await, ledger.table.clone()), ledger.group.clone(), clock)
    }

    /// The table.
    pub fn table(&self) -> &DynamoTable {
        &self.table
    }

    /// Every record of the ledger as it stands, read without the lease (for `status` and a dry
    /// run, which write nothing): a consistent scan, in append order.
    pub async fn records(&self) -> Result<Vec<(Record, Vec<u8>)>, StoreError> {
        Ok(self.table.replay().await?.records)
    }

    /// The ledger as it stands, read without the lease, over `store` (one that refuses appends:
    /// without the lease, the table would refuse them anyway): from its newest usable snapshot
    /// and the position log after it, as a takeover reads it, or a Scan when none is usable.
    pub async fn read_ledger(&self, store: DynStore) -> Result<BackendLedger, LedgerError> {
        Ok(ledger_dynamodb::read_ledger_as(&self.table, &self.group, store).await?.0)
    }
}

#[async_trait]
impl LeaseTable for DynamoLeases {
    fn group(&self) -> &str {
        &self.group
    }

    async fn acquire(&self, holder: &str, duration_ms: u64) -> Result<Lease, LeaseError> {
        self.table.acquire(&self.group, holder, duration_ms, self.clock.as_ref()).await
    }

    async fn renew(&self, lease: &mut Lease, duration_ms: u64) -> Result<(), StoreError> {
        self.table.renew(lease, duration_ms, self.clock.as_ref()).await
    }

    async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        self.table.release(lease).await
    }

    async fn holder(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.table.lease_holder(&self.group).await
    }

    /// Opens the group's ledger from its newest usable snapshot and the position log after it
    /// (a Scan only when no snapshot is usable), snapshotting by
    /// [`ledger_dynamodb::DEFAULT_SNAPSHOT_POLICY`] in the background so the next takeover's tail
    /// stays short.
    async fn open_ledger(&self, lease: &Lease) -> Result<BackendLedger, LedgerError> {
        let policy = Some(ledger_dynamodb::DEFAULT_SNAPSHOT_POLICY);
        let wrap = |store| DynStore(Box::new(store));
        let (ledger, report) =
            ledger_dynamodb::open_ledger_with(self.table.clone(), lease.clone(), policy, wrap).await?;
        tracing::info!(
            table = self.table.name(),
            snapshot_position = report.snapshot.map(|s| s.0),
            tail_records = report.tail_records,
            scanned = report.scanned,
            skipped = ?report.skipped,
            "opened the group's ledger"
        );
        Ok(ledger)
    }
}
