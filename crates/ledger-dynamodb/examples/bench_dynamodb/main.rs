//! `cargo xtask bench ledger`, DynamoDB part: the DynamoDB store's appends per second and
//! latency percentiles against moto on loopback, one record per append and group commits of
//! `BATCH` records; then the takeover time with years of history (`takeover.rs`). A loopback-moto figure: it measures moto's Python server and this process,
//! not DynamoDB (whose conditional transactions take milliseconds over a real network), and moto
//! deep-copies a table for every transaction, so its figures fall as the table grows. Skipped,
//! saying so, when `MOTO_ENDPOINT` is not set.
//!
//! Options: `--appends N` (default 300; 0 skips the appends), `--history-grants N` (settled
//! grants behind the takeover, default 100,000; 0 skips it), `--full-scan` (also time a full
//! Scan of that table, for contrast).

#![allow(clippy::unwrap_used)]

/// One grant's life, as `bench_ledger` writes it: the appends here are its first record, the
/// takeover's history whole lives.
#[path = "../../../usage-ledger/examples/bench_ledger/life.rs"]
mod life;
mod takeover;

use std::time::Instant;

use backend_api::{GrantId, Secret, TokioClock};
use ledger_dynamodb::{Connection, DynamoTable, open_ledger_with};
use usage_ledger::{Event, Ledger};

const BATCH: usize = 25;
const T0: u64 = 1_800_000_000_000;

/// Grant `n`'s admission at `T0 + n`: the first record of its life.
fn admitted(n: u64) -> (GrantId, u64, Event) {
    let record = life::Life::with_samples(n, 0).next(T0 + n).unwrap();
    (record.grant, record.at_unix_ms, record.event)
}

fn percentile_ms(sorted_s: &[f64], p: f64) -> f64 {
    let index = ((sorted_s.len() as f64 - 1.0) * p).round() as usize;
    sorted_s[index] * 1e3
}

fn main() {
    let Some(endpoint) = std::env::var("MOTO_ENDPOINT").ok().filter(|e| !e.trim().is_empty()) else {
        println!(
            "bench ledger (DynamoDB store): SKIPPED: MOTO_ENDPOINT is not set; start `moto_server -H 127.0.0.1 -p 5055` \
             and set MOTO_ENDPOINT=http://127.0.0.1:5055 to measure it against moto"
        );
        return;
    };
    let (mut appends, mut history_grants, mut full_scan) = (300usize, 100_000u64, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--appends" => appends = args.next().and_then(|v| v.parse().ok()).expect("--appends N"),
            "--history-grants" => {
                history_grants = args.next().and_then(|v| v.parse().ok()).expect("--history-grants N");
            }
            "--full-scan" => full_scan = true,
            other => panic!("unknown option {other}: use --appends N, --history-grants N or --full-scan"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let new_table = |name: &str| {
        runtime.block_on(async {
            let connection = Connection {
                region: "us-east-1".into(),
                endpoint_url: Some(endpoint.clone()),
                static_credentials: Some(("testing".into(), Secret::new("testing"))),
                session_token: None,
            };
            let table = DynamoTable::new(connection.client().await, format!("bench-{name}-{}", std::process::id()));
            table.create().await.unwrap();
            table
        })
    };
    if appends > 0 {
        appends_bench(&runtime, &new_table("ledger"), &endpoint, appends);
    }
    if history_grants > 0 {
        takeover::run(&runtime, &new_table("takeover"), history_grants, full_scan);
    }
}

fn appends_bench(runtime: &tokio::runtime::Runtime, table: &DynamoTable, endpoint: &str, appends: usize) {
    let lease = runtime.block_on(table.acquire("bench", "bench", 3_600_000, &TokioClock::starting_at(T0))).unwrap();
    // No snapshots here: moto's server is not thread-safe (a snapshot written in the background
    // while an append's transaction copies the table fails one of them), and a snapshot would
    // disturb the latencies measured.
    let mut ledger: Ledger<_> = runtime.block_on(open_ledger_with(table.clone(), lease, None, |s| s)).unwrap().0;
    println!(
        "bench ledger (DynamoDB store): LOOPBACK MOTO at {endpoint}, not DynamoDB; {appends} appends \
         (moto copies the table per transaction: slower as it grows)"
    );

    let mut latencies_s = Vec::with_capacity(appends);
    let started = Instant::now();
    for n in 0..appends as u64 {
        let (id, at, event) = admitted(n);
        let t = Instant::now();
        ledger.append(id, at, event).unwrap();
        latencies_s.push(t.elapsed().as_secs_f64());
    }
    let single = appends as f64 / started.elapsed().as_secs_f64();
    latencies_s.sort_by(f64::total_cmp);
    println!(
        "dynamodb (loopback moto) append, 1 record per transaction: {single:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms",
        percentile_ms(&latencies_s, 0.50),
        percentile_ms(&latencies_s, 0.99)
    );

    let batches = (appends / BATCH).max(1);
    let mut latencies_s = Vec::with_capacity(batches);
    let started = Instant::now();
    for b in 0..batches as u64 {
        let batch: Vec<_> = (0..BATCH as u64).map(|i| admitted(1_000_000 + b * BATCH as u64 + i)).collect();
        let t = Instant::now();
        ledger.append_batch(batch).unwrap();
        latencies_s.push(t.elapsed().as_secs_f64());
    }
    let batched = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    latencies_s.sort_by(f64::total_cmp);
    println!(
        "dynamodb (loopback moto) append, group commit of {BATCH}: {batched:.0} records/s, p50 {:.2} ms, p99 {:.2} ms per commit",
        percentile_ms(&latencies_s, 0.50),
        percentile_ms(&latencies_s, 0.99)
    );
    drop(ledger);
}
