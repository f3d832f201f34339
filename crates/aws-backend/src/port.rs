//! The EC2 port: the slice of EC2 (and CloudWatch) the backend uses, in our own types.
//!
//! [`Ec2Port`] is implemented twice: over the AWS SDK (`crate::sdk`, behind the `sdk` feature)
//! and in memory by the `sim-ec2` crate. The provisioning logic in this crate is written only
//! against this trait, so production and simulation run the same code. Nothing here depends on
//! the AWS SDK.

use std::collections::BTreeMap;

use async_trait::async_trait;
use backend_api::RegionLabel;
use serde::{Deserialize, Serialize};

/// Resource tags, ordered so that output is deterministic.
pub type Tags = BTreeMap<String, String>;

/// EC2's error codes that the backend and the simulator act on.
pub mod codes {
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
}

/// The operations of the port, for throttling, audit and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// ImportKeyPair.
    ImportKeyPair,
    /// DescribeKeyPairs.
    DescribeKeyPairs,
    /// DeleteKeyPair.
    DeleteKeyPair,
    /// CreateSecurityGroup.
    CreateSecurityGroup,
    /// AuthorizeSecurityGroupIngress.
    AuthorizeSecurityGroupIngress,
    /// DescribeSecurityGroups.
    DescribeSecurityGroups,
    /// DeleteSecurityGroup.
    DeleteSecurityGroup,
    /// RunInstances.
    RunInstances,
    /// DescribeInstances.
    DescribeInstances,
    /// TerminateInstances.
    TerminateInstances,
    /// DescribeInstanceTypes.
    DescribeInstanceTypes,
    /// CreateTags.
    CreateTags,
    /// CloudWatch GetMetricData for NetworkIn and NetworkOut.
    GetNetworkUsage,
    /// GetConsoleOutput.
    GetConsoleOutput,
    /// DescribeInstanceTypeOfferings with location type `availability-zone`.
    DescribeInstanceTypeOfferings,
    /// DescribeSubnets.
    DescribeSubnets,
    /// SSM's GetParameter: an AMI alias (a public parameter such as
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`) read as an id.
    GetParameter,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 17] = [
        Operation::ImportKeyPair,
        Operation::DescribeKeyPairs,
        Operation::DeleteKeyPair,
        Operation::CreateSecurityGroup,
        Operation::AuthorizeSecurityGroupIngress,
        Operation::DescribeSecurityGroups,
        Operation::DeleteSecurityGroup,
        Operation::RunInstances,
        Operation::DescribeInstances,
        Operation::TerminateInstances,
        Operation::DescribeInstanceTypes,
        Operation::CreateTags,
        Operation::GetNetworkUsage,
        Operation::GetConsoleOutput,
        Operation::DescribeInstanceTypeOfferings,
        Operation::DescribeSubnets,
        Operation::GetParameter,
    ];

    /// The API name, e.g. `"RunInstances"`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ImportKeyPair => "ImportKeyPair",
            Operation::DescribeKeyPairs => "DescribeKeyPairs",
            Operation::DeleteKeyPair => "DeleteKeyPair",
            Operation::CreateSecurityGroup => "CreateSecurityGroup",
            Operation::AuthorizeSecurityGroupIngress => "AuthorizeSecurityGroupIngress",
            Operation::DescribeSecurityGroups => "DescribeSecurityGroups",
            Operation::DeleteSecurityGroup => "DeleteSecurityGroup",
            Operation::RunInstances => "RunInstances",
            Operation::DescribeInstances => "DescribeInstances",
            Operation::TerminateInstances => "TerminateInstances",
            Operation::DescribeInstanceTypes => "DescribeInstanceTypes",
            Operation::CreateTags => "CreateTags",
            Operation::GetNetworkUsage => "GetNetworkUsage",
            Operation::GetConsoleOutput => "GetConsoleOutput",
            Operation::DescribeInstanceTypeOfferings => "DescribeInstanceTypeOfferings",
            Operation::DescribeSubnets => "DescribeSubnets",
            Operation::GetParameter => "GetParameter",
        }
    }

    /// The category that sizes the call's request-rate token bucket. Each action has its own
    /// bucket of its category's size and refill (per account and region): being throttled on
    /// one action does not throttle another of the same category. GetNetworkUsage draws from
    /// CloudWatch's own quota instead, and GetParameter from Parameter Store's.
    ///
    /// Source: "Request throttling for the Amazon EC2 API", EC2 developer guide
    /// (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html; shared/EC2-FACTS.md,
    /// Throttling).
    pub fn throttle_class(self) -> ThrottleClass {
        match self {
            Operation::DescribeKeyPairs
            | Operation::DescribeSecurityGroups
            | Operation::DescribeInstances
            | Operation::DescribeInstanceTypes
            | Operation::GetConsoleOutput
            | Operation::DescribeInstanceTypeOfferings
            | Operation::DescribeSubnets => ThrottleClass::NonMutating,
            // ImportKeyPair is in EC2's CreateKeyPair-like "resource-intensive" set together
            // with AuthorizeSecurityGroupIngress.
            Operation::ImportKeyPair | Operation::AuthorizeSecurityGroupIngress => ThrottleClass::ResourceIntensive,
            Operation::RunInstances => ThrottleClass::RunInstances,
            Operation::TerminateInstances => ThrottleClass::TerminateInstances,
            Operation::CreateTags => ThrottleClass::CreateTags,
            Operation::DeleteKeyPair | Operation::CreateSecurityGroup | Operation::DeleteSecurityGroup => {
                ThrottleClass::Mutating
            }
            // CloudWatch's quota, not EC2's buckets.
            Operation::GetNetworkUsage => ThrottleClass::GetMetricData,
            // Parameter Store's quota, not EC2's buckets.
            Operation::GetParameter => ThrottleClass::GetParameter,
        }
    }
}

impl Operation {
    /// The bounds EC2 puts on `MaxResults` for the paginated Describe calls, `(min, max)`;
    /// `None` for calls without pages (DescribeKeyPairs answers every match at once).
    ///
    /// Source: the EC2 API Reference's pages for DescribeInstances, DescribeSecurityGroups and
    /// DescribeInstanceTypeOfferings (5 to 1,000) and DescribeInstanceTypes (5 to 100).
    pub fn max_results_limit(self) -> Option<(u32, u32)> {
        match self {
            Operation::DescribeInstances
            | Operation::DescribeSecurityGroups
            | Operation::DescribeInstanceTypeOfferings
            | Operation::DescribeSubnets => Some((5, 1_000)),
            Operation::DescribeInstanceTypes => Some((5, 100)),
            _ => None,
        }
    }

    /// The operation's place in [`Operation::ALL`], for tables of one entry per action.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The categories that size EC2's request token buckets (every action has a bucket of its own,
/// per account and region, with its category's capacity and refill), and CloudWatch's
/// GetMetricData quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ThrottleClass {
    /// Describe* calls: 100 tokens, refilling 20/s.
    NonMutating,
    /// Create/Delete/Modify calls: 50 tokens, refilling 5/s.
    Mutating,
    /// ImportKeyPair/CreateKeyPair, AuthorizeSecurityGroupIngress: 50 tokens, refilling 5/s.
    ResourceIntensive,
    /// RunInstances: 5 tokens, refilling 2/s.
    RunInstances,
    /// TerminateInstances: 100 tokens, refilling 5/s.
    TerminateInstances,
    /// CreateTags: 100 tokens, refilling 10/s.
    CreateTags,
    /// CloudWatch's GetMetricData: 50 transactions per second per region, answered `Throttling`
    /// beyond ("CloudWatch service quotas", docs.aws.amazon.com/AmazonCloudWatch/latest/
    /// monitoring/cloudwatch_limits.html: "For operations that do not include Metrics Insights
    /// queries, the quota is 50 TPS per Region"). Modelled as 50 tokens refilling 50/s. Not one
    /// of EC2's buckets, so not in [`ThrottleClass::ALL`].
    GetMetricData,
    /// SSM Parameter Store's standard throughput: 40 transactions per second per account and
    /// region, shared by GetParameter, GetParameters and GetParametersByPath, answered
    /// `ThrottlingException` beyond ("AWS Systems Manager endpoints and quotas",
    /// docs.aws.amazon.com/general/latest/gr/ssm.html, Parameter Store "Max throughput
    /// (transactions per second)": "Default throughput: 40"). Modelled as 40 tokens refilling
    /// 40/s. Not one of EC2's buckets, so not in [`ThrottleClass::ALL`].
    GetParameter,
}

impl ThrottleClass {
    /// Every one of EC2's classes (CloudWatch's [`ThrottleClass::GetMetricData`] is apart).
    pub const ALL: [ThrottleClass; 6] = [
        ThrottleClass::NonMutating,
        ThrottleClass::Mutating,
        ThrottleClass::ResourceIntensive,
        ThrottleClass::RunInstances,
        ThrottleClass::TerminateInstances,
        ThrottleClass::CreateTags,
    ];

    /// The bucket's size in tokens.
    pub fn capacity(self) -> u32 {
        match self {
            ThrottleClass::NonMutating => 100,
            ThrottleClass::Mutating => 50,
            ThrottleClass::ResourceIntensive => 50,
            ThrottleClass::RunInstances => 5,
            ThrottleClass::TerminateInstances => 100,
            ThrottleClass::GetMetricData => 50,
            ThrottleClass::CreateTags => 100,
            ThrottleClass::GetParameter => 40,
        }
    }

    /// Tokens added per second.
    pub fn refill_per_s(self) -> u32 {
        match self {
            ThrottleClass::NonMutating => 20,
            ThrottleClass::Mutating => 5,
            ThrottleClass::ResourceIntensive => 5,
            ThrottleClass::RunInstances => 2,
            ThrottleClass::TerminateInstances => 5,
            ThrottleClass::GetMetricData => 50,
            ThrottleClass::CreateTags => 10,
            ThrottleClass::GetParameter => 40,
        }
    }
}

/// RunInstances' second bucket, counted in instances rather than requests: 1,000 instances,
/// refilling 2 per second.
pub const RUN_INSTANCES_RESOURCE_CAPACITY: u32 = 1_000;
/// Refill of RunInstances' instance bucket, instances per second.
pub const RUN_INSTANCES_RESOURCE_REFILL_PER_S: u32 = 2;
/// TerminateInstances' second bucket, counted in instances terminated rather than requests:
/// 1,000 instances, refilling 20 per second ("Request throttling for the Amazon EC2 API",
/// resource token buckets).
pub const TERMINATE_INSTANCES_RESOURCE_CAPACITY: u32 = 1_000;
/// Refill of TerminateInstances' instance bucket, instances per second.
pub const TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S: u32 = 20;

/// An error from EC2, with EC2's own code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed with {code}: {message}")]
pub struct Ec2Error {
    /// The operation that failed.
    pub operation: Operation,
    /// EC2's error code, e.g. `InvalidGroup.NotFound` (see [`codes`]); `Transport` for
    /// connection failures and `Http<status>` when only a status is known.
    pub code: String,
    /// EC2's message.
    pub message: String,
}

impl Ec2Error {
    /// An error with `code` for `operation`.
    pub fn new(operation: Operation, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { operation, code: code.into(), message: message.into() }
    }

    /// True for throttling: EC2's `RequestLimitExceeded`, CloudWatch's `Throttling`, and SSM's
    /// `ThrottlingException` (also the name AWS's knowledge center gives CloudWatch's answer).
    pub fn is_throttle(&self) -> bool {
        matches!(self.code.as_str(), codes::REQUEST_LIMIT_EXCEEDED | codes::THROTTLING | codes::THROTTLING_EXCEPTION)
    }

    /// True when the same call may succeed if retried: throttling, internal errors, outages,
    /// transport errors and HTTP 5xx.
    pub fn is_transient(&self) -> bool {
        self.is_throttle()
            || matches!(
                self.code.as_str(),
                codes::INTERNAL_ERROR
                    | codes::UNAVAILABLE
                    | codes::INTERNAL_SERVER_ERROR
                    | "ServiceUnavailable"
                    | "InternalFailure"
                    | "Transport"
            )
            || self.code.starts_with("Http5")
    }

    /// True when EC2 says the resource does not exist (which under eventual consistency may
    /// also mean "not visible yet").
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }

    /// True when the code is `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

