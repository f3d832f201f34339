//! Metering: every settled grant's usage, as stored in the ledger, against an oracle computed
//! here from the simulator's ground truth with its own arithmetic (it calls nothing of
//! `usage-ledger`).
//!
//! The oracle is what EC2 bills: each `running` interval in whole seconds, rounded up, at
//! least 60 s; cpu-seconds = vCPUs × seconds, MiB-seconds = MiB × seconds; network bytes = what
//! CloudWatch reports of the instance's bytes in plus out once every datapoint is published
//! (`InstanceTruth::cloudwatch_bytes_in`: the bytes it moved less CloudWatch's gaps, the only
//! figure a meter reading CloudWatch can reach; docs/metering.md); storage = the root volume
//! provisioned (0 when nothing launched).
//!
//! The tolerance is what a correct poller can miss, derived per running period `[a, b)` from
//! the times EC2 showed the instance's state to a Describe (`InstanceTruth::shown`):
//! - under-billing by at most `(o - a) + poll`, where `o` is the first time `running` was shown
//!   (the period opens at an observation; `poll` because the poller, not every Describe,
//!   records it); the whole period when `running` was never shown;
//! - over-billing by at most `(c - b) + poll`, where `c` is the first time the exit was shown;
//! - under-billing by `b - valid_to` more when the period outlived `valid_to` (billing stops
//!   at the deadline's termination request);
//! - a crash near the period (between `a - poll` and `c + poll`): the whole period under, and
//!   the downtime plus two polls over (a Describe answered just before a crash is lost);
//! - over-billing by the time the instance was pending when the backend was down until over
//!   ten minutes after the launch: the period then opens at LaunchTime;
//! - one second per period each way for rounding.
//!
//! Network bytes: a complete figure (measured after CloudWatch's publication lag, over the
//! instance's whole life) must equal CloudWatch's eventual figure exactly; a provisional one may
//! fall short, never exceed it; an unknown one counts 0. After the quiet phase every figure must be complete
//! ([`check_final`]). Storage must be exact. Usage is the ledger's as it stands, amendments
//! included, not only what `GrantSettled` said.

use backend_api::UsageMetrics;
use sim_ec2::InstanceTruth;
use usage_ledger::NetworkStatus;

use super::{Context, Measures, Violation, names};
use crate::scenario::GrantPlan;

/// After how long the backend takes a first `running` sighting for a run it missed and bills
/// from LaunchTime (`aws-backend`'s `MISSED_RUN_MS`).
const MISSED_RUN_MS: u64 = 10 * 60_000;

/// EC2's minimum billed time per running period, seconds.
const MINIMUM_S: u64 = 60;

/// What EC2 bills for an instance, and how far a correct meter may be from it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bill {
    /// Billed seconds, summed over running periods.
    pub seconds: u64,
    /// How many seconds a correct meter may bill less.
    pub under_s: u64,
    /// How many seconds a correct meter may bill more.
    pub over_s: u64,
}

fn billed_s(ms: u64) -> u64 {
    let whole = ms / 1_000 + u64::from(!ms.is_multiple_of(1_000));
    whole.max(MINIMUM_S)
}

/// The oracle for one instance of `plan` as of `now_unix_ms`.
pub fn oracle(instance: &InstanceTruth, plan: &GrantPlan, ctx: &Context<'_>) -> Bill {
    use aws_backend::port::InstanceState::Running;
    let poll = ctx.poll_interval_ms;
    let mut bill = Bill::default();
    let (mut under_ms, mut over_ms) = (0u64, 0u64);
    for interval in instance.intervals.iter().filter(|i| i.state == Running) {
        let (a, b) = (interval.from_ms, interval.to_ms.unwrap_or(ctx.now_unix_ms));
        let seconds = billed_s(b - a);
        bill.seconds += seconds;
        bill.under_s += 1;
        bill.over_s += 1;
        let opened = instance.shown.iter().find(|(t, s)| *s == Running && (a..=b).contains(t)).map(|(t, _)| *t);
        let closed = instance.shown.iter().find(|(t, s)| *s != Running && *t >= b).map_or(ctx.now_unix_ms, |(t, _)| *t);
        match opened {
            Some(o) => under_ms += o - a + poll,
            None => under_ms += seconds * 1_000,
        }
        // A first period the backend was down for, first shown running over ten minutes after
        // launch, opens at LaunchTime: the pending time may be billed.
        let first = instance.intervals.iter().find(|i| i.state == Running).map(|i| i.from_ms) == Some(a);
        let seen_at = opened.unwrap_or(b);
        if first
            && seen_at > instance.launch_time_unix_ms + MISSED_RUN_MS
            && ctx.down_during(instance.launch_time_unix_ms, seen_at)
        {
            over_ms += a - instance.launch_time_unix_ms;
        }
        over_ms += closed.saturating_sub(b) + poll;
        if b > plan.valid_to_unix_ms {
            under_ms += b - plan.valid_to_unix_ms.max(opened.unwrap_or(a));
        }
        for down in ctx.downtimes.iter().filter(|d| d.overlaps(a.saturating_sub(poll), closed + poll)) {
            under_ms += seconds * 1_000;
            over_ms += down.to_unix_ms - down.from_unix_ms + 2 * poll;
        }
    }
    bill.under_s += under_ms.div_ceil(1_000);
    bill.over_s += over_ms.div_ceil(1_000);
    bill
}

