//! The deliberate bugs of the self-test (`cargo xtask sim --self-test`): what each switches
//! on, which checker must catch it, and the clause of that checker it must trip.

use aws_backend::TestSwitches;
use serde::Serialize;

use crate::checkers::names;
use crate::framestore::StoreFault;

/// A deliberate bug, switched on for a run to prove that its checker sees it
/// (`cargo xtask sim --self-test`). Each breaks the backend (or its store) in one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Breakage {
    /// Terminate 5 s after valid_to.
    TerminateLate,
    /// Terminate 2 minutes before valid_to.
    TerminateEarly,
    /// A new ClientToken for every RunInstances call.
    FreshClientToken,
    /// Skip DeleteSecurityGroup but record the group deleted.
    SkipGroupDelete,
    /// Over-bill each running period by about 1 %.
    Overbill,
    /// Never record the network sample.
    DropNetworkSample,
    /// Never measure network again after CloudWatch's publication lag.
    ProvisionalNetwork,
    /// The store acknowledges the 40th append and keeps nothing of it.
    DropLedgerAppend,
    /// The store keeps the 40th append with a bit flipped.
    CorruptLedgerAppend,
    /// The store saves each snapshot at the log's end after the next append, not the current
    /// one: a replay from it skips that append's records.
    SnapshotLatePosition,
    /// Panic in the provision of about one grant in eight.
    Panic,
    /// Admit grants that require TDX.
    AdmitTdx,
    /// Fail about one provision in eight for no reason EC2 gave.
    FailProvision,
    /// Never settle about one grant in eight.
    SkipSettle,
    /// Launch the smallest type whatever the grant asks.
    Undersize,
    /// Launch instances without the grant tag.
    UntaggedInstance,
    /// Send calls without mirroring EC2's buckets (run on a burst: every grant arrives at once).
    NoPacing,
    /// Launch at once, without waiting for `valid_from` (run on edge grants).
    EarlyStart,
    /// Put the requester's private key in the user data.
    LeakLoginKey,
    /// Hand the requester the backend's own host key, not the one the guest printed.
    PinBackendHostKey,
    /// Launch with IMDSv1 allowed and a hop limit of 2.
    OpenImds,
    /// Tell the guest to power off an hour after valid_to + grace.
    LateGuestPowerOff,
    /// Read only the first page of every paginated listing (run with short pages).
    FirstPageOnly,
    /// A replica that lost its lease keeps acting (run with replicas and long pauses).
    FencedReplicaActs,
    /// Tell the guest to power off two minutes before valid_to + grace (before valid_to).
    EarlyGuestPowerOff,
    /// Recovery leaves instances already past their deadline to the guest.
    RecoverySkipsOverdue,
    /// Bill the time the bridge was away when it handles a deadline late.
    BillDowntime,
    /// Bill a run nobody watched from its first sighting, not from LaunchTime.
    IgnoreLaunchTime,
    /// `watch_until_exit` returns one cpu-second more than the ledger holds.
    WatchUsageOff,
    /// Let SSH in from anywhere besides the configured CIDRs.
    OpenIngress,
    /// Launch up to valid_to itself, ignoring `min_lifetime_s` (run on edge grants).
    IgnoreMinLifetime,
    /// Launch instances without the grant tag and add it with CreateTags once launched.
    TagAfterCreate,
    /// Record `LaunchRequested` once RunInstances has answered, not before.
    RecordAfterLaunch,
    /// The watch lists a region's instances once per watched instance at every poll.
    ListingPerInstance,
    /// A provision a drain cut short is rolled back as a failure that may not be retried.
    DrainRollbackFinal,
}

impl Breakage {
    /// Every breakage, in the order the self-test runs them.
    pub const ALL: [Breakage; 35] = [
        Breakage::TerminateLate,
        Breakage::TerminateEarly,
        Breakage::FreshClientToken,
        Breakage::SkipGroupDelete,
        Breakage::Overbill,
        Breakage::DropNetworkSample,
        Breakage::ProvisionalNetwork,
        Breakage::DropLedgerAppend,
        Breakage::CorruptLedgerAppend,
        Breakage::SnapshotLatePosition,
        Breakage::Panic,
        Breakage::AdmitTdx,
        Breakage::FailProvision,
        Breakage::SkipSettle,
        Breakage::Undersize,
        Breakage::UntaggedInstance,
        Breakage::NoPacing,
        Breakage::EarlyStart,
        Breakage::LeakLoginKey,
        Breakage::PinBackendHostKey,
        Breakage::OpenImds,
        Breakage::LateGuestPowerOff,
        Breakage::FirstPageOnly,
        Breakage::FencedReplicaActs,
        Breakage::EarlyGuestPowerOff,
        Breakage::RecoverySkipsOverdue,
        Breakage::BillDowntime,
        Breakage::IgnoreLaunchTime,
        Breakage::WatchUsageOff,
        Breakage::OpenIngress,
        Breakage::IgnoreMinLifetime,
        Breakage::TagAfterCreate,
        Breakage::RecordAfterLaunch,
        Breakage::ListingPerInstance,
        Breakage::DrainRollbackFinal,
    ];

