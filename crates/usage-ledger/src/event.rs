//! The facts the ledger records about a grant, and the record that carries each one.

use backend_api::{AlmanacTick, GrantId, UsageMetrics};
use serde::{Deserialize, Serialize};

/// Something that happened to a grant, in the past tense.
///
/// Persisted through a versioned envelope (see `docs/metering.md`): new variants go at the end
/// and existing variants never change shape; a change of shape freezes the old types and adds
/// a new envelope version so that old logs stay readable (version 2 added
/// `LaunchRequested::image_id`; version 1's types are frozen in `v1.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The backend accepted the grant and will provision it. Always a grant's first event.
    GrantAdmitted {
        /// The region the grant runs in.
        region: String,
        /// The instance type chosen at admission (the launched type may differ, see
        /// [`Event::InstanceLaunched`]).
        instance_type: String,
        /// vCPUs of the chosen type.
        vcpus: u32,
        /// Memory of the chosen type in MiB.
        memory_mib: u64,
        /// Provisioned volume size in bytes: metered as storage once an instance launched.
        storage_bytes: u64,
        /// The grant's deadline.
        valid_to: AlmanacTick,
        /// The deadline in unix milliseconds.
        valid_to_unix_ms: u64,
        /// The name the grant's key pair gets at the provider.
        key_name: String,
        /// The name the grant's security group gets at the provider.
        group_name: String,
    },
    /// The grant's public key was imported as a key pair.
    KeyPairImported {
        /// The key pair's name (equal to the admitted `key_name`).
        key_name: String,
        /// The provider's id for it.
        key_pair_id: String,
    },
    /// The grant's security group was created.
    SecurityGroupCreated {
        /// The provider's group id.
        group_id: String,
        /// The group's name (equal to the admitted `group_name`).
        group_name: String,
    },
    /// A launch is about to be requested with this idempotency token. Written before
    /// `RunInstances` so that recovery knows an instance may exist.
    LaunchRequested {
        /// The idempotency token sent with the launch.
        client_token: String,
        /// The instance type asked for.
        instance_type: String,
        /// The AMI launched, as resolved when the launch was requested (an alias's id moves on
        /// with every release). `None` in records written before format version 2, which did
        /// not record it.
        image_id: Option<String>,
    },
    /// An instance exists for the grant. Its sizes are the ones metering uses.
    InstanceLaunched {
        /// The provider's instance id.
        instance_id: String,
        /// The token of the [`Event::LaunchRequested`] that made it.
        client_token: String,
        /// The type actually launched.
        instance_type: String,
        /// vCPUs of the launched type.
        vcpus: u32,
        /// Memory of the launched type in MiB.
        memory_mib: u64,
    },
    /// A poll saw the instance in `state`.
    InstanceStateObserved {
        /// The instance observed.
        instance_id: String,
        /// What the provider reported.
        state: ObservedState,
        /// When the provider was asked, in unix milliseconds.
        observed_at_unix_ms: u64,
    },
    /// Network traffic of the instance over a window.
    NetworkSampled {
        /// The instance sampled.
        instance_id: String,
        /// Bytes received in the window.
        bytes_in: u64,
        /// Bytes sent in the window.
        bytes_out: u64,
        /// Start of the window in unix milliseconds.
        window_start_unix_ms: u64,
        /// End of the window in unix milliseconds (not before the start).
        window_end_unix_ms: u64,
    },
    /// The backend decided to end the grant.
    TerminationRequested {
        /// Why.
        reason: TerminationReason,
    },
    /// The instance is gone (terminated at the provider).
    InstanceTerminated {
        /// The instance that ended.
        instance_id: String,
    },
    /// The grant's key pair was deleted.
    KeyPairDeleted {
        /// The key pair's name.
        key_name: String,
    },
    /// The grant's security group was deleted.
    SecurityGroupDeleted {
        /// The group's id.
        group_id: String,
    },
    /// The grant's usage is final. Allowed only once the grant holds nothing, and only with
    /// the usage the events fold to.
    GrantSettled {
        /// The final usage.
        usage: UsageMetrics,
    },
    /// The orphan reaper removed a resource tagged with this grant. Informational: allowed only
    /// for grants that are unknown or settled, and changes nothing but the sequence.
    OrphanReaped {
        /// What kind of resource.
        resource_kind: ResourceKind,
        /// The provider's id for it.
        resource_id: String,
    },
    /// A launch that was requested (`LaunchRequested` with this token) is proved never to have
    /// happened: after EC2's visibility window a Describe filtered by the ClientToken found
    /// nothing. Resolves the pending launch, so the grant may settle.
    LaunchAbsent {
        /// The token of the launch.
        client_token: String,
    },
    /// The provision failed; `retryable` says whether the error invites the caller to try again
    /// (then, once the grant has settled, `GrantRetried` may admit it again).
    ProvisionFailed {
        /// Whether the error may be retried.
        retryable: bool,
    },
    /// A new provision attempt of a grant whose last attempt failed with a retryable error and
    /// was rolled back and settled. Like `GrantAdmitted`, with the attempt number (1, 2, ...),
    /// whose launches carry their own ClientTokens. The earlier attempts' usage is carried.
    GrantRetried {
        /// The attempt: one more than the last.
        attempt: u32,
        /// The region the attempt runs in.
        region: String,
        /// The instance type chosen at admission.
        instance_type: String,
        /// Its vCPUs.
        vcpus: u32,
        /// Its memory, MiB.
        memory_mib: u64,
        /// The root volume, bytes.
        storage_bytes: u64,
        /// The deadline.
        valid_to: AlmanacTick,
        /// The deadline, unix ms.
        valid_to_unix_ms: u64,
        /// The key pair's name.
        key_name: String,
        /// The security group's name.
        group_name: String,
    },
    /// Billing stops at `at_unix_ms` (the grant's `valid_to`), however late the termination
    /// that follows is recorded: the bridge was down at the deadline. Closes the running period
    /// at that time (not earlier than it opened) and keeps it closed, like a deadline.
    BillingCapped {
        /// When billing stops, unix ms.
        at_unix_ms: u64,
    },
    /// CloudWatch's whole-life network figure for one instance, replacing any earlier figure
    /// of that instance (never added to it). `complete` is false for the figure taken when the
    /// instance ended, whose last minutes CloudWatch had not yet published; true for the one
    /// taken after the publication lag. A complete figure may amend a settled grant.
    NetworkMeasured {
        /// The instance measured.
        instance_id: String,
        /// Bytes received over the window.
        bytes_in: u64,
        /// Bytes sent over the window.
        bytes_out: u64,
        /// Start of the window (the instance's launch), unix ms.
        window_start_unix_ms: u64,
        /// End of the window (when the instance was seen gone), unix ms.
        window_end_unix_ms: u64,
        /// True once CloudWatch's publication lag has passed since `window_end_unix_ms`.
        complete: bool,
    },
    /// CloudWatch could not answer for the instance when it ended: its network is unknown
    /// (not zero) until a later `NetworkMeasured` says.
    NetworkUnknown {
        /// The instance.
        instance_id: String,
        /// Start of the window that would have been measured, unix ms.
        window_start_unix_ms: u64,
        /// End of that window, unix ms.
        window_end_unix_ms: u64,
    },
    /// The attempt is billed by the rules of `version` (recorded with its `GrantAdmitted` or
    /// `GrantRetried` by ledgers since [`BILLING_RULES_VERSION`]; an attempt without it is billed
    /// by the rules its records were written under, so old logs replay to what they settled).
    /// Version 3: a running period ends at the grant's `valid_to` at the latest, whatever
    /// closes it later, and a period none of the attempt's earlier ones opened may open before
    /// the grant's clock, down to its `LaunchRequested` (a run the bridge missed while down is
    /// billed from EC2's LaunchTime); see docs/metering.md.
    BillingRulesAdopted {
        /// The rules' version.
        version: u32,
    },
}

