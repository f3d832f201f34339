//! `aws-backend`: the operator's command line for the AWS EC2 backend.
//!
//! `run` resumes the grants a previous process left unfinished, provisions every grant of a
//! grants file, watches each to its deadline, tears it down and prints its usage as a JSON line;
//! `reap` lists (and without `--dry-run` removes) what carries our owner tag but no live grant
//! owns; `status` prints what the ledger says about the grants still holding resources. With
//! `[ledger] store = "dynamodb"` each works under the bridge group's lease (the `shared`
//! module): `run` stands by until it holds it. This binary is the edge of the system: the only
//! place that reads the wall clock and the OS's randomness and hands them to the backend.

#[path = "main/shared.rs"]
mod shared;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, ensure};
use aws_backend::sdk::SdkEc2;
use aws_backend::standby::Tenure;
use aws_backend::{
    AwsBackend, AwsBootConfig, BackendParts, DynStore, LedgerStore, ReapReport, RecoveryReport, TestSwitches,
};
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
            Command::Reap { config, dry_run } => reap(&config, dry_run).await,
            Command::Status { config } => status(&config).await.map(|()| true),
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
    match read_key_seed(&path) {
        Ok(seed) => Ok(seed),
        Err(err) if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let seed = Secret::new(hex::encode(bytes));
            bytes.fill(0);
            write_private_file(&path, seed.expose())
                .with_context(|| format!("creating key seed file {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new backend key seed");
            Ok(seed)
        }
        Err(err) => Err(err),
    }
}

/// Reads and checks the key seed file at `path` (64 hex characters). A missing file is an
/// `std::io::Error` of kind `NotFound` (the caller decides whether to create one).
fn read_key_seed(path: &Path) -> anyhow::Result<Secret> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(err.into()),
        Err(err) => return Err(err).with_context(|| format!("reading key seed file {}", path.display())),
    };
    let seed = Secret::new(text.trim());
    let ok = seed.expose().len() == 64 && seed.expose().bytes().all(|b| b.is_ascii_hexdigit());
    ensure!(
        ok,
        "key seed file {} is not 64 hex characters: restore it from backup, or delete it only if no grant is live",
        path.display()
    );
    warn_if_readable_by_others(path);
    Ok(seed)
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

/// Every whole record of the ledger at `path`, read without locking or modifying it; a partial
/// last record (a write in progress, or a crash) is left out.
fn scan_ledger(path: &Path) -> anyhow::Result<Vec<usage_ledger::Record>> {
    let mut records = Vec::new();
    let outcome = usage_ledger::scan_file(path, |_, record, _| {
        records.push(record);
        Ok::<(), usage_ledger::StoreError>(())
    })
    .with_context(|| format!("reading ledger {}", path.display()))?;
    if outcome.torn_tail.is_some() {
        tracing::warn!(path = %path.display(), "the ledger ends in a partial record (a write in progress, or a crash)");
    }
    Ok(records)
}

/// A store that refuses every append: the home of a ledger read for a dry run, which must
/// write nothing. The reaper's dry run never appends; were it to, this makes it fail loudly
/// rather than write to a ledger another process holds.
struct RefuseAppends {
    path: PathBuf,
}

impl usage_ledger::EventStore for RefuseAppends {
    fn append(&mut self, _: &[usage_ledger::Record]) -> Result<(), usage_ledger::StoreError> {
        Err(usage_ledger::StoreError::Io {
            op: "append to (a dry run opened the ledger read-only)",
            path: self.path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        })
    }
}

/// The ledger as it stands, read without taking its lock (so while `run` holds it) into a
/// ledger that refuses appends. A missing file is an empty ledger.
fn read_ledger_without_lock(path: &Path) -> anyhow::Result<Ledger<DynStore>> {
    let store = DynStore(Box::new(RefuseAppends { path: path.to_path_buf() }));
    if !path.exists() {
        tracing::info!(path = %path.display(), "no ledger yet: every resource with our owner tag is an orphan");
        return Ok(Ledger::empty(store));
    }
    let records = scan_ledger(path)?;
    let count = records.len();
    let ledger = Ledger::open(store, records).with_context(|| format!("replaying ledger {}", path.display()))?;
    tracing::info!(path = %path.display(), records = count, "ledger read without its lock, for a dry run");
    Ok(ledger)
}

