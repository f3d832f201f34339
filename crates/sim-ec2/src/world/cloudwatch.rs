//! Simulated CloudWatch for EC2's `NetworkIn`/`NetworkOut`: basic monitoring's 5-minute Sum
//! datapoints, each published minutes after its period ends and now and then never, served by
//! GetMetricData behind CloudWatch's own quota, which answers `Throttling`.
//!
//! - **Datapoints.** An instance has one datapoint per 5-minute period it ran in, aligned to the
//!   clock (multiples of [`METRIC_PERIOD_MS`]), stamped with the period's start and holding the
//!   bytes moved in it ("Enable or turn off detailed monitoring for your instances", Amazon EC2
//!   User Guide: basic monitoring "Data is available automatically in 5-minute periods"; the
//!   backend never asks for detailed monitoring, so 1-minute data is not modelled).
//! - **Query.** GetMetricData returns the datapoints published so far whose timestamp lies in
//!   `[StartTime, EndTime)`, StartTime rounded down to the minute ("GetMetricData", CloudWatch
//!   API reference: StartTime "is inclusive ... Start time less than 15 days ago - Round down to
//!   the nearest whole minute"; EndTime "is exclusive"). With the Sum statistic any period the
//!   query names adds up to the same total, so only the window matters.
//! - **Publication lag.** A datapoint appears `lag` after its period ends, `lag` drawn per
//!   datapoint from `[metrics_lag_ms_min, metrics_lag_ms_max]` (docs/ec2-facts.md, "Billing and CloudWatch":
//!   "datapoints arrive minutes late").
//! - **Gaps.** With `metrics_gap_probability` a datapoint is never published: missing for good,
//!   not late ("Configuring how CloudWatch alarms treat missing data", CloudWatch User Guide:
//!   "Sometimes, not every expected data point for a metric gets reported to CloudWatch").
//!   CloudWatch's figure for the instance is then short of the bytes it moved, forever; that is
//!   what the backend can bill, and what the `metering` checker holds it to
//!   (`InstanceTruth::cloudwatch_bytes_in`).
//! - **Quota.** GetMetricData has its own bucket per region, 50 requests refilling 50 a second
//!   ("CloudWatch service quotas": 50 TPS per Region for GetMetricData without Metrics Insights),
//!   apart from EC2's; an empty bucket, or `cloudwatch_throttle_probability` (other callers of
//!   the account's quota), answers `Throttling`. Server errors answer CloudWatch's codes,
//!   `InternalFailure` and `ServiceUnavailable`. The datapoints-per-second quota (180,000 for
//!   recent data) is not modelled: one instance's query over a day asks for under 3,000.
//!
//! The lag and the gap of a datapoint are drawn from the seed, the instance and the period by
//! hashing, not from the PRNG: every query sees the same datapoints, however many are made, and
//! adding this changed no other draw of a run.

use aws_backend::port::{Ec2Error, METRIC_PERIOD_MS, NetworkUsage, Operation, ThrottleClass, codes};
use backend_api::RegionLabel;
use sha2::{Digest, Sha256};

use super::{About, Instance, World, err};
use crate::audit::op_tag;
use crate::bucket::TokenBucket;
use crate::config::FaultConfig;

/// CloudWatch's code for an internal error.
const INTERNAL_FAILURE: &str = "InternalFailure";
/// CloudWatch's code when the service is unavailable.
const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";

/// One datapoint of an instance's `NetworkIn` and `NetworkOut`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datapoint {
    /// Its timestamp: the start of its 5-minute period, unix ms.
    pub timestamp_unix_ms: u64,
    /// Bytes received in the period (so far, while the period lasts).
    pub bytes_in: u64,
    /// Bytes sent in the period (so far, while the period lasts).
    pub bytes_out: u64,
    /// When GetMetricData first returns it, unix ms; `None` for a gap, never published.
    pub published_unix_ms: Option<u64>,
}

/// CloudWatch's per-region state: GetMetricData's bucket in each region, in the order of the
/// world's regions.
pub(crate) struct CloudWatch {
    buckets: Vec<TokenBucket>,
}

impl CloudWatch {
    /// Full buckets for `regions` regions as of `now_ms`.
    pub(crate) fn new(regions: usize, now_ms: u64) -> Self {
        let class = ThrottleClass::GetMetricData;
        Self {
            buckets: (0..regions).map(|_| TokenBucket::full(class.capacity(), class.refill_per_s(), now_ms)).collect(),
        }
    }
}

