//! Deliberate bugs for the simulation's self-test (`cargo xtask sim --self-test`), each of which
//! a checker must catch: [`TestSwitches`], and [`Hooks`], the one place the phases ask them.
//!
//! The switches exist only with the `test-switches` feature, which only the test harness
//! (`tests/`) enables. Without it `TestSwitches` has no fields and every hook is the plain
//! behaviour, so the shipped binary carries none of them. No phase reads a switch: each asks a
//! hook (`self.hooks().terminate_at(valid_to)`), and only this module reads the fields.

use backend_api::{BackendError, GrantId, UsageMetrics};

use crate::keys::SshKeyPair;
use crate::pacing::Pacer;
use crate::poller::RegionPoller;
use crate::port::{InstanceTypeInfo, Tags};

/// Switches that break the backend on purpose, so the simulation's self-test can prove each
/// checker catches its kind of bug. Never set in production, and without the `test-switches`
/// feature there is nothing to set.
///
/// The `*_below` switches pick the grants whose id's first byte is below the value (0: no
/// grant), so that a run breaks some of its grants and keeps the others as they should be.
#[cfg(feature = "test-switches")]
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
    /// Panic in provision, for the grants whose id's first byte is below this.
    pub panic_below: u8,
    /// Admit grants that require TDX (`can_satisfy` and `provision` both).
    pub admit_tdx: bool,
    /// Fail provision, after admitting the grant, with a made-up provider error, for the grants
    /// whose id's first byte is below this.
    pub fail_provision_below: u8,
    /// Never record `GrantSettled`, for the grants whose id's first byte is below this.
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
    /// Read only the first page of every paginated listing.
    pub first_page_only: bool,
    /// Act as if the lease were held forever: send EC2 calls past its end, and keep going once
    /// it is lost (a fenced replica that does not stop).
    pub ignore_lease: bool,
    /// Launch instances without the grant tag, and add it with CreateTags once RunInstances
    /// has answered.
    pub tag_after_create: bool,
    /// Record `LaunchRequested` once RunInstances has answered, not before it.
    pub record_launch_after: bool,
    /// The region poller lists once per watched instance at every poll.
    pub listing_per_instance: bool,
    /// A provision a drain cut short records a failure that may not be retried.
    pub drain_rollback_final: bool,
}

/// Without the `test-switches` feature: nothing to switch (see the module's documentation);
/// `TestSwitches::default()` is the only value.
#[cfg(not(feature = "test-switches"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSwitches {
    /// Keeps the type a struct to build with `default()`, as with the feature.
    _none: (),
}

impl TestSwitches {
    /// True when any switch is set.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// What the phases ask of the switches: each hook answers the plain behaviour unless its switch
/// is set (and always, without the `test-switches` feature).
#[derive(Debug)]
pub(crate) struct Hooks {
    #[cfg(feature = "test-switches")]
    switches: TestSwitches,
    /// Counts RunInstances calls, for `TestSwitches::fresh_client_token_per_call`.
    #[cfg(feature = "test-switches")]
    run_calls: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "test-switches")]
impl Hooks {
    pub(crate) fn new(switches: TestSwitches) -> Self {
        Self { switches, run_calls: std::sync::atomic::AtomicU64::new(0) }
    }

    /// True when `grant` is one a `*_below` switch of value `below` picks.
    fn grant_byte_below(grant: &GrantId, below: u8) -> bool {
        grant.0[0] < below
    }

    /// The pacer as the switches leave it: without our buckets, reading first pages only.
    pub(crate) fn pacer(&self, mut pacer: Pacer) -> Pacer {
        if self.switches.skip_pacing {
            pacer = pacer.without_buckets();
        }
        if self.switches.first_page_only {
            pacer = pacer.reading_first_pages_only();
        }
        pacer
    }

    /// Whether EC2 calls are fenced by the lease, and a lost lease stops the backend's tasks.
    pub(crate) fn heeds_lease(&self) -> bool {
        !self.switches.ignore_lease
    }

    /// Whether an admission is recorded with its billing rules, and a late deadline caps the bill.
    pub(crate) fn bills_by_rules(&self) -> bool {
        !self.switches.bill_downtime
    }

    /// Whether a grant that requires TDX is refused.
    pub(crate) fn refuses_tdx(&self) -> bool {
        !self.switches.admit_tdx
    }

    /// Whether a launch with `left_ms` before `valid_to` (less than `min_lifetime_s`) is let go.
    pub(crate) fn launches_late(&self, left_ms: u64) -> bool {
        self.switches.ignore_min_lifetime && left_ms > 0
    }

