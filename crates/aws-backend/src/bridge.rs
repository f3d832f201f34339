//! The bridge as a service: the life around the [`Backend`] trait, which an embedding host
//! (compute-bridge), the binary and the simulation run alike.
//!
//! A [`Bridge`] owns one tenure of a process: in group mode it stands by until it holds the
//! group's lease, replays the ledger and renews the lease from then on; it builds the backend
//! (through the caller's [`Open`], which picks the port, the clock and the randomness), starts
//! recovery before it admits anything, runs the reaper every so often, and keeps the lease
//! until it is lost or the bridge is drained. It implements [`Backend`] itself: a grant is
//! admitted only while the bridge is [`Phase::Admitting`]; otherwise `provision` answers
//! [`BackendError::Unavailable`], which is retryable (compute-bridge may send the grant again,
//! here later or to another bridge).
//!
//! A drain ([`Bridge::drain`]) stops admitting at once, lets the provisions in flight finish
//! within `drain_ms` (deadlines stay armed meanwhile), rolls back those still in flight then as
//! retryable failures (compute-bridge may send them again, here or to another bridge), then
//! stops the backend (its tasks, and its pacer, which sends nothing from then on) and gives the
//! lease up so that a standby takes over at once; the process exits next. Instances that are running stay with their guests'
//! power-off and the next process's recovery, as after a crash; what a drain adds is that
//! nothing is cut in the middle of a provision that had time to finish, and no standby waits
//! for the lease. A stopped bridge refuses every call, retryably.
//!
//! Dropping [`Bridge::run`]'s future is a crash: every task it started is aborted with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backend_api::{
    AlmanacTick, Backend, BackendError, Capabilities, Clock, ComputeGrant, Envelope, ProvisionedInstance, UsageMetrics,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::pacing::lock;
use crate::standby::{Holding, LeaseTable, LeaseTimes, Tenure, renewing, wait_for_lease};
use crate::{AwsBackend, BackendLedger, ReapReport, RecoveryReport};

/// Where this process's ledger lives, and how it is held.
pub enum Ledgers {
    /// A ledger of this process's own (the file store, locked by the process), replayed.
    Own(BackendLedger),
    /// A ledger shared by a bridge group under a lease: stand by until this process holds it.
    Group {
        /// The group's lease and ledger.
        table: Arc<dyn LeaseTable>,
        /// This process's name as a lease holder, unique per process.
        holder: String,
        /// The lease's timings.
        times: LeaseTimes,
    },
}

/// Builds the backend once this process holds its ledger: the binary's over the AWS SDK, the
/// simulation's over `sim-ec2`. Given the replayed ledger and, in group mode, the tenure the
/// backend acts under.
pub type Open = Box<
    dyn FnOnce(BackendLedger, Option<Arc<Tenure>>) -> Pin<Box<dyn Future<Output = anyhow::Result<AwsBackend>> + Send>>
        + Send,
>;

/// How the bridge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How often the reaper runs, in ms (the first pass one period after start-up, since
    /// recovery runs first).
    pub reaper_every_ms: u64,
    /// How long a drain waits for the provisions in flight, in ms.
    pub drain_ms: u64,
}

impl Settings {
    /// The reaper every `reaper_grace_ms` (at least a minute, as the binary has always run it)
    /// and a drain of `drain_ms`.
    pub fn for_backend(reaper_grace_ms: u64, drain_ms: u64) -> Self {
        Self { reaper_every_ms: reaper_grace_ms.max(60_000), drain_ms }
    }
}

/// Where a bridge is in its life: what readiness reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the group's lease (group mode): another bridge acts.
    StandingBy,
    /// Replaying the ledger and building the backend.
    Starting,
    /// Recovery has started; new grants are admitted.
    Admitting,
    /// A drain is under way: no new grants; provisions in flight may finish.
    Draining,
    /// The run ended (see [`Stopped`]).
    Stopped,
}