/// The wall clock, as the `Clock` handed to the backend and the lease.
fn wall_clock() -> anyhow::Result<Arc<dyn Clock>> {
    Ok(Arc::new(TokioClock::starting_at(wall_clock_unix_ms()?)))
}

/// The backend over the SDK, `ledger` and `key_seed`, with `clock` and the OS's randomness,
/// acting under `tenure` when its ledger is shared.
async fn open_backend(
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

/// Starts `recover()` in a task of its own. `recover()` lists the ledger's live grants when it is
/// called, so this must run before this process admits any grant of its own: a grant admitted a
/// moment earlier would be among them and, never yet seen running, be rolled back.
fn start_recovery(backend: &AwsBackend) -> tokio::task::JoinHandle<RecoveryReport> {
    tokio::spawn(backend.recover())
}

/// Logs what recovery did; true when it finished every grant it resumed.
fn log_recovery(joined: Result<RecoveryReport, tokio::task::JoinError>) -> bool {
    match joined {
        Ok(report) if report.failed.is_empty() => {
            if report.resumed > 0 {
                tracing::info!(resumed = report.resumed, "recovery finished every grant the previous process left");
            }
            true
        }
        Ok(report) => {
            for (grant, error) in &report.failed {
                tracing::error!(%grant, %error, "recovery could not finish this grant; the next start retries it");
            }
            tracing::error!(
                resumed = report.resumed,
                failed = report.failed.len(),
                "recovery left grants unfinished: see `aws-backend status`"
            );
            false
        }
        Err(err) => {
            tracing::error!(error = %err, "the recovery task panicked or was cancelled");
            false
        }
    }
}

/// `run`: recovery in the background, every grant of the file concurrently; true when all
/// succeeded and recovery finished what it resumed.
async fn run(config: &Path, grants_path: &Path) -> anyhow::Result<bool> {
    let cfg = AwsBootConfig::load(config)?;
    // Only `run` opens anything (each grant's security group), so only `run` warns about what
    // it would open; `reap` and `status` would repeat it to no purpose.
    for warning in cfg.warnings() {
        tracing::warn!(config = %config.display(), "{warning}");
    }
    let grants = read_grants(grants_path)?;
    if grants.is_empty() {
        tracing::info!(path = %grants_path.display(), "the grants file holds no grants: only resuming unfinished ones");
    }
    match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let ledger = open_ledger(&path)?;
            let key_seed = key_seed(&path)?;
            let clock = wall_clock()?;
            let backend = open_backend(&cfg, clock.clone(), ledger, key_seed, None).await?;
            run_grants(&backend, clock, grants).await
        }
        LedgerStore::DynamoDb(ledger) => shared::run(&cfg, &ledger, grants).await,
    }
}

/// The work of `run` once the backend is open: recovery in the background, every grant of the
/// file concurrently, the periodic reaper; true when all succeeded and recovery finished what it
/// resumed.
async fn run_grants(backend: &AwsBackend, clock: Arc<dyn Clock>, grants: Vec<GrantLine>) -> anyhow::Result<bool> {
    // Grants of a previous process are resumed alongside the new ones: a running one is watched
    // to its deadline, anything else is torn down. `run` waits for them before it exits.
    let recovery = start_recovery(backend);
    let reaper = start_reaper(backend, clock.clone());

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
    let recovered = log_recovery(recovery.await);
    reaper.abort();
    Ok(all_ok && recovered)
}

