//! The bridge processes of a run. Each is an [`aws_backend::Bridge`], the runtime the binary
//! runs: it opens its ledger (in group mode, stands by for the lease first), builds the backend
//! over the simulator, starts recovery before it admits a grant, runs the reaper every so
//! often and keeps the lease. The harness keeps no loop of its own: it starts processes, kills,
//! pauses and cuts them off, hands grants to the one acting, and listens ([`Listener`]) to
//! what recovery and the reaper report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_backend::bridge::{Bridge, Events, Ledgers, Open, Settings, Stopped};
use aws_backend::port::Ec2Port;
use aws_backend::standby::LeaseTimes;
use aws_backend::{AwsBackend, AwsBootConfig, DynStore, ReapReport, RecoveryReport, TestSwitches};
use backend_api::{Clock, GrantId, TokioClock};
use sim_ec2::SimEc2;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::checkers::fence::FenceLog;
use crate::checkers::{Violation, names};
use crate::fixture::{self, START_UNIX_MS};
use crate::framestore::{FrameStore, PARTITIONED};
use crate::harness::{Findings, Spawned, Task, lock};
use crate::replicas::{ReplicaClock, ReplicaPort, SimLeases};

/// How long a drain waits for the provisions in flight, as an operator would configure it.
pub(crate) const DRAIN_MS: u64 = 30_000;
/// The lease of the simulation's replicas: short, so that the crash schedule's downtimes (1 to
/// 20 s) both outlast it (a standby takes over) and fall short of it (the holder carries on).
pub(crate) const REPLICA_LEASE_MS: u64 = 8_000;
/// How long after a crash's downtime ends (or, at the start, after the run starts) a replica
/// must act under a lease secured since, or the run reports it.
pub(crate) const TAKEOVER_WITHIN_MS: u64 = 10 * 60_000;

/// The process acting for the ledger: where the harness sends grants, and whose backend the
/// checkers read.
#[derive(Clone)]
pub(crate) struct Active {
    pub(crate) replica: usize,
    pub(crate) incarnation: u64,
    pub(crate) bridge: Bridge,
    pub(crate) backend: AwsBackend,
}

/// What every process of a run shares.
pub(crate) struct Common {
    pub(crate) cfg: AwsBootConfig,
    pub(crate) sim: Arc<SimEc2>,
    /// The simulator behind the witness: what every process's port forwards to.
    pub(crate) port: Arc<dyn Ec2Port>,
    pub(crate) store: FrameStore,
    pub(crate) seed: u64,
    pub(crate) switches: TestSwitches,
    pub(crate) findings: Findings,
    /// The process acting, once it has built its backend.
    pub(crate) active: Mutex<Option<Active>>,
    /// Tasks the processes started (a marker of each recovery), for the harness to own.
    pub(crate) spawned: Mutex<Vec<Spawned>>,
}

impl Common {
    /// The acting process, if one acts.
    pub(crate) fn active(&self) -> Option<Active> {
        lock(&self.active).clone()
    }

    /// Forgets `incarnation` as the acting process, if it is.
    fn resign(&self, incarnation: u64) {
        let mut active = lock(&self.active);
        if active.as_ref().is_some_and(|a| a.incarnation == incarnation) {
            *active = None;
        }
    }

    /// How a process builds its backend: over `port` with `clock`, its jitter from
    /// `incarnation`.
    fn opener(&self, port: Arc<dyn Ec2Port>, clock: Arc<dyn Clock>, incarnation: u64) -> Open {
        let (cfg, seed, switches) = (self.cfg.clone(), self.seed, self.switches);
        Box::new(move |ledger, tenure| {
            Box::pin(async move {
                fixture::backend_with(&cfg, port, clock, ledger, seed, incarnation, switches, tenure).await
            })
        })
    }

    /// The settings the binary derives from the configuration.
    fn settings(&self) -> Settings {
        Settings::for_backend(self.cfg.reaper_grace_ms, DRAIN_MS)
    }
}

