//! `run`: every grant of a grants file provisioned, watched to its deadline and torn down, one
//! JSON line of usage each, beside the recovery of the grants a previous process left and the
//! periodic reaper. The group mode ([`crate::group::run`]) runs the same work under the lease.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use aws_backend::{AwsBackend, AwsBootConfig, LedgerStore, RecoveryReport};
use backend_api::{
    AlmanacTick, Backend, Clock, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, RegionLabel, UsageMetrics,
};
use serde::Deserialize;
use serde_json::json;

use crate::ledger::{key_seed, open_ledger};
use crate::{group, open_backend, usage_json, wall_clock};

/// One line of the grants file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantLine {
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
pub(crate) async fn run(config: &Path, grants_path: &Path) -> anyhow::Result<bool> {
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
        LedgerStore::DynamoDb(ledger) => group::run(&cfg, &ledger, grants).await,
    }
}

/// The work of `run` once the backend is open: recovery in the background, every grant of the
/// file concurrently, the periodic reaper; true when all succeeded and recovery finished what it
/// resumed.
pub(crate) async fn run_grants(
    backend: &AwsBackend,
    clock: Arc<dyn Clock>,
    grants: Vec<GrantLine>,
) -> anyhow::Result<bool> {
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
}