/// Compares every settled grant's stored usage with the oracle.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    for grant in ctx.replay.settled.keys() {
        let Some(plan) = ctx.plans.get(grant) else { continue };
        let Some(state) = ctx.replay.states.get(grant) else { continue };
        let usage = &state.usage();
        let network = state.network_status();
        let instances = ctx.group_of(grant);
        let mut fail = |message: String| violations.push(Violation::safety(names::METERING, message));
        let instance = match instances {
            [] => {
                if *usage != UsageMetrics::default() {
                    fail(format!("grant {grant} never launched an instance but was billed {usage:?}"));
                }
                continue;
            }
            [(_, one)] => *one,
            // Several attempts (retried provisions) bill each instance; their sizes may differ.
            many => {
                let many: Vec<&InstanceTruth> = many.iter().map(|(_, i)| *i).collect();
                check_attempts(grant, usage, network, &many, plan, ctx, &mut fail);
                continue;
            }
        };
        let bill = oracle(instance, plan, ctx);
        let metered_s = usage.cpu_seconds / u64::from(instance.vcpus.max(1));
        measures.metering_error_seconds_max = measures.metering_error_seconds_max.max(metered_s.abs_diff(bill.seconds));
        for (what, size, metered) in [
            ("cpu-seconds", u64::from(instance.vcpus), usage.cpu_seconds),
            ("MiB-seconds", instance.memory_mib, usage.ram_mib_seconds),
        ] {
            let truth = size * bill.seconds;
            let err = metered.abs_diff(truth);
            if what == "cpu-seconds" {
                measures.metering_error_cpu_seconds_max = measures.metering_error_cpu_seconds_max.max(err);
            } else {
                measures.metering_error_ram_mib_seconds_max = measures.metering_error_ram_mib_seconds_max.max(err);
            }
            let (allowed, direction) =
                if metered > truth { (size * bill.over_s, "over") } else { (size * bill.under_s, "under") };
            if err > allowed {
                fail(format!(
                    "grant {grant}: metered {metered} {what}, EC2 bills {truth} ({size} x {} s): {direction} by {err}, beyond the {allowed} a poller can miss",
                    bill.seconds
                ));
            }
        }
        let net_truth = instance.cloudwatch_bytes_in + instance.cloudwatch_bytes_out;
        if network == NetworkStatus::Complete {
            let net_err = usage.network_bytes.abs_diff(net_truth);
            measures.metering_error_network_bytes_max = measures.metering_error_network_bytes_max.max(net_err);
        }
        if let Some(message) = network_error(usage.network_bytes, network, net_truth) {
            fail(format!("grant {grant}: {message}"));
        }
        let storage_truth = u64::from(plan.manifest.storage_gib.max(crate::fixture::MIN_ROOT_VOLUME_GIB)) << 30;
        if usage.storage_bytes != storage_truth {
            fail(format!("grant {grant}: metered {} storage bytes, provisioned {storage_truth}", usage.storage_bytes));
        }
    }
    violations
}

/// A grant whose provision was retried: each instance billed on its own, summed. Only the
/// cpu-seconds are compared (sizes differ between attempts, so MiB-seconds follow the same
/// arithmetic); network is summed exactly.
fn check_attempts(
    grant: &backend_api::GrantId,
    usage: &UsageMetrics,
    network: NetworkStatus,
    instances: &[&InstanceTruth],
    plan: &GrantPlan,
    ctx: &Context<'_>,
    fail: &mut impl FnMut(String),
) {
    let (mut truth, mut under, mut over, mut net) = (0u64, 0u64, 0u64, 0u64);
    for instance in instances {
        let bill = oracle(instance, plan, ctx);
        let vcpus = u64::from(instance.vcpus);
        truth += vcpus * bill.seconds;
        under += vcpus * bill.under_s;
        over += vcpus * bill.over_s;
        net += instance.cloudwatch_bytes_in + instance.cloudwatch_bytes_out;
    }
    let metered = usage.cpu_seconds;
    if metered > truth + over || metered + under < truth {
        fail(format!(
            "grant {grant}: {} attempts metered {metered} cpu-seconds, EC2 bills {truth} (allowed {under} under, {over} over)",
            instances.len()
        ));
    }
    if let Some(message) = network_error(usage.network_bytes, network, net) {
        fail(format!("grant {grant}: {} attempts: {message}", instances.len()));
    }
}

/// What is wrong with `metered` network bytes of `status` against `truth` (what CloudWatch
/// reports once it has published everything), if anything.
fn network_error(metered: u64, status: NetworkStatus, truth: u64) -> Option<String> {
    match status {
        NetworkStatus::Complete if metered != truth => {
            Some(format!("metered {metered} network bytes as complete, CloudWatch reports {truth} for the instances"))
        }
        NetworkStatus::Provisional | NetworkStatus::Unknown if metered > truth => {
            Some(format!("metered {metered} network bytes ({status:?}), more than the {truth} CloudWatch reports"))
        }
        _ => None,
    }
}

/// After the quiet phase: every settled grant's network figure is complete.
pub fn check_final(ctx: &Context<'_>) -> Vec<Violation> {
    ctx.replay
        .settled
        .keys()
        .filter_map(|grant| {
            let status = ctx.replay.states.get(grant)?.network_status();
            (status != NetworkStatus::Complete).then(|| {
                Violation::safety(
                    names::METERING,
                    format!(
                        "grant {grant}: its network figure is still {status:?} after the quiet phase: it was never measured after CloudWatch's publication lag"
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::billed_s;

    #[test]
    fn billing_rounds_up_to_whole_seconds_with_a_minute_minimum() {
        assert_eq!(billed_s(0), 60);
        assert_eq!(billed_s(59_001), 60);
        assert_eq!(billed_s(60_000), 60);
        assert_eq!(billed_s(60_001), 61);
        assert_eq!(billed_s(3_600_000), 3_600);
    }
}
