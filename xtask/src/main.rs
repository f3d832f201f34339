//! Project tasks, one module each: `cargo xtask sim`, `cargo xtask ci`, `cargo xtask bench`.
//!
//! A bare `cargo xtask` lists the tasks.

mod bench;
mod ci;
mod sim;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project tasks for the compute-bridge EC2 backend",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole backend against the deterministic EC2 simulator (the main job).
    Sim(sim::SimArgs),
    /// Everything CI checks: fmt, clippy, docs, dependency invariants, all tests with moto's server.
    Ci(ci::CiArgs),
    /// Print speed and memory figures: `ledger`, `sim`, `backend` (default: all).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Sim(args) => sim::run(args),
        Task::Ci(args) => ci::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Task::Bench(args) => bench::run(args).map(|()| std::process::ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of xtask's manifest directory).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// A command for `program` without the variables `cargo run` set for xtask itself
/// (`CARGO_MANIFEST_DIR`, `CARGO_MANIFEST_PATH`, `CARGO_PKG_*`). Build scripts watch some of
/// them (ring's: `rerun-if-env-changed=CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...), and cargo
/// compares what it was started with: a cargo started by xtask with xtask's values would run
/// ring's build script again, and rebuild ring and every crate above it (rustls, the AWS SDK:
/// a quarter of an hour on two cores) each time `cargo xtask ci` follows a plain `cargo test`,
/// and the plain `cargo test` after it would do the same.
fn command(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("CARGO_PKG_") || k.starts_with("CARGO_MANIFEST_")) {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `program args` in the workspace root, echoing the command, and fails on a non-zero exit.
fn run_cmd(program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = command(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {program}: {e}"))?;
    anyhow::ensure!(status.success(), "`{program} {}` failed with {status}", args.join(" "));
    Ok(())
}
