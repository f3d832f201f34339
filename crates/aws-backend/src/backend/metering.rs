//! Metering an instance's end: its network figure from CloudWatch, measured again as final after
//! CloudWatch's lag.

use std::sync::Arc;

use backend_api::{BackendError, GrantId, RegionLabel};
use usage_ledger::{Event, PendingNetwork, TerminationReason};

use super::AwsBackend;
use crate::errors::{local, provider};
use crate::port::{Ec2Error, Operation, metric_window};

/// How many times a final network measurement is tried (backoff from 1 minute up to an hour
/// between tries: about a day in all) before the figure is left as it is.
const NETWORK_FINAL_TRIES: u32 = 30;

/// How long a failed final network measurement waits after try `attempt` (0-based): a minute,
/// doubling, at most an hour.
fn network_final_retry_ms(attempt: u32) -> u64 {
    (60_000u64 << attempt.min(6)).min(3_600_000)
}

impl AwsBackend {
    /// Samples the instance's network use over its life and records it terminated.
    pub(super) async fn finish_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        launched_at: Option<u64>,
    ) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(grant) else { return Ok(()) };
        if state.instance() != Some(instance_id) {
            return Ok(());
        }
        let end = self.now_ms();
        // The whole life of the instance: from its launch (as EC2 reported it) to now, after it
        // ended. Without a sighting, the widest window CloudWatch's one-minute data keeps.
        let start = launched_at.unwrap_or_else(|| end.saturating_sub(15 * 24 * 3_600_000)).min(end);
        let sample = self.measure_network(region, instance_id, start, end).await;
        // CloudWatch has not published the last minutes yet: this figure is provisional, and
        // measured again once its lag has passed (`arm_network_final`).
        let complete = self.shared.cfg.network_final_after_s == 0;
        let network = match sample {
            Ok(_) if !self.hooks().records_network_sample() => None,
            Ok((bytes_in, bytes_out)) => Some(Event::NetworkMeasured {
                instance_id: instance_id.to_string(),
                bytes_in,
                bytes_out,
                window_start_unix_ms: start,
                window_end_unix_ms: end,
                complete,
            }),
            // Metering network is worth less than ending the grant: record it unknown (not 0)
            // and go on; the final measurement fills it in.
            Err(err) => {
                tracing::warn!(error = %err, "network usage unavailable; recorded unknown until measured");
                Some(Event::NetworkUnknown {
                    instance_id: instance_id.to_string(),
                    window_start_unix_ms: start,
                    window_end_unix_ms: end,
                })
            }
        };
        // The sample and the end go in together, and only once: a racing teardown (the
        // reaper's, recovery's) that finished first has recorded both already.
        let terminated = Event::InstanceTerminated { instance_id: instance_id.to_string() };
        let now = self.now_ms();
        let mut deadline = None;
        let pending = self
            .record_with(|ledger| {
                let state = ledger.grant(grant);
                deadline = state
                    .filter(|s| {
                        s.termination() == Some(TerminationReason::Deadline) && s.instance() == Some(instance_id)
                    })
                    .map(|s| s.valid_to_unix_ms());
                let events = if state.is_some_and(|s| s.instance() == Some(instance_id)) {
                    network.into_iter().chain([terminated]).map(|e| (*grant, now, e)).collect()
                } else {
                    Vec::new()
                };
                (events, ())
            })
            .await
            .map(|()| self.grant_state(grant).map(|s| s.network_pending()).unwrap_or_default())?;
        if let Some(valid_to) = deadline.filter(|t| *t > 0) {
            // EC2 showed the instance gone at `end`.
            crate::telemetry::deadline_lateness("ended", valid_to, end);
        }
        for p in pending.into_iter().filter(|p| p.instance_id == instance_id) {
            self.arm_network_final(*grant, p);
        }
        Ok(())
    }

    /// Measures `pending` once more, as final, after CloudWatch's publication lag has passed
    /// since the last period of its window ended (the datapoint of the period the instance
    /// ended in is published minutes after that period's end, not the instance's); retried
    /// with backoff (up to a day) while CloudWatch fails. The task is the backend's own, like
    /// an armed deadline: recovery arms it again for every figure the ledger shows incomplete,
    /// settled grants included.
    pub(crate) fn arm_network_final(&self, grant: GrantId, pending: PendingNetwork) {
        if !self.hooks().measures_network_final() {
            return;
        }
        let (_, last_period_end) = metric_window(pending.window_start_unix_ms, pending.window_end_unix_ms);
        let at = last_period_end.saturating_add(self.shared.cfg.network_final_after_ms());
        let key = (grant, pending.instance_id.clone());
        let weak = Arc::downgrade(&self.shared);
        let clock = self.shared.clock.clone();
        let task_key = key.clone();
        let task = async move {
            clock.sleep_until_unix_ms(at).await;
            for attempt in 0..NETWORK_FINAL_TRIES {
                let Some(shared) = weak.upgrade() else { return };
                let backend = AwsBackend { shared };
                match backend.measure_final(&grant, &pending).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), attempt, error = %err, "final network measurement failed; retrying");
                        drop(backend);
                        clock.sleep_ms(network_final_retry_ms(attempt)).await;
                    }
                }
            }
            if let Some(shared) = weak.upgrade() {
                shared.network_finals.done(&task_key);
            }
        };
        self.shared.network_finals.replace(key, task);
    }

    /// CloudWatch's bytes in and out of `instance_id` over `[start, end)`, widened to whole
    /// 5-minute periods (`metric_window`): CloudWatch counts a datapoint by its period's start,
    /// so the period the instance started in would be missed by a window starting at launch.
    /// Throttling (CloudWatch's own `Throttling`, on its own quota and bucket) is retried by the
    /// pacer like EC2's.
    async fn measure_network(
        &self,
        region: &RegionLabel,
        instance_id: &str,
        start: u64,
        end: u64,
    ) -> Result<(u64, u64), Ec2Error> {
        let (start, end) = metric_window(start, end);
        let ids = vec![instance_id.to_string()];
        let samples = self
            .ec2()
            .call(region, Operation::GetNetworkUsage, |port| port.network_usage(region, &ids, start, end))
            .await?;
        Ok(samples
            .iter()
            .filter(|s| s.instance_id == instance_id)
            .fold((0, 0), |(i, o), s| (i.saturating_add(s.bytes_in), o.saturating_add(s.bytes_out))))
    }

    /// One final measurement of `pending`, recorded as complete if the figure is still open.
    async fn measure_final(&self, grant: &GrantId, pending: &PendingNetwork) -> Result<(), BackendError> {
        let region = RegionLabel::new(&pending.region).map_err(local)?;
        let (start, end) = (pending.window_start_unix_ms, pending.window_end_unix_ms);
        let (bytes_in, bytes_out) =
            self.measure_network(&region, &pending.instance_id, start, end).await.map_err(provider)?;
        self.record_if(*grant, |s| {
            s.filter(|s| s.network_pending().iter().any(|p| p.instance_id == pending.instance_id)).map(|_| {
                Event::NetworkMeasured {
                    instance_id: pending.instance_id.clone(),
                    bytes_in,
                    bytes_out,
                    window_start_unix_ms: start,
                    window_end_unix_ms: end,
                    complete: true,
                }
            })
        })
        .await
    }

    /// Arms the final measurement of every network figure the ledger shows incomplete (after
    /// a restart: the tasks died with the last process).
    pub(crate) fn arm_pending_network(&self) {
        let pending: Vec<(GrantId, PendingNetwork)> = self.with_ledger(|l| {
            l.grants().flat_map(|(id, s)| s.network_pending().into_iter().map(move |p| (*id, p))).collect()
        });
        for (grant, p) in pending {
            self.arm_network_final(grant, p);
        }
    }
}
