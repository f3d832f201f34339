//! Security groups: CreateSecurityGroup, AuthorizeSecurityGroupIngress (and which CIDRs EC2
//! accepts), DescribeSecurityGroups and DeleteSecurityGroup, the deleted groups Describe still
//! lists for a while, and the rules checkers read back.

use std::collections::BTreeSet;

use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Filter, Operation, Page, PageRequest,
    SecurityGroupInfo, Tags, codes,
};
use backend_api::RegionLabel;

use super::filters::{matches, parse_filters};
use super::tags::validate_tags;
use super::{About, Group, World, audit_filters, audit_next_token, audit_page, draw, err, extra_codes, new_id};
use crate::audit::op_tag;
use crate::consistency::{self, LagKind};
use crate::pagination;

/// An IPv4 (`CidrIp`, prefix up to 32) or IPv6 (`CidrIpv6`, up to 128) range.
fn valid_cidr(cidr: &str) -> bool {
    let Some((ip, prefix)) = cidr.split_once('/') else { return false };
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

impl World {
    pub(crate) fn create_security_group(
        &mut self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        let op = Operation::CreateSecurityGroup;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.group_name);
        self.audit.str(&req.description);
        self.audit.tags(&req.tags);
        self.expose(req.tags.values().map(String::as_str).chain([req.description.as_str()]));
        let result = self.serve(op, region, About::Tags(&req.tags), |w, r| w.create_security_group_in(r, &req));
        self.audit.outcome(&result, |a, id| a.str(id));
        result
    }

    fn create_security_group_in(&mut self, r: usize, req: &CreateSecurityGroupRequest) -> Result<String, Ec2Error> {
        let op = Operation::CreateSecurityGroup;
        let name = &req.group_name;
        if name.is_empty() || name.len() > 255 || !name.is_ascii() || name.starts_with("sg-") {
            return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("Invalid security group name {name:?}")));
        }
        if req.description.is_empty() {
            return Err(err(
                op,
                extra_codes::MISSING_PARAMETER,
                "The request must contain the parameter GroupDescription",
            ));
        }
        validate_tags(op, &req.tags)?;
        // A named VPC must exist; without one the group goes to the default VPC.
        let vpc_id = match &req.vpc_id {
            Some(vpc) if self.regions[r].networks.has_vpc(vpc) => vpc.clone(),
            Some(vpc) => return Err(err(op, codes::VPC_NOT_FOUND, format!("The vpc ID '{vpc}' does not exist"))),
            None => {
                self.account.default_vpc(op, &self.regions[r].label)?;
                self.regions[r].networks.default_vpc_id.clone().unwrap_or_default()
            }
        };
        if self.regions[r].group_names.contains_key(name) || self.deleted_group_lingers(r, name) {
            return Err(err(op, codes::GROUP_DUPLICATE, format!("The security group '{name}' already exists")));
        }
        let id = new_id(&mut self.rng, "sg");
        let tag_view = self.new_tag_view(&id, &Tags::new());
        let visible_at_ms =
            self.now_ms + draw(&mut self.rng, self.faults.visibility_delay_ms_min, self.faults.visibility_delay_ms_max);
        let changed_seq = self.next_seq();
        let region = &mut self.regions[r];
        region.resources_seq = changed_seq;
        region.group_names.insert(name.clone(), id.clone());
        region.groups.insert(
            id.clone(),
            Group {
                name: name.clone(),
                description: req.description.clone(),
                tags: req.tags.clone(),
                tag_view,
                visible_at_ms,
                rules: BTreeSet::new(),
                users: Vec::new(),
                is_default: false,
                vpc_id,
                changed_seq,
            },
        );
        Ok(id)
    }

    /// The group `id` if it is visible now, else EC2's error for it.
    pub(super) fn visible_group(&self, op: Operation, r: usize, id: &str) -> Result<&Group, Ec2Error> {
        if !id.starts_with("sg-") {
            return Err(err(op, extra_codes::GROUP_ID_MALFORMED, format!("Invalid id: \"{id}\"")));
        }
        self.regions[r]
            .groups
            .get(id)
            .filter(|g| self.now_ms >= g.visible_at_ms)
            .ok_or_else(|| err(op, codes::GROUP_NOT_FOUND, format!("The security group '{id}' does not exist")))
    }

    pub(crate) fn authorize_ingress(
        &mut self,
        region: &RegionLabel,
        req: AuthorizeIngressRequest,
    ) -> Result<(), Ec2Error> {
        let op = Operation::AuthorizeSecurityGroupIngress;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.group_id);
        self.audit.u64(u64::from(req.port));
        self.audit.strs(&req.cidrs);
        let result = self.serve(op, region, About::Group(&req.group_id), |w, r| {
            w.visible_group(op, r, &req.group_id)?;
            if req.cidrs.is_empty() {
                return Err(err(op, extra_codes::MISSING_PARAMETER, "The request must contain an IP range"));
            }
            if let Some(bad) = req.cidrs.iter().find(|c| !valid_cidr(c)) {
                return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("CIDR block {bad} is malformed")));
            }
            let Some(group) = w.regions[r].groups.get_mut(&req.group_id) else {
                return Err(err(
                    op,
                    codes::GROUP_NOT_FOUND,
                    format!("The security group '{}' does not exist", req.group_id),
                ));
            };
            if let Some(dup) = req.cidrs.iter().find(|c| group.rules.contains(&(req.port, (*c).clone()))) {
                return Err(err(
                    op,
                    codes::PERMISSION_DUPLICATE,
                    format!(
                        "the specified rule \"peer: {dup}, TCP, from port: {0}, to port: {0}, ALLOW\" already exists",
                        req.port
                    ),
                ));
            }
            group.rules.extend(req.cidrs.iter().map(|c| (req.port, c.clone())));
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    pub(crate) fn describe_security_groups(
        &mut self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        let op = Operation::DescribeSecurityGroups;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&group_ids);
        audit_filters(&mut self.audit, &filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<SecurityGroupInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = || pagination::fingerprint(op, &[&region, &group_ids, &filters]);
            let window = pagination::window(op, &page, !group_ids.is_empty(), fingerprint)?;
            let filters = parse_filters(op, &filters, &["group-name", "group-id", "description"])?;
            let mut ids: Vec<&str> = Vec::new();
            let now = w.now_ms;
            if group_ids.is_empty() {
                ids.extend(
                    w.regions[r].groups.iter().filter(|(_, g)| now >= g.visible_at_ms).map(|(id, _)| id.as_str()),
                );
                // Deleted groups linger in listings (not in lookups by id) for a while.
                ids.extend(
                    w.regions[r]
                        .deleted_groups
                        .iter()
                        .filter(|(_, (until, _))| now < *until)
                        .map(|(id, _)| id.as_str()),
                );
                ids.sort_unstable();
            } else {
                for id in &group_ids {
                    w.visible_group(op, r, id)?;
                    ids.push(id);
                }
                ids.sort_unstable();
                ids.dedup();
            }
            let groups = &w.regions[r].groups;
            let deleted = &w.regions[r].deleted_groups;
            let answer: Vec<(String, SecurityGroupInfo)> = ids
                .into_iter()
                .filter_map(|id| {
                    groups.get_key_value(id).or_else(|| deleted.get_key_value(id).map(|(k, (_, g))| (k, g)))
                })
                .filter(|(id, g)| {
                    matches(&filters, consistency::filter_tags(&g.tags, &g.tag_view, now), |f| match f {
                        "group-name" => Some(g.name.as_str()),
                        "group-id" => Some(id.as_str()),
                        "description" => Some(g.description.as_str()),
                        _ => None,
                    })
                })
                .map(|(id, g)| {
                    (
                        id.clone(),
                        SecurityGroupInfo { group_id: id.clone(), group_name: g.name.clone(), tags: g.tags.clone() },
                    )
                })
                .collect();
            Ok(w.page_of(window, answer, fingerprint))
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for g in &page.items {
                a.str(&g.group_id);
                a.str(&g.group_name);
                a.tags(&g.tags);
            }
        });
        result
    }

    pub(crate) fn delete_security_group(&mut self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteSecurityGroup;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(group_id);
        let result = self.serve(op, region, About::Group(group_id), |w, r| {
            let group = w.visible_group(op, r, group_id)?;
            if group.is_default {
                return Err(err(
                    op,
                    extra_codes::CANNOT_DELETE,
                    format!("the specified group: \"{group_id}\" name: \"default\" cannot be deleted by a user"),
                ));
            }
            let now = w.now_ms;
            let instances = &w.regions[r].instances;
            if group.users.iter().any(|&i| instances[i].holds_groups(now)) {
                return Err(err(
                    op,
                    codes::DEPENDENCY_VIOLATION,
                    format!("resource {group_id} has a dependent object"),
                ));
            }
            let seq = w.next_seq();
            let region = &mut w.regions[r];
            if let Some(group) = region.groups.remove(group_id) {
                region.group_names.remove(&group.name);
                region.resources_seq = seq;
                w.linger_group(r, group_id, group);
            }
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    /// Keeps a group deleted now listed for its lingering lag.
    fn linger_group(&mut self, r: usize, id: &str, group: Group) {
        let now = self.now_ms;
        let lag = consistency::lag_ms(self.seed, LagKind::Deleted, id, now, self.faults.deleted_visible_ms_max);
        let deleted = &mut self.regions[r].deleted_groups;
        deleted.retain(|_, (until, _)| now < *until);
        if lag > 0 {
            deleted.insert(id.to_string(), (now + lag, group));
        }
    }

    /// True while a deleted group named `name` still lingers (its name is taken).
    fn deleted_group_lingers(&self, r: usize, name: &str) -> bool {
        self.regions[r].deleted_groups.values().any(|(until, g)| g.name == name && self.now_ms < *until)
    }

    /// The ingress rules of the group `group_id` as (port, CIDR), when it exists.
    pub(crate) fn ingress_of(&self, group_id: &str) -> Option<Vec<(u16, String)>> {
        self.regions.iter().find_map(|region| region.groups.get(group_id)).map(|g| g.rules.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        assert!(valid_cidr("0.0.0.0/0"));
        assert!(valid_cidr("10.1.2.3/32"));
        assert!(!valid_cidr("10.1.2.3/33"));
        assert!(!valid_cidr("10.1.2/8"));
        assert!(valid_cidr("::/0"));
        assert!(valid_cidr("2001:db8::/32"));
        assert!(!valid_cidr("2001:db8::/129"));
        assert!(!valid_cidr("2001:db8::/+3"));
    }
}
