//! A bridge group over moto (EC2 and DynamoDB from one server): two in-process bridges share a
//! DynamoDB ledger under the group's lease (`aws_backend::sdk::DynamoLeases`), the way two
//! `aws-backend run` processes with `[ledger] store = "dynamodb"` do. The holder provisions a
//! grant, the standby waits while it renews, the holder dies without releasing, the standby
//! takes over after the lease expires and its recovery finishes the grant; the dead holder's
//! writes are then fenced and its pacer sends nothing.
//!
//! Like the other moto tests, it says loudly that it did not run without `MOTO_ENDPOINT`, and
//! fails under `REQUIRE_MOTO=1`.
#![cfg(feature = "sdk")]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use aws_backend::bridge::{Bridge, Events, Ledgers, Open, Phase, Settings, Stopped};
use aws_backend::port::{Ec2PortExt, Filter, InstanceState, codes};
use aws_backend::sdk::{DynamoLeases, SdkEc2, SdkInspector};
use aws_backend::standby::{LeaseTable, LeaseTimes};
use aws_backend::{
    AwsBackend, AwsBootConfig, BackendParts, GRANT_TAG, LedgerStore, OWNER_TAG, RecoveryReport, TestSwitches,
};
use backend_api::{
    AlmanacTick, Backend, BackendError, Clock, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash,
    RegionLabel, Secret, TokioClock,
};
use ledger_dynamodb::DynamoStore;
use usage_ledger::{Event, EventStore, Lease, Record, StoreError};

use crate::moto::{hex, moto_config_text, moto_endpoint, wall_clock_unix_ms};

const REGION: &str = "us-east-1";
/// The shortest lease the configuration takes: renewed every 2 s, a standby asking every 1 s,
/// a holder stopping 1 s before its lease ends.
const LEASE_S: u64 = 6;
/// The grant's life, in ticks of 1 s: past the takeover, so the new holder's recovery watches it
/// to its deadline.
const LIFETIME_TICKS: u64 = 18;

/// The group's configuration, as both bridges would read it: moto for EC2 and, through the
/// fallback to `endpoint_url`, for DynamoDB.
fn config(endpoint: &str, salt: &str, now_ms: u64) -> anyhow::Result<AwsBootConfig> {
    let ledger = format!(
        r#"
        [ledger]
        store = "dynamodb"
        table = "ledger-standby-{salt}"
        group = "moto-standby"
        lease_s = {LEASE_S}
        # Not read in process: the test hands both bridges the same seed, as the file would.
        key_seed_path = "/nonexistent/group.keyseed"
        "#
    );
    let toml = moto_config_text(endpoint, &format!("moto-standby-{salt}"), now_ms, &ledger);
    Ok(AwsBootConfig::from_toml(&toml)?)
}

/// What the test hears of a bridge: its recovery's report.
#[derive(Default)]
struct Heard {
    recovered: Mutex<Option<tokio::sync::oneshot::Sender<RecoveryReport>>>,
}