    /// Whether provision waits for `valid_from`.
    pub(crate) fn waits_for_valid_from(&self) -> bool {
        !self.switches.ignore_valid_from
    }

    /// The types to try, from the fitting ones (`fitting`) and the whole catalogue (`types`).
    pub(crate) fn fitting(&self, types: &[InstanceTypeInfo], fitting: Vec<InstanceTypeInfo>) -> Vec<InstanceTypeInfo> {
        if self.switches.undersize { types.iter().take(1).cloned().collect() } else { fitting }
    }

    /// When the guest powers itself off, unix seconds, for a deadline at `valid_to_unix_s`.
    pub(crate) fn guest_poweroff_unix_s(&self, valid_to_unix_s: u64) -> u64 {
        (valid_to_unix_s + self.switches.guest_poweroff_late_s).saturating_sub(self.switches.guest_poweroff_early_s)
    }

    /// The user data as it is sent.
    pub(crate) fn user_data(&self, mut user_data: String, login: &SshKeyPair) -> String {
        if self.switches.leak_login_key {
            user_data.push_str(&format!("\n# {}\n", login.private_openssh.expose().replace('\n', "\n# ")));
        }
        user_data
    }

    /// Runs before provision creates anything: a deliberate panic or failure for the grants the
    /// switches pick.
    pub(crate) fn before_creating(&self, grant: &GrantId) -> Result<(), BackendError> {
        if Self::grant_byte_below(grant, self.switches.panic_below) {
            panic!("TestSwitches::panic_below: deliberate panic in provision of grant {}", grant.short());
        }
        if Self::grant_byte_below(grant, self.switches.fail_provision_below) {
            return Err(BackendError::Provider {
                operation: "RunInstances".into(),
                code: "TestSwitches.FailProvision".into(),
                message: "deliberate provision failure".into(),
                retryable: false,
            });
        }
        Ok(())
    }

    /// Whether instances must use IMDSv2, and the metadata's hop limit.
    pub(crate) fn imds(&self) -> (bool, u8) {
        if self.switches.open_imds { (false, 2) } else { (true, 1) }
    }

    /// The instance's tags, from the grant's.
    pub(crate) fn instance_tags(&self, mut tags: Tags) -> Tags {
        if self.switches.untagged_instances || self.switches.tag_after_create {
            tags.remove(crate::config::GRANT_TAG);
        }
        tags
    }

    /// Whether the requester gets the backend's host key instead of the guest's.
    pub(crate) fn pins_backend_host_key(&self) -> bool {
        self.switches.pin_backend_host_key
    }

    /// The CIDRs SSH is let in from, from the configured ones.
    pub(crate) fn ingress_cidrs(&self, mut cidrs: Vec<String>) -> Vec<String> {
        if self.switches.open_ingress {
            cidrs.push("0.0.0.0/0".into());
        }
        cidrs
    }

    /// The ClientToken one RunInstances call is sent with.
    pub(crate) fn client_token(&self, token: String) -> String {
        if self.switches.fresh_client_token_per_call {
            let n = self.run_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return format!("{token}-{n}");
        }
        token
    }

    /// Whether a run nobody watched is recorded from EC2's LaunchTime.
    pub(crate) fn uses_launch_time(&self) -> bool {
        !self.switches.ignore_launch_time
    }

    /// When a `running` observation at `at_unix_ms` is recorded, for a grant ending at
    /// `valid_to_unix_ms`.
    pub(crate) fn running_at(&self, at_unix_ms: u64, valid_to_unix_ms: u64) -> u64 {
        let overbill = u64::from(self.switches.overbill_percent);
        if overbill > 0 {
            at_unix_ms - valid_to_unix_ms.saturating_sub(at_unix_ms) * overbill / 100
        } else {
            at_unix_ms
        }
    }

    /// When an instance ending at `valid_to_unix_ms` is terminated.
    pub(crate) fn terminate_at(&self, valid_to_unix_ms: u64) -> u64 {
        (valid_to_unix_ms + self.switches.terminate_late_ms).saturating_sub(self.switches.terminate_early_ms)
    }

    /// Whether the network figure taken when an instance ends is recorded.
    pub(crate) fn records_network_sample(&self) -> bool {
        !self.switches.skip_network_sample
    }

    /// Whether the network figure is measured again, as final, after CloudWatch's lag.
    pub(crate) fn measures_network_final(&self) -> bool {
        !self.switches.skip_network_final
    }

    /// Whether teardown deletes the security group.
    pub(crate) fn deletes_security_group(&self) -> bool {
        !self.switches.skip_security_group_delete
    }

