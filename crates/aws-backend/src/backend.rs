//! `AwsBackend`: the seed's backend with every TODO done, written against the EC2 port so that
//! the same code runs on AWS, on moto and on the simulator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::lag::{Lag, Lags};
use async_trait::async_trait;
use backend_api::{
    AlmanacTick, Backend, BackendError, Capabilities, Clock, ComputeGrant, Envelope, GrantId, ProvisionedInstance,
    RegionLabel, Secret, UsageMetrics,
};
use base64::Engine;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use tracing::Instrument;
use usage_ledger::{
    Books, Event, EventStore, GrantState, Ledger, ObservedState, PendingNetwork, SharedLedger, TerminationReason,
};

use crate::config::AwsBootConfig;
use crate::guest::{GuestSpec, HostKeys, render_user_data};
use crate::keys::SshKeyPair;
use crate::names;
use crate::pacing::{Pacer, PacingStats, RetryPolicy, lock};
use crate::placement::{Candidate, RegionNetwork, RegionPlacement};
use crate::poller::{RegionPoller, Sighting};
use crate::port::{
    Architecture, AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest,
    InstanceInfo, InstanceState, InstanceTypeInfo, Operation, RunInstancesRequest, ShutdownBehavior, codes,
    metric_window,
};
use crate::sizing;
use crate::standby::{LeaseTable, LeaseTimes, Tenure};

/// The name this backend reports.
pub const BACKEND_NAME: &str = "aws";

/// How long an id EC2 returned may stay invisible to Describe before we stop waiting for it.
const VISIBILITY_WINDOW_MS: u64 = 5 * 60_000;
/// The code `run_instance_when_visible` answers, sending nothing, once it is too late to launch.
const TOO_LATE: &str = "Local.TooLateToLaunch";
/// How long a name deleted a moment ago may still answer `InvalidGroup.Duplicate` or
/// `InvalidKeyPair.Duplicate` (a deleted resource stays listed, its name taken, for a while:
/// "Eventual consistency in the Amazon EC2 API"): creation is retried through it this long.
const DELETED_NAME_WINDOW_MS: u64 = 3 * 60_000;
/// The longest wait between two tries of a failed teardown (see `arm_finish`).
const FINISH_RETRY_MAX_MS: u64 = 5 * 60_000;
/// How long DeleteSecurityGroup is retried through `DependencyViolation`.
const DEPENDENCY_WINDOW_MS: u64 = 15 * 60_000;

/// An event store behind a box, so one backend type serves the file and memory stores.
pub struct DynStore(pub Box<dyn EventStore>);

impl EventStore for DynStore {
    fn append(&mut self, records: &[usage_ledger::Record]) -> Result<(), usage_ledger::StoreError> {
        self.0.append(records)
    }

    fn heal(&mut self) -> Result<(), usage_ledger::StoreError> {
        self.0.heal()
    }
}

/// The ledger type the backend keeps.
pub type BackendLedger = Ledger<DynStore>;

/// Switches that break the backend on purpose, so the simulation's self-test can prove each
/// checker catches its kind of bug (`cargo xtask sim --self-test`). Never set in production.
/// The `*_below` switches pick grants whose id's first byte is below the value (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSwitches {
    /// Skip DeleteSecurityGroup during teardown (and record it as deleted anyway).
    pub skip_security_group_delete: bool,
    /// Terminate this long after `valid_to` instead of at it.
    pub terminate_late_ms: u64,
    /// Terminate this long before `valid_to` instead of at it.
    pub terminate_early_ms: u64,
    /// Send every RunInstances call with a ClientToken of its own, so a retry can launch twice.
    pub fresh_client_token_per_call: bool,
    /// Record each `running` observation earlier, by this percentage of the time left until
    /// `valid_to`: an over-bill of about that share of the period.
    pub overbill_percent: u32,
    /// Never record the network sample (the grant is metered 0 bytes).
    pub skip_network_sample: bool,
    /// Never measure network again after CloudWatch's publication lag: the figure taken when
    /// the instance ended stays, provisional and short of its last minutes.
    pub skip_network_final: bool,
    /// Panic in provision.
    pub panic_below: u8,
    /// Admit grants that require TDX (`can_satisfy` and `provision` both).
    pub admit_tdx: bool,
    /// Fail provision, after admitting the grant, with a made-up provider error.
    pub fail_provision_below: u8,
    /// Never record `GrantSettled`.
    pub skip_settle_below: u8,
    /// Launch the smallest type of the catalogue, whether or not it fits the grant.
    pub undersize: bool,
    /// Launch instances without the grant tag.
    pub untagged_instances: bool,
    /// Send calls as fast as they come, without our mirror of EC2's buckets.
    pub skip_pacing: bool,
    /// Provision at once, without waiting for `valid_from`.
    pub ignore_valid_from: bool,
    /// Put the requester's private key in the user data, where EC2's API shows it.
    pub leak_login_key: bool,
    /// With `host_keys = "guest"`, hand the requester the backend's own host key instead of the
    /// one the guest printed to its console (a pin the machine cannot satisfy).
    pub pin_backend_host_key: bool,
    /// Launch with IMDSv1 allowed and a hop limit of 2, within reach of containers.
    pub open_imds: bool,
    /// Tell the guest to power off this many seconds after `valid_to + deadline_grace_s`
    /// instead of at it: a backstop later than the one promised.
    pub guest_poweroff_late_s: u64,
    /// Tell the guest to power off this many seconds before `valid_to + deadline_grace_s`: a
    /// backstop that cuts grants short.
    pub guest_poweroff_early_s: u64,
    /// Recovery follows an instance already past its deadline without terminating it (and
    /// arms no deadline for it): only the guest's power-off ends it.
    pub recovery_skips_overdue: bool,
    /// Record no billing rules with an admission and no `BillingCapped`: a deadline handled
    /// late (after downtime) bills the time the bridge was away.
    pub bill_downtime: bool,
    /// Record a run nobody watched from its first sighting, not from EC2's LaunchTime.
    pub ignore_launch_time: bool,
    /// `watch_until_exit` returns one cpu-second more than the ledger holds.
    pub watch_usage_extra: bool,
    /// Let SSH in from anywhere (`0.0.0.0/0`) besides the configured CIDRs.
    pub open_ingress: bool,
    /// Launch up to `valid_to` itself, ignoring `min_lifetime_s`.
    pub ignore_min_lifetime: bool,
    /// Launch instances without the grant tag, and add it with CreateTags once RunInstances
    /// has answered.
    pub tag_after_create: bool,
    /// Record `LaunchRequested` once RunInstances has answered, not before it.
    pub record_launch_after: bool,
    /// The region poller lists once per watched instance at every poll.
    pub listing_per_instance: bool,
    /// Read only the first page of every paginated listing.
    pub first_page_only: bool,
    /// Act as if the lease were held forever: send EC2 calls past its end, and keep going once
    /// it is lost (a fenced replica that does not stop).
    pub ignore_lease: bool,
}

impl TestSwitches {
    /// True when any switch is set.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

fn picked(grant: &GrantId, below: u8) -> bool {
    grant.0[0] < below
}

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
    /// Deliberate faults for tests.
    pub switches: TestSwitches,
    /// The lease this backend acts under when its ledger is shared by a bridge group (see
    /// `standby`); `None` for a ledger of its own (the file store).
    pub tenure: Option<Arc<Tenure>>,
}

/// Where TerminateInstances stands for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// A caller is sending it.
    InFlight,
    /// EC2 accepted it.
    Accepted,
}

/// The right to send TerminateInstances for one instance: taken by one caller at a time, and
/// given back when dropped unless the call succeeded (`keep`).
struct TerminateClaim<'a> {
    inner: &'a Inner,
    instance_id: String,
    kept: bool,
}

/// What asking for the claim found.
enum ClaimAsk<'a> {
    /// This caller sends the call.
    Taken(TerminateClaim<'a>),
    /// Another caller is sending it now; it may still fail.
    InFlight,
    /// EC2 has accepted it already.
    Accepted,
}

impl<'a> TerminateClaim<'a> {
    fn take(inner: &'a Inner, instance_id: &str) -> ClaimAsk<'a> {
        let mut sent = lock(&inner.terminate_sent);
        match sent.get(instance_id) {
            Some(Claim::InFlight) => ClaimAsk::InFlight,
            Some(Claim::Accepted) => ClaimAsk::Accepted,
            None => {
                sent.insert(instance_id.to_string(), Claim::InFlight);
                ClaimAsk::Taken(Self { inner, instance_id: instance_id.to_string(), kept: false })
            }
        }
    }

    fn keep(mut self) {
        self.kept = true;
        lock(&self.inner.terminate_sent).insert(self.instance_id.clone(), Claim::Accepted);
    }
}

impl Drop for TerminateClaim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.inner.terminate_sent).remove(&self.instance_id);
        }
    }
}

/// A region's poller and the task running it.
type PollerTask = (Arc<RegionPoller>, tokio::task::JoinHandle<()>);

pub(crate) struct Inner {
    pub(crate) cfg: AwsBootConfig,
    pub(crate) port: Arc<dyn Ec2Port>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Shared by every task, with group commit: concurrent grants' appends share an `fsync`.
    pub(crate) ledger: SharedLedger<DynStore>,
    pub(crate) pacer: Arc<Pacer>,
    key_seed: Secret,
    pub(crate) switches: TestSwitches,
    /// Counts RunInstances calls, for `TestSwitches::fresh_client_token_per_call`.
    run_calls: std::sync::atomic::AtomicU64,
    /// Why the ledger last failed to take an append, while it has not taken one since: the
    /// backend is degraded, refuses new grants and keeps terminating.
    ledger_failure: Mutex<Option<String>>,
    /// Each armed deadline's task, by grant (see `arm_deadline`).
    deadlines: Mutex<BTreeMap<GrantId, tokio::task::JoinHandle<()>>>,
    /// Each failed teardown's retrying task, by grant (see `arm_finish`).
    finishing: Mutex<BTreeMap<GrantId, tokio::task::JoinHandle<()>>>,
    /// Each armed final network measurement's task, by grant and instance (see
    /// `arm_network_final`).
    network_finals: Mutex<BTreeMap<(GrantId, String), tokio::task::JoinHandle<()>>>,
    /// Instances TerminateInstances has accepted, or is being sent for: asking again gains
    /// nothing (see `TerminateClaim`).
    terminate_sent: Mutex<BTreeMap<String, Claim>>,
    /// Instances RunInstances answered with whose `InstanceLaunched` is not recorded yet, by
    /// grant: the deadline and a rollback end them even while the ledger cannot be written.
    launched_unrecorded: Mutex<BTreeMap<GrantId, String>>,
    /// When this process's backend started, unix ms: an instance launched before it that this
    /// process first sees running ran while nobody looked (see `observe`).
    started_unix_ms: u64,
    catalogue: Mutex<BTreeMap<RegionLabel, Arc<Vec<InstanceTypeInfo>>>>,
    pollers: Mutex<BTreeMap<RegionLabel, PollerTask>>,
    /// Per region, how many grants may be creating their key pair and group at once (first
    /// come, first served), so that a burst keeps RunInstances, the scarcest bucket, busy from
    /// the start instead of queueing every grant's prerequisites behind every other's.
    prep_slots: Mutex<BTreeMap<RegionLabel, Arc<tokio::sync::Semaphore>>>,
    /// EC2's visibility and dependency lags, learned per region (see `lag`).
    pub(crate) lags: Lags,
    /// Per region, the instances waiting to be terminated together (see `terminate_together`).
    terminate_queue: Mutex<BTreeMap<RegionLabel, Vec<Gathered>>>,
    /// The networks of the regions with a `[network]`, once resolved (see `placement`).
    pub(crate) networks: Mutex<BTreeMap<RegionLabel, RegionNetwork>>,
    /// What each region taught about zones, capacity and the vCPU quota (see `placement`).
    pub(crate) placement: Mutex<BTreeMap<RegionLabel, RegionPlacement>>,
    /// Per region, the turn to ask for the zone offerings (see `refresh_offerings`).
    pub(crate) offering_asks: Mutex<BTreeMap<RegionLabel, Arc<tokio::sync::Mutex<()>>>>,
    /// The AMI ids aliases resolved to, per region and architecture (see `images`).
    pub(crate) images: crate::images::ImageCache,
    /// The lease the backend acts under, when its ledger is shared (see `standby`).
    tenure: Option<Arc<Tenure>>,
}

