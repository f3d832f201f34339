//! `cargo xtask bench`: speed and memory figures, printed, never asserted in tests.
//!
//! Each bench is a release-built example of the crate it measures, so xtask itself stays small
//! and the figures come from optimised code.

use clap::{Args, ValueEnum};

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Which benches to run (default: all).
    #[arg(value_enum)]
    which: Vec<Bench>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// usage-ledger: fold, replay and durable append (against SQLite), peak memory; then the
    /// DynamoDB store against moto on loopback (when MOTO_ENDPOINT is set): appends, and a
    /// takeover with 100,000 settled grants of history (goal: lease_s / 3).
    Ledger,
    /// sim-ec2: simulated API calls per wall second.
    Sim,
    /// aws-backend on the simulator: calls per lifecycle, Describe calls per poll, burst ratio.
    Backend,
    /// The simulation harness: 1,000 grants over 2 virtual hours; a swarm + crashes +
    /// determinism sweep, in seeds per minute.
    Harness,
}

/// Runs the selected benches in optimised builds (`release`, or `sim` for the simulation's).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let which = if args.which.is_empty() {
        vec![Bench::Ledger, Bench::Sim, Bench::Backend, Bench::Harness]
    } else {
        args.which
    };
    for bench in which {
        let (package, example) = match bench {
            Bench::Ledger => ("usage-ledger", "bench_ledger"),
            Bench::Sim => ("sim-ec2", "bench_sim"),
            Bench::Backend => ("tests", "bench_backend"),
            Bench::Harness => ("tests", "bench_harness"),
        };
        // The simulation's benches are built as CI builds the sweeps' binary (the `sim`
        // profile: release with LTO); the ledger's as the shipped binary is (`release`).
        let profile = if bench == Bench::Ledger { "release" } else { "sim" };
        println!("== bench {example} ({package}, {profile} profile) ==");
        let mut args = vec!["run", "--quiet", "--profile", profile, "-p", package, "--example", example];
        // The backend and harness benches run on the simulator: build them without the AWS SDK.
        if matches!(bench, Bench::Backend | Bench::Harness) {
            args.push("--no-default-features");
        }
        crate::run_cmd("cargo", &args, &[])?;
        if bench == Bench::Ledger {
            println!("goals (issue 30): ledger fold ≥ 12 M events/s; ledger replay from disk ≥ 3 M events/s");
            dynamodb_store()?;
        }
    }
    Ok(())
}

/// The DynamoDB store against moto on loopback (`MOTO_ENDPOINT`), or a line saying it was
/// skipped. Built in the dev profile with the whole workspace, as the tests build it: a release
/// build of the AWS SDK takes half an hour, and the figure measures moto's Python server anyway.
fn dynamodb_store() -> anyhow::Result<()> {
    println!("== bench bench_dynamodb (ledger-dynamodb, dev profile, LOOPBACK MOTO) ==");
    if std::env::var("MOTO_ENDPOINT").map_or(true, |e| e.trim().is_empty()) {
        println!(
            "bench ledger (DynamoDB store): SKIPPED: MOTO_ENDPOINT is not set; start `moto_server -H 127.0.0.1 -p 5055` \
             and set MOTO_ENDPOINT=http://127.0.0.1:5055 to measure it against moto"
        );
        return Ok(());
    }
    crate::run_cmd("cargo", &["build", "--quiet", "--workspace", "--examples"], &[])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let example = target.join("debug").join("examples").join("bench_dynamodb");
    let example = example.to_str().ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", example.display()))?;
    crate::run_cmd(example, &[], &[])
}
