//! Backstop: the guest's own power-off keeps the deadline when the bridge cannot.
//!
//! `docs/ARCHITECTURE.md` promises that the guest powers itself off at
//! `valid_to + guest.deadline_grace_s` and that InstanceInitiatedShutdownBehavior=terminate turns
//! the power-off into termination. From the simulator's model of each guest (what the user data
//! the backend sent told it, [`sim_ec2::SimEc2::guest_plan_of`]) this checker holds, for every
//! instance launched for a grant:
//! - its user data is the backend's (the simulator found a power-off time in it), and that time
//!   is no later than `valid_to + grace` (the deadline rounded up to the second, as the backend
//!   writes it);
//! - it is not `pending` or `running` after its guest powered off, and is terminated by the
//!   power-off plus EC2's longest `shutting-down` (unless something else ended it first);
//! - when the guest's power-off is what ended it, the grant's bill (once settled, one run) is
//!   for no more than what is owed: up to `valid_to` when the guest powered off at its deadline
//!   (the bridge was down then, and bills neither the grace nor its downtime), up to a poll after
//!   EC2 showed the exit when it powered off early; and for no less than the run up to the
//!   earlier of `valid_to` and the power-off, less what a correct poller can miss at the start
//!   (as `metering` allows: until `running` was first shown plus a poll, or the whole run when a
//!   crash may have lost that sighting). A second each way for rounding.

use aws_backend::port::InstanceState;
use sim_ec2::InstanceTruth;
use sim_ec2::reasons::INSTANCE_INITIATED_SHUTDOWN;

use super::{Context, Violation, names};

/// EC2's minimum billed time per running period, seconds.
const MINIMUM_S: u64 = 60;

/// Checks every granted instance's guest against the promise.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut fail = |message: String| violations.push(Violation::safety(names::BACKSTOP, message));
    let termination_ms_max = ctx.sim.faults().termination_delay_ms_max;
    for (grant, instance) in ctx.granted_instances() {
        let Some(plan) = ctx.plans.get(&grant) else { continue };
        let id = &instance.instance_id;
        let Some(guest) = ctx.sim.guest_plan_of(id) else {
            fail(format!(
                "grant {grant}: instance {id} was launched without the guest's user data, so nothing powers it off"
            ));
            continue;
        };
        let poweroff_ms = guest.vars.poweroff_at_unix_s.saturating_mul(1_000);
        let promised_ms = plan.valid_to_unix_ms.next_multiple_of(1_000) + ctx.grace_ms;
        if poweroff_ms > promised_ms {
            fail(format!(
                "grant {grant}: instance {id}'s guest powers off at {poweroff_ms}, {} ms after valid_to + grace ({promised_ms})",
                poweroff_ms - promised_ms
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
        if ctx.replay.settled.contains_key(&grant) && ctx.group_of(&grant).len() == 1 {
            check_bill(ctx, grant, plan.valid_to_unix_ms, off, instance, &mut fail);
        }
    }
    violations
}

/// The bill of a settled grant whose one instance its guest powered off at `off`.
fn check_bill(
    ctx: &Context<'_>,
    grant: backend_api::GrantId,
    valid_to: u64,
    off: u64,
    instance: &InstanceTruth,
    fail: &mut impl FnMut(String),
) {
    let Some(state) = ctx.replay.states.get(&grant) else { return };
    let mut runs = instance.intervals.iter().filter(|i| i.state == InstanceState::Running);
    let (Some(run), None) = (runs.next(), runs.next()) else { return };
    let (a, id, poll) = (run.from_ms, &instance.instance_id, ctx.poll_interval_ms);
    let billed_s = state.usage().cpu_seconds / u64::from(instance.vcpus.max(1));
    let shown_run = instance.shown.iter().find(|(t, s)| *s == InstanceState::Running && *t >= a).map(|(t, _)| *t);

    // Over: a deadline power-off (after valid_to) means the bridge was down at the deadline, and
    // it bills up to valid_to, never the grace or its downtime; an early one is billed until a
    // poll after EC2 first showed the exit. A run the bridge missed while down is billed from
    // LaunchTime (see `metering`).
    let cap = if off >= valid_to {
        valid_to
    } else {
        let shown_exit = instance.shown.iter().find(|(t, s)| *s != InstanceState::Running && *t >= off);
        shown_exit.map_or(ctx.now_unix_ms, |(t, _)| *t) + poll
    };
    let mut over_ms = 1_000;
    if ctx.down_during(instance.launch_time_unix_ms, shown_run.unwrap_or(off)) {
        over_ms += a - instance.launch_time_unix_ms;
    }
    let max_s = cap.saturating_sub(a).div_ceil(1_000).max(MINIMUM_S) + over_ms.div_ceil(1_000);
    if billed_s > max_s {
        fail(format!(
            "grant {grant}: billed {billed_s} s for instance {id}, which ran from {a} until its guest powered off at {off} \
             (valid_to {valid_to}): at most {max_s} s are owed"
        ));
    }

    // Under: the run up to the earlier of valid_to and the power-off, less what a poller can
    // miss at its start.
    let b = valid_to.min(off);
    if b <= a {
        return;
    }
    let missable_ms = match shown_run {
        Some(o) if !ctx.down_during(a.saturating_sub(poll), o + poll) => (o - a + poll).min(b - a),
        _ => b - a,
    };
    let owed_s = (b - a - missable_ms) / 1_000;
    if billed_s + 1 < owed_s {
        fail(format!(
            "grant {grant}: billed {billed_s} s for instance {id}, which ran {} s up to min(valid_to, guest power-off); \
             a poller misses at most {} s of it",
            (b - a) / 1_000,
            missable_ms.div_ceil(1_000)
        ));
    }
}
