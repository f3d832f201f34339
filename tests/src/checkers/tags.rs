//! Tags: everything the backend creates carries our owner tag and the grant tag of one of the
//! workload's grants, from creation (the poller, recovery and the reaper find resources by
//! these tags alone, and so do the other checkers: an untagged resource would be invisible).

use aws_backend::port::Tags;
use aws_backend::{GRANT_TAG, OWNER_TAG};

use super::{Context, Violation, names};
use crate::fixture::OWNER;

fn missing(ctx: &Context<'_>, tags: &Tags) -> Option<String> {
    if tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER) {
        return Some(format!("no {OWNER_TAG}={OWNER}"));
    }
    match tags.get(GRANT_TAG) {
        None => Some(format!("no {GRANT_TAG}")),
        Some(_) if ctx.grant_of(tags).is_none() => Some(format!("a {GRANT_TAG} naming no grant of the workload")),
        Some(_) => None,
    }
}

/// Checks every instance ever launched and every live resource.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for instance in &ctx.instances {
        for (what, tags) in [("instance", &instance.tags), ("volume of instance", &instance.volume_tags)] {
            if let Some(why) = missing(ctx, tags) {
                violations.push(Violation::safety(names::TAGS, format!("{what} {} has {why}", instance.instance_id)));
            }
        }
    }
    for resource in &ctx.live {
        if let Some(why) = missing(ctx, &resource.tags) {
            violations.push(Violation::safety(
                names::TAGS,
                format!("{:?} {} ({}) has {why}", resource.kind, resource.id, resource.name),
            ));
        }
    }
    violations
}
