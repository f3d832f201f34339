//! Acting under a bridge group's lease: whether this backend may act, and stopping for good once
//! the lease is lost.

use super::AwsBackend;
use crate::standby::{LeaseTable, LeaseTimes};

impl AwsBackend {
    /// Stops acting for good because the lease is lost, for `why`: every task of the backend's
    /// own stops, and the pacer refuses every EC2 call from now on; whatever is in flight is the
    /// next lease holder's recovery's to finish. The process should exit (its supervisor
    /// starts it again as a standby).
    pub fn lose_lease(&self, why: &str) {
        let Some(tenure) = &self.shared.tenure else { return };
        if tenure.lose(why) {
            tracing::error!(
                holder = tenure.holder(),
                epoch = tenure.epoch(),
                why,
                "lost the ledger lease: this bridge stops acting"
            );
        }
        if self.hooks().heeds_lease() {
            self.shared.stop_tasks();
        }
    }

    /// Whether this backend may act now: always, for a ledger of its own; while its lease is
    /// surely held, for a shared one.
    pub fn acting(&self) -> bool {
        self.shared.tenure.as_ref().is_none_or(|t| t.may_act(self.now_ms()).is_ok())
    }

    /// When this backend last secured its lease (acquired or renewed it: the send time), for a
    /// shared ledger.
    pub fn lease_secured_unix_ms(&self) -> Option<u64> {
        self.shared.tenure.as_ref().map(|t| t.secured_unix_ms())
    }

    /// Why the lease this backend acted under is lost, once it is.
    pub fn lease_lost(&self) -> Option<String> {
        self.shared.tenure.as_ref().and_then(|t| t.lost())
    }

    /// Renews the lease this backend acts under (`lease`, in `table`, as last renewed) until it
    /// is lost, then stops acting ([`AwsBackend::lose_lease`]) and returns why. The schedule
    /// carries on from the acquisition and the renewals made while the ledger replayed and the
    /// backend started ([`crate::standby::renewing`]). Returns at once for a backend with a
    /// ledger of its own.
    pub async fn keep_lease(&self, table: &dyn LeaseTable, lease: usage_ledger::Lease, times: &LeaseTimes) -> String {
        let Some(tenure) = self.shared.tenure.clone() else {
            return "this backend holds no lease: its ledger is its own".to_string();
        };
        let why = crate::standby::keep_lease(table, lease, &tenure, times, self.shared.clock.as_ref()).await;
        self.lose_lease(&why);
        why
    }
}