/// An EC2 Describe filter, as EC2 spells them: `tag:KEY`, `tag-key`, `instance-state-name`,
/// `key-name`, `group-name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The filter name.
    pub name: String,
    /// Any of these values matches.
    pub values: Vec<String>,
}

impl Filter {
    /// `tag:KEY` equal to one of `values`.
    pub fn tag(key: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { name: format!("tag:{key}"), values: values.into_iter().map(Into::into).collect() }
    }

    /// Resources carrying the tag `key`, whatever its value.
    pub fn tag_key(key: &str) -> Self {
        Self { name: "tag-key".into(), values: vec![key.into()] }
    }

    /// Instances in any of `states`.
    pub fn instance_states(states: &[InstanceState]) -> Self {
        Self { name: "instance-state-name".into(), values: states.iter().map(|s| s.name().to_string()).collect() }
    }
}

/// An instance's state, as EC2 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// `pending`
    Pending,
    /// `running`
    Running,
    /// `shutting-down`
    ShuttingDown,
    /// `terminated`
    Terminated,
    /// `stopping`
    Stopping,
    /// `stopped`
    Stopped,
}

impl InstanceState {
    /// EC2's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    /// Parses EC2's name for a state.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            _ => return None,
        })
    }

    /// True once the instance has stopped doing work for good or for now: every state but
    /// `pending` and `running`.
    pub fn has_exited(self) -> bool {
        !matches!(self, InstanceState::Pending | InstanceState::Running)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What EC2 does when the guest powers off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShutdownBehavior {
    /// Power-off stops the instance.
    Stop,
    /// Power-off terminates the instance.
    Terminate,
}

/// ImportKeyPair's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportKeyPairRequest {
    /// The key pair's name, unique per region.
    pub key_name: String,
    /// The public key in OpenSSH format (`ssh-ed25519 AAAA...`).
    pub public_key_openssh: String,
    /// Tags applied at creation.
    pub tags: Tags,
}

