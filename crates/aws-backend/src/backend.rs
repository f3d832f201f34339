//! `AwsBackend`: the state every phase shares, how it is built, and the accessors the host and the
//! harness read. Each phase of a grant's life is an `impl AwsBackend` block of its own under `backend/`.

mod access;
mod admission;
mod api;
mod deadline;
#[cfg(test)]
mod fixtures;
mod gauges;
mod launch;
mod lease;
mod ledger;
mod metering;
mod provision;
mod reaper;
mod recovery;
mod region;
mod teardown;
mod terminate;
mod visibility;
mod watch;

pub use reaper::{Orphan, ReapReport};
pub use recovery::RecoveryReport;
pub(crate) use teardown::Finish;

#[cfg(test)]
mod key_pair_iam_tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backend_api::{BackendError, Clock, GrantId, RegionLabel, Secret};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use usage_ledger::{Books, EventStore, GrantState, Ledger, ObservedState};

use crate::config::AwsBootConfig;
use crate::ec2::Ec2;
use crate::journal::Journal;
use crate::lag::Lags;
use crate::pacing::{Pacer, PacingStats, RetryPolicy, lock};
use crate::poller::RegionPoller;
use crate::port::{Ec2Port, InstanceState};
use crate::regions::Regions;
use crate::standby::Tenure;
use crate::switches::{Hooks, TestSwitches};
use crate::tasks::Tasks;
use crate::terminations::Terminations;

/// The name this backend reports.
pub const BACKEND_NAME: &str = "aws";

/// How long an id EC2 returned may stay invisible to Describe before we stop waiting for it.
const VISIBILITY_WINDOW_MS: u64 = 5 * 60_000;

/// An event store behind a box, so one backend type serves the file and memory stores.
pub struct DynStore(pub Box<dyn EventStore>);

impl EventStore for DynStore {
    fn append(&mut self, records: &[usage_ledger::Record]) -> Result<(), usage_ledger::StoreError> {
        self.0.append(records)
    }

    fn heal(&mut self) -> Result<(), usage_ledger::StoreError> {
        self.0.heal()
    }

    fn snapshot_due(&self) -> bool {
        self.0.snapshot_due()
    }

    fn save_snapshot(&mut self, data: &usage_ledger::SnapshotData<'_>) -> Result<(), usage_ledger::StoreError> {
        self.0.save_snapshot(data)
    }
}

/// The ledger type the backend keeps.
pub type BackendLedger = Ledger<DynStore>;

/// What the backend is built from besides its configuration: everything it must not pick by
/// itself (the cloud, the time, the randomness, the durable log).
pub struct BackendParts {
    /// The EC2 port: the SDK adapter, or the simulator.
    pub port: Arc<dyn Ec2Port>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The usage ledger, already replayed.
    pub ledger: BackendLedger,
    /// The secret all per-grant key seeds derive from; keep it across restarts (next to the
    /// ledger) so a resumed provision re-derives the same keys.
    pub key_seed: Secret,
    /// Seeds the backoff jitter.
    pub jitter_seed: u64,
    /// Deliberate faults for tests: nothing to set without the `test-switches` feature.
    pub switches: TestSwitches,
    /// The lease this backend acts under when its ledger is shared by a bridge group (see
    /// `standby`); `None` for a ledger of its own (the file store).
    pub tenure: Option<Arc<Tenure>>,
}

/// A region's poller and the task running it.
type PollerTask = (Arc<RegionPoller>, tokio::task::JoinHandle<()>);

