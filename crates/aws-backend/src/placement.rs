//! Where a grant's instance launches: which (instance type, zone) pairs to try and in what
//! order, what the bridge has learnt of capacity and of the vCPU quota, and the subnets of each
//! region.
//!
//! Capacity is per instance type and availability zone (`InsufficientInstanceCapacity`), so
//! the first remedy for a shortage is the same type in another zone, and only then another
//! size: Karpenter's order, with its short-lived cache of exhausted offerings
//! (docs/ec2-facts.md, "Capacity and quotas"). A type a zone does not offer
//! (DescribeInstanceTypeOfferings) is never tried there. Among the zones of a type, the one
//! that launched most recently comes first.
//!
//! The functions here are pure: the backend keeps a [`RegionPlacement`] per region behind a
//! lock and asks [`candidates`] for the order of one launch.

use std::collections::{BTreeMap, BTreeSet};

use backend_api::{BackendError, RegionLabel};

use crate::backend::AwsBackend;
use crate::errors::provider;
use crate::port::{Filter, InstanceTypeInfo, InstanceTypeOffering, Operation, SubnetInfo, codes};

/// How long a (type, zone) stays out of the candidates after `InsufficientInstanceCapacity`:
/// Karpenter's figure for its cache of unavailable offerings (about 3 minutes).
pub const EXHAUSTED_TTL_MS: u64 = 3 * 60_000;
/// How long a region's instance type offerings are kept before they are asked again.
pub const OFFERINGS_TTL_MS: u64 = 60 * 60_000;
/// How long a vCPU quota learnt from `VcpuLimitExceeded` holds: after it the bridge tries
/// again (the quota may have been raised, or other users of the account may have freed vCPUs).
pub const LEARNED_QUOTA_TTL_MS: u64 = 10 * 60_000;

/// One place to try a launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The instance type.
    pub itype: InstanceTypeInfo,
    /// The zone to place it in; `None`: EC2 picks (offerings unknown, default VPC).
    pub zone: Option<String>,
    /// The subnet to launch into, when the region has a `[network]`.
    pub subnet_id: Option<String>,
}

/// A region's network as resolved from `[network]`: the VPC and the subnets per zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionNetwork {
    /// The VPC every subnet is in, where groups are created.
    pub vpc_id: String,
    /// Subnet ids by zone, each list sorted.
    pub subnets_by_zone: BTreeMap<String, Vec<String>>,
}