/// How CloudWatch publishes the datapoints of one instance: its lag and gap draws.
struct Publication {
    key: u64,
    lag_ms_min: u64,
    lag_ms_max: u64,
    /// A datapoint whose gap draw is below this is never published.
    gap_below: u64,
}

/// The key of the publication draws of instance `instance_id` in the run seeded `seed`.
fn publication_key(seed: u64, instance_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"sim-ec2 cloudwatch");
    h.update(seed.to_le_bytes());
    h.update(instance_id.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    u64::from_le_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7]])
}

impl Publication {
    fn new(key: u64, faults: &FaultConfig) -> Self {
        let p = faults.metrics_gap_probability.clamp(0.0, 1.0);
        // `as` saturates: a probability of 1 gives u64::MAX, which only u64::MAX escapes.
        let gap_below = if p >= 1.0 { u64::MAX } else { (p * u64::MAX as f64) as u64 };
        Self { key, lag_ms_min: faults.metrics_lag_ms_min, lag_ms_max: faults.metrics_lag_ms_max, gap_below }
    }

    fn draw(&self, period: u64, salt: u64) -> u64 {
        mix(self.key ^ mix(period.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt))
    }

    /// When the datapoint of `period` (its index) is published, or `None` if never.
    fn published(&self, period: u64) -> Option<u64> {
        if self.gap_below > 0 && (self.gap_below == u64::MAX || self.draw(period, 2) < self.gap_below) {
            return None;
        }
        let spread = self.lag_ms_max.saturating_sub(self.lag_ms_min);
        let lag = self.lag_ms_min + if spread == 0 { 0 } else { self.draw(period, 1) % (spread + 1) };
        Some((period + 1).saturating_mul(METRIC_PERIOD_MS).saturating_add(lag))
    }
}

/// splitmix64's finalizer: a cheap, well-mixed function of a word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The datapoints of `inst` as of `now` whose timestamp lies in `[from, to)`: one per period it
/// ran in (periods it did not run in have none), the period in progress with its bytes so far.
fn datapoints(inst: &Instance, publication: &Publication, from: u64, to: u64, now: u64) -> Vec<Datapoint> {
    let Some(first_run) = inst.running_since().filter(|t| *t < now) else { return Vec::new() };
    // The end of its last running segment, or now while it runs.
    let last = inst.timeline.iter().rposition(|s| s.state == aws_backend::port::InstanceState::Running);
    let run_end = last.and_then(|i| inst.timeline.get(i + 1)).map_or(now, |next| next.from_ms).min(now);
    let first = (first_run / METRIC_PERIOD_MS).max(from.div_ceil(METRIC_PERIOD_MS));
    let end = run_end.div_ceil(METRIC_PERIOD_MS).min(to.div_ceil(METRIC_PERIOD_MS));
    (first..end)
        .filter_map(|k| {
            let start = k * METRIC_PERIOD_MS;
            let stop = (start + METRIC_PERIOD_MS).min(now);
            if inst.running_ms_until(stop) == inst.running_ms_until(start) {
                return None;
            }
            let (in_start, out_start) = inst.bytes_until(start);
            let (in_stop, out_stop) = inst.bytes_until(stop);
            Some(Datapoint {
                timestamp_unix_ms: start,
                bytes_in: in_stop - in_start,
                bytes_out: out_stop - out_start,
                published_unix_ms: publication.published(k),
            })
        })
        .collect()
}

impl World {
    fn publication(&self, inst: &Instance) -> Publication {
        let key = *inst.cloudwatch_key.get_or_init(|| publication_key(self.seed, &inst.id));
        Publication::new(key, &self.faults)
    }

