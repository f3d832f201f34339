//! Snapshots of the DynamoDB ledger against moto: a takeover from a snapshot plus the position
//! log after it folds to the books of a full replay, never Scans while a snapshot is usable,
//! falls back from a damaged snapshot to the previous one and then to a full replay, refuses a
//! fenced writer's snapshot, and an existing table (written without the log) opens unchanged
//! and gains a snapshot.
//!
//! Like the other moto tests, these say loudly that they did not run without `MOTO_ENDPOINT`,
//! and fail under `REQUIRE_MOTO=1`.
#![cfg(feature = "sdk")]

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use backend_api::GrantId;
use ledger_dynamodb::{DynamoStore, DynamoTable, OpenReport, open_ledger_with};
use sim_ec2::ManualClock;
use usage_ledger::file::encode_payload;
use usage_ledger::{Event, Ledger, MemoryStore, SnapshotPolicy, StoreError};

use crate::ledger_dynamodb::{GROUP, LEASE_MS, T0, acquire, interleaved, records, table};

/// Snapshots every 20 records (and never by time).
const EVERY_20: SnapshotPolicy = SnapshotPolicy { every_records: 20, every_ms: u64::MAX };

/// The ledger a full replay (a Scan) of `table` gives.
async fn full_replay(table: &DynamoTable) -> Ledger<MemoryStore> {
    Ledger::open_replayed(MemoryStore::new(), table.replay().await.expect("scan").records).expect("fold")
}

/// Opens the ledger as `holder` (after the previous holder's lease has expired), taking no
/// snapshots of its own.
async fn take_over(table: &DynamoTable, holder: &str, clock: &ManualClock) -> (Ledger<DynamoStore>, OpenReport) {
    clock.advance_ms(LEASE_MS + 1);
    let lease = acquire(table, holder, clock).await;
    open_ledger_with(table.clone(), lease, None, |s| s).await.expect("open")
}

/// Asserts that `ledger` holds the records hash, count and every grant's state of a full replay.
async fn assert_same_as_full_replay(ledger: &Ledger<DynamoStore>, table: &DynamoTable) {
    let expected = full_replay(table).await;
    assert_eq!(ledger.record_count(), expected.record_count());
    assert_eq!(ledger.records_hash(), expected.records_hash());
    assert!(ledger.grants().eq(expected.grants()), "the books differ from a full replay's");
}

/// Ten grants' lives, one event per grant in turn (110 records).
fn history() -> Vec<(GrantId, u64, Event)> {
    interleaved(&(1..=10).map(|n| (n, 5)).collect::<Vec<_>>())
}

/// Appends `events` in batches of 7 through a ledger that snapshots every 20 records (at 21,
/// 42, 63, 84 and 105 records), waiting for each snapshot, as `holder`.
async fn write(table: &DynamoTable, holder: &str, clock: &ManualClock, events: &[(GrantId, u64, Event)]) {
    let lease = acquire(table, holder, clock).await;
    let (mut ledger, _) = open_ledger_with(table.clone(), lease, Some(EVERY_20), |s| s).await.expect("open");
    for batch in events.chunks(7) {
        ledger.append_batch(batch.to_vec()).expect("append");
        ledger.store().flush_snapshot().expect("snapshot");
    }
}

#[tokio::test]
async fn a_takeover_from_snapshot_and_tail_equals_a_full_replay_and_does_not_scan() {
    let Some(table) = table("snap-tail").await else { return };
    let clock = ManualClock::new(T0);
    let events = history();
    write(&table, "bridge-a", &clock, &events).await;
    let snapshots = table.snapshots().await.expect("manifests");
    assert_eq!(snapshots.len(), 2, "the newest two snapshots are kept: {snapshots:?}");
    assert!(snapshots[0].position > snapshots[1].position);

    // Given history the Scan of a full replay could not read (an item older than the newest
    // snapshot that does not decode), a takeover that reads only the snapshot and the log
    // after it still opens.
    let (ledger, report) = take_over(&table, "bridge-b", &clock).await;
    assert!(!report.scanned, "{report:?}");
    assert_eq!(report.snapshot, Some((snapshots[0].position, snapshots[0].records)));
    assert!(report.tail_records > 0 && report.tail_records < 20, "{report:?}");
    assert_same_as_full_replay(&ledger, &table).await;
    let expected_hash = ledger.records_hash();
    drop(ledger);
    table
        .client()
        .put_item()
        .table_name(table.name())
        .item("pk", AttributeValue::S(format!("grant#{}", GrantId([0xee; 32]).to_hex())))
        .item("sk", AttributeValue::N("0".into()))
        .item("pos", AttributeValue::N("0".into()))
        .item("rec", AttributeValue::B(Blob::new(b"not a record".to_vec())))
        .send()
        .await
        .expect("put the undecodable item");
    assert!(table.replay().await.is_err(), "a full replay reads the undecodable item");
    let (ledger, report) = take_over(&table, "bridge-c", &clock).await;
    assert!(!report.scanned, "{report:?}");
    assert_eq!(ledger.records_hash(), expected_hash);
    assert_eq!(ledger.record_count(), events.len() as u64);
}

