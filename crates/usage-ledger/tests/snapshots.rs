//! Snapshots and segments of the file store: the fold of (snapshot + tail) is the fold of the
//! whole log, whatever happens to the snapshots, and segments rotate and archive without
//! changing what a ledger opens to.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backend_api::GrantId;
use common::history::histories;
use proptest::prelude::*;
use usage_ledger::snapshot::list_snapshots;
use usage_ledger::{
    FileOptions, FileStore, GrantState, Ledger, LedgerError, MemoryStore, Record, SnapshotPolicy, StoreError,
    archive_dir, fold, list_segments,
};

/// Small segments, so that a few dozen records span several; no automatic snapshots.
fn options(segment_bytes_max: u64) -> FileOptions {
    FileOptions { segment_bytes_max, snapshots: None, archive_covered_segments: false }
}

fn append_all(ledger: &mut Ledger<FileStore>, records: &[Record]) {
    for r in records {
        let state = ledger.append(r.grant, r.at_unix_ms, r.event.clone()).unwrap();
        assert_eq!(state.next_seq(), r.seq + 1, "the history's sequence numbers are the ledger's");
    }
}

fn grants_of(ledger: &Ledger<FileStore>) -> BTreeMap<GrantId, GrantState> {
    ledger.grants().map(|(id, state)| (*id, state.clone())).collect()
}

/// The records hash of `records` as a ledger that never snapshotted computes it.
fn full_hash(records: &[Record]) -> [u8; 32] {
    Ledger::open(MemoryStore::new(), records.to_vec()).unwrap().records_hash()
}

/// How a snapshot file is damaged before the ledger is opened again.
#[derive(Clone, Copy, Debug)]
enum Damage {
    None,
    /// Cut to this fraction (per mille) of its length: a torn write.
    Truncate(u16),
    /// One bit flipped at this fraction (per mille) of its length.
    Flip(u16, u8),
    /// A crash during the next snapshot: a half-written temporary file left behind.
    TornTemporary,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        (0u16..1000).prop_map(Damage::Truncate),
        ((0u16..1000), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        Just(Damage::TornTemporary),
    ]
}

