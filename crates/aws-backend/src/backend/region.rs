//! What the backend knows of each region: its instance-type catalogue and its shared poller.

use std::sync::Arc;

use backend_api::{BackendError, RegionLabel};

use super::AwsBackend;
use crate::errors::provider;
use crate::pacing::lock;
use crate::poller::RegionPoller;
use crate::port::{InstanceTypeInfo, Operation};
use crate::sizing;

impl AwsBackend {
    /// DescribeInstanceTypes within the configured families, cached per region.
    pub(crate) async fn catalogue(&self, region: &RegionLabel) -> Result<Arc<Vec<InstanceTypeInfo>>, BackendError> {
        if let Some(types) = self.regions().catalogue(region) {
            return Ok(types);
        }
        let families = self.shared.cfg.instance_families.clone();
        let types = self
            .ec2()
            .pages(region, Operation::DescribeInstanceTypes, false, |port, page| {
                port.describe_instance_types_page(region, families.clone(), page)
            })
            .await
            .map_err(provider)?;
        let types = Arc::new(sizing::sorted(types));
        self.regions().remember_catalogue(region, types.clone());
        Ok(types)
    }

    /// The region's catalogue without the types whose architecture has no AMI there, smallest
    /// first (see `sizing::launchable`).
    pub(super) async fn launchable_types(&self, region: &RegionLabel) -> Result<Vec<InstanceTypeInfo>, BackendError> {
        let types = self.catalogue(region).await?;
        sizing::launchable(&types, &self.shared.cfg.architectures(region.as_str()), region.as_str())
    }

    /// The region's shared poller, started on first use.
    pub(crate) fn poller(&self, region: &RegionLabel) -> Arc<RegionPoller> {
        let mut pollers = lock(&self.shared.pollers);
        if let Some((poller, _)) = pollers.get(region) {
            return poller.clone();
        }
        let poller = Arc::new(self.hooks().poller(self.ec2().poller(
            region,
            self.shared.cfg.owner.clone(),
            self.shared.cfg.poll_interval_ms,
            self.shared.clock.clone(),
        )));
        let task = tokio::spawn(poller.clone().run());
        pollers.insert(region.clone(), (poller.clone(), task));
        poller
    }
}
