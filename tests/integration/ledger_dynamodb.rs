//! The DynamoDB event store (`ledger-dynamodb`) against moto's DynamoDB, which moto's server
//! serves on the same port as EC2: conditional appends, fencing by lease epoch, renewal, replay
//! equal to the file store's, import of a file ledger, and appends over DynamoDB's
//! 100-item transaction limit.
//!
//! Like the EC2 moto tests, these say loudly that they did not run without `MOTO_ENDPOINT`, and
//! fail under `REQUIRE_MOTO=1` (as in `cargo xtask ci`).
#![cfg(feature = "sdk")]

use std::sync::atomic::{AtomicU64, Ordering};

use backend_api::{AlmanacTick, GrantId, Secret};
use ledger_dynamodb::{
    Connection, DynamoStore, DynamoTable, Lease, LeaseError, MAX_RECORDS_PER_TRANSACTION, import_file, open_ledger,
};
use sim_ec2::ManualClock;
use usage_ledger::{Event, EventStore, Ledger, MemoryStore, ObservedState, Record, StoreError};

use crate::moto::moto_endpoint;

pub(crate) const T0: u64 = 1_800_000_000_000;
pub(crate) const GROUP: &str = "bridge-test";
pub(crate) const LEASE_MS: u64 = 10_000;

/// A fresh table on moto, or `None` when moto is not there (after saying so).
pub(crate) async fn table(test: &str) -> Option<DynamoTable> {
    let endpoint = moto_endpoint(test)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ledger-{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed) + rand::random::<u32>() as u64
    );
    let connection = Connection {
        region: "us-east-1".to_string(),
        endpoint_url: Some(endpoint),
        static_credentials: Some(("testing".to_string(), Secret::new("testing"))),
        session_token: None,
    };
    let table = DynamoTable::new(connection.client().await, name);
    table.create().await.expect("create the table on moto");
    Some(table)
}

pub(crate) fn grant(n: u8) -> GrantId {
    GrantId([n; 32])
}

/// A valid life for grant `n`: admitted, resources made, launched, running, then `samples`
/// network samples.
pub(crate) fn life(n: u8, samples: u64) -> Vec<Event> {
    let instance = format!("i-{n:017x}");
    let mut events = vec![
        Event::GrantAdmitted {
            region: "us-east-1".into(),
            instance_type: "m7i.large".into(),
            vcpus: 2,
            memory_mib: 8192,
            storage_bytes: 20 << 30,
            valid_to: AlmanacTick(1000),
            valid_to_unix_ms: T0 + 3_600_000,
            key_name: format!("cb-{n:02x}"),
            group_name: format!("cb-{n:02x}"),
        },
        Event::KeyPairImported { key_name: format!("cb-{n:02x}"), key_pair_id: format!("key-{n:017x}") },
        Event::SecurityGroupCreated { group_id: format!("sg-{n:017x}"), group_name: format!("cb-{n:02x}") },
        Event::LaunchRequested {
            client_token: format!("tok-{n:02x}"),
            instance_type: "m7i.large".into(),
            image_id: Some("ami-0123456789abcdef0".into()),
        },
        Event::InstanceLaunched {
            instance_id: instance.clone(),
            client_token: format!("tok-{n:02x}"),
            instance_type: "m7i.large".into(),
            vcpus: 2,
            memory_mib: 8192,
        },
        Event::InstanceStateObserved {
            instance_id: instance.clone(),
            state: ObservedState::Running,
            observed_at_unix_ms: T0 + 1_000,
        },
    ];
    for s in 0..samples {
        let end = T0 + 60_000 * (s + 1);
        events.push(Event::NetworkSampled {
            instance_id: instance.clone(),
            bytes_in: 1_000 * (s + 1),
            bytes_out: 500 * (s + 1),
            window_start_unix_ms: end - 60_000,
            window_end_unix_ms: end,
        });
    }
    events
}

