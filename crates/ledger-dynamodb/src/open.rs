//! Opening a ledger over the table: the takeover path.
//!
//! A takeover reads the newest usable snapshot and the position log after it, by key: it never
//! Scans the table while a snapshot is usable, and reads nothing of the history before it. A snapshot is usable when its manifest names this
//! group, its writer's epoch is at least the lease item's `log_since` (every holder since then
//! kept the position log, so the log after it holds every record), its parts are all there with
//! their length and CRC, and the tail after it folds. Otherwise the previous snapshot is tried,
//! and when none is usable the table is Scanned (a full replay) and the store takes a snapshot
//! at its first append: a damaged snapshot costs time, never a wrong state.

use usage_ledger::{Books, EventStore, Lease, Ledger, LedgerError, MemoryStore, SnapshotPolicy};

use crate::store::{DEFAULT_SNAPSHOT_POLICY, DynamoStore};
use crate::table::DynamoTable;

/// A takeover that read at least this many records without a usable snapshot writes one at its
/// first append, whatever the policy's period.
pub const SNAPSHOT_SOON_RECORDS: u64 = 1_000;

/// What opening the ledger read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The snapshot it started from: its position and the records it covers.
    pub snapshot: Option<(u64, u64)>,
    /// The records read after it (from the position log), or every record when it Scanned.
    pub tail_records: u64,
    /// Whether it Scanned the whole table (no usable snapshot).
    pub scanned: bool,
    /// The snapshots it skipped, newest first, each with why.
    pub skipped: Vec<String>,
}

/// Opens a ledger over `table` from its newest usable snapshot, writing under `lease` and
/// snapshotting by [`DEFAULT_SNAPSHOT_POLICY`]. Acquire the lease first: a read made before
/// acquiring could miss the last appends of the previous holder.
pub async fn open_ledger(table: DynamoTable, lease: Lease) -> Result<Ledger<DynamoStore>, LedgerError> {
    open_ledger_as(table, lease, |store| store).await
}

/// [`open_ledger`] with the store wrapped by `wrap` (a caller that keeps its ledgers behind one
/// store type, such as a box of any [`EventStore`]).
pub async fn open_ledger_as<S: EventStore>(
    table: DynamoTable,
    lease: Lease,
    wrap: impl FnOnce(DynamoStore) -> S,
) -> Result<Ledger<S>, LedgerError> {
    Ok(open_ledger_with(table, lease, Some(DEFAULT_SNAPSHOT_POLICY), wrap).await?.0)
}

/// [`open_ledger_as`] with a snapshot policy (`None`: take none, but still open from the
/// snapshots there are), saying what it read.
pub async fn open_ledger_with<S: EventStore>(
    table: DynamoTable,
    lease: Lease,
    policy: Option<SnapshotPolicy>,
    wrap: impl FnOnce(DynamoStore) -> S,
) -> Result<(Ledger<S>, OpenReport), LedgerError> {
    let loaded = load(&table, &lease.group).await?;
    let mut store = DynamoStore::new(table, lease, loaded.next_pos)?.with_next_log(loaded.next_log);
    if let Some(policy) = policy {
        // A Scan of a long history, or a skipped snapshot, asks for a new snapshot at the first
        // append (a short history waits for the policy: reading it again costs little).
        let soon = (loaded.report.scanned || !loaded.report.skipped.is_empty())
            && loaded.report.tail_records >= SNAPSHOT_SOON_RECORDS;
        store = store.with_snapshots(policy, loaded.report.tail_records, soon);
    }
    Ok((loaded.ledger.map_store(|_| wrap(store)), loaded.report))
}

/// The ledger of `group` in `table` as it stands, over `store`, read as a takeover reads it
/// (its newest usable snapshot and the log after it) but without the lease: for `status` and a
/// dry run, which write nothing (give them a store that refuses appends). Without the lease a
/// holder may be appending meanwhile: the read is a consistent prefix of the ledger.
pub async fn read_ledger_as<S: EventStore>(
    table: &DynamoTable,
    group: &str,
    store: S,
) -> Result<(Ledger<S>, OpenReport), LedgerError> {
    let loaded = load(table, group).await?;
    Ok((loaded.ledger.map_store(|_| store), loaded.report))
}

/// The books as read, where the log ends, and what was read.
struct Loaded {
    ledger: Ledger<MemoryStore>,
    next_pos: u64,
    next_log: u64,
    report: OpenReport,
}

async fn load(table: &DynamoTable, group: &str) -> Result<Loaded, LedgerError> {
    let mut report = OpenReport::default();
    let log_since = table.log_since(group).await?;
    for item in table.snapshots().await? {
        let skip = |why: String| format!("snapshot at position {} (epoch {}): {why}", item.position, item.epoch);
        if item.group != group {
            report.skipped.push(skip(format!("written by bridge group {}, not {group}", item.group)));
            continue;
        }
        match log_since {
            Some(since) if item.epoch >= since => {}
            _ => {
                report.skipped.push(skip(format!(
                    "a holder since it kept no position log (log_since {log_since:?}): an older build wrote the table"
                )));
                continue;
            }
        }
        let snapshot = match table.read_snapshot(&item).await? {
            Ok(snapshot) => snapshot,
            Err(why) => {
                report.skipped.push(skip(why));
                continue;
            }
        };
        let books = match Books::from_snapshot(snapshot) {
            Ok(books) => books,
            Err(why) => {
                report.skipped.push(skip(why));
                continue;
            }
        };
        let tail = match table.log_after(item.position, item.log_index).await? {
            Ok(tail) => tail,
            Err(why) => {
                report.skipped.push(skip(format!("the position log after it: {why}")));
                continue;
            }
        };
        let tail_records = tail.records.len() as u64;
        let (next_pos, next_log) = (tail.next_pos, tail.next_log);
        let ledger = match Ledger::open_after(MemoryStore::new(), books, tail.records) {
            Ok(ledger) => ledger,
            Err(why) => {
                report.skipped.push(skip(format!("the position log after it does not fold: {why}")));
                continue;
            }
        };
        report.snapshot = Some((item.position, item.records));
        report.tail_records = tail_records;
        return Ok(Loaded { ledger, next_pos, next_log, report });
    }
    let replayed = table.replay().await?;
    report.scanned = true;
    report.tail_records = replayed.records.len() as u64;
    let ledger = Ledger::open_replayed(MemoryStore::new(), replayed.records)?;
    Ok(Loaded { ledger, next_pos: replayed.next_pos, next_log: replayed.next_log, report })
}
