//! Client-side pacing: EC2's token buckets mirrored in our process, and bounded retries with
//! exponential backoff and full jitter.
//!
//! The buckets make a burst of grants queue here instead of hammering EC2 into
//! `RequestLimitExceeded`; the retries absorb what still fails transiently.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use backend_api::{Clock, RegionLabel};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::standby::Tenure;

use crate::port::{
    Ec2Error, Operation, Page, PageRequest, RUN_INSTANCES_RESOURCE_CAPACITY, RUN_INSTANCES_RESOURCE_REFILL_PER_S,
    TERMINATE_INSTANCES_RESOURCE_CAPACITY, TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S, codes,
};

/// A token bucket as a generic cell rate algorithm: each call reserves the next slot at once
/// and then waits for it, so waiting calls are served first come, first served and the wait is
/// computed once.
#[derive(Debug, Clone)]
struct Gcra {
    /// Milliseconds per token, times 1000 (micro-ms) to keep integer precision.
    interval_ums: u64,
    /// How far ahead of now the theoretical arrival time may run: (capacity - 1) intervals.
    tolerance_ums: u64,
    /// The theoretical arrival time of the next token, in micro-ms since the unix epoch.
    tat_ums: u64,
}

impl Gcra {
    fn new(capacity: u32, refill_per_s: u32) -> Self {
        // Round the interval up by one micro-ms so that we never ask before EC2 has refilled.
        let interval_ums = 1_000_000 / u64::from(refill_per_s.max(1)) + 1;
        Self { interval_ums, tolerance_ums: interval_ums * u64::from(capacity.saturating_sub(1)), tat_ums: 0 }
    }

    /// Reserves `tokens` and returns the unix ms at which the caller may go.
    fn reserve(&mut self, now_ms: u64, tokens: u32) -> u64 {
        let now_ums = now_ms.saturating_mul(1_000);
        let tat = self.tat_ums.max(now_ums);
        let allowed_at = tat
            .saturating_add(self.interval_ums * u64::from(tokens.saturating_sub(1)))
            .saturating_sub(self.tolerance_ums);
        self.tat_ums = tat.saturating_add(self.interval_ums * u64::from(tokens));
        allowed_at.max(now_ums).div_ceil(1_000)
    }
}

/// The backoff schedules of the retry loops, named for what they wait on: each says at which
/// step of [`Pacer::backoff`] (step `n` waits up to `base_ms * 2^n`, capped at `cap_ms`) try
/// `attempt` (0-based) sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backoff {
    /// Asking again whether something has happened (a listing that may lag, a claim given
    /// back, an id not yet visible): steps 0 to 6.
    Recheck,
    /// A lag of seconds (a resource EC2 does not show yet, a deleted name not yet free): start
    /// near a second rather than at once; steps 2 to 6.
    Lag,
    /// A network interface that lingers seconds to tens of seconds after its instance ended
    /// (`DependencyViolation`): start at a few seconds rather than hammering; steps 4 to 8.
    Interface,
}

impl Backoff {
    /// The step of [`Pacer::backoff`] try `attempt` of this schedule sleeps.
    pub(crate) fn step(self, attempt: u32) -> u32 {
        match self {
            Backoff::Recheck => attempt.min(6),
            Backoff::Lag => attempt.min(4) + 2,
            Backoff::Interface => attempt.min(4) + 4,
        }
    }
}

/// How retries behave.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The first backoff's upper bound.
    pub base_ms: u64,
    /// No backoff exceeds this.
    pub cap_ms: u64,
    /// Attempts in all, the first included.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base_ms: 200, cap_ms: 20_000, attempts_max: 10 }
    }
}

impl RetryPolicy {
    /// The longest one call can spend in backoff before `Pacer::call` gives up: every retry
    /// drawing its full ceiling. Checkers derive their lateness bounds from it.
    pub fn backoff_ms_total_max(&self) -> u64 {
        (0..self.attempts_max.saturating_sub(1))
            .map(|attempt| self.base_ms.saturating_mul(1u64 << attempt.min(20)).min(self.cap_ms))
            .sum()
    }
}

/// Shared pacing state: buckets per region and action (as EC2 keeps them: each action its own
/// bucket, sized by its category), and the jitter's PRNG.
pub struct Pacer {
    clock: Arc<dyn Clock>,
    buckets: Mutex<BTreeMap<(RegionLabel, Operation), Gcra>>,
    /// The resource buckets, counted in instances: RunInstances' and TerminateInstances'.
    instance_buckets: Mutex<BTreeMap<(RegionLabel, Operation), Gcra>>,
    rng: Mutex<ChaCha8Rng>,
    policy: RetryPolicy,
    stats: Mutex<PacingStats>,
    /// Skip the buckets (a deliberate bug for the simulation's self-test).
    buckets_off: bool,
    /// Read only the first page of a listing (a deliberate bug for the self-test).
    first_page_only: bool,
    /// The lease this process acts under, when it shares its ledger (see `standby`): no call
    /// goes out once it may not act.
    tenure: Option<Arc<Tenure>>,
}