impl Phase {
    /// The phase as readiness and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::StandingBy => "standing-by",
            Phase::Starting => "starting",
            Phase::Admitting => "admitting",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// Why [`Bridge::run`] ended.
#[derive(Debug)]
pub enum Stopped {
    /// Drained: the provisions in flight finished (or the drain's time ran out), the lease is
    /// given up.
    Drained {
        /// Provisions still in flight when the drain's time ran out: each was rolled back as a
        /// retryable failure (what its rollback left unfinished, the next process's recovery
        /// finishes), so compute-bridge may send the grant again.
        cut_short: usize,
    },
    /// The group's lease was lost (fenced, or not renewed in time): this process stopped
    /// acting; the next holder's recovery finishes its grants.
    LeaseLost(String),
    /// The backend could not start, or the ledger could not be replayed.
    Failed(anyhow::Error),
}

/// What a host may want to hear of a run, besides the logs (the simulation's checkers do).
pub trait Events: Send + Sync {
    /// The backend is built and acts from now on.
    fn acting(&self, _backend: &AwsBackend) {}
    /// Recovery ended, with its report.
    fn recovered(&self, _report: RecoveryReport) {}
    /// A periodic reaper pass ended; it started at `started_unix_ms`.
    fn reaped(&self, _report: &ReapReport, _started_unix_ms: u64) {}
}

/// Events nobody listens to.
pub struct Quiet;

impl Events for Quiet {}

/// See the module doc. Clones share the same bridge.
#[derive(Clone)]
pub struct Bridge {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    phase: Mutex<Phase>,
    backend: Mutex<Option<AwsBackend>>,
    /// Provisions admitted and not finished.
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
    draining: AtomicBool,
    /// Woken by [`Bridge::drain`].
    drain: Notify,
}

/// A task aborted when this is dropped: what a crash does to the tasks of a run.
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One provision in flight, counted while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Bridge {
    /// A bridge not yet running; call [`Bridge::run`] (in a task of its own) to start it.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                phase: Mutex::new(Phase::Starting),
                backend: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                draining: AtomicBool::new(false),
                drain: Notify::new(),
            }),
        }
    }

    /// Where the bridge is in its life.
    pub fn phase(&self) -> Phase {
        *lock(&self.shared.phase)
    }

    /// The backend, once built (stopped once the bridge is).
    pub fn backend(&self) -> Option<AwsBackend> {
        lock(&self.shared.backend).clone()
    }

    /// Provisions admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Stops admitting new grants and ends the run once the provisions in flight finish (or
    /// the drain's time runs out). Idempotent.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.drain.notify_waiters();
    }

    fn set_phase(&self, phase: Phase) {
        let mut current = lock(&self.shared.phase);
        if *current != phase {
            tracing::info!(from = current.name(), to = phase.name(), "bridge phase");
            *current = phase;
        }
    }

    /// Returns once a drain is asked for.
    async fn drain_asked(&self) {
        loop {
            let notified = self.shared.drain.notified();
            if self.shared.draining.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Returns once no provision is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.shared.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Runs one tenure of this process: stand by (group mode), open the backend, recover,
    /// admit, reap, keep the lease; until the lease is lost or a drain ends it. Dropping the
    /// future is a crash (see the module doc).
    pub async fn run(&self, ledgers: Ledgers, open: Open, settings: Settings, events: Arc<dyn Events>) -> Stopped {
        let stopped = self.tenure(ledgers, open, settings, events).await;
        self.set_phase(Phase::Stopped);
        match &stopped {
            Stopped::Drained { cut_short } => tracing::info!(cut_short, "bridge drained"),
            Stopped::LeaseLost(why) => tracing::error!(why, "bridge stopped: the ledger lease is lost"),
            Stopped::Failed(err) => tracing::error!(error = %format!("{err:#}"), "bridge could not start"),
        }
        stopped
    }

    async fn tenure(&self, ledgers: Ledgers, open: Open, settings: Settings, events: Arc<dyn Events>) -> Stopped {
        let clock = self.shared.clock.clone();
        let (backend, lease) = match ledgers {
            Ledgers::Own(ledger) => {
                self.set_phase(Phase::Starting);
                match open(ledger, None).await {
                    Ok(backend) => (backend, None),
                    Err(err) => return Stopped::Failed(err),
                }
            }
            Ledgers::Group { table, holder, times } => {
                self.set_phase(Phase::StandingBy);
                // Every select! here is biased, as the simulation needs: tokio's otherwise
                // draws its polling order at random, from OS entropy, run by run.
                let holding = tokio::select! {
                    biased;
                    holding = wait_for_lease(table.as_ref(), &holder, &times, clock.as_ref()) => holding,
                    () = self.drain_asked() => return Stopped::Drained { cut_short: 0 },
                };
                let Holding { mut lease, tenure, ledger, .. } = match holding {
                    Ok(holding) => holding,
                    Err(err) => return Stopped::Failed(err),
                };
                self.set_phase(Phase::Starting);
                let opened = open(ledger, Some(tenure.clone()));
                match renewing(table.as_ref(), &mut lease, &tenure, &times, clock.as_ref(), opened).await {
                    Ok(Ok(backend)) => (backend, Some((table, lease, times))),
                    Ok(Err(err)) => {
                        release(table.as_ref(), lease).await;
                        return Stopped::Failed(err);
                    }
                    Err(why) => return Stopped::LeaseLost(why),
                }
            }
        };
        *lock(&self.shared.backend) = Some(backend.clone());
        events.acting(&backend);
        // Recovery lists the ledger's live grants when `recover()` is called: before this
        // process admits a grant of its own, which would otherwise be among them.
        let recovery = backend.recover();
        let recovered = events.clone();
        let _recovery = Owned(tokio::spawn(async move { recovered.recovered(recovery.await) }));
        self.set_phase(if self.shared.draining.load(Ordering::SeqCst) { Phase::Draining } else { Phase::Admitting });
        let reaper = {
            let (backend, events, clock) = (backend.clone(), events.clone(), clock.clone());
            Owned(tokio::spawn(async move {
                loop {
                    clock.sleep_ms(settings.reaper_every_ms).await;
                    let started = clock.now_unix_ms();
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
                    events.reaped(&report, started);
                }
            }))
        };
        let mut keeping = Box::pin(async {
            match &lease {
                Some((table, lease, times)) => backend.keep_lease(table.as_ref(), lease.clone(), times).await,
                None => std::future::pending().await,
            }
        });
        tokio::select! {
            biased;
            why = &mut keeping => {
                backend.shutdown();
                return Stopped::LeaseLost(why);
            }
            () = self.drain_asked() => {}
        }
        self.set_phase(Phase::Draining);
        drop(reaper);
        tracing::info!(in_flight = self.in_flight(), drain_ms = settings.drain_ms, "draining: no new grants");
        let cut_short = tokio::select! {
            biased;
            why = &mut keeping => {
                backend.shutdown();
                return Stopped::LeaseLost(why);
            }
            () = self.idle() => 0,
            () = clock.sleep_ms(settings.drain_ms) => self.in_flight(),
        };
        if cut_short > 0 {
            // Out of time: the provisions still in flight roll back as retryable failures, so
            // that compute-bridge may send their grants again. A rollback that does not finish
            // within another `drain_ms` is the next process's recovery's.
            tracing::warn!(cut_short, "drain: provisions still in flight; rolling them back as retryable");
            backend.cancel_provisions();
            tokio::select! {
                biased;
                why = &mut keeping => {
                    backend.shutdown();
                    return Stopped::LeaseLost(why);
                }
                () = self.idle() => {}
                () = clock.sleep_ms(settings.drain_ms) => tracing::warn!(
                    unfinished = self.in_flight(),
                    "drain: rollbacks unfinished; the next process's recovery finishes them"
                ),
            }
        }
        drop(keeping);
        backend.shutdown();
        if let Some((table, lease, _)) = lease {
            release(table.as_ref(), lease).await;
        }
        Stopped::Drained { cut_short }
    }

    /// The backend, while grants are admitted; otherwise why not, retryable.
    fn admitting(&self) -> Result<AwsBackend, BackendError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(unavailable(Phase::Draining));
        }
        match (self.phase(), self.backend()) {
            (Phase::Admitting, Some(backend)) => Ok(backend),
            (phase, _) => Err(unavailable(phase)),
        }
    }

    /// The backend for calls about grants already admitted (watch, terminate): also while
    /// draining, whose deadlines stay armed; not once stopped.
    fn serving(&self) -> Result<AwsBackend, BackendError> {
        match (self.phase(), self.backend()) {
            (Phase::Stopped, _) | (_, None) => Err(unavailable(self.phase())),
            (_, Some(backend)) => Ok(backend),
        }
    }
}

