//! Issue 29's DynamoDB figure: a takeover with `--history-grants` settled grants of history
//! (13 events each) behind 64 live ones, whose goal is `lease_s / 3`. The first holder writes a
//! snapshot of the history and appends the live grants' events (the tail); the history's items
//! are loaded with `BatchWriteItem` (moto deep-copies the table for every item of every
//! `TransactWriteItems`, so loading it through appends would take days); then a second holder
//! takes over.

use std::time::Instant;

use backend_api::TokioClock;
use ledger_dynamodb::{DEFAULT_SNAPSHOT_POLICY, DynamoStore, DynamoTable, open_ledger_with};
use usage_ledger::file::encode_payload;
use usage_ledger::{Event, GrantState, Ledger, Record};

const T0: u64 = 1_800_000_000_000;
const LIVE_GRANTS: usize = 64;
/// The bridge's default lease (`lease_s`), whose third is the goal.
const LEASE_S: f64 = 30.0;
/// Records loaded per `bulk_load_unchecked` call (memory holds this many payloads at a time).
const LOAD_BATCH: usize = 50_000;

// Each grant's life is `bench_ledger`'s (`crate::life`), here without network samples (7 events
// to running, 6 to settled).
use crate::life::Life;

/// `history_grants` settled grants, interleaved over 64 slots; each slot's next grant is left
/// live, 7 events in (the tail, appended after the snapshot).
fn history(history_grants: u64) -> (Vec<Record>, Vec<Record>) {
    let mut next = 0u64;
    let mut lives: Vec<Life> = (0..LIVE_GRANTS)
        .map(|_| {
            next += 1;
            Life::with_samples(next, 0)
        })
        .collect();
    let (mut records, mut settled, mut now, mut slot) = (Vec::new(), 0u64, T0, 0usize);
    while settled < history_grants {
        now += 25;
        slot = (slot + 1) % LIVE_GRANTS;
        match lives[slot].next(now) {
            Some(record) => {
                settled += u64::from(matches!(record.event, Event::GrantSettled { .. }));
                records.push(record);
            }
            None => {
                next += 1;
                lives[slot] = Life::with_samples(next, 0);
            }
        }
    }
    let mut tail = Vec::new();
    for life in &mut lives {
        if life.state.as_ref().is_none_or(GrantState::is_settled) {
            next += 1;
            *life = Life::with_samples(next, 0);
        }
        while life.step < 7 {
            now += 25;
            tail.extend(life.next(now));
        }
    }
    (records, tail)
}

fn encode_all(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            let mut p = Vec::new();
            encode_payload(r, &mut p).unwrap();
            p
        })
        .collect()
}

pub(crate) fn run(runtime: &tokio::runtime::Runtime, table: &DynamoTable, history_grants: u64, full_scan: bool) {
    let clock = TokioClock::starting_at(T0);
    let lease = runtime.block_on(table.acquire("bench", "bench-a", 3_600_000, &clock)).unwrap();
    let (records, tail) = history(history_grants);
    println!(
        "takeover: {history_grants} settled grants = {} records of history, {} tail records of {LIVE_GRANTS} live grants",
        records.len(),
        tail.len()
    );

    // The first holder's books, folded here from the history (its own open would Scan it).
    // moto copies the whole table for every item of every TransactWriteItems, so with the
    // history loaded first each of the snapshot's and the tail's transactions would take minutes:
    // they are written first, into a table holding only the lease, and the history's items
    // (positions before the snapshot's) are loaded after them. The table ends as if written in
    // order: the takeover reads the same items either way.
    let next_pos = records.len() as u64;
    // Its log continues after the history's log items (at most one per record).
    let store = DynamoStore::new(table.clone(), lease.clone(), next_pos).unwrap().with_next_log(next_pos);
    let mut ledger = Ledger::open_replayed(store, records.iter().cloned().zip(encode_all(&records))).unwrap();
    let started = Instant::now();
    ledger.snapshot().unwrap();
    let encode_s = started.elapsed().as_secs_f64();
    ledger.store().flush_snapshot().unwrap();
    let snapshot_s = started.elapsed().as_secs_f64();
    let snapshot = runtime.block_on(table.snapshots()).unwrap().remove(0);
    println!(
        "takeover: snapshot of {} grants: {} bytes in {} parts, encoded in {encode_s:.2} s, encoded and written in \
         {snapshot_s:.1} s (into a table without the history: see above)",
        ledger.grants().count(),
        snapshot.bytes,
        snapshot.parts
    );
    let started = Instant::now();
    ledger.append_batch(tail.iter().map(|r| (r.grant, r.at_unix_ms, r.event.clone()))).unwrap();
    println!("takeover: tail of {} records appended in {:.1} s", tail.len(), started.elapsed().as_secs_f64());
    let (hash, count) = (ledger.records_hash(), ledger.record_count());
    drop(ledger);

    let started = Instant::now();
    let (mut items, mut next_log) = (0, 0);
    for (i, batch) in records.chunks(LOAD_BATCH).enumerate() {
        let first_pos = (i * LOAD_BATCH) as u64;
        let (written, next) = runtime
            .block_on(table.bulk_load_unchecked(lease.epoch, batch, &encode_all(batch), first_pos, next_log))
            .unwrap();
        items += written;
        next_log = next;
    }
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "takeover: populate the history (BatchWriteItem of pre-encoded items, 4 in flight): {items} items in \
         {load_s:.1} s ({:.0} records/s)",
        records.len() as f64 / load_s
    );
    runtime.block_on(table.release(lease)).unwrap();

    // The takeover: acquire, read the newest snapshot, Query the log after it, fold.
    let started = Instant::now();
    let lease = runtime.block_on(table.acquire("bench", "bench-b", 30_000, &clock)).unwrap();
    let (ledger, report) =
        runtime.block_on(open_ledger_with(table.clone(), lease, Some(DEFAULT_SNAPSHOT_POLICY), |s| s)).unwrap();
    let takeover_s = started.elapsed().as_secs_f64();
    assert_eq!((ledger.records_hash(), ledger.record_count()), (hash, count), "the takeover's books differ");
    println!(
        "dynamodb (loopback moto) takeover with {history_grants} settled grants of history: {takeover_s:.2} s \
         (goal: ≤ lease_s / 3 = {:.0} s; snapshot at position {:?}, {} tail records, scanned: {})",
        LEASE_S / 3.0,
        report.snapshot.map(|s| s.0),
        report.tail_records,
        report.scanned
    );
    drop(ledger);
    if full_scan {
        let started = Instant::now();
        let replayed = runtime.block_on(table.replay()).unwrap();
        println!(
            "takeover: for contrast, a full Scan of the table read {} records in {:.1} s",
            replayed.records.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