/// What pacing did, for benches and the simulation summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacingStats {
    /// Calls that failed and were retried, per error code.
    pub retries_by_code: BTreeMap<String, u64>,
    /// Milliseconds spent waiting in our own buckets.
    pub bucket_wait_ms: u64,
}

impl Pacer {
    /// A pacer on `clock`, drawing jitter from `rng`.
    pub fn new(clock: Arc<dyn Clock>, rng: ChaCha8Rng, policy: RetryPolicy) -> Self {
        Self {
            clock,
            buckets: Mutex::new(BTreeMap::new()),
            instance_buckets: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(rng),
            policy,
            stats: Mutex::new(PacingStats::default()),
            buckets_off: false,
            first_page_only: false,
            tenure: None,
        }
    }

    /// The same pacer sending calls only while `tenure` says this process may act: past that,
    /// each call fails at once with [`codes::LEASE_LOST`], sending nothing.
    pub fn acting_under(mut self, tenure: Arc<Tenure>) -> Self {
        self.tenure = Some(tenure);
        self
    }

    /// The same pacer without its buckets: retries only. A deliberate bug, for
    /// `TestSwitches::skip_pacing`; never in production.
    pub fn without_buckets(mut self) -> Self {
        self.buckets_off = true;
        self
    }

    /// The same pacer reading only the first page of every listing. A deliberate bug, for
    /// `TestSwitches::first_page_only`; never in production.
    pub fn reading_first_pages_only(mut self) -> Self {
        self.first_page_only = true;
        self
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> PacingStats {
        lock(&self.stats).clone()
    }

    /// Waits for a token of `op`'s bucket in `region` (and, for RunInstances and
    /// TerminateInstances, one instance of its resource bucket).
    pub async fn admit(&self, region: &RegionLabel, op: Operation) {
        self.admit_for(region, op, 1).await;
    }

    /// Waits for a token of `op`'s bucket in `region` and, for the actions EC2 also meters in
    /// instances (RunInstances, TerminateInstances), `instances` of its resource bucket.
    pub async fn admit_for(&self, region: &RegionLabel, op: Operation, instances: u32) {
        if self.buckets_off {
            return;
        }
        let now = self.clock.now_unix_ms();
        let class = op.throttle_class();
        let mut go_at = lock(&self.buckets)
            .entry((region.clone(), op))
            .or_insert_with(|| Gcra::new(class.capacity(), class.refill_per_s()))
            .reserve(now, 1);
        let resource = match op {
            Operation::RunInstances => Some((RUN_INSTANCES_RESOURCE_CAPACITY, RUN_INSTANCES_RESOURCE_REFILL_PER_S)),
            Operation::TerminateInstances => {
                Some((TERMINATE_INSTANCES_RESOURCE_CAPACITY, TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S))
            }
            _ => None,
        };
        if let Some((capacity, refill_per_s)) = resource {
            let instance_go = lock(&self.instance_buckets)
                .entry((region.clone(), op))
                .or_insert_with(|| Gcra::new(capacity, refill_per_s))
                .reserve(now, instances.max(1));
            go_at = go_at.max(instance_go);
        }
        crate::telemetry::pacer_wait(op, go_at.saturating_sub(now));
        if go_at > now {
            lock(&self.stats).bucket_wait_ms += go_at - now;
            self.clock.sleep_until_unix_ms(go_at).await;
        }
    }

    /// Runs `call` paced by the buckets, retrying transient failures (throttling, internal
    /// errors, outages) with exponential backoff and full jitter, at most
    /// `RetryPolicy::attempts_max` times. Non-transient errors return at once.
    pub async fn call<T, F, Fut>(&self, region: &RegionLabel, op: Operation, call: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        self.call_for(region, op, 1, call).await
    }

    /// Like [`Pacer::call`] for a call about `instances` instances, which RunInstances and
    /// TerminateInstances also take from their resource buckets (one token per instance).
    pub async fn call_for<T, F, Fut>(
        &self,
        region: &RegionLabel,
        op: Operation,
        instances: u32,
        mut call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let mut attempt = 0u32;
        loop {
            self.admit_for(region, op, instances).await;
            // Checked after any wait, right before sending: a process paused in the wait finds
            // its lease run out when it wakes.
            if let Some(tenure) = &self.tenure
                && let Err(why) = tenure.may_act(self.clock.now_unix_ms())
            {
                return Err(Ec2Error::new(op, codes::LEASE_LOST, format!("not sent: {why}")));
            }
            crate::telemetry::ec2_call(region, op);
            let answer = call().await;
            if let Err(err) = &answer {
                let retried = err.is_transient() && attempt + 1 < self.policy.attempts_max;
                crate::telemetry::ec2_error(region, op, &err.code, err.is_throttle(), retried);
            }
            match answer {
                Ok(value) => return Ok(value),
                Err(err) if err.is_transient() && attempt + 1 < self.policy.attempts_max => {
                    *lock(&self.stats).retries_by_code.entry(err.code.clone()).or_default() += 1;
                    tracing::debug!(operation = %op, code = %err.code, attempt, "transient EC2 error, backing off");
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Every page of a paginated Describe of `op`, by ids or by filters (`by_ids`; the first
    /// page is [`PageRequest::listing`]'s): `call` is asked for each page in turn, and each page is paced
    /// and retried as the call it is (a retry asks for the same page again). Only a page
    /// without a token ends the listing: EC2 may answer short pages, even empty ones, while
    /// more remain (EC2 API Reference, "Pagination").
    pub async fn pages<T, F, Fut>(
        &self,
        region: &RegionLabel,
        op: Operation,
        by_ids: bool,
        mut call: F,
    ) -> Result<Vec<T>, Ec2Error>
    where
        F: FnMut(PageRequest) -> Fut,
        Fut: Future<Output = Result<Page<T>, Ec2Error>>,
    {
        let mut request = PageRequest::listing(op, by_ids);
        let mut items = Vec::new();
        loop {
            let page = self.call(region, op, || call(request.clone())).await?;
            items.extend(page.items);
            match page.next_token {
                Some(token) if !self.first_page_only => request.next_token = Some(token),
                _ => return Ok(items),
            }
        }
    }

    /// Like [`Pacer::call`], and while `settling` holds for the error (a resource EC2 has not
    /// made visible yet, say), tries again with backoff until `window_ms` has passed since the
    /// first attempt. The last error is returned after that.
    pub async fn call_until_settled<T, F, Fut>(
        &self,
        region: &RegionLabel,
        op: Operation,
        window_ms: u64,
        settling: impl Fn(&Ec2Error) -> bool,
        mut call: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let started = self.clock.now_unix_ms();
        let mut attempt = 0u32;
        loop {
            match self.call(region, op, &mut call).await {
                Err(err) if settling(&err) && self.clock.now_unix_ms() < started.saturating_add(window_ms) => {
                    // A lag of seconds: start near a second rather than retrying at once.
                    self.backoff(Backoff::Lag.step(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Sleeps a full-jitter backoff for `attempt` (0-based): uniform in
    /// `[0, min(cap, base * 2^attempt)]`.
    pub async fn backoff(&self, attempt: u32) {
        let ceiling = self.policy.base_ms.saturating_mul(1u64 << attempt.min(20)).min(self.policy.cap_ms);
        let wait = lock(&self.rng).gen_range(0..=ceiling);
        self.clock.sleep_ms(wait).await;
    }
}

/// How many instances a call about `ids` asks for, for [`Pacer::call_for`].
pub(crate) fn count(ids: &[String]) -> u32 {
    u32::try_from(ids.len()).unwrap_or(u32::MAX)
}

/// Locks a std mutex; a poisoned lock (a panic elsewhere while holding it) is taken over,
/// since every structure kept under these locks is valid between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_refill_rate() {
        // RunInstances: 5 tokens, 2 per second.
        let mut bucket = Gcra::new(5, 2);
        let times: Vec<u64> = (0..9).map(|_| bucket.reserve(10_000, 1)).collect();
        assert_eq!(&times[..5], &[10_000; 5], "the burst goes at once");
        // Then one every 500 ms (plus the rounding guard).
        assert_eq!(times[5], 10_501);
        assert_eq!(times[6], 11_001);
        assert_eq!(times[8], 12_001);
    }

    #[test]
    fn gcra_refills_while_idle() {
        let mut bucket = Gcra::new(5, 2);
        for _ in 0..5 {
            bucket.reserve(0, 1);
        }
        // After 10 s idle the bucket is full again: five more go at once.
        let times: Vec<u64> = (0..5).map(|_| bucket.reserve(10_000, 1)).collect();
        assert_eq!(times, vec![10_000; 5]);
    }
}