/// A key pair as Describe returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairInfo {
    /// The key pair's name.
    pub key_name: String,
    /// EC2's id, `key-...`.
    pub key_pair_id: String,
    /// Its tags.
    pub tags: Tags,
    /// When it was created, unix ms (0 where EC2 did not say).
    pub create_time_unix_ms: u64,
}

/// CreateSecurityGroup's input (in the default VPC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSecurityGroupRequest {
    /// The group's name, unique per VPC.
    pub group_name: String,
    /// The VPC to create it in; `None`: the region's default VPC (EC2 answers
    /// `VPCIdNotSpecified` when there is none).
    pub vpc_id: Option<String>,
    /// A description (EC2 requires one).
    pub description: String,
    /// Tags applied at creation.
    pub tags: Tags,
}

/// AuthorizeSecurityGroupIngress's input: TCP `port` from each of `cidrs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeIngressRequest {
    /// The group.
    pub group_id: String,
    /// The TCP port.
    pub port: u16,
    /// CIDRs allowed in, IPv4 (`203.0.113.0/24`) and IPv6 (`2001:db8::/32`) mixed; an entry
    /// holding a `:` is IPv6. EC2 takes the two families in separate lists (`IpRanges` with
    /// `CidrIp`, `Ipv6Ranges` with `CidrIpv6`) and calls an IPv6 range sent as `CidrIp`
    /// malformed (aws/aws-cli#2428), so an implementation splits them by family.
    pub cidrs: Vec<String>,
}