    /// Everything before a GetMetricData call reaches the data: region, outage, targeted faults,
    /// CloudWatch's own quota (a throttled call takes no token), random failures with
    /// CloudWatch's codes. EC2's buckets and `throttle_probability` play no part.
    pub(super) fn cloudwatch_gate(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
    ) -> Result<usize, Ec2Error> {
        let now = self.now_ms;
        let r = self.gate_common(op, region, about, SERVICE_UNAVAILABLE)?;
        if self.chance(self.faults.cloudwatch_throttle_probability) {
            self.fault_about(codes::THROTTLING, r, about);
            return Err(err(op, codes::THROTTLING, "Rate exceeded"));
        }
        let bucket = &mut self.cloudwatch.buckets[r];
        if !bucket.has_token(now) {
            self.bucket_throttles.push((now, region.clone(), op));
            return Err(err(op, codes::THROTTLING, "Rate exceeded"));
        }
        bucket.take_token();
        if self.chance(self.faults.internal_error_probability) {
            self.fault_about(INTERNAL_FAILURE, r, about);
            return Err(err(op, INTERNAL_FAILURE, "An internal error has occurred"));
        }
        if self.chance(self.faults.unavailable_probability) {
            self.fault_about(SERVICE_UNAVAILABLE, r, about);
            return Err(err(op, SERVICE_UNAVAILABLE, "The service is unavailable. Please try again shortly."));
        }
        Ok(r)
    }

    /// GetMetricData for `NetworkIn` and `NetworkOut` (Sum) of `instance_ids` with StartTime
    /// `start_unix_ms` and EndTime `end_unix_ms`: the sum of each instance's datapoints
    /// published by now whose timestamp lies in `[StartTime rounded down to the minute,
    /// EndTime)`. CloudWatch keeps data long after EC2 forgets the instance.
    pub(crate) fn network_usage(
        &mut self,
        region: &RegionLabel,
        instance_ids: &[String],
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        let op = Operation::GetNetworkUsage;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.strs(instance_ids);
        self.audit.u64(start_unix_ms);
        self.audit.u64(end_unix_ms);
        let about = About::Instances(instance_ids);
        let result: Result<Vec<NetworkUsage>, Ec2Error> = self.serve(op, region, about, |w, r| {
            if end_unix_ms < start_unix_ms {
                return Err(err(
                    op,
                    codes::INVALID_PARAMETER_VALUE,
                    format!("The parameter StartTime ({start_unix_ms}) must be less than the parameter EndTime ({end_unix_ms})"),
                ));
            }
            let (from, to, now) = (start_unix_ms - start_unix_ms % 60_000, end_unix_ms, w.now_ms);
            let region = &w.regions[r];
            Ok(instance_ids
                .iter()
                .filter_map(|id| region.instance_ids.get(id.as_str()))
                .map(|&i| {
                    let inst = &region.instances[i];
                    let published = datapoints(inst, &w.publication(inst), from, to, now)
                        .into_iter()
                        .filter(|d| d.published_unix_ms.is_some_and(|t| t <= now));
                    let (bytes_in, bytes_out) =
                        published.fold((0u64, 0u64), |(i, o), d| (i.saturating_add(d.bytes_in), o.saturating_add(d.bytes_out)));
                    NetworkUsage { instance_id: inst.id.to_string(), bytes_in, bytes_out }
                })
                .collect())
        });
        self.audit.outcome(&result, |a, list| {
            a.u64(list.len() as u64);
            for u in list {
                a.str(&u.instance_id);
                a.u64(u.bytes_in);
                a.u64(u.bytes_out);
            }
        });
        result
    }

    /// Every datapoint of `instance_id` so far, published or not (ground truth for tests and
    /// checkers; no call, no fault, no audit).
    pub(crate) fn cloudwatch_datapoints(&self, instance_id: &str) -> Option<Vec<Datapoint>> {
        let (r, i) = self.find_instance(instance_id)?;
        let inst = &self.regions[r].instances[i];
        Some(datapoints(inst, &self.publication(inst), 0, u64::MAX, self.now_ms))
    }

    /// What the instance's datapoints so far add up to once every one that will be is
    /// published: its bytes (in, out) less those of its gaps.
    pub(super) fn cloudwatch_bytes(&self, inst: &Instance) -> (u64, u64) {
        if self.faults.metrics_gap_probability <= 0.0 {
            // No gaps: the periods tile its life, so their sum is its counters'.
            return inst.bytes_until(self.now_ms);
        }
        datapoints(inst, &self.publication(inst), 0, u64::MAX, self.now_ms)
            .into_iter()
            .filter(|d| d.published_unix_ms.is_some())
            .fold((0, 0), |(i, o), d| (i + d.bytes_in, o + d.bytes_out))
    }
}