fn unavailable(phase: Phase) -> BackendError {
    let reason = match phase {
        Phase::StandingBy => {
            "this bridge stands by: another bridge of its group holds the ledger lease; send the grant there or retry later"
        }
        Phase::Starting => "this bridge is starting (replaying its ledger); retry in a few seconds",
        Phase::Draining => {
            "this bridge is draining before it stops; send the grant to another bridge or retry once it is back"
        }
        Phase::Stopped => "this bridge has stopped; send the grant to another bridge or retry once it is back",
        Phase::Admitting => "this bridge has no backend yet; retry in a few seconds",
    };
    BackendError::Unavailable { reason: reason.to_string() }
}

/// Gives the lease up so that a standby takes over at once; a failure only makes it wait for
/// the expiry.
async fn release(table: &dyn LeaseTable, lease: usage_ledger::Lease) {
    let epoch = lease.epoch;
    match table.release(lease).await {
        Ok(()) => {
            tracing::info!(group = table.group(), epoch, "released the ledger lease: a standby may take over at once")
        }
        Err(err) => tracing::warn!(
            group = table.group(),
            epoch,
            error = %err,
            "could not release the ledger lease: a standby takes over when it expires"
        ),
    }
}

#[async_trait]
impl Backend for Bridge {
    fn name(&self) -> &'static str {
        crate::BACKEND_NAME
    }

    async fn capabilities(&self) -> anyhow::Result<Capabilities> {
        self.serving()?.capabilities().await
    }

    /// The backend's answer once built; before, true: whether the grant fits is known once the
    /// catalogue is loaded, and `provision` refuses retryably until then.
    fn can_satisfy(&self, grant: &ComputeGrant<'_>) -> bool {
        self.backend().is_none_or(|backend| backend.can_satisfy(grant))
    }

    async fn provision(&self, grant: &ComputeGrant<'_>, envelope: &Envelope) -> anyhow::Result<ProvisionedInstance> {
        // Counted before the phase is read: a drain that starts now waits for this one.
        let _in_flight = InFlight::enter(&self.shared);
        let backend = self.admitting()?;
        backend.provision(grant, envelope).await
    }

    async fn watch_until_exit(
        &self,
        instance: &ProvisionedInstance,
        valid_to: AlmanacTick,
    ) -> anyhow::Result<UsageMetrics> {
        self.serving()?.watch_until_exit(instance, valid_to).await
    }

    async fn terminate(&self, instance: &ProvisionedInstance) -> anyhow::Result<()> {
        self.serving()?.terminate(instance).await
    }
}
