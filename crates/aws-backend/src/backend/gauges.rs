//! What the host shows operators of the backend's state: the gauges, set when the host asks
//! (see `telemetry`), and readiness. What a scrape reads is the ledger and the placement as
//! they are, not a count kept on the side.

use usage_ledger::{NetworkFigure, Phase};

use super::AwsBackend;
use crate::telemetry;

impl AwsBackend {
    /// Sets the state gauges: live grants by phase, network figures not final yet by finality,
    /// vCPU headroom per region (when known), and the lease this process acts under (in group
    /// mode). The host calls it before it renders the metrics.
    pub fn publish_gauges(&self) {
        let (by_phase, provisional, unknown) = self.with_ledger(|l| {
            let mut by_phase = [0usize; 4];
            for (_, state) in l.live_grants() {
                match state.phase() {
                    Phase::Admitted => by_phase[0] += 1,
                    Phase::Provisioning => by_phase[1] += 1,
                    Phase::Running => by_phase[2] += 1,
                    Phase::Terminating => by_phase[3] += 1,
                    Phase::Settled => {}
                }
            }
            let (mut provisional, mut unknown) = (0, 0);
            for pending in l.grants().flat_map(|(_, s)| s.network_pending()) {
                match pending.figure {
                    NetworkFigure::Provisional(_) => provisional += 1,
                    NetworkFigure::Unknown => unknown += 1,
                    NetworkFigure::Complete(_) => {}
                }
            }
            (by_phase, provisional, unknown)
        });
        for (phase, count) in ["admitted", "provisioning", "running", "terminating"].into_iter().zip(by_phase) {
            telemetry::grants(phase, count);
        }
        telemetry::network_pending("provisional", provisional);
        telemetry::network_pending("unknown", unknown);
        for region in &self.config().regions {
            if let Some(room) = self.vcpu_headroom(region) {
                telemetry::vcpu_headroom(region, room);
            }
        }
        if let Some(tenure) = &self.shared.tenure {
            let now = self.now_ms();
            let held = tenure.may_act(now).is_ok();
            telemetry::lease(held, tenure.epoch(), tenure.acts_until_unix_ms().saturating_sub(now));
        }
    }

    /// Why this backend would not take a grant now, if anything: the ledger refuses appends,
    /// the lease is not held (group mode), or a region's instance-type catalogue has not
    /// loaded yet (it is retried on first use). Empty when ready. Asks EC2 nothing.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.shared.journal.degraded() {
            why.push("the usage ledger refuses appends".to_string());
        }
        if let Some(lost) = self.lease_lost() {
            why.push(format!("the ledger lease is lost: {lost}"));
        } else if !self.acting() {
            why.push("the ledger lease is not held".to_string());
        }
        for region in &self.config().regions {
            if self.regions().catalogue(region).is_none() {
                why.push(format!("{region}: the instance-type catalogue has not loaded yet"));
            }
        }
        why
    }
}
