//! EC2's ordinary lags, learned per region from what its answers show, so that the backend waits
//! them out for free instead of discovering them by failing mutating calls, which spend the
//! scarcest tokens EC2 has (RunInstances 5 + 2/s, mutating 50 + 5/s).
//!
//! Two lags (docs/ec2-facts.md, "Eventual consistency" and "Teardown"): a key pair or security
//! group just created is not yet usable by other calls (eventual consistency, seconds); a security group stays "in use"
//! (`DependencyViolation`) for seconds to tens of seconds after its instance terminated, until
//! the network interface is released. A third, the console output's (see `hostkey`), is kept
//! nearer its middle.
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
    /// From an instance first running to its console output showing the host key (kept near
    /// the 75th percentile with [`Lags::nudge`]: waiting for the slowest guest would delay
    /// every requester).
    Console,
}

impl Lag {
    /// (initial, least, most) estimate in ms. The initial ones are low: a region without the
    /// lag (moto) should not pay for it, and one that has it teaches the estimate with its first
    /// failed calls.
    fn bounds(self) -> (u64, u64, u64) {
        match self {
            Lag::Visibility => (500, 200, 10_000),
            Lag::Dependency => (2_000, 1_000, 120_000),
            Lag::Console => (60_000, 2_000, 600_000),
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
    /// Moves the estimate towards the lag's 75th percentile: up 3/64 when the lag was not over
    /// at the estimate (`late`), down 1/64 when it was, so that it settles where one wait in
    /// four falls short.
    pub fn nudge(&mut self, late: bool) {
        self.ms = if late { self.ms + (self.ms * 3 / 64).max(1) } else { self.ms - self.ms / 64 };
        self.ms = self.ms.clamp(self.least, self.most);
    }

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
    /// See [`Estimate::nudge`].
    pub fn nudge(&self, region: &RegionLabel, lag: Lag, late: bool) {
        lock(&self.by_region).entry((region.clone(), lag)).or_insert_with(|| Estimate::new(lag)).nudge(late);
    }

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
    fn nudged_the_estimate_settles_near_the_75th_percentile() {
        let mut e = Estimate::new(Lag::Console);
        let mut late = 0u64;
        for i in 0..20_000u64 {
            // A lag uniform over 10-120 s: its 75th percentile is 92.5 s.
            let lag = 10_000 + (i * 7_919) % 110_001;
            let was_late = lag > e.wait_ms();
            late += u64::from(was_late && i >= 10_000);
            e.nudge(was_late);
        }
        assert!((80_000..=105_000).contains(&e.wait_ms()), "settled at {} ms", e.wait_ms());
        assert!((1_500..=3_500).contains(&late), "{late} of 10000 first looks came too early");
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
