//! Ground truth for the checkers, read off the world without changing it: each instance's
//! `InstanceTruth`, every live resource, and the refreshes that rebuild only what changed.

use aws_backend::port::{InstanceState, Tags};

use super::{Segment, World};
use crate::truth::{
    InstanceTruth, InstanceTruths, LiveResource, LiveResources, ResourceKind, StateInterval, TruthEntry,
};

impl World {
    fn truth(&self, r: usize, i: usize) -> InstanceTruth {
        let region = &self.regions[r];
        let inst = &region.instances[i];
        let now = self.now_ms;
        let past: Vec<&Segment> = inst.timeline.iter().filter(|s| s.from_ms <= now).collect();
        let intervals = past
            .iter()
            .enumerate()
            .map(|(k, seg)| StateInterval {
                state: seg.state,
                from_ms: seg.from_ms,
                to_ms: past.get(k + 1).map(|next| next.from_ms),
                reason_code: seg.reason.map(str::to_string),
            })
            .collect();
        let (network_bytes_in, network_bytes_out) = inst.bytes_until(now);
        let (cloudwatch_bytes_in, cloudwatch_bytes_out) = self.cloudwatch_bytes(inst);
        InstanceTruth {
            region: region.label.clone(),
            availability_zone: region.azs[usize::from(inst.az)].clone(),
            instance_id: inst.id.to_string(),
            volume_id: inst.volume_id.clone(),
            instance_type: inst.spec.name.to_string(),
            vcpus: inst.spec.vcpus,
            memory_mib: inst.spec.memory_mib,
            client_token: inst.client_token.to_string(),
            key_name: inst.key_name.clone(),
            security_group_ids: inst.group_ids.clone(),
            tags: inst.tags.to_tags(),
            volume_tags: inst.volume_tags.to_tags(),
            launch_time_unix_ms: inst.launched_ms,
            state: inst.state_at(now),
            intervals,
            running_ms: inst.running_ms_until(now),
            network_bytes_in,
            network_bytes_out,
            cloudwatch_bytes_in,
            cloudwatch_bytes_out,
            shown: inst.shown.clone(),
            root_volume_gib: inst.root_volume_gib,
            guest: inst.guest.clone(),
        }
    }

    pub(crate) fn instance_truth(&self, instance_id: &str) -> Option<InstanceTruth> {
        self.find_instance(instance_id).map(|(r, i)| self.truth(r, i))
    }

    /// Brings `truths` up to the present: rebuilds the instances a call changed since its last
    /// refresh, moves the time-dependent figures of those still changing on by themselves, adds
    /// the instances launched since, and leaves the rest. `note` is taken again of every truth
    /// that changed.
    pub(crate) fn refresh_truths<N>(&self, truths: &mut InstanceTruths<N>, mut note: impl FnMut(&InstanceTruth) -> N) {
        let now = self.now_ms;
        let seen_seq = truths.seen_seq;
        truths.regions.resize_with(self.regions.len(), Vec::new);
        for (r, (region, entries)) in self.regions.iter().zip(&mut truths.regions).enumerate() {
            for (i, inst) in region.instances.iter().enumerate() {
                match entries.get_mut(i) {
                    None => {
                        let truth = self.truth(r, i);
                        let note = note(&truth);
                        entries.push(TruthEntry { truth, note, settled: inst.settled_by(now) });
                    }
                    Some(entry) if inst.changed_seq > seen_seq => {
                        entry.truth = self.truth(r, i);
                        entry.note = note(&entry.truth);
                        entry.settled = inst.settled_by(now);
                    }
                    Some(entry) if !entry.settled => {
                        inst.advance_truth(&mut entry.truth, now);
                        (entry.truth.cloudwatch_bytes_in, entry.truth.cloudwatch_bytes_out) =
                            self.cloudwatch_bytes(inst);
                        entry.note = note(&entry.truth);
                        entry.settled = inst.settled_by(now);
                    }
                    Some(_) => {}
                }
            }
        }
        truths.seen_seq = self.truth_seq;
    }