/// A security group as Describe returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupInfo {
    /// EC2's id, `sg-...`.
    pub group_id: String,
    /// The group's name.
    pub group_name: String,
    /// Its tags.
    pub tags: Tags,
}

/// RunInstances' input for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInstancesRequest {
    /// The AMI.
    pub image_id: String,
    /// The instance type, e.g. `m6i.large`.
    pub instance_type: String,
    /// The key pair to install for the login user.
    pub key_name: String,
    /// Security groups to attach.
    pub security_group_ids: Vec<String>,
    /// The user data, base64-encoded (at most 16 KiB decoded).
    pub user_data_base64: String,
    /// Idempotency token: at most 64 ASCII characters.
    pub client_token: String,
    /// Root volume size in GiB; the volume is gp3, encrypted and deleted on termination.
    pub root_volume_gib: u32,
    /// The AMI's root device name, e.g. `/dev/xvda`.
    pub root_device_name: String,
    /// Require IMDSv2 (session tokens).
    pub imdsv2_required: bool,
    /// How many network hops an IMDSv2 token response may travel: 1 keeps it on the instance
    /// itself, out of reach of containers behind a bridge network.
    pub imds_hop_limit: u8,
    /// What a power-off from inside does.
    pub shutdown_behavior: ShutdownBehavior,
    /// Tags applied to the instance at launch.
    pub instance_tags: Tags,
    /// Tags applied to its volumes at launch.
    pub volume_tags: Tags,
    /// The subnet to launch into (its VPC and zone); `None`: the default VPC.
    pub subnet_id: Option<String>,
    /// The availability zone to place it in (`Placement.AvailabilityZone`) when no subnet is
    /// named; `None`: EC2 picks one.
    pub availability_zone: Option<String>,
}

