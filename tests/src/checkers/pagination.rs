//! Pagination: every listing is read to its last page. EC2 may answer fewer items than
//! `MaxResults`, even none, while more remain, and only a missing `NextToken` ends a listing
//! (EC2 API Reference, "Pagination"); a backend that stops early misses instances, groups and
//! types it then believes gone or never made. Every token the simulator hands out must be
//! presented by a later call, unless the backend went down meanwhile.

use super::{Context, Violation, names};

/// How long a token may wait for its page: the pacer's waits and retries between pages.
pub const FOLLOW_WITHIN_MS: u64 = 10 * 60_000;

/// Checks the simulator's log of tokens handed out and never presented.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let unfollowed: Vec<_> = ctx
        .sim
        .unfollowed_page_tokens()
        .into_iter()
        .filter(|(at, _, _)| at.saturating_add(FOLLOW_WITHIN_MS) < ctx.now_unix_ms)
        // A listing cut off by a crash is not a listing abandoned.
        .filter(|(at, _, _)| !ctx.downtimes.iter().any(|d| d.overlaps(*at, at.saturating_add(FOLLOW_WITHIN_MS))))
        .collect();
    match unfollowed.first() {
        None => Vec::new(),
        Some((at, region, op)) => vec![Violation::safety(
            names::PAGINATION,
            format!(
                "{} listings stopped before their last page, the first a {} in {region} whose NextToken of {at} was never presented",
                unfollowed.len(),
                op.name()
            ),
        )],
    }
}
