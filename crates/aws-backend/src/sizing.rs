//! Sizing: the instance types that fit a grant's manifest, among those whose architecture has
//! an AMI, in the order they are tried: cheapest first when the operator gives prices,
//! smallest first otherwise.

use std::collections::{BTreeMap, BTreeSet};

use backend_api::{BackendError, ComputeManifest};

use crate::port::{Architecture, InstanceTypeInfo};

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

/// The types of `sorted_types` whose architecture is in `architectures` (those with an AMI in
/// the region), in the same order. An error names what the catalogue offers and the fix when
/// none is left.
pub fn launchable(
    sorted_types: &[InstanceTypeInfo],
    architectures: &BTreeSet<Architecture>,
    region: &str,
) -> Result<Vec<InstanceTypeInfo>, BackendError> {
    let usable: Vec<InstanceTypeInfo> =
        sorted_types.iter().filter(|t| architectures.contains(&t.architecture)).cloned().collect();
    if usable.is_empty() && !sorted_types.is_empty() {
        let offered: BTreeSet<Architecture> = sorted_types.iter().map(|t| t.architecture).collect();
        let offered: Vec<&str> = offered.iter().map(|a| a.as_str()).collect();
        let configured: Vec<&str> = architectures.iter().map(|a| a.as_str()).collect();
        return Err(BackendError::Unsatisfiable {
            reason: format!(
                "the configured families offer only {offered:?} instance types in {region}, and `ami.{region}` has an AMI for {configured:?} only: add `ami.{region}.{} = \"resolve:ssm:...\"` or a family of a configured architecture",
                offered.first().copied().unwrap_or("arm64")
            ),
        });
    }
    Ok(usable)
}

/// `fitting` (smallest first, as [`fitting`] returns it) in the order to try: with prices
/// (USD per hour by instance type), the priced types cheapest first, ties and equal prices
/// kept smallest first, then the types without a price, smallest first; without prices, as
/// given. A pure function of its inputs, so a resumed provision walks the same order.
pub fn by_price(fitting: Vec<InstanceTypeInfo>, usd_per_hour: &BTreeMap<String, f64>) -> Vec<InstanceTypeInfo> {
    if usd_per_hour.is_empty() {
        return fitting;
    }
    // Each type with its place in the size order, which breaks ties between equal prices.
    type Placed = Vec<(usize, InstanceTypeInfo)>;
    let (mut priced, unpriced): (Placed, Placed) =
        fitting.into_iter().enumerate().partition(|(_, t)| usd_per_hour.contains_key(&t.instance_type));
    // The configuration check refuses prices that are not positive and finite, so
    // `total_cmp` orders them as numbers; the size order breaks ties.
    priced.sort_by(|(ia, a), (ib, b)| {
        usd_per_hour[&a.instance_type].total_cmp(&usd_per_hour[&b.instance_type]).then(ia.cmp(ib))
    });
    priced.into_iter().chain(unpriced).map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use backend_api::ImageHash;

    use super::*;

    fn t(name: &str, vcpus: u32, memory_mib: u64) -> InstanceTypeInfo {
        // Graviton families carry a `g` after their generation digit (m7g, c7g, r7g).
        let family = name.split('.').next().unwrap_or_default();
        let architecture = if family.ends_with('g') { Architecture::Arm64 } else { Architecture::X86_64 };
        InstanceTypeInfo { instance_type: name.into(), vcpus, memory_mib, architecture }
    }

    fn names(types: &[InstanceTypeInfo]) -> Vec<&str> {
        types.iter().map(|t| t.instance_type.as_str()).collect()
    }

    fn catalogue() -> Vec<InstanceTypeInfo> {
        sorted(vec![
            t("m6i.large", 2, 8_192),
            t("m7g.large", 2, 8_192),
            t("c7g.large", 2, 4_096),
            t("m6i.xlarge", 4, 16_384),
            t("m7g.xlarge", 4, 16_384),
        ])
    }

    #[test]
    fn only_architectures_with_an_ami_are_launchable() {
        let x86 = BTreeSet::from([Architecture::X86_64]);
        assert_eq!(names(&launchable(&catalogue(), &x86, "us-east-1").expect("some")), ["m6i.large", "m6i.xlarge"]);
        let both = BTreeSet::from(Architecture::ALL);
        assert_eq!(launchable(&catalogue(), &both, "us-east-1").expect("all").len(), 5);
        let graviton_only = sorted(vec![t("m7g.large", 2, 8_192)]);
        let err = launchable(&graviton_only, &x86, "us-east-1").expect_err("no x86_64 type");
        let text = err.to_string();
        assert!(text.contains("[\"arm64\"]") && text.contains("ami.us-east-1.arm64"), "{text}");
    }

    #[test]
    fn prices_order_the_fitting_types_cheapest_first() {
        let fits = fitting(&catalogue(), &manifest(1_500, 6_000)).expect("fits");
        assert_eq!(names(&fits), ["m6i.large", "m7g.large", "m6i.xlarge", "m7g.xlarge"]);
        // Without prices: as sizing gave them, smallest first.
        assert_eq!(names(&by_price(fits.clone(), &BTreeMap::new())), names(&fits));
        // Graviton cheaper: it goes first; the unpriced type goes last.
        let prices = BTreeMap::from([
            ("m6i.large".to_string(), 0.096),
            ("m7g.large".to_string(), 0.0816),
            ("m7g.xlarge".to_string(), 0.1632),
        ]);
        assert_eq!(names(&by_price(fits.clone(), &prices)), ["m7g.large", "m6i.large", "m7g.xlarge", "m6i.xlarge"]);
        // Equal prices keep the size order.
        let equal = BTreeMap::from([("m7g.xlarge".to_string(), 0.1), ("m6i.xlarge".to_string(), 0.1)]);
        assert_eq!(names(&by_price(fits, &equal)), ["m6i.xlarge", "m7g.xlarge", "m6i.large", "m7g.large"]);
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