/// An instance as Describe returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// EC2's id, `i-...`.
    pub instance_id: String,
    /// Its type.
    pub instance_type: String,
    /// Its state.
    pub state: InstanceState,
    /// Why it is in that state, as EC2's StateReason code (e.g. `Client.InstanceInitiatedShutdown`).
    pub state_reason_code: Option<String>,
    /// The public DNS name (empty until assigned).
    pub public_dns_name: String,
    /// When it was launched, unix ms.
    pub launch_time_unix_ms: u64,
    /// Its tags.
    pub tags: Tags,
    /// The idempotency token it was launched with.
    pub client_token: String,
    /// The availability zone it runs in (`Placement.AvailabilityZone`).
    pub availability_zone: String,
}

/// The change TerminateInstances made to one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStateChange {
    /// The instance.
    pub instance_id: String,
    /// Its state before the call.
    pub previous_state: InstanceState,
    /// Its state after the call.
    pub current_state: InstanceState,
}

/// An instance type's size and architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTypeInfo {
    /// The type's name, e.g. `m6i.large`.
    pub instance_type: String,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The architecture its AMI must have.
    pub architecture: Architecture,
}

/// A processor architecture, as EC2 names it in DescribeInstanceTypes'
/// `ProcessorInfo.SupportedArchitectures` and DescribeImages' `Architecture`: the AMI's must
/// match the instance type's, or RunInstances refuses the launch (`InvalidParameterValue`).
///
/// Only the two Linux architectures the backend launches: `i386` (which x86_64 types also
/// list) is never chosen, and the Mac types' `x86_64_mac` and `arm64_mac` need dedicated hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Architecture {
    /// `x86_64`: Intel and AMD types (m6i, c6i, r6i, t3, ...).
    X86_64,
    /// `arm64`: AWS Graviton types (m7g, c7g, r7g, ...).
    Arm64,
}

