//! Sizing: the smallest instance type that fits a grant's manifest.

use backend_api::{BackendError, ComputeManifest};

use crate::port::InstanceTypeInfo;

/// The largest gp3 volume, in GiB.
pub const MAX_ROOT_VOLUME_GIB: u32 = 16_384;

/// The catalogue ordered smallest first: by vCPUs, then memory, then name (for determinism).
pub fn sorted(mut types: Vec<InstanceTypeInfo>) -> Vec<InstanceTypeInfo> {
    types.sort_by(|a, b| (a.vcpus, a.memory_mib, &a.instance_type).cmp(&(b.vcpus, b.memory_mib, &b.instance_type)));
    types.dedup_by(|a, b| a.instance_type == b.instance_type);
    types
}

/// Every type with vCPUs × 1000 ≥ the CPU asked and memory ≥ the RAM asked, smallest first
/// (the order capacity fallback walks). An error names the request and the largest type.
pub fn fitting(
    sorted_types: &[InstanceTypeInfo],
    manifest: &ComputeManifest,
) -> Result<Vec<InstanceTypeInfo>, BackendError> {
    let fits: Vec<InstanceTypeInfo> = sorted_types
        .iter()
        .filter(|t| {
            u64::from(t.vcpus) * 1_000 >= u64::from(manifest.cpu_millicores)
                && t.memory_mib >= u64::from(manifest.ram_mib)
        })
        .cloned()
        .collect();
    if fits.is_empty() {
        let largest = sorted_types.iter().max_by_key(|t| (t.vcpus, t.memory_mib)).map_or_else(
            || "no types at all".to_string(),
            |t| format!("{} ({} vCPU, {} MiB)", t.instance_type, t.vcpus, t.memory_mib),
        );
        return Err(BackendError::Unsatisfiable {
            reason: format!(
                "no instance type in the configured families has {} millicores and {} MiB; the largest is {largest}",
                manifest.cpu_millicores, manifest.ram_mib
            ),
        });
    }
    Ok(fits)
}

#[cfg(test)]
mod tests {
    use backend_api::ImageHash;

    use super::*;

    fn t(name: &str, vcpus: u32, memory_mib: u64) -> InstanceTypeInfo {
        InstanceTypeInfo { instance_type: name.into(), vcpus, memory_mib }
    }

    fn manifest(cpu_millicores: u32, ram_mib: u32) -> ComputeManifest {
        ComputeManifest {
            cpu_millicores,
            ram_mib,
            storage_gib: 8,
            tdx_required: false,
            image_post_hash: ImageHash([0; 32]),
        }
    }

    #[test]
    fn picks_the_smallest_fit_and_orders_the_fallbacks() {
        let types = sorted(vec![
            t("m6i.xlarge", 4, 16_384),
            t("c6i.large", 2, 4_096),
            t("m6i.large", 2, 8_192),
            t("r6i.large", 2, 16_384),
        ]);
        let fits = fitting(&types, &manifest(1_500, 6_000)).expect("fits");
        let names: Vec<&str> = fits.iter().map(|t| t.instance_type.as_str()).collect();
        assert_eq!(names, ["m6i.large", "r6i.large", "m6i.xlarge"]);
        // Exactly at the boundary fits.
        assert_eq!(fitting(&types, &manifest(2_000, 4_096)).expect("fits")[0].instance_type, "c6i.large");
    }

    #[test]
    fn too_big_names_the_request_and_the_largest() {
        let types = sorted(vec![t("m6i.large", 2, 8_192)]);
        let err = fitting(&types, &manifest(64_000, 1_024)).expect_err("too big");
        let text = err.to_string();
        assert!(text.contains("64000 millicores") && text.contains("m6i.large (2 vCPU, 8192 MiB)"), "{text}");
    }
}
