//! The harness's witness at EC2's door: a [`Gate`] over the simulator, under every bridge
//! process, that checks three promises on the calls themselves, when they reach EC2.
//!
//! - **Tags at creation** (`tags`): every create call carries our owner tag and its grant's
//!   tag in the call itself (tags added afterwards leave a window in which recovery, the
//!   reaper and the poller, which find resources by tag, cannot see the resource).
//! - **Record first** (`record-first`): nothing is created for a grant before the ledger
//!   durably holds why: a key pair or a group before the grant's `GrantAdmitted`, an instance
//!   before the `LaunchRequested` with the ClientToken it is launched with. Recovery can only
//!   end what the ledger names, so a bridge whose ledger cannot be written (degraded) must
//!   refuse new grants rather than create anything. The store is asked, not the backend.
//! - **One listing per poll** (`listing`): the watch lists our instances with one
//!   DescribeInstances per region per poll interval, whatever the number of instances.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use aws_backend::OWNER_TAG;
use aws_backend::port::{Ec2Error, Filter, Operation, Tags};
use backend_api::{Clock, GrantId, RegionLabel};

use crate::checkers::bounds::LISTINGS_PER_POLL_MAX;
use crate::checkers::{GrantTags, Violation, names, tags};
use crate::fixture::OWNER;
use crate::framestore::FrameStore;
use crate::gated::{Creating, Gate};
use crate::scenario::GrantPlan;

/// See the module doc.
pub struct Witness {
    store: FrameStore,
    plans: BTreeMap<GrantId, GrantPlan>,
    grant_tags: GrantTags,
    clock: Arc<dyn Clock>,
    poll_interval_ms: u64,
    owner: Vec<Filter>,
    /// Per region, the times of the answered listings within the last poll interval.
    listings: Mutex<BTreeMap<RegionLabel, VecDeque<u64>>>,
    findings: Arc<Mutex<Vec<Violation>>>,
}

impl Witness {
    /// A witness for the workload `plans`, over the ledger `store`, reporting into `findings`.
    pub fn new(
        store: FrameStore,
        plans: &[GrantPlan],
        clock: Arc<dyn Clock>,
        poll_interval_ms: u64,
        findings: Arc<Mutex<Vec<Violation>>>,
    ) -> Self {
        Self {
            store,
            plans: plans.iter().map(|p| (p.id, p.clone())).collect(),
            grant_tags: GrantTags::new(plans.iter().map(|p| &p.id)),
            clock,
            poll_interval_ms,
            owner: vec![Filter::tag(OWNER_TAG, [OWNER])],
            listings: Mutex::new(BTreeMap::new()),
            findings,
        }
    }

    fn report(&self, violation: Violation) {
        crate::harness::lock(&self.findings).push(violation);
    }

    fn tagged(&self, region: &RegionLabel, what: &str, name: &str, tags: &Tags) {
        if let Some(why) = tags::missing(|t| self.grant_tags.grant_of(&self.plans, t), tags) {
            self.report(Violation::safety(
                names::TAGS,
                format!("{what} {name} in {region} has {why} in its create call"),
            ));
        }
    }

    fn recorded(&self, region: &RegionLabel, held: bool, call: &str, why: &str) {
        if !held {
            self.report(Violation::safety(
                names::RECORD_FIRST,
                format!("{call} in {region} reached EC2 before the ledger held {why}"),
            ));
        }
    }
}

impl Gate for Witness {
    async fn pass<T: Send>(
        &self,
        _op: Operation,
        call: impl std::future::Future<Output = Result<T, Ec2Error>> + Send,
    ) -> Result<T, Ec2Error> {
        call.await
    }

    fn creating(&self, region: &RegionLabel, call: Creating<'_>) {
        match call {
            Creating::KeyPair(req) => {
                self.tagged(region, "key pair", &req.key_name, &req.tags);
                let held = self.store.holds_admission_naming(&req.key_name);
                self.recorded(region, held, &format!("ImportKeyPair {}", req.key_name), "the grant's admission");
            }
            Creating::SecurityGroup(req) => {
                self.tagged(region, "security group", &req.group_name, &req.tags);
                let held = self.store.holds_admission_naming(&req.group_name);
                self.recorded(
                    region,
                    held,
                    &format!("CreateSecurityGroup {}", req.group_name),
                    "the grant's admission",
                );
            }
            Creating::Instance(req) => {
                let token = &req.client_token;
                self.tagged(region, "instance launched with ClientToken", token, &req.instance_tags);
                self.tagged(region, "volume of the instance launched with ClientToken", token, &req.volume_tags);
                let held = self.store.holds_launch_request(token);
                self.recorded(region, held, &format!("RunInstances with ClientToken {token}"), "its LaunchRequested");
            }
        }
    }

    fn listed(&self, region: &RegionLabel, filters: &[Filter], ok: bool) {
        if !ok || filters != self.owner.as_slice() {
            return;
        }
        let now = self.clock.now_unix_ms();
        let mut listings = crate::harness::lock(&self.listings);
        let recent = listings.entry(region.clone()).or_default();
        while recent.front().is_some_and(|t| t + self.poll_interval_ms <= now) {
            recent.pop_front();
        }
        recent.push_back(now);
        let count = recent.len();
        drop(listings);
        if count > LISTINGS_PER_POLL_MAX {
            self.report(Violation::safety(
                names::LISTING,
                format!(
                    "{count} listings of our instances in {region} within one poll interval ({} ms), at most {LISTINGS_PER_POLL_MAX}",
                    self.poll_interval_ms
                ),
            ));
        }
    }
}
