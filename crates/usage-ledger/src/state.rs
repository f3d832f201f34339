//! The pure fold: per-grant state, the metering rules, and the typed errors for impossible
//! transitions.
//!
//! [`apply`] and [`fold`] hold no business logic: the backend decides, writes an event, and the
//! fold only records what the event says, refusing events that cannot follow the ones before.
//! The metering rules are written down in `docs/metering.md`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use backend_api::{AlmanacTick, GrantId, UsageMetrics};

use crate::event::{Event, ObservedState, Record, ResourceKind, TerminationReason};

/// The minimum billed length of one running period, in seconds (EC2's per-second billing).
pub const MIN_BILLED_SECONDS: u64 = 60;

/// Where a grant is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// Admitted; nothing created yet.
    Admitted,
    /// A key pair, security group or launch has been recorded, but no instance yet.
    Provisioning,
    /// An instance was launched.
    Running,
    /// Termination was requested, or the instance ended by itself; resources are being removed.
    Terminating,
    /// Usage is final and the grant holds nothing.
    Settled,
}

/// The state of one grant, as the fold of its events.
///
/// Once settled, a grant is compacted: only its phase, sequence, latest timestamp and final
/// usage are kept, and the getters for the rest return empty values (`""`, `None`, tick 0).
/// Memory for a settled grant is a few dozen bytes; a live grant keeps its details boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantState {
    phase: Phase,
    next_seq: u64,
    latest_unix_ms: u64,
    settled_usage: UsageMetrics,
    /// The provision attempt: 0 for the first, one more for each `GrantRetried`.
    attempt: u32,
    /// Whether the last attempt failed with an error that may be retried (`ProvisionFailed`).
    retry_allowed: bool,
    live: Option<Box<LiveGrant>>,
    /// CloudWatch's figures for the grant's instances (every attempt's), while any is recorded
    /// and, once settled, until every figure is complete (then folded into `settled_usage`).
    network: Option<Box<NetworkBook>>,
}

/// The network figures of a grant's instances (see `NetworkMeasured` and `NetworkUnknown`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct NetworkBook {
    /// Where the instances ran: a settled grant keeps it to finish its measurement.
    region: String,
    entries: Vec<NetworkEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NetworkEntry {
    instance_id: String,
    window_start_unix_ms: u64,
    window_end_unix_ms: u64,
    figure: NetworkFigure,
}

/// What the ledger knows of one instance's network bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkFigure {
    /// CloudWatch could not answer; billed as 0 until measured.
    Unknown,
    /// Measured when the instance ended, before CloudWatch had published its last minutes.
    Provisional(u64),
    /// Measured after the publication lag: final.
    Complete(u64),
}

impl NetworkFigure {
    fn bytes(self) -> u64 {
        match self {
            NetworkFigure::Unknown => 0,
            NetworkFigure::Provisional(b) | NetworkFigure::Complete(b) => b,
        }
    }
}

/// How final a grant's network figure is, over all its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetworkStatus {
    /// Every instance's figure is complete (or the grant recorded none: nothing launched, or
    /// a ledger written before `NetworkMeasured`).
    Complete,
    /// Some figure is provisional; none is unknown.
    Provisional,
    /// CloudWatch could not answer for some instance yet.
    Unknown,
}

/// An instance whose network figure is not complete yet, with the window to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingNetwork {
    /// The region it ran in.
    pub region: String,
    /// The instance.
    pub instance_id: String,
    /// Window start (its launch), unix ms.
    pub window_start_unix_ms: u64,
    /// Window end (when it was seen gone), unix ms.
    pub window_end_unix_ms: u64,
    /// What is recorded so far.
    pub figure: NetworkFigure,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LiveGrant {
    region: String,
    instance_type: String,
    storage_bytes: u64,
    valid_to: AlmanacTick,
    valid_to_unix_ms: u64,
    key_name: String,
    group_name: String,
    key_pair: Option<String>,
    security_group: Option<String>,
    launch_requested: Option<String>,
    /// The AMI of the last `LaunchRequested`, when it recorded one.
    launch_image: Option<String>,
    instance: Option<String>,
    ever_launched: Vec<String>,
    termination: Option<TerminationReason>,
    last_state: Option<ObservedState>,
    launched_vcpus: u32,
    launched_memory_mib: u64,
    closed_running_seconds: u64,
    running_since_unix_ms: Option<u64>,
    deadline_cut: bool,
    /// The billing rules of the attempt (`BillingRulesAdopted`; 0 for an attempt recorded
    /// before them).
    billing_rules: u32,
    /// When the attempt's last `LaunchRequested` was recorded (its grant clock): no instance of
    /// it ran before.
    launch_requested_unix_ms: u64,
    /// Whether a running period of the attempt ever opened.
    ever_running: bool,
    network_bytes: u64,
    /// The usage of earlier attempts, settled before this one was admitted.
    carried: UsageMetrics,
}

