//! EC2's answers that a prompt retry of the same call does not fix: the account's vCPU quota,
//! and configuration the operator must change (the AMI, the root volume size, the default VPC).
//! Each becomes a [`BackendError`] that names the value, says what to do, and says whether a
//! later retry may succeed. Anything else goes through [`provider`] unchanged.

use backend_api::{BackendError, RegionLabel};

use crate::errors::provider;
use crate::port::{Ec2Error, RunInstancesRequest, codes};

/// The error for a RunInstances that failed with `err`.
///
/// `VcpuLimitExceeded` is retryable: the quota frees up as the account's other instances end,
/// or when AWS grants an increase ("Amazon EC2 On-Demand Instance quotas", EC2 User Guide).
/// The AMI, block device and VPC errors are not: the same request fails until the operator
/// changes the configuration.
pub(crate) fn launch(region: &RegionLabel, request: &RunInstancesRequest, err: Ec2Error) -> BackendError {
    let (message, retryable) = match err.code.as_str() {
        codes::VCPU_LIMIT_EXCEEDED => (
            format!(
                "{} needs vCPUs beyond the account's On-Demand vCPU quota in {region} (Service Quotas: \"Running \
                 On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances\", L-1216C47A): retry once other instances \
                 have ended, or request a quota increase; EC2 said: {}",
                request.instance_type, err.message
            ),
            true,
        ),
        codes::AMI_NOT_FOUND => (
            format!(
                "AMI {} does not exist in {region} (or this account may not use it): set `ami.{region}` to an AMI \
                 of that region; EC2 said: {}",
                request.image_id, err.message
            ),
            false,
        ),
        codes::AMI_MALFORMED => (
            format!(
                "{:?} configured as the AMI for {region} is not an AMI id: set `ami.{region}` to ami- followed by \
                 its hex digits; EC2 said: {}",
                request.image_id, err.message
            ),
            false,
        ),
        codes::INVALID_BLOCK_DEVICE_MAPPING => (
            format!(
                "the root volume of {} GiB is refused for AMI {} in {region} (smaller than the AMI's root snapshot?): \
                 raise `min_root_volume_gib` to at least the snapshot's size; EC2 said: {}",
                request.root_volume_gib, request.image_id, err.message
            ),
            false,
        ),
        codes::VPC_ID_NOT_SPECIFIED => return no_default_vpc(region, err),
        _ => return provider(err),
    };
    BackendError::Provider { operation: err.operation.name().into(), code: err.code, message, retryable }
}

/// The error for a CreateSecurityGroup that failed with `err`.
pub(crate) fn security_group(region: &RegionLabel, err: Ec2Error) -> BackendError {
    if err.is(codes::VPC_ID_NOT_SPECIFIED) {
        return no_default_vpc(region, err);
    }
    provider(err)
}

/// A grant the known vCPU quota cannot hold, refused before anything is created: retryable,
/// since the headroom returns as the bridge's own instances end (or the quota is raised).
pub(crate) fn no_vcpu_headroom(region: &RegionLabel, headroom: u32, needed: u32) -> BackendError {
    BackendError::Provider {
        operation: "RunInstances".into(),
        code: codes::VCPU_LIMIT_EXCEEDED.into(),
        message: format!(
            "the account's On-Demand vCPU quota in {region} (Service Quotas L-1216C47A, as configured in \
             `vcpu_quota.{region}` or learnt from EC2's VcpuLimitExceeded) leaves {headroom} vCPUs and the \
             smallest fitting type needs {needed}: nothing was created; retry once running grants have ended, \
             or request a quota increase"
        ),
        retryable: true,
    }
}

/// The bridge launches into the region's default VPC (it names no VPC or subnet): without one,
/// nothing can be created there until the operator makes one.
fn no_default_vpc(region: &RegionLabel, err: Ec2Error) -> BackendError {
    BackendError::Provider {
        operation: err.operation.name().into(),
        message: format!(
            "the account has no default VPC in {region}, and the bridge launches into it: create one \
             (`aws ec2 create-default-vpc --region {region}`) or remove {region} from `regions`; EC2 said: {}",
            err.message
        ),
        code: err.code,
        retryable: false,
    }
}