/// What a retrying task of `arm_finish` tries again.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Finish {
    /// The teardown, for this reason.
    Teardown(TerminationReason),
    /// Recovery's resume of the grant: follow a serving instance to its deadline (or its end),
    /// then tear down.
    Resume,
}

impl From<TerminationReason> for Finish {
    fn from(reason: TerminationReason) -> Self {
        Finish::Teardown(reason)
    }
}

/// An instance waiting in `terminate_together`, and where to tell it what became of it.
type Gathered = (String, tokio::sync::oneshot::Sender<Together>);

/// What became of an instance sent to `terminate_together`.
enum Together {
    /// EC2 accepted the call that named it.
    Done,
    /// Send it alone: the shared call failed for one of its instances (not yet visible, say),
    /// or the call was never made.
    Alone,
    /// The shared call failed for all: this error.
    Failed(Ec2Error),
}

/// How long the first instance to terminate in an instant waits for others of its region.
const TERMINATE_GATHER_MS: u64 = 50;
/// EC2's most instance ids in one TerminateInstances call.
const TERMINATE_IDS_MAX: usize = 1_000;

/// The first caller of an instant: on drop (cancelled while gathering), it lets the others
/// go alone rather than wait forever.
struct GatherLeader<'a> {
    inner: &'a Inner,
    region: RegionLabel,
}

impl GatherLeader<'_> {
    fn take(&self) -> Vec<Gathered> {
        lock(&self.inner.terminate_queue).remove(&self.region).unwrap_or_default()
    }
}

impl Drop for GatherLeader<'_> {
    fn drop(&mut self) {
        for (_, tx) in self.take() {
            let _ = tx.send(Together::Alone);
        }
    }
}

/// How many times a final network measurement is tried (backoff from 1 minute up to an hour
/// between tries: about a day in all) before the figure is left as it is.
const NETWORK_FINAL_TRIES: u32 = 30;

/// Grants per region that may create their key pair and security group at the same time.
const PREP_SLOTS_PER_REGION: usize = 16;

impl Inner {
    /// Stops every task of the backend's own: pollers and armed deadlines.
    fn stop_tasks(&self) {
        for (_, (_, task)) in lock(&self.pollers).iter() {
            task.abort();
        }
        for task in lock(&self.deadlines).values() {
            task.abort();
        }
        for task in lock(&self.network_finals).values() {
            task.abort();
        }
        for task in lock(&self.finishing).values() {
            task.abort();
        }
    }
}

impl Drop for Inner {
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn provider(err: Ec2Error) -> BackendError {
    if err.is_throttle() {
        return BackendError::Throttled { operation: err.operation.name().into() };
    }
    BackendError::Provider {
        operation: err.operation.name().into(),
        retryable: err.is_transient(),
        code: err.code,
        message: err.message,
    }
}

fn local(err: impl std::fmt::Display) -> BackendError {
    BackendError::Local(err.to_string())
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
        if parts.switches.skip_pacing {
            pacer = pacer.without_buckets();
        }
        if parts.switches.first_page_only {
            pacer = pacer.reading_first_pages_only();
        }
        if let Some(tenure) = &parts.tenure
            && !parts.switches.ignore_lease
        {
            pacer = pacer.acting_under(tenure.clone());
        }
        let pacer = Arc::new(pacer);
        let backend = Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                port: parts.port,
                started_unix_ms: parts.clock.now_unix_ms(),
                clock: parts.clock,
                ledger: SharedLedger::new(parts.ledger),
                pacer,
                key_seed: parts.key_seed,
                switches: parts.switches,
                run_calls: std::sync::atomic::AtomicU64::new(0),
                ledger_failure: Mutex::new(None),
                deadlines: Mutex::new(BTreeMap::new()),
                finishing: Mutex::new(BTreeMap::new()),
                network_finals: Mutex::new(BTreeMap::new()),
                terminate_sent: Mutex::new(BTreeMap::new()),
                launched_unrecorded: Mutex::new(BTreeMap::new()),
                catalogue: Mutex::new(BTreeMap::new()),
                pollers: Mutex::new(BTreeMap::new()),
                prep_slots: Mutex::new(BTreeMap::new()),
                lags: Lags::default(),
                terminate_queue: Mutex::new(BTreeMap::new()),
                networks: Mutex::new(BTreeMap::new()),
                placement: Mutex::new(BTreeMap::new()),
                offering_asks: Mutex::new(BTreeMap::new()),
                images: crate::images::ImageCache::default(),
                tenure: parts.tenure,
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
    pub fn shutdown(&self) {
        self.inner.stop_tasks();
    }

    /// Stops acting for good because the lease is lost, for `why`: every task of the backend's
    /// own stops, and the pacer refuses every EC2 call from now on; whatever is in flight is the
    /// next lease holder's recovery's to finish. The process should exit (its supervisor
    /// starts it again as a standby).
    pub fn lose_lease(&self, why: &str) {
        let Some(tenure) = &self.inner.tenure else { return };
        if tenure.lose(why) {
            tracing::error!(
                holder = tenure.holder(),
                epoch = tenure.epoch(),
                why,
                "lost the ledger lease: this bridge stops acting"
            );
        }
        if !self.inner.switches.ignore_lease {
            self.inner.stop_tasks();
        }
    }

    /// Whether this backend may act now: always, for a ledger of its own; while its lease is
    /// surely held, for a shared one.
    pub fn acting(&self) -> bool {
        self.inner.tenure.as_ref().is_none_or(|t| t.may_act(self.now_ms()).is_ok())
    }

    /// When this backend last secured its lease (acquired or renewed it: the send time), for a
    /// shared ledger.
    pub fn lease_secured_unix_ms(&self) -> Option<u64> {
        self.inner.tenure.as_ref().map(|t| t.secured_unix_ms())
    }

    /// Why the lease this backend acted under is lost, once it is.
    pub fn lease_lost(&self) -> Option<String> {
        self.inner.tenure.as_ref().and_then(|t| t.lost())
    }

    /// Renews the lease this backend acts under (`lease`, in `table`, as last renewed) until it
    /// is lost, then stops acting ([`AwsBackend::lose_lease`]) and returns why. The schedule
    /// carries on from the acquisition and the renewals made while the ledger replayed and the
    /// backend started ([`crate::standby::renewing`]). Returns at once for a backend with a
    /// ledger of its own.
    pub async fn keep_lease(&self, table: &dyn LeaseTable, lease: usage_ledger::Lease, times: &LeaseTimes) -> String {
        let Some(tenure) = self.inner.tenure.clone() else {
            return "this backend holds no lease: its ledger is its own".to_string();
        };
        let why = crate::standby::keep_lease(table, lease, &tenure, times, self.inner.clock.as_ref()).await;
        self.lose_lease(&why);
        why
    }

    /// How many network figures (of instances of any grant, settled or not) are not complete
    /// yet: provisional or unknown, waiting for their final measurement.
    pub fn network_pending(&self) -> usize {
        self.with_ledger(|l| l.grants().map(|(_, s)| s.network_pending().len()).sum())
    }

    /// The configuration in force.
    pub fn config(&self) -> &AwsBootConfig {
        &self.inner.cfg
    }

    /// Pacing statistics: retries per error code, time spent in our own token buckets.
    pub fn pacing_stats(&self) -> PacingStats {
        self.inner.pacer.stats()
    }

    /// DescribeInstances polls made so far, per region.
    pub fn polls_by_region(&self) -> BTreeMap<RegionLabel, u64> {
        lock(&self.inner.pollers).iter().map(|(r, (p, _))| (r.clone(), p.polls())).collect()
    }

    /// Runs `f` on the ledger's books (every grant's state; see [`Books`]).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        self.inner.ledger.with_books(f)
    }

    /// A copy of one grant's state.
    pub fn grant_state(&self, grant: &GrantId) -> Option<GrantState> {
        self.with_ledger(|l| l.grant(grant).cloned())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.clock.now_unix_ms()
    }

    /// Appends `event` for `grant`, stamped with the clock; returns once it is durable.
    pub(crate) async fn record(&self, grant: GrantId, event: Event) -> Result<GrantState, BackendError> {
        let now = self.now_ms();
        let result = self.inner.ledger.append(grant, now, event).await;
        self.note_ledger(result.as_ref().err());
        result.map_err(local)
    }

    /// Appends an attempt's admission (`GrantAdmitted` or `GrantRetried`) with the billing rules
    /// it is billed by, in one write.
    async fn admit(&self, grant: GrantId, admission: Event) -> Result<(), BackendError> {
        let now = self.now_ms();
        let mut events = vec![(grant, now, admission)];
        if !self.inner.switches.bill_downtime {
            events.push((grant, now, Event::BillingRulesAdopted { version: usage_ledger::BILLING_RULES_VERSION }));
        }
        self.record_with(|_| (events, ())).await
    }

    /// Appends the events `decide` returns, looking at the books atomically with the append,
    /// with one durable write; returns what `decide` returned besides the events.
    pub(crate) async fn record_with<T>(
        &self,
        decide: impl FnOnce(&Books) -> (Vec<(GrantId, u64, Event)>, T),
    ) -> Result<T, BackendError> {
        let mut wrote = false;
        let result = self
            .inner
            .ledger
            .append_with(|books| {
                let (events, value) = decide(books);
                wrote = !events.is_empty();
                (events, value)
            })
            .await;
        // Only a write says the store takes appends again: a decision to append nothing never
        // reached it, so it must not clear a failure (the bridge would take new grants on a
        // store that still fails).
        if result.is_err() || wrote {
            self.note_ledger(result.as_ref().err());
        }
        result.map_err(local)
    }

    /// Keeps track of whether the ledger takes appends (see `Inner::ledger_failure`).
    fn note_ledger(&self, failure: Option<&usage_ledger::LedgerError>) {
        let mut slot = lock(&self.inner.ledger_failure);
        match failure {
            Some(usage_ledger::LedgerError::Store(err)) => {
                if slot.is_none() {
                    tracing::error!(error = %err, "the usage ledger cannot be written: refusing new grants, still terminating");
                }
                *slot = Some(err.to_string());
                if matches!(err, usage_ledger::StoreError::Fenced { .. }) {
                    drop(slot);
                    self.lose_lease(&err.to_string());
                }
            }
            Some(_) => {}
            None => {
                if slot.take().is_some() {
                    tracing::info!("the usage ledger takes appends again");
                }
            }
        }
    }

    /// Refuses new work while the ledger cannot be written, after asking the store to heal.
    fn ensure_ledger_writable(&self) -> Result<(), BackendError> {
        if lock(&self.inner.ledger_failure).is_none() {
            return Ok(());
        }
        let healed = self.inner.ledger.heal();
        self.note_ledger(healed.as_ref().err());
        match lock(&self.inner.ledger_failure).as_ref() {
            None => Ok(()),
            Some(err) => Err(BackendError::Local(format!(
                "the usage ledger cannot be written ({err}): new grants are refused until it can (free space or fix the disk under ledger_path); grants in flight are still terminated at their deadline"
            ))),
        }
    }

    /// Appends the event `decide` returns for the grant's current state, atomically with the
    /// look at the state; nothing when it returns `None`.
    pub(crate) async fn record_if(
        &self,
        grant: GrantId,
        decide: impl FnOnce(Option<&GrantState>) -> Option<Event>,
    ) -> Result<(), BackendError> {
        let now = self.now_ms();
        self.record_with(|l| (decide(l.grant(&grant)).map(|e| (grant, now, e)).into_iter().collect(), ())).await
    }