impl Events for Heard {
    fn recovered(&self, report: RecoveryReport) {
        if let Some(send) = lock(&self.recovered).take() {
            let _ = send.send(report);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A bridge process of the group, run the way `aws-backend` runs it: `Bridge::run` in group
/// mode, standing by until it holds the lease. Returns the bridge, its run, and its recovery's
/// report once it comes.
fn start_bridge(
    cfg: &AwsBootConfig,
    leases: Arc<DynamoLeases>,
    holder: &str,
    times: LeaseTimes,
    clock: Arc<dyn Clock>,
    key_seed: &str,
) -> (Bridge, tokio::task::JoinHandle<Stopped>, tokio::sync::oneshot::Receiver<RecoveryReport>) {
    let (send, recovered) = tokio::sync::oneshot::channel();
    let heard = Arc::new(Heard { recovered: Mutex::new(Some(send)) });
    let open: Open = {
        let (cfg, clock, key_seed) = (cfg.clone(), clock.clone(), key_seed.to_string());
        Box::new(move |ledger, tenure| {
            Box::pin(async move {
                AwsBackend::new(
                    &cfg,
                    BackendParts {
                        port: Arc::new(SdkEc2::new(&cfg).await),
                        clock,
                        ledger,
                        key_seed: Secret::new(key_seed),
                        jitter_seed: rand::random(),
                        switches: TestSwitches::default(),
                        tenure,
                    },
                )
                .await
            })
        })
    };
    let bridge = Bridge::new(clock);
    let settings = Settings::for_backend(cfg.reaper_grace_ms, 5_000);
    let ledgers = Ledgers::Group { table: leases, holder: holder.to_string(), times };
    let run = tokio::spawn({
        let bridge = bridge.clone();
        async move { bridge.run(ledgers, open, settings, heard).await }
    });
    (bridge, run, recovered)
}

/// Waits (in real time, at most `within_ms`) until `bridge` admits grants.
async fn admitting(bridge: &Bridge, clock: &dyn Clock, within_ms: u64) -> anyhow::Result<AwsBackend> {
    let until = clock.now_unix_ms() + within_ms;
    loop {
        if bridge.phase() == Phase::Admitting
            && let Some(backend) = bridge.backend()
        {
            return Ok(backend);
        }
        ensure!(clock.now_unix_ms() < until, "the bridge is still {:?} after {within_ms} ms", bridge.phase());
        clock.sleep_ms(50).await;
    }
}

/// The group's name, as the configuration names it.
fn a_lease_group(cfg: &AwsBootConfig) -> anyhow::Result<String> {
    let LedgerStore::DynamoDb(shared) = cfg.ledger_store() else { bail!("the config keeps the ledger in a file") };
    Ok(shared.group)
}

fn grant_id(salt: &[u8; 8], tag: u8) -> GrantId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(salt);
    id[31] = tag;
    GrantId(id)
}

/// The instances moto holds for `grant`, terminated or not.
async fn instances_of(port: &SdkEc2, grant: &GrantId) -> anyhow::Result<Vec<(String, InstanceState)>> {
    let region = RegionLabel::new(REGION)?;
    let found = port.describe_instances(&region, Vec::new(), vec![Filter::tag(GRANT_TAG, [grant.to_hex()])]).await?;
    Ok(found.into_iter().map(|i| (i.instance_id.to_string(), i.state)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_dead_holders_grant_and_the_dead_holder_is_fenced() -> anyhow::Result<()> {
    let Some(endpoint) = moto_endpoint("a_standby_takes_over_a_dead_holders_grant_and_the_dead_holder_is_fenced")
    else {
        return Ok(());
    };
    let started = Instant::now();
    let salt: [u8; 8] = rand::random();
    let now_ms = wall_clock_unix_ms();
    let cfg = config(&endpoint, &hex(&salt), now_ms)?;
    let LedgerStore::DynamoDb(shared) = cfg.ledger_store() else { bail!("the config keeps the ledger in a file") };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(now_ms));
    let times = LeaseTimes::for_duration(shared.lease_ms);
    let key_seed = hex(&rand::random::<[u8; 32]>());
    let leases_a = Arc::new(DynamoLeases::connect(&cfg, &shared, clock.clone()).await);
    let leases_b = Arc::new(DynamoLeases::connect(&cfg, &shared, clock.clone()).await);
    leases_a.table().create().await.context("creating the table on moto")?;
    let port = Arc::new(SdkEc2::new(&cfg).await);

    // Given bridge A holds the group's lease and has provisioned a grant.
    let (a, a_run, _) = start_bridge(&cfg, leases_a.clone(), "bridge-a", times, clock.clone(), &key_seed);
    let a_backend = admitting(&a, clock.as_ref(), 20_000).await?;
    let a_lease = leases_a.holder().await?.context("A's lease item")?;
    ensure!(a_lease.holder == "bridge-a", "A does not hold the lease: {a_lease:?}");
    let manifest = ComputeManifest {
        cpu_millicores: 1_000,
        ram_mib: 1_024,
        storage_gib: 8,
        tdx_required: false,
        image_post_hash: ImageHash([7; 32]),
    };
    let now_tick = cfg.almanac.unix_ms_to_tick(clock.now_unix_ms());
    let valid_to = AlmanacTick(now_tick.0 + LIFETIME_TICKS);
    let valid_to_unix_ms = cfg.almanac.tick_to_unix_ms(valid_to);
    let grant = ComputeGrant { id: grant_id(&salt, 1), manifest: &manifest, valid_from: now_tick, valid_to };
    let instance = a.provision(&grant, &Envelope { region: None }).await.context("A provisions")?;

    // When bridge B stands by. Then it does not acquire while A renews (twice in 4 s), and
    // refuses grants, retryably.
    let (b, b_run, recovered) = start_bridge(&cfg, leases_b.clone(), "bridge-b", times, clock.clone(), &key_seed);
    let first_expiry = a_lease.expires_unix_ms;
    clock.sleep_ms(2 * times.renew_every_ms + 300).await;
    ensure!(b.phase() == Phase::StandingBy, "B should stand by while A renews; it is {:?}", b.phase());
    let held = leases_b.holder().await?.context("the lease item exists")?;
    ensure!(
        held.holder == "bridge-a" && held.epoch == a_lease.epoch && held.expires_unix_ms > first_expiry,
        "A should hold its renewed lease: {held:?}"
    );
    let early = ComputeGrant { id: grant_id(&salt, 4), manifest: &manifest, valid_from: now_tick, valid_to };
    match b.provision(&early, &Envelope { region: None }).await {
        Err(err) if err.downcast_ref::<BackendError>().is_some_and(BackendError::is_retryable) => {}
        other => bail!("B, standing by, should refuse a grant retryably: {other:?}"),
    }

    // When A dies: its process ends (its run and every task of its backend), its lease is not
    // released.
    a_run.abort();
    a_backend.shutdown();
    let died_at = clock.now_unix_ms();
    let a_expiry = leases_b.holder().await?.context("the lease item exists")?.expires_unix_ms;

    // Then B acquires only once A's lease has expired, replays the ledger, and its recovery
    // finishes the grant: the instance runs until valid_to and is terminated then.
    let b_backend = admitting(&b, clock.as_ref(), 4 * LEASE_S * 1_000).await?;
    let acquired_at = clock.now_unix_ms();
    let b_lease = leases_b.holder().await?.context("the lease item exists")?;
    ensure!(b_lease.holder == "bridge-b" && b_lease.epoch == a_lease.epoch + 1, "B's lease: {b_lease:?}");
    ensure!(acquired_at >= a_expiry, "B acted at {acquired_at}, before A's lease ended at {a_expiry}");
    ensure!(
        b_backend.grant_state(&grant.id).is_some_and(|s| !s.is_settled()),
        "B's replay does not hold A's live grant"
    );
    let takeover_ms = acquired_at - died_at;
    clock.sleep_until_unix_ms(valid_to_unix_ms.saturating_sub(1_500)).await;
    let before = instances_of(&port, &grant.id).await?;
    ensure!(
        before == [(instance.instance_id.clone(), InstanceState::Running)],
        "the grant's instance should still run before valid_to: {before:?}"
    );
    let report = recovered.await.context("B's bridge stopped before its recovery reported")?;
    let ended_at = clock.now_unix_ms();
    ensure!(report.resumed == 1 && report.failed.is_empty(), "B's recovery: {report:?}");
    ensure!(ended_at >= valid_to_unix_ms, "recovery ended at {ended_at}, before valid_to {valid_to_unix_ms}");
    let after = instances_of(&port, &grant.id).await?;
    ensure!(
        after.iter().all(|(_, state)| matches!(state, InstanceState::ShuttingDown | InstanceState::Terminated)),
        "the grant's instance was not terminated: {after:?}"
    );
    ensure!(b_backend.grant_state(&grant.id).is_some_and(|s| s.is_settled()), "B did not settle the grant");
    let inspector = SdkInspector::new(port.clone(), cfg.regions.clone());
    let left = inspector.resources_of_owner(&cfg.owner).await?;
    ensure!(left.is_empty(), "resources left behind: {left:#?}");

    // Then A's ledger writes are fenced: an append under A's lease is refused as a whole.
    let a_lease = Lease {
        group: a_lease_group(&cfg)?,
        holder: a_lease.holder,
        epoch: a_lease.epoch,
        expires_unix_ms: a_lease.expires_unix_ms,
    };
    let mut store = DynamoStore::new(leases_a.table().clone(), a_lease.clone(), 1_000_000)?;
    let stray = Record {
        grant: grant_id(&salt, 2),
        seq: 0,
        at_unix_ms: clock.now_unix_ms(),
        event: Event::OrphanReaped { resource_kind: usage_ledger::ResourceKind::KeyPair, resource_id: "cb-x".into() },
    };
    match store.append(std::slice::from_ref(&stray)) {
        Err(StoreError::Fenced { epoch, reason, .. }) => {
            ensure!(epoch == a_lease.epoch && reason.contains("bridge-b"), "fenced for {reason} at {epoch}")
        }
        other => bail!("an append under A's lost lease was not fenced: {other:?}"),
    }
    ensure!(
        leases_b.table().replay().await?.records.iter().all(|(r, _)| r.grant != stray.grant),
        "the fenced append reached the table"
    );

    // And A's pacer sends nothing: a provision through A fails, and moto launched nothing.
    let second = ComputeGrant {
        id: grant_id(&salt, 3),
        manifest: &manifest,
        valid_from: cfg.almanac.unix_ms_to_tick(clock.now_unix_ms()),
        valid_to: AlmanacTick(cfg.almanac.unix_ms_to_tick(clock.now_unix_ms()).0 + LIFETIME_TICKS),
    };
    let refused = a_backend.provision(&second, &Envelope { region: None }).await;
    let err = match refused {
        Ok(instance) => bail!("A, fenced, provisioned {instance:?}"),
        Err(err) => err,
    };
    let named = match err.downcast_ref::<BackendError>() {
        Some(BackendError::Provider { code, .. }) => code == codes::LEASE_LOST,
        _ => format!("{err:#}").contains("lease"),
    };
    ensure!(named, "A's provision failed, but not for its lost lease: {err:?}");
    ensure!(instances_of(&port, &second.id).await?.is_empty(), "A launched an instance after losing its lease");
    let owned = port
        .describe_instances(&RegionLabel::new(REGION)?, Vec::new(), vec![Filter::tag(OWNER_TAG, [cfg.owner.clone()])])
        .await?;
    ensure!(owned.len() == 1, "moto holds instances other than the grant's: {owned:?}");

    // And B drains: it stops, gives the lease up, and the group's lease is free at once.
    b.drain();
    match tokio::time::timeout(std::time::Duration::from_secs(10), b_run).await {
        Ok(Ok(Stopped::Drained { cut_short: 0 })) => {}
        other => bail!("B did not drain cleanly: {other:?}"),
    }
    ensure!(
        leases_b.holder().await?.is_none_or(|l| l.expires_unix_ms <= clock.now_unix_ms() || l.holder != "bridge-b"),
        "B's drained lease still holds"
    );
    eprintln!(
        "moto standby test passed in {:.1} s (takeover {takeover_ms} ms after the holder died, lease {LEASE_S} s; \
         the fenced holder's provision: {err:#})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