/// The harness's ear on one process: it marks the process acting, and checks what recovery
/// and each periodic reaper pass report against the faults injected meanwhile.
struct Listener {
    common: Arc<Common>,
    replica: usize,
    incarnation: u64,
    bridge: Bridge,
    /// Notified once the process acts.
    acted: Arc<Notify>,
    heard: Mutex<Heard>,
}

#[derive(Default)]
struct Heard {
    backend: Option<AwsBackend>,
    /// Faults injected before recovery started.
    faults_before_recovery: usize,
    /// Ends the recovery's marker task.
    recovered: Option<oneshot::Sender<()>>,
}

impl Events for Listener {
    fn acting(&self, backend: &AwsBackend) {
        let (recovered, marker) = oneshot::channel::<()>();
        {
            let mut heard = lock(&self.heard);
            heard.backend = Some(backend.clone());
            heard.faults_before_recovery = self.common.sim.faults_injected();
            heard.recovered = Some(recovered);
        }
        // The harness waits for recovery as for a grant: a marker task that ends with it.
        let waiting = tokio::spawn(async move {
            let _ = marker.await;
        });
        lock(&self.common.spawned).push((Task::Recovery, waiting, self.incarnation));
        *lock(&self.common.active) = Some(Active {
            replica: self.replica,
            incarnation: self.incarnation,
            bridge: self.bridge.clone(),
            backend: backend.clone(),
        });
        self.acted.notify_one();
    }

    /// Reports a grant recovery left unfinished with no fault on its own calls to explain it:
    /// one that hit the grant's resources, or a call about no grant in its region (a Describe
    /// recovery made, an outage), while recovery ran.
    fn recovered(&self, report: RecoveryReport) {
        let (backend, faults_before) = {
            let mut heard = lock(&self.heard);
            if let Some(done) = heard.recovered.take() {
                let _ = done.send(());
            }
            (heard.backend.clone(), heard.faults_before_recovery)
        };
        let Some(backend) = backend else { return };
        if report.failed.is_empty() || !backend.acting() {
            return;
        }
        let faults = self.common.sim.fault_log_since(faults_before);
        let unexplained: Vec<&(String, String)> = report
            .failed
            .iter()
            // A partition (replicas) cuts the process off its ledger: the harness's own outage.
            .filter(|(_, err)| !err.contains(PARTITIONED))
            .filter(|(hex, _)| {
                let region =
                    hex.parse::<GrantId>().ok().and_then(|g| backend.grant_state(&g)).map(|s| s.region().to_string());
                !faults.iter().any(|f| {
                    let on_grant = f.subjects.iter().any(|tags| tags.get(aws_backend::GRANT_TAG) == Some(hex));
                    let in_region = f.subjects.is_empty() && f.region.as_ref().map(|r| r.as_str()) == region.as_deref();
                    on_grant || in_region
                })
            })
            .collect();
        if !unexplained.is_empty() {
            lock(&self.common.findings).push(Violation::liveness(
                names::LIVENESS,
                format!("recovery left grants unfinished with no fault on their calls: {unexplained:?}"),
            ));
        }
    }

    fn reaped(&self, report: &ReapReport, started_unix_ms: u64) {
        let Some(backend) = lock(&self.heard).backend.clone() else { return };
        if !report.errors.is_empty()
            && backend.acting()
            && !reaper_explained(&report.errors, &self.common.sim.faults_from(started_unix_ms))
        {
            lock(&self.common.findings).push(Violation::liveness(
                names::LIVENESS,
                format!("a reaper pass failed with no fault on its calls: {:?}", report.errors),
            ));
        }
    }
}

