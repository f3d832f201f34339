//! Watching an instance through the region's poller: state observations, waiting for `running`,
//! following it to its end.

use backend_api::{BackendError, GrantId, RegionLabel};
use usage_ledger::{Event, ObservedState, TerminationReason};

use super::{AwsBackend, VISIBILITY_WINDOW_MS, observed};
use crate::ec2::Lookup;
use crate::errors::provider;
use crate::poller::Sighting;
use crate::port::{InstanceInfo, InstanceState, codes};

impl AwsBackend {
    /// Records a state observation when it differs from the last one recorded.
    ///
    /// With `missed`, nobody recorded the instance pending: it became `running` while nobody
    /// looked (the bridge or its ledger was down, or the instance was found by its token). The
    /// period then opens at EC2's LaunchTime, not at this observation (the fold lets the
    /// attempt's first period reach back to its launch request): EC2 billed it from about then,
    /// and the time nobody looked is not lost; it over-bills at most the time the instance was
    /// pending. A `running` shown after the instance was seen shutting down or terminated is
    /// a Describe still showing the state from before TerminateInstances, and is ignored: those
    /// states never go back.
    pub(crate) async fn observe(
        &self,
        grant: &GrantId,
        info: &InstanceInfo,
        at_unix_ms: u64,
        missed: bool,
    ) -> Result<(), BackendError> {
        let state = observed(info.state);
        let instance_id = info.instance_id.to_string();
        self.record_if(*grant, |s| {
            let s = s?;
            let mut at_unix_ms = at_unix_ms;
            let ended = matches!(s.last_state(), Some(ObservedState::ShuttingDown | ObservedState::Terminated));
            if state == ObservedState::Running && ended {
                return None;
            }
            if missed
                && state == ObservedState::Running
                && s.running_since_unix_ms().is_none()
                && self.hooks().uses_launch_time()
            {
                at_unix_ms = at_unix_ms.min(info.launch_time_unix_ms);
            }
            if state == ObservedState::Running {
                at_unix_ms = self.hooks().running_at(at_unix_ms, s.valid_to_unix_ms());
            }
            (s.instance() == Some(instance_id.as_str()) && s.last_state() != Some(state))
                .then_some(Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms: at_unix_ms })
        })
        .await
    }

    /// Whether a sighting of `info` comes after a run nobody watched: this process never saw it
    /// pending, and it was launched before this process started (by a process that died, or
    /// whose ledger failed, before recording its run).
    fn missed(&self, info: &InstanceInfo, seen_pending: bool) -> bool {
        !seen_pending && info.launch_time_unix_ms < self.shared.started_unix_ms
    }

    /// Waits (through the region's poller) until the instance runs.
    pub(super) async fn wait_running(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        deadline_unix_ms: u64,
    ) -> Result<InstanceInfo, BackendError> {
        let mut rx = self.poller(region).subscribe(instance_id);
        let mut seen_pending = false;
        loop {
            let sighting = rx.borrow_and_update();
            if let Sighting::Seen { info, at_unix_ms } = sighting {
                seen_pending |= info.state == InstanceState::Pending;
                self.observe(grant, &info, at_unix_ms, self.missed(&info, seen_pending)).await?;
                match info.state {
                    InstanceState::Running => return Ok(std::sync::Arc::unwrap_or_clone(info)),
                    InstanceState::Pending => {}
                    other => {
                        return Err(BackendError::Provider {
                            operation: "RunInstances".into(),
                            code: info
                                .state_reason_code
                                .as_deref()
                                .map_or_else(|| format!("Instance.{other}"), str::to_string),
                            message: format!("instance {instance_id} went {other} before it ran"),
                            retryable: true,
                        });
                    }
                }
            }
            let now = self.now_ms();
            if now >= deadline_unix_ms {
                return Err(BackendError::DeadlinePassed {
                    valid_to: self.shared.cfg.almanac.unix_ms_to_tick(deadline_unix_ms),
                    now: self.now_tick(),
                });
            }
            tokio::select! {
                biased;
                () = rx.changed() => {}
                () = self.shared.clock.sleep_until_unix_ms(deadline_unix_ms) => {}
            }
        }
    }

    /// Follows the instance through the poller until it is terminated (or long gone), then
    /// samples its network use and records it terminated. With `deadline_unix_ms`, terminates it
    /// exactly then if it is still up.
    pub(crate) async fn follow_to_end(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), BackendError> {
        let mut rx = self.poller(region).subscribe(instance_id);
        let mut deadline = deadline_unix_ms.map(|at| self.hooks().terminate_at(at));
        let mut absent_since: Option<u64> = None;
        let mut asked_exit = false;
        let mut launched_at: Option<u64> = None;
        let mut seen_pending = false;
        loop {
            let sighting = rx.borrow_and_update();
            match sighting {
                Sighting::Seen { info, at_unix_ms } => {
                    absent_since = None;
                    launched_at = Some(info.launch_time_unix_ms);
                    seen_pending |= info.state == InstanceState::Pending;
                    self.observe(grant, &info, at_unix_ms, self.missed(&info, seen_pending)).await?;
                    if info.state == InstanceState::Terminated {
                        // Terminated without our asking: EC2 or the guest ended it, and the
                        // ledger says so (the reason of the first request is the one kept).
                        self.record_if(*grant, |s| {
                            s.filter(|s| s.termination().is_none() && !s.is_settled())
                                .map(|_| Event::TerminationRequested { reason: TerminationReason::Exited })
                        })
                        .await?;
                        break;
                    }
                    let requested = self.with_ledger(|l| l.grant(grant).is_some_and(|s| s.termination().is_some()));
                    let stopped = matches!(info.state, InstanceState::Stopping | InstanceState::Stopped);
                    if info.state.has_exited() && !asked_exit && (stopped || !requested) {
                        // It ended on its own (or is stopping): make sure it terminates, so
                        // nothing lingers stopped and billed for storage.
                        asked_exit = true;
                        let reason = if requested { TerminationReason::Operator } else { TerminationReason::Exited };
                        self.request_termination(grant, region, instance_id, reason).await?;
                    }
                }
                Sighting::Absent { at_unix_ms } => {
                    let since = *absent_since.get_or_insert(at_unix_ms);
                    let ever_seen = self.with_ledger(|l| l.grant(grant).is_some_and(|s| s.last_state().is_some()));
                    // Seen before and now absent from two polls: terminated over an hour ago,
                    // or hidden by a Describe that lags (tags propagate after ids). Never seen:
                    // give eventual consistency its window. Either way, ask by id before
                    // believing it gone.
                    if (ever_seen && at_unix_ms > since || at_unix_ms > since + VISIBILITY_WINDOW_MS)
                        && self.confirm_gone(grant, region, instance_id, at_unix_ms).await?
                    {
                        break;
                    }
                }
                Sighting::NotYetPolled => {}
            }
            match deadline {
                Some(at) if self.now_ms() >= at => {
                    deadline = None;
                    self.request_termination(grant, region, instance_id, TerminationReason::Deadline).await?;
                }
                Some(at) => {
                    tokio::select! {
                        biased;
                        () = self.shared.clock.sleep_until_unix_ms(at) => {}
                        () = rx.changed() => {}
                    }
                }
                None => rx.changed().await,
            }
        }
        self.finish_instance(grant, region, instance_id, launched_at).await
    }

    /// Asks for the instance by id after the poller lost sight of it. True when EC2 no longer
    /// knows it or shows it terminated; false (after recording what it shows) while it lives.
    async fn confirm_gone(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        at_unix_ms: u64,
    ) -> Result<bool, BackendError> {
        let answer = self.ec2().instances(region, Lookup::Id(instance_id)).await;
        match answer {
            Ok(found) => match found.into_iter().find(|i| i.instance_id == instance_id) {
                Some(info) if info.state != InstanceState::Terminated => {
                    tracing::info!(state = %info.state, "the poller lost sight of the instance, but it lives");
                    self.observe(grant, &info, at_unix_ms, false).await?;
                    Ok(false)
                }
                _ => Ok(true),
            },
            Err(err) if err.is(codes::INSTANCE_NOT_FOUND) => Ok(true),
            Err(err) => Err(provider(err)),
        }
    }

    /// Describes the instance by id and records what it shows, as a sighting this process
    /// missed the transitions of (see `observe`).
    pub(crate) async fn observe_by_id(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<(), BackendError> {
        let found = self.ec2().instances(region, Lookup::Id(instance_id)).await.map_err(provider)?;
        if let Some(info) = found.into_iter().find(|i| i.instance_id == instance_id) {
            self.observe(grant, &info, self.now_ms(), true).await?;
        }
        Ok(())
    }
}