/// The records a ledger writes for these grants' lives, interleaved one event per grant in turn.
pub(crate) fn interleaved(grants: &[(u8, u64)]) -> Vec<(GrantId, u64, Event)> {
    let mut lives: Vec<_> = grants.iter().map(|&(n, samples)| (grant(n), life(n, samples).into_iter())).collect();
    let mut out = Vec::new();
    let mut at = T0;
    loop {
        let mut any = false;
        for (id, events) in &mut lives {
            if let Some(event) = events.next() {
                at += 7;
                out.push((*id, at, event));
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

/// Records as a ledger would write them (validated and sequenced), without a store.
pub(crate) fn records(events: Vec<(GrantId, u64, Event)>) -> Vec<Record> {
    let mut ledger = Ledger::in_memory();
    ledger.append_batch(events).expect("valid events");
    ledger.store().records()
}

pub(crate) async fn acquire(table: &DynamoTable, holder: &str, clock: &ManualClock) -> Lease {
    table.acquire(GROUP, holder, LEASE_MS, clock).await.expect("acquire the lease")
}

#[tokio::test]
async fn a_sequence_is_written_once_and_never_overwritten() {
    let Some(table) = table("conflict").await else { return };
    let clock = ManualClock::new(T0);
    let lease = acquire(&table, "bridge-a", &clock).await;
    let first = records(interleaved(&[(1, 0)]));
    let mut store = DynamoStore::new(table.clone(), lease.clone(), 0).expect("store");
    store.append(&first[..2]).expect("first append");

    // Given a second writer (a stale copy of the books) that appends another record at seq 1.
    let mut other = first[1].clone();
    other.at_unix_ms += 1;
    let mut second = DynamoStore::new(table.clone(), lease, 100).expect("store");
    let err = second.append(std::slice::from_ref(&other)).expect_err("seq 1 is taken");
    assert!(
        matches!(&err, StoreError::SequenceTaken { grant, seq: 1 } if *grant == grant_hex(1)),
        "expected SequenceTaken for seq 1, got {err}"
    );
    assert!(err.to_string().contains("seq 1"), "{err}");

    // Then the stored record is the first writer's, untouched.
    assert_eq!(table.grant_records(&grant(1)).await.expect("query"), first[..2].to_vec());
}

fn grant_hex(n: u8) -> String {
    grant(n).to_hex()
}

#[tokio::test]
async fn a_writer_that_lost_the_lease_is_fenced() {
    let Some(table) = table("fenced").await else { return };
    let clock = ManualClock::new(T0);
    let lease_a = acquire(&table, "bridge-a", &clock).await;
    assert_eq!(lease_a.epoch, 1);
    let recs = records(interleaved(&[(1, 2)]));
    let mut a = DynamoStore::new(table.clone(), lease_a.clone(), 0).expect("store");
    a.append(&recs[..3]).expect("a writes while it holds the lease");

    // While a's lease runs, b cannot take it.
    clock.advance_ms(LEASE_MS / 2);
    match table.acquire(GROUP, "bridge-b", LEASE_MS, &clock).await {
        Err(LeaseError::Held { held, .. }) => assert_eq!((held.holder.as_str(), held.epoch), ("bridge-a", 1)),
        other => panic!("expected Held, got {other:?}"),
    }

    // Once it has expired (a paused a), b takes it at epoch 2 and a is fenced.
    clock.advance_ms(LEASE_MS);
    let lease_b = acquire(&table, "bridge-b", &clock).await;
    assert_eq!(lease_b.epoch, 2);
    let err = a.append(&recs[3..5]).expect_err("a is fenced");
    assert!(matches!(&err, StoreError::Fenced { epoch: 1, .. }), "{err}");
    assert!(err.to_string().contains("bridge-b at epoch 2"), "{err}");
    let mut stale = lease_a.clone();
    let renewed = table.renew(&mut stale, LEASE_MS, &clock).await;
    assert!(matches!(renewed, Err(StoreError::Fenced { .. })), "{renewed:?}");
    // Its heal (the next append tries it first) is fenced too, and deletes nothing.
    assert!(matches!(a.append(&recs[3..5]), Err(StoreError::Fenced { .. })));

    // The new holder replays exactly what a acknowledged, and carries on.
    let mut ledger = open_ledger(table.clone(), lease_b).await.expect("b opens the ledger");
    assert_eq!(ledger.record_count(), 3);
    let (id, at, event) = interleaved(&[(1, 2)]).swap_remove(3);
    ledger.append(id, at, event).expect("b appends");
    assert_eq!(table.grant_records(&grant(1)).await.expect("query"), recs[..4].to_vec());
}

#[tokio::test]
async fn a_renewed_lease_holds_off_a_standby_until_it_expires() {
    let Some(table) = table("renew").await else { return };
    let clock = ManualClock::new(T0);
    let mut lease = acquire(&table, "bridge-a", &clock).await;
    clock.advance_ms(LEASE_MS - 1_000);
    table.renew(&mut lease, LEASE_MS, &clock).await.expect("renew");
    assert_eq!(lease.expires_unix_ms, T0 + 2 * LEASE_MS - 1_000);

    // Past the first expiry, the renewal still holds.
    clock.advance_ms(2_000);
    assert!(matches!(table.acquire(GROUP, "bridge-b", LEASE_MS, &clock).await, Err(LeaseError::Held { .. })));
    let held = table.lease_holder(GROUP).await.expect("read").expect("a lease");
    assert_eq!((held.holder.as_str(), held.epoch, held.expires_unix_ms), ("bridge-a", 1, lease.expires_unix_ms));

    // The holder itself may acquire again (a restart): the epoch rises and fences its past self.
    let again = acquire(&table, "bridge-a", &clock).await;
    assert_eq!(again.epoch, 2);
    assert!(matches!(table.renew(&mut lease, LEASE_MS, &clock).await, Err(StoreError::Fenced { .. })));

    // A released lease is free at once.
    table.release(again).await.expect("release");
    let b = acquire(&table, "bridge-b", &clock).await;
    assert_eq!(b.epoch, 3);
}

#[tokio::test]
async fn replay_equals_the_file_stores_for_the_same_events() {
    let Some(table) = table("replay").await else { return };
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().expect("tempdir");
    let events = interleaved(&[(1, 3), (2, 5), (3, 1)]);

    let (mut file, _) = Ledger::open_file(dir.path().join("ledger")).expect("file ledger");
    let mut dynamo = open_ledger(table.clone(), acquire(&table, "bridge-a", &clock).await).await.expect("open");
    // One event at a time and in batches, as the backend appends.
    for chunk in events.chunks(4) {
        file.append_batch(chunk.to_vec()).expect("file append");
        dynamo.append_batch(chunk.to_vec()).expect("dynamodb append");
    }
    assert_eq!(dynamo.records_hash(), file.records_hash());
    drop(dynamo);

    let replayed = table.replay().await.expect("replay");
    let (file_records, from_file) = {
        let mut out = Vec::new();
        usage_ledger::scan_file(&dir.path().join("ledger"), |_, record, _| {
            out.push(record);
            Ok::<(), StoreError>(())
        })
        .expect("scan");
        let count = out.len();
        (out, count)
    };
    let from_table: Vec<Record> = replayed.records.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(from_table, file_records);
    assert_eq!(replayed.next_pos, from_file as u64);

    let reopened =
        open_ledger(table.clone(), acquire(&table, "bridge-a", &clock).await).await.expect("reopen the table");
    assert_eq!(reopened.records_hash(), file.records_hash());
    let states =
        |l: &dyn Fn(&GrantId) -> Option<backend_api::UsageMetrics>| (1..=3).map(|n| l(&grant(n))).collect::<Vec<_>>();
    assert_eq!(states(&|g| reopened.usage(g)), states(&|g| file.usage(g)));
}

#[tokio::test]
async fn an_imported_file_ledger_reads_back_with_the_same_records_hash() {
    let Some(table) = table("import").await else { return };
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    let hash = {
        // Small segments, so that the import must read several.
        let options = usage_ledger::FileOptions { segment_bytes_max: 4096, ..usage_ledger::FileOptions::default() };
        let (mut file, _) = Ledger::open_file_with(&path, options).expect("file ledger");
        // More than one transaction's worth.
        for chunk in interleaved(&[(1, 60), (2, 90), (3, 10)]).chunks(20) {
            file.append_batch(chunk.to_vec()).expect("append");
        }
        file.records_hash()
    };
    assert!(usage_ledger::list_segments(&path).expect("segments").len() > 1, "the file ledger rotated");
    let lease = acquire(&table, "import", &clock).await;
    let report = import_file(&table, &lease, &path).await.expect("import");
    assert_eq!(report.records, 178);
    assert_eq!(report.records_hash, hash);
    let ledger = open_ledger(table.clone(), lease.clone()).await.expect("open");
    assert_eq!(ledger.records_hash(), hash);

    // A second import into the same table is refused, naming it.
    let err = import_file(&table, &lease, &path).await.expect_err("not empty");
    assert!(err.to_string().contains("already holds 178 records"), "{err}");
}

#[tokio::test]
async fn an_append_over_the_transaction_limit_is_split_and_a_failed_part_is_healed_away() {
    let Some(table) = table("split").await else { return };
    let clock = ManualClock::new(T0);
    let lease = acquire(&table, "bridge-a", &clock).await;
    let recs = records(interleaved(&[(1, 120), (2, 120)]));
    assert!(recs.len() > 2 * MAX_RECORDS_PER_TRANSACTION + 10);

    // Given another writer that took one sequence the third transaction carries.
    let victim = &recs[2 * MAX_RECORDS_PER_TRANSACTION + 5];
    let mut intruder = DynamoStore::new(table.clone(), lease.clone(), 1_000_000).expect("store");
    intruder.append(std::slice::from_ref(victim)).expect("intruder writes");

    // When the big append runs, the first two transactions land and the third is refused.
    let mut store = DynamoStore::new(table.clone(), lease.clone(), 0).expect("store");
    let err = store.append(&recs).expect_err("the third transaction conflicts");
    assert!(matches!(&err, StoreError::SequenceTaken { seq, .. } if *seq == victim.seq), "{err}");
    assert_eq!(table.replay().await.expect("replay").records.len(), 2 * MAX_RECORDS_PER_TRANSACTION + 1);

    // Then heal deletes what the failed append wrote, and never the other writer's record.
    store.heal().expect("heal");
    let left: Vec<Record> = table.replay().await.expect("replay").records.into_iter().map(|(r, _)| r).collect();
    assert_eq!(left, vec![victim.clone()]);

    // And without a conflict the same append is written whole, in order, across transactions.
    let fresh = self::table("split2").await.expect("moto is up");
    let lease = acquire(&fresh, "bridge-a", &clock).await;
    let mut store = DynamoStore::new(fresh.clone(), lease, 0).expect("store");
    store.append(&recs).expect("split append");
    let back: Vec<Record> = fresh.replay().await.expect("replay").records.into_iter().map(|(r, _)| r).collect();
    assert_eq!(back, recs);
}

#[tokio::test(flavor = "current_thread")]
async fn a_shared_ledger_appends_from_a_current_thread_runtime_without_deadlock() {
    let Some(table) = table("shared").await else { return };
    let clock = ManualClock::new(T0);
    let ledger = open_ledger(table.clone(), acquire(&table, "bridge-a", &clock).await).await.expect("open");
    let shared = std::sync::Arc::new(usage_ledger::SharedLedger::new(ledger));
    let mut tasks = Vec::new();
    for n in 1..=4u8 {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            for (id, at, event) in interleaved(&[(n, 3)]) {
                shared.append(id, at, event).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let expected = Ledger::open(
        MemoryStore::new(),
        table.replay().await.expect("replay").records.into_iter().map(|(r, _)| r).collect(),
    )
    .expect("fold");
    assert_eq!(expected.record_count(), 4 * 9);
    assert_eq!(shared.with_books(|b| b.records_hash()), expected.records_hash());
}