fn apply_damage(path: &Path, damage: Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = |per_mille: u16| (bytes.len() * usize::from(per_mille) / 1000).min(bytes.len() - 1);
    match damage {
        Damage::None => return,
        Damage::Truncate(per_mille) => bytes.truncate(at(per_mille)),
        Damage::Flip(per_mille, bit) => {
            let i = at(per_mille);
            bytes[i] ^= 1 << bit;
        }
        Damage::TornTemporary => {
            let mut tmp = path.as_os_str().to_owned();
            tmp = tmp.to_string_lossy().rsplit_once(".snap.").map(|(l, _)| format!("{l}.snap.tmp")).unwrap().into();
            std::fs::write(PathBuf::from(tmp), &bytes[..bytes.len() / 2]).unwrap();
            return;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    /// Given any valid history written with a snapshot after a prefix (and perhaps an earlier
    /// one), when the newest snapshot is left whole, torn, bit-flipped, or a crash left a torn
    /// temporary file, then reopening gives exactly the fold, record count and hash of the whole
    /// log: from the snapshot when it is whole, else from the one before or a full replay.
    #[test]
    fn snapshot_plus_tail_folds_to_the_whole_log(
        records in histories(70),
        cut in any::<prop::sample::Index>(),
        earlier in any::<Option<prop::sample::Index>>(),
        segment_bytes_max in 200u64..3000,
        damage in damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let cut = cut.index(records.len() + 1);
        let earlier = earlier.map(|e| e.index(cut + 1)).filter(|&e| e < cut);
        {
            let (mut ledger, _) = Ledger::open_file_with(&path, options(segment_bytes_max)).unwrap();
            if let Some(e) = earlier {
                append_all(&mut ledger, &records[..e]);
                ledger.snapshot().unwrap();
            }
            append_all(&mut ledger, &records[earlier.unwrap_or(0)..cut]);
            ledger.snapshot().unwrap();
            append_all(&mut ledger, &records[cut..]);
        }
        let snapshots = list_snapshots(&path).unwrap();
        prop_assert_eq!(snapshots.len(), if earlier.is_some() { 2 } else { 1 });
        apply_damage(&snapshots[0].1, damage);

        let (ledger, report) = Ledger::open_file_with(&path, options(segment_bytes_max)).unwrap();
        prop_assert_eq!(grants_of(&ledger), fold(&records).unwrap());
        prop_assert_eq!(ledger.record_count(), records.len() as u64);
        prop_assert_eq!(ledger.records_hash(), full_hash(&records));
        match damage {
            Damage::None | Damage::TornTemporary => {
                prop_assert_eq!(report.snapshot.as_ref(), Some(&snapshots[0].1));
                prop_assert!(report.skipped_snapshots.is_empty());
                prop_assert_eq!(report.replay.records, (records.len() - cut) as u64);
            }
            Damage::Truncate(_) | Damage::Flip(..) => {
                // A flip may land in bytes no check reads only if it changed nothing that
                // matters; every byte of a snapshot is covered by a CRC or the length check.
                prop_assert_eq!(report.skipped_snapshots.len(), 1, "{:?}", report.skipped_snapshots);
                prop_assert_eq!(report.snapshot.as_ref(), snapshots.get(1).map(|s| &s.1));
            }
        }
        // And the ledger takes appends where the log ends.
        drop(ledger);
        let (again, _) = Ledger::open_file_with(&path, options(segment_bytes_max)).unwrap();
        prop_assert_eq!(grants_of(&again), fold(&records).unwrap());
    }
}

#[test]
fn an_old_single_file_ledger_opens_unchanged_and_gains_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = history_of(40);
    {
        // Written the old way: one file, no snapshot.
        let (mut store, _) = FileStore::open(&path).unwrap();
        usage_ledger::EventStore::append(&mut store, &records).unwrap();
    }
    std::fs::remove_file(dir.path().join("ledger.lock")).unwrap();
    let before = std::fs::read(&path).unwrap();
    let (ledger, report) = Ledger::open_file(&path).unwrap();
    assert_eq!(report.records, 40, "a full replay");
    assert_eq!(grants_of(&ledger), fold(&records).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the log itself is not rewritten");
    assert_eq!(list_snapshots(&path).unwrap().len(), 1, "the default policy snapshots an un-snapshotted log");
    drop(ledger);
    let (ledger, report) = Ledger::open_file_with(&path, FileOptions::default()).unwrap();
    assert!(report.snapshot.is_some());
    assert_eq!(report.replay.records, 0);
    assert_eq!(ledger.records_hash(), full_hash(&records));
}

/// A valid history of about `len` records.
fn history_of(len: usize) -> Vec<Record> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    loop {
        let records = histories(len * 2).new_tree(&mut runner).unwrap().current();
        if records.len() >= len {
            return records[..len].to_vec();
        }
    }
}

#[test]
fn covered_segments_move_to_the_archive_and_a_lost_snapshot_replays_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = history_of(60);
    let archiving = FileOptions { archive_covered_segments: true, ..options(400) };
    {
        let (mut ledger, _) = Ledger::open_file_with(&path, archiving).unwrap();
        append_all(&mut ledger, &records[..50]);
        ledger.snapshot().unwrap();
        append_all(&mut ledger, &records[50..]);
    }
    let segments = list_segments(&path).unwrap();
    assert!(segments.len() > 3, "small segments rotate: {segments:?}");
    let archived: Vec<_> = segments.iter().filter(|(_, p)| p.starts_with(archive_dir(&path))).collect();
    assert!(!archived.is_empty(), "the snapshot covers the early segments: {segments:?}");
    let (ledger, report) = Ledger::open_file_with(&path, archiving).unwrap();
    assert_eq!(grants_of(&ledger), fold(&records).unwrap());
    assert!(report.replay.records <= 10 + 1);
    drop(ledger);

    // Given the snapshot is lost, a full replay reads the archive.
    for (_, snapshot) in list_snapshots(&path).unwrap() {
        std::fs::remove_file(snapshot).unwrap();
    }
    let (ledger, report) = Ledger::open_file_with(&path, options(400)).unwrap();
    assert_eq!(report.replay.records, 60);
    assert_eq!(ledger.records_hash(), full_hash(&records));
    drop(ledger);

    // Given the archive is lost too, opening fails naming the missing segment: never a wrong state.
    std::fs::remove_dir_all(archive_dir(&path)).unwrap();
    let err = Ledger::open_file_with(&path, options(400)).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, LedgerError::Store(StoreError::Corrupt { reason, .. }) if reason.contains("missing")),
        "{err}"
    );
}

#[test]
fn damage_in_a_sealed_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = history_of(40);
    {
        let (mut ledger, _) = Ledger::open_file_with(&path, options(300)).unwrap();
        append_all(&mut ledger, &records);
    }
    let segments = list_segments(&path).unwrap();
    assert!(segments.len() > 2);
    // Given the last bytes of a sealed segment are cut off (as a torn write would look),
    let sealed = &segments[0].1;
    let len = std::fs::metadata(sealed).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(sealed).unwrap().set_len(len - 3).unwrap();
    let before = std::fs::read(sealed).unwrap();
    // then opening refuses, and nothing is truncated.
    let err = Ledger::open_file_with(&path, options(300)).map(|_| ()).unwrap_err();
    assert!(matches!(&err, LedgerError::Store(StoreError::Corrupt { .. })), "{err}");
    assert_eq!(std::fs::read(sealed).unwrap(), before);
}