static EMPTY: &[String] = &[];

impl GrantState {
    /// Where the grant is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once `GrantSettled` (or, for a grant the ledger never admitted, `OrphanReaped`)
    /// was recorded.
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Settled
    }

    /// The sequence number the grant's next event must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The latest timestamp seen for the grant (record times and observation times, clamped
    /// so that it never decreases), in unix milliseconds.
    pub fn latest_unix_ms(&self) -> u64 {
        self.latest_unix_ms
    }

    /// The region (empty once settled).
    pub fn region(&self) -> &str {
        self.live.as_ref().map_or("", |l| &l.region)
    }

    /// The instance type chosen at admission (empty once settled).
    pub fn instance_type(&self) -> &str {
        self.live.as_ref().map_or("", |l| &l.instance_type)
    }

    /// The grant's deadline (tick 0 once settled).
    pub fn valid_to(&self) -> AlmanacTick {
        self.live.as_ref().map_or(AlmanacTick(0), |l| l.valid_to)
    }

    /// The grant's deadline in unix milliseconds (0 once settled).
    pub fn valid_to_unix_ms(&self) -> u64 {
        self.live.as_ref().map_or(0, |l| l.valid_to_unix_ms)
    }

    /// The provisioned volume size from admission (0 once settled).
    pub fn storage_bytes(&self) -> u64 {
        self.live.as_ref().map_or(0, |l| l.storage_bytes)
    }

    /// The key pair name from admission (empty once settled).
    pub fn key_name(&self) -> &str {
        self.live.as_ref().map_or("", |l| &l.key_name)
    }

    /// The security group name from admission (empty once settled).
    pub fn group_name(&self) -> &str {
        self.live.as_ref().map_or("", |l| &l.group_name)
    }

    /// The id of the key pair the grant holds, if any.
    pub fn key_pair(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.key_pair.as_deref())
    }

    /// The id of the security group the grant holds, if any.
    pub fn security_group(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.security_group.as_deref())
    }

    /// The client token of the last `LaunchRequested`, if any: recovery looks for an instance
    /// launched with it.
    pub fn launch_requested(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.launch_requested.as_deref())
    }

    /// The AMI the last `LaunchRequested` recorded, if any (none before format version 2): a
    /// resumed launch sends it again with the same token.
    pub fn launch_requested_image(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.launch_image.as_deref())
    }

    /// The instance the grant holds, until `InstanceTerminated`.
    pub fn instance(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.instance.as_deref())
    }

    /// Every instance id the grant ever launched (at most one).
    pub fn ever_launched(&self) -> &[String] {
        self.live.as_ref().map_or(EMPTY, |l| &l.ever_launched)
    }

    /// The reason of the first `TerminationRequested`, if any.
    pub fn termination(&self) -> Option<TerminationReason> {
        self.live.as_ref().and_then(|l| l.termination)
    }

    /// The last observed instance state, if any.
    pub fn last_state(&self) -> Option<ObservedState> {
        self.live.as_ref().and_then(|l| l.last_state)
    }

    /// vCPUs and MiB of the launched instance, if one launched.
    pub fn launched_size(&self) -> Option<(u32, u64)> {
        self.live.as_ref().filter(|l| !l.ever_launched.is_empty()).map(|l| (l.launched_vcpus, l.launched_memory_mib))
    }

    /// When the open running period started, if one is open.
    pub fn running_since_unix_ms(&self) -> Option<u64> {
        self.live.as_ref().and_then(|l| l.running_since_unix_ms)
    }

    /// The usage so far: final once settled, otherwise counting an open running period up to
    /// [`GrantState::latest_unix_ms`]. Never decreases as events are applied.
    pub fn usage(&self) -> UsageMetrics {
        let mut usage = self.base_usage();
        usage.network_bytes = usage.network_bytes.saturating_add(self.network.as_ref().map_or(0, |b| b.total()));
        usage
    }

    /// The usage without the network book's figures.
    fn base_usage(&self) -> UsageMetrics {
        match &self.live {
            None => self.settled_usage,
            Some(live) => live.usage(self.latest_unix_ms),
        }
    }

    /// How final the grant's network figure is.
    pub fn network_status(&self) -> NetworkStatus {
        self.network.as_ref().map_or(NetworkStatus::Complete, |b| {
            b.entries
                .iter()
                .map(|e| match e.figure {
                    NetworkFigure::Unknown => NetworkStatus::Unknown,
                    NetworkFigure::Provisional(_) => NetworkStatus::Provisional,
                    NetworkFigure::Complete(_) => NetworkStatus::Complete,
                })
                .max()
                .unwrap_or(NetworkStatus::Complete)
        })
    }

    /// The grant's instances whose network figure is not complete yet.
    pub fn network_pending(&self) -> Vec<PendingNetwork> {
        let Some(book) = &self.network else { return Vec::new() };
        book.entries
            .iter()
            .filter(|e| !matches!(e.figure, NetworkFigure::Complete(_)))
            .map(|e| PendingNetwork {
                region: book.region.clone(),
                instance_id: e.instance_id.clone(),
                window_start_unix_ms: e.window_start_unix_ms,
                window_end_unix_ms: e.window_end_unix_ms,
                figure: e.figure,
            })
            .collect()
    }

    /// A settled grant whose every figure is complete keeps only their sum.
    fn compact_network(&mut self) {
        if self.live.is_none()
            && let Some(book) = &self.network
            && book.entries.iter().all(|e| matches!(e.figure, NetworkFigure::Complete(_)))
        {
            self.settled_usage.network_bytes = self.settled_usage.network_bytes.saturating_add(book.total());
            self.network = None;
        }
    }

    /// Records `figure` for `instance_id`, replacing what was known unless `only_if_absent`.
    fn set_network(
        &mut self,
        region: &str,
        instance_id: &str,
        window: (u64, u64),
        figure: NetworkFigure,
        only_if_absent: bool,
    ) {
        let book = self
            .network
            .get_or_insert_with(|| Box::new(NetworkBook { region: region.to_string(), entries: Vec::new() }));
        match book.entries.iter_mut().find(|e| e.instance_id == instance_id) {
            Some(_) if only_if_absent => {}
            Some(entry) => {
                (entry.window_start_unix_ms, entry.window_end_unix_ms) = window;
                entry.figure = figure;
            }
            None => book.entries.push(NetworkEntry {
                instance_id: instance_id.to_string(),
                window_start_unix_ms: window.0,
                window_end_unix_ms: window.1,
                figure,
            }),
        }
    }

    /// The provision attempt, from 0 (see `GrantRetried`).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True when the grant's last provision failed with an error that may be retried, so the
    /// grant, once settled, may be admitted again (`GrantRetried`).
    pub fn retry_allowed(&self) -> bool {
        self.retry_allowed
    }

    /// The resources the grant still holds at the provider, for recovery.
    pub fn held_resources(&self) -> Vec<(ResourceKind, &str)> {
        let mut held = Vec::new();
        if let Some(live) = &self.live {
            if let Some(id) = &live.instance {
                held.push((ResourceKind::Instance, id.as_str()));
            }
            if let Some(id) = &live.key_pair {
                held.push((ResourceKind::KeyPair, id.as_str()));
            }
            if let Some(id) = &live.security_group {
                held.push((ResourceKind::SecurityGroup, id.as_str()));
            }
        }
        held
    }

    /// True while the grant holds an instance, key pair or security group, or a launch was
    /// requested and no instance has been recorded for it (one may exist).
    pub fn holds_resources(&self) -> bool {
        self.live.as_ref().is_some_and(|l| {
            l.instance.is_some()
                || l.key_pair.is_some()
                || l.security_group.is_some()
                || (l.launch_requested.is_some() && l.ever_launched.is_empty())
        })
    }

    /// The state after a grant's first event: `GrantAdmitted`, or `OrphanReaped` for a grant
    /// this ledger never admitted (recorded as settled with zero usage).
    pub fn first(record: &Record) -> Result<GrantState, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if record.seq != 0 {
            return fail(Impossible::SequenceGap { expected: 0 });
        }
        match &record.event {
            Event::GrantAdmitted { .. } => Ok(GrantState {
                phase: Phase::Admitted,
                next_seq: 1,
                latest_unix_ms: record.at_unix_ms,
                settled_usage: UsageMetrics::default(),
                attempt: 0,
                retry_allowed: false,
                live: Admission::of(&record.event).map(|a| Box::new(LiveGrant::admitted(a, UsageMetrics::default()))),
                network: None,
            }),
            Event::OrphanReaped { .. } => Ok(GrantState {
                phase: Phase::Settled,
                next_seq: 1,
                latest_unix_ms: record.at_unix_ms,
                settled_usage: UsageMetrics::default(),
                attempt: 0,
                retry_allowed: false,
                live: None,
                network: None,
            }),
            _ => fail(Impossible::UnknownGrant),
        }
    }

    /// Applies the grant's next event in place. On error `self` is unchanged.
    pub fn step(&mut self, record: &Record) -> Result<(), ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if record.seq != self.next_seq {
            return fail(Impossible::SequenceGap { expected: self.next_seq });
        }
        let Some(live) = self.live.as_deref_mut() else {
            // Settled (or an orphan tombstone): only informational events may follow, and a
            // new attempt after a retryable failure.
            match &record.event {
                Event::OrphanReaped { .. } => {}
                Event::NetworkMeasured {
                    instance_id,
                    bytes_in,
                    bytes_out,
                    window_start_unix_ms,
                    window_end_unix_ms,
                    complete,
                } => {
                    // An amendment: only a complete figure, only for an instance whose figure
                    // is still open.
                    let open = self.network_pending().iter().any(|p| p.instance_id == *instance_id);
                    if !*complete || !open {
                        return fail(Impossible::AfterSettlement);
                    }
                    if window_end_unix_ms < window_start_unix_ms {
                        return fail(Impossible::BackwardsWindow {
                            start_unix_ms: *window_start_unix_ms,
                            end_unix_ms: *window_end_unix_ms,
                        });
                    }
                    let bytes = bytes_in.saturating_add(*bytes_out);
                    let window = (*window_start_unix_ms, *window_end_unix_ms);
                    self.set_network("", instance_id, window, NetworkFigure::Complete(bytes), false);
                    self.compact_network();
                }
                Event::GrantRetried { attempt, .. } => {
                    if !self.retry_allowed || self.phase != Phase::Settled || *attempt != self.attempt + 1 {
                        return fail(Impossible::AfterSettlement);
                    }
                    self.live =
                        Admission::of(&record.event).map(|a| Box::new(LiveGrant::admitted(a, self.settled_usage)));
                    self.attempt = *attempt;
                    self.retry_allowed = false;
                    self.phase = Phase::Admitted;
                }
                _ => return fail(Impossible::AfterSettlement),
            }
            self.next_seq += 1;
            self.latest_unix_ms = self.latest_unix_ms.max(record.at_unix_ms);
            return Ok(());
        };
        // Times may go backwards across a restart; the grant's clock never does.
        let now = self.latest_unix_ms.max(record.at_unix_ms);
        let phase = self.phase;
        let mut next_phase = phase;
        let mut latest = now;
        match &record.event {
            Event::GrantAdmitted { .. } | Event::GrantRetried { .. } => return fail(Impossible::AlreadyAdmitted),
            Event::ProvisionFailed { retryable } => self.retry_allowed = *retryable,
            Event::KeyPairImported { key_name, key_pair_id } => {
                if !matches!(phase, Phase::Admitted | Phase::Provisioning) {
                    return fail(Impossible::WrongPhase { phase, allowed: "Admitted or Provisioning" });
                }
                if *key_name != live.key_name {
                    return fail(Impossible::KeyNameMismatch {
                        admitted: live.key_name.clone(),
                        found: key_name.clone(),
                    });
                }
                if let Some(held) = &live.key_pair {
                    return fail(Impossible::KeyPairAlreadyHeld { key_pair_id: held.clone() });
                }
                live.key_pair = Some(key_pair_id.clone());
                next_phase = Phase::Provisioning;
            }
            Event::SecurityGroupCreated { group_id, group_name } => {
                // Also while Terminating: a teardown that finds, by its name, a group whose
                // creation was never recorded (the process died in between) records it so that
                // its deletion can be recorded too.
                if !matches!(phase, Phase::Admitted | Phase::Provisioning | Phase::Terminating) {
                    return fail(Impossible::WrongPhase { phase, allowed: "Admitted, Provisioning or Terminating" });
                }
                if *group_name != live.group_name {
                    return fail(Impossible::GroupNameMismatch {
                        admitted: live.group_name.clone(),
                        found: group_name.clone(),
                    });
                }
                if let Some(held) = &live.security_group {
                    return fail(Impossible::SecurityGroupAlreadyHeld { group_id: held.clone() });
                }
                live.security_group = Some(group_id.clone());
                if phase != Phase::Terminating {
                    next_phase = Phase::Provisioning;
                }
            }
            Event::LaunchRequested { client_token, image_id, .. } => {
                if let Some(first) = live.ever_launched.first() {
                    return fail(Impossible::AlreadyLaunched { instance_id: first.clone() });
                }
                if !matches!(phase, Phase::Admitted | Phase::Provisioning) {
                    return fail(Impossible::WrongPhase { phase, allowed: "Admitted or Provisioning" });
                }
                live.launch_requested = Some(client_token.clone());
                live.launch_requested_unix_ms = now;
                live.launch_image.clone_from(image_id);
                next_phase = Phase::Provisioning;
            }
            Event::InstanceLaunched { instance_id, client_token, instance_type: _, vcpus, memory_mib } => {
                if live.launch_requested.as_deref() != Some(client_token.as_str()) {
                    return fail(Impossible::LaunchNotRequested {
                        client_token: client_token.clone(),
                        requested: live.launch_requested.clone(),
                    });
                }
                if let Some(first) = live.ever_launched.first() {
                    // Recording the held instance again with the same sizes is harmless (a
                    // recovery that re-discovers it); anything else is a second instance.
                    let same = first == instance_id
                        && live.instance.as_deref() == Some(instance_id.as_str())
                        && live.launched_vcpus == *vcpus
                        && live.launched_memory_mib == *memory_mib;
                    if !same {
                        return fail(Impossible::SecondInstance { first: first.clone(), found: instance_id.clone() });
                    }
                } else {
                    if !matches!(phase, Phase::Provisioning | Phase::Terminating) {
                        return fail(Impossible::WrongPhase { phase, allowed: "Provisioning or Terminating" });
                    }
                    live.instance = Some(instance_id.clone());
                    live.ever_launched.push(instance_id.clone());
                    live.launched_vcpus = *vcpus;
                    live.launched_memory_mib = *memory_mib;
                    if phase == Phase::Provisioning {
                        next_phase = Phase::Running;
                    }
                }
            }
            Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms } => {
                if live.instance.as_deref() != Some(instance_id.as_str()) {
                    return fail(Impossible::InstanceNotHeld {
                        instance_id: instance_id.clone(),
                        held: live.instance.clone(),
                    });
                }
                let at = self.latest_unix_ms.max(*observed_at_unix_ms);
                latest = now.max(at);
                if *state == ObservedState::Running {
                    // Under rules 3 the attempt's first period may open before the grant's
                    // clock, down to the launch request: the bridge saw the run late (it was
                    // down) and records EC2's LaunchTime. Later periods never reach back.
                    let opens_at = if live.billing_rules >= 3 && !live.ever_running {
                        (*observed_at_unix_ms).max(live.launch_requested_unix_ms)
                    } else {
                        at
                    };
                    if live.running_since_unix_ms.is_none() && !live.deadline_cut && !live.past_deadline(opens_at) {
                        live.running_since_unix_ms = Some(opens_at);
                        live.ever_running = true;
                    }
                } else if state.ends_running() {
                    live.close_period(at);
                }
                live.last_state = Some(*state);
            }
            Event::NetworkSampled { instance_id, bytes_in, bytes_out, window_start_unix_ms, window_end_unix_ms } => {
                if !live.ever_launched.iter().any(|id| id == instance_id) {
                    return fail(Impossible::InstanceNeverLaunched { instance_id: instance_id.clone() });
                }
                if window_end_unix_ms < window_start_unix_ms {
                    return fail(Impossible::BackwardsWindow {
                        start_unix_ms: *window_start_unix_ms,
                        end_unix_ms: *window_end_unix_ms,
                    });
                }
                live.network_bytes = live.network_bytes.saturating_add(*bytes_in).saturating_add(*bytes_out);
            }
            Event::NetworkMeasured {
                instance_id,
                bytes_in,
                bytes_out,
                window_start_unix_ms,
                window_end_unix_ms,
                complete,
            } => {
                check_network(
                    live,
                    self.network.as_deref(),
                    record,
                    instance_id,
                    *window_start_unix_ms,
                    *window_end_unix_ms,
                )?;
                let bytes = bytes_in.saturating_add(*bytes_out);
                let figure = if *complete { NetworkFigure::Complete(bytes) } else { NetworkFigure::Provisional(bytes) };
                let region = live.region.clone();
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                self.set_network(&region, instance_id, window, figure, false);
            }
            Event::NetworkUnknown { instance_id, window_start_unix_ms, window_end_unix_ms } => {
                check_network(
                    live,
                    self.network.as_deref(),
                    record,
                    instance_id,
                    *window_start_unix_ms,
                    *window_end_unix_ms,
                )?;
                let region = live.region.clone();
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                // A figure already known is not forgotten because a later query failed.
                self.set_network(&region, instance_id, window, NetworkFigure::Unknown, true);
            }
            Event::TerminationRequested { reason } => {
                if live.termination.is_none() {
                    live.termination = Some(*reason);
                }
                if *reason == TerminationReason::Deadline {
                    live.close_period(now);
                    live.deadline_cut = true;
                }
                next_phase = Phase::Terminating;
            }
            Event::InstanceTerminated { instance_id } => {
                if live.instance.as_deref() != Some(instance_id.as_str()) {
                    return fail(Impossible::InstanceNotHeld {
                        instance_id: instance_id.clone(),
                        held: live.instance.clone(),
                    });
                }
                live.close_period(now);
                live.instance = None;
                next_phase = Phase::Terminating;
            }
            Event::KeyPairDeleted { key_name } => {
                if live.key_pair.is_none() || *key_name != live.key_name {
                    return fail(Impossible::KeyPairNotHeld {
                        key_name: key_name.clone(),
                        held: live.key_pair.as_ref().map(|_| live.key_name.clone()),
                    });
                }
                live.key_pair = None;
            }
            Event::SecurityGroupDeleted { group_id } => {
                if live.security_group.as_deref() != Some(group_id.as_str()) {
                    return fail(Impossible::SecurityGroupNotHeld {
                        group_id: group_id.clone(),
                        held: live.security_group.clone(),
                    });
                }
                live.security_group = None;
            }
            Event::GrantSettled { usage } => {
                let held: Vec<String> =
                    self.held_resources().iter().map(|(kind, id)| format!("{kind:?} {id}")).collect();
                if !held.is_empty() {
                    return fail(Impossible::StillHolding { resources: held });
                }
                let computed = self.usage();
                if *usage != computed {
                    return fail(Impossible::UsageMismatch { recorded: *usage, computed });
                }
                self.phase = Phase::Settled;
                self.next_seq += 1;
                self.latest_unix_ms = now;
                self.settled_usage = self.base_usage();
                self.live = None;
                self.compact_network();
                return Ok(());
            }
            Event::OrphanReaped { .. } => return fail(Impossible::OrphanOfLiveGrant { phase }),
            Event::LaunchAbsent { client_token } => {
                if live.launch_requested.as_deref() != Some(client_token.as_str()) || !live.ever_launched.is_empty() {
                    return fail(Impossible::LaunchNotRequested {
                        client_token: client_token.clone(),
                        requested: live.launch_requested.clone(),
                    });
                }
                live.launch_requested = None;
                live.launch_image = None;
            }
            Event::BillingRulesAdopted { version } => {
                if !(3..=crate::BILLING_RULES_VERSION).contains(version) {
                    return fail(Impossible::UnknownBillingRules { version: *version });
                }
                if phase != Phase::Admitted || live.launch_requested.is_some() || !live.ever_launched.is_empty() {
                    return fail(Impossible::WrongPhase { phase, allowed: "Admitted, before any launch" });
                }
                live.billing_rules = *version;
            }
            Event::BillingCapped { at_unix_ms } => {
                if live.ever_launched.is_empty() {
                    return fail(Impossible::InstanceNeverLaunched { instance_id: String::new() });
                }
                // Not clamped up to the grant's clock: the point is to stop earlier than now.
                if let Some(since) = live.running_since_unix_ms {
                    live.close_period((*at_unix_ms).max(since));
                }
                live.deadline_cut = true;
            }
        }
        self.phase = next_phase;
        self.next_seq += 1;
        self.latest_unix_ms = latest;
        Ok(())
    }
}

