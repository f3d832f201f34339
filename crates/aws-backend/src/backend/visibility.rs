//! Calls on resources EC2 may not show yet: waiting out the learned lags (`lag`), and learning from
//! each call.

use backend_api::RegionLabel;

use super::{AwsBackend, VISIBILITY_WINDOW_MS};
use crate::lag::Lag;
use crate::port::{Ec2Error, Ec2Port, Operation};

impl AwsBackend {
    /// `op` on resources created at `created` (`None`: long ago): waits out the learned
    /// visibility lag (a quarter longer with `margin`), retries while `invisible` holds for the
    /// error within the window, and learns from how it went.
    pub(super) async fn call_when_visible<'a, T, F, Fut>(
        &'a self,
        region: &RegionLabel,
        op: Operation,
        created: Option<u64>,
        margin: bool,
        invisible: impl Fn(&Ec2Error) -> bool,
        call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut(&'a dyn Ec2Port) -> Fut,
        Fut: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        self.wait_lag(region, Lag::Visibility, created, margin).await;
        let met = std::sync::atomic::AtomicBool::new(false);
        let settling = |err: &Ec2Error| {
            let settling = invisible(err);
            met.fetch_or(settling, std::sync::atomic::Ordering::Relaxed);
            settling
        };
        let result = self.ec2().call_until_settled(region, op, VISIBILITY_WINDOW_MS, settling, call).await;
        if result.is_ok() {
            self.learn_lag(region, Lag::Visibility, created, met.into_inner());
        }
        result
    }

    /// Sleeps until `lag` has likely passed since `since` (at once without `since`); with
    /// `margin`, a quarter longer, where a failed call costs more than the wait (RunInstances,
    /// the scarcest bucket; a group deletion nobody waits for).
    pub(super) async fn wait_lag(&self, region: &RegionLabel, lag: Lag, since: Option<u64>, margin: bool) {
        if let Some(at) = since {
            let wait = self.shared.lags.wait_ms(region, lag);
            let wait = if margin { wait + wait / 4 } else { wait };
            self.shared.clock.sleep_until_unix_ms(at.saturating_add(wait)).await;
        }
    }

    /// Learns from a call that succeeded now, `met` saying whether it first met `lag`.
    pub(super) fn learn_lag(&self, region: &RegionLabel, lag: Lag, since: Option<u64>, met: bool) {
        if let Some(at) = since {
            self.shared.lags.learn(region, lag, self.now_ms().saturating_sub(at), met);
        }
    }
}