#[tokio::test]
async fn a_damaged_snapshot_falls_back_to_the_previous_one_then_to_a_full_replay() {
    let Some(table) = table("snap-damage").await else { return };
    let clock = ManualClock::new(T0);
    write(&table, "bridge-a", &clock, &history()).await;
    let snapshots = table.snapshots().await.expect("manifests");
    assert_eq!(snapshots.len(), 2);

    // A bit flipped in the newest snapshot's part: its CRC fails, the previous one is used.
    let part = table
        .client()
        .get_item()
        .table_name(table.name())
        .key("pk", AttributeValue::S(snapshots[0].parts_pk.clone()))
        .key("sk", AttributeValue::N("0".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("read a part");
    let mut data = part.item().and_then(|i| i.get("data")).and_then(|v| v.as_b().ok()).expect("data").as_ref().to_vec();
    let last = data.len() - 1;
    data[last] ^= 0x10;
    table
        .client()
        .put_item()
        .table_name(table.name())
        .item("pk", AttributeValue::S(snapshots[0].parts_pk.clone()))
        .item("sk", AttributeValue::N("0".into()))
        .item("data", AttributeValue::B(Blob::new(data)))
        .send()
        .await
        .expect("flip a bit");
    let (ledger, report) = take_over(&table, "bridge-b", &clock).await;
    assert_eq!(report.snapshot, Some((snapshots[1].position, snapshots[1].records)), "{report:?}");
    assert!(!report.scanned);
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].contains("CRC"), "{report:?}");
    assert_same_as_full_replay(&ledger, &table).await;
    drop(ledger);

    // The previous one torn (a part gone): no snapshot is usable, the table is Scanned.
    table
        .client()
        .delete_item()
        .table_name(table.name())
        .key("pk", AttributeValue::S(snapshots[1].parts_pk.clone()))
        .key("sk", AttributeValue::N("0".into()))
        .send()
        .await
        .expect("tear a part");
    let (ledger, report) = take_over(&table, "bridge-c", &clock).await;
    assert!(report.scanned && report.snapshot.is_none(), "{report:?}");
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    assert_same_as_full_replay(&ledger, &table).await;
}

#[tokio::test]
async fn a_fenced_writer_cannot_write_or_publish_a_snapshot() {
    let Some(table) = table("snap-fenced").await else { return };
    let clock = ManualClock::new(T0);
    let lease = acquire(&table, "bridge-a", &clock).await;
    let (mut a, _) = open_ledger_with(table.clone(), lease, None, |s| s).await.expect("open");
    a.append_batch(history()[..20].to_vec()).expect("append");

    // Once b holds the lease, a's snapshot is refused: no manifest, no part.
    let (b, _) = take_over(&table, "bridge-b", &clock).await;
    a.snapshot().expect("the snapshot is handed to the store's runtime");
    let err = a.store().flush_snapshot().expect_err("a is fenced");
    assert!(matches!(&err, StoreError::Fenced { epoch: 1, .. }), "{err}");
    assert!(table.snapshots().await.expect("manifests").is_empty());
    let items = table.client().scan().table_name(table.name()).send().await.expect("scan");
    let parts = items
        .items()
        .iter()
        .filter(|i| i.get("pk").and_then(|v| v.as_s().ok()).is_some_and(|pk| pk.starts_with("snap")));
    assert_eq!(parts.count(), 0, "a fenced writer wrote snapshot items");

    // b's own snapshot is written and used by the next takeover.
    let mut b = b;
    b.snapshot().expect("b snapshots");
    b.store().flush_snapshot().expect("b's snapshot is written");
    drop(b);
    let (c, report) = take_over(&table, "bridge-c", &clock).await;
    assert_eq!(report.snapshot.map(|s| s.1), Some(20), "{report:?}");
    assert_eq!(report.tail_records, 0);
    assert_same_as_full_replay(&c, &table).await;
}

