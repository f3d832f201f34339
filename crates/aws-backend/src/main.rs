//! `aws-backend`: the operator's command line for the AWS EC2 backend.
//!
//! `run` provisions every grant of a grants file, watches each to its deadline, tears it down
//! and prints its usage as a JSON line; `status` prints what the ledger says about the grants
//! still holding resources. This binary is the edge of the system: the only place that reads
//! the wall clock and the OS's randomness and hands them to the backend.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, ensure};
use aws_backend::sdk::SdkEc2;
use aws_backend::{AwsBackend, AwsBootConfig, BackendParts, DynStore, TestSwitches};
use backend_api::{
    AlmanacTick, Backend, Clock, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, RegionLabel, Secret,
    TokioClock, UsageMetrics,
};
use clap::{Parser, Subcommand};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use usage_ledger::{FileStore, Ledger};

/// Runs compute grants on AWS EC2 (or on moto's EC2 server) and meters them.
#[derive(Debug, Parser)]
#[command(name = "aws-backend", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision each grant, watch it to its deadline, tear it down, and print its usage as
    /// one JSON line per grant on stdout. Exits non-zero if any grant failed.
    Run {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The grants, one JSON object per line (see docs/grants-format.md).
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
    },
    /// Print each grant the ledger shows still holding resources: phase, resources and the
    /// usage recorded so far, one JSON line per grant. Reads the ledger without locking it, so
    /// it works while `run` is running.
    Status {
        /// The backend configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// One line of the grants file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantLine {
    id: GrantId,
    cpu_millicores: u32,
    ram_mib: u32,
    storage_gib: u32,
    tdx_required: bool,
    image_post_hash: ImageHash,
    valid_from: AlmanacTick,
    valid_to: AlmanacTick,
    #[serde(default)]
    region: Option<RegionLabel>,
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
            Command::Run { config, grants } => run(&config, &grants).await,
            Command::Status { config } => status(&config).map(|()| true),
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
fn wall_clock_unix_ms() -> anyhow::Result<u64> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970: set it right")?;
    Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// Reads and checks the whole grants file before anything is created: a bad line refuses the
/// run, naming the line.
fn read_grants(path: &Path) -> anyhow::Result<Vec<GrantLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading grants file {}", path.display()))?;
    let mut grants: Vec<GrantLine> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let grant: GrantLine = serde_json::from_str(line).with_context(|| {
            format!("grants file {} line {number}: not a grant (see docs/grants-format.md)", path.display())
        })?;
        ensure!(
            grant.valid_from <= grant.valid_to,
            "grants file {} line {number}: valid_from {} is after valid_to {}",
            path.display(),
            grant.valid_from.0,
            grant.valid_to.0
        );
        ensure!(
            !grants.iter().any(|g| g.id == grant.id),
            "grants file {} line {number}: grant {} appears twice; a grant provisions once",
            path.display(),
            grant.id
        );
        grants.push(grant);
    }
    Ok(grants)
}

