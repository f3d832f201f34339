//! Billing: the metering rules that turn running periods into usage (per-second billing with
//! a minimum per period, the deadline cap of rules 3) and `BillingCapped`.

use backend_api::UsageMetrics;

use super::{ApplyError, Impossible, LiveGrant};
use crate::event::Record;

/// The minimum billed length of one running period, in seconds (EC2's per-second billing).
pub const MIN_BILLED_SECONDS: u64 = 60;

/// The billed seconds of one running period lasting `duration_ms`: rounded up to whole seconds,
/// and at least [`MIN_BILLED_SECONDS`].
pub fn billed_seconds(duration_ms: u64) -> u64 {
    duration_ms.div_ceil(1000).max(MIN_BILLED_SECONDS)
}

impl LiveGrant {
    /// Closes the open running period, if any, at `at_unix_ms`.
    pub(super) fn close_period(&mut self, at_unix_ms: u64) {
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
    pub(super) fn past_deadline(&self, at_unix_ms: u64) -> bool {
        self.billing_rules >= 3 && at_unix_ms >= self.valid_to_unix_ms
    }

    /// The usage of earlier attempts plus this one's, counting an open period up to
    /// `latest_unix_ms`.
    pub(super) fn usage(&self, latest_unix_ms: u64) -> UsageMetrics {
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

    /// `BillingCapped`: billing stops at `at_unix_ms` (not before the open period started) and
    /// no later period opens.
    pub(super) fn billing_capped(&mut self, record: &Record, at_unix_ms: u64) -> Result<(), ApplyError> {
        if self.ever_launched.is_empty() {
            return Err(ApplyError::new(record, Impossible::InstanceNeverLaunched { instance_id: String::new() }));
        }
        // Not clamped up to the grant's clock: the point is to stop earlier than now.
        if let Some(since) = self.running_since_unix_ms {
            self.close_period(at_unix_ms.max(since));
        }
        self.deadline_cut = true;
        Ok(())
    }
}
