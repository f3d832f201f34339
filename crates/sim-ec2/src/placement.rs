//! Whether and where an instance may launch: the account's On-Demand vCPU quota, which zones
//! offer each type, the AMIs a region knows, the default VPC, and how capacity shortages spread
//! to neighbouring sizes.
//!
//! These are the first errors a fresh real account gives (issue 14). Each check is a function
//! here, called from `World::run_instance_in` (and `create_security_group_in` for the VPC), so
//! the rules and their AWS sources sit in one place.

use aws_backend::port::{Architecture, Ec2Error, Operation, codes};
use backend_api::RegionLabel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalogue::{self, InstanceTypeSpec};
use crate::config::SimError;

/// The root snapshot size, GiB, of an AMI [`SimConfig::images`](crate::SimConfig::images) does
/// not list: 8 GiB, the size of Amazon Linux's root snapshot.
pub const DEFAULT_ROOT_SNAPSHOT_GIB: u32 = 8;

/// An AMI a region knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimImage {
    /// The region that holds it (AMIs are regional).
    pub region: RegionLabel,
    /// Its id, `ami-` and hex digits.
    pub image_id: String,
    /// The size of its root snapshot, GiB: a smaller root volume is refused.
    pub root_snapshot_gib: u32,
    /// Its architecture: RunInstances refuses an instance type of another one. x86_64 when a
    /// serialized configuration does not say.
    #[serde(default = "x86_64")]
    pub architecture: Architecture,
}

fn x86_64() -> Architecture {
    Architecture::X86_64
}

/// Refuses image lists RunInstances could never use.
pub(crate) fn validate_images(images: &[SimImage]) -> Result<(), SimError> {
    for image in images {
        if !well_formed_ami(&image.image_id) {
            return Err(SimError::Config(format!(
                "images: {:?} is not an AMI id: use ami- and 8 or 17 hex digits, e.g. ami-0123456789abcdef0",
                image.image_id
            )));
        }
        if image.root_snapshot_gib == 0 {
            return Err(SimError::Config(format!(
                "images: {} has a 0 GiB root snapshot: use at least 1",
                image.image_id
            )));
        }
    }
    Ok(())
}

/// What the placement rules need to know of the account, from [`SimConfig`](crate::SimConfig).
pub(crate) struct Account {
    /// The run's seed (offerings are hashed from it).
    pub seed: u64,
    /// Whether each region has a default VPC.
    pub default_vpc: bool,
    /// The AMIs regions know; empty: every well-formed id.
    pub images: Vec<SimImage>,
    /// AMIs published since the start (`SimEc2::publish_image`) and, with no `images`, the
    /// default public parameters' AMIs: known in their region whatever `images` says, and
    /// with a known architecture.
    pub published: Vec<SimImage>,
}

fn err(op: Operation, code: &str, message: impl Into<String>) -> Ec2Error {
    Ec2Error::new(op, code, message)
}

