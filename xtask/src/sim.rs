//! `cargo xtask sim`: the whole backend, unchanged, on the deterministic EC2 simulator.
//!
//! Prints `SEED=` and the drawn fault rates first, progress while it runs, and a summary table
//! (or, with `--json`, one JSON object and nothing else on stdout). Exit codes: 0 clean,
//! 3 safety failure, 4 liveness failure; every failure prints the command that reproduces it.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use tests::checkers::{Severity, names};
use tests::harness;
use tests::scenario::{Breakage, FaultMode, Scenario};
use tests::selftest;
use tests::summary::Summary;

/// Exit code of a run in which a safety invariant broke (clap uses 2 for usage errors).
pub const EXIT_SAFETY: u8 = 3;
/// Exit code of a run in which work did not finish (liveness).
pub const EXIT_LIVENESS: u8 = 4;

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
    /// Bridge replicas sharing one ledger under a lease (1: a single bridge with a ledger of
    /// its own). With `--crashes`, each crash kills or pauses the lease holder and a standby
    /// takes over once the lease runs out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    replicas: u8,
    /// With replicas, the share of crashes that pause the holder rather than kill it.
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
    pause_share: f64,
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
        scenario.breakage = self.breakage;
        scenario.disabled_checkers = self.disabled_checkers.clone();
        if self.lossy {
            scenario.faults_override = Some(selftest::lossy_faults());
        }
        if self.short_pages {
            scenario.faults_override = Some(selftest::short_page_faults());
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
        if self.edges != 0.05 {
            cmd.push_str(&format!(" --edges {}", self.edges));
        }
        if self.replicas != 1 {
            cmd.push_str(&format!(" --replicas {}", self.replicas));
        }
        if self.pause_share != 0.5 {
            cmd.push_str(&format!(" --pause-share {}", self.pause_share));
        }
        if let Some(b) = self.breakage {
            cmd.push_str(&format!(" --break {}", b.name()));
        }
        for c in &self.disabled_checkers {
            cmd.push_str(&format!(" --disable-checker {c}"));
        }
        cmd
    }
}

/// Runs the self-test: every deliberate bug must be caught by its checker.
fn self_test(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let results = selftest::run_all(&args.disabled_checkers, &mut |r| {
        let name = r.breakage.map_or("control (no bug)", |b| b.name());
        let fault_note = format!(" {:?}", r.setting).to_lowercase();
        if r.passed {
            println!("self-test {name:<24} seed {}{fault_note}: ok, fired {:?}", r.seed, r.fired);
        } else {
            println!("self-test {name:<24} seed {}{fault_note}: FAILED: {}", r.seed, r.why);
            eprintln!("reproduce: {}", r.reproduce);
        }
    })?;
    let failed = results.iter().filter(|r| !r.passed).count();
    println!("self-test: {} runs, {failed} failed, {:.1} s", results.len(), started.elapsed().as_secs_f64());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SAFETY) })
}

/// Runs the simulation for every requested seed and returns the exit code.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.self_test {
        return self_test(&args);
    }
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let started = Instant::now();
    let mut worst: Option<Severity> = None;
    for seed in first..first.saturating_add(args.seeds.max(1)) {
        let scenario = args.scenario(seed);
        let summary = run_one(&args, &scenario)?;
        if args.check_determinism {
            let again = harness::run(&scenario, &mut |_| {})?;
            if again.determinism_key() != summary.determinism_key() {
                eprintln!(
                    "SEED={seed}: NOT DETERMINISTIC: first run {} second run {}",
                    summary.determinism_key(),
                    again.determinism_key()
                );
                eprintln!("reproduce: {} --check-determinism", args.reproduce(seed));
                worst = Some(Severity::Safety);
                continue;
            }
            if !args.json {
                println!("SEED={seed}: deterministic ({})", summary.determinism_key());
            }
        }
        if let Some(severity) = summary.worst() {
            eprintln!("SEED={seed}: {severity:?} failure; reproduce: {}", args.reproduce(seed));
            worst = Some(worst.map_or(severity, |w| w.min(severity)));
        }
    }
    if args.seeds > 1 && !args.json {
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        println!(
            "{} seeds in {:.1} s: {:.1} seeds per minute",
            args.seeds,
            minutes * 60.0,
            args.seeds as f64 / minutes.max(1e-9)
        );
    }
    Ok(match worst {
        None => ExitCode::SUCCESS,
        Some(Severity::Safety) => ExitCode::from(EXIT_SAFETY),
        Some(Severity::Liveness) => ExitCode::from(EXIT_LIVENESS),
    })
}

fn run_one(args: &SimArgs, scenario: &Scenario) -> anyhow::Result<Summary> {
    let quiet = args.json || args.seeds > 1;
    let summary = if quiet {
        harness::run(scenario, &mut |_| {})?
    } else {
        println!("SEED={}", scenario.seed);
        println!("fault rates ({}): {}", scenario.faults.flag(), tests::scenario::drawn_faults(scenario));
        println!("grants={} hours={} crashes={}", scenario.grants, args.hours, scenario.crashes);
        harness::run(scenario, &mut |line| println!("{line}"))?
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
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
    Ok(summary)
}
