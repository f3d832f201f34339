//! EC2's error codes (and CloudWatch's and SSM's) that the backend and the simulator act on.

/// The request was throttled.
pub const REQUEST_LIMIT_EXCEEDED: &str = "RequestLimitExceeded";
/// An internal error at AWS; retry.
pub const INTERNAL_ERROR: &str = "InternalError";
/// The service is unavailable; retry.
pub const UNAVAILABLE: &str = "Unavailable";
/// No capacity for the instance type in the availability zone.
pub const INSUFFICIENT_INSTANCE_CAPACITY: &str = "InsufficientInstanceCapacity";
/// A ClientToken was reused with different parameters.
pub const IDEMPOTENT_PARAMETER_MISMATCH: &str = "IdempotentParameterMismatch";
/// A ClientToken was reused after its instance terminated (since January 2025; before, EC2
/// answered with the terminated instance).
pub const IDEMPOTENT_INSTANCE_TERMINATED: &str = "IdempotentInstanceTerminated";
/// The instance id is unknown (or not yet visible).
pub const INSTANCE_NOT_FOUND: &str = "InvalidInstanceID.NotFound";
/// The security group is unknown (or not yet visible).
pub const GROUP_NOT_FOUND: &str = "InvalidGroup.NotFound";
/// A security group with that name exists.
pub const GROUP_DUPLICATE: &str = "InvalidGroup.Duplicate";
/// A key pair with that name exists.
pub const KEY_PAIR_DUPLICATE: &str = "InvalidKeyPair.Duplicate";
/// The key pair is unknown.
pub const KEY_PAIR_NOT_FOUND: &str = "InvalidKeyPair.NotFound";
/// The security group is still used by an instance.
pub const DEPENDENCY_VIOLATION: &str = "DependencyViolation";
/// A parameter is invalid.
pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
/// The ingress rule exists already.
pub const PERMISSION_DUPLICATE: &str = "InvalidPermission.Duplicate";
/// CloudWatch's answer to a throttled request (its own quota, not EC2's buckets).
pub const THROTTLING: &str = "Throttling";
/// The launch would take the account past its On-Demand vCPU quota for the instance's class
/// in the region (running and pending instances count).
pub const VCPU_LIMIT_EXCEEDED: &str = "VcpuLimitExceeded";
/// The instance type is not offered in the availability zone EC2 placed the request in
/// (DescribeInstanceTypeOfferings tells which zones offer it).
pub const UNSUPPORTED: &str = "Unsupported";
/// Not an EC2 code: the call was not sent, because this bridge may no longer act for its
/// ledger (its lease ran out or another bridge took it; see `standby`).
pub const LEASE_LOST: &str = "Local.LeaseLost";
/// The AMI does not exist in the region (or the account may not use it).
pub const AMI_NOT_FOUND: &str = "InvalidAMIID.NotFound";
/// The AMI id is not `ami-` followed by hexadecimal digits.
pub const AMI_MALFORMED: &str = "InvalidAMIID.Malformed";
/// A block device mapping is wrong, e.g. a root volume smaller than the AMI's snapshot.
pub const INVALID_BLOCK_DEVICE_MAPPING: &str = "InvalidBlockDeviceMapping";
/// The account has no default VPC in the region and the call named no VPC or subnet.
pub const VPC_ID_NOT_SPECIFIED: &str = "VPCIdNotSpecified";
/// The subnet id does not exist in the region.
pub const SUBNET_NOT_FOUND: &str = "InvalidSubnetID.NotFound";
/// The VPC id does not exist in the region.
pub const VPC_NOT_FOUND: &str = "InvalidVpcID.NotFound";
/// A parameter conflicts with another, e.g. a security group of another VPC than the subnet.
pub const INVALID_PARAMETER: &str = "InvalidParameter";
/// A NextToken that is not one this query gave out (or has expired).
pub const INVALID_PAGINATION_TOKEN: &str = "InvalidPaginationToken";
/// Parameters that may not be given together, e.g. MaxResults with InstanceIds.
pub const INVALID_PARAMETER_COMBINATION: &str = "InvalidParameterCombination";
/// SSM: no parameter of that name exists in the region (or the caller may not see it).
/// Source: "GetParameter", AWS Systems Manager API Reference, Errors.
pub const PARAMETER_NOT_FOUND: &str = "ParameterNotFound";
/// SSM's answer to a throttled request (Parameter Store's own throughput quota, not EC2's
/// buckets). Source: "GetParameter", AWS Systems Manager API Reference ("If you experience
/// ThrottlingException: Rate exceeded errors, enable higher throughput").
pub const THROTTLING_EXCEPTION: &str = "ThrottlingException";
/// SSM's internal error (HTTP 500); retry. Source: "GetParameter", AWS Systems Manager API
/// Reference, Errors.
pub const INTERNAL_SERVER_ERROR: &str = "InternalServerError";
