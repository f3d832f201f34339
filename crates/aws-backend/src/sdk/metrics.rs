//! CloudWatch over the SDK: each instance's NetworkIn and NetworkOut summed over a window with
//! GetMetricData, many instances per call.

use aws_sdk_cloudwatch::types as cw;
use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{Ec2Error, NetworkUsage, Operation};

/// GetMetricData's limit on queries per call; each instance takes two (in and out).
const METRIC_QUERIES_MAX: usize = 500;
/// The query's period, in seconds: the finest EC2's detailed monitoring publishes. The sum over
/// the window is the same with basic monitoring's 5-minute datapoints, each of which falls in
/// the minute its timestamp names (`port::metric_window` aligns windows to them).
const METRIC_PERIOD_S: i32 = 60;

pub(super) async fn network_usage(
    port: &SdkEc2,
    region: &RegionLabel,
    instance_ids: &[String],
    start_unix_ms: u64,
    end_unix_ms: u64,
) -> Result<Vec<NetworkUsage>, Ec2Error> {
    let op = Operation::GetNetworkUsage;
    if instance_ids.is_empty() || end_unix_ms <= start_unix_ms {
        return Ok(Vec::new());
    }
    let client = port.client_for(region, op).await?.cloudwatch.clone();
    // As the port says: StartTime and EndTime as given (the caller aligns them to periods).
    let (start, end) = (start_unix_ms, end_unix_ms);
    let mut usage: Vec<NetworkUsage> =
        instance_ids.iter().map(|id| NetworkUsage { instance_id: id.clone(), bytes_in: 0, bytes_out: 0 }).collect();
    // Query ids are `i<index>` (NetworkIn) and `o<index>` (NetworkOut), index into `usage`.
    for (chunk_no, chunk) in instance_ids.chunks(METRIC_QUERIES_MAX / 2).enumerate() {
        let base = chunk_no * (METRIC_QUERIES_MAX / 2);
        let queries: Vec<cw::MetricDataQuery> = chunk
            .iter()
            .enumerate()
            .flat_map(|(n, id)| {
                [("i", "NetworkIn"), ("o", "NetworkOut")]
                    .map(|(prefix, metric)| network_query(prefix, base + n, metric, id))
            })
            .collect();
        let mut pages = client
            .get_metric_data()
            .start_time(convert::date_time(start))
            .end_time(convert::date_time(end))
            .set_metric_data_queries(Some(queries))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| convert::error(op, e))?;
            for result in page.metric_data_results() {
                let Some((is_in, index)) = result.id().and_then(parse_query_id) else { continue };
                let Some(entry) = usage.get_mut(index) else { continue };
                let bytes = sum_bytes(result.values());
                if is_in {
                    entry.bytes_in = entry.bytes_in.saturating_add(bytes);
                } else {
                    entry.bytes_out = entry.bytes_out.saturating_add(bytes);
                }
            }
        }
    }
    Ok(usage)
}

/// One GetMetricData query: the Sum of `metric` for `instance_id`, per minute.
fn network_query(prefix: &str, index: usize, metric: &str, instance_id: &str) -> cw::MetricDataQuery {
    let metric = cw::Metric::builder()
        .namespace("AWS/EC2")
        .metric_name(metric)
        .dimensions(cw::Dimension::builder().name("InstanceId").value(instance_id).build())
        .build();
    cw::MetricDataQuery::builder()
        .id(format!("{prefix}{index}"))
        .metric_stat(cw::MetricStat::builder().metric(metric).period(METRIC_PERIOD_S).stat("Sum").build())
        .return_data(true)
        .build()
}

/// Parses a query id of [`network_query`]: (is it NetworkIn, index).
fn parse_query_id(id: &str) -> Option<(bool, usize)> {
    let is_in = match id.as_bytes().first()? {
        b'i' => true,
        b'o' => false,
        _ => return None,
    };
    Some((is_in, id.get(1..)?.parse().ok()?))
}

/// The sum of CloudWatch's per-period byte counts, rounded, ignoring nonsense values.
fn sum_bytes(values: &[f64]) -> u64 {
    let total: f64 = values.iter().filter(|v| v.is_finite() && **v > 0.0).sum();
    // `as` saturates for floats, which is what we want for an absurd total.
    total.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_round_trip() {
        let q = network_query("o", 417, "NetworkOut", "i-1");
        assert_eq!(q.id(), Some("o417"));
        assert_eq!(parse_query_id("o417"), Some((false, 417)));
        assert_eq!(parse_query_id("i0"), Some((true, 0)));
        assert_eq!(parse_query_id("x1"), None);
        assert_eq!(parse_query_id("i"), None);
    }

    #[test]
    fn byte_sums_ignore_nonsense() {
        assert_eq!(sum_bytes(&[1.0, 2.4, f64::NAN, -3.0, f64::INFINITY]), 3);
        assert_eq!(sum_bytes(&[]), 0);
    }
}
