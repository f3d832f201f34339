//! The pure fold: per-grant state, the metering rules, and the typed errors for impossible
//! transitions.
//!
//! [`apply`] and [`fold`] hold no business logic: the backend decides, writes an event, and the
//! fold only records what the event says, refusing events that cannot follow the ones before.
//! The metering rules are written down in `docs/metering.md`.

//!
//! The transitions are split by phase, each file one `impl` of [`GrantState`] or its live part
//! with the helpers only that phase uses: `admission.rs`, `launch.rs`, `observation.rs`,
//! `termination.rs`, `network.rs`, `settlement.rs`, and `billing.rs` (the metering rules);
//! `error.rs` holds the typed errors. This file holds the state, its getters, and the
//! dispatch of one event to its phase.

mod admission;
mod billing;
mod error;
mod launch;
mod network;
mod observation;
mod settlement;
mod termination;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use backend_api::{AlmanacTick, GrantId, UsageMetrics};

pub use billing::{MIN_BILLED_SECONDS, billed_seconds};
pub use error::{ApplyError, Impossible};
use network::NetworkBook;
pub use network::{NetworkFigure, NetworkStatus, PendingNetwork};

use crate::event::{Event, ObservedState, Record, ResourceKind, TerminationReason};

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
/// Once settled, a grant is compacted: only its phase, sequence, latest timestamp, settlement
/// time, attempt and retry flag, final usage and open network figures are kept, and the getters for the rest return empty values (`""`, `None`, tick 0).
/// Memory for a settled grant is a few dozen bytes; a live grant keeps its details boxed.
///
/// It serializes (serde) for snapshots only: the encoding follows this build's fields and is
/// tagged with [`SNAPSHOT_VERSION`](crate::SNAPSHOT_VERSION), not a stable interchange format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantState {
    phase: Phase,
    next_seq: u64,
    latest_unix_ms: u64,
    /// When the grant settled (its `GrantSettled`, or a first `OrphanReaped`); 0 before.
    settled_unix_ms: u64,
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

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    /// When the grant settled (the grant's clock at its `GrantSettled`, or the time of an
    /// `OrphanReaped` that created it), while it is settled: what billing periods go by.
    pub fn settled_unix_ms(&self) -> Option<u64> {
        self.is_settled().then_some(self.settled_unix_ms)
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

    /// True when a running period of the current attempt ever opened (false once settled, or
    /// before the grant's first `InstanceStateObserved` of a running instance). A new attempt
    /// (`GrantRetried`) starts again at false.
    pub fn ever_running(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.ever_running)
    }

    /// Applies the grant's next event in place. On error `self` is unchanged.
    pub fn step(&mut self, record: &Record) -> Result<(), ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if record.seq != self.next_seq {
            return fail(Impossible::SequenceGap { expected: self.next_seq });
        }
        let Some(live) = self.live.as_deref_mut() else {
            return self.step_settled(record);
        };
        // Times may go backwards across a restart; the grant's clock never does.
        let now = self.latest_unix_ms.max(record.at_unix_ms);
        let phase = self.phase;
        let mut next_phase = phase;
        let mut latest = now;
        match &record.event {
            Event::GrantAdmitted { .. } | Event::GrantRetried { .. } => return fail(Impossible::AlreadyAdmitted),
            Event::ProvisionFailed { retryable } => self.retry_allowed = *retryable,
            Event::BillingRulesAdopted { version } => live.billing_rules_adopted(record, phase, *version)?,
            Event::KeyPairImported { key_name, key_pair_id } => {
                next_phase = live.key_pair_imported(record, phase, key_name, key_pair_id)?;
            }
            Event::SecurityGroupCreated { group_id, group_name } => {
                next_phase = live.security_group_created(record, phase, group_id, group_name)?;
            }
            Event::LaunchRequested { client_token, image_id, .. } => {
                next_phase = live.launch_requested(record, phase, now, client_token, image_id)?;
            }
            Event::InstanceLaunched { instance_id, client_token, instance_type: _, vcpus, memory_mib } => {
                next_phase = live.instance_launched(record, phase, instance_id, client_token, (*vcpus, *memory_mib))?;
            }
            Event::LaunchAbsent { client_token } => live.launch_absent(record, client_token)?,
            Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms } => {
                let clock = self.latest_unix_ms;
                latest = live.state_observed(record, clock, now, instance_id, *state, *observed_at_unix_ms)?;
            }
            Event::NetworkSampled { instance_id, bytes_in, bytes_out, window_start_unix_ms, window_end_unix_ms } => {
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                live.network_sampled(record, instance_id, (*bytes_in, *bytes_out), window)?;
            }
            Event::NetworkMeasured {
                instance_id,
                bytes_in,
                bytes_out,
                window_start_unix_ms,
                window_end_unix_ms,
                complete,
            } => {
                let bytes = bytes_in.saturating_add(*bytes_out);
                let figure = if *complete { NetworkFigure::Complete(bytes) } else { NetworkFigure::Provisional(bytes) };
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                network::record_network(live, &mut self.network, record, instance_id, window, Some(figure))?;
            }
            Event::NetworkUnknown { instance_id, window_start_unix_ms, window_end_unix_ms } => {
                let window = (*window_start_unix_ms, *window_end_unix_ms);
                network::record_network(live, &mut self.network, record, instance_id, window, None)?;
            }
            Event::TerminationRequested { reason } => next_phase = live.termination_requested(*reason, now),
            Event::InstanceTerminated { instance_id } => {
                next_phase = live.instance_terminated(record, instance_id, now)?
            }
            Event::KeyPairDeleted { key_name } => live.key_pair_deleted(record, key_name)?,
            Event::SecurityGroupDeleted { group_id } => live.security_group_deleted(record, group_id)?,
            Event::BillingCapped { at_unix_ms } => live.billing_capped(record, *at_unix_ms)?,
            Event::GrantSettled { usage } => return self.settle(record, now, usage),
            Event::OrphanReaped { .. } => return fail(Impossible::OrphanOfLiveGrant { phase }),
        }
        self.phase = next_phase;
        self.next_seq += 1;
        self.latest_unix_ms = latest;
        Ok(())
    }
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

impl IdHasher {
    fn mix(&mut self, word: [u8; 8]) {
        self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Whole words first, copied with a fixed length (a variable-length copy is a call to
        // `memmove`, which cost more than the hashing); then the zero-padded rest, if any.
        let mut words = bytes.chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(word);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(word);
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
