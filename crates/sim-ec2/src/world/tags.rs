//! Tags: what EC2 accepts of them, CreateTags on every kind of resource, and the tag view a
//! resource starts with, which tag filters read while its tags propagate.

use aws_backend::port::{Ec2Error, InstanceState, Operation, Tags, codes};
use backend_api::RegionLabel;

use super::{About, World, err, extra_codes};
use crate::audit::op_tag;
use crate::consistency::{self, LagKind, TagView};

pub(super) fn validate_tags(op: Operation, tags: &Tags) -> Result<(), Ec2Error> {
    if tags.len() > 50 {
        return Err(err(op, extra_codes::TAG_LIMIT_EXCEEDED, "The maximum number of tags for a resource is 50"));
    }
    for (key, value) in tags {
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
            return Err(err(
                op,
                codes::INVALID_PARAMETER_VALUE,
                format!("Tag {key:?} has an invalid key or value length"),
            ));
        }
        if key.get(..4).is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws:")) {
            return Err(err(
                op,
                codes::INVALID_PARAMETER_VALUE,
                format!("Tag key {key:?}: keys starting with 'aws:' are reserved for internal use"),
            ));
        }
    }
    Ok(())
}

impl World {
    pub(crate) fn create_tags(
        &mut self,
        region: &RegionLabel,
        resource_ids: Vec<String>,
        tags: Tags,
    ) -> Result<(), Ec2Error> {
        let op = Operation::CreateTags;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(&resource_ids);
        self.audit.tags(&tags);
        let result = self.serve(op, region, About::Nothing, |w, r| w.create_tags_in(r, &resource_ids, tags));
        self.audit.outcome(&result, |_, _| {});
        result
    }

    fn create_tags_in(&mut self, r: usize, resource_ids: &[String], tags: Tags) -> Result<(), Ec2Error> {
        let op = Operation::CreateTags;
        enum Target {
            Instance(usize),
            Volume(usize),
            Group(String),
            KeyPair(String),
        }
        validate_tags(op, &tags)?;
        let now = self.now_ms;
        let mut targets = Vec::with_capacity(resource_ids.len());
        for id in resource_ids {
            let region = &self.regions[r];
            let target = if id.starts_with("i-") {
                Target::Instance(self.visible_instance(op, r, id)?)
            } else if id.starts_with("sg-") {
                self.visible_group(op, r, id)?;
                Target::Group(id.clone())
            } else if id.starts_with("vol-") {
                let i = region
                    .volume_ids
                    .get(id.as_str())
                    .copied()
                    .filter(|&i| {
                        now >= region.instances[i].visible_at_ms
                            && region.instances[i].state_at(now) != InstanceState::Terminated
                    })
                    .ok_or_else(|| {
                        err(op, extra_codes::VOLUME_NOT_FOUND, format!("The volume '{id}' does not exist."))
                    })?;
                Target::Volume(i)
            } else if id.starts_with("key-") {
                let name = region
                    .key_pairs
                    .iter()
                    .find(|(_, kp)| kp.id == *id && now >= kp.visible_at_ms)
                    .map(|(name, _)| name.clone())
                    .ok_or_else(|| err(op, codes::KEY_PAIR_NOT_FOUND, format!("The key pair '{id}' does not exist")))?;
                Target::KeyPair(name)
            } else {
                return Err(err(op, extra_codes::INVALID_ID, format!("The ID '{id}' is not valid")));
            };
            targets.push(target);
        }
        let region = &mut self.regions[r];
        let merged_too_big =
            |len: usize, has: &dyn Fn(&str) -> bool| len + tags.keys().filter(|k| !has(k)).count() > 50;
        for target in &targets {
            let too_big = match target {
                Target::Instance(i) => {
                    let existing = &region.instances[*i].tags;
                    merged_too_big(existing.len(), &|k| existing.contains_key(k))
                }
                Target::Volume(i) => {
                    let existing = &region.instances[*i].volume_tags;
                    merged_too_big(existing.len(), &|k| existing.contains_key(k))
                }
                Target::Group(id) => match region.groups.get(id) {
                    Some(g) => merged_too_big(g.tags.len(), &|k| g.tags.contains_key(k)),
                    None => continue,
                },
                Target::KeyPair(name) => match region.key_pairs.get(name) {
                    Some(kp) => merged_too_big(kp.tags.len(), &|k| kp.tags.contains_key(k)),
                    None => continue,
                },
            };
            if too_big {
                return Err(err(
                    op,
                    extra_codes::TAG_LIMIT_EXCEEDED,
                    "The maximum number of tags for a resource is 50",
                ));
            }
        }
        let (seed, tag_lag_max) = (self.seed, self.faults.tag_propagation_ms_max);
        let until = |id: &str| now + consistency::lag_ms(seed, LagKind::Tags, id, now, tag_lag_max);
        for target in targets {
            let existing = match target {
                Target::Instance(i) => {
                    let inst = &mut region.instances[i];
                    let before = inst.tags.clone();
                    consistency::tags_changing(&mut inst.tag_view, &before, now, until(&inst.id));
                    region.instances[i].merge_tags(&tags);
                    self.truth_seq += 1;
                    region.instances[i].changed_seq = self.truth_seq;
                    continue;
                }
                Target::Volume(i) => {
                    region.instances[i].volume_tags.merge(&tags);
                    self.truth_seq += 1;
                    region.instances[i].changed_seq = self.truth_seq;
                    continue;
                }
                Target::Group(id) => region.groups.get_mut(&id).map(|g| {
                    consistency::tags_changing(&mut g.tag_view, &g.tags, now, until(&id));
                    (&mut g.tags, &mut g.changed_seq)
                }),
                Target::KeyPair(name) => region.key_pairs.get_mut(&name).map(|kp| {
                    consistency::tags_changing(&mut kp.tag_view, &kp.tags, now, until(&kp.id));
                    (&mut kp.tags, &mut kp.changed_seq)
                }),
            };
            if let Some((existing, changed_seq)) = existing {
                existing.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.truth_seq += 1;
                *changed_seq = self.truth_seq;
                region.resources_seq = self.truth_seq;
            }
        }
        Ok(())
    }

    /// The tag view of a resource `id` created now with `tags`: tag filters see `nothing`
    /// until its tags propagate (see `consistency`).
    pub(super) fn new_tag_view<T: Clone>(&self, id: &str, nothing: &T) -> TagView<T> {
        let now = self.now_ms;
        let lag = consistency::lag_ms(self.seed, LagKind::Tags, id, now, self.faults.tag_propagation_ms_max);
        let mut view = None;
        consistency::tags_changing(&mut view, nothing, now, now + lag);
        view
    }
}
