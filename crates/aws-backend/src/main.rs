//! `aws-backend`: the operator's command line for the AWS EC2 backend.
//!
//! `run` resumes the grants a previous process left unfinished, provisions every grant of a
//! grants file, watches each to its deadline, tears it down and prints its usage as a JSON line;
//! `reap` lists (and without `--dry-run` removes) what carries our owner tag but no live grant
//! owns; `status` prints what the ledger says about the grants still holding resources. With
//! `[ledger] store = "dynamodb"` each works under the bridge group's lease (the `group`
//! module): `run` stands by until it holds it. `check-config` checks a configuration, and with
//! `--aws` the account, before a run. This binary is the edge of the system: the only place
//! that reads the wall clock and the OS's randomness and hands them to the backend.
//!
//! This file parses the command line and builds what every subcommand shares (the clock, the
//! backend); each subcommand is a module of its own under `main/`.

#[path = "main/check.rs"]
mod check;
#[cfg(test)]
#[path = "main/docs_tests.rs"]
mod docs_tests;
#[path = "main/group.rs"]
mod group;
#[path = "main/ledger.rs"]
mod ledger;
#[path = "main/logs.rs"]
mod logs;
#[path = "main/reap.rs"]
mod reap;
#[path = "main/run.rs"]
mod run;
#[path = "main/status.rs"]
mod status;

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
use usage_ledger::{Ledger, NetworkStatus};

/// Runs compute grants on AWS EC2 (or on moto's EC2 server) and meters them.
#[derive(Debug, Parser)]
#[command(name = "aws-backend", version = aws_backend::version(), about)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` for a log pipeline (one
    /// object per line, with the fields of the spans it is in).
    #[arg(long, global = true, value_enum, default_value_t = logs::LogFormat::Text)]
    log_format: logs::LogFormat,
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
        /// `json`: one JSON object per line (the lease, each grant, a summary); `table`: a
        /// table for people.
        #[arg(long, value_enum, default_value_t = status::Output::Json)]
        output: status::Output,
    },
    /// Check a configuration before a run: print every problem of the file at once and exit 2,
    /// or a short summary. With `--aws`, also check the account as a run would use it, at the
    /// configured endpoint: credentials, each region, each subnet, each AMI alias, each
    /// family's offerings, and every mutating call's permission by EC2's DryRun (nothing is
    /// created); exits 5 when a check fails, naming what to fix.
    CheckConfig {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Also check the AWS account (or moto) the configuration points at.
        #[arg(long)]
        aws: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let succeeded = |ok: bool| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, grants } => run::run(&config, &grants).await.map(succeeded),
            Command::Reap { config, dry_run } => reap::reap(&config, dry_run).await.map(succeeded),
            Command::Status { config, output } => status::status(&config, output).await,
            Command::CheckConfig { config, aws } => check::check_config(&config, aws).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit_code_of(&err)
        }
    }
}

/// The exit code of a command that failed with `err`: 2 when the configuration is the cause
/// (see `check-config`), 1 otherwise.
fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|cause| cause.downcast_ref::<aws_backend::ConfigError>().is_some()) {
        ExitCode::from(check::EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
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

/// Usage as printed in JSON lines, with how final its network figure is
/// (`network_finality`: `complete`, `provisional` or `unknown`, see [`network_finality`]).
/// Every usage line should carry it: a bill read off a provisional figure may still grow.
pub(crate) fn usage_with_finality_json(usage: &UsageMetrics, network: NetworkStatus) -> serde_json::Value {
    let mut value = usage_json(usage);
    if let Some(object) = value.as_object_mut() {
        object.insert("network_finality".into(), network_finality(network).into());
    }
    value
}

/// How final a network figure is, as printed: `complete` (measured after CloudWatch's
/// publication lag, or nothing to measure), `provisional` (measured when the instance ended;
/// measured again as final after `network_final_after_s`) or `unknown` (CloudWatch has not
/// answered yet; billed as 0 until it does).
pub(crate) fn network_finality(network: NetworkStatus) -> &'static str {
    match network {
        NetworkStatus::Complete => "complete",
        NetworkStatus::Provisional => "provisional",
        NetworkStatus::Unknown => "unknown",
    }
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
        assert!(matches!(cli.command, Command::Status { output: status::Output::Json, .. }));
        assert_eq!(cli.log_format, logs::LogFormat::Text);
        let cli = Cli::try_parse_from([
            "aws-backend",
            "status",
            "--config",
            "c.toml",
            "--output",
            "table",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Status { output: status::Output::Table, .. }));
        assert_eq!(cli.log_format, logs::LogFormat::Json);
        let cli =
            Cli::try_parse_from(["aws-backend", "--log-format", "json", "check-config", "--config", "c.toml", "--aws"])
                .expect("parses");
        assert!(matches!(cli.command, Command::CheckConfig { aws: true, .. }));
        assert!(Cli::try_parse_from(["aws-backend", "--log-format", "xml", "status", "--config", "c.toml"]).is_err());
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
        let value = usage_with_finality_json(
            &UsageMetrics { cpu_seconds: 1, ram_mib_seconds: 2, network_bytes: 3, storage_bytes: 4 },
            NetworkStatus::Provisional,
        );
        assert_eq!(value["network_bytes"], 3);
        assert_eq!(value["network_finality"], "provisional");
    }

    #[test]
    fn a_configuration_error_exits_2_and_anything_else_1() {
        let config = aws_backend::AwsBootConfig::from_toml("regions = 1").expect_err("refused");
        let err = anyhow::Error::new(config).context("loading");
        assert_eq!(exit_code_of(&err), ExitCode::from(2));
        assert_eq!(exit_code_of(&anyhow::anyhow!("the ledger is locked")), ExitCode::FAILURE);
    }
}