/// True when faults injected during a reaper pass explain its `errors`: one on a call about no
/// grant (its listings), or on the resources of a grant an error names.
pub(crate) fn reaper_explained(errors: &[String], faults: &[sim_ec2::FaultRecord]) -> bool {
    // A partition (replicas) cuts the reaping process off its ledger: the harness's own outage.
    // The store answers PARTITIONED only to a handle whose own process is cut off at that moment.
    let unexplained: Vec<&str> = errors.iter().map(String::as_str).filter(|e| !e.contains(PARTITIONED)).collect();
    if unexplained.is_empty() {
        return true;
    }
    let text = unexplained.join(" ");
    faults.iter().any(|f| {
        f.subjects.is_empty()
            || f.subjects
                .iter()
                .any(|tags| tags.get(aws_backend::GRANT_TAG).is_some_and(|hex| text.contains(hex.as_str())))
    })
}

/// Runs one process's bridge to its end; `acted` is notified once it acts.
async fn run_bridge(
    common: Arc<Common>,
    replica: usize,
    incarnation: u64,
    bridge: Bridge,
    ledgers: Ledgers,
    open: Open,
    acted: Arc<Notify>,
) -> Stopped {
    let listener = Arc::new(Listener {
        common: common.clone(),
        replica,
        incarnation,
        bridge: bridge.clone(),
        acted,
        heard: Mutex::new(Heard::default()),
    });
    let settings = common.settings();
    let stopped = bridge.run(ledgers, open, settings, listener).await;
    // The process exits: nothing of it runs on.
    if let Some(backend) = bridge.backend() {
        backend.shutdown();
    }
    common.resign(incarnation);
    stopped
}

/// The one process of a run without replicas, with a ledger of its own: killed at a crash and
/// started again on the replayed ledger after the downtime.
pub(crate) struct Single {
    pub(crate) common: Arc<Common>,
    clock: Arc<TokioClock>,
    running: Option<JoinHandle<Stopped>>,
}

impl Single {
    pub(crate) fn new(common: Arc<Common>, clock: Arc<TokioClock>) -> Self {
        Self { common, clock, running: None }
    }

    /// Starts the process on its ledger, opened from the store as a restarted process opens it
    /// (its jitter from `incarnation`); returns once it acts, or why it could not.
    pub(crate) async fn start(&mut self, incarnation: u64) -> Result<Active, String> {
        let store = &self.common.store;
        let ledger = store.open_ledger(DynStore(Box::new(store.clone())))?;
        let clock: Arc<dyn Clock> = self.clock.clone();
        let open = self.common.opener(self.common.port.clone(), clock.clone(), incarnation);
        let bridge = Bridge::new(clock);
        let acted = Arc::new(Notify::new());
        let mut running = tokio::spawn(run_bridge(
            self.common.clone(),
            0,
            incarnation,
            bridge,
            Ledgers::Own(ledger),
            open,
            acted.clone(),
        ));
        tokio::select! {
            biased;
            () = acted.notified() => {}
            stopped = &mut running => return Err(format!("the bridge stopped before it acted: {stopped:?}")),
        }
        self.running = Some(running);
        self.common.active().ok_or_else(|| "the bridge acted and stopped at once".to_string())
    }

    /// Drains the process (its SIGTERM) and waits for it to stop, at most `within_ms`: how
    /// long it took, or `None` when it had not stopped by then (it is then killed).
    pub(crate) async fn drain(&mut self, within_ms: u64) -> Option<u64> {
        let active = self.common.active()?;
        let running = self.running.as_mut()?;
        let started = self.clock.now_unix_ms();
        active.bridge.drain();
        let took = tokio::time::timeout(std::time::Duration::from_millis(within_ms), running).await.ok()?;
        self.running = None;
        if let Ok(stopped) = took {
            tracing::debug!(?stopped, "drained");
        }
        Some(self.clock.now_unix_ms() - started)
    }

    /// Kills the process: its tasks end where they are.
    pub(crate) async fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
            let _ = running.await;
        }
        if let Some(active) = lock(&self.common.active).take() {
            active.backend.shutdown();
        }
    }
}