/// The billing rules this build records for every attempt it admits (see
/// [`Event::BillingRulesAdopted`]).
pub const BILLING_RULES_VERSION: u32 = 3;

impl Event {
    /// The `GrantRetried` of `attempt` admitting what this `GrantAdmitted` admits; any other
    /// event is returned unchanged.
    pub fn retried(self, attempt: u32) -> Event {
        match self {
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
            } => Event::GrantRetried {
                attempt,
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            },
            other => other,
        }
    }

    /// The variant's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Event::GrantAdmitted { .. } => "GrantAdmitted",
            Event::KeyPairImported { .. } => "KeyPairImported",
            Event::SecurityGroupCreated { .. } => "SecurityGroupCreated",
            Event::LaunchRequested { .. } => "LaunchRequested",
            Event::InstanceLaunched { .. } => "InstanceLaunched",
            Event::InstanceStateObserved { .. } => "InstanceStateObserved",
            Event::NetworkSampled { .. } => "NetworkSampled",
            Event::TerminationRequested { .. } => "TerminationRequested",
            Event::InstanceTerminated { .. } => "InstanceTerminated",
            Event::KeyPairDeleted { .. } => "KeyPairDeleted",
            Event::SecurityGroupDeleted { .. } => "SecurityGroupDeleted",
            Event::GrantSettled { .. } => "GrantSettled",
            Event::OrphanReaped { .. } => "OrphanReaped",
            Event::LaunchAbsent { .. } => "LaunchAbsent",
            Event::BillingCapped { .. } => "BillingCapped",
            Event::ProvisionFailed { .. } => "ProvisionFailed",
            Event::GrantRetried { .. } => "GrantRetried",
            Event::NetworkMeasured { .. } => "NetworkMeasured",
            Event::NetworkUnknown { .. } => "NetworkUnknown",
            Event::BillingRulesAdopted { .. } => "BillingRulesAdopted",
        }
    }
}

/// An EC2 instance state as a poll reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObservedState {
    /// `pending`.
    Pending,
    /// `running`: opens a running period.
    Running,
    /// `shutting-down`: closes the running period.
    ShuttingDown,
    /// `terminated`: closes the running period.
    Terminated,
    /// `stopping`: closes the running period.
    Stopping,
    /// `stopped`: closes the running period.
    Stopped,
}

impl ObservedState {
    /// True for the states that end a running period.
    pub fn ends_running(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated | Self::Stopping | Self::Stopped)
    }
}

/// Why a grant is being ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TerminationReason {
    /// The grant's `valid_to` arrived: running time stops counting at this event.
    Deadline,
    /// The workload exited by itself.
    Exited,
    /// An operator asked.
    Operator,
    /// Provisioning failed and everything created is being removed.
    Rollback,
}

/// A kind of provider resource a grant can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// An EC2 instance.
    Instance,
    /// An EC2 key pair.
    KeyPair,
    /// An EC2 security group.
    SecurityGroup,
}

/// One event as stored: which grant, its place in the grant's sequence, and when it was
/// written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The grant the event belongs to.
    pub grant: GrantId,
    /// The event's position in the grant's sequence, starting at 0, without gaps.
    pub seq: u64,
    /// When the event was written, in unix milliseconds from the injected clock. May go
    /// backwards across a restart; the fold clamps it (see `docs/metering.md`).
    pub at_unix_ms: u64,
    /// What happened.
    pub event: Event,
}
