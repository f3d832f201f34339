//! Instances once launched: finding one (by id in any region, or visible in one),
//! DescribeInstances (and the states it showed, which checkers read) and TerminateInstances.

use std::cmp::Reverse;

use aws_backend::port::{
    Ec2Error, Filter, InstanceInfo, InstanceState, InstanceStateChange, Operation, Page, PageRequest, codes,
};
use backend_api::RegionLabel;

use super::filters::{FilterName, matches, parse_filters};
use super::{About, World, audit_filters, audit_next_token, audit_page, draw, err, extra_codes, reasons};
use crate::audit::op_tag;
use crate::consistency::{self, LagKind};
use crate::pagination;

impl World {
    pub(super) fn find_instance(&self, instance_id: &str) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(r, region)| region.instance_ids.get(instance_id).map(|&i| (r, i)))
    }

    /// The instance `id` if DescribeInstances can see it now, else EC2's error for it.
    pub(super) fn visible_instance(&self, op: Operation, r: usize, id: &str) -> Result<usize, Ec2Error> {
        if !id.starts_with("i-") {
            return Err(err(op, extra_codes::INSTANCE_ID_MALFORMED, format!("Invalid id: \"{id}\"")));
        }
        let region = &self.regions[r];
        region
            .instance_ids
            .get(id)
            .copied()
            .filter(|&i| region.instances[i].describable(self.now_ms, self.faults.terminated_visible_ms))
            .ok_or_else(|| err(op, codes::INSTANCE_NOT_FOUND, format!("The instance ID '{id}' does not exist")))
    }

    pub(crate) fn describe_instances(
        &mut self,
        region: &RegionLabel,
        instance_ids: &[String],
        filters: &[Filter],
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        let op = Operation::DescribeInstances;
        self.presented(&page);
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(instance_ids);
        audit_filters(&mut self.audit, filters);
        audit_page(&mut self.audit, &page);
        let result: Result<Page<InstanceInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let fingerprint = || pagination::fingerprint(op, &[&region, &instance_ids, &filters]);
            let window = pagination::window(op, &page, !instance_ids.is_empty(), fingerprint)?;
            let fields = [
                "instance-state-name",
                "key-name",
                "instance-id",
                "instance-type",
                "client-token",
                "availability-zone",
            ];
            let filters = parse_filters(op, filters, &fields)?;
            let by_tag = filters.iter().any(|f| matches!(f.name, FilterName::Tag(_) | FilterName::TagKey));
            let (now, visible_ms) = (w.now_ms, w.faults.terminated_visible_ms);
            // The working lists of the last call, emptied (see `describe_scratch`); a call that
            // fails leaves them behind, and the next one starts afresh.
            let (mut handles, mut answer) = std::mem::take(&mut w.describe_scratch);
            handles.clear();
            answer.clear();
            if instance_ids.is_empty() {
                let region = &w.regions[r];
                handles.extend(
                    region.listed.iter().copied().filter(|&i| region.instances[i].describable(now, visible_ms)),
                );
            } else {
                for id in instance_ids {
                    handles.push(w.visible_instance(op, r, id)?);
                }
                handles.sort_unstable();
                handles.dedup();
            }
            let region = &w.regions[r];
            let azs = &region.azs;
            // Keyed by handle, which is creation order: a page resumes after the last
            // instance it held, and instances launched meanwhile come later. Only what the page
            // keeps is described: a short page of a long listing costs its own length.
            for &i in &handles {
                let inst = &region.instances[i];
                let hidden = by_tag && now < inst.hidden_from_tag_filters_until_ms;
                let described = inst.described_segment(now);
                let shown = !hidden
                    && matches(&filters, consistency::filter_tags(&inst.tags, &inst.tag_view, now), |f| match f {
                        "instance-state-name" => Some(described.state.name()),
                        "key-name" => Some(inst.key_name.as_str()),
                        "instance-id" => Some(inst.id.as_str()),
                        "instance-type" => Some(inst.spec.name),
                        "client-token" => Some(inst.client_token.as_str()),
                        "availability-zone" => Some(azs[usize::from(inst.az)].as_str()),
                        _ => None,
                    });
                if shown {
                    answer.push((i, described));
                }
            }
            let mut page = w.page_of_keyed(window, answer, |(i, _)| format!("{i:010}"), fingerprint);
            // Only what the page holds counts as shown.
            let mut items = Vec::with_capacity(page.items.len());
            for (i, described) in page.items.drain(..) {
                let region = &mut w.regions[r];
                let inst = &mut region.instances[i];
                let info = inst.info_of(described);
                if inst.shown.last().is_none_or(|&(_, s)| s != info.state) {
                    inst.shown.push((now, info.state));
                    w.truth_seq += 1;
                    inst.changed_seq = w.truth_seq;
                }
                items.push(info);
            }
            w.describe_scratch = (handles, page.items);
            Ok(Page { items, next_token: page.next_token })
        });
        self.audit.outcome(&result, |a, page| {
            audit_next_token(a, page);
            for info in &page.items {
                a.instance(info);
            }
        });
        result
    }

    pub(crate) fn terminate_instances(
        &mut self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        let op = Operation::TerminateInstances;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&instance_ids);
        let about = About::Instances(&instance_ids);
        let result: Result<Vec<InstanceStateChange>, Ec2Error> = self.serve(op, region, about, |w, r| {
            if instance_ids.is_empty() {
                return Err(err(
                    op,
                    extra_codes::MISSING_PARAMETER,
                    "The request must contain the parameter InstanceId",
                ));
            }
            // Every id must be visible before anything changes: EC2 fails the whole call.
            let mut handles = Vec::with_capacity(instance_ids.len());
            for id in &instance_ids {
                let i = w.visible_instance(op, r, id)?;
                if !handles.contains(&i) {
                    handles.push(i);
                }
            }
            let now = w.now_ms;
            w.regions[r].terminate_instances_resource.take_tokens(handles.len() as u64);
            let mut changes = Vec::with_capacity(handles.len());
            for i in handles {
                let previous_state = w.regions[r].instances[i].state_at(now);
                let current_state = match previous_state {
                    InstanceState::ShuttingDown | InstanceState::Terminated => previous_state,
                    _ => {
                        let delay =
                            draw(&mut w.rng, w.faults.termination_delay_ms_min, w.faults.termination_delay_ms_max);
                        let stale_ms = consistency::lag_ms(
                            w.seed,
                            LagKind::StaleState,
                            &w.regions[r].instances[i].id,
                            now,
                            w.faults.stale_state_ms_max,
                        );
                        let region = &mut w.regions[r];
                        let before = region.instances[i].segment_at(now);
                        if stale_ms > 0 {
                            region.instances[i].stale = Some((now + stale_ms, before));
                        }
                        let planned =
                            region.instances[i].plan_exit(now, reasons::USER_INITIATED_SHUTDOWN, false, delay);
                        w.truth_seq += 1;
                        region.instances[i].changed_seq = w.truth_seq;
                        if let Some(t) = planned {
                            region.expiry.push(Reverse((t.saturating_add(w.faults.terminated_visible_ms), i)));
                        }
                        region.instances[i].state_at(now)
                    }
                };
                changes.push(InstanceStateChange {
                    instance_id: w.regions[r].instances[i].id.to_string(),
                    previous_state,
                    current_state,
                });
            }
            Ok(changes)
        });
        self.audit.outcome(&result, |a, list| {
            a.u64(list.len() as u64);
            for c in list {
                a.str(&c.instance_id);
                a.str(c.previous_state.name());
                a.str(c.current_state.name());
            }
        });
        result
    }
}
