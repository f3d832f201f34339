//! Group commit: concurrent appends to a `SharedLedger` share store writes, and a failed write
//! fails every append it carried and every append validated against them.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend_api::{AlmanacTick, GrantId};
use usage_ledger::{
    Event, EventStore, FileStore, Ledger, LedgerError, MemoryStore, Record, ResourceKind, SharedLedger, StoreError,
};

fn grant(n: u64) -> GrantId {
    let mut id = [7u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    GrantId(id)
}

fn reaped(n: u64) -> Event {
    Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: format!("key-{n}") }
}

fn admitted() -> Event {
    Event::GrantAdmitted {
        region: "us-east-1".into(),
        instance_type: "t3.small".into(),
        vcpus: 2,
        memory_mib: 2048,
        storage_bytes: 8 << 30,
        valid_to: AlmanacTick(10),
        valid_to_unix_ms: 1_700_003_600_000,
        key_name: "k".into(),
        group_name: "g".into(),
    }
}

/// A file store whose every write takes at least 5 ms more (a slow disk), counting writes.
struct SlowStore {
    inner: FileStore,
    writes: Arc<AtomicU64>,
}

impl EventStore for SlowStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        self.inner.append(records)
    }

    fn snapshot_due(&self) -> bool {
        self.inner.snapshot_due()
    }

    fn save_snapshot(&mut self, data: &usage_ledger::SnapshotData<'_>) -> Result<(), StoreError> {
        self.inner.save_snapshot(data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_writes_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let (ledger, _) = Ledger::open_file(&path).unwrap();
    let (store, _) = ledger.into_parts();
    let writes = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(SharedLedger::new(Ledger::empty(SlowStore { inner: store, writes: writes.clone() })));
    // Given 64 writers appending 10 events each,
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    shared.append(grant(w), 1_700_000_000_000 + i, reaped(w * 100 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // then every append is durable, in far fewer writes than appends,
    let writes = writes.load(Ordering::SeqCst);
    assert!(writes <= 640 / 4, "640 appends took {writes} writes: the group commit did not group");
    assert_eq!(shared.with_books(|b| b.record_count()), 640);
    let hash = shared.with_books(|b| b.records_hash());
    drop(shared);
    // and the file replays to the same books.
    let (reopened, report) = Ledger::open_file(&path).unwrap();
    assert_eq!(report.records, 640);
    assert_eq!(reopened.records_hash(), hash);
    for w in 0..64 {
        assert_eq!(reopened.grant(&grant(w)).unwrap().next_seq(), 10);
    }
}

/// A memory store whose each append waits for a verdict: `true` stores, `false` fails.
struct GatedStore {
    inner: MemoryStore,
    entered: Sender<()>,
    verdicts: Arc<Mutex<Receiver<bool>>>,
}

impl EventStore for GatedStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.entered.send(()).unwrap();
        if self.verdicts.lock().unwrap().recv().unwrap() {
            self.inner.append(records)
        } else {
            Err(StoreError::Injected)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_its_group_and_what_was_staged_on_it() {
    let memory = MemoryStore::new();
    let (entered_tx, entered) = channel();
    let (verdict, verdicts) = channel();
    let store = GatedStore { inner: memory.clone(), entered: entered_tx, verdicts: Arc::new(Mutex::new(verdicts)) };
    let shared = Arc::new(SharedLedger::new(Ledger::empty(store)));
    let x = grant(1);
    // Given a first append being written (its writer leads and waits at the store),
    let first = tokio::spawn({
        let shared = shared.clone();
        async move { shared.append(x, 1_700_000_000_000, admitted()).await }
    });
    let _entered = tokio::task::spawn_blocking(move || {
        entered.recv().unwrap();
        entered
    })
    .await
    .unwrap();
    // and a second one staged meanwhile, valid only after the first,
    let second = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared
                .append(
                    x,
                    1_700_000_000_001,
                    Event::KeyPairImported { key_name: "k".into(), key_pair_id: "key-1".into() },
                )
                .await
        }
    });
    while shared.with_books(|b| b.grant(&x).map(|s| s.next_seq())) != Some(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // when the write fails,
    verdict.send(false).unwrap();
    // then both appends fail with the store's error, nothing is in the books or the store,
    for result in [first.await.unwrap(), second.await.unwrap()] {
        assert!(matches!(result, Err(LedgerError::Store(StoreError::Injected))), "{result:?}");
    }
    assert!(shared.with_books(|b| b.grant(&x).is_none()));
    assert_eq!(shared.with_books(|b| b.record_count()), 0);
    assert!(memory.records().is_empty());
    // and the next append starts the grant afresh.
    verdict.send(true).unwrap();
    let state = shared.append(x, 1_700_000_000_002, admitted()).await.unwrap();
    assert_eq!(state.next_seq(), 1);
    assert_eq!(memory.records().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failure_each_later_group_settles_only_its_own_records() {
    let memory = MemoryStore::new();
    let (entered_tx, entered) = channel();
    let (verdict, verdicts) = channel();
    let store = GatedStore { inner: memory.clone(), entered: entered_tx, verdicts: Arc::new(Mutex::new(verdicts)) };
    let shared = Arc::new(SharedLedger::new(Ledger::empty(store)));
    let entered = Arc::new(Mutex::new(entered));
    let wait_entered = || {
        let entered = entered.clone();
        tokio::task::spawn_blocking(move || entered.lock().unwrap().recv().unwrap())
    };
    let x = grant(2);
    // Given a write that failed,
    verdict.send(false).unwrap();
    assert!(shared.append(x, 1_700_000_000_000, admitted()).await.is_err());
    wait_entered().await.unwrap();
    // a group being written (the grant's first event again),
    let first = tokio::spawn({
        let shared = shared.clone();
        async move { shared.append(x, 1_700_000_000_001, admitted()).await }
    });
    wait_entered().await.unwrap();
    // and a second event staged on top of it meanwhile,
    let second = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared
                .append(
                    x,
                    1_700_000_000_002,
                    Event::KeyPairImported { key_name: "k".into(), key_pair_id: "key-2".into() },
                )
                .await
        }
    });
    while shared.with_books(|b| b.grant(&x).map(|s| s.next_seq())) != Some(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // when the first group's write succeeds and the second's fails,
    verdict.send(true).unwrap();
    assert!(first.await.unwrap().is_ok());
    wait_entered().await.unwrap();
    verdict.send(false).unwrap();
    let result = second.await.unwrap();
    // then only the second event is undone: the books hold what the store holds.
    assert!(matches!(result, Err(LedgerError::Store(StoreError::Injected))), "{result:?}");
    assert_eq!(memory.records().len(), 1);
    assert_eq!(shared.with_books(|b| b.grant(&x).map(|s| s.next_seq())), Some(1));
    assert_eq!(shared.with_books(|b| b.record_count()), 1);
}

/// A store whose heal takes a while (a slow disk being cut back).
struct SlowHeal {
    inner: MemoryStore,
}

impl EventStore for SlowHeal {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.inner.append(records)
    }

    fn heal(&mut self) -> Result<(), StoreError> {
        std::thread::sleep(Duration::from_millis(300));
        Err(StoreError::Injected)
    }
}

/// An append that finds the store held by a heal is not forgotten: it is written once the heal
/// lets go, even when no other append ever comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_waiting_out_a_heal_is_written_after_it() {
    let memory = MemoryStore::new();
    let shared = Arc::new(SharedLedger::new(Ledger::empty(SlowHeal { inner: memory.clone() })));
    let healing = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || shared.heal()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let append = shared.append(grant(3), 1_700_000_000_000, reaped(3));
    let result = tokio::time::timeout(Duration::from_secs(5), append).await;
    assert!(matches!(result, Ok(Ok(_))), "the append hung or failed: {result:?}");
    assert!(healing.await.unwrap().is_err());
    assert_eq!(memory.records().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_snapshots_only_durable_records_while_others_stage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let policy = usage_ledger::SnapshotPolicy { every_records: 16, every_ms: u64::MAX };
    let options = usage_ledger::FileOptions { snapshots: Some(policy), ..usage_ledger::FileOptions::default() };
    let (ledger, _) = Ledger::open_file_with(&path, options).unwrap();
    let (store, books) = ledger.into_parts();
    assert_eq!(books.record_count(), 0);
    let writes = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(SharedLedger::new(Ledger::empty(SlowStore { inner: store, writes })));
    // Given 32 writers appending while each group's leader snapshots every 16 records,
    let tasks: Vec<_> = (0..32u64)
        .map(|w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    shared.append(grant(w), 1_700_000_000_000 + i, reaped(w * 100 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let hash = shared.with_books(|b| b.records_hash());
    drop(shared);
    // then the newest snapshot plus the records after it are the whole log: had a snapshot
    // caught a record staged but not yet durable, the replay after it would not apply.
    let snapshots = usage_ledger::snapshot::list_snapshots(&path).unwrap();
    assert!(!snapshots.is_empty(), "the leaders snapshotted");
    let (reopened, report) = Ledger::open_file_with(&path, options).unwrap();
    assert!(report.skipped_snapshots.is_empty(), "{:?}", report.skipped_snapshots);
    assert_eq!(report.snapshot.as_ref(), Some(&snapshots[0].1));
    assert_eq!(reopened.record_count(), 320);
    assert_eq!(reopened.records_hash(), hash);
    for w in 0..32 {
        assert_eq!(reopened.grant(&grant(w)).unwrap().next_seq(), 10);
    }
    // And every snapshot kept agrees with the log where it stands.
    let verify = usage_ledger::inspect::verify_ledger(&path).unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    assert_eq!(verify.good_snapshots.len(), snapshots.len());
}
