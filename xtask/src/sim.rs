//! `cargo xtask sim`: the whole backend, unchanged, on the deterministic EC2 simulator.

use clap::Args;

/// Arguments of `cargo xtask sim`.
#[derive(Args)]
pub struct SimArgs {
    /// The seed of the run.
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs the simulation and returns its exit code.
pub fn run(args: SimArgs) -> anyhow::Result<std::process::ExitCode> {
    let _ = args;
    println!("cargo xtask sim: the simulation runner lands with issue 8");
    Ok(std::process::ExitCode::SUCCESS)
}