/// What `GrantAdmitted` and `GrantRetried` say of an attempt.
struct Admission<'a> {
    region: &'a str,
    instance_type: &'a str,
    vcpus: u32,
    memory_mib: u64,
    storage_bytes: u64,
    valid_to: AlmanacTick,
    valid_to_unix_ms: u64,
    key_name: &'a str,
    group_name: &'a str,
}

impl<'a> Admission<'a> {
    /// What `GrantAdmitted` or `GrantRetried` admits; `None` for any other event.
    fn of(event: &'a Event) -> Option<Self> {
        match event {
            Event::GrantAdmitted {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            }
            | Event::GrantRetried {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
                ..
            } => Some(Admission {
                region,
                instance_type,
                vcpus: *vcpus,
                memory_mib: *memory_mib,
                storage_bytes: *storage_bytes,
                valid_to: *valid_to,
                valid_to_unix_ms: *valid_to_unix_ms,
                key_name,
                group_name,
            }),
            _ => None,
        }
    }
}

impl LiveGrant {
    /// A newly admitted attempt, carrying the usage of earlier ones.
    fn admitted(a: Admission<'_>, carried: UsageMetrics) -> Self {
        LiveGrant {
            region: a.region.to_string(),
            instance_type: a.instance_type.to_string(),
            storage_bytes: a.storage_bytes,
            valid_to: a.valid_to,
            valid_to_unix_ms: a.valid_to_unix_ms,
            key_name: a.key_name.to_string(),
            group_name: a.group_name.to_string(),
            key_pair: None,
            security_group: None,
            launch_requested: None,
            launch_image: None,
            instance: None,
            ever_launched: Vec::new(),
            termination: None,
            last_state: None,
            // Until an instance launches nothing is metered; the admitted sizes are replaced
            // by the launched ones.
            launched_vcpus: a.vcpus,
            launched_memory_mib: a.memory_mib,
            closed_running_seconds: 0,
            running_since_unix_ms: None,
            deadline_cut: false,
            billing_rules: 0,
            launch_requested_unix_ms: 0,
            ever_running: false,
            network_bytes: 0,
            carried,
        }
    }

