//! `Regions`: what the backend knows of each region, learnt from EC2 and kept between grants:
//! the instance-type catalogue, the `[network]` subnets, the placement (offerings, exhausted
//! capacity, the vCPU quota), and the turns that keep a burst of grants from asking all at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backend_api::RegionLabel;
use tokio::sync::Semaphore;

use crate::pacing::lock;
use crate::placement::{RegionNetwork, RegionPlacement};
use crate::port::InstanceTypeInfo;

/// Grants per region that may create their key pair and security group at the same time.
const PREP_SLOTS_PER_REGION: usize = 16;

/// Per region, what EC2 taught.
#[derive(Default)]
pub(crate) struct Regions {
    /// DescribeInstanceTypes within the configured families.
    catalogue: Mutex<BTreeMap<RegionLabel, Arc<Vec<InstanceTypeInfo>>>>,
    /// How many grants may be creating their key pair and group at once (first come, first
    /// served), so that a burst keeps RunInstances, the scarcest bucket, busy from the start
    /// instead of queueing every grant's prerequisites behind every other's.
    prep_slots: Mutex<BTreeMap<RegionLabel, Arc<Semaphore>>>,
    /// The networks of the regions with a `[network]`, once resolved (see `placement`).
    networks: Mutex<BTreeMap<RegionLabel, RegionNetwork>>,
    /// What each region taught about zones, capacity and the vCPU quota (see `placement`).
    placement: Mutex<BTreeMap<RegionLabel, RegionPlacement>>,
    /// The turn to ask for the zone offerings (see `refresh_offerings`).
    offering_asks: Mutex<BTreeMap<RegionLabel, Arc<tokio::sync::Mutex<()>>>>,
}

impl Regions {
    /// The region's catalogue, once loaded.
    pub(crate) fn catalogue(&self, region: &RegionLabel) -> Option<Arc<Vec<InstanceTypeInfo>>> {
        lock(&self.catalogue).get(region).cloned()
    }

    /// Keeps the region's catalogue.
    pub(crate) fn remember_catalogue(&self, region: &RegionLabel, types: Arc<Vec<InstanceTypeInfo>>) {
        lock(&self.catalogue).insert(region.clone(), types);
    }

    /// Runs `f` on every catalogue loaded so far.
    pub(crate) fn with_catalogues<T>(
        &self,
        f: impl FnOnce(&BTreeMap<RegionLabel, Arc<Vec<InstanceTypeInfo>>>) -> T,
    ) -> T {
        f(&lock(&self.catalogue))
    }

    /// The region's turns to create key pairs and groups.
    pub(crate) fn prep_slots(&self, region: &RegionLabel) -> Arc<Semaphore> {
        lock(&self.prep_slots)
            .entry(region.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(PREP_SLOTS_PER_REGION)))
            .clone()
    }

    /// The region's network, once resolved.
    pub(crate) fn network(&self, region: &RegionLabel) -> Option<RegionNetwork> {
        lock(&self.networks).get(region).cloned()
    }

    /// Keeps the region's resolved network.
    pub(crate) fn remember_network(&self, region: &RegionLabel, network: RegionNetwork) {
        lock(&self.networks).insert(region.clone(), network);
    }

    /// Runs `f` on what the region taught about placement.
    pub(crate) fn placement<T>(&self, region: &RegionLabel, f: impl FnOnce(&mut RegionPlacement) -> T) -> T {
        f(lock(&self.placement).entry(region.clone()).or_default())
    }

    /// The region's turn to ask for the zone offerings.
    pub(crate) fn offerings_turn(&self, region: &RegionLabel) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.offering_asks).entry(region.clone()).or_default().clone()
    }
}
