//! `cargo xtask bench harness`: how fast the simulation runs, built in the sim profile (release
//! with LTO), each figure printed with its goal (issue 30).
//!
//! - 1,000 grants over 2 virtual hours with the default faults (seed 1): wall seconds of one
//!   run, as `cargo xtask sim --seed 1 --grants 1000 --hours 2` runs it (goal ≤ 3 s).
//! - A swarm + crashes sweep with the determinism check (each seed run twice, its ledger and
//!   audit hashes compared): seeds per wall minute with two seeds at once, as `cargo xtask sim
//!   --faults swarm --crashes --check-determinism --jobs 2` runs them (goal ≥ 100 seeds/min on
//!   2 cores). A seed whose two runs differ is named; the figure counts it all the same.
//!
//! Wall time on a machine shared with other work measures the machine too: each figure also
//! prints the process's CPU seconds, which other work disturbs less. Run with
//! `cargo run --profile sim -p tests --no-default-features --example bench_harness [seeds]`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tests::harness;
use tests::scenario::{FaultMode, Scenario};

/// Seeds in the sweep unless the first argument says otherwise.
const SWEEP_SEEDS: u64 = 40;
/// Seeds run at once in the sweep, as CI does on its two cores.
const SWEEP_JOBS: u64 = 2;
/// A run's thread stack, as `cargo xtask sim` gives it.
const RUN_STACK_BYTES: usize = 32 << 20;

fn main() -> anyhow::Result<()> {
    let seeds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(SWEEP_SEEDS);

    let mut scenario = Scenario::new(1);
    scenario.grants = 1_000;
    scenario.arrival_window_ms = 2 * 3_600_000;
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let summary = on_thread(move || harness::run(&scenario, &mut |_| {}))??;
    let (wall_s, cpu_s) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    println!(
        "1,000 grants, 2 virtual hours, sim profile (release + LTO): {wall_s:.2} s (goal ≤ 3 s); {cpu_s:.2} CPU s; {} EC2 calls, {} violations",
        summary.ec2_calls_total,
        summary.violations.len()
    );

    let next = AtomicU64::new(1);
    let differing = Mutex::new(Vec::new());
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let lanes: Vec<_> = (0..SWEEP_JOBS.min(seeds))
            .map(|_| {
                std::thread::Builder::new().stack_size(RUN_STACK_BYTES).spawn_scoped(scope, || -> anyhow::Result<()> {
                    loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if seed > seeds {
                            return Ok(());
                        }
                        let mut scenario = Scenario::new(seed);
                        scenario.faults = FaultMode::Swarm;
                        scenario.crashes = true;
                        let first = harness::run(&scenario, &mut |_| {})?;
                        let second = harness::run(&scenario, &mut |_| {})?;
                        if first.determinism_key() != second.determinism_key() {
                            differing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(seed);
                        }
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        for lane in lanes {
            lane.join().map_err(|_| anyhow::anyhow!("a sweep lane panicked"))??;
        }
        Ok(())
    })?;
    let (wall_s, cpu_s) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let mut differing = differing.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    differing.sort_unstable();
    // What the same CPU seconds give when the machine's two cores are the sweep's alone.
    let cpu_bound = seeds as f64 * 60.0 / (cpu_s / SWEEP_JOBS as f64);
    println!(
        "swarm + crashes + determinism sweep: {:.0} seeds/min on {SWEEP_JOBS} threads (goal ≥ 100 seeds/min on 2 cores); {seeds} seeds in {wall_s:.1} s, {cpu_s:.1} CPU s ({cpu_bound:.0} seeds/min were both cores the sweep's)",
        seeds as f64 * 60.0 / wall_s
    );
    if !differing.is_empty() {
        println!("  NOT DETERMINISTIC (two runs differ): seeds {differing:?}");
    }
    Ok(())
}

/// Runs `work` on a thread with a run's stack and waits for it.
fn on_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .stack_size(RUN_STACK_BYTES)
        .spawn(work)?
        .join()
        .map_err(|_| anyhow::anyhow!("the run's thread panicked"))
}

/// CPU seconds this process has used so far (user and system), from `/proc/self/stat`; 0 where
/// that cannot be read.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The fields after the command name (which is in parentheses and may hold spaces).
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}
