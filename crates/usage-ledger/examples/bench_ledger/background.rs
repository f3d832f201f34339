//! Appends while snapshots are taken, on the start-up bench's ledger (a million settled grants
//! behind the live ones): one durable append per event through a `SharedLedger`, a snapshot due
//! every `EVERY` records. Once with the file store's background snapshots, once with the same
//! store made to take them inline (the books handed over by the group's leader, as a store that
//! cannot fold its own records is): the slowest appends show what a snapshot holds up.

use std::path::Path;
use std::time::Instant;

use usage_ledger::{
    EventStore, FileOptions, FileStore, Ledger, Record, SharedLedger, SnapshotData, SnapshotPolicy, StoreError,
};

use crate::Life;

/// Records between snapshots in this bench (several snapshots within its appends).
const EVERY: u64 = 500;
/// Appends measured in each run.
const APPENDS: usize = 3_000;

/// The file store with its background snapshots turned off: the leader hands it the books.
struct Inline(FileStore);

impl EventStore for Inline {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.0.append(records)
    }
    fn heal(&mut self) -> Result<(), StoreError> {
        self.0.heal()
    }
    fn snapshot_due(&self) -> bool {
        self.0.snapshot_due()
    }
    fn save_snapshot(&mut self, data: &SnapshotData<'_>) -> Result<(), StoreError> {
        self.0.save_snapshot(data)
    }
}

/// Appends `APPENDS` events of new grants one by one; returns the latencies in ms, sorted.
fn appends<S: EventStore>(ledger: &SharedLedger<S>, first_grant: u64, mut now: u64) -> Vec<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut lives: Vec<Life> = (0..64).map(|i| Life::with_samples(first_grant + i, 0)).collect();
    let mut next = first_grant + 64;
    let mut latencies = Vec::with_capacity(APPENDS);
    let mut slot = 0;
    while latencies.len() < APPENDS {
        now += 25;
        slot = (slot + 1) % lives.len();
        let Some(record) = lives[slot].next(now) else {
            lives[slot] = Life::with_samples(next, 0);
            next += 1;
            continue;
        };
        let started = Instant::now();
        runtime.block_on(ledger.append(record.grant, record.at_unix_ms, record.event)).unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn report(label: &str, latencies: &[f64], seconds: f64) {
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "appends while snapshots are taken ({label}): {} appends in {seconds:.2} s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Runs both, on the ledger at `path` (closed), whose records' clock is past `now`.
pub(crate) fn run(path: &Path, now: u64, first_grant: u64) {
    let options = FileOptions {
        snapshots: Some(SnapshotPolicy { every_records: EVERY, every_ms: u64::MAX }),
        ..FileOptions::default()
    };
    let (ledger, _) = Ledger::open_file_with(path, options).unwrap();
    let shared = SharedLedger::new(ledger);
    let started = Instant::now();
    let background = appends(&shared, first_grant, now);
    report("in the background", &background, started.elapsed().as_secs_f64());
    drop(shared);

    let (ledger, _) = Ledger::open_file_with(path, options).unwrap();
    let shared = SharedLedger::new(ledger.map_store(Inline));
    let started = Instant::now();
    let inline = appends(&shared, first_grant + 1_000_000, now + 3_600_000);
    report("inline, the books handed over", &inline, started.elapsed().as_secs_f64());
    println!(
        "goal (issue 29): snapshots never hold up appends: in the background the slowest append is a few fsyncs, not a snapshot's time"
    );
}
