//! `Ec2`: the paced EC2 client. Besides the region pollers (`poller`), it is the only holder of
//! the port and the pacer: every call the phases make goes through it, paced and retried, and
//! the lookups they repeat are typed (`instances` with a [`Lookup`]).

use std::future::Future;
use std::sync::Arc;

use backend_api::{Clock, GrantId, RegionLabel};

use crate::config::{GRANT_TAG, OWNER_TAG};
use crate::pacing::{Backoff, Pacer, PacingStats, count};
use crate::poller::RegionPoller;
use crate::port::{Ec2Error, Ec2Port, Filter, InstanceInfo, InstanceStateChange, Operation, Page, PageRequest};

/// The port behind the pacer. Cheap to clone: clones share both.
#[derive(Clone)]
pub(crate) struct Ec2 {
    port: Arc<dyn Ec2Port>,
    pacer: Arc<Pacer>,
}

/// Which instances a DescribeInstances asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lookup<'a> {
    /// One instance by id (EC2 answers `InvalidInstanceID.NotFound` when it does not know it).
    Id(&'a str),
    /// The instances tagged with the grant (never NotFound, even for an id not yet visible).
    Grant(&'a GrantId),
    /// The instances launched with this ClientToken.
    Token(&'a str),
    /// Every instance tagged with this owner.
    Owner(&'a str),
}

impl Ec2 {
    /// The client over `port`, paced by `pacer`.
    pub(crate) fn new(port: Arc<dyn Ec2Port>, pacer: Arc<Pacer>) -> Self {
        Self { port, pacer }
    }

    /// What pacing did so far.
    pub(crate) fn stats(&self) -> PacingStats {
        self.pacer.stats()
    }

    /// The poller of `region`: one DescribeInstances listing per poll, paced like any call.
    pub(crate) fn poller(
        &self,
        region: &RegionLabel,
        owner: String,
        poll_interval_ms: u64,
        clock: Arc<dyn Clock>,
    ) -> RegionPoller {
        RegionPoller::new(region.clone(), owner, poll_interval_ms, self.port.clone(), clock, self.pacer.clone())
    }

    /// `call` on the port, paced and retried (see [`Pacer::call`]).
    pub(crate) async fn call<'a, T, F, Fut>(
        &'a self,
        region: &RegionLabel,
        op: Operation,
        mut call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut(&'a dyn Ec2Port) -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let port = self.port.as_ref();
        self.pacer.call(region, op, || call(port)).await
    }

    /// [`Ec2::call`] for a call about `instances` instances (see [`Pacer::call_for`]).
    pub(crate) async fn call_for<'a, T, F, Fut>(
        &'a self,
        region: &RegionLabel,
        op: Operation,
        instances: u32,
        mut call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut(&'a dyn Ec2Port) -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let port = self.port.as_ref();
        self.pacer.call_for(region, op, instances, || call(port)).await
    }

    /// Every page of a paginated Describe, each page paced (see [`Pacer::pages`]).
    pub(crate) async fn pages<'a, T, F, Fut>(
        &'a self,
        region: &RegionLabel,
        op: Operation,
        by_ids: bool,
        mut call: F,
    ) -> Result<Vec<T>, Ec2Error>
    where
        F: FnMut(&'a dyn Ec2Port, PageRequest) -> Fut,
        Fut: Future<Output = Result<Page<T>, Ec2Error>>,
    {
        let port = self.port.as_ref();
        self.pacer.pages(region, op, by_ids, |page| call(port, page)).await
    }

    /// [`Ec2::call`], tried again while `settling` holds for the error, for up to `window_ms`
    /// (see [`Pacer::call_until_settled`]).
    pub(crate) async fn call_until_settled<'a, T, F, Fut>(
        &'a self,
        region: &RegionLabel,
        op: Operation,
        window_ms: u64,
        settling: impl Fn(&Ec2Error) -> bool,
        mut call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut(&'a dyn Ec2Port) -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let port = self.port.as_ref();
        self.pacer.call_until_settled(region, op, window_ms, settling, || call(port)).await
    }

    /// Sleeps try `attempt`'s backoff of `schedule`.
    pub(crate) async fn backoff(&self, schedule: Backoff, attempt: u32) {
        self.pacer.backoff(schedule.step(attempt)).await;
    }

    /// DescribeInstances for `lookup`, every page.
    pub(crate) async fn instances(
        &self,
        region: &RegionLabel,
        lookup: Lookup<'_>,
    ) -> Result<Vec<InstanceInfo>, Ec2Error> {
        let (ids, filters) = match lookup {
            Lookup::Id(id) => (vec![id.to_string()], Vec::new()),
            Lookup::Grant(grant) => (Vec::new(), vec![Filter::tag(GRANT_TAG, [grant.to_hex()])]),
            Lookup::Token(token) => {
                (Vec::new(), vec![Filter { name: "client-token".into(), values: vec![token.to_string()] }])
            }
            Lookup::Owner(owner) => (Vec::new(), vec![Filter::tag(OWNER_TAG, [owner.to_string()])]),
        };
        let by_ids = !ids.is_empty();
        self.pages(region, Operation::DescribeInstances, by_ids, |port, page| {
            port.describe_instances_page(region, &ids, &filters, page)
        })
        .await
    }

    /// TerminateInstances for `ids`, in one call.
    pub(crate) async fn terminate(
        &self,
        region: &RegionLabel,
        ids: &[String],
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        self.call_for(region, Operation::TerminateInstances, count(ids), |port| {
            port.terminate_instances(region, ids.to_vec())
        })
        .await
    }
}
