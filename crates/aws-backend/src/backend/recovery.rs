//! Crash recovery: a backend opened on an existing ledger resumes every grant that still holds
//! something, and arms again the tasks that died with the last process.

use backend_api::{BackendError, GrantId, RegionLabel};
use serde::Serialize;
use usage_ledger::{Event, ObservedState, TerminationReason};

use super::{AwsBackend, Finish};

/// What a recovery pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Grants found live in the ledger and resumed.
    pub resumed: usize,
    /// Grants that could not be finished, with the reason; the next pass tries again.
    pub failed: Vec<(String, String)>,
}

impl AwsBackend {
    /// Resumes every grant the ledger shows unfinished: re-watches instances that were running
    /// until their deadline (terminating at once those already past it), and finishes the
    /// teardown of half-provisioned and half-torn-down grants, including a launch whose result
    /// was never recorded (found by its ClientToken), and arms the final network measurement of
    /// every figure the ledger shows incomplete. Returns when every resumed grant is
    /// settled or has failed.
    ///
    /// The grants to resume are listed when this is called, not when the future is first
    /// polled, so grants admitted after the call are never mistaken for a dead process's.
    pub fn recover(&self) -> impl std::future::Future<Output = RecoveryReport> + Send + 'static {
        let live: Vec<GrantId> = self.with_ledger(|l| l.live_grants().map(|(id, _)| *id).collect());
        self.arm_pending_network();
        let backend = self.clone();
        async move {
            let mut report = RecoveryReport { resumed: live.len(), failed: Vec::new() };
            let mut tasks = tokio::task::JoinSet::new();
            for grant in live {
                let backend = backend.clone();
                tasks.spawn(async move { (grant, backend.resume_grant(grant).await) });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((grant, Err(err))) => report.failed.push((grant.to_hex(), err.to_string())),
                    Err(err) => report.failed.push((String::new(), format!("recovery task failed: {err}"))),
                }
            }
            report
        }
    }

    /// Brings one unfinished grant to its end. A resume that fails (TerminateInstances
    /// refused through its retries, the ledger cut off, say) is not dropped: it is tried again
    /// by the backend's own task (`arm_finish`), which follows a serving instance to its
    /// deadline (or its own end) as this did, and the armed deadline keeps trying to end the
    /// instance meanwhile. A failed teardown has armed its own retry already.
    pub async fn resume_grant(&self, grant: GrantId) -> Result<(), BackendError> {
        let result = self.resume_grant_once(grant).await;
        if result.is_err() && self.grant_state(&grant).is_some_and(|s| !s.is_settled()) {
            self.arm_finish(grant, Finish::Resume);
        }
        result
    }

    /// A provision the last process was making when it stopped (no termination asked for, its
    /// instance never seen running, so never handed over) is rolled back as a retryable
    /// failure: its caller got no instance and may send the grant again.
    async fn allow_retry_if_interrupted(&self, grant: GrantId) -> Result<(), BackendError> {
        self.record_if(grant, |s| {
            s.filter(|s| !s.is_settled() && s.termination().is_none() && !s.ever_running() && !s.retry_allowed())
                .map(|_| Event::ProvisionFailed { retryable: true })
        })
        .await
    }

    pub(crate) async fn resume_grant_once(&self, grant: GrantId) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(&grant) else { return Ok(()) };
        if state.is_settled() {
            return Ok(());
        }
        let region = RegionLabel::new(state.region()).map_err(|e| BackendError::Local(e.to_string()))?;
        tracing::info!(grant = %grant.short(), phase = ?state.phase(), "resuming grant");
        let serving = state.termination().is_none() && state.last_state() == Some(ObservedState::Running);
        match state.instance() {
            // It ran, so its requester may be using it: watch it to the deadline as before, with
            // the deadline armed again (it died with the last process).
            Some(instance_id) if serving => {
                let instance_id = instance_id.to_string();
                if self.hooks().recovery_skips_overdue() && self.now_ms() > state.valid_to_unix_ms() {
                    self.follow_to_end(&grant, &region, &instance_id, None).await?;
                    return self.teardown(grant, TerminationReason::Deadline).await;
                }
                self.arm_deadline(grant, region.clone(), state.valid_to_unix_ms());
                self.follow_to_end(&grant, &region, &instance_id, Some(state.valid_to_unix_ms())).await?;
                self.teardown(grant, TerminationReason::Deadline).await
            }
            // Never seen running (provision died on the way) or already ending: tear down. First
            // look at it by id, unless the ledger saw it end: it may have been running all the
            // while the bridge was down (also after a termination was requested, by a process
            // that died before sending it), and that is billed.
            Some(instance_id) => {
                let instance_id = instance_id.to_string();
                if !state.last_state().is_some_and(ObservedState::ends_running)
                    && let Err(err) = self.observe_by_id(&grant, &region, &instance_id).await
                {
                    tracing::warn!(error = %err, "could not look at the instance before tearing it down");
                }
                self.allow_retry_if_interrupted(grant).await?;
                self.teardown(grant, state.termination().unwrap_or(TerminationReason::Rollback)).await
            }
            None => {
                self.allow_retry_if_interrupted(grant).await?;
                self.teardown(grant, state.termination().unwrap_or(TerminationReason::Rollback)).await
            }
        }
    }
}
