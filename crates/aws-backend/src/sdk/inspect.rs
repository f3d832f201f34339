//! A [`CloudInspector`] over the SDK port: what AWS (or moto) still holds for a grant or an
//! owner, seen through Describe calls. Used by the conformance suite against moto, and by an
//! operator checking a real account.

use std::sync::Arc;

use async_trait::async_trait;
use backend_api::conformance::CloudInspector;
use backend_api::{GrantId, RegionLabel};

use super::SdkEc2;
use crate::config::{GRANT_TAG, OWNER_TAG};
use crate::port::{Ec2Port, Ec2PortExt, Filter, InstanceState};

/// Lists the resources carrying a tag, in every given region: instances not yet terminated,
/// key pairs, security groups and volumes not yet deleted.
#[derive(Debug, Clone)]
pub struct SdkInspector {
    port: Arc<SdkEc2>,
    regions: Vec<RegionLabel>,
}

impl SdkInspector {
    /// An inspector looking in `regions` through `port`.
    pub fn new(port: Arc<SdkEc2>, regions: Vec<RegionLabel>) -> Self {
        Self { port, regions }
    }

    /// Every resource tagged `key` = `value`, as `"<region> <kind> <id> (<detail>)"` lines.
    pub async fn resources_tagged(&self, key: &str, value: &str) -> anyhow::Result<Vec<String>> {
        let filters = vec![Filter::tag(key, [value])];
        let mut found = Vec::new();
        for region in &self.regions {
            for i in self.port.describe_instances(region, Vec::new(), filters.clone()).await? {
                if i.state != InstanceState::Terminated {
                    found.push(format!("{region} instance {} ({})", i.instance_id, i.state));
                }
            }
            for k in self.port.describe_key_pairs(region, filters.clone()).await? {
                found.push(format!("{region} key pair {} ({})", k.key_name, k.key_pair_id));
            }
            for g in self.port.describe_security_groups(region, Vec::new(), filters.clone()).await? {
                found.push(format!("{region} security group {} ({})", g.group_id, g.group_name));
            }
            for v in self.port.describe_volumes(region, filters.clone()).await? {
                if v.state != "deleted" {
                    found.push(format!("{region} volume {} ({})", v.volume_id, v.state));
                }
            }
        }
        Ok(found)
    }

    /// Every resource carrying the owner tag with value `owner`.
    pub async fn resources_of_owner(&self, owner: &str) -> anyhow::Result<Vec<String>> {
        self.resources_tagged(OWNER_TAG, owner).await
    }
}

#[async_trait]
impl CloudInspector for SdkInspector {
    async fn resources_of(&self, grant: GrantId) -> anyhow::Result<Vec<String>> {
        self.resources_tagged(GRANT_TAG, &grant.to_hex()).await
    }
}
