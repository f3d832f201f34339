//! `prices`: the operator's On-Demand prices ([`PriceEntry`]), global or per region, and the
//! check of each figure.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate::{Problems, is_name};

/// One `prices` entry, as written: a global price for an instance type, or a region's table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PriceEntry {
    /// `"m7g.large" = 0.0816`: USD per hour in every region without a figure of its own.
    UsdPerHour(f64),
    /// `[prices.us-east-1]`: USD per hour by instance type in that region.
    Region(BTreeMap<String, f64>),
}

/// Notes a price that is not a positive, finite USD figure, or a key that is no type name.
pub(super) fn check_price(problems: &mut Problems, field: &str, instance_type: &str, usd_per_hour: f64) {
    if !instance_type.contains('.') || !is_name(instance_type, 64) {
        problems.add(
            field,
            format!(
                "{instance_type:?} is neither an instance type (like \"m7g.large\") nor, with a table, a configured region"
            ),
        );
    }
    if !(usd_per_hour.is_finite() && usd_per_hour > 0.0) {
        problems.add(field, format!("{usd_per_hour} is not a price: write USD per hour above 0, e.g. 0.0816"));
    }
}