/// `ami-` followed by 8 (older) or 17 lowercase hex digits, as EC2 issues them.
pub(crate) fn well_formed_ami(id: &str) -> bool {
    id.strip_prefix("ami-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Account {
    /// The VPC a call without a VPC or subnet lands in: the default one, or `VPCIdNotSpecified`.
    ///
    /// Source: "Error codes for the Amazon EC2 API" (VPCIdNotSpecified: "You have no default VPC
    /// in which to carry out the operation. Specify a VPC or subnet ID or create a default
    /// VPC."); "CreateSecurityGroup" API reference (VpcId is required for a nondefault VPC).
    pub(crate) fn default_vpc(&self, op: Operation, region: &RegionLabel) -> Result<(), Ec2Error> {
        if self.default_vpc {
            return Ok(());
        }
        Err(err(op, codes::VPC_ID_NOT_SPECIFIED, format!("No default VPC for this user in {region}")))
    }

    /// The AMI's root snapshot size and architecture (`None`: any id goes, of no architecture
    /// in particular), or EC2's error for an id that is malformed or unknown in `region`.
    ///
    /// Source: "Error codes for the Amazon EC2 API" (InvalidAMIID.Malformed, InvalidAMIID.NotFound).
    pub(crate) fn image(
        &self,
        op: Operation,
        region: &RegionLabel,
        image_id: &str,
    ) -> Result<(u32, Option<Architecture>), Ec2Error> {
        if !well_formed_ami(image_id) {
            return Err(err(op, codes::AMI_MALFORMED, format!("Invalid id: \"{image_id}\" (expecting \"ami-...\")")));
        }
        if let Some(image) =
            self.images.iter().chain(&self.published).find(|i| i.region == *region && i.image_id == image_id)
        {
            return Ok((image.root_snapshot_gib, Some(image.architecture)));
        }
        if self.images.is_empty() {
            return Ok((DEFAULT_ROOT_SNAPSHOT_GIB, None));
        }
        Err(err(op, codes::AMI_NOT_FOUND, format!("The image id '[{image_id}]' does not exist")))
    }

    /// Whether the zone `az` (0 for `<region>a`) of `region` offers `instance_type`. The first
    /// zone offers every type; each other (type, zone) pair is missing with probability
    /// `gap_probability`, drawn from a hash of the seed and the pair, not the PRNG, so the
    /// answer never changes within a run and adding this took no draw from any other.
    pub(crate) fn offers(&self, region: &RegionLabel, instance_type: &str, az: u8, gap_probability: f64) -> bool {
        if az == 0 || gap_probability <= 0.0 {
            return true;
        }
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(b"offering");
        h.update(region.as_str().as_bytes());
        h.update([0, az]);
        h.update(instance_type.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let draw = u64::from_le_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        // The top 53 bits as a fraction in [0, 1).
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        unit >= gap_probability
    }
}

/// RunInstances' answer when the zone EC2 placed it in does not offer the type.
///
/// Source: "Troubleshoot Amazon EC2 instance launch issues" and "Error codes for the Amazon EC2
/// API" (Unsupported); the message follows the one EC2 gives.
pub(crate) fn unsupported(op: Operation, instance_type: &str, zone: &str, offering: &[String]) -> Ec2Error {
    err(
        op,
        codes::UNSUPPORTED,
        format!(
            "Your requested instance type ({instance_type}) is not supported in your requested Availability Zone \
             ({zone}). Please retry your request by not specifying an Availability Zone or choosing {}.",
            offering.join(", ")
        ),
    )
}

/// RunInstances' answer when the AMI's architecture is not the instance type's.
///
/// Source: "Error codes for the Amazon EC2 API" (InvalidParameterValue) and the message EC2
/// gives for RunInstances, as quoted in skypilot-org/skypilot#6315 ("An error occurred
/// (InvalidParameterValue) when calling the RunInstances operation: The architecture 'arm64' of
/// the specified instance type does not match the architecture 'x86_64' of the specified AMI")
/// and aws/eks-anywhere-build-tooling#2158.
pub(crate) fn architecture_mismatch(op: Operation, type_arch: Architecture, image_arch: Architecture) -> Ec2Error {
    err(
        op,
        codes::INVALID_PARAMETER_VALUE,
        format!(
            "The architecture '{type_arch}' of the specified instance type does not match the architecture \
             '{image_arch}' of the specified AMI. Specify an instance type and an AMI that have matching \
             architectures, and try again."
        ),
    )
}

/// RunInstances' answer when the launch would take the account past its vCPU quota.
///
/// Source: "Amazon EC2 On-Demand Instance quotas", docs.aws.amazon.com/AWSEC2/latest/UserGuide/
/// ec2-on-demand-instances.html#ec2-on-demand-instances-limits (quotas in vCPUs per instance
/// class and region, counting running instances); "Error codes for the Amazon EC2 API"
/// (VcpuLimitExceeded).
pub(crate) fn vcpu_limit_exceeded(op: Operation, quota: u32) -> Ec2Error {
    err(
        op,
        codes::VCPU_LIMIT_EXCEEDED,
        format!(
            "You have requested more vCPU capacity than your current vCPU limit of {quota} allows for the instance \
             bucket that the specified instance type belongs to. Please visit \
             http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."
        ),
    )
}

/// RunInstances' answer for a root volume smaller than the AMI's root snapshot.
///
/// Source: "Error codes for the Amazon EC2 API" (InvalidBlockDeviceMapping); the message
/// follows the one EC2 gives ("Volume of size 4GB is smaller than snapshot ..., expect size >= 8GB").
pub(crate) fn root_volume_too_small(op: Operation, image_id: &str, volume_gib: u32, snapshot_gib: u32) -> Ec2Error {
    err(
        op,
        codes::INVALID_BLOCK_DEVICE_MAPPING,
        format!(
            "Volume of size {volume_gib}GB is smaller than snapshot of image '{image_id}', expect size >= {snapshot_gib}GB"
        ),
    )
}

/// The standard On-Demand classes: instance types whose family starts with A, C, D, H, I, M, R,
/// T or Z share one vCPU quota. Every family of the catalogue is one of them.
pub(crate) fn is_standard_class(spec: &InstanceTypeSpec) -> bool {
    spec.name.starts_with(['a', 'c', 'd', 'h', 'i', 'm', 'r', 't', 'z'])
}

/// The sizes a shortage that starts in `spec`'s pool drains in the same zone: the type itself,
/// with `neighbours` the next smaller and next larger size of its family too, with `family`
/// every size of the family. Sizes in the catalogue's order (smallest first).
pub(crate) fn shortage_sizes(spec: &'static InstanceTypeSpec, neighbours: bool, family: bool) -> Vec<&'static str> {
    let sizes: Vec<&'static InstanceTypeSpec> =
        catalogue::CATALOGUE.iter().filter(|s| s.family() == spec.family()).collect();
    if family {
        return sizes.iter().map(|s| s.name).collect();
    }
    let Some(at) = sizes.iter().position(|s| s.name == spec.name) else { return vec![spec.name] };
    if !neighbours {
        return vec![spec.name];
    }
    let from = at.saturating_sub(1);
    let to = (at + 1).min(sizes.len() - 1);
    sizes[from..=to].iter().map(|s| s.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_ids_are_ami_and_8_or_17_hex_digits() {
        assert!(well_formed_ami("ami-0123456789abcdef0"));
        assert!(well_formed_ami("ami-1e749f67"));
        assert!(!well_formed_ami("ami-xyz"));
        assert!(!well_formed_ami("ami-0123456789ABCDEF0"));
        assert!(!well_formed_ami("img-0123456789abcdef0"));
        assert!(!well_formed_ami("ami-123"));
    }

    #[test]
    fn shortages_spread_to_neighbours_or_the_family() {
        let large = catalogue::lookup("m6i.large").expect("in catalogue");
        assert_eq!(shortage_sizes(large, false, false), ["m6i.large"]);
        assert_eq!(shortage_sizes(large, true, false), ["m6i.large", "m6i.xlarge"]);
        let mid = catalogue::lookup("m6i.2xlarge").expect("in catalogue");
        assert_eq!(shortage_sizes(mid, true, false), ["m6i.xlarge", "m6i.2xlarge", "m6i.4xlarge"]);
        assert_eq!(shortage_sizes(mid, false, true).len(), 10);
        assert!(catalogue::CATALOGUE.iter().all(is_standard_class));
    }
}