    /// Brings `live` up to the present: drops what stopped existing, and builds (taking `note`
    /// of) what came or changed since its last refresh; key pairs and groups are looked at only
    /// in regions where one came, went or was tagged.
    pub(crate) fn refresh_live<N>(&self, live: &mut LiveResources<N>, mut note: impl FnMut(&LiveResource) -> N) {
        let now = self.now_ms;
        let seen_seq = live.seen_seq;
        live.regions.resize_with(self.regions.len(), Default::default);
        for (region, cached) in self.regions.iter().zip(&mut live.regions) {
            let mut noted = |kind, id: &str, name: &str, tags: Tags| {
                let resource = LiveResource {
                    region: region.label.clone(),
                    kind,
                    id: id.to_string(),
                    name: name.to_string(),
                    tags,
                };
                let n = note(&resource);
                (resource, n)
            };
            for (i, inst) in region.instances.iter().enumerate() {
                let exists = inst.state_at(now) != InstanceState::Terminated;
                let known = cached.instances.contains_key(&i);
                if exists && (!known || inst.changed_seq > seen_seq) {
                    let pair = [
                        noted(ResourceKind::Instance, &inst.id, "", inst.tags.to_tags()),
                        noted(ResourceKind::Volume, &inst.volume_id, "", inst.volume_tags.to_tags()),
                    ];
                    cached.instances.insert(i, pair);
                } else if !exists && known {
                    cached.instances.remove(&i);
                }
            }
            if region.resources_seq > seen_seq {
                cached.key_pairs.retain(|name, _| region.key_pairs.contains_key(name));
                for (name, kp) in &region.key_pairs {
                    if kp.changed_seq > seen_seq || !cached.key_pairs.contains_key(name) {
                        let entry = noted(ResourceKind::KeyPair, &kp.id, name, kp.tags.clone());
                        cached.key_pairs.insert(name.clone(), entry);
                    }
                }
                cached.groups.retain(|id, _| region.groups.contains_key(id));
                for (id, g) in region.groups.iter().filter(|(_, g)| !g.is_default) {
                    if g.changed_seq > seen_seq || !cached.groups.contains_key(id) {
                        let entry = noted(ResourceKind::SecurityGroup, id, &g.name, g.tags.clone());
                        cached.groups.insert(id.clone(), entry);
                    }
                }
            }
        }
        live.seen_seq = self.truth_seq;
    }

    pub(crate) fn all_instance_truths(&self) -> Vec<InstanceTruth> {
        let mut out = Vec::new();
        for (r, region) in self.regions.iter().enumerate() {
            out.extend((0..region.instances.len()).map(|i| self.truth(r, i)));
        }
        out
    }

    pub(crate) fn live_resources(&self) -> Vec<LiveResource> {
        let now = self.now_ms;
        let mut out = Vec::new();
        for region in &self.regions {
            let live = |kind, id: &str, name: &str, tags: Tags| LiveResource {
                region: region.label.clone(),
                kind,
                id: id.to_string(),
                name: name.to_string(),
                tags,
            };
            for inst in &region.instances {
                if inst.state_at(now) != InstanceState::Terminated {
                    out.push(live(ResourceKind::Instance, &inst.id, "", inst.tags.to_tags()));
                    out.push(live(ResourceKind::Volume, &inst.volume_id, "", inst.volume_tags.to_tags()));
                }
            }
            for (name, kp) in &region.key_pairs {
                out.push(live(ResourceKind::KeyPair, &kp.id, name, kp.tags.clone()));
            }
            for (id, g) in &region.groups {
                if !g.is_default {
                    out.push(live(ResourceKind::SecurityGroup, id, &g.name, g.tags.clone()));
                }
            }
        }
        out
    }
}
