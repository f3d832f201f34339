//! `run`: every grant of a grants file provisioned, watched to its deadline and torn down, one
//! JSON line of usage each. `run` is a client of the bridge runtime (`crate::host`), which
//! recovers the grants a previous process left, reaps, keeps the group's lease and drains;
//! `run` only sends the file's grants through it, as compute-bridge would, then waits for
//! recovery and for the final network measurements, and drains it.

use std::future::Future;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use aws_backend::AwsBootConfig;
use aws_backend::bridge::{Bridge, Stopped};
use backend_api::{Almanac, Backend, Clock, UsageMetrics};
use serde_json::json;

use crate::exit::Exit;
use crate::grants::{GrantLine, read_grants};
use crate::host::{self, Hosted};
use crate::usage_with_finality_json;

/// How long, past `network_final_after_s`, `run` waits for the final network measurements
/// before it leaves them to the next process: CloudWatch's retries (the backend's own schedule)
/// fit in it many times over.
const NETWORK_WAIT_SLACK_MS: u64 = 5 * 60_000;

/// `run`: the file's grants through the bridge, concurrently; [`Exit::Done`] when all
/// succeeded and recovery finished what it resumed, [`Exit::Failed`] otherwise, or how the
/// bridge ended when it ended first (a signal's drain, the lease lost).
pub(crate) async fn run(config: &Path, grants_path: &Path, wait_network: bool) -> anyhow::Result<Exit> {
    let cfg = AwsBootConfig::load(config)?;
    // Only `run` and `serve` open anything (each grant's security group), so only they warn
    // about what they would open; `reap` and `status` would repeat it to no purpose.
    for warning in cfg.warnings() {
        tracing::warn!(config = %config.display(), "{warning}");
    }
    let grants = read_grants(grants_path).context(Exit::Config)?;
    if grants.is_empty() {
        tracing::info!(path = %grants_path.display(), "the grants file holds no grants: only resuming unfinished ones");
    }
    let mut hosted = host::start(&cfg).await?;
    let _signals = host::drain_on_signals(hosted.bridge.clone())?;
    if let Err(stopped) = hosted.admitting().await {
        return Ok(Exit::of_stopped(&stopped));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for line in grants {
        let (bridge, clock, almanac) = (hosted.bridge.clone(), hosted.clock.clone(), cfg.almanac);
        tasks.spawn(async move {
            let id = line.id;
            match run_grant(&bridge, clock.as_ref(), almanac, line).await {
                Ok((instance_id, usage)) => {
                    // Printed when the grant ends: its network figure is provisional until
                    // CloudWatch's lag has passed, and the line says so.
                    let network = bridge
                        .backend()
                        .and_then(|b| b.grant_state(&id))
                        .map_or(usage_ledger::NetworkStatus::Unknown, |s| s.network_status());
                    json!({
                        "grant": id.to_hex(),
                        "instance_id": instance_id,
                        "usage": usage_with_finality_json(&usage, network),
                    })
                }
                Err(err) => {
                    tracing::error!(grant = %id.short(), error = %format!("{err:#}"), "grant failed");
                    json!({ "grant": id.to_hex(), "error": format!("{err:#}") })
                }
            }
        });
    }
    let mut all_ok = true;
    let printed = until_stopped(&mut hosted, async {
        while let Some(joined) = tasks.join_next().await {
            let line = joined.context("a grant's task panicked")?;
            all_ok &= line.get("error").is_none();
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}").context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
        anyhow::Ok(())
    })
    .await;
    match printed {
        Err(stopped) => {
            // Drained by a signal, or the lease was lost: what the file's grants left is the
            // next process's (its recovery), as after a crash.
            let left = tasks.len();
            tasks.abort_all();
            if left > 0 {
                tracing::warn!(
                    grants = left,
                    "stopping with grants of the file unfinished: the next process recovers them"
                );
            }
            return Ok(Exit::of_stopped(&stopped));
        }
        Ok(printed) => printed?,
    }
    let mut recovered = hosted.recovered.clone();
    let recovered =
        match until_stopped(&mut hosted, async { recovered.wait_for(Option::is_some).await.ok().and_then(|r| *r) })
            .await
        {
            Ok(recovered) => recovered.unwrap_or(false),
            Err(stopped) => return Ok(Exit::of_stopped(&stopped)),
        };
    if wait_network {
        let bound_ms = cfg.network_final_after_ms().saturating_add(NETWORK_WAIT_SLACK_MS);
        let backend = hosted.backend();
        if let Err(stopped) = until_stopped(&mut hosted, wait_for_network(backend, bound_ms)).await {
            return Ok(Exit::of_stopped(&stopped));
        }
    } else {
        let pending = hosted.backend().map_or(0, |b| b.network_pending());
        if pending > 0 {
            tracing::info!(
                pending,
                "--no-wait-network: leaving the final network measurements to the next process's recovery"
            );
        }
    }
    hosted.bridge.drain();
    let stopped = hosted.stopped().await;
    Ok(match Exit::of_stopped(&stopped) {
        Exit::Done if all_ok && recovered => Exit::Done,
        Exit::Done => Exit::Failed,
        exit => exit,
    })
}

/// Runs `work` until it ends, or until the bridge's run ends first (`Err`, how).
async fn until_stopped<T>(hosted: &mut Hosted, work: impl Future<Output = T>) -> Result<T, Stopped> {
    tokio::select! {
        out = work => Ok(out),
        joined = &mut hosted.run => Err(joined.unwrap_or_else(|err| {
            Stopped::Failed(anyhow::anyhow!("the bridge's task panicked: {err}").context(Exit::Failed))
        })),
    }
}

/// Waits until no network figure waits for its final measurement, for at most `bound_ms`, and
/// says in the log what it leaves to the next process.
async fn wait_for_network(backend: Option<aws_backend::AwsBackend>, bound_ms: u64) {
    let Some(backend) = backend else { return };
    let pending = backend.network_pending();
    if pending == 0 {
        return;
    }
    tracing::info!(
        pending,
        bound_s = bound_ms / 1_000,
        "waiting for the final network measurements (network_final_after_s after each instance ended); \
         --no-wait-network leaves them to the next process's recovery"
    );
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let pending = backend.network_pending();
        if pending == 0 {
            tracing::info!("every network figure is final");
            return;
        }
        if started.elapsed().as_millis() >= u128::from(bound_ms) {
            tracing::warn!(
                pending,
                "gave up waiting for the final network measurements: the next process's recovery takes them"
            );
            return;
        }
    }
}

