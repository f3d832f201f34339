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
    /// usage-ledger: fold, replay and durable append (against SQLite), peak memory.
    Ledger,
    /// sim-ec2: simulated API calls per wall second.
    Sim,
    /// aws-backend on the simulator: calls per lifecycle, Describe calls per poll, burst ratio.
    Backend,
}

/// Runs the selected benches in release builds.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let which = if args.which.is_empty() { vec![Bench::Ledger, Bench::Sim, Bench::Backend] } else { args.which };
    for bench in which {
        let (package, example) = match bench {
            Bench::Ledger => ("usage-ledger", "bench_ledger"),
            Bench::Sim => ("sim-ec2", "bench_sim"),
            Bench::Backend => ("tests", "bench_backend"),
        };
        println!("== bench {example} ({package}, release) ==");
        // The backend bench runs on the simulator: build it without the AWS SDK.
        let mut args = vec!["run", "--quiet", "--release", "-p", package, "--example", example];
        if bench == Bench::Backend {
            args.push("--no-default-features");
        }
        crate::run_cmd("cargo", &args, &[])?;
    }
    Ok(())
}
