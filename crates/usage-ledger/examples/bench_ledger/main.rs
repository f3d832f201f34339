//! `cargo xtask bench ledger`: fold and replay throughput over 1,000,000 events, durable append
//! throughput against SQLite at the same durability (one writer, and 64 concurrent writers
//! sharing `fsync`s through group commit), peak memory, and start-up time from a snapshot with
//! a long history behind it (`startup.rs`).
//!
//! Options: `--events N` (default 1,000,000), `--appends N` (default 20,000), `--history-grants
//! N` (settled grants behind the start-up bench, default 1,000,000; 0 skips it), `--dir PATH`
//! (default: the system's temporary directory). `--replay PATH` and `--startup PATH` are
//! internal: the bench re-runs itself with them to measure a replay, or a start-up, alone.
//!
//! Apart from the start-up bench, every ledger here is opened without snapshots
//! (`FileOptions::snapshots: None`), so that replays are full and appends compare with SQLite
//! doing the same work.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use usage_ledger::{EventStore, FileOptions, FileStore, Ledger, Record, SharedLedger, StoreError, fold};

mod background;
mod life;

use life::Life;
mod startup;

/// Options for every ledger of this bench but the start-up one: no snapshots.
fn no_snapshots() -> FileOptions {
    FileOptions { snapshots: None, ..FileOptions::default() }
}

/// Opens the file ledger at `path` without snapshots.
fn open_plain(path: &Path) -> (Ledger<FileStore>, usage_ledger::ReplayReport) {
    let (ledger, report) = Ledger::open_file_with(path, no_snapshots()).unwrap();
    (ledger, report.replay)
}

pub(crate) const T0: u64 = 1_700_000_000_000;
const CONCURRENT_GRANTS: usize = 64;
const SAMPLES_PER_GRANT: u64 = 5;
const GROUP_COMMIT_BATCH: usize = 100;

impl Life {
    fn new(n: u64) -> Self {
        Self::with_samples(n, SAMPLES_PER_GRANT)
    }
}

/// `count` events of many grants, `CONCURRENT_GRANTS` of them live at any time, interleaved.
fn generate(count: usize) -> Vec<Record> {
    let mut next_grant = 0u64;
    let mut lives: Vec<Life> = (0..CONCURRENT_GRANTS)
        .map(|_| {
            next_grant += 1;
            Life::new(next_grant)
        })
        .collect();
    let mut records = Vec::with_capacity(count);
    let mut now = T0;
    while records.len() < count {
        let slot = records.len() % CONCURRENT_GRANTS;
        now += 250;
        match lives[slot].next(now) {
            Some(record) => records.push(record),
            None => {
                next_grant += 1;
                lives[slot] = Life::new(next_grant);
            }
        }
    }
    records
}

pub(crate) fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn per_second(count: usize, seconds: f64) -> f64 {
    count as f64 / seconds
}

