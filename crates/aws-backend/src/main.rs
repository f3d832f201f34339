//! `aws-backend`: the operator's command line for the AWS EC2 backend.
//!
//! `run` resumes the grants a previous process left unfinished, provisions every grant of a
//! grants file, watches each to its deadline, tears it down and prints its usage as a JSON line;
//! `reap` lists (and without `--dry-run` removes) what carries our owner tag but no live grant
//! owns; `status` prints what the ledger says about the grants still holding resources. With
//! `[ledger] store = "dynamodb"` each works under the bridge group's lease (the `group`
//! module): `run` stands by until it holds it. This binary is the edge of the system: the only
//! place that reads the wall clock and the OS's randomness and hands them to the backend.
//!
//! This file parses the command line and builds what every subcommand shares (the clock, the
//! backend); each subcommand is a module of its own under `main/`.

#[path = "main/group.rs"]
mod group;
#[path = "main/ledger.rs"]
mod ledger;
#[path = "main/reap.rs"]
mod reap;
#[path = "main/run.rs"]
mod run;
#[path = "main/status.rs"]
mod status;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use aws_backend::sdk::SdkEc2;
use aws_backend::standby::Tenure;
use aws_backend::{AwsBackend, AwsBootConfig, BackendParts, DynStore, TestSwitches};
use backend_api::{Clock, Secret, TokioClock, UsageMetrics};
use clap::{Parser, Subcommand};
use rand::RngCore;
use usage_ledger::Ledger;

/// Runs compute grants on AWS EC2 (or on moto's EC2 server) and meters them.
#[derive(Debug, Parser)]
#[command(name = "aws-backend", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resume the grants the ledger shows unfinished (in the background), provision each grant
    /// of the file, watch it to its deadline, tear it down, and print its usage as one JSON line
    /// per grant on stdout. Returns once the file's grants and the resumed ones have all ended.
    /// Exits non-zero if any grant failed or recovery left a grant unfinished. With
    /// `[ledger] store = "dynamodb"`, first stands by until it holds the bridge group's ledger
    /// lease, and exits non-zero, naming why, if it loses it.
    Run {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The grants, one JSON object per line (see docs/grants-format.md); may be empty,
        /// to only resume the previous process's grants.
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
    },
    /// One reaper pass over every allowed region: list each resource carrying our owner tag that
    /// no live grant owns (older than `reaper_grace_ms`) as a JSON line, remove it unless
    /// `--dry-run`, end live grants past their deadline, and print a summary line. Takes the
    /// ledger's lock (in DynamoDB, the group's lease), so it cannot run while `run` does. Exits
    /// non-zero if anything failed.
    Reap {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// List the orphans only: remove nothing, end no grant, write nothing to the ledger.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print each grant the ledger shows still holding resources: phase, resources and the
    /// usage recorded so far, one JSON line per grant. Reads the ledger without locking it, so
    /// it works while `run` is running. In DynamoDB, a first line says who holds the lease.
    Status {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, grants } => run::run(&config, &grants).await,
            Command::Reap { config, dry_run } => reap::reap(&config, dry_run).await,
            Command::Status { config } => status::status(&config).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The wall clock, in unix milliseconds.
pub(crate) fn wall_clock_unix_ms() -> anyhow::Result<u64> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970: set it right")?;
    Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock, as the `Clock` handed to the backend and the lease.
pub(crate) fn wall_clock() -> anyhow::Result<Arc<dyn Clock>> {
    Ok(Arc::new(TokioClock::starting_at(wall_clock_unix_ms()?)))
}

/// The backend over the SDK, `ledger` and `key_seed`, with `clock` and the OS's randomness,
/// acting under `tenure` when its ledger is shared.
pub(crate) async fn open_backend(
    cfg: &AwsBootConfig,
    clock: Arc<dyn Clock>,
    ledger: Ledger<DynStore>,
    key_seed: Secret,
    tenure: Option<Arc<Tenure>>,
) -> anyhow::Result<AwsBackend> {
    let port = Arc::new(SdkEc2::new(cfg).await);
    let backend = AwsBackend::new(
        cfg,
        BackendParts {
            port,
            clock: clock.clone(),
            ledger,
            key_seed,
            jitter_seed: rand::rngs::OsRng.next_u64(),
            switches: TestSwitches::default(),
            tenure,
        },
    )
    .await?;
    Ok(backend)
}

/// Usage as printed in JSON lines, with its field names.
pub(crate) fn usage_json(usage: &UsageMetrics) -> serde_json::Value {
    serde_json::to_value(usage).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_parses() {
        let cli =
            Cli::try_parse_from(["aws-backend", "run", "--config", "c.toml", "--grants", "g.jsonl"]).expect("parses");
        assert!(matches!(cli.command, Command::Run { .. }));
        let cli = Cli::try_parse_from(["aws-backend", "status", "--config", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Status { .. }));
        assert!(Cli::try_parse_from(["aws-backend", "run", "--config", "c.toml"]).is_err());
        let cli = Cli::try_parse_from(["aws-backend", "reap", "--config", "c.toml", "--dry-run"]).expect("parses");
        assert!(matches!(cli.command, Command::Reap { dry_run: true, .. }));
        let cli = Cli::try_parse_from(["aws-backend", "reap", "--config", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Reap { dry_run: false, .. }));
        assert!(Cli::try_parse_from(["aws-backend", "reap", "--dry-run"]).is_err());
    }

    #[test]
    fn usage_prints_with_its_field_names() {
        let value =
            usage_json(&UsageMetrics { cpu_seconds: 1, ram_mib_seconds: 2, network_bytes: 3, storage_bytes: 4 });
        assert_eq!(value["cpu_seconds"], 1);
        assert_eq!(value["ram_mib_seconds"], 2);
        assert_eq!(value["network_bytes"], 3);
        assert_eq!(value["storage_bytes"], 4);
    }
}
