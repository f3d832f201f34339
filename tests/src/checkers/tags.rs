//! Tags: everything the backend creates carries our owner tag and the grant tag of one of the
//! workload's grants, from creation (the poller, recovery and the reaper find resources by
//! these tags alone, and so do the other checkers: an untagged resource would be invisible).

use aws_backend::port::Tags;
use aws_backend::{GRANT_TAG, OWNER_TAG};
use backend_api::GrantId;

use super::{Context, Violation, names};
use crate::fixture::OWNER;

/// What `tags` lack, if anything; `grant_of` names the workload's grant a tag set names. An
/// instance's answer is worked out when its tags change ([`super::InstanceNote`]).
pub fn missing(grant_of: impl Fn(&Tags) -> Option<GrantId>, tags: &Tags) -> Option<String> {
    if tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER) {
        return Some(format!("no {OWNER_TAG}={OWNER}"));
    }
    match tags.get(GRANT_TAG) {
        None => Some(format!("no {GRANT_TAG}")),
        Some(_) if grant_of(tags).is_none() => Some(format!("a {GRANT_TAG} naming no grant of the workload")),
        Some(_) => None,
    }
}

/// Checks every instance ever launched and every live resource.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (instance, note) in ctx.instances.iter() {
        for (what, missing) in
            [("instance", &note.instance_tags_missing), ("volume of instance", &note.volume_tags_missing)]
        {
            if let Some(why) = missing {
                violations.push(Violation::safety(names::TAGS, format!("{what} {} has {why}", instance.instance_id)));
            }
        }
    }
    for (resource, note) in ctx.live.iter() {
        if let Some(why) = &note.tags_missing {
            violations.push(Violation::safety(
                names::TAGS,
                format!("{:?} {} ({}) has {why}", resource.kind, resource.id, resource.name),
            ));
        }
    }
    violations
}