    fn close_period(&mut self, at_unix_ms: u64) {
        if let Some(since) = self.running_since_unix_ms.take() {
            let end = self.billable_until(at_unix_ms);
            self.closed_running_seconds =
                self.closed_running_seconds.saturating_add(billed_seconds(end.saturating_sub(since)));
        }
    }

    /// Where a period closing (or counted) at `at_unix_ms` stops being billed: there, or under
    /// rules 3 at `valid_to` when that is earlier. The requester pays EC2's running time up to
    /// its deadline, never the time the bridge or its ledger took to end it.
    fn billable_until(&self, at_unix_ms: u64) -> u64 {
        if self.billing_rules >= 3 { at_unix_ms.min(self.valid_to_unix_ms) } else { at_unix_ms }
    }

    /// True when, under rules 3, a period opening at `at_unix_ms` would lie wholly after the
    /// deadline (nothing of it is billed).
    fn past_deadline(&self, at_unix_ms: u64) -> bool {
        self.billing_rules >= 3 && at_unix_ms >= self.valid_to_unix_ms
    }

    fn usage(&self, latest_unix_ms: u64) -> UsageMetrics {
        self.carried + self.attempt_usage(latest_unix_ms)
    }

    fn attempt_usage(&self, latest_unix_ms: u64) -> UsageMetrics {
        if self.ever_launched.is_empty() {
            return UsageMetrics { network_bytes: self.network_bytes, ..UsageMetrics::default() };
        }
        let open = self
            .running_since_unix_ms
            .map_or(0, |since| billed_seconds(self.billable_until(latest_unix_ms).saturating_sub(since)));
        let seconds = self.closed_running_seconds.saturating_add(open);
        UsageMetrics {
            cpu_seconds: u64::from(self.launched_vcpus).saturating_mul(seconds),
            ram_mib_seconds: self.launched_memory_mib.saturating_mul(seconds),
            network_bytes: self.network_bytes,
            storage_bytes: self.storage_bytes,
        }
    }
}

