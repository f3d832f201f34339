//! Sizing: every instance gives its grant at least what it asked for: vCPUs × 1000 at least
//! the millicores, at least the MiB of RAM, and a root volume at least the storage asked for
//! (and at least the operator's minimum).

use super::{Context, Violation, names};
use crate::fixture::MIN_ROOT_VOLUME_GIB;

/// Checks every instance ever launched against its grant's manifest.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (grant, instance) in ctx.granted_instances() {
        let m = &ctx.plan_of_workload(&grant).manifest;
        let cpu_millicores = u64::from(instance.vcpus) * 1_000;
        let storage_gib = m.storage_gib.max(MIN_ROOT_VOLUME_GIB);
        if cpu_millicores < u64::from(m.cpu_millicores)
            || instance.memory_mib < u64::from(m.ram_mib)
            || instance.root_volume_gib < storage_gib
        {
            violations.push(Violation::safety(
                names::SIZING,
                format!(
                    "instance {} of grant {grant} ({}: {} vCPU, {} MiB, {} GiB root) is smaller than the grant ({} millicores, {} MiB, {storage_gib} GiB)",
                    instance.instance_id,
                    instance.instance_type,
                    instance.vcpus,
                    instance.memory_mib,
                    instance.root_volume_gib,
                    m.cpu_millicores,
                    m.ram_mib
                ),
            ));
        }
    }
    violations
}
