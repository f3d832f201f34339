//! [`DynamoLeases`]: the [`LeaseTable`] of a bridge group whose ledger is a DynamoDB table
//! (`[ledger] store = "dynamodb"`), over `ledger-dynamodb`.

use std::sync::Arc;

use async_trait::async_trait;
use backend_api::Clock;
use ledger_dynamodb::{Connection, DynamoTable};
use usage_ledger::{Lease, LeaseError, LeaseInfo, Ledger, LedgerError, Record, StoreError};

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
    /// without the lease, the table would refuse them anyway).
    pub async fn read_ledger(&self, store: DynStore) -> Result<BackendLedger, LedgerError> {
        Ledger::open_replayed(store, self.records().await?)
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

    async fn open_ledger(&self, lease: &Lease) -> Result<BackendLedger, LedgerError> {
        ledger_dynamodb::open_ledger_as(self.table.clone(), lease.clone(), |store| DynStore(Box::new(store))).await
    }
}