impl RegionNetwork {
    /// The network of `subnets`, or why they cannot be one: none at all, or more than one VPC.
    /// `what` names the selector for the message.
    pub fn from_subnets(subnets: &[SubnetInfo], what: &str) -> Result<Self, String> {
        let vpcs: BTreeSet<&str> = subnets.iter().map(|s| s.vpc_id.as_str()).collect();
        match vpcs.len() {
            0 => Err(format!("{what} matches no subnet: create or tag one, or fix the selector")),
            1 => {
                let mut subnets_by_zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for s in subnets {
                    subnets_by_zone.entry(s.availability_zone.clone()).or_default().push(s.subnet_id.clone());
                }
                for ids in subnets_by_zone.values_mut() {
                    ids.sort();
                    ids.dedup();
                }
                let vpc_id = vpcs.into_iter().next().unwrap_or_default().to_string();
                Ok(Self { vpc_id, subnets_by_zone })
            }
            _ => Err(format!(
                "{what} spans several VPCs ({}): a grant's security group lives in one VPC; select subnets of one",
                vpcs.into_iter().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// What the bridge has learnt of one region's placement.
#[derive(Clone, Debug, Default)]
pub struct RegionPlacement {
    /// The zones offering each type, and when they were asked; `None` until known.
    pub offerings: Option<(u64, BTreeMap<String, BTreeSet<String>>)>,
    /// (type, zone) pairs taken as exhausted, each until the unix ms given.
    pub exhausted: BTreeMap<(String, String), u64>,
    /// The last successful launch per zone, unix ms.
    pub last_success: BTreeMap<String, u64>,
    /// An upper bound on the vCPU quota learnt from `VcpuLimitExceeded`, and when.
    pub learned_quota: Option<(u32, u64)>,
}

impl RegionPlacement {
    /// Records DescribeInstanceTypeOfferings' answer.
    pub fn note_offerings(&mut self, offerings: &[InstanceTypeOffering], now_ms: u64) {
        let mut by_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for o in offerings {
            by_type.entry(o.instance_type.clone()).or_default().insert(o.availability_zone.clone());
        }
        self.offerings = Some((now_ms, by_type));
    }

    /// True when the offerings are missing or older than [`OFFERINGS_TTL_MS`].
    pub fn offerings_stale(&self, now_ms: u64) -> bool {
        self.offerings.as_ref().is_none_or(|(at, _)| now_ms >= at.saturating_add(OFFERINGS_TTL_MS))
    }

    /// Takes (type, zone) out of the candidates for [`EXHAUSTED_TTL_MS`].
    pub fn note_exhausted(&mut self, instance_type: &str, zone: &str, now_ms: u64) {
        self.exhausted.insert((instance_type.to_string(), zone.to_string()), now_ms + EXHAUSTED_TTL_MS);
    }

    /// Records that `zone` does not offer `instance_type` after all (`Unsupported`), until the
    /// offerings are asked again.
    pub fn note_unsupported(&mut self, instance_type: &str, zone: &str) {
        if let Some((_, by_type)) = &mut self.offerings
            && let Some(zones) = by_type.get_mut(instance_type)
        {
            zones.remove(zone);
        }
    }

    /// Records a launch in `zone`.
    pub fn note_success(&mut self, zone: &str, now_ms: u64) {
        self.last_success.insert(zone.to_string(), now_ms);
    }

    /// Learns from `VcpuLimitExceeded` for a launch of `requested` vCPUs while the bridge's own
    /// instances held `in_use`: the quota (what the account lets us have) is below their sum.
    pub fn note_vcpu_limit(&mut self, in_use: u32, requested: u32, now_ms: u64) {
        let bound = in_use.saturating_add(requested).saturating_sub(1);
        let bound = match self.learned_quota {
            Some((old, at)) if now_ms < at.saturating_add(LEARNED_QUOTA_TTL_MS) => old.min(bound),
            _ => bound,
        };
        self.learned_quota = Some((bound, now_ms));
    }

    /// The vCPU quota to plan with: the operator's, else one learnt recently, else unknown.
    pub fn quota(&self, configured: Option<u32>, now_ms: u64) -> Option<u32> {
        let learned = self
            .learned_quota
            .filter(|(_, at)| now_ms < at.saturating_add(LEARNED_QUOTA_TTL_MS))
            .map(|(bound, _)| bound);
        match (configured, learned) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }
}

/// The vCPUs the quota leaves for a new instance, when the quota is known.
pub fn headroom(quota: Option<u32>, in_use: u32) -> Option<u32> {
    quota.map(|q| q.saturating_sub(in_use))
}

/// The places to try, in order: each fitting type (in `fitting`'s order) in each zone that
/// offers it and has a subnet of the region's network, the zone that launched last first,
/// (type, zone) pairs taken as exhausted left out. Without known offerings for a type (none
/// asked yet, or an answer that names it in no zone at all, as a server without wildcard
/// filters gives) every zone of the network is tried; without a network either, one candidate
/// lets EC2 pick.
pub fn candidates(
    fitting: &[InstanceTypeInfo],
    placement: &RegionPlacement,
    network: Option<&RegionNetwork>,
    now_ms: u64,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for itype in fitting {
        // A type `note_unsupported` emptied stays known: offered in no zone left.
        let offered = placement.offerings.as_ref().and_then(|(_, by_type)| by_type.get(&itype.instance_type));
        let zones: Vec<String> = match (network, offered) {
            (Some(net), Some(offering)) => {
                net.subnets_by_zone.keys().filter(|z| offering.contains(*z)).cloned().collect()
            }
            (Some(net), None) => net.subnets_by_zone.keys().cloned().collect(),
            (None, Some(offering)) => offering.iter().cloned().collect(),
            (None, None) => {
                out.push(Candidate { itype: itype.clone(), zone: None, subnet_id: None });
                continue;
            }
        };
        let mut zones: Vec<String> = zones
            .into_iter()
            .filter(|z| {
                placement.exhausted.get(&(itype.instance_type.clone(), z.clone())).is_none_or(|until| now_ms >= *until)
            })
            .collect();
        // Most recent success first; never-successful zones after, by name.
        zones.sort_by(|a, b| {
            let la = placement.last_success.get(a).copied().unwrap_or(0);
            let lb = placement.last_success.get(b).copied().unwrap_or(0);
            lb.cmp(&la).then_with(|| a.cmp(b))
        });
        for zone in zones {
            let subnet_id = network.and_then(|n| n.subnets_by_zone.get(&zone)).and_then(|ids| ids.first()).cloned();
            out.push(Candidate { itype: itype.clone(), zone: Some(zone), subnet_id });
        }
    }
    out
}

/// Where a zone name ends in its letter: the slot of a zone in a ClientToken's try index (see
/// [`try_index`]); `NO_ZONE` when EC2 picks.
const ZONE_SLOTS: usize = 32;
const NO_ZONE: usize = ZONE_SLOTS - 1;

/// The try index of a launch of the `type_pos`-th fitting type in `zone`, which its
/// ClientToken carries: a pure function of the pair, so that a restarted bridge resuming a
/// launch re-sends it with the same type and zone (same parameters, so EC2 answers with the
/// instance it launched, or `IdempotentInstanceTerminated`). Zones are told apart by their
/// last letter, as AWS names availability zones (`us-east-1a`).
pub fn try_index(type_pos: usize, zone: Option<&str>) -> usize {
    let slot =
        zone.and_then(|z| z.bytes().last()).filter(u8::is_ascii_lowercase).map_or(NO_ZONE, |b| usize::from(b - b'a'));
    type_pos * ZONE_SLOTS + slot
}

/// The fitting type's position and the zone a try index was made for (see [`try_index`]).
pub fn from_try_index(index: usize, region: &RegionLabel) -> (usize, Option<String>) {
    let slot = index % ZONE_SLOTS;
    let zone = (slot != NO_ZONE && slot < 26).then(|| format!("{region}{}", char::from(b'a' + slot as u8)));
    (index / ZONE_SLOTS, zone)
}

impl AwsBackend {
    /// The region's network from `[network]`, resolved once through DescribeSubnets; `None`
    /// for a region without an entry (its default VPC). A selector that names a missing subnet,
    /// matches none or spans VPCs is the operator's to fix: a non-retryable error naming it.
    pub(crate) async fn network(&self, region: &RegionLabel) -> Result<Option<RegionNetwork>, BackendError> {
        let Some(config) = self.config().network.get(region.as_str()) else {
            return Ok(None);
        };
        if let Some(known) = self.regions().network(region) {
            return Ok(Some(known));
        }
        let (ids, filters, what) = if config.subnet_ids.is_empty() {
            let filters: Vec<Filter> = config.subnet_tags.iter().map(|(k, v)| Filter::tag(k, [v.clone()])).collect();
            (Vec::new(), filters, format!("network.{region}.subnet_tags {:?}", config.subnet_tags))
        } else {
            (config.subnet_ids.clone(), Vec::new(), format!("network.{region}.subnet_ids {:?}", config.subnet_ids))
        };
        let subnets = self
            .ec2()
            .pages(region, Operation::DescribeSubnets, !ids.is_empty(), |port, page| {
                port.describe_subnets_page(region, ids.clone(), filters.clone(), page)
            })
            .await;
        let misconfigured = |reason: String| BackendError::InvalidInput { field: format!("network.{region}"), reason };
        let subnets = match subnets {
            Ok(subnets) => subnets,
            Err(err) if err.is(codes::SUBNET_NOT_FOUND) => {
                return Err(misconfigured(format!(
                    "{what}: EC2 knows no such subnet in {region} ({}): fix the id or create the subnet",
                    err.message
                )));
            }
            Err(err) => return Err(provider(err)),
        };
        let network = RegionNetwork::from_subnets(&subnets, &what).map_err(misconfigured)?;
        tracing::info!(%region, vpc = %network.vpc_id, zones = network.subnets_by_zone.len(), "launching into the subnets of [network]");
        self.regions().remember_network(region, network.clone());
        Ok(Some(network))
    }

    /// Asks DescribeInstanceTypeOfferings again when the region's offerings are stale, one
    /// caller at a time: a burst of grants on a cold backend waits for the first one's answer
    /// instead of each asking. A failure is logged and leaves them as they were: without
    /// offerings EC2 picks the zone.
    pub(crate) async fn refresh_offerings(&self, region: &RegionLabel) {
        let stale = || self.regions().placement(region, |p| p.offerings_stale(self.now_ms()));
        if !stale() {
            return;
        }
        let asking = self.regions().offerings_turn(region);
        let _asking = asking.lock().await;
        // Whoever held the turn before this caller may have refreshed them.
        if !stale() {
            return;
        }
        let now = self.now_ms();
        // The catalogue's own names: exact values work on every server (moto ignores wildcards
        // in this filter); the families' wildcards when the catalogue is not loaded.
        let families: Vec<String> = match self.catalogue(region).await {
            Ok(types) if !types.is_empty() => types.iter().map(|t| t.instance_type.clone()).collect(),
            _ => self.config().instance_families.iter().map(|f| format!("{f}.*")).collect(),
        };
        let answer = self
            .ec2()
            .pages(region, Operation::DescribeInstanceTypeOfferings, false, |port, page| {
                port.describe_instance_type_offerings_page(region, families.clone(), page)
            })
            .await;
        match answer {
            Ok(offerings) => self.regions().placement(region, |p| p.note_offerings(&offerings, now)),
            Err(err) => {
                tracing::warn!(%region, error = %err, "could not list instance type offerings; EC2 picks zones")
            }
        }
    }

    /// The vCPUs of the bridge's own instances in `region` that count against the quota:
    /// launched and not yet seen to end.
    pub(crate) fn vcpus_in_use(&self, region: &RegionLabel) -> u32 {
        self.with_ledger(|books| {
            books
                .live_grants()
                .filter(|(_, s)| s.region() == region.as_str() && s.instance().is_some())
                .filter(|(_, s)| !s.last_state().is_some_and(|st| st.ends_running()))
                .filter_map(|(_, s)| s.launched_size())
                .map(|(vcpus, _)| vcpus)
                .sum()
        })
    }

    /// The vCPU headroom of `region` under the quota the bridge knows (configured, or learnt
    /// from `VcpuLimitExceeded`); `None` while it knows none.
    pub fn vcpu_headroom(&self, region: &RegionLabel) -> Option<u32> {
        let configured = self.config().vcpu_quota.get(region.as_str()).copied();
        let quota = self.regions().placement(region, |p| p.quota(configured, self.now_ms()));
        headroom(quota, self.vcpus_in_use(region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, vcpus: u32) -> InstanceTypeInfo {
        InstanceTypeInfo {
            instance_type: name.into(),
            vcpus,
            memory_mib: u64::from(vcpus) * 4_096,
            architecture: crate::port::Architecture::X86_64,
        }
    }

    fn offerings(pairs: &[(&str, &str)]) -> Vec<InstanceTypeOffering> {
        pairs
            .iter()
            .map(|(t, z)| InstanceTypeOffering { instance_type: (*t).into(), availability_zone: (*z).into() })
            .collect()
    }

    fn places(c: &[Candidate]) -> Vec<String> {
        c.iter().map(|c| format!("{}@{}", c.itype.instance_type, c.zone.as_deref().unwrap_or("*"))).collect()
    }

    #[test]
    fn other_zones_come_before_other_sizes_and_unoffered_zones_never() {
        let fitting = [t("m6i.large", 2), t("m6i.xlarge", 4)];
        let mut p = RegionPlacement::default();
        p.note_offerings(
            &offerings(&[("m6i.large", "z-a"), ("m6i.large", "z-b"), ("m6i.xlarge", "z-a"), ("m6i.xlarge", "z-c")]),
            0,
        );
        assert_eq!(
            places(&candidates(&fitting, &p, None, 0)),
            ["m6i.large@z-a", "m6i.large@z-b", "m6i.xlarge@z-a", "m6i.xlarge@z-c"]
        );
        // A shortage of m6i.large in z-a moves it to z-b, then to the next size; it expires.
        p.note_exhausted("m6i.large", "z-a", 1_000);
        assert_eq!(places(&candidates(&fitting, &p, None, 1_000))[0], "m6i.large@z-b");
        assert_eq!(places(&candidates(&fitting, &p, None, 1_000 + EXHAUSTED_TTL_MS))[0], "m6i.large@z-a");
        // The zone that launched last comes first.
        p.note_success("z-c", 2_000);
        assert_eq!(places(&candidates(&fitting, &p, None, 2_000))[1], "m6i.xlarge@z-c");
        // Unsupported after all: dropped until the offerings are asked again.
        p.note_unsupported("m6i.large", "z-b");
        assert_eq!(places(&candidates(&fitting, &p, None, 2_000))[0], "m6i.xlarge@z-c");
    }

    #[test]
    fn a_network_limits_zones_to_its_subnets_and_names_the_subnet() {
        let net = RegionNetwork {
            vpc_id: "vpc-1".into(),
            subnets_by_zone: BTreeMap::from([("z-b".to_string(), vec!["subnet-b".to_string()])]),
        };
        let fitting = [t("m6i.large", 2)];
        let mut p = RegionPlacement::default();
        let c = candidates(&fitting, &p, Some(&net), 0);
        assert_eq!((places(&c), c[0].subnet_id.as_deref()), (vec!["m6i.large@z-b".to_string()], Some("subnet-b")));
        p.note_offerings(&offerings(&[("m6i.large", "z-a")]), 0);
        assert!(candidates(&fitting, &p, Some(&net), 0).is_empty(), "z-b does not offer it");
        // Offerings that name the type nowhere (a server without wildcard filters) tell nothing.
        p.note_offerings(&offerings(&[("c5.large", "z-a")]), 0);
        assert_eq!(places(&candidates(&fitting, &p, Some(&net), 0)), ["m6i.large@z-b"]);
        // No network and no offerings: EC2 picks.
        assert_eq!(places(&candidates(&fitting, &RegionPlacement::default(), None, 0)), ["m6i.large@*"]);
    }

    #[test]
    fn subnets_must_share_one_vpc() {
        let s = |id: &str, vpc: &str, zone: &str| SubnetInfo {
            subnet_id: id.into(),
            vpc_id: vpc.into(),
            availability_zone: zone.into(),
            default_for_az: false,
            tags: Default::default(),
        };
        let net = RegionNetwork::from_subnets(&[s("subnet-2", "vpc-1", "z-a"), s("subnet-1", "vpc-1", "z-a")], "x")
            .expect("one VPC");
        assert_eq!(net.subnets_by_zone["z-a"], ["subnet-1", "subnet-2"]);
        let two = RegionNetwork::from_subnets(&[s("subnet-1", "vpc-1", "z-a"), s("subnet-2", "vpc-2", "z-b")], "x");
        assert!(two.expect_err("two VPCs").contains("vpc-1, vpc-2"));
        assert!(RegionNetwork::from_subnets(&[], "the selector").expect_err("none").contains("matches no subnet"));
    }

    #[test]
    fn a_try_index_names_its_type_and_zone() {
        let region = RegionLabel::new("us-east-1").expect("region");
        for (pos, zone) in [(0, Some("us-east-1a")), (3, Some("us-east-1f")), (2, None)] {
            let index = try_index(pos, zone);
            assert_eq!(from_try_index(index, &region), (pos, zone.map(str::to_string)));
        }
        assert_ne!(try_index(0, Some("us-east-1b")), try_index(1, Some("us-east-1b")));
    }

    #[test]
    fn the_quota_bound_tightens_and_expires() {
        let mut p = RegionPlacement::default();
        assert_eq!(p.quota(None, 0), None);
        p.note_vcpu_limit(30, 4, 0);
        assert_eq!(p.quota(None, 0), Some(33));
        p.note_vcpu_limit(28, 2, 10);
        assert_eq!(p.quota(None, 10), Some(29));
        assert_eq!(p.quota(Some(20), 10), Some(20));
        assert_eq!(p.quota(None, 10 + LEARNED_QUOTA_TTL_MS), None);
        assert_eq!(headroom(Some(29), 28), Some(1));
        assert_eq!(headroom(Some(29), 40), Some(0));
    }
}
