//! VPCs and subnets: where an instance's network lives.
//!
//! Each region has a default VPC (unless [`SimConfig::default_vpc`](crate::SimConfig) is off)
//! with one default subnet per availability zone, and the operator's own subnets
//! ([`SimConfig::subnets`](crate::SimConfig)), each in a VPC of its own naming. The rules the
//! simulator holds calls to, from the EC2 API reference:
//! - CreateSecurityGroup with a `VpcId` creates the group in that VPC (`InvalidVpcID.NotFound`
//!   for an unknown one); without one, in the default VPC, or `VPCIdNotSpecified` when there is
//!   none ("CreateSecurityGroup": "VpcId ... Required for a nondefault VPC").
//! - RunInstances with a `SubnetId` launches into that subnet's VPC and zone
//!   (`InvalidSubnetID.NotFound` for an unknown one); every security group must belong to that
//!   VPC, else `InvalidParameter` ("Security group ... and subnet ... belong to different
//!   networks"). Without one it needs the default VPC, and takes the zone `Placement` names
//!   (a zone of the region, else `InvalidParameterValue`) or one EC2 picks.
//! - DescribeSubnets lists both kinds, `DefaultForAz` telling them apart.
//!
//! Security group names stay unique per region here, not per VPC as in EC2: the backend's
//! names are unique per grant anyway.

use aws_backend::port::{SubnetInfo, Tags};
use backend_api::RegionLabel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SimError;

/// An operator's subnet, outside the default VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSubnet {
    /// The region that holds it.
    pub region: RegionLabel,
    /// Its id, `subnet-...`.
    pub subnet_id: String,
    /// Its VPC's id, `vpc-...` (any id not the default VPC's; the VPC exists once a subnet
    /// names it).
    pub vpc_id: String,
    /// Its zone, e.g. `us-east-1b`: one of the region's.
    pub availability_zone: String,
    /// Its tags, for subnet selectors.
    pub tags: Tags,
}

/// Refuses subnet lists the simulated regions cannot hold.
pub(crate) fn validate_subnets(subnets: &[SimSubnet], regions: &[RegionLabel], zones: u8) -> Result<(), SimError> {
    for s in subnets {
        if !regions.contains(&s.region) {
            return Err(SimError::Config(format!(
                "subnets: {} is in {}, which is not simulated: add the region or drop the subnet",
                s.subnet_id, s.region
            )));
        }
        if !s.subnet_id.starts_with("subnet-") || !s.vpc_id.starts_with("vpc-") {
            return Err(SimError::Config(format!(
                "subnets: {} in {} is not a subnet-... id in a vpc-... id",
                s.subnet_id, s.vpc_id
            )));
        }
        let zone_ok = s
            .availability_zone
            .strip_prefix(s.region.as_str())
            .is_some_and(|z| z.len() == 1 && z.as_bytes()[0] >= b'a' && z.as_bytes()[0] < b'a' + zones);
        if !zone_ok {
            return Err(SimError::Config(format!(
                "subnets: {} is in zone {:?}, not one of {}'s {zones} zones ({}a, {}b, ...)",
                s.subnet_id, s.availability_zone, s.region, s.region, s.region
            )));
        }
    }
    Ok(())
}

/// A region's networks.
#[derive(Debug, Default)]
pub(crate) struct Networks {
    /// The default VPC's id, if the account has one.
    pub default_vpc_id: Option<String>,
    /// Every subnet: the default VPC's (one per zone) first, then the operator's.
    pub subnets: Vec<SubnetInfo>,
}

impl Networks {
    /// The region's networks: its default VPC and subnets (ids hashed from the seed and the
    /// region, so that they take nothing from the PRNG) when `default_vpc`, and the operator's.
    pub fn new(seed: u64, region: &RegionLabel, azs: &[String], default_vpc: bool, own: &[SimSubnet]) -> Self {
        let mut networks = Networks::default();
        if default_vpc {
            let vpc = format!("vpc-{}", hashed_hex(seed, region, "default-vpc"));
            for zone in azs {
                networks.subnets.push(SubnetInfo {
                    subnet_id: format!("subnet-{}", hashed_hex(seed, region, zone)),
                    vpc_id: vpc.clone(),
                    availability_zone: zone.clone(),
                    default_for_az: true,
                    tags: Tags::new(),
                });
            }
            networks.default_vpc_id = Some(vpc);
        }
        for s in own.iter().filter(|s| s.region == *region) {
            networks.subnets.push(SubnetInfo {
                subnet_id: s.subnet_id.clone(),
                vpc_id: s.vpc_id.clone(),
                availability_zone: s.availability_zone.clone(),
                default_for_az: false,
                tags: s.tags.clone(),
            });
        }
        networks
    }

    /// The subnet `id`, if it exists.
    pub fn subnet(&self, id: &str) -> Option<&SubnetInfo> {
        self.subnets.iter().find(|s| s.subnet_id == id)
    }

    /// Whether a VPC of this id exists (the default one, or one a subnet names).
    pub fn has_vpc(&self, id: &str) -> bool {
        self.default_vpc_id.as_deref() == Some(id) || self.subnets.iter().any(|s| s.vpc_id == id)
    }
}

/// 17 hex digits from a hash of the seed, the region and `what`.
fn hashed_hex(seed: u64, region: &RegionLabel, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(b"network");
    h.update(region.as_str().as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..17].to_string()
}