    fn region_for(&self, envelope: &Envelope) -> Result<RegionLabel, BackendError> {
        let cfg = &self.inner.cfg;
        match envelope.region.as_ref() {
            None => Ok(cfg.default_region().clone()),
            Some(region) if cfg.allows(region.as_str()) => Ok(region.clone()),
            Some(region) => Err(BackendError::RegionNotAllowed {
                region: region.to_string(),
                allowed: cfg.regions.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    /// DescribeInstanceTypes within the configured families, cached per region.
    pub(crate) async fn catalogue(&self, region: &RegionLabel) -> Result<Arc<Vec<InstanceTypeInfo>>, BackendError> {
        if let Some(types) = lock(&self.inner.catalogue).get(region) {
            return Ok(types.clone());
        }
        let families = self.inner.cfg.instance_families.clone();
        let types = self
            .inner
            .pacer
            .pages(region, Operation::DescribeInstanceTypes, false, |page| {
                self.inner.port.describe_instance_types_page(region, families.clone(), page)
            })
            .await
            .map_err(provider)?;
        let types = Arc::new(sizing::sorted(types));
        lock(&self.inner.catalogue).insert(region.clone(), types.clone());
        Ok(types)
    }

    /// The region's catalogue without the types whose architecture has no AMI there, smallest
    /// first (see `sizing::launchable`).
    async fn launchable_types(&self, region: &RegionLabel) -> Result<Vec<InstanceTypeInfo>, BackendError> {
        let types = self.catalogue(region).await?;
        sizing::launchable(&types, &self.inner.cfg.architectures(region.as_str()), region.as_str())
    }

    /// The region's shared poller, started on first use.
    pub(crate) fn poller(&self, region: &RegionLabel) -> Arc<RegionPoller> {
        let mut pollers = lock(&self.inner.pollers);
        if let Some((poller, _)) = pollers.get(region) {
            return poller.clone();
        }
        let poller = Arc::new(
            RegionPoller::new(
                region.clone(),
                self.inner.cfg.owner.clone(),
                self.inner.cfg.poll_interval_ms,
                self.inner.port.clone(),
                self.inner.clock.clone(),
                self.inner.pacer.clone(),
            )
            .listing_per_instance(self.inner.switches.listing_per_instance),
        );
        let task = tokio::spawn(poller.clone().run());
        pollers.insert(region.clone(), (poller.clone(), task));
        poller
    }

    fn now_tick(&self) -> AlmanacTick {
        self.inner.cfg.almanac.unix_ms_to_tick(self.now_ms())
    }

    /// Checks a grant without touching the cloud: TDX, deadline, manifest ranges.
    fn check_grant(&self, grant: &ComputeGrant<'_>) -> Result<(), BackendError> {
        let manifest = grant.manifest;
        if manifest.tdx_required && !self.inner.switches.admit_tdx {
            return Err(BackendError::Unsatisfiable {
                reason:
                    "the grant requires Intel TDX and AWS offers no TDX instances: route it to a TDX-capable backend"
                        .into(),
            });
        }
        let now = self.now_tick();
        if grant.valid_to <= now {
            return Err(BackendError::DeadlinePassed { valid_to: grant.valid_to, now });
        }
        self.check_time_left(grant.valid_to)?;
        let wait_ms = self.inner.cfg.almanac.tick_to_unix_ms(grant.valid_from).saturating_sub(self.now_ms());
        if wait_ms > self.inner.cfg.max_start_wait_ms() {
            return Err(BackendError::InvalidInput {
                field: "grant.valid_from".into(),
                reason: format!(
                    "{} is {} s away, more than max_start_wait_s ({} s) to hold a provision open: send the grant closer to its start",
                    grant.valid_from,
                    wait_ms / 1_000,
                    self.inner.cfg.max_start_wait_s
                ),
            });
        }
        if grant.valid_from > grant.valid_to {
            return Err(BackendError::InvalidInput {
                field: "grant.valid_from".into(),
                reason: format!("{} is after valid_to {}", grant.valid_from, grant.valid_to),
            });
        }
        if manifest.cpu_millicores == 0 || manifest.ram_mib == 0 {
            return Err(BackendError::InvalidInput {
                field: "manifest".into(),
                reason: format!(
                    "cpu_millicores {} and ram_mib {} must both be above 0",
                    manifest.cpu_millicores, manifest.ram_mib
                ),
            });
        }
        if manifest.storage_gib > sizing::MAX_ROOT_VOLUME_GIB {
            return Err(BackendError::Unsatisfiable {
                reason: format!(
                    "storage_gib {} exceeds the largest gp3 volume, {} GiB",
                    manifest.storage_gib,
                    sizing::MAX_ROOT_VOLUME_GIB
                ),
            });
        }
        Ok(())
    }

    /// Refuses when less than `min_lifetime_s` is left until `valid_to`: too late to launch.
    fn check_time_left(&self, valid_to: AlmanacTick) -> Result<(), BackendError> {
        let cfg = &self.inner.cfg;
        let left_ms = cfg.almanac.tick_to_unix_ms(valid_to).saturating_sub(self.now_ms());
        if left_ms < cfg.min_lifetime_ms() && !(self.inner.switches.ignore_min_lifetime && left_ms > 0) {
            return Err(BackendError::Unsatisfiable {
                reason: format!(
                    "valid_to {valid_to} is {} s away, less than min_lifetime_s ({} s): too late to launch an instance; send the grant with more time left",
                    left_ms / 1_000,
                    cfg.min_lifetime_s
                ),
            });
        }
        Ok(())
    }

    fn keys_for(&self, grant: &GrantId) -> Result<(SshKeyPair, SshKeyPair), BackendError> {
        let comment = format!("compute-bridge-{}", grant.short());
        let login = SshKeyPair::ed25519_from_seed(names::key_seed(&self.inner.key_seed, grant, "login"), &comment)
            .map_err(local)?;
        let host = SshKeyPair::ed25519_from_seed(names::key_seed(&self.inner.key_seed, grant, "host"), &comment)
            .map_err(local)?;
        Ok((login, host))
    }

    async fn provision_inner(
        &self,
        grant: &ComputeGrant<'_>,
        region: RegionLabel,
    ) -> Result<ProvisionedInstance, BackendError> {
        let cfg = &self.inner.cfg;
        let types = self.launchable_types(&region).await?;
        let mut fitting = sizing::by_price(sizing::fitting(&types, grant.manifest)?, &cfg.prices_for(region.as_str()));
        if self.inner.switches.undersize {
            fitting = types.iter().take(1).cloned().collect();
        }
        // Every architecture the launch may need has its AMI before anything is created: an
        // alias that has never resolved fails the provision here, with nothing to roll back.
        let images = self.images_for(&region, &fitting).await?;
        let storage_gib = grant.manifest.storage_gib.max(cfg.min_root_volume_gib);
        let valid_to_unix_ms = cfg.almanac.tick_to_unix_ms(grant.valid_to);
        let (login, host) = self.keys_for(&grant.id)?;
        let mut user_data = render_user_data(
            &cfg.guest,
            &GuestSpec {
                grant_id: grant.id,
                image_hash: grant.manifest.image_post_hash,
                authorized_key_openssh: &login.public_openssh,
                host_key: (cfg.guest.host_keys == HostKeys::UserData).then_some(&host),
                valid_to_unix_s: (valid_to_unix_ms.div_ceil(1_000) + self.inner.switches.guest_poweroff_late_s)
                    .saturating_sub(self.inner.switches.guest_poweroff_early_s),
            },
        )
        .map_err(|e| BackendError::InvalidInput { field: "grant".into(), reason: e.to_string() })?;
        if self.inner.switches.leak_login_key {
            user_data.push_str(&format!("\n# {}\n", login.private_openssh.expose().replace('\n', "\n# ")));
        }
        let network = self.network(&region).await?;
        // The vCPU quota, when known, is checked before anything is created: a grant it cannot
        // hold is refused retryably, and the types it cannot hold are never tried.
        let headroom = self.vcpu_headroom(&region);
        if let Some(room) = headroom {
            let needed = fitting.iter().map(|t| t.vcpus).min().unwrap_or(0);
            if needed > room && self.grant_state(&grant.id).is_none_or(|s| s.is_settled()) {
                return Err(crate::refusals::no_vcpu_headroom(&region, room, needed));
            }
        }
        self.refresh_offerings(&region).await;

        // Validation is over: from here on things get created, and every step is recorded
        // before the next one starts.
        let first = &fitting[0];
        let admission = Event::GrantAdmitted {
            region: region.to_string(),
            instance_type: first.instance_type.clone(),
            vcpus: first.vcpus,
            memory_mib: first.memory_mib,
            storage_bytes: u64::from(storage_gib) << 30,
            valid_to: grant.valid_to,
            valid_to_unix_ms,
            key_name: names::key_name(&grant.id),
            group_name: names::group_name(&grant.id),
        };
        match self.grant_state(&grant.id) {
            // The last attempt failed with an error that invited a retry, and was rolled back:
            // a new attempt, with ClientTokens of its own. Its predecessor holds nothing, so
            // two instances of the grant are never up at once.
            Some(state) if state.is_settled() && state.retry_allowed() => {
                tracing::info!(
                    attempt = state.attempt() + 1,
                    "retrying a provision that failed with a retryable error"
                );
                self.admit(grant.id, admission.retried(state.attempt() + 1)).await?;
            }
            Some(state) if state.is_settled() => {
                return Err(BackendError::InvalidInput {
                    field: "grant.id".into(),
                    reason: format!(
                        "grant {} was already provisioned and settled, and its last attempt did not fail with a retryable error; a grant provisions once",
                        grant.id
                    ),
                });
            }
            Some(state) if state.termination().is_some() => {
                return Err(BackendError::InvalidInput {
                    field: "grant.id".into(),
                    reason: format!("grant {} is being torn down; wait for terminate to finish", grant.id),
                });
            }
            Some(_) => tracing::info!("resuming a provision the ledger shows unfinished"),
            None => self.admit(grant.id, admission).await?,
        }

        let created = async {
            if picked(&grant.id, self.inner.switches.panic_below) {
                panic!("TestSwitches::panic_below: deliberate panic in provision of grant {}", grant.id.short());
            }
            if picked(&grant.id, self.inner.switches.fail_provision_below) {
                return Err(BackendError::Provider {
                    operation: "RunInstances".into(),
                    code: "TestSwitches.FailProvision".into(),
                    message: "deliberate provision failure".into(),
                    retryable: false,
                });
            }
            let slots = lock(&self.inner.prep_slots)
                .entry(region.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PREP_SLOTS_PER_REGION)))
                .clone();
            let slot = slots.acquire_owned().await.map_err(local)?;
            let vpc_id = network.as_ref().map(|n| n.vpc_id.clone());
            let (key, group) = tokio::join!(
                self.ensure_key_pair(&grant.id, &region, &login),
                self.ensure_security_group(&grant.id, &region, vpc_id)
            );
            drop(slot);
            let key_created = key?;
            let (group_id, group_created) = group?;
            // RunInstances needs both visible: wait out the lag since the later creation.
            let created = key_created.max(group_created);
            let request = RunInstancesRequest {
                // Set per attempt, to the AMI of the attempt's architecture (`ensure_instance`).
                image_id: String::new(),
                instance_type: String::new(),
                key_name: names::key_name(&grant.id),
                security_group_ids: vec![group_id],
                user_data_base64: base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes()),
                client_token: String::new(),
                root_volume_gib: storage_gib,
                root_device_name: cfg.root_device_name.clone(),
                imdsv2_required: !self.inner.switches.open_imds,
                imds_hop_limit: if self.inner.switches.open_imds { 2 } else { 1 },
                shutdown_behavior: ShutdownBehavior::Terminate,
                instance_tags: {
                    let mut tags = names::grant_tags(cfg, &grant.id);
                    if self.inner.switches.untagged_instances || self.inner.switches.tag_after_create {
                        tags.remove(crate::config::GRANT_TAG);
                    }
                    tags
                },
                volume_tags: names::grant_tags(cfg, &grant.id),
                subnet_id: None,
                availability_zone: None,
            };
            let instance_id = self
                .ensure_instance(
                    &grant.id,
                    &region,
                    &fitting,
                    &images,
                    network.as_ref(),
                    headroom,
                    request,
                    grant.valid_to,
                    created,
                )
                .await?;
            self.arm_deadline(grant.id, region.clone(), valid_to_unix_ms);
            tracing::Span::current().record("instance_id", instance_id.as_str());
            let info = self.wait_running(&grant.id, &region, &instance_id, valid_to_unix_ms).await?;
            let host_public = match cfg.guest.host_keys {
                HostKeys::UserData => host.public_openssh.clone(),
                HostKeys::Guest if self.inner.switches.pin_backend_host_key => host.public_openssh.clone(),
                HostKeys::Guest => self.read_host_key(&grant.id, &region, &instance_id, valid_to_unix_ms).await?,
            };
            Ok::<_, BackendError>((info, host_public))
        }
        .await;

        match created {
            Ok((info, host_public)) => Ok(ProvisionedInstance {
                backend: BACKEND_NAME.into(),
                grant_id: grant.id,
                region,
                instance_id: info.instance_id,
                public_dns: info.public_dns_name,
                ssh_host_public_key: host_public,
                ssh_private_key: login.private_openssh.clone(),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "provision failed; rolling back");
                let retryable = err.is_retryable();
                if let Err(record) = self
                    .record_if(grant.id, |s| {
                        s.filter(|s| !s.is_settled()).map(|_| Event::ProvisionFailed { retryable })
                    })
                    .await
                {
                    tracing::error!(error = %record, "could not record the failure; the grant cannot be retried");
                }
                if let Err(rollback) = self.teardown(grant.id, TerminationReason::Rollback).await {
                    // Everything is in the ledger, so recovery and the reaper finish the job.
                    tracing::error!(error = %rollback, "rollback incomplete; recovery will finish it");
                }
                Err(err)
            }
        }
    }

    async fn ensure_key_pair(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        login: &SshKeyPair,
    ) -> Result<Option<u64>, BackendError> {
        if self.grant_state(grant).is_some_and(|s| s.key_pair().is_some()) {
            return Ok(None);
        }
        let key_name = names::key_name(grant);
        let request = ImportKeyPairRequest {
            key_name: key_name.clone(),
            public_key_openssh: login.public_openssh.clone(),
            tags: names::grant_tags(&self.inner.cfg, grant),
        };
        // On a retried grant the name was deleted by the earlier attempt's rollback a moment
        // ago, and EC2 may still hold it (`InvalidKeyPair.Duplicate`) for a while: import again
        // until it is free, for up to DELETED_NAME_WINDOW_MS.
        let retried = self.grant_state(grant).is_some_and(|s| s.attempt() > 0);
        let window_ms = if retried { DELETED_NAME_WINDOW_MS } else { 0 };
        let result = self
            .inner
            .pacer
            .call_until_settled(
                region,
                Operation::ImportKeyPair,
                window_ms,
                |err| err.is(codes::KEY_PAIR_DUPLICATE),
                || self.inner.port.import_key_pair(region, request.clone()),
            )
            .await;
        let key_pair_id = match result {
            Ok(info) => info.key_pair_id,
            // A key pair of this name can only be ours from an attempt whose record was lost;
            // its key is derived from the same seed, so it is the same key.
            Err(err) if err.is(codes::KEY_PAIR_DUPLICATE) => String::new(),
            Err(err) => return Err(provider(err)),
        };
        let created = self.now_ms();
        self.record(*grant, Event::KeyPairImported { key_name, key_pair_id }).await?;
        Ok(Some(created))
    }

    /// The grant's group with SSH ingress authorized, and when it was created if it was created
    /// now (EC2 may not show it to other calls yet).
    async fn ensure_security_group(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        vpc_id: Option<String>,
    ) -> Result<(String, Option<u64>), BackendError> {
        let cfg = &self.inner.cfg;
        let mut created = None;
        let group_id = match self.grant_state(grant).and_then(|s| s.security_group().map(str::to_string)) {
            Some(id) => id,
            None => {
                let group_name = names::group_name(grant);
                let request = CreateSecurityGroupRequest {
                    group_name: group_name.clone(),
                    vpc_id,
                    description: format!("compute-bridge grant {}: SSH only", grant.short()),
                    tags: names::grant_tags(cfg, grant),
                };
                let started = self.now_ms();
                let mut attempt = 0;
                let group_id = loop {
                    let result = self
                        .inner
                        .pacer
                        .call(region, Operation::CreateSecurityGroup, || {
                            self.inner.port.create_security_group(region, request.clone())
                        })
                        .await;
                    match result {
                        Ok(id) => break id,
                        Err(err) if err.is(codes::GROUP_DUPLICATE) => {
                            let found = self.find_group_by_name(grant, region).await?.ok_or_else(|| {
                                BackendError::Provider {
                                    operation: "DescribeSecurityGroups".into(),
                                    code: codes::GROUP_NOT_FOUND.into(),
                                    message: format!("group {group_name} exists but stayed invisible"),
                                    retryable: true,
                                }
                            })?;
                            // A group deleted a moment ago (an earlier attempt's rollback) stays
                            // listed and keeps its name for a while, but a lookup by its id
                            // knows it is gone: then create it again once the name is free.
                            if self.group_exists(region, &found).await?
                                || self.now_ms() >= started + DELETED_NAME_WINDOW_MS
                            {
                                break found;
                            }
                            self.inner.pacer.backoff(attempt.min(4) + 2).await;
                            attempt += 1;
                        }
                        Err(err) => return Err(crate::refusals::security_group(region, err)),
                    }
                };
                created = Some(self.now_ms());
                self.record(*grant, Event::SecurityGroupCreated { group_id: group_id.clone(), group_name }).await?;
                group_id
            }
        };
        let request = AuthorizeIngressRequest {
            group_id: group_id.clone(),
            port: 22,
            cidrs: {
                let mut cidrs: Vec<String> = cfg.ssh_ingress_cidrs.iter().map(ToString::to_string).collect();
                if self.inner.switches.open_ingress {
                    cidrs.push("0.0.0.0/0".into());
                }
                cidrs
            },
        };
        // A group just created may not be visible yet.
        let result = self
            .call_when_visible(
                region,
                Operation::AuthorizeSecurityGroupIngress,
                created,
                false,
                Ec2Error::is_not_found,
                || self.inner.port.authorize_ingress(region, request.clone()),
            )
            .await;
        match result {
            Ok(()) => Ok((group_id, created)),
            Err(err) if err.is(codes::PERMISSION_DUPLICATE) => Ok((group_id, created)),
            Err(err) => Err(provider(err)),
        }
    }

    /// `op` on resources created at `created` (`None`: long ago): waits out the learned
    /// visibility lag (a quarter longer with `margin`), retries while `invisible` holds for the
    /// error within the window, and learns from how it went.
    async fn call_when_visible<T, F, Fut>(
        &self,
        region: &RegionLabel,
        op: Operation,
        created: Option<u64>,
        margin: bool,
        invisible: impl Fn(&Ec2Error) -> bool,
        call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        self.wait_lag(region, Lag::Visibility, created, margin).await;
        let met = std::sync::atomic::AtomicBool::new(false);
        let settling = |err: &Ec2Error| {
            let settling = invisible(err);
            met.fetch_or(settling, std::sync::atomic::Ordering::Relaxed);
            settling
        };
        let result = self.inner.pacer.call_until_settled(region, op, VISIBILITY_WINDOW_MS, settling, call).await;
        if result.is_ok() {
            self.learn_lag(region, Lag::Visibility, created, met.into_inner());
        }
        result
    }

    /// Sleeps until `lag` has likely passed since `since` (at once without `since`); with
    /// `margin`, a quarter longer, where a failed call costs more than the wait (RunInstances,
    /// the scarcest bucket; a group deletion nobody waits for).
    async fn wait_lag(&self, region: &RegionLabel, lag: Lag, since: Option<u64>, margin: bool) {
        if let Some(at) = since {
            let wait = self.inner.lags.wait_ms(region, lag);
            let wait = if margin { wait + wait / 4 } else { wait };
            self.inner.clock.sleep_until_unix_ms(at.saturating_add(wait)).await;
        }
    }

    /// Learns from a call that succeeded now, `met` saying whether it first met `lag`.
    fn learn_lag(&self, region: &RegionLabel, lag: Lag, since: Option<u64>, met: bool) {
        if let Some(at) = since {
            self.inner.lags.learn(region, lag, self.now_ms().saturating_sub(at), met);
        }
    }

    /// True when DescribeSecurityGroups by id shows `group_id`; false when it answers
    /// `InvalidGroup.NotFound` (deleted, though listings may still show it).
    async fn group_exists(&self, region: &RegionLabel, group_id: &str) -> Result<bool, BackendError> {
        let ids = vec![group_id.to_string()];
        match self
            .inner
            .pacer
            .pages(region, Operation::DescribeSecurityGroups, true, |page| {
                self.inner.port.describe_security_groups_page(region, ids.clone(), Vec::new(), page)
            })
            .await
        {
            Ok(groups) => Ok(groups.iter().any(|g| g.group_id == group_id)),
            Err(err) if err.is(codes::GROUP_NOT_FOUND) => Ok(false),
            Err(err) => Err(provider(err)),
        }
    }

    /// The group named for `grant`, if Describe shows it (retrying briefly for visibility).
    pub(crate) async fn find_group_by_name(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
    ) -> Result<Option<String>, BackendError> {
        let filters = vec![Filter { name: "group-name".into(), values: vec![names::group_name(grant)] }];
        let started = self.now_ms();
        let mut attempt = 0;
        while self.now_ms() < started + VISIBILITY_WINDOW_MS {
            let groups = self
                .inner
                .pacer
                .pages(region, Operation::DescribeSecurityGroups, false, |page| {
                    self.inner.port.describe_security_groups_page(region, Vec::new(), filters.clone(), page)
                })
                .await
                .map_err(provider)?;
            if let Some(group) = groups.into_iter().next() {
                return Ok(Some(group.group_id));
            }
            self.inner.pacer.backoff(attempt.min(6)).await;
            attempt += 1;
        }
        Ok(None)
    }

    /// The grant's instance: the one the ledger knows, or one launched now. Tries the places
    /// `placement::candidates` orders (other zones of a type before other types), each with a
    /// ClientToken of its own that names its type and zone (`placement::try_index`), so at
    /// most one instance results; a resumed launch is re-sent with its own token, type, zone and
    /// AMI first (the alias may have moved on since, and the same token with another image
    /// would be `IdempotentParameterMismatch`). Each other try launches the AMI of its type's
    /// architecture from `images`. A shortage takes its (type, zone) out of the candidates for
    /// a while, an `Unsupported` until the offerings are asked again.
    #[allow(clippy::too_many_arguments, reason = "one launch's inputs, each already resolved by the caller")]
    async fn ensure_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        fitting: &[InstanceTypeInfo],
        images: &BTreeMap<Architecture, String>,
        network: Option<&RegionNetwork>,
        headroom: Option<u32>,
        template: RunInstancesRequest,
        valid_to: AlmanacTick,
        created: Option<u64>,
    ) -> Result<String, BackendError> {
        let state = self.grant_state(grant).ok_or_else(|| local("grant vanished from the ledger"))?;
        if let Some(id) = state.instance() {
            return Ok(id.to_string());
        }
        let position = |name: &str| fitting.iter().position(|t| t.instance_type == name);
        let mut tries: Vec<(usize, Candidate)> = Vec::new();
        // A launch requested before a crash goes first, exactly as it was sent.
        let resumed = state.launch_requested().and_then(names::token_attempt);
        let mut resumed_type = None;
        if let Some(index) = resumed {
            let (type_pos, zone) = crate::placement::from_try_index(index, region);
            resumed_type = Some(type_pos);
            if let Some(itype) = fitting.get(type_pos) {
                let subnet_id = zone.as_ref().and_then(|z| network?.subnets_by_zone.get(z)?.first().cloned());
                tries.push((index, Candidate { itype: itype.clone(), zone, subnet_id }));
            }
        }
        let candidates = {
            let mut placement = lock(&self.inner.placement);
            let known = placement.entry(region.clone()).or_default();
            crate::placement::candidates(fitting, known, network, self.now_ms())
        };
        for candidate in candidates {
            let Some(type_pos) = position(&candidate.itype.instance_type) else { continue };
            // Types before the resumed one were tried before the crash; the quota rules out
            // types it cannot hold.
            if resumed_type.is_some_and(|r| type_pos < r) || headroom.is_some_and(|room| candidate.itype.vcpus > room) {
                continue;
            }
            let index = crate::placement::try_index(type_pos, candidate.zone.as_deref());
            if !tries.iter().any(|(i, _)| *i == index) {
                tries.push((index, candidate));
            }
        }
        let mut tried = Vec::new();
        for (index, candidate) in tries {
            let itype = &candidate.itype;
            let token = names::client_token_for(grant, state.attempt(), index);
            let recorded = (state.launch_requested() == Some(token.as_str()))
                .then(|| state.launch_requested_image().map(str::to_string))
                .flatten();
            let image_id = match recorded.or_else(|| images.get(&itype.architecture).cloned()) {
                Some(id) => id,
                None => {
                    return Err(local(format!(
                        "no AMI was resolved for {} ({}) in {region}",
                        itype.instance_type, itype.architecture
                    )));
                }
            };
            let request = RunInstancesRequest {
                instance_type: itype.instance_type.clone(),
                client_token: token.clone(),
                image_id: image_id.clone(),
                subnet_id: candidate.subnet_id.clone(),
                availability_zone: candidate.zone.clone(),
                ..template.clone()
            };
            let launch = Event::LaunchRequested {
                client_token: token.clone(),
                instance_type: itype.instance_type.clone(),
                image_id: Some(image_id),
            };
            let record_launch = |launch: Event| {
                self.record_if(*grant, |s| {
                    (s.and_then(GrantState::launch_requested) != Some(token.as_str())).then_some(launch)
                })
            };
            if !self.inner.switches.record_launch_after {
                record_launch(launch.clone()).await?;
            }
            let place = match &candidate.zone {
                Some(zone) => format!("{} in {zone}", itype.instance_type),
                None => itype.instance_type.clone(),
            };
            tried.push(place.clone());
            let result = self.run_instance_when_visible(region, &request, valid_to, created).await;
            if self.inner.switches.record_launch_after {
                record_launch(launch).await?;
            }
            let now = self.now_ms();
            match result {
                Ok(info) => {
                    if self.inner.switches.tag_after_create {
                        let tags = names::grant_tags(&self.inner.cfg, grant);
                        let id = info.instance_id.clone();
                        let tagged = self
                            .inner
                            .pacer
                            .call(region, Operation::CreateTags, || {
                                self.inner.port.create_tags(region, vec![id.clone()], tags.clone())
                            })
                            .await;
                        if let Err(err) = tagged {
                            tracing::warn!(error = %err, "CreateTags failed");
                        }
                    }
                    if !info.availability_zone.is_empty() {
                        lock(&self.inner.placement)
                            .entry(region.clone())
                            .or_default()
                            .note_success(&info.availability_zone, now);
                    }
                    // The deadline is armed from EC2's answer, before the ledger is asked to
                    // record it: a ledger that fails now must not leave the instance unended.
                    lock(&self.inner.launched_unrecorded).insert(*grant, info.instance_id.clone());
                    self.arm_deadline(*grant, region.clone(), self.inner.cfg.almanac.tick_to_unix_ms(valid_to));
                    self.record(
                        *grant,
                        Event::InstanceLaunched {
                            instance_id: info.instance_id.clone(),
                            client_token: token,
                            instance_type: itype.instance_type.clone(),
                            vcpus: itype.vcpus,
                            memory_mib: itype.memory_mib,
                        },
                    )
                    .await?;
                    lock(&self.inner.launched_unrecorded).remove(grant);
                    return Ok(info.instance_id);
                }
                Err(err) if err.is(codes::INSUFFICIENT_INSTANCE_CAPACITY) => {
                    if let Some(zone) = &candidate.zone {
                        lock(&self.inner.placement).entry(region.clone()).or_default().note_exhausted(
                            &itype.instance_type,
                            zone,
                            now,
                        );
                    }
                    tracing::info!(place, "no capacity; trying the next place");
                }
                // The zone does not offer the type after all (or EC2 picked one that does not):
                // the next place may launch.
                Err(err) if err.is(codes::UNSUPPORTED) => {
                    if let Some(zone) = &candidate.zone {
                        lock(&self.inner.placement)
                            .entry(region.clone())
                            .or_default()
                            .note_unsupported(&itype.instance_type, zone);
                    }
                    tracing::info!(place, error = %err, "type not offered in the zone; trying the next place");
                }
                Err(err) if err.is(codes::VCPU_LIMIT_EXCEEDED) => {
                    let in_use = self.vcpus_in_use(region);
                    lock(&self.inner.placement).entry(region.clone()).or_default().note_vcpu_limit(
                        in_use,
                        itype.vcpus,
                        now,
                    );
                    return Err(crate::refusals::launch(region, &request, err));
                }
                Err(err) if err.is(TOO_LATE) => {
                    return Err(self.check_time_left(valid_to).err().unwrap_or_else(|| local(err)));
                }
                Err(err) if err.is(codes::IDEMPOTENT_INSTANCE_TERMINATED) => {
                    // This attempt's instance launched and has already ended (a resume after
                    // a crash, or a retry after a lost response): record it, so that teardown
                    // and the bill account for it, and fail the attempt; a retry starts afresh.
                    self.adopt_unrecorded_instance(grant, region, &token).await?;
                    return Err(BackendError::Provider {
                        operation: Operation::RunInstances.name().into(),
                        code: err.code,
                        message: format!("the instance launched with ClientToken {token} has already terminated"),
                        retryable: true,
                    });
                }
                Err(err) => return Err(crate::refusals::launch(region, &request, err)),
            }
        }
        Err(BackendError::CapacityUnavailable { region: region.to_string(), instance_types: tried })
    }

