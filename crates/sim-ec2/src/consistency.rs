//! Eventual consistency beyond existence: tags that reach tag-filtered Describe answers after
//! a lag, Describe answers that show an instance's state from before TerminateInstances for a
//! moment, and deleted security groups and key pairs that stay listed (and keep their name
//! taken) for a while.
//!
//! Source: "Eventual consistency in the Amazon EC2 API",
//! docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html ("the result of an API
//! command you run that affects your Amazon EC2 resources might not be immediately visible to
//! all subsequent commands"), and docs/ec2-facts.md, "Eventual consistency" ("Tags and
//! tag-filtered Describe results propagate after id lookups; states can lag").
//!
//! Every lag is drawn from a hash of the seed, the resource and the instant of the change, not
//! from the PRNG, so that adding these behaviours changed no other draw of a run, and a lag is
//! the same whatever calls come between.

use sha2::{Digest, Sha256};

/// What a lag is for, so that two lags of one resource at one instant differ.
#[derive(Clone, Copy)]
pub(crate) enum LagKind {
    /// Tags set at creation or by CreateTags reaching tag filters.
    Tags,
    /// The state before TerminateInstances still shown.
    StaleState,
    /// A deleted group or key pair still listed, its name still taken.
    Deleted,
}

/// A lag in `[0, max_ms]` for the change of `kind` to resource `id` at `at_ms`.
pub(crate) fn lag_ms(seed: u64, kind: LagKind, id: &str, at_ms: u64, max_ms: u64) -> u64 {
    if max_ms == 0 {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update([kind as u8]);
    h.update(id.as_bytes());
    h.update(at_ms.to_le_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let draw =
        u64::from_le_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7]]);
    draw % (max_ms + 1)
}

/// The tags tag filters still see while newer ones propagate: `(until_ms, tags)`.
pub(crate) type TagView<T> = Option<(u64, T)>;

/// The tags tag-filtered Describe matches at `now`: the older `view` while it lasts, else
/// `current`.
pub(crate) fn filter_tags<'a, T>(current: &'a T, view: &'a TagView<T>, now: u64) -> &'a T {
    match view {
        Some((until, old)) if now < *until => old,
        _ => current,
    }
}

/// Records that the tags change at `now` from `before`, reaching tag filters at `until`: the
/// filters keep seeing `before` (or an older view still in force) until then.
pub(crate) fn tags_changing<T: Clone>(view: &mut TagView<T>, before: &T, now: u64, until: u64) {
    if until <= now {
        return;
    }
    *view = match view.take() {
        Some((old_until, old)) if now < old_until => Some((old_until.max(until), old)),
        _ => Some((until, before.clone())),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_stay_within_their_bound_and_differ_by_change() {
        let lags: Vec<u64> = (0..200).map(|t| lag_ms(7, LagKind::Tags, "i-1", t, 1_000)).collect();
        assert!(lags.iter().all(|l| *l <= 1_000));
        assert!(lags.iter().any(|l| *l != lags[0]), "drawn per change");
        assert_eq!(lag_ms(7, LagKind::Tags, "i-1", 5, 0), 0);
    }

    #[test]
    fn tag_filters_see_the_old_tags_until_the_lag_ends() {
        let mut view: TagView<Vec<&str>> = None;
        tags_changing(&mut view, &vec!["a"], 100, 150);
        let current = vec!["a", "b"];
        assert_eq!(filter_tags(&current, &view, 149), &vec!["a"]);
        assert_eq!(filter_tags(&current, &view, 150), &current);
        // A second change while the first propagates keeps the oldest view, for longer.
        tags_changing(&mut view, &vec!["a", "b"], 120, 200);
        assert_eq!(filter_tags(&current, &view, 199), &vec!["a"]);
    }
}
