//! The simulated compute-bridge's side of one grant: provision it through the bridge process
//! acting when it arrives, retry once what may be retried, watch it to its deadline, terminate
//! it, and note what happened for the checkers.

use std::sync::Arc;

use aws_backend::AwsBackend;
use backend_api::{Backend, BackendError, Clock, Envelope, TokioClock};
use sim_ec2::SimEc2;

use crate::checkers::Outcome;
use crate::harness::{Facts, lock};
use crate::processes::{Active, Common};
use crate::scenario::GrantPlan;

/// How long the simulated compute-bridge waits before retrying a retryable provision failure.
const RETRY_AFTER_MS: u64 = 30_000;

/// One grant's life, sent to the process acting when it arrived, `first`; `processes` tells
/// which acts later, for a grant sent again.
pub(crate) async fn lifecycle(
    first: Active,
    processes: Arc<Common>,
    plan: Arc<GrantPlan>,
    facts: Facts,
    clock: Arc<TokioClock>,
    sim: Arc<SimEc2>,
) {
    let grant = plan.grant();
    let envelope = Envelope::for_region(plan.region.clone());
    let settle = |outcome: Outcome| {
        let mut facts = lock(&facts);
        let entry = facts.entry(plan.id).or_default();
        entry.outcome = outcome;
        entry.outcome_at_unix_ms = clock.now_unix_ms();
    };
    let mut current = first;
    let mut provisioned = current.bridge.provision(&grant, &envelope).await;
    // compute-bridge retries an error that says it may be retried, once, a little later.
    if let Err(err) = &provisioned
        && err.downcast_ref::<BackendError>().is_some_and(BackendError::is_retryable)
        && current.backend.grant_state(&plan.id).is_some_and(|s| s.is_settled() && s.retry_allowed())
    {
        clock.sleep_ms(RETRY_AFTER_MS).await;
        provisioned = current.bridge.provision(&grant, &envelope).await;
    }
    // A bridge that drained rolled the provision back as retryable and answered Unavailable:
    // compute-bridge sends the grant again, every RETRY_AFTER_MS, to the process acting next,
    // until its deadline. The harness keeps this task across the restart (`resending`).
    let mut resent = false;
    while let Err(err) = &provisioned
        && unavailable(err)
        && clock.now_unix_ms() + RETRY_AFTER_MS < plan.valid_to_unix_ms
    {
        lock(&facts).entry(plan.id).or_default().resending = true;
        clock.sleep_ms(RETRY_AFTER_MS).await;
        if let Some(next) = processes.active() {
            current = next;
        }
        resent = true;
        provisioned = current.bridge.provision(&grant, &envelope).await;
    }
    lock(&facts).entry(plan.id).or_default().resending = false;
    let Active { bridge, backend, .. } = current;
    // Sent again late, a grant may find too little time left: compute-bridge's loss, not a
    // refusal of an admissible grant.
    let too_late = |err: &anyhow::Error| {
        matches!(
            err.downcast_ref::<BackendError>(),
            Some(BackendError::Unsatisfiable { .. } | BackendError::DeadlinePassed { .. })
        )
    };
    // A replica that lost its lease stops acting, and its process exits: what it had in flight
    // is the new holder's recovery's, as after a crash.
    let interrupted = |backend: &AwsBackend| !backend.acting() || backend.lease_lost().is_some();
    match provisioned {
        Err(_) if interrupted(&backend) => settle(Outcome::Interrupted),
        // Still unavailable at its deadline: compute-bridge sends it to another bridge.
        Err(err) if unavailable(&err) => settle(Outcome::Interrupted),
        Err(err) if resent && too_late(&err) => settle(Outcome::Interrupted),
        Err(err) => {
            let refused = matches!(
                err.downcast_ref::<BackendError>(),
                Some(
                    BackendError::Unsatisfiable { .. }
                        | BackendError::RegionNotAllowed { .. }
                        | BackendError::DeadlinePassed { .. }
                        | BackendError::InvalidInput { .. }
                )
            ) && backend.grant_state(&plan.id).is_none();
            let message = format!("{err:#}");
            settle(if refused { Outcome::Refused(message) } else { Outcome::ProvisionFailed(message) });
        }
        Ok(instance) => {
            {
                let mut facts = lock(&facts);
                let entry = facts.entry(plan.id).or_default();
                entry.handed_over = true;
                entry.handed_over_at_unix_ms = clock.now_unix_ms();
                entry.handed_over_state = sim.instance(&instance.instance_id).map(|i| i.state);
                let truth = sim.guest_of(&instance.instance_id);
                let mut ingress: Vec<(u16, String)> = sim
                    .instance(&instance.instance_id)
                    .map(|i| i.security_group_ids.iter().filter_map(|g| sim.ingress_of(g)).flatten().collect())
                    .unwrap_or_default();
                ingress.sort();
                entry.guest = Some(crate::checkers::guest::GuestFacts {
                    instance_id: instance.instance_id.clone(),
                    pinned_host_key: instance.ssh_host_public_key.clone(),
                    guest_host_key: truth.as_ref().map(|t| t.host_key.clone()),
                    imds: truth.map(|t| t.imds),
                    ingress,
                });
            }
            let watched = bridge.watch_until_exit(&instance, plan.valid_to).await;
            if let Ok(usage) = &watched {
                lock(&facts).entry(plan.id).or_default().watched_usage = Some(*usage);
            }
            let ended = bridge.terminate(&instance).await;
            settle(match (watched, ended) {
                (Ok(_), Ok(())) => Outcome::Completed,
                _ if interrupted(&backend) => Outcome::Interrupted,
                (Err(err), _) | (_, Err(err)) => Outcome::AfterProvisionFailed(format!("{err:#}")),
            });
        }
    }
}

/// A bridge that drains or has stopped answers Unavailable.
fn unavailable(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<BackendError>(), Some(BackendError::Unavailable { .. }))
}