impl Architecture {
    /// Both, in order.
    pub const ALL: [Architecture; 2] = [Architecture::X86_64, Architecture::Arm64];

    /// EC2's name: `x86_64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The architecture EC2 names `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The period of EC2's basic monitoring, the only one the backend's instances have (it never
/// asks RunInstances for detailed monitoring): CloudWatch holds one NetworkIn and one
/// NetworkOut datapoint per 5 minutes, each the bytes of its period, stamped with the
/// period's start ("Enable or turn off detailed monitoring for your instances", Amazon EC2
/// User Guide: basic monitoring "Data is available automatically in 5-minute periods").
pub const METRIC_PERIOD_MS: u64 = 300_000;

/// The window to ask [`Ec2Port::network_usage`] for so that every period the instance moved
/// bytes in during `[start_unix_ms, end_unix_ms)` is counted whole: widened to whole periods of
/// [`METRIC_PERIOD_MS`], and never empty. CloudWatch counts a datapoint by its timestamp, its
/// period's start, so a window starting mid-period would miss that period's bytes; the periods
/// hold only this instance's bytes, so widening adds nothing that is not its own.
pub fn metric_window(start_unix_ms: u64, end_unix_ms: u64) -> (u64, u64) {
    let start = start_unix_ms - start_unix_ms % METRIC_PERIOD_MS;
    let end = end_unix_ms.div_ceil(METRIC_PERIOD_MS).saturating_mul(METRIC_PERIOD_MS).max(start + METRIC_PERIOD_MS);
    (start, end)
}

/// One (instance type, availability zone) pair EC2 offers, as DescribeInstanceTypeOfferings
/// with location type `availability-zone` lists them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceTypeOffering {
    /// The type's name, e.g. `m6i.large`.
    pub instance_type: String,
    /// The zone that offers it, e.g. `us-east-1a`.
    pub availability_zone: String,
}

/// A subnet, as DescribeSubnets lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// EC2's id, `subnet-...`.
    pub subnet_id: String,
    /// The VPC it belongs to.
    pub vpc_id: String,
    /// Its availability zone, e.g. `us-east-1a`.
    pub availability_zone: String,
    /// Whether it is its zone's default subnet (of the default VPC).
    pub default_for_az: bool,
    /// Its tags.
    pub tags: Tags,
}

/// Network bytes of one instance over a window, as CloudWatch's NetworkIn and NetworkOut sum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkUsage {
    /// The instance.
    pub instance_id: String,
    /// Bytes received in the window.
    pub bytes_in: u64,
    /// Bytes sent in the window.
    pub bytes_out: u64,
}

/// Which page of a paginated Describe call to ask for: `MaxResults` and `NextToken`.
///
/// EC2 refuses `MaxResults` together with a list of ids (`InvalidParameterCombination`), so a
/// lookup by ids asks [`PageRequest::unpaged`]. See [`Operation::max_results_limit`] for the
/// bounds of `MaxResults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// At most this many items in the page; `None`: EC2 answers every match at once.
    pub max_results: Option<u32>,
    /// The previous page's token; `None` for the first page.
    pub next_token: Option<String>,
}

impl PageRequest {
    /// The first page, of at most `max_results` items.
    pub fn first(max_results: u32) -> Self {
        Self { max_results: Some(max_results), next_token: None }
    }

    /// No `MaxResults`: the whole answer in one page (lookups by id).
    pub fn unpaged() -> Self {
        Self::default()
    }

    /// The first page of a listing of `op`: as large as EC2 allows when listing by filters,
    /// unpaged when `by_ids` (EC2 refuses `MaxResults` with ids).
    pub fn listing(op: Operation, by_ids: bool) -> Self {
        match op.max_results_limit() {
            Some((_, max)) if !by_ids => Self::first(max),
            _ => Self::unpaged(),
        }
    }
}