/// The state every clone of an [`AwsBackend`] shares: the configuration, the clock, the
/// components (each owning its part behind private fields), and what was learnt per grant and
/// per process.
pub(crate) struct Shared {
    pub(crate) cfg: AwsBootConfig,
    /// The paced EC2 client: the port and the pacer (see `ec2`).
    ec2: Ec2,
    pub(crate) clock: Arc<dyn Clock>,
    /// The usage ledger's only writer (see `journal`).
    journal: Journal,
    key_seed: Secret,
    /// The deliberate faults of tests, asked through their hooks (see `switches`).
    hooks: Hooks,
    /// Each armed deadline's task, by grant (see `arm_deadline`).
    deadlines: Tasks<GrantId>,
    /// Each failed teardown's retrying task, by grant (see `arm_finish`).
    finishing: Tasks<GrantId>,
    /// One teardown of a grant at a time (see `teardown`).
    teardowns: teardown::TeardownLocks,
    /// Each armed final network measurement's task, by grant and instance (see
    /// `arm_network_final`).
    network_finals: Tasks<(GrantId, String)>,
    /// Who may send TerminateInstances for an instance, and the instances gathered into one
    /// call (see `terminations`).
    terminations: Terminations,
    /// Instances RunInstances answered with whose `InstanceLaunched` is not recorded yet, by
    /// grant: the deadline and a rollback end them even while the ledger cannot be written.
    launched_unrecorded: Mutex<BTreeMap<GrantId, String>>,
    /// When this process's backend started, unix ms: an instance launched before it that this
    /// process first sees running ran while nobody looked (see `observe`).
    started_unix_ms: u64,
    /// What the backend knows of each region (see `regions`).
    regions: Regions,
    pollers: Mutex<BTreeMap<RegionLabel, PollerTask>>,
    /// EC2's visibility and dependency lags, learned per region (see `lag`).
    pub(crate) lags: Lags,
    /// The AMI ids aliases resolved to, per region and architecture (see `images`).
    pub(crate) images: crate::images::ImageCache,
    /// The lease the backend acts under, when its ledger is shared (see `standby`).
    tenure: Option<Arc<Tenure>>,
    /// Set by [`AwsBackend::shutdown`]: the trait's calls are refused from then on.
    stopped: std::sync::atomic::AtomicBool,
    /// Set by [`AwsBackend::cancel_provisions`]: provisions stop where they are and roll back
    /// as retryable.
    provisions_cancelled: std::sync::atomic::AtomicBool,
    /// Wakes the provisions waiting in [`AwsBackend::provisions_cancelled`], in the order they
    /// began to wait (a `watch` channel would wake them in an order of its own random choice,
    /// and the simulation would not repeat).
    cancelling: tokio::sync::Notify,
}