/// One grant's life through the bridge: wait for `valid_from`, provision, watch to `valid_to`,
/// terminate. The instance is terminated even when watching fails.
async fn run_grant(
    bridge: &Bridge,
    clock: &dyn Clock,
    almanac: Almanac,
    line: GrantLine,
) -> anyhow::Result<(String, UsageMetrics)> {
    let manifest = line.manifest();
    let grant = line.grant(&manifest);
    // The backend waits at most max_start_wait_s for valid_from; `run` holds a grant of the
    // file for as long as its start is away.
    let starts_at = almanac.tick_to_unix_ms(line.valid_from);
    if starts_at > clock.now_unix_ms() {
        tracing::info!(grant = %grant.id.short(), valid_from = line.valid_from.0, "waiting for the grant's first tick");
        clock.sleep_until_unix_ms(starts_at).await;
    }
    let instance = bridge.provision(&grant, &line.envelope()).await.context("provision")?;
    tracing::info!(
        grant = %grant.id.short(),
        region = %instance.region,
        instance_id = %instance.instance_id,
        public_dns = %instance.public_dns,
        "provisioned; watching until the deadline"
    );
    let watched = bridge.watch_until_exit(&instance, grant.valid_to).await.context("watch_until_exit");
    let terminated = bridge.terminate(&instance).await.context("terminate");
    let watched_usage = watched?;
    terminated?;
    // The settled figure is final; the watch's is the same unless teardown added to it.
    let usage = bridge.backend().and_then(|b| b.grant_state(&grant.id)).map_or(watched_usage, |s| s.usage());
    Ok((instance.instance_id, usage))
}