/// A network figure must name an instance the grant launched and a window that does not end
/// before it starts.
/// An earlier attempt's instance is known by its entry in the book.
fn check_network(
    live: &LiveGrant,
    book: Option<&NetworkBook>,
    record: &Record,
    instance_id: &str,
    start: u64,
    end: u64,
) -> Result<(), ApplyError> {
    let earlier = book.is_some_and(|b| b.entries.iter().any(|e| e.instance_id == instance_id));
    if !earlier && !live.ever_launched.iter().any(|id| id == instance_id) {
        return Err(ApplyError::new(
            record,
            Impossible::InstanceNeverLaunched { instance_id: instance_id.to_string() },
        ));
    }
    if end < start {
        return Err(ApplyError::new(record, Impossible::BackwardsWindow { start_unix_ms: start, end_unix_ms: end }));
    }
    Ok(())
}

impl NetworkBook {
    fn total(&self) -> u64 {
        self.entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.figure.bytes()))
    }
}

/// The billed seconds of one running period lasting `duration_ms`: rounded up to whole seconds,
/// and at least [`MIN_BILLED_SECONDS`].
pub fn billed_seconds(duration_ms: u64) -> u64 {
    duration_ms.div_ceil(1000).max(MIN_BILLED_SECONDS)
}

/// The state after `record`, given the grant's state before it (`None` for a grant with no
/// events yet). Pure: `state` is not modified; the result is a new state.
///
/// For a hot loop use [`GrantState::step`], the in-place form this wraps.
pub fn apply(state: Option<&GrantState>, record: &Record) -> Result<GrantState, ApplyError> {
    match state {
        None => GrantState::first(record),
        Some(state) => {
            let mut next = state.clone();
            next.step(record)?;
            Ok(next)
        }
    }
}