impl Shared {
    /// Stops every task of the backend's own: pollers and armed deadlines.
    fn stop_tasks(&self) {
        for (_, (_, task)) in lock(&self.pollers).iter() {
            task.abort();
        }
        self.deadlines.abort_all();
        self.network_finals.abort_all();
        self.finishing.abort_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// The AWS EC2 backend.
///
/// Cheap to clone: clones share one state. Dropping the last clone stops its pollers; the ledger
/// keeps what it knew, and a backend opened on it later resumes (see `recovery`).
#[derive(Clone)]
pub struct AwsBackend {
    pub(crate) shared: Arc<Shared>,
}

fn observed(state: InstanceState) -> ObservedState {
    match state {
        InstanceState::Pending => ObservedState::Pending,
        InstanceState::Running => ObservedState::Running,
        InstanceState::ShuttingDown => ObservedState::ShuttingDown,
        InstanceState::Terminated => ObservedState::Terminated,
        InstanceState::Stopping => ObservedState::Stopping,
        InstanceState::Stopped => ObservedState::Stopped,
    }
}

impl AwsBackend {
    /// A backend over `parts`. Checks the configuration, and loads each region's instance-type
    /// catalogue (a failure there is logged and retried on first use).
    pub async fn new(cfg: &AwsBootConfig, parts: BackendParts) -> anyhow::Result<Self> {
        cfg.validate()?;
        let mut pacer =
            Pacer::new(parts.clock.clone(), ChaCha8Rng::seed_from_u64(parts.jitter_seed), RetryPolicy::default());
        let hooks = Hooks::new(parts.switches);
        pacer = hooks.pacer(pacer);
        if let Some(tenure) = &parts.tenure
            && hooks.heeds_lease()
        {
            pacer = pacer.acting_under(tenure.clone());
        }
        let pacer = Arc::new(pacer);
        let backend = Self {
            shared: Arc::new(Shared {
                cfg: cfg.clone(),
                ec2: Ec2::new(parts.port, pacer),
                started_unix_ms: parts.clock.now_unix_ms(),
                clock: parts.clock,
                journal: Journal::new(parts.ledger),
                key_seed: parts.key_seed,
                hooks,
                deadlines: Tasks::default(),
                finishing: Tasks::default(),
                teardowns: teardown::TeardownLocks::default(),
                network_finals: Tasks::default(),
                terminations: Terminations::default(),
                launched_unrecorded: Mutex::new(BTreeMap::new()),
                regions: Regions::default(),
                pollers: Mutex::new(BTreeMap::new()),
                lags: Lags::default(),
                images: crate::images::ImageCache::default(),
                tenure: parts.tenure,
                stopped: std::sync::atomic::AtomicBool::new(false),
                provisions_cancelled: std::sync::atomic::AtomicBool::new(false),
                cancelling: tokio::sync::Notify::new(),
            }),
        };
        for region in &cfg.regions {
            if let Err(err) = backend.catalogue(region).await {
                tracing::warn!(%region, error = %err, "could not load the instance-type catalogue; retrying on first use");
            }
            match backend.network(region).await {
                Ok(Some(_)) => {}
                Ok(None) => tracing::info!(%region, "no [network] for this region: launching into its default VPC"),
                // A subnet that does not exist, or subnets of several VPCs: the operator's to fix.
                Err(err @ BackendError::InvalidInput { .. }) => return Err(err.into()),
                Err(err) => tracing::warn!(%region, error = %err, "could not resolve [network]; retrying on first use"),
            }
        }
        Ok(backend)
    }

    /// Stops the backend's own tasks (pollers, armed deadlines) at once, as a process exit
    /// would: a deadline task in the middle of a call holds the backend, so dropping the last
    /// handle alone may leave it running. The simulation calls this when it crashes a backend.
    /// From then on `watch_until_exit` and `terminate` are refused (retryably: the next process
    /// takes them) rather than wait on pollers that no longer poll. `provision` is not: a
    /// process that lost its lease is fenced at its pacer (`codes::LEASE_LOST`), which is what
    /// the standby tests show; the bridge runtime refuses provisions once it stops.
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.stop_tasks();
    }

    /// Stops every provision in flight where it is, and every later one before it creates
    /// anything: each records a retryable failure, rolls back what it created and answers
    /// [`BackendError::Unavailable`], so that compute-bridge may send the grant again (here once
    /// the bridge is back, or to another bridge). What a drain does once its time runs out;
    /// deadlines, watches and teardowns go on.
    pub fn cancel_provisions(&self) {
        self.shared.provisions_cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.cancelling.notify_waiters();
    }

    /// Returns once [`AwsBackend::cancel_provisions`] has run.
    pub(crate) async fn provisions_cancelled(&self) {
        loop {
            // Made before the flag is read: a cancellation in between still wakes it.
            let notified = self.shared.cancelling.notified();
            if self.shared.provisions_cancelled.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Refuses a call that waits on the pollers once [`AwsBackend::shutdown`] has run.
    pub(crate) fn refuse_if_stopped(&self) -> Result<(), BackendError> {
        if self.shared.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::Unavailable {
                reason: "this backend was shut down (its process is stopping): send the call to the bridge that runs \
                         next, whose recovery finishes this process's grants"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// How many network figures (of instances of any grant, settled or not) are not complete
    /// yet: provisional or unknown, waiting for their final measurement.
    pub fn network_pending(&self) -> usize {
        self.with_ledger(|l| l.grants().map(|(_, s)| s.network_pending().len()).sum())
    }

    /// The configuration in force.
    pub fn config(&self) -> &AwsBootConfig {
        &self.shared.cfg
    }

    /// Pacing statistics: retries per error code, time spent in our own token buckets.
    pub fn pacing_stats(&self) -> PacingStats {
        self.shared.ec2.stats()
    }

    /// DescribeInstances polls made so far, per region.
    pub fn polls_by_region(&self) -> BTreeMap<RegionLabel, u64> {
        lock(&self.shared.pollers).iter().map(|(r, (p, _))| (r.clone(), p.polls())).collect()
    }

    /// Runs `f` on the ledger's books (every grant's state; see [`Books`]).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        self.shared.journal.with_books(f)
    }

    /// A copy of one grant's state.
    pub fn grant_state(&self, grant: &GrantId) -> Option<GrantState> {
        self.with_ledger(|l| l.grant(grant).cloned())
    }

    /// The deliberate faults of tests (see `switches`): the plain behaviour in every shipped
    /// build.
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.shared.hooks
    }

    /// What the backend knows of each region.
    pub(crate) fn regions(&self) -> &Regions {
        &self.shared.regions
    }

    /// The paced EC2 client.
    pub(crate) fn ec2(&self) -> &Ec2 {
        &self.shared.ec2
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.clock.now_unix_ms()
    }
}
