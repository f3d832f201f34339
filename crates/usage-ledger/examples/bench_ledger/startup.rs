//! Start-up with years of history: `history_grants` settled grants (13 events each, no network
//! samples) written behind 64 live ones, then the time and peak memory of opening the ledger in
//! a fresh process, from its snapshot, and of the full replay that writes the first snapshot.

use std::path::Path;
use std::time::Instant;

use usage_ledger::{EventStore, FileOptions, Ledger, Record};

use crate::{Life, T0, no_snapshots, vm_hwm_kib};

const LIVE_GRANTS: usize = 64;
const BATCH: usize = 10_000;

/// Writes the history through a store without snapshots; returns the events written, the
/// slots' lives and the clock.
fn write_history(path: &Path, history_grants: u64) -> (u64, Vec<Life>, u64) {
    let (ledger, _) = Ledger::open_file_with(path, no_snapshots()).unwrap();
    let (mut store, _) = ledger.into_parts();
    let mut next_grant = 0u64;
    let mut new_life = || {
        next_grant += 1;
        Life::with_samples(next_grant, 0)
    };
    let mut lives: Vec<Life> = (0..LIVE_GRANTS).map(|_| new_life()).collect();
    let mut settled = 0u64;
    let mut written = 0u64;
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    let mut now = T0;
    let mut slot = 0;
    // Every slot runs grants to settlement until the history is long enough; then each slot's
    // last grant is left live, part way through its life.
    while settled < history_grants {
        now += 25;
        slot = (slot + 1) % LIVE_GRANTS;
        match lives[slot].next(now) {
            Some(record) => {
                if matches!(record.event, usage_ledger::Event::GrantSettled { .. }) {
                    settled += 1;
                }
                batch.push(record);
            }
            None => lives[slot] = new_life(),
        }
        if batch.len() == BATCH {
            store.append(&batch).unwrap();
            written += batch.len() as u64;
            batch.clear();
        }
    }
    store.append(&batch).unwrap();
    (written + batch.len() as u64, lives, now)
}

/// Appends, through the ledger, the first 7 events of a new grant in each slot whose grant has
/// settled (or not started): afterwards `LIVE_GRANTS` grants are live, admitted and running.
fn start_live_grants(
    ledger: &mut Ledger<usage_ledger::FileStore>,
    lives: &mut [Life],
    mut now: u64,
    first: u64,
) -> u64 {
    let mut appended = 0;
    for (i, life) in lives.iter_mut().enumerate() {
        if life.state.as_ref().is_none_or(|s| s.is_settled()) {
            *life = Life::with_samples(first + i as u64, 0);
        }
        while life.step < 7 {
            now += 25;
            let Some(record) = life.next(now) else { break };
            // The life folded the record itself; the ledger assigns the same sequence number.
            ledger.append(record.grant, record.at_unix_ms, record.event).unwrap();
            appended += 1;
        }
    }
    appended
}

/// `--startup PATH`: opens the ledger from its snapshot and prints `tail records live seconds
/// vmhwm_kib`.
pub(crate) fn child(path: &Path) {
    let started = Instant::now();
    let (ledger, report) = Ledger::open_file_with(path, FileOptions::default()).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(report.snapshot.is_some(), "the start-up bench opens from a snapshot");
    println!(
        "{} {} {} {:.4} {}",
        report.replay.records,
        ledger.record_count(),
        ledger.live_grants().count(),
        seconds,
        vm_hwm_kib()
    );
}

pub(crate) fn run(dir: &Path, history_grants: u64) {
    let path = dir.join("startup.log");
    let started = Instant::now();
    let (events, mut lives, now) = write_history(&path, history_grants);
    let segments = usage_ledger::list_segments(&path).unwrap();
    let bytes: u64 = segments.iter().map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    println!(
        "start-up history: {history_grants} settled grants + {LIVE_GRANTS} live, {events} events, {:.0} MiB in {} segments (written in {:.1} s)",
        bytes as f64 / (1 << 20) as f64,
        segments.len(),
        started.elapsed().as_secs_f64()
    );

    // The first open replays everything and, as for any ledger without one, writes a snapshot.
    let started = Instant::now();
    let (mut ledger, report) = Ledger::open_file_with(&path, FileOptions::default()).unwrap();
    let first_open = started.elapsed().as_secs_f64();
    assert!(report.snapshot.is_none());
    let started = Instant::now();
    ledger.snapshot().unwrap();
    let snapshot_seconds = started.elapsed().as_secs_f64();
    // The live grants' events come after the snapshot: the tail a start-up replays.
    let tail = start_live_grants(&mut ledger, &mut lives, now, history_grants * 2);
    assert_eq!(ledger.live_grants().count(), LIVE_GRANTS, "{tail} events after the snapshot");
    drop(ledger);
    let snapshots = usage_ledger::snapshot::list_snapshots(&path).unwrap();
    let snapshot_bytes = snapshots.first().map_or(0, |(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()));
    println!(
        "start-up without a snapshot (full replay of {} events, then the first snapshot): {first_open:.2} s; a snapshot alone: {snapshot_seconds:.2} s, {:.1} MiB",
        report.replay.records,
        snapshot_bytes as f64 / (1 << 20) as f64
    );

    // Start-up from the snapshot, in a fresh process each time (page cache warm): best of three.
    let mut best: Option<(f64, Vec<String>)> = None;
    for _ in 0..3 {
        let child =
            std::process::Command::new(std::env::current_exe().unwrap()).arg("--startup").arg(&path).output().unwrap();
        let out = String::from_utf8_lossy(&child.stdout).to_string();
        let fields: Vec<String> = out.split_whitespace().map(String::from).collect();
        if !child.status.success() || fields.len() != 5 {
            println!("start-up from a snapshot: unavailable ({})", String::from_utf8_lossy(&child.stderr).trim());
            return;
        }
        let seconds: f64 = fields[3].parse().unwrap_or(f64::MAX);
        if best.as_ref().is_none_or(|(b, _)| seconds < *b) {
            best = Some((seconds, fields));
        }
    }
    let Some((seconds, fields)) = best else { return };
    let hwm_mib = fields[4].parse::<f64>().unwrap_or(0.0) / 1024.0;
    println!(
        "start-up from a snapshot, {history_grants} settled grants behind {} live: {seconds:.3} s (goal <= 1 s), {} records after the snapshot replayed, {} records in all",
        fields[2], fields[0], fields[1]
    );
    println!(
        "peak memory of a start-up process: {hwm_mib:.1} MiB VmHWM (the snapshot's grants, not the history's events)"
    );
    crate::background::run(&path, now + 3_600_000, history_grants * 4);
}
