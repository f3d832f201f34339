//! How the binary hosts the bridge runtime (`aws_backend::bridge::Bridge`), for `run` and
//! `serve` alike: the ledger (a file of this process's own, or a group's table under its
//! lease), the `Open` that builds the backend over the AWS SDK with the wall clock and the OS's
//! randomness, the events it logs, and the signals that drain it. Start-up, recovery, the
//! reaper, the lease and the drain are the runtime's; nothing here loops over them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_backend::bridge::{Bridge, Events, Ledgers, Open, Phase, Settings, Stopped};
use aws_backend::{AwsBackend, AwsBootConfig, BackendLedger, LedgerStore, RecoveryReport};
use backend_api::{Clock, Secret};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::exit::{Exit, classify};
use crate::ledger::{key_seed, open_ledger};
use crate::{group, open_backend, wall_clock};

/// A bridge started by this process, running in a task of its own.
pub(crate) struct Hosted {
    /// The runtime: a `Backend` for grants, and its phase.
    pub(crate) bridge: Bridge,
    /// The run, which ends once drained, when the lease is lost, or when start-up failed.
    pub(crate) run: tokio::task::JoinHandle<Stopped>,
    /// `Some(true)` once recovery finished every grant it resumed, `Some(false)` once it
    /// ended leaving some unfinished.
    pub(crate) recovered: watch::Receiver<Option<bool>>,
    /// The wall clock the backend runs on.
    pub(crate) clock: Arc<dyn Clock>,
}

/// Opens this process's ledger (the file, locked; or, in group mode, what standing by for the
/// group's lease needs) and starts the bridge on it. The run stands by, replays and recovers
/// in the background: see [`Hosted::admitting`].
pub(crate) async fn start(cfg: &AwsBootConfig) -> anyhow::Result<Hosted> {
    let clock = wall_clock()?;
    let (ledgers, key_seed) = match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let ledger = open_ledger(&path).context(Exit::LedgerUnusable)?;
            let key_seed = key_seed(&path).context(Exit::LedgerUnusable)?;
            (Ledgers::Own(ledger), key_seed)
        }
        LedgerStore::DynamoDb(ledger) => group::ledgers(cfg, &ledger, clock.clone()).await?,
    };
    let settings = Settings::for_backend(cfg.reaper_grace_ms, cfg.drain_ms());
    let bridge = Bridge::new(clock.clone());
    let (sender, recovered) = watch::channel(None);
    let open = open(cfg.clone(), clock.clone(), key_seed);
    let run = tokio::spawn({
        let bridge = bridge.clone();
        async move { bridge.run(ledgers, open, settings, Arc::new(Logged { recovered: sender })).await }
    });
    Ok(Hosted { bridge, run, recovered, clock })
}

/// The binary's `Open`: the backend over the AWS SDK. Its errors carry the exit they cause
/// ([`Exit::of_stopped`] reads it).
fn open(cfg: AwsBootConfig, clock: Arc<dyn Clock>, key_seed: Secret) -> Open {
    Box::new(move |ledger: BackendLedger, tenure| {
        Box::pin(async move {
            open_backend(&cfg, clock, ledger, key_seed, tenure).await.map_err(|err| {
                let exit = classify(&err);
                err.context(exit)
            })
        })
    })
}

impl Hosted {
    /// Waits until the bridge admits grants; `Err` with how the run ended when it ended first
    /// (a standby waits here for as long as another bridge holds the lease).
    pub(crate) async fn admitting(&mut self) -> Result<(), Stopped> {
        loop {
            match self.bridge.phase() {
                Phase::Admitting => return Ok(()),
                Phase::Draining | Phase::Stopped => return Err(self.stopped().await),
                Phase::StandingBy | Phase::Starting => {}
            }
            if self.run.is_finished() {
                return Err(self.stopped().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the run to end and says how it ended.
    pub(crate) async fn stopped(&mut self) -> Stopped {
        match (&mut self.run).await {
            Ok(stopped) => stopped,
            Err(err) => Stopped::Failed(anyhow::anyhow!("the bridge's task panicked: {err}").context(Exit::Failed)),
        }
    }

    /// The backend, once the bridge has built it.
    pub(crate) fn backend(&self) -> Option<AwsBackend> {
        self.bridge.backend()
    }
}

/// The events the runtime reports, logged; recovery's end is also sent to `recovered`.
struct Logged {
    recovered: watch::Sender<Option<bool>>,
}

impl Events for Logged {
    fn acting(&self, backend: &AwsBackend) {
        let live = backend.with_ledger(|l| l.grants().filter(|(_, s)| !s.is_settled()).count());
        tracing::info!(live_grants = live, "the backend is built: recovering the ledger's live grants, then admitting");
    }

    fn recovered(&self, report: RecoveryReport) {
        let finished = report.failed.is_empty();
        if finished {
            if report.resumed > 0 {
                tracing::info!(resumed = report.resumed, "recovery finished every grant the previous process left");
            }
        } else {
            for (grant, error) in &report.failed {
                let grant = grant.get(..16).unwrap_or(grant);
                tracing::error!(grant, %error, "recovery could not finish this grant; the next start retries it");
            }
            tracing::error!(
                resumed = report.resumed,
                failed = report.failed.len(),
                "recovery left grants unfinished: see `aws-backend status`"
            );
        }
        self.recovered.send_replace(Some(finished));
    }
}

/// SIGTERM and SIGINT drain the bridge: no new grants, the provisions in flight finish within
/// `drain_s`, the lease is released, and the run ends (the caller exits 0). A second one exits
/// at once with [`Exit::Interrupted`], as a crash, which the next process's recovery covers.
/// SIGHUP is logged and ignored.
pub(crate) fn drain_on_signals(bridge: Bridge) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        let mut draining = false;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP ignored: the configuration is read at start only; restart to change it");
                    continue;
                }
            };
            if draining {
                tracing::error!(
                    signal = name,
                    in_flight = bridge.in_flight(),
                    "second signal: exiting at once; the next process's recovery finishes what this one left"
                );
                std::process::exit(i32::from(Exit::Interrupted.code()));
            }
            draining = true;
            tracing::info!(
                signal = name,
                in_flight = bridge.in_flight(),
                "draining: no new grants; provisions in flight finish within drain_s (a second signal exits at once)"
            );
            bridge.drain();
        }
    }))
}
