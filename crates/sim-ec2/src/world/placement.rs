//! Where an instance may go: the catalogue (DescribeInstanceTypes), the zones offering each type
//! (DescribeInstanceTypeOfferings), the subnets (DescribeSubnets), the On-Demand vCPU quota a
//! launch must fit, and capacity shortages, drawn or targeted (see `crate::placement`).

use std::collections::BTreeMap;

use aws_backend::port::{
    Ec2Error, Filter, InstanceState, InstanceTypeInfo, InstanceTypeOffering, Operation, Page, PageRequest, SubnetInfo,
    Tags, codes,
};
use backend_api::RegionLabel;

use super::filters::{glob, matches, parse_filters};
use super::{About, World, audit_filters, audit_next_token, audit_page, err};
use crate::audit::op_tag;
use crate::catalogue::{self, InstanceTypeSpec};
use crate::config::SimError;
use crate::pagination;

impl World {
    pub(crate) fn describe_instance_types(
        &mut self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        let op = Operation::DescribeInstanceTypes;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&families);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceTypeInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, _| {
            let fingerprint = || pagination::fingerprint(op, &[&region, &families]);
            let window = pagination::window(op, &page, false, fingerprint)?;
            let answer = catalogue::CATALOGUE
                .iter()
                .filter(|spec| families.is_empty() || families.iter().any(|f| f == spec.family()))
                .map(|spec| {
                    let info = InstanceTypeInfo {
                        instance_type: spec.name.to_string(),
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        architecture: spec.architecture,
                    };
                    (spec.name.to_string(), info)
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            Ok(w.page_of(window, answer, fingerprint))
        });
        self.audit.outcome(&result, audit_next_token);
        result
    }

    /// `VcpuLimitExceeded` when launching `spec` would take the region's pending and running
    /// standard-class instances past the account's On-Demand vCPU quota (see `placement`).
    pub(super) fn within_vcpu_quota(&mut self, r: usize, spec: &InstanceTypeSpec, tags: &Tags) -> Result<(), Ec2Error> {
        let quota = self.faults.on_demand_vcpu_quota;
        if quota == u32::MAX || !crate::placement::is_standard_class(spec) {
            return Ok(());
        }
        let now = self.now_ms;
        let region = &self.regions[r];
        // Instances not listed any more terminated over an hour ago: only listed ones can count.
        let used: u64 = region
            .listed
            .iter()
            .map(|&i| &region.instances[i])
            .filter(|inst| {
                matches!(inst.state_at(now), InstanceState::Pending | InstanceState::Running)
                    && crate::placement::is_standard_class(inst.spec)
            })
            .map(|inst| u64::from(inst.spec.vcpus))
            .sum();
        if used + u64::from(spec.vcpus) <= u64::from(quota) {
            return Ok(());
        }
        self.fault(codes::VCPU_LIMIT_EXCEEDED, vec![tags.clone()]);
        Err(crate::placement::vcpu_limit_exceeded(Operation::RunInstances, quota))
    }

    /// `Unsupported` when zone `az` of region `r` does not offer `spec` (see `placement`).
    pub(super) fn offered_in(
        &mut self,
        r: usize,
        spec: &InstanceTypeSpec,
        az: u8,
        tags: &Tags,
    ) -> Result<(), Ec2Error> {
        let gap = self.faults.zone_offering_gap_probability;
        let region = &self.regions[r];
        if self.account.offers(&region.label, spec.name, az, gap) {
            return Ok(());
        }
        let offering: Vec<String> = (0..region.azs.len() as u8)
            .filter(|z| self.account.offers(&region.label, spec.name, *z, gap))
            .map(|z| region.azs[usize::from(z)].clone())
            .collect();
        let e =
            crate::placement::unsupported(Operation::RunInstances, spec.name, &region.azs[usize::from(az)], &offering);
        self.fault(codes::UNSUPPORTED, vec![tags.clone()]);
        Err(e)
    }

    /// Drains `spec`'s pool in zone `az` until `until_ms`, and (as drawn) its neighbouring sizes
    /// or its whole family in that zone: sizes of a family share hosts, so a shortage seldom
    /// stops at one size (see `placement::shortage_sizes`).
    pub(super) fn start_shortage(&mut self, r: usize, spec: &'static InstanceTypeSpec, az: u8, until_ms: u64) {
        let family = self.chance(self.faults.capacity_shortage_family_probability);
        let neighbours = !family && self.chance(self.faults.capacity_shortage_neighbours_probability);
        for size in crate::placement::shortage_sizes(spec, neighbours, family) {
            let slot = self.regions[r].capacity_short_until_ms.entry((size, az)).or_default();
            *slot = (*slot).max(until_ms);
        }
    }

