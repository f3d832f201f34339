//! The bridge's metrics, through the `metrics` facade: the host installs the recorder
//! (`aws-backend serve` exports them as Prometheus text on `GET /metrics`; compute-bridge may
//! install its own), then calls [`enable`]. Until then nothing is recorded and every call here
//! returns at once (the simulation never enables it).
//!
//! Every name is here, with its unit and labels; `docs/operations.md` ("Metrics") lists them.
//! Durations are measured on the backend's clock (virtual in the simulation), never read from
//! the wall clock here. Gauges that describe state (grants by phase, the lease, network
//! figures, vCPU headroom) are set by [`crate::AwsBackend::publish_gauges`], which the host
//! calls before it renders them.

use std::sync::atomic::{AtomicBool, Ordering};

use backend_api::RegionLabel;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::port::Operation;

/// Provisions by outcome (`ok`, `refused`, `failed`) and error code (empty when ok).
pub const PROVISIONS: &str = "bridge_provisions_total";
/// EC2 calls sent, by operation and region (each retry is a call).
pub const EC2_CALLS: &str = "bridge_ec2_calls_total";
/// EC2 calls answered with throttling, by operation and region.
pub const EC2_THROTTLES: &str = "bridge_ec2_throttles_total";
/// EC2 calls retried after a transient error, by operation, region and code.
pub const EC2_RETRIES: &str = "bridge_ec2_retries_total";
/// Time a call waited in our own buckets before it was sent, seconds, by operation.
pub const PACER_WAIT: &str = "bridge_pacer_wait_seconds";
/// Time an append took to be durable (group commit included), seconds.
pub const LEDGER_APPEND: &str = "bridge_ledger_append_seconds";
/// Events per append.
pub const LEDGER_APPEND_EVENTS: &str = "bridge_ledger_append_events";
/// Appends the store refused.
pub const LEDGER_APPEND_FAILURES: &str = "bridge_ledger_append_failures_total";
/// From a grant's `valid_to` to its TerminateInstances accepted (`stage="terminate_sent"`) and
/// to EC2 showing the instance ending (`stage="ended"`), seconds; negative lateness counts 0.
pub const DEADLINE_LATENESS: &str = "bridge_deadline_lateness_seconds";
/// Live grants by phase (`admitted`, `provisioning`, `running`, `terminating`).
pub const GRANTS: &str = "bridge_grants";
/// Network figures not final yet, by finality (`provisional`, `unknown`).
pub const NETWORK_PENDING: &str = "bridge_network_figures_pending";
/// vCPUs left under the account's On-Demand quota, per region, when known.
pub const VCPU_HEADROOM: &str = "bridge_vcpu_headroom";
/// Whether this process holds the group's lease (1) or not (0); absent with a file ledger.
pub const LEASE_HELD: &str = "bridge_lease_held";
/// The epoch of the lease this process acts under.
pub const LEASE_EPOCH: &str = "bridge_lease_epoch";
/// Seconds until the lease this process holds runs out, unless renewed.
pub const LEASE_SECONDS_LEFT: &str = "bridge_lease_seconds_left";
/// Lease renewals that failed.
pub const LEASE_RENEWAL_FAILURES: &str = "bridge_lease_renewal_failures_total";
/// Resources the reaper found without a live grant, removed, and errors of its passes.
pub const REAPER_FOUND: &str = "bridge_reaper_found_total";
/// See [`REAPER_FOUND`].
pub const REAPER_REMOVED: &str = "bridge_reaper_removed_total";
/// See [`REAPER_FOUND`].
pub const REAPER_ERRORS: &str = "bridge_reaper_errors_total";