    /// Whether teardown settles `grant`.
    pub(crate) fn settles(&self, grant: &GrantId) -> bool {
        !Self::grant_byte_below(grant, self.switches.skip_settle_below)
    }

    /// The usage `watch_until_exit` returns, from the ledger's.
    pub(crate) fn watched_usage(&self, mut usage: UsageMetrics) -> UsageMetrics {
        if self.switches.watch_usage_extra {
            usage.cpu_seconds += 1;
        }
        usage
    }

    /// Whether recovery follows an overdue instance without terminating it.
    pub(crate) fn recovery_skips_overdue(&self) -> bool {
        self.switches.recovery_skips_overdue
    }

    /// Whether `LaunchRequested` is recorded before RunInstances is sent (else after).
    pub(crate) fn records_launch_first(&self) -> bool {
        !self.switches.record_launch_after
    }

    /// Whether a failed provision is recorded as retryable: as its error says, or not when a
    /// drain cut it short (`drain_rollback_final`).
    pub(crate) fn failure_retryable(&self, retryable: bool, cut_by_drain: bool) -> bool {
        retryable && !(cut_by_drain && self.switches.drain_rollback_final)
    }

    /// Whether the grant tag is added with CreateTags once RunInstances has answered.
    pub(crate) fn tags_after_launch(&self) -> bool {
        self.switches.tag_after_create
    }

    /// The poller as the switches leave it: listing once per watched instance.
    pub(crate) fn poller(&self, poller: RegionPoller) -> RegionPoller {
        poller.listing_per_instance(self.switches.listing_per_instance)
    }
}

/// The plain behaviour of every hook: what ships.
#[cfg(not(feature = "test-switches"))]
impl Hooks {
    pub(crate) fn new(_switches: TestSwitches) -> Self {
        Self {}
    }

    pub(crate) fn pacer(&self, pacer: Pacer) -> Pacer {
        pacer
    }

    pub(crate) fn heeds_lease(&self) -> bool {
        true
    }

    pub(crate) fn bills_by_rules(&self) -> bool {
        true
    }

    pub(crate) fn refuses_tdx(&self) -> bool {
        true
    }

    pub(crate) fn launches_late(&self, _left_ms: u64) -> bool {
        false
    }

    pub(crate) fn waits_for_valid_from(&self) -> bool {
        true
    }

    pub(crate) fn fitting(&self, _types: &[InstanceTypeInfo], fitting: Vec<InstanceTypeInfo>) -> Vec<InstanceTypeInfo> {
        fitting
    }

    pub(crate) fn guest_poweroff_unix_s(&self, valid_to_unix_s: u64) -> u64 {
        valid_to_unix_s
    }

    pub(crate) fn user_data(&self, user_data: String, _login: &SshKeyPair) -> String {
        user_data
    }

    pub(crate) fn before_creating(&self, _grant: &GrantId) -> Result<(), BackendError> {
        Ok(())
    }

    pub(crate) fn imds(&self) -> (bool, u8) {
        (true, 1)
    }

    pub(crate) fn instance_tags(&self, tags: Tags) -> Tags {
        tags
    }

    pub(crate) fn pins_backend_host_key(&self) -> bool {
        false
    }

    pub(crate) fn ingress_cidrs(&self, cidrs: Vec<String>) -> Vec<String> {
        cidrs
    }

    pub(crate) fn client_token(&self, token: String) -> String {
        token
    }

    pub(crate) fn uses_launch_time(&self) -> bool {
        true
    }

    pub(crate) fn running_at(&self, at_unix_ms: u64, _valid_to_unix_ms: u64) -> u64 {
        at_unix_ms
    }

    pub(crate) fn terminate_at(&self, valid_to_unix_ms: u64) -> u64 {
        valid_to_unix_ms
    }

    pub(crate) fn records_network_sample(&self) -> bool {
        true
    }

    pub(crate) fn measures_network_final(&self) -> bool {
        true
    }

    pub(crate) fn deletes_security_group(&self) -> bool {
        true
    }

    pub(crate) fn settles(&self, _grant: &GrantId) -> bool {
        true
    }

    pub(crate) fn watched_usage(&self, usage: UsageMetrics) -> UsageMetrics {
        usage
    }

    pub(crate) fn recovery_skips_overdue(&self) -> bool {
        false
    }

    pub(crate) fn records_launch_first(&self) -> bool {
        true
    }

    pub(crate) fn failure_retryable(&self, retryable: bool, _cut_by_drain: bool) -> bool {
        retryable
    }

    pub(crate) fn tags_after_launch(&self) -> bool {
        false
    }

    pub(crate) fn poller(&self, poller: RegionPoller) -> RegionPoller {
        poller
    }
}