/// A cheap hasher for grant ids, which are already uniformly distributed bytes.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

pub(crate) type IdMap<V> = HashMap<GrantId, V, BuildHasherDefault<IdHasher>>;

/// Folds `records`, in order, into the state of every grant they mention. Stops at the first
/// impossible transition.
pub fn fold<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<BTreeMap<GrantId, GrantState>, ApplyError> {
    let mut grants: IdMap<GrantState> = IdMap::default();
    for record in records {
        match grants.get_mut(&record.grant) {
            Some(state) => state.step(record)?,
            None => {
                grants.insert(record.grant, GrantState::first(record)?);
            }
        }
    }
    Ok(grants.into_iter().collect())
}

/// An event that cannot follow the grant's earlier events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("grant {grant} seq {seq} {event} is impossible: {kind}")]
pub struct ApplyError {
    /// The grant.
    pub grant: GrantId,
    /// The refused record's sequence number.
    pub seq: u64,
    /// The refused event's variant name.
    pub event: &'static str,
    /// Why it is impossible (boxed to keep `Result`s small on the fold's hot path).
    pub kind: Box<Impossible>,
}

impl ApplyError {
    fn new(record: &Record, kind: Impossible) -> Self {
        Self { grant: record.grant, seq: record.seq, event: record.event.name(), kind: Box::new(kind) }
    }
}