/// Whether [`enable`] has run.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether recording is on (for callers whose labels cost a lookup).
pub(crate) fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns recording on and describes every metric (unit and help) to the installed recorder:
/// call once after installing it.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
    describe_counter!(PROVISIONS, "Provisions by outcome (ok, refused, failed) and error code.");
    describe_counter!(EC2_CALLS, "EC2 calls sent, by operation and region; each retry counts.");
    describe_counter!(EC2_THROTTLES, "EC2 calls answered with throttling, by operation and region.");
    describe_counter!(EC2_RETRIES, "EC2 calls retried after a transient error, by operation, region and code.");
    describe_histogram!(
        PACER_WAIT,
        Unit::Seconds,
        "Time a call waited in the bridge's own buckets before it was sent."
    );
    describe_histogram!(
        LEDGER_APPEND,
        Unit::Seconds,
        "Time a ledger append took to be durable, group commit included."
    );
    describe_histogram!(LEDGER_APPEND_EVENTS, Unit::Count, "Events per ledger append.");
    describe_counter!(LEDGER_APPEND_FAILURES, "Ledger appends the store refused.");
    describe_histogram!(
        DEADLINE_LATENESS,
        Unit::Seconds,
        "From a grant's valid_to to TerminateInstances accepted (stage=terminate_sent) and to EC2 showing the instance ending (stage=ended)."
    );
    describe_gauge!(GRANTS, "Live grants by phase.");
    describe_gauge!(NETWORK_PENDING, "Network figures not final yet, by finality (provisional, unknown).");
    describe_gauge!(VCPU_HEADROOM, "vCPUs left under the account's On-Demand quota, per region, when known.");
    describe_gauge!(LEASE_HELD, "1 while this process holds the bridge group's lease.");
    describe_gauge!(LEASE_EPOCH, "The epoch of the lease this process acts under.");
    describe_gauge!(LEASE_SECONDS_LEFT, Unit::Seconds, "Time until the lease runs out unless renewed.");
    describe_counter!(LEASE_RENEWAL_FAILURES, "Lease renewals that failed.");
    describe_counter!(REAPER_FOUND, "Resources the reaper found tagged as ours without a live grant.");
    describe_counter!(REAPER_REMOVED, "Resources the reaper removed.");
    describe_counter!(REAPER_ERRORS, "Errors of reaper passes.");
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

pub(crate) fn provision(outcome: &'static str, code: String) {
    if !on() {
        return;
    }
    counter!(PROVISIONS, "outcome" => outcome, "code" => code).increment(1);
}

pub(crate) fn ec2_call(region: &RegionLabel, op: Operation) {
    counter!(EC2_CALLS, "operation" => op.name(), "region" => region.to_string()).increment(1);
}

pub(crate) fn ec2_error(region: &RegionLabel, op: Operation, code: &str, throttle: bool, retried: bool) {
    if throttle {
        counter!(EC2_THROTTLES, "operation" => op.name(), "region" => region.to_string()).increment(1);
    }
    if retried {
        counter!(EC2_RETRIES, "operation" => op.name(), "region" => region.to_string(), "code" => code.to_string())
            .increment(1);
    }
}

pub(crate) fn pacer_wait(op: Operation, wait_ms: u64) {
    if !on() {
        return;
    }
    histogram!(PACER_WAIT, "operation" => op.name()).record(seconds(wait_ms));
}

pub(crate) fn ledger_append(took_ms: u64, events: usize, ok: bool) {
    if !on() {
        return;
    }
    histogram!(LEDGER_APPEND).record(seconds(took_ms));
    histogram!(LEDGER_APPEND_EVENTS).record(events as f64);
    if !ok {
        counter!(LEDGER_APPEND_FAILURES).increment(1);
    }
}

pub(crate) fn deadline_lateness(stage: &'static str, valid_to_unix_ms: u64, at_unix_ms: u64) {
    if !on() {
        return;
    }
    histogram!(DEADLINE_LATENESS, "stage" => stage).record(seconds(at_unix_ms.saturating_sub(valid_to_unix_ms)));
}

pub(crate) fn grants(phase: &'static str, count: usize) {
    if !on() {
        return;
    }
    gauge!(GRANTS, "phase" => phase).set(count as f64);
}

pub(crate) fn network_pending(finality: &'static str, count: usize) {
    if !on() {
        return;
    }
    gauge!(NETWORK_PENDING, "finality" => finality).set(count as f64);
}

pub(crate) fn vcpu_headroom(region: &RegionLabel, vcpus: u32) {
    if !on() {
        return;
    }
    gauge!(VCPU_HEADROOM, "region" => region.to_string()).set(f64::from(vcpus));
}

pub(crate) fn lease(held: bool, epoch: u64, ms_left: u64) {
    if !on() {
        return;
    }
    gauge!(LEASE_HELD).set(if held { 1.0 } else { 0.0 });
    gauge!(LEASE_EPOCH).set(epoch as f64);
    gauge!(LEASE_SECONDS_LEFT).set(seconds(ms_left));
}

pub(crate) fn lease_renewal_failed() {
    if !on() {
        return;
    }
    counter!(LEASE_RENEWAL_FAILURES).increment(1);
}

pub(crate) fn reaper_pass(found: usize, removed: usize, errors: usize) {
    if !on() {
        return;
    }
    counter!(REAPER_FOUND).increment(found as u64);
    counter!(REAPER_REMOVED).increment(removed as u64);
    counter!(REAPER_ERRORS).increment(errors as u64);
}