    /// RunInstances, retried (with the same token, so at most one instance results) while the
    /// key pair or group it names is not yet visible to EC2.
    /// Each call first checks that `min_lifetime_s` is still left before `valid_to`, and
    /// answers [`TOO_LATE`] without sending anything when it is not.
    async fn run_instance_when_visible(
        &self,
        region: &RegionLabel,
        request: &RunInstancesRequest,
        valid_to: AlmanacTick,
        created: Option<u64>,
    ) -> Result<InstanceInfo, Ec2Error> {
        let invisible = |err: &Ec2Error| err.is(codes::KEY_PAIR_NOT_FOUND) || err.is(codes::GROUP_NOT_FOUND);
        self.call_when_visible(region, Operation::RunInstances, created, true, invisible, || {
            let too_late = self.check_time_left(valid_to).is_err();
            let mut request = request.clone();
            if self.inner.switches.fresh_client_token_per_call {
                let n = self.inner.run_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                request.client_token = format!("{}-{n}", request.client_token);
            }
            let port = self.inner.port.clone();
            async move {
                if too_late {
                    return Err(Ec2Error::new(Operation::RunInstances, TOO_LATE, "not sent: too close to valid_to"));
                }
                port.run_instance(region, request).await
            }
        })
        .await
    }

    /// Records a state observation when it differs from the last one recorded.
    ///
    /// With `missed`, nobody recorded the instance pending: it became `running` while nobody
    /// looked (the bridge or its ledger was down, or the instance was found by its token). The
    /// period then opens at EC2's LaunchTime, not at this observation (the fold lets the
    /// attempt's first period reach back to its launch request): EC2 billed it from about then,
    /// and the time nobody looked is not lost; it over-bills at most the time the instance was
    /// pending. A `running` shown after the instance was seen shutting down or terminated is
    /// a Describe still showing the state from before TerminateInstances, and is ignored: those
    /// states never go back.
    pub(crate) async fn observe(
        &self,
        grant: &GrantId,
        info: &InstanceInfo,
        at_unix_ms: u64,
        missed: bool,
    ) -> Result<(), BackendError> {
        let state = observed(info.state);
        let instance_id = info.instance_id.clone();
        let overbill = u64::from(self.inner.switches.overbill_percent);
        self.record_if(*grant, |s| {
            let s = s?;
            let mut at_unix_ms = at_unix_ms;
            let ended = matches!(s.last_state(), Some(ObservedState::ShuttingDown | ObservedState::Terminated));
            if state == ObservedState::Running && ended {
                return None;
            }
            if missed
                && state == ObservedState::Running
                && s.running_since_unix_ms().is_none()
                && !self.inner.switches.ignore_launch_time
            {
                at_unix_ms = at_unix_ms.min(info.launch_time_unix_ms);
            }
            if overbill > 0 && state == ObservedState::Running {
                at_unix_ms -= s.valid_to_unix_ms().saturating_sub(at_unix_ms) * overbill / 100;
            }
            (s.instance() == Some(instance_id.as_str()) && s.last_state() != Some(state))
                .then_some(Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms: at_unix_ms })
        })
        .await
    }

    /// Whether a sighting of `info` comes after a run nobody watched: this process never saw it
    /// pending, and it was launched before this process started (by a process that died, or
    /// whose ledger failed, before recording its run).
    fn missed(&self, info: &InstanceInfo, seen_pending: bool) -> bool {
        !seen_pending && info.launch_time_unix_ms < self.inner.started_unix_ms
    }

    /// Waits (through the region's poller) until the instance runs.
    async fn wait_running(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        deadline_unix_ms: u64,
    ) -> Result<InstanceInfo, BackendError> {
        let mut rx = self.poller(region).subscribe(instance_id);
        let mut seen_pending = false;
        loop {
            let sighting = rx.borrow_and_update();
            if let Sighting::Seen { info, at_unix_ms } = sighting {
                seen_pending |= info.state == InstanceState::Pending;
                self.observe(grant, &info, at_unix_ms, self.missed(&info, seen_pending)).await?;
                match info.state {
                    InstanceState::Running => return Ok(*info),
                    InstanceState::Pending => {}
                    other => {
                        return Err(BackendError::Provider {
                            operation: "RunInstances".into(),
                            code: info.state_reason_code.clone().unwrap_or_else(|| format!("Instance.{other}")),
                            message: format!("instance {instance_id} went {other} before it ran"),
                            retryable: true,
                        });
                    }
                }
            }
            let now = self.now_ms();
            if now >= deadline_unix_ms {
                return Err(BackendError::DeadlinePassed {
                    valid_to: self.inner.cfg.almanac.unix_ms_to_tick(deadline_unix_ms),
                    now: self.now_tick(),
                });
            }
            tokio::select! {
                biased;
                () = rx.changed() => {}
                () = self.inner.clock.sleep_until_unix_ms(deadline_unix_ms) => {}
            }
        }
    }

    /// Records that termination was requested (once) and calls TerminateInstances, retrying
    /// `InvalidInstanceID.NotFound` while the id may still be invisible.
    pub(crate) async fn request_termination(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        reason: TerminationReason,
    ) -> Result<(), BackendError> {
        self.request_termination_sent(grant, region, instance_id, reason).await.map(|_| ())
    }

    /// `request_termination`, saying whether the call is done (`true`: EC2 accepted it, from
    /// this caller or an earlier one, or the instance is gone) or another caller is sending it
    /// now and may yet fail (`false`): the deadline task then keeps trying (see `arm_deadline`).
    async fn request_termination_sent(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        reason: TerminationReason,
    ) -> Result<bool, BackendError> {
        // One caller at a time sends it (the deadline task and a watch wake at the same
        // instant), and nobody once EC2 has accepted it. The claim is released when the call
        // fails or its caller is cancelled.
        let claim = match TerminateClaim::take(&self.inner, instance_id) {
            ClaimAsk::Taken(claim) => claim,
            ClaimAsk::Accepted => return Ok(true),
            ClaimAsk::InFlight => return Ok(false),
        };
        // The call goes out whether or not the ledger takes the record: a full disk must not
        // keep an instance past its deadline. The failure is noted (the backend degrades).
        if let Err(err) = self.record_termination(*grant, reason).await {
            tracing::error!(error = %err, "could not record the termination request; terminating anyway");
        }
        // First together with every instance of the region ending in the same instant.
        match self.terminate_together(region, instance_id).await {
            Together::Done => {
                claim.keep();
                self.observe_terminating(grant, instance_id).await;
                return Ok(true);
            }
            Together::Failed(err) if !err.is(codes::INSTANCE_NOT_FOUND) => return Err(provider(err)),
            Together::Failed(_) | Together::Alone => {}
        }
        let started = self.now_ms();
        let mut attempt = 0;
        loop {
            let ids = vec![instance_id.to_string()];
            let result = self
                .inner
                .pacer
                .call_for(region, Operation::TerminateInstances, crate::pacing::count(&ids), || {
                    self.inner.port.terminate_instances(region, ids.clone())
                })
                .await;
            match result {
                Ok(_) => {
                    claim.keep();
                    self.observe_terminating(grant, instance_id).await;
                    return Ok(true);
                }
                Err(err) if err.is(codes::INSTANCE_NOT_FOUND) => {
                    // Either not visible yet, or gone for good: a filtered Describe tells.
                    if self.instance_gone(grant, region, instance_id).await?
                        || self.now_ms() > started + VISIBILITY_WINDOW_MS
                    {
                        return Ok(true);
                    }
                    self.inner.pacer.backoff(attempt.min(6)).await;
                    attempt += 1;
                }
                Err(err) => return Err(provider(err)),
            }
        }
    }

    /// Records TerminateInstances' answer as what it is, an observation: EC2 moved the instance
    /// to `shutting-down` when it accepted the call, so its running period ends now, whatever
    /// a Describe still showing the state from before says (see `observe`). Best effort: a
    /// ledger that fails here leaves the next poll's sighting to close the period.
    async fn observe_terminating(&self, grant: &GrantId, instance_id: &str) {
        let at_unix_ms = self.now_ms();
        let recorded = self
            .record_if(*grant, |s| {
                let s = s?;
                (s.instance() == Some(instance_id) && !s.last_state().is_some_and(ObservedState::ends_running)).then(
                    || Event::InstanceStateObserved {
                        instance_id: instance_id.to_string(),
                        state: ObservedState::ShuttingDown,
                        observed_at_unix_ms: at_unix_ms,
                    },
                )
            })
            .await;
        if let Err(err) = recorded {
            tracing::warn!(error = %err, "could not record TerminateInstances' answer; the next sighting will");
        }
    }

    /// Sends TerminateInstances once for every instance of `region` asked to terminate within
    /// `TERMINATE_GATHER_MS` of the first (grants ending in the same instant), up to EC2's
    /// 1,000 ids per call. One id EC2 cannot see fails the whole call: then each goes alone.
    async fn terminate_together(&self, region: &RegionLabel, instance_id: &str) -> Together {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let leads = {
            let mut queues = lock(&self.inner.terminate_queue);
            let queue = queues.entry(region.clone()).or_default();
            queue.push((instance_id.to_string(), tx));
            queue.len() == 1
        };
        if !leads {
            return rx.await.unwrap_or(Together::Alone);
        }
        let leader = GatherLeader { inner: &self.inner, region: region.clone() };
        self.inner.clock.sleep_ms(TERMINATE_GATHER_MS).await;
        let mut gathered = leader.take();
        drop(leader);
        // Senders dropped unanswered (this caller cancelled mid-call) tell the others to go
        // alone.
        while !gathered.is_empty() {
            let rest = gathered.split_off(gathered.len().min(TERMINATE_IDS_MAX));
            let chunk = std::mem::replace(&mut gathered, rest);
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let result = self
                .inner
                .pacer
                .call_for(region, Operation::TerminateInstances, crate::pacing::count(&ids), || {
                    self.inner.port.terminate_instances(region, ids.clone())
                })
                .await;
            for (_, tx) in chunk {
                let _ = tx.send(match &result {
                    Ok(_) => Together::Done,
                    Err(err) if err.is(codes::INSTANCE_NOT_FOUND) && ids.len() > 1 => Together::Alone,
                    Err(err) => Together::Failed(err.clone()),
                });
            }
        }
        rx.await.unwrap_or(Together::Alone)
    }

    /// Records `TerminationRequested` once; for a deadline handled after `valid_to` (the bridge
    /// was down), first `BillingCapped` at `valid_to`, so the time it was down is not billed.
    async fn record_termination(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        let now = self.now_ms();
        self.record_with(|ledger| {
            let Some(state) = ledger.grant(&grant).filter(|s| s.termination().is_none() && !s.is_settled()) else {
                return (Vec::new(), ());
            };
            let mut events = Vec::new();
            let valid_to = state.valid_to_unix_ms();
            if reason == TerminationReason::Deadline
                && now > valid_to
                && !state.ever_launched().is_empty()
                && !self.inner.switches.bill_downtime
            {
                events.push((grant, now, Event::BillingCapped { at_unix_ms: valid_to }));
            }
            events.push((grant, now, Event::TerminationRequested { reason }));
            (events, ())
        })
        .await
    }

    /// Arms the grant's deadline: at `valid_to`, whether or not anyone awaits
    /// `watch_until_exit`, the instance is told to terminate. The task holds the backend weakly,
    /// so it dies with it; recovery arms it again.
    pub(crate) fn arm_deadline(&self, grant: GrantId, region: RegionLabel, valid_to_unix_ms: u64) {
        let switches = &self.inner.switches;
        let at = (valid_to_unix_ms + switches.terminate_late_ms).saturating_sub(switches.terminate_early_ms);
        let weak = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        let task = tokio::spawn(async move {
            clock.sleep_until_unix_ms(at).await;
            let mut attempt = 0;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let backend = AwsBackend { inner };
                let Some(instance_id) = backend.instance_to_end(&grant) else { break };
                match backend.request_termination_sent(&grant, &region, &instance_id, TerminationReason::Deadline).await
                {
                    Ok(true) => break,
                    // Another caller (a watch, recovery) is sending it and may fail: look again
                    // shortly, and send it ourselves once its claim is given back.
                    Ok(false) => {
                        let pacer = backend.inner.pacer.clone();
                        drop(backend);
                        pacer.backoff(attempt.min(6)).await;
                        attempt += 1;
                    }
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), error = %err, "deadline termination failed; retrying");
                        let pacer = backend.inner.pacer.clone();
                        drop(backend);
                        pacer.backoff(attempt.min(6)).await;
                        attempt += 1;
                    }
                }
            }
            if let Some(inner) = weak.upgrade() {
                lock(&inner.deadlines).remove(&grant);
            }
        });
        if let Some(previous) = lock(&self.inner.deadlines).insert(grant, task) {
            previous.abort();
        }
    }

    /// The instance the grant's deadline ends: the one the ledger holds, or the one RunInstances
    /// answered with whose launch could not be recorded yet. `None` once the grant is settled.
    fn instance_to_end(&self, grant: &GrantId) -> Option<String> {
        let state = self.grant_state(grant);
        if state.as_ref().is_some_and(GrantState::is_settled) {
            return None;
        }
        state
            .as_ref()
            .and_then(|s| s.instance().map(str::to_string))
            .or_else(|| lock(&self.inner.launched_unrecorded).get(grant).cloned())
    }

    /// True when a Describe filtered by the grant's tag lists the instance as terminated. The
    /// filter keeps the answer to this grant's own instance (not every instance of the owner,
    /// which the region poller already lists), and a filter, unlike an id, never answers
    /// NotFound for an instance EC2 has not made visible yet.
    async fn instance_gone(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<bool, BackendError> {
        let filters = vec![Filter::tag(crate::config::GRANT_TAG, [grant.to_hex()])];
        let instances = self
            .inner
            .pacer
            .pages(region, Operation::DescribeInstances, false, |page| {
                self.inner.port.describe_instances_page(region, Vec::new(), filters.clone(), page)
            })
            .await
            .map_err(provider)?;
        Ok(instances.iter().any(|i| i.instance_id == instance_id && i.state == InstanceState::Terminated))
    }

    /// Follows the instance through the poller until it is terminated (or long gone), then
    /// samples its network use and records it terminated. With `deadline_unix_ms`, terminates it
    /// exactly then if it is still up.
    pub(crate) async fn follow_to_end(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), BackendError> {
        let mut rx = self.poller(region).subscribe(instance_id);
        let switches = &self.inner.switches;
        let mut deadline =
            deadline_unix_ms.map(|at| (at + switches.terminate_late_ms).saturating_sub(switches.terminate_early_ms));
        let mut absent_since: Option<u64> = None;
        let mut asked_exit = false;
        let mut launched_at: Option<u64> = None;
        let mut seen_pending = false;
        loop {
            let sighting = rx.borrow_and_update();
            match sighting {
                Sighting::Seen { info, at_unix_ms } => {
                    absent_since = None;
                    launched_at = Some(info.launch_time_unix_ms);
                    seen_pending |= info.state == InstanceState::Pending;
                    self.observe(grant, &info, at_unix_ms, self.missed(&info, seen_pending)).await?;
                    if info.state == InstanceState::Terminated {
                        // Terminated without our asking: EC2 or the guest ended it, and the
                        // ledger says so (the reason of the first request is the one kept).
                        self.record_if(*grant, |s| {
                            s.filter(|s| s.termination().is_none() && !s.is_settled())
                                .map(|_| Event::TerminationRequested { reason: TerminationReason::Exited })
                        })
                        .await?;
                        break;
                    }
                    let requested = self.grant_state(grant).is_some_and(|s| s.termination().is_some());
                    let stopped = matches!(info.state, InstanceState::Stopping | InstanceState::Stopped);
                    if info.state.has_exited() && !asked_exit && (stopped || !requested) {
                        // It ended on its own (or is stopping): make sure it terminates, so
                        // nothing lingers stopped and billed for storage.
                        asked_exit = true;
                        let reason = if requested { TerminationReason::Operator } else { TerminationReason::Exited };
                        self.request_termination(grant, region, instance_id, reason).await?;
                    }
                }
                Sighting::Absent { at_unix_ms } => {
                    let since = *absent_since.get_or_insert(at_unix_ms);
                    let ever_seen = self.grant_state(grant).is_some_and(|s| s.last_state().is_some());
                    // Seen before and now absent from two polls: terminated over an hour ago,
                    // or hidden by a Describe that lags (tags propagate after ids). Never seen:
                    // give eventual consistency its window. Either way, ask by id before
                    // believing it gone.
                    if (ever_seen && at_unix_ms > since || at_unix_ms > since + VISIBILITY_WINDOW_MS)
                        && self.confirm_gone(grant, region, instance_id, at_unix_ms).await?
                    {
                        break;
                    }
                }
                Sighting::NotYetPolled => {}
            }
            match deadline {
                Some(at) if self.now_ms() >= at => {
                    deadline = None;
                    self.request_termination(grant, region, instance_id, TerminationReason::Deadline).await?;
                }
                Some(at) => {
                    tokio::select! {
                        biased;
                        () = self.inner.clock.sleep_until_unix_ms(at) => {}
                        () = rx.changed() => {}
                    }
                }
                None => rx.changed().await,
            }
        }
        self.finish_instance(grant, region, instance_id, launched_at).await
    }

    /// Asks for the instance by id after the poller lost sight of it. True when EC2 no longer
    /// knows it or shows it terminated; false (after recording what it shows) while it lives.
    async fn confirm_gone(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        at_unix_ms: u64,
    ) -> Result<bool, BackendError> {
        let ids = vec![instance_id.to_string()];
        let answer = self
            .inner
            .pacer
            .pages(region, Operation::DescribeInstances, true, |page| {
                self.inner.port.describe_instances_page(region, ids.clone(), Vec::new(), page)
            })
            .await;
        match answer {
            Ok(found) => match found.into_iter().find(|i| i.instance_id == instance_id) {
                Some(info) if info.state != InstanceState::Terminated => {
                    tracing::info!(state = %info.state, "the poller lost sight of the instance, but it lives");
                    self.observe(grant, &info, at_unix_ms, false).await?;
                    Ok(false)
                }
                _ => Ok(true),
            },
            Err(err) if err.is(codes::INSTANCE_NOT_FOUND) => Ok(true),
            Err(err) => Err(provider(err)),
        }
    }

    /// Describes the instance by id and records what it shows, as a sighting this process
    /// missed the transitions of (see `observe`).
    pub(crate) async fn observe_by_id(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<(), BackendError> {
        let ids = vec![instance_id.to_string()];
        let found = self
            .inner
            .pacer
            .pages(region, Operation::DescribeInstances, true, |page| {
                self.inner.port.describe_instances_page(region, ids.clone(), Vec::new(), page)
            })
            .await
            .map_err(provider)?;
        if let Some(info) = found.into_iter().find(|i| i.instance_id == instance_id) {
            self.observe(grant, &info, self.now_ms(), true).await?;
        }
        Ok(())
    }

    /// Samples the instance's network use over its life and records it terminated.
    async fn finish_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        launched_at: Option<u64>,
    ) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(grant) else { return Ok(()) };
        if state.instance() != Some(instance_id) {
            return Ok(());
        }
        let end = self.now_ms();
        // The whole life of the instance: from its launch (as EC2 reported it) to now, after it
        // ended. Without a sighting, the widest window CloudWatch's one-minute data keeps.
        let start = launched_at.unwrap_or_else(|| end.saturating_sub(15 * 24 * 3_600_000)).min(end);
        let sample = self.measure_network(region, instance_id, start, end).await;
        // CloudWatch has not published the last minutes yet: this figure is provisional, and
        // measured again once its lag has passed (`arm_network_final`).
        let complete = self.inner.cfg.network_final_after_s == 0;
        let network = match sample {
            Ok(_) if self.inner.switches.skip_network_sample => None,
            Ok((bytes_in, bytes_out)) => Some(Event::NetworkMeasured {
                instance_id: instance_id.to_string(),
                bytes_in,
                bytes_out,
                window_start_unix_ms: start,
                window_end_unix_ms: end,
                complete,
            }),
            // Metering network is worth less than ending the grant: record it unknown (not 0)
            // and go on; the final measurement fills it in.
            Err(err) => {
                tracing::warn!(error = %err, "network usage unavailable; recorded unknown until measured");
                Some(Event::NetworkUnknown {
                    instance_id: instance_id.to_string(),
                    window_start_unix_ms: start,
                    window_end_unix_ms: end,
                })
            }
        };
        // The sample and the end go in together, and only once: a racing teardown (the
        // reaper's, recovery's) that finished first has recorded both already.
        let terminated = Event::InstanceTerminated { instance_id: instance_id.to_string() };
        let now = self.now_ms();
        let pending = self
            .record_with(|ledger| {
                let state = ledger.grant(grant);
                let events = if state.is_some_and(|s| s.instance() == Some(instance_id)) {
                    network.into_iter().chain([terminated]).map(|e| (*grant, now, e)).collect()
                } else {
                    Vec::new()
                };
                (events, ())
            })
            .await
            .map(|()| self.grant_state(grant).map(|s| s.network_pending()).unwrap_or_default())?;
        for p in pending.into_iter().filter(|p| p.instance_id == instance_id) {
            self.arm_network_final(*grant, p);
        }
        Ok(())
    }

    /// Measures `pending` once more, as final, after CloudWatch's publication lag has passed
    /// since the last period of its window ended (the datapoint of the period the instance
    /// ended in is published minutes after that period's end, not the instance's); retried
    /// with backoff (up to a day) while CloudWatch fails. The task is the backend's own, like
    /// an armed deadline: recovery arms it again for every figure the ledger shows incomplete,
    /// settled grants included.
    pub(crate) fn arm_network_final(&self, grant: GrantId, pending: PendingNetwork) {
        if self.inner.switches.skip_network_final {
            return;
        }
        let (_, last_period_end) = metric_window(pending.window_start_unix_ms, pending.window_end_unix_ms);
        let at = last_period_end.saturating_add(self.inner.cfg.network_final_after_ms());
        let key = (grant, pending.instance_id.clone());
        let weak = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            clock.sleep_until_unix_ms(at).await;
            for attempt in 0..NETWORK_FINAL_TRIES {
                let Some(inner) = weak.upgrade() else { return };
                let backend = AwsBackend { inner };
                match backend.measure_final(&grant, &pending).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), attempt, error = %err, "final network measurement failed; retrying");
                        drop(backend);
                        clock.sleep_ms((60_000u64 << attempt.min(6)).min(3_600_000)).await;
                    }
                }
            }
            if let Some(inner) = weak.upgrade() {
                lock(&inner.network_finals).remove(&task_key);
            }
        });
        if let Some(previous) = lock(&self.inner.network_finals).insert(key, task) {
            previous.abort();
        }
    }

    /// CloudWatch's bytes in and out of `instance_id` over `[start, end)`, widened to whole
    /// 5-minute periods (`metric_window`): CloudWatch counts a datapoint by its period's start,
    /// so the period the instance started in would be missed by a window starting at launch.
    /// Throttling (CloudWatch's own `Throttling`, on its own quota and bucket) is retried by the
    /// pacer like EC2's.
    async fn measure_network(
        &self,
        region: &RegionLabel,
        instance_id: &str,
        start: u64,
        end: u64,
    ) -> Result<(u64, u64), Ec2Error> {
        let (start, end) = metric_window(start, end);
        let ids = vec![instance_id.to_string()];
        let samples = self
            .inner
            .pacer
            .call(region, Operation::GetNetworkUsage, || self.inner.port.network_usage(region, ids.clone(), start, end))
            .await?;
        Ok(samples
            .iter()
            .filter(|s| s.instance_id == instance_id)
            .fold((0, 0), |(i, o), s| (i.saturating_add(s.bytes_in), o.saturating_add(s.bytes_out))))
    }

    /// One final measurement of `pending`, recorded as complete if the figure is still open.
    async fn measure_final(&self, grant: &GrantId, pending: &PendingNetwork) -> Result<(), BackendError> {
        let region = RegionLabel::new(&pending.region).map_err(local)?;
        let (start, end) = (pending.window_start_unix_ms, pending.window_end_unix_ms);
        let (bytes_in, bytes_out) =
            self.measure_network(&region, &pending.instance_id, start, end).await.map_err(provider)?;
        self.record_if(*grant, |s| {
            s.filter(|s| s.network_pending().iter().any(|p| p.instance_id == pending.instance_id)).map(|_| {
                Event::NetworkMeasured {
                    instance_id: pending.instance_id.clone(),
                    bytes_in,
                    bytes_out,
                    window_start_unix_ms: start,
                    window_end_unix_ms: end,
                    complete: true,
                }
            })
        })
        .await
    }

    /// Arms the final measurement of every network figure the ledger shows incomplete (after
    /// a restart: the tasks died with the last process).
    pub(crate) fn arm_pending_network(&self) {
        let pending: Vec<(GrantId, PendingNetwork)> = self.with_ledger(|l| {
            l.grants().flat_map(|(id, s)| s.network_pending().into_iter().map(move |p| (*id, p))).collect()
        });
        for (grant, p) in pending {
            self.arm_network_final(grant, p);
        }
    }

    /// Removes everything the grant holds and settles it. Idempotent; works on a grant in any
    /// phase, including one whose records stop mid-provision. When it fails (the ledger cannot
    /// be written, EC2 keeps refusing), a task of the backend's own goes on trying (see
    /// `arm_finish`): nothing else may be left to follow the instance, and its run would go
    /// unobserved and unbilled.
    pub(crate) async fn teardown(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        let result = self.teardown_once(grant, reason).await;
        if result.is_err() {
            self.arm_finish(grant, reason);
        }
        result
    }

    /// Tries `teardown_once` (or, for [`Finish::Resume`], recovery's `resume_grant_once`, which
    /// follows a serving instance to its deadline first) again until the grant settles: every
    /// poll interval while the ledger cannot be written (so that the instance is followed again
    /// as soon as it heals), otherwise backing off from a poll interval to 5 minutes. One task
    /// per grant; stopped with the backend's other tasks, and never armed by a backend that may
    /// no longer act.
    pub(crate) fn arm_finish(&self, grant: GrantId, finish: impl Into<Finish>) {
        let finish = finish.into();
        if !self.acting() || self.lease_lost().is_some() {
            return;
        }
        let mut finishing = lock(&self.inner.finishing);
        if finishing.get(&grant).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        let poll_ms = self.config().poll_interval_ms.max(1);
        let task = tokio::spawn(async move {
            let mut wait_ms = poll_ms;
            loop {
                clock.sleep_ms(wait_ms).await;
                let Some(inner) = weak.upgrade() else { return };
                let backend = AwsBackend { inner };
                if !backend.acting() || backend.grant_state(&grant).is_none_or(|s| s.is_settled()) {
                    break;
                }
                let tried = match finish {
                    Finish::Teardown(reason) => backend.teardown_once(grant, reason).await,
                    Finish::Resume => backend.resume_grant_once(grant).await,
                };
                match tried {
                    Ok(()) => break,
                    // While the ledger fails, that failure is logged once (`note_ledger`), not
                    // once per grant every poll interval.
                    Err(err) if lock(&backend.inner.ledger_failure).is_some() => {
                        tracing::debug!(grant = %grant.short(), error = %err, "teardown waits for the ledger");
                        wait_ms = poll_ms;
                    }
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), error = %err, "teardown failed again; retrying");
                        wait_ms = (wait_ms * 2).min(FINISH_RETRY_MAX_MS);
                    }
                }
            }
            if let Some(inner) = weak.upgrade() {
                lock(&inner.finishing).remove(&grant);
            }
        });
        if let Some(previous) = finishing.insert(grant, task) {
            previous.abort();
        }
    }

    async fn teardown_once(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(&grant) else { return Ok(()) };
        if state.is_settled() {
            return Ok(());
        }
        let region = RegionLabel::new(state.region()).map_err(local)?;
        if let Err(err) = self.record_termination(grant, reason).await {
            // The instance is ended whether or not the ledger takes the request (recorded
            // when it heals, by the next try): a rollback must not leave it running.
            if let Some(instance_id) = self.instance_to_end(&grant) {
                let _ = self.request_termination(&grant, &region, &instance_id, reason).await;
            }
            return Err(err);
        }

        // An instance whose launch was requested but never recorded: find it by its token.
        if state.ever_launched().is_empty()
            && let Some(token) = state.launch_requested()
        {
            self.adopt_unrecorded_instance(&grant, &region, token).await?;
        }
        if let Some(instance_id) = self.grant_state(&grant).and_then(|s| s.instance().map(str::to_string)) {
            // Watched from now: TerminateInstances may wait out EC2's visibility lag while the
            // instance starts running, and a poll's sighting reaches only a watched instance;
            // `follow_to_end` then reads the latest one.
            let _watching = self.poller(&region).subscribe(&instance_id);
            self.request_termination(&grant, &region, &instance_id, reason).await?;
            self.follow_to_end(&grant, &region, &instance_id, None).await?;
        }
        // About when the instance was recorded gone (the grant's latest record, taken before
        // anything else is deleted): its group stays "in use" for a while after.
        let gone_at = self.grant_state(&grant).filter(|s| !s.ever_launched().is_empty()).map(|s| s.latest_unix_ms());

        // The key pair: DeleteKeyPair of a missing name succeeds, so delete by name even when
        // the import was never recorded (under a tag-conditioned IAM policy it may answer
        // UnauthorizedOperation instead, which `delete_key_pair_confirmed` resolves).
        let key_name = state.key_name().to_string();
        self.delete_key_pair_confirmed(&region, &key_name).await?;
        self.record_if(grant, |s| s.filter(|s| s.key_pair().is_some()).map(|_| Event::KeyPairDeleted { key_name }))
            .await?;

        // The security group, found by name when its creation was never recorded.
        let mut group_id = self.grant_state(&grant).and_then(|s| s.security_group().map(str::to_string));
        if group_id.is_none()
            && let Some(found) = self.find_group_by_name(&grant, &region).await?
        {
            let group_name = names::group_name(&grant);
            let id = found.clone();
            self.record_if(grant, |s| {
                s.filter(|s| !s.is_settled() && s.security_group().is_none())
                    .map(|_| Event::SecurityGroupCreated { group_id: id, group_name })
            })
            .await?;
            group_id = Some(found);
        }
        if let Some(group_id) = group_id {
            if !self.inner.switches.skip_security_group_delete {
                self.delete_group(&region, &group_id, gone_at).await?;
            }
            // Another teardown (the reaper's, recovery's) may have recorded it meanwhile.
            self.record_if(grant, |s| {
                s.filter(|s| s.security_group() == Some(group_id.as_str()))
                    .map(|_| Event::SecurityGroupDeleted { group_id: group_id.clone() })
            })
            .await?;
        }

        if picked(&grant, self.inner.switches.skip_settle_below) {
            return Ok(());
        }
        // A grant settles only when every launch it requested is resolved: recorded, or proved
        // absent. An unresolved one may be running, and nobody would meter it.
        if let Some(state) = self.grant_state(&grant)
            && !state.is_settled()
            && state.ever_launched().is_empty()
            && let Some(token) = state.launch_requested()
        {
            return Err(BackendError::Local(format!(
                "grant {} cannot settle: its launch {token} is unresolved; recovery or the reaper will finish it",
                grant.short()
            )));
        }
        self.record_if(grant, |s| s.filter(|s| !s.is_settled()).map(|s| Event::GrantSettled { usage: s.usage() })).await
    }

    /// DeleteKeyPair by name; returns once the key pair is gone, whether this call deleted it or
    /// it was missing already.
    ///
    /// EC2 answers success for a name that does not exist, but under an IAM policy that allows
    /// DeleteKeyPair only on key pairs carrying our owner tag, a missing name answers
    /// `UnauthorizedOperation` instead: a key pair that does not exist has no tags for the
    /// condition to match (shared/EC2-FACTS.md, Teardown). So `UnauthorizedOperation` alone does
    /// not say whether anything is left. DescribeKeyPairs by name tells: absent, the key pair is
    /// gone and teardown goes on; present, IAM really refuses to delete it, and the error names
    /// the key pair and the policy statement to fix. Describe answering "absent" for a key
    /// pair too new to be visible yet is the same risk as DeleteKeyPair's success for one: the
    /// reaper, which lists by owner tag, removes such a key pair once it shows.
    pub(crate) async fn delete_key_pair_confirmed(
        &self,
        region: &RegionLabel,
        key_name: &str,
    ) -> Result<(), BackendError> {
        /// EC2's code for a call IAM refused.
        const UNAUTHORIZED_OPERATION: &str = "UnauthorizedOperation";
        let refused = match self
            .inner
            .pacer
            .call(region, Operation::DeleteKeyPair, || self.inner.port.delete_key_pair(region, key_name))
            .await
        {
            Ok(()) => return Ok(()),
            Err(err) if err.is(UNAUTHORIZED_OPERATION) => err,
            Err(err) => return Err(provider(err)),
        };
        let by_name = vec![Filter { name: "key-name".into(), values: vec![key_name.to_string()] }];
        let found = self
            .inner
            .pacer
            .call(region, Operation::DescribeKeyPairs, || self.inner.port.describe_key_pairs(region, by_name.clone()))
            .await
            .map_err(provider)?;
        if !found.iter().any(|k| k.key_name == key_name) {
            tracing::info!(
                %region,
                key_name,
                "DeleteKeyPair answered UnauthorizedOperation for a key pair DescribeKeyPairs does not show: it is gone"
            );
            return Ok(());
        }
        let (tag, owner) = (crate::config::OWNER_TAG, &self.inner.cfg.owner);
        Err(BackendError::Provider {
            operation: refused.operation.name().into(),
            code: refused.code,
            retryable: false,
            message: format!(
                "IAM refused to delete key pair {key_name} in {region}, and DescribeKeyPairs shows it still exists: \
                 allow ec2:DeleteKeyPair on arn:aws:ec2:{region}:<account>:key-pair/{key_name} for key pairs tagged \
                 {tag} = {owner} (statement EndOnlyWhatIsOurs of docs/iam-policy.json), and check that the key \
                 pair carries that tag; EC2 said: {}",
                refused.message
            ),
        })
    }

    /// Finds an instance launched with `token` whose launch was never recorded, and records it.
    async fn adopt_unrecorded_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        token: &str,
    ) -> Result<(), BackendError> {
        let mut filters = vec![Filter::tag(crate::config::GRANT_TAG, [grant.to_hex()])];
        let started = self.now_ms();
        let mut attempt = 0;
        loop {
            let instances = self
                .inner
                .pacer
                .pages(region, Operation::DescribeInstances, false, |page| {
                    self.inner.port.describe_instances_page(region, Vec::new(), filters.clone(), page)
                })
                .await
                .map_err(provider)?;
            if let Some(info) = instances.iter().find(|i| i.client_token == token) {
                let catalogue = self.catalogue(region).await?;
                let (vcpus, memory_mib) = catalogue
                    .iter()
                    .find(|t| t.instance_type == info.instance_type)
                    .map_or((0, 0), |t| (t.vcpus, t.memory_mib));
                self.record(
                    *grant,
                    Event::InstanceLaunched {
                        instance_id: info.instance_id.clone(),
                        client_token: token.to_string(),
                        instance_type: info.instance_type.clone(),
                        vcpus,
                        memory_mib,
                    },
                )
                .await?;
                lock(&self.inner.launched_unrecorded).remove(grant);
                // What finding it showed is an observation like any other; an instance found
                // running ran while nobody recorded it, and is billed from its LaunchTime.
                self.observe(grant, info, self.now_ms(), true).await?;
                return Ok(());
            }
            if self.now_ms() > started + VISIBILITY_WINDOW_MS {
                // The tag-filtered answers may lag (tags propagate after ids): ask by token.
                // Nothing with the token after the window proves the launch never happened.
                let by_token = vec![Filter { name: "client-token".into(), values: vec![token.to_string()] }];
                let found = self
                    .inner
                    .pacer
                    .pages(region, Operation::DescribeInstances, false, |page| {
                        self.inner.port.describe_instances_page(region, Vec::new(), by_token.clone(), page)
                    })
                    .await
                    .map_err(provider)?;
                if found.iter().any(|i| i.client_token == token) {
                    filters = by_token;
                    continue;
                }
                tracing::info!(token, "no instance has the launch's token: it never happened");
                self.record(*grant, Event::LaunchAbsent { client_token: token.to_string() }).await?;
                return Ok(());
            }
            self.inner.pacer.backoff(attempt.min(6)).await;
            attempt += 1;
        }
    }

    /// DeleteSecurityGroup, retried through `DependencyViolation` (the instance's network
    /// interface lingers after termination) and through invisibility of a new group.
    /// With `gone_at` (when its instance was seen gone), first waits out the learned lag after
    /// which EC2 usually lets the group go.
    async fn delete_group(
        &self,
        region: &RegionLabel,
        group_id: &str,
        gone_at: Option<u64>,
    ) -> Result<(), BackendError> {
        self.wait_lag(region, Lag::Dependency, gone_at, true).await;
        let started = self.now_ms();
        let mut attempt = 0;
        let mut met = false;
        loop {
            let result = self
                .inner
                .pacer
                .call(region, Operation::DeleteSecurityGroup, || {
                    self.inner.port.delete_security_group(region, group_id)
                })
                .await;
            match result {
                Ok(()) => {
                    self.learn_lag(region, Lag::Dependency, gone_at, met);
                    return Ok(());
                }
                Err(err) if err.is(codes::DEPENDENCY_VIOLATION) && self.now_ms() < started + DEPENDENCY_WINDOW_MS => {
                    met = true;
                    // The instance's network interface takes seconds to tens of seconds to go:
                    // start the backoff at a few seconds rather than hammering.
                    self.inner.pacer.backoff(attempt.min(4) + 4).await;
                    attempt += 1;
                    continue;
                }
                Err(err) if err.is_not_found() => {
                    // Invisible yet, or already deleted. After the window it is gone.
                    if self.now_ms() >= started + VISIBILITY_WINDOW_MS {
                        return Ok(());
                    }
                }
                Err(err) => return Err(provider(err)),
            }
            self.inner.pacer.backoff(attempt.min(6)).await;
            attempt += 1;
        }
    }
}

