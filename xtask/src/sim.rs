//! `cargo xtask sim`: the whole backend, unchanged, on the deterministic EC2 simulator.
//!
//! Prints `SEED=` and the drawn fault rates first, progress while it runs, and a summary table
//! (or, with `--json`, one JSON object and nothing else on stdout). Exit codes: 0 clean,
//! 3 safety failure, 4 liveness failure, 5 a run hung (the watchdog stopped the sweep); every
//! failure prints the command that reproduces it.
//!
//! Each run happens on a thread of its own, watched from this one: a run that never returns
//! (its virtual time stuck, a task spinning) cannot hang CI, and a panic that escapes the
//! harness is reported as the `panic` checker's finding, with its seed, instead of ending the
//! process with 101 and no word of which seed did it.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tests::checkers::{Severity, Violation, names};
use tests::harness;
use tests::scenario::{Breakage, FaultMode, Scenario};
use tests::selftest;
use tests::summary::Summary;

/// Exit code of a run in which a safety invariant broke (clap uses 2 for usage errors).
pub const EXIT_SAFETY: u8 = 3;
/// Exit code of a run in which work did not finish (liveness).
pub const EXIT_LIVENESS: u8 = 4;
/// Exit code of a sweep the watchdog stopped: one run took longer than `--watchdog-s`.
pub const EXIT_HUNG: u8 = 5;

/// The longest one run (one seed, or each of its two runs with `--check-determinism`) may take
/// on the wall clock. A default run of 200 grants takes about a second in a release build and
/// well under a minute in a debug one; ten minutes is a hang, not a slow machine.
const WATCHDOG_S_DEFAULT: u64 = 600;

/// The stack of a run's thread: the main thread's usual 8 MiB and more. The harness's futures
/// are large in a debug build; the memory is only reserved, and touched as it is used.
const RUN_STACK_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Faults {
    /// Nothing fails and nothing lags.
    None,
    /// Realistic delays, no random failures.
    Default,
    /// Each seed draws its own mix of every fault.
    Swarm,
}

/// Arguments of `cargo xtask sim`.
#[derive(Args)]
pub struct SimArgs {
    /// The seed of the run (default: drawn from the wall clock and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many consecutive seeds, starting at --seed.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Grants in the workload.
    #[arg(long, default_value_t = 200)]
    grants: u32,
    /// Virtual hours over which grants arrive.
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// Which faults the simulated EC2 injects.
    #[arg(long, value_enum, default_value = "default")]
    faults: Faults,
    /// Crash the backend at random points and recover it from its ledger.
    #[arg(long)]
    crashes: bool,
    /// Run each seed twice and compare the ledger and audit hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Print the summary as one JSON object (per seed) on stdout, nothing else there.
    #[arg(long)]
    json: bool,
    /// Run every deliberate bug on fixed seeds and check that its checker, and only plausible
    /// ones, fire (and that the same runs without a bug are clean).
    #[arg(long)]
    self_test: bool,
    /// Switch on one deliberate bug (see `--self-test`; names in docs/simulation.md).
    #[arg(long = "break", value_name = "NAME", value_parser = parse_breakage)]
    breakage: Option<Breakage>,
    /// Ignore this checker's findings (repeatable): shows that `--self-test` fails without it.
    #[arg(long = "disable-checker", value_name = "NAME", value_parser = parse_checker)]
    disabled_checkers: Vec<String>,
    /// The share of admissible grants drawn at an edge (zero CPU or RAM, storage at or past
    /// gp3's limit, more RAM than any type, a later start, a deadline seconds away).
    #[arg(long, default_value_t = 0.05)]
    edges: f64,
    /// Lost responses (30 % of mutating calls) on top of the default faults: what the
    /// self-test's `fresh-client-token` case runs with.
    #[arg(long)]
    lossy: bool,
    /// Most pages of a listing cut short, some empty (70 %, on top of the default faults):
    /// what the self-test's `first-page-only` case runs with.
    #[arg(long, conflicts_with = "lossy")]
    short_pages: bool,
    /// Launches pending one to two minutes (on top of the default faults) and, with
    /// `--crashes`, 8 to 12 crashes, a third of them minutes long: what the self-test's recovery cases run with, so that
    /// instances start running, and deadlines pass, while the bridge is down.
    #[arg(long, conflicts_with_all = ["lossy", "short_pages"])]
    crash_heavy: bool,
    /// Bridge replicas sharing one ledger under a lease (1: a single bridge with a ledger of
    /// its own). With `--crashes`, each crash kills or pauses the lease holder and a standby
    /// takes over once the lease runs out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    replicas: u8,
    /// With replicas, the share of crashes that pause the holder rather than kill it.
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
    pause_share: f64,
    /// Without replicas, the share of crashes that drain the bridge (SIGTERM: no new grants,
    /// provisions finish or roll back as retryable, exit) rather than kill it.
    #[arg(long, default_value_t = 0.3, value_parser = parse_share)]
    drain_share: f64,
    /// The ledger's store takes a snapshot every this many records (0: never); a restarted
    /// bridge opens from the newest snapshot plus the records after it, checked against a full
    /// replay (the `snapshot` checker).
    #[arg(long, default_value_t = tests::scenario::DEFAULT_SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Run this many seeds at once, each on a thread of its own (their lines print as they
    /// finish; CI runs two on its two cores). With `--self-test`: this many cases' regimes at
    /// once, reported in their order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Stop the sweep with exit code 5 when one run takes longer than this many seconds of
    /// wall time (with `--self-test`: when no case finishes for this long).
    #[arg(long, default_value_t = WATCHDOG_S_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    watchdog_s: u64,
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share: give a number from 0 to 1, e.g. 0.5")),
    }
}