fn replay_child(path: &Path) {
    let started = Instant::now();
    let (ledger, report) = open_plain(path);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} {} {} {:.3}",
        report.records,
        ledger.live_grants().count(),
        vm_hwm_kib(),
        per_second(report.records as usize, elapsed)
    );
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = arg(&args, "--replay") {
        replay_child(Path::new(&path));
        return;
    }
    if let Some(path) = arg(&args, "--startup") {
        startup::child(Path::new(&path));
        return;
    }
    let history_grants: u64 = arg(&args, "--history-grants").map_or(1_000_000, |v| v.parse().unwrap());
    let events: usize = arg(&args, "--events").map_or(1_000_000, |v| v.parse().unwrap());
    let appends: usize = arg(&args, "--appends").map_or(20_000, |v| v.parse().unwrap());
    let dir = match arg(&args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    };
    let work = tempfile::Builder::new().prefix("bench-ledger-").tempdir_in(&dir).unwrap();
    println!("bench ledger: {events} events, {appends} durable appends, files in {}", work.path().display());

    let records = generate(events);
    let grants = records.iter().filter(|r| r.seq == 0).count();
    println!("generated: {} events over {grants} grants, {CONCURRENT_GRANTS} live at a time", records.len());

    // Fold: best of three.
    let mut best = f64::MAX;
    let mut folded = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let state = fold(&records).unwrap();
        best = best.min(started.elapsed().as_secs_f64());
        folded = state.len();
    }
    println!("fold throughput: {:.2} M events/s ({folded} grants)", per_second(records.len(), best) / 1e6);

    // Write the log with big group commits, then replay it from disk.
    let log = work.path().join("replay.log");
    {
        let (mut store, _) = open_plain(&log).0.into_parts();
        for chunk in records.chunks(10_000) {
            store.append(chunk).unwrap();
        }
    }
    // Every segment's frames, and the active (last) one's preallocated zeros.
    let mut log_bytes = 0;
    let mut free_bytes = 0;
    for (_, segment) in usage_ledger::list_segments(&log).unwrap() {
        let scan = usage_ledger::scan_file(&segment, |_, _, _| Ok::<(), StoreError>(())).unwrap();
        log_bytes += scan.end_offset;
        free_bytes = scan.free_bytes;
    }
    println!(
        "log size: {:.1} MiB, {:.1} bytes/event (and {:.1} MiB preallocated)",
        log_bytes as f64 / (1 << 20) as f64,
        log_bytes as f64 / records.len() as f64,
        free_bytes as f64 / (1 << 20) as f64
    );
    let mut best = f64::MAX;
    let mut live = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let (ledger, report) = open_plain(&log);
        best = best.min(started.elapsed().as_secs_f64());
        assert_eq!(report.records as usize, records.len());
        live = ledger.live_grants().count();
    }
    println!(
        "replay-from-disk throughput (read, CRC, decode, fold, hash; page cache warm): {:.2} M events/s ({live} live grants)",
        per_second(records.len(), best) / 1e6
    );

    // Peak memory of a replay on its own, in a fresh process.
    let child =
        std::process::Command::new(std::env::current_exe().unwrap()).arg("--replay").arg(&log).output().unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let fields: Vec<&str> = out.split_whitespace().collect();
    if child.status.success() && fields.len() == 4 {
        println!(
            "peak memory of a replay process: {:.1} MiB VmHWM ({} events, {} grants, {} live)",
            fields[2].parse::<f64>().unwrap_or(0.0) / 1024.0,
            fields[0],
            grants,
            fields[1]
        );
    } else {
        println!("peak memory of a replay process: unavailable ({})", String::from_utf8_lossy(&child.stderr).trim());
    }

    // Durable appends: the same events, one fsync each, then grouped. The disk's fsync latency
    // drifts over seconds, so the four contenders take turns in rounds and their times add up.
    let sample = &records[..appends.min(records.len())];
    let rounds = 10;
    let round_len = sample.len().div_ceil(rounds).max(1);
    let (mut ours, _) = open_plain(&work.path().join("append.log"));
    let (mut ours_grouped, _) = open_plain(&work.path().join("append-batch.log"));
    let sqlite_single = sqlite_open(work.path(), "single.sqlite");
    let mut sqlite_grouped = sqlite_open(work.path(), "batch.sqlite");
    let mut payload = Vec::new();
    let mut seconds = [0f64; 4];
    for round in sample.chunks(round_len) {
        let started = Instant::now();
        for r in round {
            ours.append(r.grant, r.at_unix_ms, r.event.clone()).unwrap();
        }
        seconds[0] += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for r in round {
            sqlite_insert(&sqlite_single, r, &mut payload);
        }
        seconds[1] += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for chunk in round.chunks(GROUP_COMMIT_BATCH) {
            ours_grouped.append_batch(chunk.iter().map(|r| (r.grant, r.at_unix_ms, r.event.clone()))).unwrap();
        }
        seconds[2] += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for chunk in round.chunks(GROUP_COMMIT_BATCH) {
            let tx = sqlite_grouped.transaction().unwrap();
            for r in chunk {
                sqlite_insert(&tx, r, &mut payload);
            }
            tx.commit().unwrap();
        }
        seconds[3] += started.elapsed().as_secs_f64();
    }
    let [ours_single, sqlite_single, ours_batch, sqlite_batch] = seconds.map(|s| per_second(sample.len(), s));
    println!("durable append, 1 event per fsync: usage-ledger {ours_single:.0} events/s");
    println!("durable append, 1 event per commit: SQLite WAL synchronous=FULL {sqlite_single:.0} events/s");
    println!("durable append ratio usage-ledger/SQLite, 1 per commit: {:.2}x", ours_single / sqlite_single);
    println!("durable append, group commit of {GROUP_COMMIT_BATCH}: usage-ledger {ours_batch:.0} events/s");
    println!("durable append, transactions of {GROUP_COMMIT_BATCH}: SQLite {sqlite_batch:.0} events/s");
    println!(
        "durable append ratio usage-ledger/SQLite, batches of {GROUP_COMMIT_BATCH}: {:.2}x",
        ours_batch / sqlite_batch
    );
    // 64 writers, each appending its own grants' events one at a time and waiting for each to
    // be durable, as the backend's concurrent grants do: group commit shares the fsyncs.
    let (concurrent, writes) = concurrent_appends(work.path(), sample);
    println!(
        "durable append, {CONCURRENT_GRANTS} concurrent writers, 1 event per append: usage-ledger {concurrent:.0} events/s ({:.1} events per fsync)",
        sample.len() as f64 / writes as f64
    );
    println!(
        "durable append ratio usage-ledger {CONCURRENT_GRANTS} writers / SQLite 1 per commit: {:.1}x",
        concurrent / sqlite_single
    );
    println!(
        "peak memory of this bench process: {:.1} MiB VmHWM (holds all generated events)",
        vm_hwm_kib() as f64 / 1024.0
    );
    drop(records);
    if history_grants > 0 {
        startup::run(work.path(), history_grants);
    }
}

