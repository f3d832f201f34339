//! The deadline task each launched instance gets: TerminateInstances at `valid_to`, whoever else is
//! watching.

use std::sync::Arc;

use backend_api::{GrantId, RegionLabel};
use usage_ledger::{GrantState, TerminationReason};

use super::AwsBackend;
use crate::pacing::Backoff;
use crate::pacing::lock;

impl AwsBackend {
    /// Arms the grant's deadline: at `valid_to`, whether or not anyone awaits
    /// `watch_until_exit`, the instance is told to terminate. The task holds the backend weakly,
    /// so it dies with it; recovery arms it again.
    pub(crate) fn arm_deadline(&self, grant: GrantId, region: RegionLabel, valid_to_unix_ms: u64) {
        let at = self.hooks().terminate_at(valid_to_unix_ms);
        let weak = Arc::downgrade(&self.shared);
        let clock = self.shared.clock.clone();
        let task = async move {
            clock.sleep_until_unix_ms(at).await;
            let mut attempt = 0;
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let backend = AwsBackend { shared };
                let Some(instance_id) = backend.instance_to_end(&grant) else { break };
                match backend.request_termination_sent(&grant, &region, &instance_id, TerminationReason::Deadline).await
                {
                    Ok(true) => break,
                    // Another caller (a watch, recovery) is sending it and may fail: look again
                    // shortly, and send it ourselves once its claim is given back.
                    Ok(false) => {
                        let ec2 = backend.ec2().clone();
                        drop(backend);
                        ec2.backoff(Backoff::Recheck, attempt).await;
                        attempt += 1;
                    }
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), error = %err, "deadline termination failed; retrying");
                        let ec2 = backend.ec2().clone();
                        drop(backend);
                        ec2.backoff(Backoff::Recheck, attempt).await;
                        attempt += 1;
                    }
                }
            }
            if let Some(shared) = weak.upgrade() {
                shared.deadlines.done(&grant);
            }
        };
        self.shared.deadlines.replace(grant, task);
    }

    /// The instance the grant's deadline ends: the one the ledger holds, or the one RunInstances
    /// answered with whose launch could not be recorded yet. `None` once the grant is settled.
    pub(super) fn instance_to_end(&self, grant: &GrantId) -> Option<String> {
        let state = self.grant_state(grant);
        if state.as_ref().is_some_and(GrantState::is_settled) {
            return None;
        }
        state
            .as_ref()
            .and_then(|s| s.instance().map(str::to_string))
            .or_else(|| lock(&self.shared.launched_unrecorded).get(grant).cloned())
    }
}