/// What every replica of a run shares.
pub(crate) struct ReplicaShared {
    pub(crate) common: Arc<Common>,
    pub(crate) clocks: Vec<Arc<ReplicaClock>>,
    /// Per replica, whether it is cut off from the store (a partition).
    pub(crate) cut_off: Vec<Arc<AtomicBool>>,
    pub(crate) log: FenceLog,
    pub(crate) times: LeaseTimes,
    pub(crate) incarnations: AtomicU64,
    /// Processes that lost their lease and exited.
    pub(crate) exited: Mutex<Vec<u64>>,
}

/// One replica: a bridge process in group mode, started again (its supervisor's restart) each
/// time it stops for a lost lease.
async fn serve(shared: Arc<ReplicaShared>, replica: usize) {
    loop {
        let incarnation = shared.incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        let holder = format!("replica-{replica}.{incarnation}");
        let clock = shared.clocks[replica].clone();
        let store = shared.common.store.reached_through(shared.cut_off[replica].clone());
        let table = Arc::new(SimLeases::new(store, clock.clone(), shared.log.clone()));
        let port = Arc::new(ReplicaPort::new(shared.common.port.clone(), &holder, clock.clone(), shared.log.clone()));
        let open = shared.common.opener(port, clock.clone(), incarnation);
        let ledgers = Ledgers::Group { table, holder: holder.clone(), times: shared.times };
        let bridge = Bridge::new(clock);
        let stopped =
            run_bridge(shared.common.clone(), replica, incarnation, bridge, ledgers, open, Arc::new(Notify::new()))
                .await;
        match stopped {
            // Cut off between acquiring and replaying: the process exits and stands by again.
            Stopped::Failed(_) if shared.cut_off[replica].load(Ordering::SeqCst) => {}
            Stopped::Failed(e) => {
                lock(&shared.common.findings)
                    .push(Violation::safety(names::LEDGER, format!("{holder} could not start: {e:#}")));
                return;
            }
            Stopped::LeaseLost(_) | Stopped::Drained { .. } => {}
        }
        lock(&shared.exited).push(incarnation);
    }
}

/// The bridge replicas of a run with `--replicas`: each a process that stands by until it holds
/// the lease, acts while it holds it, and exits when it loses it, to stand by again.
pub(crate) struct Replicas {
    pub(crate) shared: Arc<ReplicaShared>,
    serving: Vec<Option<JoinHandle<()>>>,
}

impl Replicas {
    /// Starts `count` replicas; returns once the first acts.
    pub(crate) async fn start(
        shared: ReplicaShared,
        count: usize,
        clock: &TokioClock,
    ) -> anyhow::Result<(Self, Active)> {
        let mut replicas = Self { shared: Arc::new(shared), serving: (0..count).map(|_| None).collect() };
        replicas.serve(0);
        let first = loop {
            clock.sleep_ms(1).await;
            if let Some(active) = replicas.shared.common.active() {
                break active;
            }
            if clock.now_unix_ms() > START_UNIX_MS + TAKEOVER_WITHIN_MS {
                anyhow::bail!("the first replica did not take the lease: {:?}", lock(&replicas.shared.common.findings));
            }
        };
        for replica in 1..count {
            replicas.serve(replica);
        }
        Ok((replicas, first))
    }

    /// Starts replica `replica`'s process (again).
    pub(crate) fn serve(&mut self, replica: usize) {
        self.serving[replica] = Some(tokio::spawn(serve(self.shared.clone(), replica)));
    }

    /// The incarnations that exited since the last call.
    pub(crate) fn exited(&self) -> Vec<u64> {
        lock(&self.shared.exited).drain(..).collect()
    }

    /// Kills the process of `victim`: its tasks end where they are; it holds the lease until the
    /// lease expires.
    pub(crate) async fn kill(&mut self, victim: &Active) {
        if let Some(serving) = self.serving[victim.replica].take() {
            serving.abort();
            let _ = serving.await;
        }
        victim.backend.shutdown();
        self.shared.common.resign(victim.incarnation);
    }

    /// Ends every replica (at the end of the run).
    pub(crate) fn stop(&mut self) {
        for serving in self.serving.iter_mut().filter_map(Option::take) {
            serving.abort();
        }
    }
}