fn parse_breakage(name: &str) -> Result<Breakage, String> {
    Breakage::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Breakage::ALL.iter().map(|b| b.name()).collect();
        format!("unknown breakage {name:?}: use one of {}", names.join(", "))
    })
}

fn parse_checker(name: &str) -> Result<String, String> {
    if names::ALL.contains(&name) {
        Ok(name.to_string())
    } else {
        Err(format!("unknown checker {name:?}: use one of {}", names::ALL.join(", ")))
    }
}

impl SimArgs {
    fn scenario(&self, seed: u64) -> Scenario {
        let mut scenario = Scenario::new(seed);
        scenario.grants = self.grants;
        scenario.arrival_window_ms = (self.hours.max(0.0) * 3_600_000.0) as u64;
        scenario.faults = match self.faults {
            Faults::None => FaultMode::None,
            Faults::Default => FaultMode::Default,
            Faults::Swarm => FaultMode::Swarm,
        };
        scenario.crashes = self.crashes;
        scenario.edge_share = self.edges;
        scenario.replicas = self.replicas;
        scenario.pause_share = self.pause_share;
        scenario.drain_share = self.drain_share;
        scenario.snapshot_every = self.snapshot_every;
        scenario.breakage = self.breakage;
        scenario.disabled_checkers = self.disabled_checkers.clone();
        if self.lossy {
            scenario.faults_override = Some(selftest::lossy_faults());
        }
        if self.short_pages {
            scenario.faults_override = Some(selftest::short_page_faults());
        }
        if self.crash_heavy {
            scenario.faults_override = Some(selftest::slow_launch_faults());
            scenario.crash_heavy = true;
        }
        scenario
    }

    fn reproduce(&self, seed: u64) -> String {
        let mut cmd = format!(
            "cargo xtask sim --seed {seed} --grants {} --hours {} --faults {}",
            self.grants,
            self.hours,
            match self.faults {
                Faults::None => "none",
                Faults::Default => "default",
                Faults::Swarm => "swarm",
            }
        );
        if self.crashes {
            cmd.push_str(" --crashes");
        }
        if self.lossy {
            cmd.push_str(" --lossy");
        }
        if self.short_pages {
            cmd.push_str(" --short-pages");
        }
        if self.crash_heavy {
            cmd.push_str(" --crash-heavy");
        }
        if self.edges != 0.05 {
            cmd.push_str(&format!(" --edges {}", self.edges));
        }
        if self.replicas != 1 {
            cmd.push_str(&format!(" --replicas {}", self.replicas));
        }
        if self.pause_share != 0.5 {
            cmd.push_str(&format!(" --pause-share {}", self.pause_share));
        }
        if self.drain_share != 0.3 {
            cmd.push_str(&format!(" --drain-share {}", self.drain_share));
        }
        if self.snapshot_every != tests::scenario::DEFAULT_SNAPSHOT_EVERY {
            cmd.push_str(&format!(" --snapshot-every {}", self.snapshot_every));
        }
        if let Some(b) = self.breakage {
            cmd.push_str(&format!(" --break {}", b.name()));
        }
        for c in &self.disabled_checkers {
            cmd.push_str(&format!(" --disable-checker {c}"));
        }
        if self.watchdog_s != WATCHDOG_S_DEFAULT {
            cmd.push_str(&format!(" --watchdog-s {}", self.watchdog_s));
        }
        cmd
    }