#[async_trait]
impl Backend for AwsBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn capabilities(&self) -> anyhow::Result<Capabilities> {
        let mut max_cpu_millicores = 0u32;
        let mut max_ram_mib = 0u32;
        for region in &self.inner.cfg.regions {
            if let Ok(types) = self.catalogue(region).await {
                for t in types.iter() {
                    max_cpu_millicores = max_cpu_millicores.max(t.vcpus.saturating_mul(1_000));
                    max_ram_mib = max_ram_mib.max(u32::try_from(t.memory_mib).unwrap_or(u32::MAX));
                }
            }
        }
        Ok(Capabilities {
            regions: self.inner.cfg.regions.clone(),
            // AWS has no consumer TDX offering: TDX grants go to another backend.
            tdx_capable: false,
            max_cpu_millicores,
            max_ram_mib,
            vcpu_headroom: self
                .inner
                .cfg
                .regions
                .iter()
                .filter_map(|r| self.vcpu_headroom(r).map(|room| (r.clone(), room)))
                .collect(),
        })
    }

    fn can_satisfy(&self, grant: &ComputeGrant<'_>) -> bool {
        if self.check_grant(grant).is_err() {
            return false;
        }
        // Sizes are checked against the cached catalogues (loaded at start), among the types
        // whose architecture has an AMI: a grant that fits in no allowed region cannot be
        // satisfied.
        let catalogue = lock(&self.inner.catalogue);
        if catalogue.is_empty() {
            return true;
        }
        catalogue.iter().any(|(region, types)| {
            let archs = self.inner.cfg.architectures(region.as_str());
            sizing::launchable(types, &archs, region.as_str())
                .and_then(|usable| sizing::fitting(&usable, grant.manifest))
                .is_ok()
        })
    }

    async fn provision(&self, grant: &ComputeGrant<'_>, envelope: &Envelope) -> anyhow::Result<ProvisionedInstance> {
        let region = self.region_for(envelope)?;
        let span =
            tracing::info_span!("grant", grant = %grant.id.short(), %region, instance_id = tracing::field::Empty);
        async {
            self.check_grant(grant)?;
            self.ensure_ledger_writable()?;
            // Nothing is created before valid_from: wait for it (check_grant bounds the wait).
            let valid_from_ms = self.inner.cfg.almanac.tick_to_unix_ms(grant.valid_from);
            if valid_from_ms > self.now_ms() && !self.inner.switches.ignore_valid_from {
                tracing::info!(valid_from = %grant.valid_from, "waiting for valid_from");
                self.inner.clock.sleep_until_unix_ms(valid_from_ms).await;
                self.check_grant(grant)?;
            }
            self.provision_inner(grant, region.clone()).await
        }
        .instrument(span)
        .await
        .map_err(anyhow::Error::from)
    }

    async fn watch_until_exit(
        &self,
        instance: &ProvisionedInstance,
        valid_to: AlmanacTick,
    ) -> anyhow::Result<UsageMetrics> {
        let grant = instance.grant_id;
        let span = tracing::info_span!("grant", grant = %grant.short(), region = %instance.region, instance_id = %instance.instance_id);
        async {
            let state = self.grant_state(&grant).ok_or_else(|| BackendError::UnknownInstance {
                grant: grant.to_hex(),
                instance_id: instance.instance_id.clone(),
            })?;
            if state.is_settled() {
                // Terminated and torn down already: the usage is final.
                return Ok(state.usage());
            }
            if state.instance() == Some(instance.instance_id.as_str()) {
                let deadline = self.inner.cfg.almanac.tick_to_unix_ms(valid_to).min(state.valid_to_unix_ms());
                self.follow_to_end(&grant, &instance.region, &instance.instance_id, Some(deadline)).await?;
            } else if !state.ever_launched().contains(&instance.instance_id) {
                return Err(BackendError::UnknownInstance {
                    grant: grant.to_hex(),
                    instance_id: instance.instance_id.clone(),
                });
            }
            let mut usage = self.grant_state(&grant).map(|s| s.usage()).unwrap_or_default();
            if self.inner.switches.watch_usage_extra {
                usage.cpu_seconds += 1;
            }
            Ok(usage)
        }
        .instrument(span)
        .await
        .map_err(anyhow::Error::from)
    }

    async fn terminate(&self, instance: &ProvisionedInstance) -> anyhow::Result<()> {
        let grant = instance.grant_id;
        let span = tracing::info_span!("grant", grant = %grant.short(), region = %instance.region, instance_id = %instance.instance_id);
        self.teardown(grant, TerminationReason::Operator).instrument(span).await.map_err(anyhow::Error::from)
    }
}
