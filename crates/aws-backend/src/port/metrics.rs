//! CloudWatch's network figures: [`NetworkUsage`], and the window to ask for
//! ([`metric_window`], whole periods of [`METRIC_PERIOD_MS`]).

use serde::{Deserialize, Serialize};

/// The period of EC2's basic monitoring, the only one the backend's instances have (it never
/// asks RunInstances for detailed monitoring): CloudWatch holds one NetworkIn and one
/// NetworkOut datapoint per 5 minutes, each the bytes of its period, stamped with the
/// period's start ("Enable or turn off detailed monitoring for your instances", Amazon EC2
/// User Guide: basic monitoring "Data is available automatically in 5-minute periods").
pub const METRIC_PERIOD_MS: u64 = 300_000;

/// The window to ask [`Ec2Port::network_usage`](super::Ec2Port::network_usage) for so that every period the instance moved
/// bytes in during `[start_unix_ms, end_unix_ms)` is counted whole: widened to whole periods of
/// [`METRIC_PERIOD_MS`], and never empty. CloudWatch counts a datapoint by its timestamp, its
/// period's start, so a window starting mid-period would miss that period's bytes; the periods
/// hold only this instance's bytes, so widening adds nothing that is not its own.
pub fn metric_window(start_unix_ms: u64, end_unix_ms: u64) -> (u64, u64) {
    let start = start_unix_ms - start_unix_ms % METRIC_PERIOD_MS;
    let end = end_unix_ms.div_ceil(METRIC_PERIOD_MS).saturating_mul(METRIC_PERIOD_MS).max(start + METRIC_PERIOD_MS);
    (start, end)
}

/// Network bytes of one instance over a window, as CloudWatch's NetworkIn and NetworkOut sum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkUsage {
    /// The instance.
    pub instance_id: String,
    /// Bytes received in the window.
    pub bytes_in: u64,
    /// Bytes sent in the window.
    pub bytes_out: u64,
}