/// The impossible transitions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Impossible {
    /// The grant has no events yet and this is neither `GrantAdmitted` nor `OrphanReaped`.
    #[error("the grant is unknown: its first event must be GrantAdmitted")]
    UnknownGrant,
    /// `GrantAdmitted` for a grant that already has events.
    #[error("the grant was already admitted")]
    AlreadyAdmitted,
    /// `BillingRulesAdopted` of rules this build does not know.
    #[error(
        "billing rules version {version} are unknown to this build (it knows 3 to {})",
        crate::BILLING_RULES_VERSION
    )]
    UnknownBillingRules {
        /// The version in the event.
        version: u32,
    },
    /// The sequence number is not the grant's next one.
    #[error("sequence gap: expected seq {expected}")]
    SequenceGap {
        /// The sequence number the grant's next event must carry.
        expected: u64,
    },
    /// Only `OrphanReaped` may follow settlement.
    #[error("the grant is settled: only OrphanReaped may follow GrantSettled")]
    AfterSettlement,
    /// The event does not fit the grant's phase.
    #[error("the grant is {phase:?}; this event is allowed only while {allowed}")]
    WrongPhase {
        /// The grant's phase.
        phase: Phase,
        /// The phases that allow it.
        allowed: &'static str,
    },
    /// `KeyPairImported` with a name other than the admitted one.
    #[error("key pair {found:?} is not the admitted key name {admitted:?}")]
    KeyNameMismatch {
        /// The admitted name.
        admitted: String,
        /// The name in the event.
        found: String,
    },
    /// `SecurityGroupCreated` with a name other than the admitted one.
    #[error("security group {found:?} is not the admitted group name {admitted:?}")]
    GroupNameMismatch {
        /// The admitted name.
        admitted: String,
        /// The name in the event.
        found: String,
    },
    /// A second key pair while one is held.
    #[error("the grant already holds key pair {key_pair_id}")]
    KeyPairAlreadyHeld {
        /// The held key pair's id.
        key_pair_id: String,
    },
    /// A second security group while one is held.
    #[error("the grant already holds security group {group_id}")]
    SecurityGroupAlreadyHeld {
        /// The held group's id.
        group_id: String,
    },
    /// `LaunchRequested` after an instance launched: a grant runs at most one instance.
    #[error("instance {instance_id} already launched for the grant")]
    AlreadyLaunched {
        /// The launched instance.
        instance_id: String,
    },
    /// `InstanceLaunched` whose token is not the last `LaunchRequested` one.
    #[error("no launch was requested with client token {client_token:?} (last requested: {requested:?})")]
    LaunchNotRequested {
        /// The token in the event.
        client_token: String,
        /// The token of the last `LaunchRequested`, if any.
        requested: Option<String>,
    },
    /// A second, different instance: a grant runs at most one.
    #[error("instance {found} would be the grant's second instance after {first}")]
    SecondInstance {
        /// The instance already launched.
        first: String,
        /// The new instance.
        found: String,
    },
    /// Observing or terminating an instance the grant does not hold.
    #[error("instance {instance_id} is not held by the grant (held: {held:?})")]
    InstanceNotHeld {
        /// The instance in the event.
        instance_id: String,
        /// The instance the grant holds, if any.
        held: Option<String>,
    },
    /// A network sample for an instance the grant never launched.
    #[error("instance {instance_id} was never launched for the grant")]
    InstanceNeverLaunched {
        /// The instance in the event.
        instance_id: String,
    },
    /// A network sample whose window ends before it starts.
    #[error("sample window ends at {end_unix_ms} before it starts at {start_unix_ms}")]
    BackwardsWindow {
        /// The window's start.
        start_unix_ms: u64,
        /// The window's end.
        end_unix_ms: u64,
    },
    /// Deleting a key pair the grant does not hold.
    #[error("key pair {key_name:?} is not held by the grant (held: {held:?})")]
    KeyPairNotHeld {
        /// The name in the event.
        key_name: String,
        /// The held key pair's name, if any.
        held: Option<String>,
    },
    /// Deleting a security group the grant does not hold.
    #[error("security group {group_id} is not held by the grant (held: {held:?})")]
    SecurityGroupNotHeld {
        /// The group in the event.
        group_id: String,
        /// The held group, if any.
        held: Option<String>,
    },
    /// Settling while resources are held: delete them (and record it) first.
    #[error("the grant still holds {resources:?}: record their deletion before GrantSettled")]
    StillHolding {
        /// The held resources.
        resources: Vec<String>,
    },
    /// Settling with a usage other than the fold's.
    #[error(
        "recorded usage {recorded:?} differs from the usage the events fold to, {computed:?}: settle with Ledger::usage"
    )]
    UsageMismatch {
        /// The usage in the event.
        recorded: UsageMetrics,
        /// The usage the events fold to.
        computed: UsageMetrics,
    },
    /// `OrphanReaped` for a grant that is neither unknown nor settled.
    #[error("the grant is {phase:?}, not settled: its resources are not orphans")]
    OrphanOfLiveGrant {
        /// The grant's phase.
        phase: Phase,
    },
}
