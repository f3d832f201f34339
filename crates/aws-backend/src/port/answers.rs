//! What the port answers: EC2's resources as Describe (or the creating call) returns them, in
//! our own types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use super::Tags;

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

/// An instance as Describe returns it.
///
/// Its strings are [`SmolStr`]s and its tags shared: an answer is copied into every poll's
/// view of the instance, and into every DescribeInstances answer the simulator gives, so a
/// copy must not allocate. Read them as `&str` (`&*info.instance_id`, `info.tags.get(..)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// EC2's id, `i-...`.
    pub instance_id: SmolStr,
    /// Its type.
    pub instance_type: SmolStr,
    /// Its state.
    pub state: InstanceState,
    /// Why it is in that state, as EC2's StateReason code (e.g. `Client.InstanceInitiatedShutdown`).
    pub state_reason_code: Option<SmolStr>,
    /// The public DNS name (empty until assigned).
    pub public_dns_name: SmolStr,
    /// When it was launched, unix ms.
    pub launch_time_unix_ms: u64,
    /// Its tags.
    pub tags: Arc<Tags>,
    /// The idempotency token it was launched with.
    pub client_token: SmolStr,
    /// The availability zone it runs in (`Placement.AvailabilityZone`).
    pub availability_zone: SmolStr,
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
