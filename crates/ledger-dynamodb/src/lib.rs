//! The usage ledger's event store over DynamoDB, with fenced ownership.
//!
//! One table holds one ledger: an item per record, keyed by grant (`pk = "grant#<hex>"`, the
//! partition key) and sequence (`sk`, the sort key), holding the record in the file store's
//! versioned payload encoding (`rec`) and its place in the order of appends (`pos`); the same
//! records again in position-log items (`pk = "log"`, one per append transaction, `sk` a dense
//! log index); snapshot items (parts and two manifest slots); and the lease item of the bridge
//! group that owns the ledger (`pk = "lease#<group>"`, `sk = 0`).
//!
//! - [`DynamoTable`] is the table: creation ([`DynamoTable::create`]), reads
//!   ([`DynamoTable::replay`], [`DynamoTable::grant_records`], [`DynamoTable::snapshots`]) and
//!   the lease protocol ([`DynamoTable::acquire`], [`DynamoTable::renew`],
//!   [`DynamoTable::release`], [`DynamoTable::lease_holder`]).
//! - [`DynamoStore`] is the [`usage_ledger::EventStore`] a [`usage_ledger::Ledger`] writes
//!   through, holding a [`Lease`]: every append is one `TransactWriteItems` (per
//!   [`MAX_RECORDS_PER_TRANSACTION`] records) of conditional puts and a check that the lease
//!   item still holds the writer's epoch; snapshots are written in the background under the
//!   same check.
//! - [`open_ledger_with`] is the takeover path: the newest usable snapshot and the log after
//!   it, read by key, or a Scan when no snapshot is usable ([`OpenReport`] says which).
//!
//! The protocol and its safety argument are in `docs/ARCHITECTURE.md` ("Fenced ownership of a
//! DynamoDB ledger"); the table, snapshots, the takeover path, its IAM, upgrading and the
//! import of a file ledger in `docs/operations.md`.

pub mod bridge_config;
mod bulk;
mod copy;
mod iam;
mod lease;
mod open;
mod snapshot;
mod store;
mod table;
mod write;

pub use copy::{CopyError, CopyReport, export_file, import_file};
pub use iam::{DYNAMODB_ACTIONS, OPERATOR_ACTIONS};
pub use open::{OpenReport, open_ledger, open_ledger_as, open_ledger_with, read_ledger_as};
pub use snapshot::SnapshotItem;
pub use store::{DEFAULT_SNAPSHOT_POLICY, DynamoStore};
pub use table::{Connection, DynamoTable, Replayed};
pub use usage_ledger::{Lease, LeaseError, LeaseInfo};
pub use write::MAX_RECORDS_PER_TRANSACTION;
