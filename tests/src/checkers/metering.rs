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
//! The bill is capped at the grant's `valid_to`: each running period `[a, b)` is billed as
//! `[a, min(b, valid_to))` (nothing when it starts at or after `valid_to`), whatever crashed or
//! failed: the requester pays EC2's running time up to its deadline, never the time the bridge
//! or its ledger took to end it.
//!
//! The tolerance comes from EC2's truth, the run's settings and the harness's named bounds
//! ([`super::bounds`]), never from what the backend's own polls were shown. Per period:
//! - under-billing at its start by at most one sighting: the poll interval plus
//!   [`bounds::SIGHTING_MS`], counted from when EC2 lets a tag-filtered Describe see the
//!   instance (a new instance may stay hidden from it for the run's longest visibility delay
//!   plus its longest tag propagation), plus [`bounds::FAULT_BUDGET_MS`] when faults hit the
//!   region's Describe calls then. A bridge that missed the start (it was down) bills from EC2's
//!   LaunchTime, so downtime adds nothing here;
//! - over-billing at the first period's start by the time the instance was pending (LaunchTime
//!   to `running`), what billing from LaunchTime adds, when the bridge may have missed the
//!   start: it was down between LaunchTime and a sighting after `running`, or a fault hit the
//!   grant's RunInstances (a lost answer: the instance is found by its token later);
//! - under-billing the whole period when it started and ended inside one downtime, or lasted
//!   less than one sighting after it could be seen (nobody could see it run);
//! - over-billing at its end, when it ended before `valid_to` without the bridge (EC2, the
//!   guest), by one sighting after the bridge could see it: after the end, or after the bridge
//!   was back when it was down then (the specific gap: nobody looked), plus the budget when
//!   faults hit the region's Describe calls; never past `valid_to`;
//! - one second each way for rounding.
//!
//! Network bytes: a complete figure (measured after CloudWatch's publication lag, over the
//! instance's whole life) must equal CloudWatch's eventual figure exactly; a provisional one may
//! fall short, never exceed it; an unknown one counts 0. After the quiet phase every figure must be complete
//! ([`check_final`]). Storage must be exact. Usage is the ledger's as it stands, amendments
//! included, not only what `GrantSettled` said.

use backend_api::UsageMetrics;
use sim_ec2::InstanceTruth;
use usage_ledger::NetworkStatus;

use super::{Context, Measures, Violation, bounds, names};
use crate::scenario::GrantPlan;

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

/// The oracle for one instance of `plan` (one whose tags name `plan`'s grant) as of `now_unix_ms`.
pub fn oracle(instance: &InstanceTruth, plan: &GrantPlan, ctx: &Context<'_>) -> Bill {
    use aws_backend::port::InstanceState::Running;
    let sighting = ctx.poll_interval_ms + bounds::SIGHTING_MS;
    let faults = &ctx.sim_faults;
    let hidden_until = instance.launch_time_unix_ms + faults.visibility_delay_ms_max + faults.tag_propagation_ms_max;
    let valid_to = plan.valid_to_unix_ms;
    let region = &instance.region;
    let budget =
        |from: u64, to: u64| if ctx.faults.describe_hit(region, from, to) { bounds::FAULT_BUDGET_MS } else { 0 };
    let mut bill = Bill::default();
    let (mut under_ms, mut over_ms) = (0u64, 0u64);
    for (k, interval) in instance.intervals.iter().filter(|i| i.state == Running).enumerate() {
        let (a, b) = (interval.from_ms, interval.to_ms.unwrap_or(ctx.now_unix_ms));
        // A bridge that missed the start (down then), or found the instance by its token after
        // a RunInstances answer was lost, bills from LaunchTime: the pending time more.
        if k == 0 && (ctx.down_during(instance.launch_time_unix_ms, a + sighting) || run_faulted(ctx, &plan.id)) {
            over_ms += a - instance.launch_time_unix_ms;
        }
        if a >= valid_to {
            // Ran only after the deadline (pending across it): owed nothing, but a meter that
            // bills a missed run from LaunchTime may bill its minimum.
            over_ms += MINIMUM_S * 1_000;
            continue;
        }
        let end = b.min(valid_to);
        let seconds = billed_s(end - a);
        bill.seconds += seconds;
        bill.under_s += 1;
        bill.over_s += 1;
        let seen_from = a.max(hidden_until);
        // A run wholly inside a downtime (it started and ended while nobody looked) cannot be
        // seen running at all: the specific gap is the whole period.
        // So is a run shorter than one sighting, which a poller may never catch running.
        let unseen = ctx.downtimes.iter().any(|d| d.from_unix_ms <= a + sighting && b < d.to_unix_ms)
            || b < seen_from + sighting;
        // A pause or partition of the acting process that covers the start of the run delays
        // its first sighting by that process, which saw it pending and so bills from the
        // sighting, to a sighting after the downtime ends: the gap is the downtime, chained
        // while the next one starts before the sighting it allows. (After a kill, the new
        // process bills a run it never saw start from LaunchTime: no gap.)
        let mut seen_from = seen_from;
        while let Some(back) = ctx
            .downtimes
            .iter()
            .filter(|d| d.resumed && d.overlaps(seen_from, seen_from + sighting) && d.to_unix_ms > seen_from)
            .map(|d| d.to_unix_ms)
            .max()
        {
            seen_from = back;
        }
        under_ms += if unseen {
            seconds * 1_000
        } else {
            (seen_from - a + sighting + budget(a, seen_from + sighting)).min(seconds * 1_000)
        };
        if b < valid_to {
            let back = ctx.downtimes.iter().filter(|d| d.overlaps(b, b + sighting)).map(|d| d.to_unix_ms).max();
            let seen_by = back.unwrap_or(b).max(b) + sighting;
            over_ms += (seen_by + budget(b, seen_by)).min(valid_to) - b;
        }
    }
    bill.under_s += under_ms.div_ceil(1_000);
    bill.over_s += over_ms.div_ceil(1_000);
    bill
}

/// True when an injected fault hit a RunInstances call of `grant` (the instance's: the oracle
/// is asked only about a grant's own instances): a lost answer leaves the bridge to find the
/// instance by its token later.
fn run_faulted(ctx: &Context<'_>, grant: &backend_api::GrantId) -> bool {
    ctx.faults.on_grant_any(grant, 0, u64::MAX, Some(aws_backend::port::Operation::RunInstances))
}

/// Compares every settled grant's stored usage with the oracle.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    for grant in ctx.replay.settled.keys() {
        let Some(plan) = ctx.plan(grant) else { continue };
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