#[test]
fn a_policy_snapshots_every_n_records_and_by_record_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = history_of(30);
    let policy = SnapshotPolicy { every_records: 10, every_ms: u64::MAX };
    let (mut ledger, _) =
        Ledger::open_file_with(&path, FileOptions { snapshots: Some(policy), ..options(1 << 20) }).unwrap();
    // (Snapshots are taken in the background: one due while another is still being written
    // waits for a later append, so each ten is let finish here.)
    for ten in records.chunks(10) {
        append_all(&mut ledger, ten);
        ledger.store().wait_for_snapshot();
    }
    let taken: Vec<u64> = list_snapshots(&path).unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(taken, vec![30, 20], "every 10 records, the newest two kept");
    assert_eq!(ledger.store().last_snapshot_error(), None);
    drop(ledger);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let span = records.last().unwrap().at_unix_ms - records[0].at_unix_ms;
    let policy = SnapshotPolicy { every_records: u64::MAX, every_ms: span / 2 };
    let (mut ledger, _) =
        Ledger::open_file_with(&path, FileOptions { snapshots: Some(policy), ..options(1 << 20) }).unwrap();
    append_all(&mut ledger, &records);
    ledger.store().wait_for_snapshot();
    assert!(!list_snapshots(&path).unwrap().is_empty(), "record time moved past every_ms");
}

#[test]
fn a_snapshot_beside_a_log_it_was_not_taken_from_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let records = history_of(40);
    {
        let (mut ledger, _) = Ledger::open_file_with(&a, options(1 << 20)).unwrap();
        append_all(&mut ledger, &records);
        ledger.snapshot().unwrap();
    }
    // Given ledger b, another history of the same length, with a's snapshot copied beside it,
    let reaped: Vec<Record> = (0..40u8)
        .map(|i| Record {
            grant: GrantId([i; 32]),
            seq: 0,
            at_unix_ms: 1_700_000_000_000,
            event: usage_ledger::Event::OrphanReaped {
                resource_kind: usage_ledger::ResourceKind::KeyPair,
                resource_id: format!("key-{i}"),
            },
        })
        .collect();
    {
        let (mut ledger, _) = Ledger::open_file_with(&b, options(1 << 20)).unwrap();
        append_all(&mut ledger, &reaped);
    }
    let (_, snapshot) = &list_snapshots(&a).unwrap()[0];
    let copied = usage_ledger::snapshot::snapshot_path(&b, 40);
    std::fs::copy(snapshot, &copied).unwrap();
    // then b opens to its own history, the foreign snapshot skipped,
    let (ledger, report) = Ledger::open_file_with(&b, options(1 << 20)).unwrap();
    assert_eq!(grants_of(&ledger), fold(&reaped).unwrap());
    assert_eq!(report.snapshot, None);
    assert_eq!(report.skipped_snapshots.len(), 1, "{:?}", report.skipped_snapshots);
    drop(ledger);
    // and verify reports it.
    let verify = usage_ledger::inspect::verify_ledger(&b).unwrap();
    assert_eq!(verify.problems.len(), 1, "{:?}", verify.problems);
}

#[test]
fn snapshots_taken_in_the_background_while_appends_go_on_open_to_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let records = history_of(400);
    let policy = SnapshotPolicy { every_records: 7, every_ms: u64::MAX };
    let opts = FileOptions { snapshots: Some(policy), archive_covered_segments: true, ..options(900) };
    {
        // Given appends that go on while snapshots are taken beside them (across segments that
        // rotate and are archived as snapshots cover them),
        let (mut ledger, _) = Ledger::open_file_with(&path, opts).unwrap();
        append_all(&mut ledger, &records);
        ledger.store().wait_for_snapshot();
        assert_eq!(ledger.store().last_snapshot_error(), None);
        assert!(!list_snapshots(&path).unwrap().is_empty());
        assert!(archive_dir(&path).exists(), "covered segments were archived");
    }
    // then the ledger opens from the newest snapshot to what a replay of every record gives,
    let (ledger, report) = Ledger::open_file_with(&path, opts).unwrap();
    assert!(report.snapshot.is_some(), "{report:?}");
    assert_eq!(report.skipped_snapshots, Vec::new());
    assert_eq!(grants_of(&ledger), fold(&records).unwrap());
    assert_eq!(ledger.record_count(), records.len() as u64);
    assert_eq!(ledger.records_hash(), full_hash(&records));
    // and so does each snapshot kept, opened alone with the log after it.
    drop(ledger);
    let newest = list_snapshots(&path).unwrap()[0].1.clone();
    std::fs::remove_file(&newest).unwrap();
    let (ledger, report) = Ledger::open_file_with(&path, opts).unwrap();
    assert!(report.snapshot.is_some_and(|p| p != newest));
    assert_eq!(ledger.records_hash(), full_hash(&records));
    assert_eq!(grants_of(&ledger), fold(&records).unwrap());
}
