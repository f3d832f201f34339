//! Backstop: the guest's own power-off keeps the deadline when the bridge cannot.
//!
//! `docs/ARCHITECTURE.md` promises that the guest powers itself off at
//! `valid_to + guest.deadline_grace_s` and that InstanceInitiatedShutdownBehavior=terminate turns
//! the power-off into termination. From the simulator's model of each guest (what the user data
//! the backend sent told it, [`sim_ec2::InstanceTruth::guest`], the simulator's `guest_plan_of`) this checker holds, for every
//! instance launched for a grant:
//! - its user data is the backend's (the simulator found a power-off time in it), and that time
//!   is exactly `valid_to + grace` (the deadline rounded up to the second, as the backend writes
//!   it): later leaves the deadline to nobody when the bridge is away; earlier cuts every grant
//!   short;
//! - it is not `pending` or `running` after its guest powered off, and is terminated by the
//!   power-off plus EC2's longest `shutting-down` (unless something else ended it first).
//!
//! The bill of an instance its guest powered off is `metering`'s: capped at `valid_to` like
//! every other.

use aws_backend::port::InstanceState;
use sim_ec2::reasons::INSTANCE_INITIATED_SHUTDOWN;

use super::{Context, Violation, names};

/// Checks every granted instance's guest against the promise.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut fail = |message: String| violations.push(Violation::safety(names::BACKSTOP, message));
    let termination_ms_max = ctx.sim_faults.termination_delay_ms_max;
    for (grant, instance) in ctx.granted_instances() {
        let Some(plan) = ctx.plan(&grant) else { continue };
        let id = &instance.instance_id;
        let Some(guest) = &instance.guest else {
            fail(format!(
                "grant {grant}: instance {id} was launched without the guest's user data, so nothing powers it off"
            ));
            continue;
        };
        let poweroff_ms = guest.vars.poweroff_at_unix_s.saturating_mul(1_000);
        let promised_ms = plan.valid_to_unix_ms.next_multiple_of(1_000) + ctx.grace_ms;
        if poweroff_ms != promised_ms {
            let (by, side) = if poweroff_ms > promised_ms {
                (poweroff_ms - promised_ms, "after")
            } else {
                (promised_ms - poweroff_ms, "before")
            };
            fail(format!(
                "grant {grant}: instance {id}'s guest powers off at {poweroff_ms}, {by} ms {side} valid_to + grace ({promised_ms})"
            ));
        }
        let off = guest.powers_off_at_ms;
        let exit =
            instance.intervals.iter().find(|i| !matches!(i.state, InstanceState::Pending | InstanceState::Running));
        if ctx.now_unix_ms > off && exit.is_none_or(|e| e.from_ms > off) {
            fail(format!(
                "grant {grant}: instance {id} is still {} at {}, after its guest powered off at {off}",
                instance.state.name(),
                ctx.now_unix_ms
            ));
            continue;
        }
        let by_guest =
            exit.is_some_and(|e| e.from_ms == off && e.reason_code.as_deref() == Some(INSTANCE_INITIATED_SHUTDOWN));
        if !by_guest {
            continue;
        }
        // InstanceInitiatedShutdownBehavior=terminate: the power-off ends in termination, not
        // in a stopped instance that still holds its volume.
        let terminated = instance.intervals.iter().find(|i| i.state == InstanceState::Terminated);
        let due = off + termination_ms_max;
        if ctx.now_unix_ms > due && terminated.is_none_or(|t| t.from_ms > due) {
            fail(format!(
                "grant {grant}: instance {id} is {} at {}, over {termination_ms_max} ms after its guest powered off at {off}: want terminated",
                instance.state.name(),
                ctx.now_unix_ms
            ));
        }
    }
    violations
}
