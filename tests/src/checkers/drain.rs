//! `drain`: a drain (SIGTERM, or `Bridge::drain`) ends within its bound, and every provision
//! it found in flight is, once it has ended, either finished (its instance ran) or rolled back
//! as retryable: its caller got no instance and may send the grant again.

use std::collections::BTreeMap;

use backend_api::GrantId;
use usage_ledger::GrantState;

use super::{GrantFacts, Outcome, Violation, bounds, names};

/// The grants the ledger shows mid-provision: admitted, no termination asked for, their
/// instance never seen running.
pub fn mid_provision<'a>(live: impl Iterator<Item = (&'a GrantId, &'a GrantState)>) -> Vec<GrantId> {
    live.filter(|(_, s)| !s.is_settled() && s.termination().is_none() && !s.ever_running()).map(|(id, _)| *id).collect()
}

/// Checks a drain that found `in_flight` mid-provision and ended after `took_ms` (`None`: it
/// had not ended within [`bounds::DRAIN_ENDS_WITHIN_MS`]), against the ledger and the grants'
/// outcomes after it.
pub fn check(
    in_flight: &[GrantId],
    took_ms: Option<u64>,
    ledger: &BTreeMap<GrantId, GrantState>,
    facts: &BTreeMap<GrantId, GrantFacts>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    if took_ms.is_none() {
        violations.push(Violation::liveness(
            names::DRAIN,
            format!("a drain did not end within {} ms", bounds::DRAIN_ENDS_WITHIN_MS),
        ));
    }
    for grant in in_flight {
        let Some(state) = ledger.get(grant) else { continue };
        // A provision that failed for a reason of its own, not the drain, is the provision
        // checker's.
        let failed_on_its_own = facts.get(grant).is_some_and(|f| matches!(f.outcome, Outcome::ProvisionFailed(_)));
        if state.ever_running() || state.retry_allowed() || failed_on_its_own {
            continue;
        }
        violations.push(Violation::safety(
            names::DRAIN,
            format!(
                "grant {grant} was mid-provision when the bridge drained, and was neither finished nor rolled back as retryable ({:?})",
                state.phase()
            ),
        ));
    }
    violations
}
