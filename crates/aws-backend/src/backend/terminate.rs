//! TerminateInstances: one caller at a time per instance (`TerminateClaim`), instances ending
//! together sent in one call, and the termination's records.

use backend_api::{BackendError, GrantId, RegionLabel};
use usage_ledger::{Event, GrantState, ObservedState, TerminationReason};

use super::{AwsBackend, VISIBILITY_WINDOW_MS};
use crate::ec2::Lookup;
use crate::errors::provider;
use crate::pacing::Backoff;
use crate::port::{InstanceState, codes};
use crate::terminations::{ClaimAsk, Together};

/// How long the first instance to terminate in an instant waits for others of its region.
const TERMINATE_GATHER_MS: u64 = 50;
/// EC2's most instance ids in one TerminateInstances call.
const TERMINATE_IDS_MAX: usize = 1_000;

impl AwsBackend {
    /// Records that termination was requested (once) and calls TerminateInstances, retrying
    /// `InvalidInstanceID.NotFound` while the id may still be invisible.
    pub(crate) async fn request_termination(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        reason: TerminationReason,
    ) -> Result<(), BackendError> {
        self.request_termination_sent(grant, region, instance_id, reason).await.map(|_| ())
    }

    /// `request_termination`, saying whether the call is done (`true`: EC2 accepted it, from
    /// this caller or an earlier one, or the instance is gone) or another caller is sending it
    /// now and may yet fail (`false`): the deadline task then keeps trying (see `arm_deadline`).
    /// Counts how late a deadline's TerminateInstances was accepted, after `valid_to`.
    fn note_deadline_sent(&self, grant: &GrantId, reason: TerminationReason) {
        if reason == TerminationReason::Deadline
            && let Some(valid_to) = self.grant_state(grant).map(|s| s.valid_to_unix_ms()).filter(|t| *t > 0)
        {
            crate::telemetry::deadline_lateness("terminate_sent", valid_to, self.now_ms());
        }
    }

    pub(super) async fn request_termination_sent(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        reason: TerminationReason,
    ) -> Result<bool, BackendError> {
        // One caller at a time sends it (the deadline task and a watch wake at the same
        // instant), and nobody once EC2 has accepted it. The claim is released when the call
        // fails or its caller is cancelled.
        let claim = match self.shared.terminations.claim(instance_id) {
            ClaimAsk::Taken(claim) => claim,
            ClaimAsk::Accepted => return Ok(true),
            ClaimAsk::InFlight => return Ok(false),
        };
        // The call goes out whether or not the ledger takes the record: a full disk must not
        // keep an instance past its deadline. The failure is noted (the backend degrades).
        if let Err(err) = self.record_termination(*grant, reason).await {
            tracing::error!(error = %err, "could not record the termination request; terminating anyway");
        }
        // First together with every instance of the region ending in the same instant.
        match self.terminate_together(region, instance_id).await {
            Together::Done => {
                claim.keep();
                self.note_deadline_sent(grant, reason);
                self.observe_terminating(grant, instance_id).await;
                return Ok(true);
            }
            Together::Failed(err) if !err.is(codes::INSTANCE_NOT_FOUND) => return Err(provider(err)),
            Together::Failed(_) | Together::Alone => {}
        }
        let started = self.now_ms();
        let mut attempt = 0;
        loop {
            let ids = vec![instance_id.to_string()];
            let result = self.ec2().terminate(region, &ids).await;
            match result {
                Ok(_) => {
                    claim.keep();
                    self.note_deadline_sent(grant, reason);
                    self.observe_terminating(grant, instance_id).await;
                    return Ok(true);
                }
                Err(err) if err.is(codes::INSTANCE_NOT_FOUND) => {
                    // Either not visible yet, or gone for good: a filtered Describe tells.
                    if self.instance_gone(grant, region, instance_id).await?
                        || self.now_ms() > started + VISIBILITY_WINDOW_MS
                    {
                        return Ok(true);
                    }
                    self.ec2().backoff(Backoff::Recheck, attempt).await;
                    attempt += 1;
                }
                Err(err) => return Err(provider(err)),
            }
        }
    }

    /// Records TerminateInstances' answer as what it is, an observation: EC2 moved the instance
    /// to `shutting-down` when it accepted the call, so its running period ends now, whatever
    /// a Describe still showing the state from before says (see `observe`). Best effort: a
    /// ledger that fails here leaves the next poll's sighting to close the period.
    async fn observe_terminating(&self, grant: &GrantId, instance_id: &str) {
        let at_unix_ms = self.now_ms();
        let recorded = self
            .record_if(*grant, |s| {
                let s = s?;
                (s.instance() == Some(instance_id) && !s.last_state().is_some_and(ObservedState::ends_running)).then(
                    || Event::InstanceStateObserved {
                        instance_id: instance_id.to_string(),
                        state: ObservedState::ShuttingDown,
                        observed_at_unix_ms: at_unix_ms,
                    },
                )
            })
            .await;
        if let Err(err) = recorded {
            tracing::warn!(error = %err, "could not record TerminateInstances' answer; the next sighting will");
        }
    }

