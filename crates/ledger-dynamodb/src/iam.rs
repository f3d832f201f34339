//! The IAM actions the table's users need, next to the calls that need them, so that
//! `docs/iam-policy.json` can be checked against the code (`tests/integration/iam_policy.rs`).
//!
//! IAM has no `dynamodb:TransactWriteItems` action: a transaction is authorised as each item
//! action it carries (`PutItem`, `DeleteItem`, `ConditionCheckItem`, `UpdateItem`), with
//! `dynamodb:EnclosingOperation` naming the transaction.

/// Every action a bridge calls on its group's table, and nothing more: the `UsageLedgerTable`
/// statement of `docs/iam-policy.json` grants exactly these, on the table's ARN.
pub const DYNAMODB_ACTIONS: &[&str] = &[
    // `DynamoTable::acquire`, `renew` and `release` (`lease.rs`): conditional UpdateItems on the
    // lease item.
    "dynamodb:UpdateItem",
    // `DynamoTable::lease_holder` (`lease.rs`): who holds the lease, for `status`, a refused
    // acquisition and a fencing error.
    "dynamodb:GetItem",
    // `DynamoTable::replay` (`table.rs`): the consistent Scan `status`, a dry run and a new
    // holder that finds no usable snapshot read the ledger with.
    "dynamodb:Scan",
    // `DynamoTable::snapshots`, `read_snapshot` and `log_after` (`snapshot.rs`): the consistent
    // reads by key a takeover reads the newest snapshot and the position log after it with.
    "dynamodb:BatchGetItem",
    // `DynamoTable::write_encoded` (`write.rs`), inside every append's TransactWriteItems: the
    // lease check, then one conditional put per record and the position-log item; and
    // `DynamoTable::write_snapshot` (`snapshot.rs`): the snapshot's parts and manifest.
    "dynamodb:ConditionCheckItem",
    "dynamodb:PutItem",
    // `DynamoTable::delete_unacknowledged` (`write.rs`), inside a heal's TransactWriteItems:
    // removing the items of an append that failed half-way; and the old snapshots
    // `write_snapshot` deletes.
    "dynamodb:DeleteItem",
];

/// Actions only the operator's tools, the tests and the benchmarks call, never a bridge:
/// creating the table (`DynamoTable::create`: CreateTable, DescribeTable through the waiter,
/// UpdateContinuousBackups), reading one grant (`DynamoTable::grant_records`: Query) and loading
/// a benchmark's history (`DynamoTable::bulk_load_unchecked`: BatchWriteItem).
pub const OPERATOR_ACTIONS: &[&str] = &[
    "dynamodb:CreateTable",
    "dynamodb:DescribeTable",
    "dynamodb:UpdateContinuousBackups",
    "dynamodb:Query",
    "dynamodb:BatchWriteItem",
];
