//! What the backend sends through the port: the inputs of the mutating calls and the filters of
//! the Describe calls.

use serde::{Deserialize, Serialize};

use super::{InstanceState, Tags};

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
