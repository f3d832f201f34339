//! Metering: a settled grant's usage matches the simulator's ground truth within one poll
//! interval per running period (plus, where the backend was down or a termination was late,
//! that time too).

use usage_ledger::billed_seconds;

use super::{Context, Measures, Violation};

/// Compares every settled grant's usage with what its instance really did.
pub fn check(ctx: &Context<'_>, measures: &mut Measures) -> Vec<Violation> {
    let mut violations = Vec::new();
    for instance in &ctx.instances {
        let Some(grant) = ctx.grant_of(&instance.tags) else { continue };
        let Some(plan) = ctx.plans.get(&grant) else { continue };
        let Some(usage) = ctx.backend.with_ledger(|l| l.grant(&grant).filter(|s| s.is_settled()).map(|s| s.usage()))
        else {
            continue;
        };
        let true_s = if instance.running_ms == 0 { 0 } else { billed_seconds(instance.running_ms) };
        let vcpus = u64::from(instance.vcpus);
        let late_ms = instance.up_until_ms().map_or(0, |end| end.saturating_sub(plan.valid_to_unix_ms));
        let slack_s = (ctx.poll_interval_ms + ctx.downtime_ms_max + late_ms).div_ceil(1_000) + 1;
        let cpu_true = vcpus * true_s;
        let cpu_err = usage.cpu_seconds.abs_diff(cpu_true);
        let ram_true = instance.memory_mib * true_s;
        let ram_err = usage.ram_mib_seconds.abs_diff(ram_true);
        let net_true = instance.network_bytes_in + instance.network_bytes_out;
        let net_err = usage.network_bytes.abs_diff(net_true);
        measures.metering_error_cpu_seconds_max = measures.metering_error_cpu_seconds_max.max(cpu_err);
        measures.metering_error_ram_mib_seconds_max = measures.metering_error_ram_mib_seconds_max.max(ram_err);
        measures.metering_error_network_bytes_max = measures.metering_error_network_bytes_max.max(net_err);
        // Billing's 60 s minimum can add up to a minute when the observed period is shorter
        // than the true one, or the other way round.
        let cpu_tolerance = vcpus * (slack_s + 60);
        if cpu_err > cpu_tolerance {
            violations.push(Violation::safety(
                "metering",
                format!(
                    "grant {grant}: metered {} cpu-seconds, truth {cpu_true} ({} vCPU x {true_s} s), beyond the tolerance {cpu_tolerance}",
                    usage.cpu_seconds, vcpus
                ),
            ));
        }
        let ram_tolerance = instance.memory_mib * (slack_s + 60);
        if ram_err > ram_tolerance {
            violations.push(Violation::safety(
                "metering",
                format!(
                    "grant {grant}: metered {} MiB-seconds, truth {ram_true}, beyond {ram_tolerance}",
                    usage.ram_mib_seconds
                ),
            ));
        }
        let net_tolerance = 2 * ctx.network_bytes_per_s_max * (slack_s + 1);
        if net_err > net_tolerance {
            violations.push(Violation::safety(
                "metering",
                format!(
                    "grant {grant}: metered {} network bytes, truth {net_true}, beyond {net_tolerance}",
                    usage.network_bytes
                ),
            ));
        }
        let storage_true = u64::from(plan.manifest.storage_gib.max(8)) << 30;
        if usage.storage_bytes != storage_true {
            violations.push(Violation::safety(
                "metering",
                format!("grant {grant}: metered {} storage bytes, provisioned {storage_true}", usage.storage_bytes),
            ));
        }
    }
    violations
}
