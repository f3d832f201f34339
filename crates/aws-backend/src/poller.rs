//! One shared poller per region: a single DescribeInstances (filtered by our owner tag) per
//! poll interval serves every instance watched in that region, never a call per instance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backend_api::{Clock, RegionLabel};
use tokio::sync::Notify;

use crate::config::OWNER_TAG;
use crate::pacing::{Pacer, lock};
use crate::port::{Ec2Port, Filter, InstanceInfo, Operation};

/// What the poller last saw of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sighting {
    /// No poll has completed since the watch began.
    NotYetPolled,
    /// The last poll did not list the instance: not visible yet (eventual consistency), or
    /// gone for good (terminated more than about an hour ago).
    Absent {
        /// When the poll was made, unix ms.
        at_unix_ms: u64,
    },
    /// The last poll listed it.
    Seen {
        /// What EC2 said: shared by the poll and every watcher of the instance, not copied
        /// to each (a poll lists hundreds of instances, every poll interval).
        info: Arc<InstanceInfo>,
        /// When the poll was made, unix ms.
        at_unix_ms: u64,
    },
}

/// The latest sighting of one instance, shared between the poller and its watchers.
///
/// A small stand-in for `tokio::sync::watch`: tokio's watch channel spreads its waiters over
/// several `Notify`s chosen at random, which makes the order in which watchers wake differ from
/// run to run. Here every watcher waits on one `Notify`, woken in a fixed order, so the
/// simulation stays deterministic.
struct Slot {
    latest: Mutex<(u64, Sighting)>,
    notify: Notify,
}

/// A watcher's end of an instance's latest sighting: the poller keeps watching while one exists.
pub struct SightingRx {
    slot: Arc<Slot>,
    seen: u64,
}

impl SightingRx {
    /// The latest sighting, now marked as seen.
    pub fn borrow_and_update(&mut self) -> Sighting {
        let latest = lock(&self.slot.latest);
        self.seen = latest.0;
        latest.1.clone()
    }

    /// Returns once a sighting newer than the last one seen is there.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.slot.latest).0 != self.seen {
                return;
            }
            notified.await;
        }
    }
}

/// The poller of one region.
pub struct RegionPoller {
    region: RegionLabel,
    owner: String,
    poll_interval_ms: u64,
    port: Arc<dyn Ec2Port>,
    clock: Arc<dyn Clock>,
    pacer: Arc<Pacer>,
    watched: Mutex<BTreeMap<String, Arc<Slot>>>,
    wake: Notify,
    polls: Mutex<u64>,
    /// A deliberate bug for the simulation's self-test: one listing per watched instance.
    per_instance: bool,
}

impl RegionPoller {
    /// A poller for `region`; call [`RegionPoller::run`] in a task.
    pub fn new(
        region: RegionLabel,
        owner: String,
        poll_interval_ms: u64,
        port: Arc<dyn Ec2Port>,
        clock: Arc<dyn Clock>,
        pacer: Arc<Pacer>,
    ) -> Self {
        Self {
            region,
            owner,
            poll_interval_ms,
            port,
            clock,
            pacer,
            watched: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            polls: Mutex::new(0),
            per_instance: false,
        }
    }

    /// The same poller, listing once per watched instance at every poll when `on`
    /// (`TestSwitches::listing_per_instance`).
    pub fn listing_per_instance(self, on: bool) -> Self {
        Self { per_instance: on, ..self }
    }

    /// Starts watching `instance_id`; the receiver sees every poll's sighting of it. Watching
    /// ends when every receiver for the instance is dropped.
    pub fn subscribe(&self, instance_id: &str) -> SightingRx {
        let slot = lock(&self.watched)
            .entry(instance_id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot { latest: Mutex::new((0, Sighting::NotYetPolled)), notify: Notify::new() })
            })
            .clone();
        self.wake.notify_one();
        let seen = lock(&slot.latest).0;
        SightingRx { slot, seen }
    }

    /// How many DescribeInstances polls this poller has made.
    pub fn polls(&self) -> u64 {
        *lock(&self.polls)
    }

    /// Polls every interval while anything is watched; sleeps on a notification otherwise.
    pub async fn run(self: Arc<Self>) {
        loop {
            let idle = {
                let mut watched = lock(&self.watched);
                // The map holds one reference; every other is a watcher's.
                watched.retain(|_, slot| Arc::strong_count(slot) > 1);
                watched.is_empty()
            };
            if idle {
                self.wake.notified().await;
                continue;
            }
            let listings = if self.per_instance { lock(&self.watched).len() } else { 1 };
            for _ in 0..listings {
                self.poll_once().await;
            }
            self.clock.sleep_ms(self.poll_interval_ms).await;
        }
    }

    async fn poll_once(&self) {
        let filters = vec![Filter::tag(OWNER_TAG, [self.owner.clone()])];
        let result = self
            .pacer
            .pages(&self.region, Operation::DescribeInstances, false, |page| {
                self.port.describe_instances_page(&self.region, &[], &filters, page)
            })
            .await;
        *lock(&self.polls) += 1;
        let at_unix_ms = self.clock.now_unix_ms();
        let instances = match result {
            Ok(instances) => instances,
            Err(err) => {
                // Watchers keep their last sighting; the next poll tries again.
                tracing::warn!(region = %self.region, error = %err, "DescribeInstances poll failed");
                return;
            }
        };
        let instances: Vec<Arc<InstanceInfo>> = instances.into_iter().map(Arc::new).collect();
        let mut by_id: BTreeMap<&str, &Arc<InstanceInfo>> = BTreeMap::new();
        for info in &instances {
            by_id.insert(info.instance_id.as_str(), info);
        }
        let watched = lock(&self.watched);
        for (id, slot) in watched.iter() {
            let sighting = match by_id.get(id.as_str()) {
                Some(info) => Sighting::Seen { info: Arc::clone(info), at_unix_ms },
                None => Sighting::Absent { at_unix_ms },
            };
            let mut latest = lock(&slot.latest);
            *latest = (latest.0 + 1, sighting);
            drop(latest);
            slot.notify.notify_waiters();
        }
    }
}
