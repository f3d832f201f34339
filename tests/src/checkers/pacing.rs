//! Pacing: the backend never sends more calls than EC2's buckets allow, so EC2 never refuses
//! one for an empty bucket (`RequestLimitExceeded` drawn at random, as other tenants of the
//! account cause, is a fault and does not count). For `RESTART_ALLOWANCE_MS` after a restart
//! it may: a new process's buckets start full while EC2's may still be drained.

use super::{Context, Violation, names};

/// How long after a restart bucket throttles are forgiven: longer than any bucket takes to
/// refill from empty (mutating: 50 tokens at 5 a second, 10 s).
pub const RESTART_ALLOWANCE_MS: u64 = 30_000;

/// Checks the simulator's log of calls refused for an empty bucket.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let throttles = ctx.sim.bucket_throttles();
    let unforgiven: Vec<_> = throttles
        .iter()
        .filter(|(at, _, _)| {
            !ctx.downtimes.iter().any(|d| (d.from_unix_ms..=d.to_unix_ms + RESTART_ALLOWANCE_MS).contains(at))
        })
        .collect();
    match unforgiven.first() {
        None => Vec::new(),
        Some((at, region, op)) => vec![Violation::safety(
            names::PACING,
            format!(
                "EC2 refused {} calls for an empty bucket, the first a {} in {region} at {at}: our buckets let more through than EC2's",
                unforgiven.len(),
                op.name()
            ),
        )],
    }
}