/// A file store that counts its writes (each ends in an fsync).
struct Counted {
    inner: FileStore,
    appends: Arc<AtomicU64>,
}

impl EventStore for Counted {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.inner.append(records)
    }

    fn heal(&mut self) -> Result<(), StoreError> {
        self.inner.heal()
    }
}

/// Appends `sample` from `CONCURRENT_GRANTS` tasks (writer `w` takes the events of the grants
/// `generate` put in slot `w`, in order); returns events per second and the store's writes.
fn concurrent_appends(dir: &Path, sample: &[Record]) -> (f64, u64) {
    let (ledger, _) = open_plain(&dir.join("append-concurrent.log"));
    let (store, _) = ledger.into_parts();
    let appends = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(SharedLedger::new(Ledger::empty(Counted { inner: store, appends: appends.clone() })));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let writers: Vec<_> = (0..CONCURRENT_GRANTS)
            .map(|w| {
                let mine: Vec<Record> = sample.iter().skip(w).step_by(CONCURRENT_GRANTS).cloned().collect();
                let shared = shared.clone();
                tokio::spawn(async move {
                    for r in mine {
                        shared.append(r.grant, r.at_unix_ms, r.event).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(shared.with_books(|b| b.record_count()), sample.len() as u64);
    (per_second(sample.len(), seconds), appends.load(Ordering::Relaxed))
}

fn sqlite_open(dir: &Path, name: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(name)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE events (grant_id BLOB NOT NULL, seq INTEGER NOT NULL, at_unix_ms INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (grant_id, seq))",
    )
    .unwrap();
    conn
}

/// Inserts one record, encoded exactly as the ledger encodes a frame's payload.
fn sqlite_insert(conn: &rusqlite::Connection, r: &Record, payload: &mut Vec<u8>) {
    payload.clear();
    usage_ledger::file::encode_payload(r, payload).unwrap();
    conn.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4)")
        .unwrap()
        .execute(rusqlite::params![&r.grant.0[..], r.seq as i64, r.at_unix_ms as i64, &payload[..]])
        .unwrap();
}