/// The periodic reaper of `run`: one pass every `reaper_grace_ms` (at least a minute), logging
/// what it removed. It stops when `run` ends.
fn start_reaper(backend: &AwsBackend, clock: Arc<dyn Clock>) -> tokio::task::JoinHandle<()> {
    let backend = backend.clone();
    let every_ms = backend.config().reaper_grace_ms.max(60_000);
    tokio::spawn(async move {
        loop {
            clock.sleep_ms(every_ms).await;
            let report = backend.reap(false).await;
            if report.removed > 0 || report.overdue_grants > 0 || !report.errors.is_empty() {
                tracing::warn!(
                    found = report.found.len(),
                    removed = report.removed,
                    overdue_grants = report.overdue_grants,
                    errors = ?report.errors,
                    "periodic reaper pass"
                );
            }
        }
    })
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

/// `reap`: one reaper pass; true when nothing failed.
///
/// A real pass opens the ledger as `run` does, locked, since it records each removal and may
/// tear down overdue grants. A dry run only reads it, without the lock, so it also works while
/// `run` is running and creates no file.
async fn reap(config: &Path, dry_run: bool) -> anyhow::Result<bool> {
    let cfg = AwsBootConfig::load(config)?;
    let report = match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let (ledger, key_seed) = if dry_run {
                // A dry run provisions nothing, so no key is ever derived from this seed.
                (read_ledger_without_lock(&path)?, Secret::new("unused by a dry run"))
            } else {
                (open_ledger(&path)?, key_seed(&path)?)
            };
            let backend = open_backend(&cfg, wall_clock()?, ledger, key_seed, None).await?;
            backend.reap(dry_run).await
        }
        LedgerStore::DynamoDb(ledger) => shared::reap(&cfg, &ledger, dry_run).await?,
    };
    let mut stdout = std::io::stdout().lock();
    for line in reap_lines(&report, dry_run) {
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    stdout.flush().context("writing to stdout")?;
    for error in &report.errors {
        tracing::error!(%error, "the reaper pass failed here; the next pass tries again");
    }
    if dry_run {
        tracing::info!(found = report.found.len(), "dry run: nothing was removed and the ledger was not written");
    }
    Ok(report.errors.is_empty())
}

/// The pass as JSON lines: one per orphan, then a summary.
///
/// The report counts removals but does not mark each orphan; an orphan counts as removed after
/// a real pass unless an error names its id (a security group found gone at deletion counts as
/// removed: it is gone).
fn reap_lines(report: &ReapReport, dry_run: bool) -> Vec<serde_json::Value> {
    let mut lines: Vec<serde_json::Value> = report
        .found
        .iter()
        .map(|orphan| {
            let failed = report.errors.iter().any(|e| e.contains(orphan.id.as_str()));
            json!({
                "region": orphan.region,
                "kind": orphan.kind,
                "id": orphan.id,
                "grant": orphan.grant,
                "reason": orphan.reason,
                "removed": !dry_run && !failed,
                "dry_run": dry_run,
            })
        })
        .collect();
    lines.push(json!({
        "found": report.found.len(),
        "removed": report.removed,
        "overdue_grants": report.overdue_grants,
        "errors": report.errors,
        "dry_run": dry_run,
    }));
    lines
}

/// `status`: the live grants of the ledger, read without taking its lock (or, in DynamoDB,
/// without its lease, after a line saying who holds the lease).
async fn status(config: &Path) -> anyhow::Result<()> {
    let cfg = AwsBootConfig::load(config)?;
    match cfg.ledger_store() {
        LedgerStore::File { path } => {
            if !path.exists() {
                tracing::info!(path = %path.display(), "no ledger yet: nothing has run");
                return Ok(());
            }
            let records = scan_ledger(&path)?;
            print_live_grants(&cfg, &records, &format!("ledger {}", path.display()))
        }
        LedgerStore::DynamoDb(ledger) => shared::status(&cfg, &ledger).await,
    }
}

