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

/// Runs `program args` in the workspace root, echoing the command, and fails on a non-zero exit.
fn run_cmd(program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| anyhow::anyhow!("could not start {program}: {e}"))?;
    anyhow::ensure!(status.success(), "`{program} {}` failed with {status}", args.join(" "));
    Ok(())
}