    /// A capacity shortage starting now in the pool of `instance_type` in zone `zone`, as a
    /// random one would: spreading to neighbouring sizes or the family as the knobs draw.
    pub(crate) fn start_capacity_shortage(
        &mut self,
        region: &RegionLabel,
        instance_type: &str,
        zone: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        let spec =
            catalogue::lookup(instance_type).ok_or_else(|| SimError::UnknownInstanceType(instance_type.to_string()))?;
        let az = self.regions[r].azs.iter().position(|z| z == zone).ok_or_else(|| {
            SimError::Config(format!(
                "zone {zone} is not simulated in {region}: use {}",
                self.regions[r].azs.join(", ")
            ))
        })?;
        self.audit.begin(0xF4, region.as_str(), self.now_ms);
        self.audit.str(instance_type);
        self.audit.str(zone);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        self.start_shortage(r, spec, az as u8, until);
        Ok(())
    }

    /// DescribeInstanceTypeOfferings by availability zone: each (type, zone) the region offers,
    /// by type then zone, for `instance_types` (empty: all of the catalogue).
    pub(crate) fn describe_instance_type_offerings(
        &mut self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        let op = Operation::DescribeInstanceTypeOfferings;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&instance_types);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceTypeOffering>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = || pagination::fingerprint(op, &[&region, &instance_types]);
            let window = pagination::window(op, &page, false, fingerprint)?;
            let gap = w.faults.zone_offering_gap_probability;
            let region = &w.regions[r];
            let mut answer = Vec::new();
            for spec in catalogue::CATALOGUE {
                // EC2's instance-type filter takes wildcards, as Describe filters do.
                if !instance_types.is_empty() && !instance_types.iter().any(|p| glob(p, spec.name)) {
                    continue;
                }
                for (z, zone) in region.azs.iter().enumerate() {
                    if w.account.offers(&region.label, spec.name, z as u8, gap) {
                        let offering = InstanceTypeOffering {
                            instance_type: spec.name.to_string(),
                            availability_zone: zone.clone(),
                        };
                        answer.push((format!("{zone}/{}", spec.name), offering));
                    }
                }
            }
            answer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(w.page_of(window, answer, fingerprint))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for o in &page.items {
                a.str(&o.instance_type);
                a.str(&o.availability_zone);
            }
        });
        result
    }

    pub(crate) fn describe_subnets(
        &mut self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        let op = Operation::DescribeSubnets;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&subnet_ids);
        audit_filters(&mut self.audit, &filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<SubnetInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = || pagination::fingerprint(op, &[&region, &subnet_ids, &filters]);
            let window = pagination::window(op, &page, !subnet_ids.is_empty(), fingerprint)?;
            let fields = ["vpc-id", "availability-zone", "subnet-id", "default-for-az"];
            let filters = parse_filters(op, &filters, &fields)?;
            let networks = &w.regions[r].networks;
            for id in &subnet_ids {
                if networks.subnet(id).is_none() {
                    return Err(err(op, codes::SUBNET_NOT_FOUND, format!("The subnet ID '{id}' does not exist")));
                }
            }
            let mut answer: Vec<(String, SubnetInfo)> = networks
                .subnets
                .iter()
                .filter(|s| subnet_ids.is_empty() || subnet_ids.contains(&s.subnet_id))
                .filter(|s| {
                    matches(&filters, &s.tags, |f| match f {
                        "vpc-id" => Some(s.vpc_id.as_str()),
                        "availability-zone" => Some(s.availability_zone.as_str()),
                        "subnet-id" => Some(s.subnet_id.as_str()),
                        "default-for-az" => Some(if s.default_for_az { "true" } else { "false" }),
                        _ => None,
                    })
                })
                .map(|s| (s.subnet_id.clone(), s.clone()))
                .collect();
            answer.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(w.page_of(window, answer, fingerprint))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for s in &page.items {
                a.str(&s.subnet_id);
            }
        });
        result
    }
}