/// The backend's key seed, kept next to the ledger at `<ledger_path>.keyseed`: 32 bytes from the
/// OS's randomness in hex, created with mode 0600 on first use. Every per-grant SSH key derives
/// from it, so a restarted backend re-derives the same keys; losing it only matters for grants
/// still running.
fn key_seed(ledger_path: &Path) -> anyhow::Result<Secret> {
    let mut name = ledger_path.as_os_str().to_owned();
    name.push(".keyseed");
    let path = PathBuf::from(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let seed = Secret::new(text.trim());
            let ok = seed.expose().len() == 64 && seed.expose().bytes().all(|b| b.is_ascii_hexdigit());
            ensure!(
                ok,
                "key seed file {} is not 64 hex characters: restore it from backup, or delete it only if no grant is live",
                path.display()
            );
            warn_if_readable_by_others(&path);
            Ok(seed)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let seed = Secret::new(hex::encode(bytes));
            bytes.fill(0);
            write_private_file(&path, seed.expose())
                .with_context(|| format!("creating key seed file {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new backend key seed");
            Ok(seed)
        }
        Err(err) => Err(err).with_context(|| format!("reading key seed file {}", path.display())),
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the key seed file is readable by others: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Opens the file ledger, reporting (and having truncated) a torn tail.
fn open_ledger(path: &Path) -> anyhow::Result<Ledger<DynStore>> {
    let (store, report) = FileStore::open(path).with_context(|| format!("opening ledger {}", path.display()))?;
    if let Some(torn) = report.torn_tail {
        tracing::warn!(
            path = %path.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            "the ledger ended in a partial record (a crash during a write); it was truncated"
        );
    }
    let records = report.records.len();
    let ledger = Ledger::open(DynStore(Box::new(store)), report.records)
        .with_context(|| format!("replaying ledger {}", path.display()))?;
    tracing::info!(path = %path.display(), records, "ledger opened");
    Ok(ledger)
}

fn usage_json(usage: &UsageMetrics) -> serde_json::Value {
    serde_json::to_value(usage).unwrap_or(serde_json::Value::Null)
}

/// `run`: every grant concurrently; true when all succeeded.
async fn run(config: &Path, grants_path: &Path) -> anyhow::Result<bool> {
    let cfg = AwsBootConfig::load(config)?;
    let grants = read_grants(grants_path)?;
    if grants.is_empty() {
        tracing::warn!(path = %grants_path.display(), "the grants file holds no grants");
        return Ok(true);
    }
    let ledger = open_ledger(&cfg.ledger_path)?;
    let key_seed = key_seed(&cfg.ledger_path)?;
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(wall_clock_unix_ms()?));
    let port = Arc::new(SdkEc2::new(&cfg).await);
    let backend = AwsBackend::new(
        &cfg,
        BackendParts {
            port,
            clock: clock.clone(),
            ledger,
            key_seed,
            jitter_seed: rand::rngs::OsRng.next_u64(),
            switches: TestSwitches::default(),
        },
    )
    .await?;

    let mut tasks = tokio::task::JoinSet::new();
    for grant in grants {
        let backend = backend.clone();
        let clock = clock.clone();
        tasks.spawn(async move {
            let id = grant.id;
            match run_grant(&backend, clock.as_ref(), grant).await {
                Ok((instance_id, usage)) => {
                    json!({ "grant": id.to_hex(), "instance_id": instance_id, "usage": usage_json(&usage) })
                }
                Err(err) => {
                    tracing::error!(grant = %id.short(), error = %format!("{err:#}"), "grant failed");
                    json!({ "grant": id.to_hex(), "error": format!("{err:#}") })
                }
            }
        });
    }
    let mut all_ok = true;
    while let Some(joined) = tasks.join_next().await {
        let line = joined.context("a grant's task panicked")?;
        all_ok &= line.get("error").is_none();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    Ok(all_ok)
}

/// One grant's life: wait for `valid_from`, provision, watch to `valid_to`, terminate. The
/// instance is terminated even when watching fails.
async fn run_grant(backend: &AwsBackend, clock: &dyn Clock, line: GrantLine) -> anyhow::Result<(String, UsageMetrics)> {
    let manifest = ComputeManifest {
        cpu_millicores: line.cpu_millicores,
        ram_mib: line.ram_mib,
        storage_gib: line.storage_gib,
        tdx_required: line.tdx_required,
        image_post_hash: line.image_post_hash,
    };
    let grant = ComputeGrant { id: line.id, manifest: &manifest, valid_from: line.valid_from, valid_to: line.valid_to };
    let starts_at = backend.config().almanac.tick_to_unix_ms(line.valid_from);
    if starts_at > clock.now_unix_ms() {
        tracing::info!(grant = %grant.id.short(), valid_from = line.valid_from.0, "waiting for the grant's first tick");
        clock.sleep_until_unix_ms(starts_at).await;
    }
    let envelope = Envelope { region: line.region };
    let instance = backend.provision(&grant, &envelope).await.context("provision")?;
    tracing::info!(
        grant = %grant.id.short(),
        region = %instance.region,
        instance_id = %instance.instance_id,
        public_dns = %instance.public_dns,
        "provisioned; watching until the deadline"
    );
    let watched = backend.watch_until_exit(&instance, grant.valid_to).await.context("watch_until_exit");
    let terminated = backend.terminate(&instance).await.context("terminate");
    let watched_usage = watched?;
    terminated?;
    // The settled figure is final; the watch's is the same unless teardown added to it.
    let usage = backend.grant_state(&grant.id).map_or(watched_usage, |s| s.usage());
    Ok((instance.instance_id, usage))
}

/// `status`: the live grants of the ledger, read without taking its lock.
fn status(config: &Path) -> anyhow::Result<()> {
    let cfg = AwsBootConfig::load(config)?;
    let path = &cfg.ledger_path;
    if !path.exists() {
        tracing::info!(path = %path.display(), "no ledger yet: nothing has run");
        return Ok(());
    }
    let mut records = Vec::new();
    let outcome = usage_ledger::scan_file(path, |_, record, _| {
        records.push(record);
        Ok::<(), usage_ledger::StoreError>(())
    })
    .with_context(|| format!("reading ledger {}", path.display()))?;
    if outcome.torn_tail.is_some() {
        tracing::warn!(path = %path.display(), "the ledger ends in a partial record (a write in progress, or a crash)");
    }
    let grants = usage_ledger::fold(&records).with_context(|| format!("replaying ledger {}", path.display()))?;
    let mut stdout = std::io::stdout().lock();
    for (id, state) in grants.iter().filter(|(_, s)| !s.is_settled()) {
        let resources: Vec<_> =
            state.held_resources().into_iter().map(|(kind, id)| json!({ "kind": kind, "id": id })).collect();
        let line = json!({
            "grant": id.to_hex(),
            "phase": state.phase(),
            "region": state.region(),
            "instance_type": state.instance_type(),
            "instance_id": state.instance(),
            "last_state": state.last_state(),
            "termination": state.termination(),
            "valid_to": state.valid_to().0,
            "valid_to_unix_ms": state.valid_to_unix_ms(),
            "launch_pending": state.launch_requested().is_some() && state.instance().is_none(),
            "resources": resources,
            "usage": usage_json(&state.usage()),
        });
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    if grants.values().any(|s| !s.is_settled() && s.valid_to_unix_ms() < wall_clock_unix_ms().unwrap_or(0)) {
        tracing::warn!("some live grants are past their deadline: run the backend again so recovery ends them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_lines_parse_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("aws-backend-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("grants.jsonl");
        let good = format!(
            r#"{{"id":"{}","cpu_millicores":1500,"ram_mib":2048,"storage_gib":8,"tdx_required":false,"image_post_hash":"{}","valid_from":10,"valid_to":20,"region":"us-east-1"}}"#,
            "ab".repeat(32),
            "5a".repeat(32)
        );
        std::fs::write(&path, format!("{good}\n\n")).expect("write");
        let grants = read_grants(&path).expect("one good line");
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].valid_to, AlmanacTick(20));
        assert_eq!(grants[0].region.as_ref().map(RegionLabel::as_str), Some("us-east-1"));

        std::fs::write(&path, format!("{good}\n{good}\n")).expect("write");
        let err = format!("{:#}", read_grants(&path).expect_err("duplicate"));
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");

        std::fs::write(&path, format!("{good}\n{}\n", good.replace("\"cpu_millicores\"", "\"cpu\""))).expect("write");
        let err = format!("{:#}", read_grants(&path).expect_err("unknown field"));
        assert!(err.contains("line 2") && err.contains("cpu"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_seed_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("aws-backend-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ledger = dir.join("ledger");
        let first = key_seed(&ledger).expect("created");
        let again = key_seed(&ledger).expect("read back");
        assert_eq!(first.expose(), again.expose());
        assert_eq!(first.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("ledger.keyseed")).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join("ledger.keyseed"), "short").expect("write");
        let err = key_seed(&ledger).expect_err("malformed").to_string();
        assert!(err.contains("64 hex"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cli_parses() {
        let cli =
            Cli::try_parse_from(["aws-backend", "run", "--config", "c.toml", "--grants", "g.jsonl"]).expect("parses");
        assert!(matches!(cli.command, Command::Run { .. }));
        let cli = Cli::try_parse_from(["aws-backend", "status", "--config", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Status { .. }));
        assert!(Cli::try_parse_from(["aws-backend", "run", "--config", "c.toml"]).is_err());
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
