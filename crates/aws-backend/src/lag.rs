//! EC2's ordinary lags, learned per region from what its answers show, so that the backend waits
//! them out for free instead of discovering them by failing mutating calls, which spend the
//! scarcest tokens EC2 has (RunInstances 5 + 2/s, mutating 50 + 5/s).
//!
//! Two lags (shared/EC2-FACTS.md): a key pair or security group just created is not yet usable
//! by other calls (eventual consistency, seconds); a security group stays "in use"
//! (`DependencyViolation`) for seconds to tens of seconds after its instance terminated, until
//! the network interface is released.
//!
//! Each estimate is a high quantile kept by a simple rule: a call that still met the lag raises
//! the estimate to the time at which the call finally succeeded (an upper bound of that lag); a
//! call that succeeded at once lowers it by 1/64. Between the two, a few calls in a hundred
//! meet the lag, and is retried as before: the estimate only saves calls, correctness never
//! rests on it. Bounds keep a strange answer from making the backend wait minutes, or never.
//! Everything is in the injected clock's milliseconds; nothing here reads the wall clock.

use std::collections::BTreeMap;
use std::sync::Mutex;

use backend_api::RegionLabel;

use crate::pacing::lock;

/// Which lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lag {
    /// From creating a key pair or security group to its being usable by another call.
    Visibility,
    /// From seeing an instance terminated to its security group being deletable.
    Dependency,
}

impl Lag {
    /// (initial, least, most) estimate in ms. The initial ones are low: a region without the
    /// lag (moto) should not pay for it, and one that has it teaches the estimate with its first
    /// failed calls.
    fn bounds(self) -> (u64, u64, u64) {
        match self {
            Lag::Visibility => (500, 200, 10_000),
            Lag::Dependency => (2_000, 1_000, 120_000),
        }
    }
}

/// One learned lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    ms: u64,
    least: u64,
    most: u64,
}

impl Estimate {
    fn new(lag: Lag) -> Self {
        let (ms, least, most) = lag.bounds();
        Self { ms, least, most }
    }

    /// How long to wait, from the start of the lag, before the call that depends on it.
    pub fn wait_ms(&self) -> u64 {
        self.ms
    }

    /// Learns from one call made `elapsed_ms` after the lag began and succeeding then; `met`
    /// says whether earlier tries of it met the lag (and failed).
    pub fn learn(&mut self, elapsed_ms: u64, met: bool) {
        self.ms = if met { self.ms.max(elapsed_ms) } else { self.ms - self.ms / 64 };
        self.ms = self.ms.clamp(self.least, self.most);
    }
}

/// The estimates of every region.
#[derive(Debug, Default)]
pub struct Lags {
    by_region: Mutex<BTreeMap<(RegionLabel, Lag), Estimate>>,
}

impl Lags {
    /// How long to wait for `lag` in `region`.
    pub fn wait_ms(&self, region: &RegionLabel, lag: Lag) -> u64 {
        lock(&self.by_region).get(&(region.clone(), lag)).map_or(lag.bounds().0, Estimate::wait_ms)
    }

    /// See [`Estimate::learn`].
    pub fn learn(&self, region: &RegionLabel, lag: Lag, elapsed_ms: u64, met: bool) {
        lock(&self.by_region).entry((region.clone(), lag)).or_insert_with(|| Estimate::new(lag)).learn(elapsed_ms, met);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_lag_raises_the_estimate_and_quick_successes_lower_it_within_bounds() {
        let mut e = Estimate::new(Lag::Visibility);
        assert_eq!(e.wait_ms(), 500);
        e.learn(2_500, true);
        assert_eq!(e.wait_ms(), 2_500);
        e.learn(2_500, false);
        assert_eq!(e.wait_ms(), 2_500 - 2_500 / 64);
        e.learn(3_600_000, true);
        assert_eq!(e.wait_ms(), 10_000, "bounded above");
        for _ in 0..1_000 {
            e.learn(0, false);
        }
        assert_eq!(e.wait_ms(), 200, "bounded below");
    }

    #[test]
    fn under_a_uniform_lag_the_estimate_meets_it_rarely() {
        // Lags uniform in 0..2000 ms, a deterministic sequence: count the calls that meet it.
        let mut e = Estimate::new(Lag::Visibility);
        let mut met = 0;
        for i in 0..10_000u64 {
            let lag = (i * 7_919) % 2_000;
            let wait = e.wait_ms();
            let hit = lag > wait;
            met += u64::from(hit);
            e.learn(if hit { lag } else { wait }, hit);
        }
        assert!(met < 500, "{met} of 10000 calls met the lag");
    }

    #[test]
    fn regions_learn_apart() {
        let lags = Lags::default();
        let (a, b) = (RegionLabel::new("us-east-1").expect("valid"), RegionLabel::new("eu-west-1").expect("valid"));
        lags.learn(&a, Lag::Dependency, 40_000, true);
        assert_eq!(lags.wait_ms(&a, Lag::Dependency), 40_000);
        assert_eq!(lags.wait_ms(&b, Lag::Dependency), 2_000);
        assert_eq!(lags.wait_ms(&a, Lag::Visibility), 500);
    }
}
