//! The group mode (`[ledger] store = "dynamodb"`): what `serve` and `run` hand the bridge
//! runtime to stand by for the group's lease ([`ledgers`]), and `status` and `reap` with the
//! group's table. Every bridge of the group runs `aws-backend serve`; one holds the group's
//! lease and acts, the others stand by until it stops renewing or releases it, then one of
//! them replays the table, recovers what the last holder left and carries on (see
//! `aws_backend::bridge`, `aws_backend::standby` and docs/operations.md, "Running a standby").

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use aws_backend::bridge::Ledgers;
use aws_backend::sdk::DynamoLeases;
use aws_backend::standby::{Holding, LeaseTable, LeaseTimes, renewing, replay_under};
use aws_backend::{AwsBackend, AwsBootConfig, DynStore, DynamoLedger, ReapReport};
use backend_api::{Clock, Secret};
use serde_json::json;
use usage_ledger::{Lease, LeaseError, LeaseInfo};

use crate::exit::Exit;
use crate::ledger::{RefuseAppends, read_key_seed};
use crate::status::print_live_grants;
use crate::{open_backend, wall_clock};

/// What `run` and `serve` need to stand by for the group's lease: the lease table (whose
/// ledger the bridge replays once it holds the lease), this process's name as a holder, the
/// lease's timings, and the group's key seed. The bridge runtime does the rest (see
/// `crate::host`).
pub(crate) async fn ledgers(
    cfg: &AwsBootConfig,
    ledger: &DynamoLedger,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(Ledgers, Secret)> {
    // Read before standing by: a bridge without the group's seed must not wait for hours and
    // then fail.
    let key_seed = shared_key_seed(ledger)?;
    let leases = DynamoLeases::connect(cfg, ledger, clock.clone()).await;
    let times = LeaseTimes::for_duration(ledger.lease_ms);
    let holder = holder_name(clock.now_unix_ms());
    tracing::info!(
        group = %ledger.group,
        table = %ledger.table,
        holder = %holder,
        lease_ms = ledger.lease_ms,
        "asking for the ledger lease of the bridge group; standing by while another bridge holds it"
    );
    Ok((Ledgers::Group { table: Arc::new(leases), holder, times }, key_seed))
}

/// `reap` (see [`crate::reap::reap`]): a dry run reads the table without the lease; a real pass
/// writes the ledger, so it takes the lease first, and is refused while a bridge of the group
/// holds it.
pub(crate) async fn reap(cfg: &AwsBootConfig, ledger: &DynamoLedger, dry_run: bool) -> anyhow::Result<ReapReport> {
    let clock = wall_clock()?;
    let leases = DynamoLeases::connect(cfg, ledger, clock.clone()).await;
    if dry_run {
        let refuse = DynStore(Box::new(RefuseAppends { path: table_label(ledger) }));
        let books = leases.read_ledger(refuse).await.with_context(|| format!("replaying {}", ledger_label(ledger)))?;
        tracing::info!(records = books.record_count(), "ledger read without its lease, for a dry run");
        // A dry run provisions nothing, so no key is ever derived from this seed.
        let backend = open_backend(cfg, clock, books, Secret::new("unused by a dry run"), None).await?;
        return Ok(backend.reap(true).await);
    }
    let key_seed = shared_key_seed(ledger)?;
    let times = LeaseTimes::for_duration(ledger.lease_ms);
    let holder = holder_name(clock.now_unix_ms());
    let lease = match leases.acquire(&holder, times.duration_ms).await {
        Ok(lease) => lease,
        Err(LeaseError::Held { held, now_unix_ms, .. }) => bail!(
            "the ledger lease of bridge group {} is held by {} (epoch {}, until unix ms {}, now {now_unix_ms}), and a real \
             reap writes the ledger, so it needs the lease: that bridge already reaps every reaper_grace_ms while it runs, \
             so run `aws-backend reap` on it only when it has stopped, or wait until no bridge of the group holds the \
             lease; `aws-backend reap --dry-run` lists the orphans now",
            ledger.group,
            held.holder,
            held.epoch,
            held.expires_unix_ms
        ),
        Err(err) => {
            return Err(anyhow::Error::new(err).context(format!("taking the lease of {}", ledger_label(ledger))));
        }
    };
    let holding = replay_under(&leases, lease, &times, clock.as_ref())
        .await
        .with_context(|| format!("replaying {}", ledger_label(ledger)))?;
    let (backend, lease) = start_holding(cfg, &leases, clock, holding, key_seed, &times).await?;
    hold_while(&backend, &leases, lease, &times, async { Ok(backend.reap(false).await) }).await
}

/// `status`: a line saying who holds the lease, then the live grants, all read without the
/// lease.
pub(crate) async fn status(cfg: &AwsBootConfig, ledger: &DynamoLedger) -> anyhow::Result<()> {
    use std::io::Write as _;
    let clock = wall_clock()?;
    let leases = DynamoLeases::connect(cfg, ledger, clock.clone()).await;
    let held = leases.holder().await.with_context(|| format!("reading the lease of {}", ledger_label(ledger)))?;
    let line = lease_line(&ledger.group, held.as_ref(), clock.now_unix_ms());
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    let records = leases.records().await.with_context(|| format!("reading {}", ledger_label(ledger)))?;
    let records: Vec<_> = records.into_iter().map(|(record, _)| record).collect();
    print_live_grants(cfg, &records, &ledger_label(ledger))
}

/// The lease as `status` prints it: `{"lease": {group, holder, epoch, expires_unix_ms,
/// expired}}`, `expired` by this machine's clock (`now_unix_ms`); a holder of `null` when no
/// bridge has ever held it.
fn lease_line(group: &str, held: Option<&LeaseInfo>, now_unix_ms: u64) -> serde_json::Value {
    let lease = match held {
        Some(held) => json!({
            "group": group,
            "holder": held.holder,
            "epoch": held.epoch,
            "expires_unix_ms": held.expires_unix_ms,
            "expired": held.expires_unix_ms <= now_unix_ms,
        }),
        None => json!({ "group": group, "holder": null, "epoch": null, "expires_unix_ms": null, "expired": true }),
    };
    json!({ "lease": lease })
}

/// Builds the backend that acts under `holding`'s lease, renewing the lease meanwhile: start-up
/// asks EC2 for each region's instance types and subnets, paced, which may outlast the lease.
/// Returns the backend and the lease as last renewed, for [`hold_while`]. Releases the lease
/// when the backend cannot start; fails naming why when the lease is lost first.
async fn start_holding(
    cfg: &AwsBootConfig,
    leases: &DynamoLeases,
    clock: Arc<dyn Clock>,
    holding: Holding,
    key_seed: Secret,
    times: &LeaseTimes,
) -> anyhow::Result<(AwsBackend, Lease)> {
    let Holding { mut lease, tenure, ledger: books, .. } = holding;
    let opened = open_backend(cfg, clock.clone(), books, key_seed, Some(tenure.clone()));
    match renewing(leases, &mut lease, &tenure, times, clock.as_ref(), opened).await {
        Ok(Ok(backend)) => Ok((backend, lease)),
        Ok(Err(err)) => {
            release(leases, lease).await;
            Err(err)
        }
        Err(why) => Err(lost(&lease, &why)),
    }
}

/// The error of a bridge that lost its lease (epoch of `lease`) for `why`.
fn lost(lease: &Lease, why: &str) -> anyhow::Error {
    anyhow!(
        "lost the ledger lease of bridge group {} (epoch {}): {why}; this bridge stopped acting, and the next holder's \
         recovery finishes its grants: start it again to stand by",
        lease.group,
        lease.epoch
    )
    .context(Exit::LeaseLost)
}

/// Runs `work` while renewing `lease`. When `work` ends, the backend's own tasks stop and the
/// lease is released, so a standby takes over at once. When the lease is lost first (fenced, or
/// not renewed in time), `work` is dropped and the error names why.
async fn hold_while<T>(
    backend: &AwsBackend,
    leases: &DynamoLeases,
    lease: Lease,
    times: &LeaseTimes,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let kept = lease.clone();
    tokio::select! {
        out = work => {
            backend.shutdown();
            // Work that ended because the lease was lost (a fenced append stops the backend)
            // is reported as that.
            if let Some(why) = backend.lease_lost() {
                return Err(lost(&kept, &why));
            }
            release(leases, kept).await;
            out
        }
        why = backend.keep_lease(leases, lease, times) => Err(lost(&kept, &why)),
    }
}

/// Gives the lease up so that a standby takes over at once; a failure only makes it wait for
/// the expiry.
async fn release(leases: &DynamoLeases, lease: Lease) {
    let epoch = lease.epoch;
    match leases.release(lease).await {
        Ok(()) => {
            tracing::info!(group = leases.group(), epoch, "released the ledger lease: a standby may take over at once")
        }
        Err(err) => tracing::warn!(
            group = leases.group(),
            epoch,
            error = %err,
            "could not release the ledger lease: a standby takes over when it expires"
        ),
    }
}

/// The group's key seed. Unlike the file store's it is never created here: every bridge of the
/// group must hold the same one (a grant's keys derive from it, and any bridge may finish any
/// grant), so a bridge that made its own would strand the grants of the others.
fn shared_key_seed(ledger: &DynamoLedger) -> anyhow::Result<Secret> {
    let path = &ledger.key_seed_path;
    read_key_seed(path).map_err(|err| {
        if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            // The operator's to fix on this machine: restarting cannot help.
            anyhow!(
                "key seed file {} (ledger.key_seed_path) does not exist: every bridge of group {} needs the same seed, so \
                 copy it from another bridge of the group; for a new group, create it once (umask 077; openssl rand -hex \
                 32 > {}) and copy it to every bridge (docs/operations.md, \"Running a standby\")",
                path.display(),
                ledger.group,
                path.display()
            )
            .context(Exit::Config)
        } else {
            err.context(Exit::LedgerUnusable)
        }
    })
}