/// One page of a paginated Describe call.
///
/// EC2 may answer fewer than `MaxResults` items, even none, while more remain: only a missing
/// `next_token` ends the listing (EC2 API Reference, "Pagination",
/// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination>;
/// EC2 Developer Guide, "Pagination in the Amazon EC2 API",
/// <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-pagination.html>).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// The token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

impl<T> Page<T> {
    /// A last page holding `items`.
    pub fn last(items: Vec<T>) -> Self {
        Self { items, next_token: None }
    }
}

/// Pages of a listing followed to the end, unpaced: `call` is asked for each page in turn.
///
/// For tests and tools. The backend follows pages through `Pacer::pages`, which paces and
/// retries each page as the call it is.
pub async fn all_pages<T, F, Fut>(first: PageRequest, mut call: F) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, Ec2Error>>,
{
    let mut request = first;
    let mut items = Vec::new();
    loop {
        let page = call(request.clone()).await?;
        items.extend(page.items);
        match page.next_token {
            Some(token) => request.next_token = Some(token),
            None => return Ok(items),
        }
    }
}

/// The EC2 surface the backend uses. Every call names its region.
///
/// Implementations return EC2's real error codes in [`Ec2Error`]; retries and backoff are the
/// caller's business, not the port's.
#[async_trait]
pub trait Ec2Port: Send + Sync + 'static {
    /// ImportKeyPair.
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error>;
    /// DescribeKeyPairs with filters (empty: all).
    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error>;
    /// DeleteKeyPair by name; a missing name succeeds, as in EC2.
    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error>;
    /// CreateSecurityGroup; returns the group id.
    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error>;
    /// AuthorizeSecurityGroupIngress.
    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error>;
    /// One page of DescribeSecurityGroups by ids (empty: any) and filters.
    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error>;
    /// DeleteSecurityGroup by id.
    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error>;
    /// RunInstances for exactly one instance.
    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error>;
    /// One page of DescribeInstances by ids (empty: any) and filters. An id that is unknown (or
    /// not yet visible) fails the whole call with `InvalidInstanceID.NotFound`, as EC2 does.
    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error>;
    /// TerminateInstances.
    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error>;
    /// One page of DescribeInstanceTypes within the given families (e.g. `m6i`); empty: all.
    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error>;
    /// CreateTags.
    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error>;
    /// Network bytes per instance: CloudWatch's GetMetricData for NetworkIn and NetworkOut (Sum)
    /// with StartTime `start_unix_ms` and EndTime `end_unix_ms`, as they are. CloudWatch answers
    /// the datapoints published so far whose timestamp (their period's start) lies in
    /// `[StartTime rounded down to the minute, EndTime)`; a datapoint is published minutes after
    /// its period ends, and now and then never. Ask for a [`metric_window`] to count whole
    /// periods. Instances without data are absent or zero.
    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error>;
    /// GetConsoleOutput: the instance's console output as text, `None` while EC2 has none yet.
    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error>;
    /// One page of DescribeSubnets by ids (empty: any) and filters (`tag:KEY`, `tag-key`,
    /// `vpc-id`, `availability-zone`, `subnet-id`, `default-for-az`). An unknown id fails the
    /// whole call with `InvalidSubnetID.NotFound`.
    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error>;
    /// One page of DescribeInstanceTypeOfferings by availability zone: which zones of the region
    /// offer each of `instance_types` (empty: every type). A type absent from a zone's rows is
    /// not offered there, and RunInstances placed in that zone answers `Unsupported`.
    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error>;
    /// SSM's GetParameter: the value of the parameter `name` in the region, e.g. the AMI id
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64` holds today. An
    /// unknown name answers `ParameterNotFound`; throttling answers `ThrottlingException`.
    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error>;
}

/// The paginated Describe calls with every page followed, unpaced (see [`all_pages`]): for
/// tests, tools and the simulator's own checks. Backend code uses `Pacer::pages` instead.
#[async_trait]
pub trait Ec2PortExt: Ec2Port {
    /// Every page of DescribeInstances.
    async fn describe_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<InstanceInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstances, !instance_ids.is_empty());
        all_pages(first, |page| self.describe_instances_page(region, instance_ids.clone(), filters.clone(), page)).await
    }

    /// Every page of DescribeSecurityGroups.
    async fn describe_security_groups(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<SecurityGroupInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeSecurityGroups, !group_ids.is_empty());
        all_pages(first, |page| self.describe_security_groups_page(region, group_ids.clone(), filters.clone(), page))
            .await
    }

    /// Every page of DescribeInstanceTypes.
    async fn describe_instance_types(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstanceTypes, false);
        all_pages(first, |page| self.describe_instance_types_page(region, families.clone(), page)).await
    }

    /// Every page of DescribeSubnets.
    async fn describe_subnets(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<SubnetInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeSubnets, !subnet_ids.is_empty());
        all_pages(first, |page| self.describe_subnets_page(region, subnet_ids.clone(), filters.clone(), page)).await
    }

    /// Every page of DescribeInstanceTypeOfferings.
    async fn describe_instance_type_offerings(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
    ) -> Result<Vec<InstanceTypeOffering>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstanceTypeOfferings, false);
        all_pages(first, |page| self.describe_instance_type_offerings_page(region, instance_types.clone(), page)).await
    }
}

impl<P: Ec2Port + ?Sized> Ec2PortExt for P {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_windows_cover_whole_five_minute_periods() {
        assert_eq!(metric_window(301_000, 599_000), (300_000, 600_000));
        assert_eq!(metric_window(300_000, 300_001), (300_000, 600_000));
        assert_eq!(metric_window(300_000, 300_000), (300_000, 600_000), "never empty");
        assert_eq!(metric_window(0, 900_000), (0, 900_000));
        assert_eq!(metric_window(899_999, 900_001), (600_000, 1_200_000));
    }

    #[test]
    fn cloudwatch_throttling_is_a_throttle_with_its_own_quota() {
        let err = Ec2Error::new(Operation::GetNetworkUsage, codes::THROTTLING, "Rate exceeded");
        assert!(err.is_throttle() && err.is_transient());
        let class = Operation::GetNetworkUsage.throttle_class();
        assert_eq!((class, class.capacity(), class.refill_per_s()), (ThrottleClass::GetMetricData, 50, 50));
        assert!(!ThrottleClass::ALL.contains(&class), "not one of EC2's buckets");
    }

    #[test]
    fn ssm_throttling_is_a_throttle_with_parameter_stores_quota() {
        let err = Ec2Error::new(Operation::GetParameter, codes::THROTTLING_EXCEPTION, "Rate exceeded");
        assert!(err.is_throttle() && err.is_transient());
        assert!(Ec2Error::new(Operation::GetParameter, codes::INTERNAL_SERVER_ERROR, "").is_transient());
        assert!(!Ec2Error::new(Operation::GetParameter, codes::PARAMETER_NOT_FOUND, "").is_transient());
        let class = Operation::GetParameter.throttle_class();
        assert_eq!((class, class.capacity(), class.refill_per_s()), (ThrottleClass::GetParameter, 40, 40));
        assert!(!ThrottleClass::ALL.contains(&class), "not one of EC2's buckets");
        assert_eq!(Operation::ALL[Operation::GetParameter.index()], Operation::GetParameter);
    }

    #[test]
    fn architectures_have_ec2s_names() {
        assert_eq!(Architecture::from_name("arm64"), Some(Architecture::Arm64));
        assert_eq!(Architecture::from_name("x86_64"), Some(Architecture::X86_64));
        assert_eq!(Architecture::from_name("i386"), None);
        assert_eq!(Architecture::Arm64.to_string(), "arm64");
    }
}
