//! Admission and provision: `can_satisfy` (asked when the grant arrives) and `provision` agree
//! with what the plan says of the grant, and a provision fails only for a reason EC2 gave.
//!
//! - `can_satisfy` must accept every admissible grant and refuse every grant that must be
//!   refused (TDX, too big, expired, invalid); it sees no envelope, so a grant refused for its
//!   region is left to `provision`. A short grant may go either way.
//! - `provision` must refuse what must be refused and must not refuse what is admissible.
//! - A provision that fails after admitting the grant is acceptable only when the run injected
//!   faults that explain it between its arrival and the failure
//!   ([`super::FaultIndex::explain_failure`]: a fault that is not transient on the grant's calls
//!   or its instance or its region, or a transient one persisting past a correct client's
//!   retries), or its deadline: for a short grant, or when EC2 still had its instance pending at
//!   `valid_to`.

use super::bounds::QUOTA_MEMORY_MS;
use super::{Context, GrantFacts, Outcome, Violation, names};
use crate::scenario::{Expect, GrantPlan};

/// What `can_satisfy` must answer for `plan`, if the plan says.
pub fn can_satisfy_must_be(plan: &GrantPlan) -> Option<bool> {
    match plan.expect {
        Expect::Admit => Some(true),
        Expect::RefuseTdx | Expect::RefuseOversize | Expect::RefuseExpired | Expect::RefuseInvalid => Some(false),
        Expect::RefuseRegion | Expect::Short => None,
    }
}

/// The violation, if `can_satisfy` answered `accepted` for `plan` on arrival.
pub fn check_arrival(plan: &GrantPlan, accepted: bool) -> Option<Violation> {
    let must = can_satisfy_must_be(plan)?;
    (must != accepted).then(|| {
        Violation::safety(
            names::ADMISSION,
            format!("can_satisfy answered {accepted} on arrival for grant {} ({:?})", plan.id, plan.expect),
        )
    })
}

fn must_refuse(expect: Expect) -> bool {
    !matches!(expect, Expect::Admit | Expect::Short)
}

/// Checks every grant's outcome once the run is over.
pub fn check_outcomes(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (grant, plan) in ctx.plans {
        let Some(facts) = ctx.facts.get(grant) else { continue };
        let GrantFacts { outcome, handed_over, outcome_at_unix_ms, .. } = facts;
        if must_refuse(plan.expect) && (*handed_over || matches!(outcome, Outcome::ProvisionFailed(_))) {
            violations.push(Violation::safety(
                names::ADMISSION,
                format!("grant {grant} ({:?}) must be refused, but provision went ahead", plan.expect),
            ));
        }
        match outcome {
            Outcome::Refused(err) if plan.expect == Expect::Admit => violations
                .push(Violation::safety(names::ADMISSION, format!("admissible grant {grant} was refused: {err}"))),
            Outcome::ProvisionFailed(err) if !must_refuse(plan.expect) => {
                let explained =
                    ctx.faults.explain_failure(grant, &plan.region, plan.arrival_unix_ms, *outcome_at_unix_ms)
                        || mentions_deadline(err) && (plan.expect == Expect::Short || pending_at_deadline(ctx, plan))
                        || (mentions_deadline(err) || err.contains("host key")) && console_too_late(ctx, plan)
                        || quota_refusal(ctx, plan, err, *outcome_at_unix_ms)
                        || partitioned(ctx, plan, err, *outcome_at_unix_ms);
                if !explained {
                    violations.push(Violation::safety(
                        names::PROVISION,
                        format!(
                            "grant {grant} (arrived {}, valid {}..{}): provision failed with no injected fault to explain it: {err}",
                            plan.arrival_unix_ms,
                            plan.valid_from_unix_ms(),
                            plan.valid_to_unix_ms
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    violations
}

/// True when the provision failed because its replica could not reach the ledger during a
/// partition (with `--replicas`; the harness counts a partition as a downtime): the backend must
/// not go on with what it cannot record.
fn partitioned(ctx: &Context<'_>, plan: &GrantPlan, err: &str, failed_at_unix_ms: u64) -> bool {
    err.contains(crate::framestore::PARTITIONED)
        && ctx.downtimes.iter().any(|d| d.overlaps(plan.arrival_unix_ms, failed_at_unix_ms))
}

/// True when EC2 still had an instance of the grant pending at its deadline: ordinary launch
/// delays (tens of seconds to two minutes) can outlast a grant's last minute.
fn pending_at_deadline(ctx: &Context<'_>, plan: &GrantPlan) -> bool {
    let at = plan.valid_to_unix_ms;
    ctx.granted_instances().filter(|(grant, _)| *grant == plan.id).any(|(_, i)| {
        i.intervals.iter().any(|s| {
            s.state == aws_backend::port::InstanceState::Pending && s.from_ms <= at && s.to_ms.is_none_or(|to| to >= at)
        })
    })
}

/// True when an instance of the grant ran but its console showed the host key only after the
/// backend had to stop waiting for it (`guest.host_key_wait_s` after running, or the deadline):
/// ordinary console lags can outlast a short grant.
fn console_too_late(ctx: &Context<'_>, plan: &GrantPlan) -> bool {
    let wait_ms = ctx.backend.config().guest.host_key_wait_s * 1_000;
    ctx.granted_instances().filter(|(grant, _)| *grant == plan.id).any(|(_, i)| {
        let Some(truth) = ctx.sim.guest_of(&i.instance_id) else { return false };
        let ran = i.intervals.iter().find(|s| s.state == aws_backend::port::InstanceState::Running).map(|s| s.from_ms);
        match (ran, truth.console_at_ms) {
            (Some(ran), Some(shown)) => shown > plan.valid_to_unix_ms.min(ran + wait_ms),
            _ => false,
        }
    })
}

/// True for a grant refused for the vCPU quota before anything was created, within
/// [`QUOTA_MEMORY_MS`] after EC2 last answered `VcpuLimitExceeded` in the region: the bridge
/// plans with what EC2 told it, not with what it told it long ago.
fn quota_refusal(ctx: &Context<'_>, plan: &GrantPlan, err: &str, at_unix_ms: u64) -> bool {
    let learnt_from = at_unix_ms.saturating_sub(QUOTA_MEMORY_MS);
    err.contains("VcpuLimitExceeded")
        && err.contains("nothing was created")
        && ctx.faults.quota_met(&plan.region, learnt_from, at_unix_ms)
        && ctx.granted_instances().all(|(grant, _)| grant != plan.id)
}

fn mentions_deadline(err: &str) -> bool {
    err.contains("valid_to") || err.contains("deadline")
}