/// This process's name as a lease holder, unique per process: the host name (`/etc/hostname`,
/// else `$HOSTNAME`), the process id and the start time.
fn holder_name(started_unix_ms: u64) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    holder_name_of(&host, std::process::id(), started_unix_ms)
}

/// [`holder_name`] from its parts, kept to what a lease takes (printable, no spaces, short).
fn holder_name_of(host: &str, pid: u32, started_unix_ms: u64) -> String {
    let host: String = host.chars().filter(|c| !c.is_control() && !c.is_whitespace()).take(64).collect();
    let host = if host.is_empty() { "unknown-host".to_string() } else { host };
    format!("{host}/pid-{pid}/{started_unix_ms}/aws-backend-{}", aws_backend::version())
}

fn ledger_label(ledger: &DynamoLedger) -> String {
    format!("the ledger in DynamoDB table {} (region {})", ledger.table, ledger.region)
}

fn table_label(ledger: &DynamoLedger) -> PathBuf {
    Path::new("dynamodb-table").join(&ledger.table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_name_is_unique_per_process_and_usable_as_a_lease_name() {
        let name = holder_name_of("bridge-a.example\n", 4242, 1_800_000_000_123);
        assert_eq!(name, format!("bridge-a.example/pid-4242/1800000000123/aws-backend-{}", aws_backend::version()));
        assert!(usage_ledger::check_lease_name("holder", &name).is_ok());
        let odd = holder_name_of(&format!("my host\t{}", "x".repeat(200)), 1, 2);
        assert!(usage_ledger::check_lease_name("holder", &odd).is_ok(), "{odd}");
        assert!(odd.starts_with("myhostxx"), "{odd}");
        assert!(holder_name_of("", 7, 8).starts_with("unknown-host/pid-7/8/aws-backend-0."));
        assert!(holder_name(1).contains(&format!("/pid-{}/1/", std::process::id())));
    }

    #[test]
    fn the_lease_line_says_who_holds_it_and_whether_it_expired_here() {
        let held = LeaseInfo { holder: "bridge-a/pid-1/2".into(), epoch: 3, expires_unix_ms: 1_000 };
        let line = lease_line("g", Some(&held), 999);
        assert_eq!(
            line,
            json!({ "lease": { "group": "g", "holder": "bridge-a/pid-1/2", "epoch": 3, "expires_unix_ms": 1000, "expired": false } })
        );
        assert_eq!(lease_line("g", Some(&held), 1_000)["lease"]["expired"], true);
        let released = LeaseInfo { expires_unix_ms: 0, ..held };
        assert_eq!(lease_line("g", Some(&released), 5)["lease"]["expired"], true);
        let never = lease_line("g", None, 5);
        assert_eq!(never["lease"]["holder"], serde_json::Value::Null);
        assert_eq!(never["lease"]["expired"], true);
    }
}
