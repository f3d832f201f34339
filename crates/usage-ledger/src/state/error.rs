//! The typed errors of the fold: an event that cannot follow the grant's earlier events.

use backend_api::{GrantId, UsageMetrics};

use super::Phase;
use crate::event::Record;

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
    pub(super) fn new(record: &Record, kind: Impossible) -> Self {
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