    /// Sends TerminateInstances once for every instance of `region` asked to terminate within
    /// `TERMINATE_GATHER_MS` of the first (grants ending in the same instant), up to EC2's
    /// 1,000 ids per call. One id EC2 cannot see fails the whole call: then each goes alone.
    async fn terminate_together(&self, region: &RegionLabel, instance_id: &str) -> Together {
        let (leader, rx) = self.shared.terminations.gather(region, instance_id);
        let Some(leader) = leader else {
            return rx.await.unwrap_or(Together::Alone);
        };
        self.shared.clock.sleep_ms(TERMINATE_GATHER_MS).await;
        let mut gathered = leader.take();
        drop(leader);
        // Senders dropped unanswered (this caller cancelled mid-call) tell the others to go
        // alone.
        while !gathered.is_empty() {
            let rest = gathered.split_off(gathered.len().min(TERMINATE_IDS_MAX));
            let chunk = std::mem::replace(&mut gathered, rest);
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let result = self.ec2().terminate(region, &ids).await;
            for (_, tx) in chunk {
                let _ = tx.send(match &result {
                    Ok(_) => Together::Done,
                    Err(err) if err.is(codes::INSTANCE_NOT_FOUND) && ids.len() > 1 => Together::Alone,
                    Err(err) => Together::Failed(err.clone()),
                });
            }
        }
        rx.await.unwrap_or(Together::Alone)
    }

    /// Records `TerminationRequested` once; for a deadline handled after `valid_to` (the bridge
    /// was down), first `BillingCapped` at `valid_to`, so the time it was down is not billed.
    pub(super) async fn record_termination(
        &self,
        grant: GrantId,
        reason: TerminationReason,
    ) -> Result<(), BackendError> {
        let now = self.now_ms();
        let caps_billing = self.hooks().bills_by_rules();
        self.record_with(|ledger| {
            let events = termination_events(ledger.grant(&grant), reason, now, caps_billing);
            (events.into_iter().map(|e| (grant, now, e)).collect(), ())
        })
        .await
    }

    /// True when a Describe filtered by the grant's tag lists the instance as terminated. The
    /// filter keeps the answer to this grant's own instance (not every instance of the owner,
    /// which the region poller already lists), and a filter, unlike an id, never answers
    /// NotFound for an instance EC2 has not made visible yet.
    async fn instance_gone(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<bool, BackendError> {
        let instances = self.ec2().instances(region, Lookup::Grant(grant)).await.map_err(provider)?;
        Ok(instances.iter().any(|i| i.instance_id == instance_id && i.state == InstanceState::Terminated))
    }
}

/// The events that record a termination request for a grant in `state` at `now`: nothing once
/// one is recorded or the grant is settled; for a deadline handled after `valid_to` (the
/// bridge was down) of a grant that launched, first `BillingCapped` at `valid_to` (with
/// `caps_billing`), so the time it was down is not billed.
fn termination_events(
    state: Option<&GrantState>,
    reason: TerminationReason,
    now: u64,
    caps_billing: bool,
) -> Vec<Event> {
    let Some(state) = state.filter(|s| s.termination().is_none() && !s.is_settled()) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    let valid_to = state.valid_to_unix_ms();
    if reason == TerminationReason::Deadline && now > valid_to && !state.ever_launched().is_empty() && caps_billing {
        events.push(Event::BillingCapped { at_unix_ms: valid_to });
    }
    events.push(Event::TerminationRequested { reason });
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fixtures;

    const VALID_TO_UNIX_MS: u64 = 1_700_000_600_000;

    /// The grant's state after `events`, one a second from an hour before `valid_to`.
    fn given(events: Vec<Event>) -> GrantState {
        fixtures::state_after(GrantId([7; 32]), VALID_TO_UNIX_MS - 3_600_000, events)
    }

    fn admitted() -> Event {
        fixtures::admitted(VALID_TO_UNIX_MS)
    }

    fn requested() -> Event {
        Event::LaunchRequested { client_token: "t".into(), instance_type: "m7i.large".into(), image_id: None }
    }

    fn launched() -> Event {
        Event::InstanceLaunched {
            instance_id: "i-1".into(),
            client_token: "t".into(),
            instance_type: "m7i.large".into(),
            vcpus: 2,
            memory_mib: 8_192,
        }
    }

    #[test]
    fn given_a_launched_grant_when_its_deadline_is_handled_late_then_the_bill_is_capped_first() {
        let state = given(vec![admitted(), requested(), launched()]);
        let events = termination_events(Some(&state), TerminationReason::Deadline, VALID_TO_UNIX_MS + 1, true);
        assert_eq!(
            events,
            [
                Event::BillingCapped { at_unix_ms: VALID_TO_UNIX_MS },
                Event::TerminationRequested { reason: TerminationReason::Deadline }
            ]
        );
    }

    #[test]
    fn given_a_launched_grant_when_its_deadline_is_handled_on_time_then_only_the_request() {
        let state = given(vec![admitted(), requested(), launched()]);
        let events = termination_events(Some(&state), TerminationReason::Deadline, VALID_TO_UNIX_MS, true);
        assert_eq!(events, [Event::TerminationRequested { reason: TerminationReason::Deadline }]);
    }

    #[test]
    fn given_a_termination_recorded_when_asked_again_then_nothing() {
        let state = given(vec![
            admitted(),
            requested(),
            launched(),
            Event::TerminationRequested { reason: TerminationReason::Operator },
        ]);
        assert!(termination_events(Some(&state), TerminationReason::Deadline, VALID_TO_UNIX_MS + 1, true).is_empty());
        assert!(termination_events(None, TerminationReason::Deadline, VALID_TO_UNIX_MS + 1, true).is_empty());
    }
}