    fn watchdog(&self) -> Duration {
        Duration::from_secs(self.watchdog_s)
    }
}

/// What became of work run under the watchdog.
enum Watched<T> {
    /// It returned: its own result, an error included.
    Returned(anyhow::Result<T>),
    /// It panicked, and the panic escaped it; the message of the panic.
    Panicked(String),
    /// It neither returned nor beat within the watchdog's limit. Its thread is left running:
    /// nothing can stop a thread from outside, and the process exits soon after.
    Hung,
}

/// Runs `work` on a thread of its own and waits for it, at most `limit` between two beats
/// (`work` calls the function it is handed to beat; a run that does not beat has `limit` in
/// all). A panic in `work` is caught and returned with its message.
fn watched<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce(&dyn Fn()) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<Watched<T>> {
    enum Message<T> {
        Beat,
        Done(std::thread::Result<anyhow::Result<T>>),
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sim-run".into())
        .stack_size(RUN_STACK_BYTES)
        .spawn(move || {
            let beat = || {
                let _ = tx.send(Message::Beat);
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(&beat)));
            let _ = tx.send(Message::Done(outcome));
        })
        .map_err(|e| anyhow::anyhow!("could not start a thread for the run: {e}"))?;
    loop {
        match rx.recv_timeout(limit) {
            Ok(Message::Beat) => {}
            Ok(Message::Done(Ok(result))) => return Ok(Watched::Returned(result)),
            Ok(Message::Done(Err(payload))) => return Ok(Watched::Panicked(panic_message(payload.as_ref()))),
            Err(RecvTimeoutError::Timeout) => return Ok(Watched::Hung),
            // The thread sends before it ends, so only an abort on the way could get here.
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(Watched::Panicked("the run's thread ended without a result".into()));
            }
        }
    }
}

/// The message a panic carried (`panic!` with a literal gives a `&str`, with arguments a
/// `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a payload that is not a string".into())
        .replace('\n', " ")
}

/// Runs the self-test: every deliberate bug must be caught by its checker. The watchdog allows
/// `--watchdog-s` between two finished cases.
fn self_test(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let disabled = args.disabled_checkers.clone();
    let jobs = args.jobs;
    let mut reproduce = String::from("cargo xtask sim --self-test");
    for c in &args.disabled_checkers {
        reproduce.push_str(&format!(" --disable-checker {c}"));
    }
    let results = match watched(args.watchdog(), move |beat| {
        selftest::run_all(&disabled, usize::from(jobs), &mut |r| {
            let name = r.breakage.map_or("control (no bug)", |b| b.name());
            let regime = if r.swarm { ", swarm + crashes" } else { "" };
            let fault_note = format!(" {:?}{regime}", r.setting).to_lowercase();
            if r.passed {
                let clause = match (r.breakage, r.clause_fired) {
                    (None, _) => "nothing fired".to_string(),
                    (Some(_), true) => format!("{} fired", r.why),
                    (Some(_), false) => format!("{} not reached on this seed", r.why),
                };
                println!("self-test {name:<24} seed {}{fault_note}: ok, {clause}; fired {:?}", r.seed, r.fired);
            } else {
                println!("self-test {name:<24} seed {}{fault_note}: FAILED: {}", r.seed, r.why);
                eprintln!("reproduce: {}", r.reproduce);
            }
            beat();
        })
    })? {
        Watched::Returned(results) => results?,
        Watched::Panicked(message) => {
            eprintln!("self-test: Safety [{}] a panic escaped the harness: {message}", names::PANIC);
            eprintln!("self-test: Safety failure; reproduce: {reproduce}");
            return Ok(ExitCode::from(EXIT_SAFETY));
        }
        Watched::Hung => {
            eprintln!(
                "self-test: no case finished within {} s after the last one printed (watchdog): a run hangs; \
                 reproduce: {reproduce}",
                args.watchdog_s
            );
            return Ok(ExitCode::from(EXIT_HUNG));
        }
    };
    let failed = results.iter().filter(|r| !r.passed).count();
    println!("self-test: {} runs, {failed} failed, {:.1} s", results.len(), started.elapsed().as_secs_f64());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SAFETY) })
}

