//! `aws-backend`: the operator's command line for the AWS EC2 backend.
//!
//! `serve` runs the bridge runtime (`aws_backend::bridge::Bridge`) as a long-running service
//! with an HTTP/JSON API on a Unix socket, through which compute-bridge sends grants; `run`
//! sends the grants of a file through the same runtime, watches each to its deadline, tears it
//! down and prints its usage as a JSON line; `reap` lists (and without `--dry-run` removes)
//! what carries our owner tag but no live grant owns; `status` prints what the ledger says
//! about the grants still holding resources. With `[ledger] store = "dynamodb"` each works
//! under the bridge group's lease (the `group` module): `serve` and `run` stand by until they
//! hold it. `check-config` checks a configuration, and with `--aws` the account, before a
//! run. This binary is the edge of the system: the only place that reads the wall clock
//! and the OS's randomness and hands them to the backend.
//!
//! This file parses the command line and builds what every subcommand shares (the clock, the
//! backend); each subcommand is a module of its own under `main/`, the runtime's hosting is
//! `main/host.rs`, and the exit codes are `main/exit.rs`.

#[path = "main/api.rs"]
mod api;
#[path = "main/check.rs"]
mod check;
#[cfg(test)]
#[path = "main/docs_tests.rs"]
mod docs_tests;
#[path = "main/exit.rs"]
mod exit;
#[path = "main/grants.rs"]
mod grants;
#[path = "main/group.rs"]
mod group;
#[path = "main/health.rs"]
mod health;
#[path = "main/host.rs"]
mod host;
#[path = "main/ledger.rs"]
mod ledger;
#[path = "main/logs.rs"]
mod logs;
#[path = "main/reap.rs"]
mod reap;
#[path = "main/run.rs"]
mod run;
#[path = "main/serve.rs"]
mod serve;
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
use exit::Exit;
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
    /// Run the bridge as a service, taking grants over an HTTP/JSON API on a Unix socket.
    ///
    /// Recovers the grants the ledger shows unfinished, then takes grants over an HTTP/JSON
    /// API (POST /v1/grants, GET and DELETE /v1/grants/{id}, GET /v1/status; see
    /// docs/operations.md, "The service") on a Unix socket of mode 0600, watches each to its
    /// deadline and terminates it there, and reaps every reaper_grace_ms (at least a minute).
    /// With `[ledger] store = "dynamodb"`, first stands by until it holds the bridge group's
    /// ledger lease. SIGTERM or SIGINT drains (no new grants, provisions in flight finish within
    /// drain_s, the lease is released) and exits 0; a second one exits 5 at once; SIGHUP is
    /// ignored. Exit codes: 0 drained, 1 failure, 2 configuration, 3 lease lost, 4 ledger
    /// unusable, 5 interrupted.
    Serve {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The API's Unix socket. Default: $RUNTIME_DIRECTORY/aws-backend.sock when systemd
        /// gives a runtime directory, else <ledger_path>.sock with the file ledger; required
        /// otherwise.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also serve the API over TCP at this address (e.g. 127.0.0.1:8650). It has no
        /// authentication and its answers hold each grant's private key: bind it to loopback
        /// or a private network only.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Send the grants of a file through the bridge, and print each one's usage.
    ///
    /// Sends each grant of a file through the bridge (which first resumes, in the background,
    /// the grants the ledger shows unfinished), watches it to its deadline, tears it down, and
    /// prints its usage as one JSON line per grant on stdout. Returns once the file's grants and
    /// the resumed ones have all ended and, unless --no-wait-network, the final network
    /// measurements have been taken (at most network_final_after_s + 300 s). A batch: a
    /// supervisor should run `serve`, not this. With `[ledger] store = "dynamodb"`, first
    /// stands by until it holds the bridge group's ledger lease. SIGTERM or SIGINT drains as
    /// `serve` does and leaves the unfinished grants to the next process. Exit codes: 0 all
    /// grants ended well, 1 a grant failed or recovery left one unfinished, 2 configuration or
    /// grants file, 3 lease lost, 4 ledger unusable, 5 interrupted.
    Run {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The grants, one JSON object per line (see docs/grants-format.md); may be empty,
        /// to only resume the previous process's grants.
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
        /// Exit once the grants have ended, without waiting for their final network
        /// measurements (network_final_after_s after each instance ended): the next process's
        /// recovery takes them, and the log says how many were left.
        #[arg(long)]
        no_wait_network: bool,
    },
    /// One reaper pass: list, and remove, what carries our owner tag but no live grant owns.
    ///
    /// One reaper pass over every allowed region: list each resource carrying our owner tag that
    /// no live grant owns (older than `reaper_grace_ms`) as a JSON line, remove it unless
    /// `--dry-run`, end live grants past their deadline, and print a summary line. Takes the
    /// ledger's lock (in DynamoDB, the group's lease), so it cannot run while `serve` or `run`
    /// does. Exits 1 if anything failed (2 configuration, 3 lease lost, 4 ledger unusable).
    Reap {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// List the orphans only: remove nothing, end no grant, write nothing to the ledger.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the grants the ledger shows still holding resources.
    ///
    /// Prints each grant the ledger shows still holding resources: phase, resources and the
    /// usage recorded so far, one JSON line per grant. Reads the ledger without locking it, so
    /// it works while `serve` or `run` is running. In DynamoDB, a first line says who holds the
    /// lease.
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
    /// created); exits 6 when a check fails, naming what to fix.
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
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, socket, listen } => {
                serve::serve(&config, socket, listen).await.map(ExitCode::from)
            }
            Command::Run { config, grants, no_wait_network } => {
                run::run(&config, &grants, !no_wait_network).await.map(ExitCode::from)
            }
            Command::Reap { config, dry_run } => {
                reap::reap(&config, dry_run).await.map(|ok| if ok { Exit::Done } else { Exit::Failed }.into())
            }
            Command::Status { config, output } => status::status(&config, output).await,
            Command::CheckConfig { config, aws } => check::check_config(&config, aws).await,
        }
    });
    // Tasks still running (a grant's watch cut short by a drain) are dropped, not awaited.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            let exit = exit::classify(&err);
            eprintln!("error: {err:#}");
            exit.into()
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
        assert!(matches!(cli.command, Command::Run { no_wait_network: false, .. }));
        let cli = Cli::try_parse_from(["aws-backend", "run", "--config", "c", "--grants", "g", "--no-wait-network"])
            .expect("parses");
        assert!(matches!(cli.command, Command::Run { no_wait_network: true, .. }));
        let cli = Cli::try_parse_from(["aws-backend", "serve", "--config", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Serve { socket: None, listen: None, .. }));
        let cli = Cli::try_parse_from([
            "aws-backend",
            "serve",
            "--config",
            "c.toml",
            "--socket",
            "/run/a.sock",
            "--listen",
            "127.0.0.1:8650",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Serve { socket: Some(_), listen: Some(_), .. }));
        assert!(Cli::try_parse_from(["aws-backend", "serve", "--config", "c", "--listen", "nowhere"]).is_err());
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
        assert_eq!(exit::classify(&err), Exit::Config);
        assert_eq!(exit::classify(&anyhow::anyhow!("the ledger is locked")), Exit::Failed);
    }
}