    /// Its name on the command line (`--break NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Breakage::TerminateLate => "terminate-late",
            Breakage::TerminateEarly => "terminate-early",
            Breakage::FreshClientToken => "fresh-client-token",
            Breakage::SkipGroupDelete => "skip-group-delete",
            Breakage::Overbill => "overbill",
            Breakage::DropNetworkSample => "drop-network-sample",
            Breakage::ProvisionalNetwork => "provisional-network",
            Breakage::DropLedgerAppend => "drop-ledger-append",
            Breakage::CorruptLedgerAppend => "corrupt-ledger-append",
            Breakage::SnapshotLatePosition => "snapshot-late-position",
            Breakage::Panic => "panic",
            Breakage::AdmitTdx => "admit-tdx",
            Breakage::FailProvision => "fail-provision",
            Breakage::SkipSettle => "skip-settle",
            Breakage::Undersize => "undersize",
            Breakage::UntaggedInstance => "untagged-instance",
            Breakage::NoPacing => "no-pacing",
            Breakage::EarlyStart => "early-start",
            Breakage::LeakLoginKey => "leak-login-key",
            Breakage::PinBackendHostKey => "pin-backend-host-key",
            Breakage::OpenImds => "open-imds",
            Breakage::LateGuestPowerOff => "late-guest-poweroff",
            Breakage::FirstPageOnly => "first-page-only",
            Breakage::FencedReplicaActs => "fenced-replica-acts",
            Breakage::EarlyGuestPowerOff => "early-guest-poweroff",
            Breakage::RecoverySkipsOverdue => "recovery-skips-overdue",
            Breakage::BillDowntime => "bill-downtime",
            Breakage::IgnoreLaunchTime => "ignore-launch-time",
            Breakage::WatchUsageOff => "watch-usage-off",
            Breakage::OpenIngress => "open-ingress",
            Breakage::IgnoreMinLifetime => "ignore-min-lifetime",
            Breakage::TagAfterCreate => "tag-after-create",
            Breakage::RecordAfterLaunch => "record-after-launch",
            Breakage::ListingPerInstance => "listing-per-instance",
            Breakage::DrainRollbackFinal => "drain-rollback-final",
        }
    }

    /// The breakage named `name`.
    pub fn from_name(name: &str) -> Option<Breakage> {
        Breakage::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The backend's switches for it.
    pub fn switches(self) -> TestSwitches {
        const ONE_IN_EIGHT: u8 = 32;
        let mut s = TestSwitches::default();
        match self {
            Breakage::TerminateLate => s.terminate_late_ms = 5_000,
            Breakage::TerminateEarly => s.terminate_early_ms = 120_000,
            Breakage::FreshClientToken => s.fresh_client_token_per_call = true,
            Breakage::SkipGroupDelete => s.skip_security_group_delete = true,
            Breakage::Overbill => s.overbill_percent = 1,
            Breakage::DropNetworkSample => s.skip_network_sample = true,
            Breakage::ProvisionalNetwork => s.skip_network_final = true,
            Breakage::Panic => s.panic_below = ONE_IN_EIGHT,
            Breakage::AdmitTdx => s.admit_tdx = true,
            Breakage::FailProvision => s.fail_provision_below = ONE_IN_EIGHT,
            Breakage::SkipSettle => s.skip_settle_below = ONE_IN_EIGHT,
            Breakage::Undersize => s.undersize = true,
            Breakage::UntaggedInstance => s.untagged_instances = true,
            Breakage::NoPacing => s.skip_pacing = true,
            Breakage::EarlyStart => s.ignore_valid_from = true,
            Breakage::LeakLoginKey => s.leak_login_key = true,
            Breakage::PinBackendHostKey => s.pin_backend_host_key = true,
            Breakage::OpenImds => s.open_imds = true,
            Breakage::LateGuestPowerOff => s.guest_poweroff_late_s = 3_600,
            Breakage::FirstPageOnly => s.first_page_only = true,
            Breakage::FencedReplicaActs => s.ignore_lease = true,
            Breakage::EarlyGuestPowerOff => s.guest_poweroff_early_s = 120,
            Breakage::RecoverySkipsOverdue => s.recovery_skips_overdue = true,
            Breakage::BillDowntime => s.bill_downtime = true,
            Breakage::IgnoreLaunchTime => s.ignore_launch_time = true,
            Breakage::WatchUsageOff => s.watch_usage_extra = true,
            Breakage::OpenIngress => s.open_ingress = true,
            Breakage::IgnoreMinLifetime => s.ignore_min_lifetime = true,
            Breakage::TagAfterCreate => s.tag_after_create = true,
            Breakage::RecordAfterLaunch => s.record_launch_after = true,
            Breakage::ListingPerInstance => s.listing_per_instance = true,
            Breakage::DrainRollbackFinal => s.drain_rollback_final = true,
            Breakage::DropLedgerAppend | Breakage::CorruptLedgerAppend | Breakage::SnapshotLatePosition => {}
        }
        s
    }

    /// The store fault it arms, if it breaks the store.
    pub fn store_fault(self) -> Option<StoreFault> {
        match self {
            Breakage::DropLedgerAppend => Some(StoreFault::DropAppend(40)),
            Breakage::CorruptLedgerAppend => Some(StoreFault::CorruptAppend(40)),
            Breakage::SnapshotLatePosition => Some(StoreFault::SnapshotLatePosition),
            _ => None,
        }
    }

    /// The checker that must fire.
    pub fn caught_by(self) -> &'static str {
        match self {
            Breakage::TerminateLate => names::DEADLINE,
            Breakage::TerminateEarly => names::EARLY_END,
            Breakage::FreshClientToken => names::IDEMPOTENCY,
            Breakage::SkipGroupDelete => names::TEARDOWN,
            Breakage::Overbill | Breakage::DropNetworkSample | Breakage::ProvisionalNetwork => names::METERING,
            Breakage::DropLedgerAppend | Breakage::CorruptLedgerAppend => names::LEDGER,
            Breakage::SnapshotLatePosition => names::SNAPSHOT,
            Breakage::Panic => names::PANIC,
            Breakage::AdmitTdx => names::ADMISSION,
            Breakage::FailProvision => names::PROVISION,
            Breakage::SkipSettle => names::LIVENESS,
            Breakage::Undersize => names::SIZING,
            Breakage::UntaggedInstance => names::TAGS,
            Breakage::NoPacing => names::PACING,
            Breakage::EarlyStart => names::DEADLINE,
            Breakage::LeakLoginKey => names::SECRETS,
            Breakage::PinBackendHostKey | Breakage::OpenImds | Breakage::OpenIngress => names::GUEST,
            Breakage::LateGuestPowerOff | Breakage::EarlyGuestPowerOff => names::BACKSTOP,
            Breakage::RecoverySkipsOverdue | Breakage::IgnoreMinLifetime => names::DEADLINE,
            Breakage::BillDowntime | Breakage::IgnoreLaunchTime => names::METERING,
            Breakage::WatchUsageOff => names::CONTRACT,
            Breakage::FirstPageOnly => names::PAGINATION,
            Breakage::FencedReplicaActs => names::FENCE,
            Breakage::TagAfterCreate => names::TAGS,
            Breakage::RecordAfterLaunch => names::RECORD_FIRST,
            Breakage::ListingPerInstance => names::LISTING,
            Breakage::DrainRollbackFinal => names::DRAIN,
        }
    }

    /// Checkers that may fire as well, as consequences of the same bug.
    pub fn also_plausible(self) -> &'static [&'static str] {
        match self {
            Breakage::TerminateLate => &[names::METERING],
            // The armed deadline also ends instances still pending two minutes before it.
            Breakage::TerminateEarly => &[names::METERING, names::PROVISION],
            // Its tokens are not the ones recorded.
            Breakage::FreshClientToken => {
                &[names::TEARDOWN, names::METERING, names::DEADLINE, names::LIVENESS, names::RECORD_FIRST]
            }
            Breakage::SkipGroupDelete => &[names::LIVENESS],
            Breakage::Overbill | Breakage::DropNetworkSample | Breakage::ProvisionalNetwork => &[],
            // A dropped admission or launch request leaves what follows it unrecorded.
            // A snapshot taken after a dropped append holds what the log lacks.
            Breakage::DropLedgerAppend | Breakage::CorruptLedgerAppend => {
                &[names::METERING, names::LIVENESS, names::RECORD_FIRST, names::SNAPSHOT]
            }
            // The process opened on books missing records acts on them: it may provision, end
            // or bill a grant again.
            Breakage::SnapshotLatePosition => &[
                names::LEDGER,
                names::METERING,
                names::LIVENESS,
                names::DEADLINE,
                names::TEARDOWN,
                names::IDEMPOTENCY,
                names::PROVISION,
                names::RECORD_FIRST,
                names::EARLY_END,
                names::CONTRACT,
            ],
            // A provision that panics leaves its grant mid-provision, through a drain too.
            Breakage::Panic => &[names::LIVENESS, names::DEADLINE, names::TEARDOWN, names::METERING, names::DRAIN],
            Breakage::AdmitTdx => &[],
            Breakage::FailProvision => &[],
            Breakage::SkipSettle => &[],
            Breakage::Undersize => &[names::PROVISION, names::METERING],
            Breakage::UntaggedInstance => &[names::METERING, names::LIVENESS, names::DEADLINE, names::TEARDOWN],
            Breakage::NoPacing => &[names::PROVISION, names::LIVENESS],
            Breakage::EarlyStart | Breakage::LeakLoginKey => &[],
            Breakage::PinBackendHostKey | Breakage::OpenImds => &[],
            Breakage::LateGuestPowerOff => &[],
            // Instances missed on later pages are seen late: their runs are billed short.
            Breakage::FirstPageOnly => &[names::METERING],
            Breakage::FencedReplicaActs => &[],
            // The guest ends its instance before valid_to: the grant's bill and the watch's
            // account of it follow.
            // A retried provision may then come too late to launch.
            Breakage::EarlyGuestPowerOff => &[names::METERING, names::EARLY_END, names::CONTRACT, names::PROVISION],
            Breakage::RecoverySkipsOverdue => &[names::METERING],
            Breakage::BillDowntime | Breakage::IgnoreLaunchTime => &[names::CONTRACT],
            Breakage::WatchUsageOff | Breakage::OpenIngress => &[],
            // Short grants now launch, and may be refused or fail by their deadline instead.
            Breakage::IgnoreMinLifetime => &[names::ADMISSION, names::PROVISION, names::METERING, names::CONTRACT],
            // Until CreateTags lands (and is visible), recovery's lookups by tag miss the
            // instance.
            Breakage::TagAfterCreate => &[names::LIVENESS, names::DEADLINE, names::METERING],
            Breakage::RecordAfterLaunch | Breakage::ListingPerInstance => &[],
            // The grant, sent again, is refused for good.
            Breakage::DrainRollbackFinal => &[names::PROVISION],
        }
    }

    /// The clause of its checker the bug must trip: a phrase of that clause's violation
    /// message, so that a checker firing for another reason does not count.
    pub fn clause(self) -> &'static str {
        match self {
            Breakage::TerminateLate => "a bridge was acting at valid_to",
            Breakage::TerminateEarly => "terminated by the bridge",
            Breakage::FreshClientToken => "launched",
            Breakage::SkipGroupDelete => "still holds",
            Breakage::Overbill => "over by",
            Breakage::DropNetworkSample | Breakage::ProvisionalNetwork => "network",
            Breakage::DropLedgerAppend | Breakage::CorruptLedgerAppend => "",
            Breakage::SnapshotLatePosition => "the snapshot at log offset",
            Breakage::Panic => "panic",
            Breakage::AdmitTdx => "must be refused",
            Breakage::FailProvision => "provision failed with no injected fault",
            Breakage::SkipSettle => "not settled",
            Breakage::Undersize => "",
            Breakage::UntaggedInstance => "",
            Breakage::NoPacing => "",
            Breakage::EarlyStart => "before valid_from",
            Breakage::LeakLoginKey => "",
            Breakage::PinBackendHostKey => "to pin host key",
            Breakage::OpenImds => "IMDS options",
            Breakage::LateGuestPowerOff => "after valid_to + grace",
            Breakage::FirstPageOnly => "",
            Breakage::FencedReplicaActs => "",
            Breakage::EarlyGuestPowerOff => "before valid_to + grace",
            Breakage::RecoverySkipsOverdue => "its return plus recovery",
            Breakage::BillDowntime => "over by",
            Breakage::IgnoreLaunchTime => "under by",
            Breakage::WatchUsageOff => "watch_until_exit returned",
            Breakage::OpenIngress => "ingress rules",
            Breakage::IgnoreMinLifetime => "within min_lifetime_s",
            Breakage::TagAfterCreate => "in its create call",
            Breakage::RecordAfterLaunch => "before the ledger held its LaunchRequested",
            Breakage::ListingPerInstance => "within one poll interval",
            Breakage::DrainRollbackFinal => "rolled back as retryable",
        }
    }
}
