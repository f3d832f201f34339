//! One shared poller per region: a single DescribeInstances (filtered by our owner tag) per
//! poll interval serves every instance watched in that region, never a call per instance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backend_api::{Clock, RegionLabel};
use tokio::sync::{Notify, watch};

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
        /// What EC2 said.
        info: Box<InstanceInfo>,
        /// When the poll was made, unix ms.
        at_unix_ms: u64,
    },
}

/// The poller of one region.
pub struct RegionPoller {
    region: RegionLabel,
    owner: String,
    poll_interval_ms: u64,
    port: Arc<dyn Ec2Port>,
    clock: Arc<dyn Clock>,
    pacer: Arc<Pacer>,
    watched: Mutex<BTreeMap<String, watch::Sender<Sighting>>>,
    wake: Notify,
    polls: Mutex<u64>,
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
        }
    }

    /// Starts watching `instance_id`; the receiver sees every poll's sighting of it. Watching
    /// ends when every receiver for the instance is dropped.
    pub fn subscribe(&self, instance_id: &str) -> watch::Receiver<Sighting> {
        let mut watched = lock(&self.watched);
        let rx = match watched.get(instance_id) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(Sighting::NotYetPolled);
                watched.insert(instance_id.to_string(), tx);
                rx
            }
        };
        drop(watched);
        self.wake.notify_one();
        rx
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
                watched.retain(|_, tx| tx.receiver_count() > 0);
                watched.is_empty()
            };
            if idle {
                self.wake.notified().await;
                continue;
            }
            self.poll_once().await;
            self.clock.sleep_ms(self.poll_interval_ms).await;
        }
    }

    async fn poll_once(&self) {
        let filters = vec![Filter::tag(OWNER_TAG, [self.owner.clone()])];
        let result = self
            .pacer
            .call(&self.region, Operation::DescribeInstances, || {
                self.port.describe_instances(&self.region, Vec::new(), filters.clone())
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
        let mut by_id: BTreeMap<&str, &InstanceInfo> = BTreeMap::new();
        for info in &instances {
            by_id.insert(info.instance_id.as_str(), info);
        }
        let watched = lock(&self.watched);
        for (id, tx) in watched.iter() {
            let sighting = match by_id.get(id.as_str()) {
                Some(info) => Sighting::Seen { info: Box::new((*info).clone()), at_unix_ms },
                None => Sighting::Absent { at_unix_ms },
            };
            tx.send_replace(sighting);
        }
    }
}