/// What one seed's runs came to.
enum Verdict {
    /// No violation (and, with `--check-determinism`, the same hashes twice).
    Clean,
    /// A violation, or the two runs of `--check-determinism` differed.
    Failed(Severity),
    /// The watchdog gave up on a run: the sweep stops.
    Hung,
}

/// Runs the simulation for every requested seed and returns the exit code. With `--jobs N`, N
/// seeds run at once; each seed's run is the same whatever runs beside it (its own runtime,
/// simulator and PRNG), and its lines are printed as it finishes.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.self_test {
        return self_test(&args);
    }
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let count = args.seeds.max(1);
    let verbose = !args.json && count == 1;
    let started = Instant::now();
    let next = AtomicU64::new(0);
    // Set by a lane that hung or failed to run, so that the others take no further seed.
    let stop = AtomicBool::new(false);
    let lane = || {
        let mut verdicts = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(seed) = first.checked_add(i).filter(|_| i < count) else { break };
            let verdict = sweep_seed(&args, seed, verbose);
            if !matches!(verdict, Ok(Verdict::Clean | Verdict::Failed(_))) {
                stop.store(true, Ordering::SeqCst);
            }
            verdicts.push(verdict);
        }
        verdicts
    };
    let lanes = u64::from(args.jobs).min(count);
    let verdicts: Vec<anyhow::Result<Verdict>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes).map(|_| scope.spawn(lane)).collect();
        // A lane only prints and counts (each run is caught on a thread of its own), so a panic
        // of a lane is a bug of this file: let it through.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload)))
            .collect()
    });
    let mut worst: Option<Severity> = None;
    let mut hung = false;
    for verdict in verdicts {
        match verdict? {
            Verdict::Clean => {}
            Verdict::Failed(severity) => worst = Some(worst.map_or(severity, |w| w.min(severity))),
            Verdict::Hung => hung = true,
        }
    }
    if hung {
        return Ok(ExitCode::from(EXIT_HUNG));
    }
    if count > 1 && !args.json {
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        println!("{count} seeds in {:.1} s: {:.1} seeds per minute", minutes * 60.0, count as f64 / minutes.max(1e-9));
    }
    Ok(match worst {
        None => ExitCode::SUCCESS,
        Some(Severity::Safety) => ExitCode::from(EXIT_SAFETY),
        Some(Severity::Liveness) => ExitCode::from(EXIT_LIVENESS),
    })
}

/// Runs one seed (twice with `--check-determinism`), prints what it came to, and says how it
/// went.
fn sweep_seed(args: &SimArgs, seed: u64, verbose: bool) -> anyhow::Result<Verdict> {
    let scenario = args.scenario(seed);
    if verbose {
        println!("SEED={}", scenario.seed);
        println!("fault rates ({}): {}", scenario.faults.flag(), tests::scenario::drawn_faults(&scenario));
        println!("grants={} hours={} crashes={}", scenario.grants, args.hours, scenario.crashes);
    }
    let summary = match run_watched(args, &scenario, verbose)? {
        Watched::Returned(summary) => summary?,
        Watched::Panicked(message) => {
            report_escaped_panic(args, seed, &message, false);
            return Ok(Verdict::Failed(Severity::Safety));
        }
        Watched::Hung => {
            report_hung(args, seed, false);
            return Ok(Verdict::Hung);
        }
    };
    print_summary(args, &summary)?;
    if args.check_determinism {
        let again = match run_watched(args, &scenario, false)? {
            Watched::Returned(again) => again?,
            Watched::Panicked(message) => {
                report_escaped_panic(args, seed, &message, true);
                return Ok(Verdict::Failed(Severity::Safety));
            }
            Watched::Hung => {
                report_hung(args, seed, true);
                return Ok(Verdict::Hung);
            }
        };
        if again.determinism_key() != summary.determinism_key() {
            eprintln!(
                "SEED={seed}: NOT DETERMINISTIC: first run {} second run {}",
                summary.determinism_key(),
                again.determinism_key()
            );
            eprintln!("reproduce: {} --check-determinism", args.reproduce(seed));
            return Ok(Verdict::Failed(Severity::Safety));
        }
        if !args.json {
            println!("SEED={seed}: deterministic ({})", summary.determinism_key());
        }
    }
    Ok(match summary.worst() {
        None => Verdict::Clean,
        Some(severity) => {
            eprintln!("SEED={seed}: {severity:?} failure; reproduce: {}", args.reproduce(seed));
            Verdict::Failed(severity)
        }
    })
}

