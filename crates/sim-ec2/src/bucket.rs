//! EC2's token buckets, in integer milli-tokens so that refills are exact and deterministic.

/// A token bucket that starts full and refills continuously.
///
/// Tokens are kept in thousandths: a refill of `r` tokens per second adds exactly `r`
/// milli-tokens per millisecond, so no rounding ever depends on how often the bucket is read.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    milli: u64,
    capacity_milli: u64,
    refill_per_s: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilling `refill_per_s` tokens per second, as of `now_ms`.
    pub(crate) fn full(capacity: u32, refill_per_s: u32, now_ms: u64) -> Self {
        let capacity_milli = u64::from(capacity) * 1_000;
        Self { milli: capacity_milli, capacity_milli, refill_per_s: u64::from(refill_per_s), last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.last_ms {
            let added = (now_ms - self.last_ms).saturating_mul(self.refill_per_s);
            self.milli = self.milli.saturating_add(added).min(self.capacity_milli);
            self.last_ms = now_ms;
        }
    }

    /// True when at least one whole token is available at `now_ms`.
    pub(crate) fn has_token(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.milli >= 1_000
    }

    /// True when at least `n` whole tokens are available at `now_ms` (always for 0).
    pub(crate) fn has_tokens(&mut self, now_ms: u64, n: u64) -> bool {
        self.refill(now_ms);
        self.milli >= n.saturating_mul(1_000)
    }

    /// Removes `n` tokens; call only after [`TokenBucket::has_tokens`] said yes.
    pub(crate) fn take_tokens(&mut self, n: u64) {
        self.milli = self.milli.saturating_sub(n.saturating_mul(1_000));
    }

    /// Removes one token; call only after [`TokenBucket::has_token`] said yes.
    pub(crate) fn take_token(&mut self) {
        self.milli = self.milli.saturating_sub(1_000);
    }

    /// Whole tokens available at `now_ms`.
    #[cfg(test)]
    pub(crate) fn tokens(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.milli / 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_then_refills_at_the_stated_rate() {
        let mut bucket = TokenBucket::full(5, 2, 0);
        for _ in 0..5 {
            assert!(bucket.has_token(0));
            bucket.take_token();
        }
        assert!(!bucket.has_token(0));
        // Two tokens per second: one token every 500 ms, never early.
        assert!(!bucket.has_token(499));
        assert!(bucket.has_token(500));
        assert_eq!(bucket.tokens(10_000), 5, "refill stops at capacity");
    }

    proptest::proptest! {
        /// Whatever the call pattern, a bucket never grants more than capacity + refill × elapsed.
        #[test]
        fn never_grants_more_than_capacity_plus_refill(gaps in proptest::collection::vec(0u64..700, 1..400)) {
            let mut bucket = TokenBucket::full(5, 2, 0);
            let (mut now, mut granted) = (0u64, 0u64);
            for gap in gaps {
                now += gap;
                if bucket.has_token(now) {
                    bucket.take_token();
                    granted += 1;
                }
                proptest::prop_assert!(granted <= 5 + now * 2 / 1_000);
            }
        }
    }
}