#[tokio::test]
async fn an_existing_table_opens_unchanged_gains_a_snapshot_and_an_older_writer_voids_it() {
    let Some(table) = table("snap-upgrade").await else { return };
    let clock = ManualClock::new(T0);
    let recs = records(history());
    // Given a table as the build before snapshots wrote it: record items only, no position log,
    // and a lease item without `log_epoch`.
    let old_write = |recs: &[usage_ledger::Record], first_pos: u64| {
        let (table, recs) = (table.clone(), recs.to_vec());
        async move {
            for (i, record) in recs.iter().enumerate() {
                let mut payload = Vec::new();
                encode_payload(record, &mut payload).expect("encode");
                table
                    .client()
                    .put_item()
                    .table_name(table.name())
                    .item("pk", AttributeValue::S(format!("grant#{}", record.grant.to_hex())))
                    .item("sk", AttributeValue::N(record.seq.to_string()))
                    .item("pos", AttributeValue::N((first_pos + i as u64).to_string()))
                    .item("rec", AttributeValue::B(Blob::new(payload)))
                    .send()
                    .await
                    .expect("put a record as the old build did");
            }
        }
    };
    // The old build's acquisition: it raises the epoch and leaves `log_epoch` behind it.
    let old_acquire = || {
        table
            .client()
            .update_item()
            .table_name(table.name())
            .key("pk", AttributeValue::S(format!("lease#{GROUP}")))
            .key("sk", AttributeValue::N("0".into()))
            .update_expression("SET holder = :holder, expires_unix_ms = :expires ADD epoch :one")
            .expression_attribute_values(":holder", AttributeValue::S("old-build".into()))
            .expression_attribute_values(":expires", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
    };
    old_write(&recs[..100], 0).await;
    for _ in 0..3 {
        old_acquire().await.expect("the old build's lease");
    }

    // When this build takes over it Scans (no snapshot), then snapshots at its first append.
    let lease = acquire(&table, "bridge-a", &clock).await;
    assert_eq!(lease.epoch, 4);
    let (mut ledger, report) =
        open_ledger_with(table.clone(), lease, Some(EVERY_20), |s| s).await.expect("open the old table");
    assert!(report.scanned && report.tail_records == 100, "{report:?}");
    let (grant, at, event) = (recs[100].grant, recs[100].at_unix_ms, recs[100].event.clone());
    ledger.append(grant, at, event).expect("append");
    ledger.store().flush_snapshot().expect("the first snapshot");
    assert_eq!(table.snapshots().await.expect("manifests").len(), 1);
    drop(ledger);
    let (ledger, report) = take_over(&table, "bridge-b", &clock).await;
    assert!(!report.scanned && report.snapshot.map(|s| s.1) == Some(101), "{report:?}");
    assert_same_as_full_replay(&ledger, &table).await;
    drop(ledger);

    // Then a downgraded writer (epoch 6, no position log) appends a record: the next takeover
    // must not trust the snapshot, whose log misses that record, and Scans instead.
    clock.advance_ms(LEASE_MS + 1);
    old_acquire().await.expect("the old build takes the lease back (epoch 6)");
    old_write(&recs[101..102], 200).await;
    let (ledger, report) = take_over(&table, "bridge-c", &clock).await;
    assert!(report.scanned, "{report:?}");
    assert!(report.skipped[0].contains("log_since"), "{report:?}");
    assert_eq!(ledger.record_count(), 102);
    assert_same_as_full_replay(&ledger, &table).await;
}

#[tokio::test]
async fn a_healed_append_leaves_the_log_dense_for_the_next_takeover() {
    let Some(table) = table("snap-heal").await else { return };
    let clock = ManualClock::new(T0);
    let lease = acquire(&table, "bridge-a", &clock).await;
    let (mut a, _) = open_ledger_with(table.clone(), lease, None, |s| s).await.expect("open");
    a.append_batch(interleaved(&[(3, 2)])).expect("append");
    a.snapshot().expect("snapshot");
    a.store().flush_snapshot().expect("the snapshot is written");

    // Given another writer's item at a key the second transaction of a big append carries.
    let big = interleaved(&[(1, 120), (2, 120)]);
    let victim = &records(big.clone())[ledger_dynamodb::MAX_RECORDS_PER_TRANSACTION + 5];
    let key = |b: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder| {
        b.table_name(table.name())
            .item("pk", AttributeValue::S(format!("grant#{}", victim.grant.to_hex())))
            .item("sk", AttributeValue::N(victim.seq.to_string()))
    };
    key(table.client().put_item())
        .item("pos", AttributeValue::N("1000000".into()))
        .send()
        .await
        .expect("put the other writer's item");

    // When the append fails after its first transaction, is healed, and (the other item gone)
    // is made again, its chunks take the log indexes the failed one had.
    assert!(a.append_batch(big.clone()).is_err(), "the second transaction conflicts");
    table
        .client()
        .delete_item()
        .table_name(table.name())
        .key("pk", AttributeValue::S(format!("grant#{}", victim.grant.to_hex())))
        .key("sk", AttributeValue::N(victim.seq.to_string()))
        .send()
        .await
        .expect("remove the other writer's item");
    a.heal().expect("heal");
    a.append_batch(big).expect("the append, again");
    let expected = (a.records_hash(), a.record_count());
    drop(a);

    // Then a takeover from the snapshot reads the whole log after it: no gap stops it early.
    let (b, report) = take_over(&table, "bridge-b", &clock).await;
    assert!(!report.scanned && report.tail_records > 2 * 98, "{report:?}");
    assert_eq!((b.records_hash(), b.record_count()), expected);
    assert_same_as_full_replay(&b, &table).await;
}