/// Prints a JSON line for each grant of `records` still holding resources, and warns when some
/// are past their deadline. `source` names the ledger in errors.
fn print_live_grants(cfg: &AwsBootConfig, records: &[usage_ledger::Record], source: &str) -> anyhow::Result<()> {
    let grants = usage_ledger::fold(records).with_context(|| format!("replaying {source}"))?;
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
    // Past the guest's own power-off, nothing but a backend will end the grant's bookkeeping.
    let grace_ms = cfg.deadline_grace_ms();
    let now = wall_clock_unix_ms().unwrap_or(0);
    if grants.values().any(|s| !s.is_settled() && s.valid_to_unix_ms().saturating_add(grace_ms) < now) {
        tracing::warn!(
            "some live grants are past their deadline and its grace: if no `aws-backend run` is running, start one \
             (an empty grants file will do), whose recovery ends them, or run `aws-backend reap`, which tears down \
             overdue grants"
        );
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
        let cli = Cli::try_parse_from(["aws-backend", "reap", "--config", "c.toml", "--dry-run"]).expect("parses");
        assert!(matches!(cli.command, Command::Reap { dry_run: true, .. }));
        let cli = Cli::try_parse_from(["aws-backend", "reap", "--config", "c.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Reap { dry_run: false, .. }));
        assert!(Cli::try_parse_from(["aws-backend", "reap", "--dry-run"]).is_err());
    }

    #[test]
    fn a_dry_run_reads_a_ledger_another_process_holds_and_cannot_write_it() {
        let dir = std::env::temp_dir().join(format!("aws-backend-readonly-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ledger");
        let _ = std::fs::remove_file(&path);
        let empty = read_ledger_without_lock(&path).expect("a missing ledger reads as empty");
        assert_eq!(empty.grants().count(), 0);
        assert!(!path.exists(), "reading must not create the ledger");

        // Given a ledger held (and locked) by a running backend, with one reaped orphan in it.
        let (mut held, _) = Ledger::open_file(&path).expect("opened");
        let grant = GrantId([0xEF; 32]);
        let event = usage_ledger::Event::OrphanReaped {
            resource_kind: usage_ledger::ResourceKind::KeyPair,
            resource_id: "cb-ef".into(),
        };
        held.append(grant, 1, event.clone()).expect("appended");

        let mut read = read_ledger_without_lock(&path).expect("read while held");
        assert!(read.grant(&grant).is_some_and(|s| s.is_settled()), "the record was not replayed");
        let err = read.append(grant, 2, event).expect_err("a dry run's ledger refuses appends").to_string();
        assert!(err.contains("read-only"), "{err}");
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn orphan(kind: &'static str, id: &str) -> aws_backend::Orphan {
        aws_backend::Orphan {
            region: "us-east-1".into(),
            kind,
            id: id.into(),
            grant: Some("cd".repeat(32)),
            reason: "its grant is not in the ledger".into(),
        }
    }

    #[test]
    fn a_dry_run_prints_every_orphan_as_not_removed() {
        let report = ReapReport {
            found: vec![orphan("instance", "i-0abc"), orphan("key-pair", "cb-x"), orphan("security-group", "sg-1")],
            ..ReapReport::default()
        };
        let lines = reap_lines(&report, true);
        assert_eq!(lines.len(), 4, "three orphans and a summary: {lines:?}");
        for (line, id) in lines.iter().zip(["i-0abc", "cb-x", "sg-1"]) {
            assert_eq!(line["id"], id);
            assert_eq!(line["region"], "us-east-1");
            assert_eq!(line["grant"], "cd".repeat(32));
            assert_eq!(line["reason"], "its grant is not in the ledger");
            assert_eq!(line["removed"], false);
            assert_eq!(line["dry_run"], true);
        }
        assert_eq!(lines[0]["kind"], "instance");
        let summary = &lines[3];
        assert_eq!(summary["found"], 3);
        assert_eq!(summary["removed"], 0);
        assert_eq!(summary["overdue_grants"], 0);
        assert_eq!(summary["errors"], json!([]));
        assert_eq!(summary["dry_run"], true);
    }

    #[test]
    fn a_real_pass_marks_as_removed_only_what_no_error_names() {
        let report = ReapReport {
            found: vec![orphan("instance", "i-0abc"), orphan("security-group", "sg-1")],
            removed: 1,
            overdue_grants: 2,
            errors: vec![
                "DeleteSecurityGroup sg-1: DeleteSecurityGroup failed with DependencyViolation: in use".into(),
            ],
        };
        let lines = reap_lines(&report, false);
        assert_eq!(lines[0]["removed"], true);
        assert_eq!(lines[1]["removed"], false);
        let summary = &lines[2];
        assert_eq!(summary["found"], 2);
        assert_eq!(summary["removed"], 1);
        assert_eq!(summary["overdue_grants"], 2);
        assert_eq!(summary["errors"][0], report.errors[0]);
        assert_eq!(summary["dry_run"], false);
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
