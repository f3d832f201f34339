//! What the ledger tools print of folded grants: `usage-ledger usage` over a file and
//! `ledger-dynamodb usage` over a table print the same shape; billing periods
//! (`usage --since --until`) and the export of settled grants (`usage-ledger export`).

use std::collections::BTreeMap;

use backend_api::{GrantId, UsageMetrics};

use crate::state::{GrantState, NetworkStatus};

/// One grant: `{grant, phase, usage}`.
pub fn grant_json(id: &GrantId, state: &GrantState) -> serde_json::Value {
    serde_json::json!({ "grant": id.to_hex(), "phase": state.phase(), "usage": state.usage() })
}

/// The usage of `grant` alone, or of every grant with their total (`{grants, total}`); `None`
/// when `grant` has no events.
pub fn usage_json(grants: &BTreeMap<GrantId, GrantState>, grant: Option<GrantId>) -> Option<serde_json::Value> {
    match grant {
        Some(id) => grants.get(&id).map(|state| grant_json(&id, state)),
        None => {
            let total: UsageMetrics = grants.values().map(GrantState::usage).sum();
            let list: Vec<_> = grants.iter().map(|(id, state)| grant_json(id, state)).collect();
            Some(serde_json::json!({ "grants": list, "total": total }))
        }
    }
}

/// The word the tools print for a network status.
fn network_word(status: NetworkStatus) -> &'static str {
    match status {
        NetworkStatus::Complete => "complete",
        NetworkStatus::Provisional => "provisional",
        NetworkStatus::Unknown => "unknown",
    }
}

/// True when the grant's usage can no longer change: settled, and every network figure complete.
pub fn is_final(state: &GrantState) -> bool {
    state.is_settled() && state.network_status() == NetworkStatus::Complete
}

/// One grant of a billing period: `{grant, phase, settled_unix_ms, usage, network, final}`
/// (`settled_unix_ms` is null for a live grant).
pub fn period_grant_json(id: &GrantId, state: &GrantState) -> serde_json::Value {
    serde_json::json!({
        "grant": id.to_hex(),
        "phase": state.phase(),
        "settled_unix_ms": state.settled_unix_ms(),
        "usage": state.usage(),
        "network": network_word(state.network_status()),
        "final": is_final(state),
    })
}

/// True when `at` lies in `[since, until)` (an absent bound is open).
pub fn in_period(at: u64, since: Option<u64>, until: Option<u64>) -> bool {
    since.is_none_or(|s| at >= s) && until.is_none_or(|u| at < u)
}

/// A billing period `[since, until)`: every grant settled in it (by its settlement time) and
/// every live grant's usage so far, each marked final or not, with their totals:
/// `{since_unix_ms, until_unix_ms, settled: [..], live: [..], total_settled, total_live}`.
pub fn period_json(
    grants: &BTreeMap<GrantId, GrantState>,
    since: Option<u64>,
    until: Option<u64>,
) -> serde_json::Value {
    let settled: Vec<_> =
        grants.iter().filter(|(_, s)| s.settled_unix_ms().is_some_and(|at| in_period(at, since, until))).collect();
    let live: Vec<_> = grants.iter().filter(|(_, s)| !s.is_settled()).collect();
    let total_settled: UsageMetrics = settled.iter().map(|(_, s)| s.usage()).sum();
    let total_live: UsageMetrics = live.iter().map(|(_, s)| s.usage()).sum();
    serde_json::json!({
        "since_unix_ms": since,
        "until_unix_ms": until,
        "settled": settled.iter().map(|(id, s)| period_grant_json(id, s)).collect::<Vec<_>>(),
        "live": live.iter().map(|(id, s)| period_grant_json(id, s)).collect::<Vec<_>>(),
        "total_settled": total_settled,
        "total_live": total_live,
    })
}

/// The version of the export schema (`usage-ledger export`, documented in `docs/metering.md`).
pub const EXPORT_SCHEMA: u32 = 1;

/// One settled grant as an export line: `{schema, grant, attempt, settled_unix_ms, usage:
/// {cpu_seconds, ram_mib_seconds, network_bytes, storage_bytes}, network, final}`; `None` for a
/// grant not settled.
pub fn export_json(id: &GrantId, state: &GrantState) -> Option<serde_json::Value> {
    let settled_unix_ms = state.settled_unix_ms()?;
    let usage = state.usage();
    Some(serde_json::json!({
        "schema": EXPORT_SCHEMA,
        "grant": id.to_hex(),
        "attempt": state.attempt(),
        "settled_unix_ms": settled_unix_ms,
        "usage": {
            "cpu_seconds": usage.cpu_seconds,
            "ram_mib_seconds": usage.ram_mib_seconds,
            "network_bytes": usage.network_bytes,
            "storage_bytes": usage.storage_bytes,
        },
        "network": network_word(state.network_status()),
        "final": is_final(state),
    }))
}

/// Parses a period bound: unix milliseconds, a date `YYYY-MM-DD` (its midnight, UTC) or
/// `YYYY-MM-DDTHH:MM:SSZ`. No clock is read.
pub fn parse_instant(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("{text:?} is neither unix milliseconds, YYYY-MM-DD nor YYYY-MM-DDTHH:MM:SSZ");
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let field = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else { return Err(bad()) };
    let (y, m, d) = (field(y)?, field(m)?, field(d)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let parts: Vec<&str> = time.split(':').collect();
            let [h, mi, s] = parts[..] else { return Err(bad()) };
            let (h, mi, s) = (field(h)?, field(mi)?, field(s)?);
            if h > 23 || mi > 59 || s > 60 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + s
        }
    };
    Ok((days_from_civil(y, m, d) * 86_400 + seconds) * 1000)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm),
/// for years from 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn period_bounds_parse_as_utc_without_a_clock() {
        assert_eq!(parse_instant("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_instant("1970-01-01").unwrap(), 0);
        assert_eq!(parse_instant("2024-03-01").unwrap(), 1_709_251_200_000);
        assert_eq!(parse_instant("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(parse_instant("2024-13-01").is_err());
        assert!(parse_instant("yesterday").is_err());
    }

    #[test]
    fn a_period_is_half_open() {
        assert!(in_period(10, Some(10), Some(20)));
        assert!(!in_period(20, Some(10), Some(20)));
        assert!(in_period(5, None, Some(20)));
    }
}