/// Runs `scenario` on a thread of its own under the watchdog, printing its progress lines when
/// `progress` is set.
fn run_watched(args: &SimArgs, scenario: &Scenario, progress: bool) -> anyhow::Result<Watched<Summary>> {
    let scenario = scenario.clone();
    watched(args.watchdog(), move |_beat| {
        if progress {
            // Not `println!`, which panics when stdout is closed (`| head`): that is no panic of
            // the run's, and the summary's printing meets it on the main thread.
            harness::run(&scenario, &mut |line| {
                let _ = writeln!(std::io::stdout(), "{line}");
            })
        } else {
            harness::run(&scenario, &mut |_| {})
        }
    })
}

/// Reports a panic that escaped `harness::run` as a finding of the `panic` checker: on stderr,
/// with the command that repeats the run, and with `--json` as the seed's object on stdout
/// (unless it was the second run of `--check-determinism`, whose seed has its object already).
fn report_escaped_panic(args: &SimArgs, seed: u64, message: &str, second_run: bool) {
    let violation = Violation::safety(names::PANIC, format!("a panic escaped the harness: {message}"));
    if args.json && !second_run {
        println!("{}", serde_json::json!({ "seed": seed, "violations": [violation] }));
    }
    let again = if second_run { " --check-determinism" } else { "" };
    eprintln!("SEED={seed}: {:?} [{}] {}", violation.severity, violation.checker, violation.message);
    eprintln!("SEED={seed}: {:?} failure; reproduce: {}{again}", violation.severity, args.reproduce(seed));
}

/// Reports the run the watchdog gave up on. Its thread cannot be stopped: the sweep stops, and
/// the process ends with [`EXIT_HUNG`] when `main` returns.
fn report_hung(args: &SimArgs, seed: u64, second_run: bool) {
    let again = if second_run { " --check-determinism" } else { "" };
    eprintln!(
        "SEED={seed}: Hung run (no result within {} s, the watchdog stopped the sweep); reproduce: {}{again}",
        args.watchdog_s,
        args.reproduce(seed)
    );
}

fn print_summary(args: &SimArgs, summary: &Summary) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(summary)?);
    } else if args.seeds > 1 {
        println!(
            "SEED={} faults=[{}] grants {}/{} settled, {} calls, {} violations, {:.2} s",
            summary.seed,
            summary.faults,
            summary.grants.settled,
            summary.grants.admitted,
            summary.ec2_calls_total,
            summary.violations.len(),
            summary.wall_ms as f64 / 1_000.0
        );
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

#[cfg(test)]
mod watchdog_tests {
    use std::time::Duration;

    use super::{Watched, watched};

    #[test]
    fn a_panic_in_the_work_comes_back_with_its_message() {
        let outcome = watched(Duration::from_secs(60), |_| -> anyhow::Result<()> { panic!("seed {} broke", 7) });
        assert!(matches!(outcome, Ok(Watched::Panicked(m)) if m == "seed 7 broke"));
    }

    #[test]
    fn work_that_never_returns_is_given_up_after_the_limit() {
        let (_keep, never) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let outcome = watched(Duration::from_millis(200), move |_| -> anyhow::Result<()> {
            let _ = never.recv();
            Ok(())
        });
        assert!(matches!(outcome, Ok(Watched::Hung)));
        assert!(started.elapsed() >= Duration::from_millis(200), "gave up after {:?}", started.elapsed());
    }

    #[test]
    fn work_that_beats_may_take_longer_than_the_limit_in_all() {
        let started = std::time::Instant::now();
        let outcome = watched(Duration::from_millis(500), |beat| {
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(200));
                beat();
            }
            Ok(42)
        });
        assert!(matches!(outcome, Ok(Watched::Returned(Ok(42)))));
        assert!(started.elapsed() >= Duration::from_millis(800));
    }
}
