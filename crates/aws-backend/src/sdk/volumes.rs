//! Volumes over the SDK: DescribeVolumes, outside the port, for whoever checks that nothing was
//! left behind ([`VolumeInfo`]).

use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{Filter, Operation, Tags};

/// DescribeVolumes' page limit.
const DESCRIBE_VOLUMES_PAGE: i32 = 500;

/// A volume as DescribeVolumes returns it: enough to tell whether one was left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// EC2's id, `vol-...`.
    pub volume_id: String,
    /// EC2's state name: `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    /// Its tags.
    pub tags: Tags,
}

impl SdkEc2 {
    /// DescribeVolumes with filters (e.g. `Filter::tag(OWNER_TAG, [owner])`), every page. Not
    /// part of the port: the backend never handles volumes itself (they go with their instance),
    /// but whoever checks that nothing was left behind must look at them.
    pub async fn describe_volumes(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> anyhow::Result<Vec<VolumeInfo>> {
        // The port has no DescribeVolumes operation; errors name it in their message.
        let operation = Operation::DescribeInstances;
        let client = self.ec2(region, operation).await?;
        let filters = convert::filters(filters);
        let mut volumes = Vec::new();
        let mut pages =
            client.describe_volumes().set_filters(filters).max_results(DESCRIBE_VOLUMES_PAGE).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| convert::error(operation, e))
                .map_err(|e| anyhow::anyhow!("DescribeVolumes in {region} failed with {}: {}", e.code, e.message))?;
            for v in page.volumes() {
                volumes.push(VolumeInfo {
                    volume_id: v.volume_id().unwrap_or_default().to_string(),
                    state: v.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                    tags: convert::tags(v.tags()),
                });
            }
        }
        Ok(volumes)
    }
}
