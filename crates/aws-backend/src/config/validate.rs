//! The check every configuration passes at load ([`AwsBootConfig::validate`]), and
//! [`ConfigError`], which names the field and the fix. The `[ledger]` keys are checked in
//! `ledger.rs`.

use std::path::PathBuf;

use backend_api::RegionLabel;

use super::prices::check_price;
use super::{AmiEntry, AwsBootConfig, ImageSource, PriceEntry};
use crate::port::Architecture;

/// A configuration that cannot be used: names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has wrong types or unknown fields.
    #[error("parsing config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The longest drain [`AwsBootConfig::drain_s`] allows: a provision takes minutes at most.
pub const DRAIN_S_MAX: u64 = 3_600;

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

pub(super) fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl AwsBootConfig {
    /// Checks every field; the first problem is returned with the field named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.regions.is_empty() {
            return Err(invalid("regions", "is empty: list at least one region, e.g. [\"us-east-1\"]"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for region in &self.regions {
            if !seen.insert(region.as_str()) {
                return Err(invalid("regions", format!("lists {region} twice")));
            }
            if !self.ami.contains_key(region.as_str()) {
                return Err(invalid(
                    "ami",
                    format!(
                        "has no AMI for region {region}: add `{region} = \"ami-...\"` or `{region} = \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"`"
                    ),
                ));
            }
        }
        for (region, entry) in &self.ami {
            let values: Vec<(String, &str)> = match entry {
                AmiEntry::X86_64(value) => vec![(format!("ami.{region}"), value.as_str())],
                AmiEntry::PerArchitecture(map) if map.is_empty() => {
                    return Err(invalid(
                        format!("ami.{region}"),
                        "is an empty table: give at least one architecture, e.g. { x86_64 = \"ami-...\" }",
                    ));
                }
                AmiEntry::PerArchitecture(map) => {
                    let mut values = Vec::new();
                    for (arch, value) in map {
                        if Architecture::from_name(arch).is_none() {
                            return Err(invalid(
                                format!("ami.{region}.{arch}"),
                                format!(
                                    "{arch:?} is not an architecture the backend launches: use x86_64 or arm64 (EC2's names)"
                                ),
                            ));
                        }
                        values.push((format!("ami.{region}.{arch}"), value.as_str()));
                    }
                    values
                }
            };
            for (field, value) in values {
                ImageSource::parse(value).map_err(|reason| invalid(field, reason))?;
            }
        }
        if self.ami_refresh_s < 60 || self.ami_refresh_s > 7 * 86_400 {
            return Err(invalid(
                "ami_refresh_s",
                format!(
                    "{} s is outside 60 to 604800: AWS publishes new AMIs every few weeks; use 3600",
                    self.ami_refresh_s
                ),
            ));
        }
        for (key, entry) in &self.prices {
            match entry {
                PriceEntry::UsdPerHour(usd) => check_price(&format!("prices.\"{key}\""), key, *usd)?,
                PriceEntry::Region(table) => {
                    if !self.allows(key) {
                        return Err(invalid(
                            format!("prices.{key}"),
                            format!(
                                "{key:?} is not one of the configured regions {:?}: a table under [prices] names a region; an instance type's price is written \"m7g.large\" = 0.0816",
                                self.regions.iter().map(RegionLabel::as_str).collect::<Vec<_>>()
                            ),
                        ));
                    }
                    for (itype, usd) in table {
                        check_price(&format!("prices.{key}.\"{itype}\""), itype, *usd)?;
                    }
                }
            }
        }
        for (region, network) in &self.network {
            if !self.regions.iter().any(|r| r.as_str() == region) {
                return Err(invalid(
                    format!("network.{region}"),
                    format!("names a region not in `regions`: add {region} to `regions` or drop the entry"),
                ));
            }
            match (network.subnet_ids.is_empty(), network.subnet_tags.is_empty()) {
                (true, true) => {
                    return Err(invalid(
                        format!("network.{region}"),
                        "names no subnet: give `subnet_ids = [\"subnet-...\"]` or `subnet_tags = { key = \"value\" }`",
                    ));
                }
                (false, false) => {
                    return Err(invalid(
                        format!("network.{region}"),
                        "gives both `subnet_ids` and `subnet_tags`: keep one",
                    ));
                }
                _ => {}
            }
            if let Some(bad) = network.subnet_ids.iter().find(|id| !(id.starts_with("subnet-") && is_name(id, 64))) {
                return Err(invalid(
                    format!("network.{region}.subnet_ids"),
                    format!("{bad:?} is not a subnet id (subnet-...)"),
                ));
            }
        }
        for (region, quota) in &self.vcpu_quota {
            if !self.regions.iter().any(|r| r.as_str() == region) {
                return Err(invalid(
                    format!("vcpu_quota.{region}"),
                    format!("names a region not in `regions`: add {region} to `regions` or drop the entry"),
                ));
            }
            if *quota == 0 {
                return Err(invalid(
                    format!("vcpu_quota.{region}"),
                    "is 0: no grant could run; give the quota in vCPUs",
                ));
            }
        }
        if self.instance_families.is_empty() {
            return Err(invalid("instance_families", "is empty: list at least one family, e.g. [\"m6i\"]"));
        }
        for family in &self.instance_families {
            let ok = !family.is_empty()
                && family.len() <= 16
                && family.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid("instance_families", format!("{family:?} is not a family name like \"m6i\"")));
            }
        }
        if !is_name(&self.owner, 64) {
            return Err(invalid("owner", format!("{:?} must be 1-64 characters of [A-Za-z0-9._-]", self.owner)));
        }
        if !self.root_device_name.starts_with("/dev/") || self.root_device_name.len() > 32 {
            return Err(invalid(
                "root_device_name",
                format!("{:?} is not a device like /dev/xvda", self.root_device_name),
            ));
        }
        if self.min_root_volume_gib == 0 || self.min_root_volume_gib > 16_384 {
            return Err(invalid("min_root_volume_gib", "must be between 1 and 16384"));
        }
        if self.ssh_ingress_cidrs.is_empty() {
            return Err(invalid(
                "ssh_ingress_cidrs",
                "is empty: nobody could log in; list your requesters' ranges, e.g. [\"203.0.113.0/24\", \"2001:db8::/32\"]",
            ));
        }
        let mut seen_cidrs = std::collections::BTreeSet::new();
        for cidr in &self.ssh_ingress_cidrs {
            // EC2 refuses a request that names one range twice ("The same permission must not
            // appear multiple times", input-output-hk/bitte#24), which would fail every provision:
            // refuse it here instead.
            if !seen_cidrs.insert(cidr) {
                return Err(invalid("ssh_ingress_cidrs", format!("lists {cidr} twice: remove one")));
            }
        }
        for (field, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("cloudwatch_endpoint_url", &self.cloudwatch_endpoint_url),
            ("ssm_endpoint_url", &self.ssm_endpoint_url),
        ] {
            if let Some(url) = url {
                match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => return Err(invalid(field, format!("{url:?} is not an http(s) URL"))),
                }
            }
        }
        if let Some(creds) = &self.credentials
            && (creds.access_key_id.is_empty() || creds.secret_access_key.expose().is_empty())
        {
            {
                return Err(invalid(
                    "credentials",
                    "access_key_id and secret_access_key must both be set, or drop [credentials] to use the standard AWS chain",
                ));
            }
        }
        for (key, value) in &self.tags {
            if key.starts_with("aws:") || key.starts_with("compute-bridge:") {
                return Err(invalid(format!("tags.{key}"), "the aws: and compute-bridge: prefixes are reserved"));
            }
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                return Err(invalid(format!("tags.{key}"), "keys are 1-128 and values 0-256 characters"));
            }
        }
        if self.tags.len() > 40 {
            return Err(invalid("tags", "at most 40 extra tags (EC2 allows 50 per resource, we use some)"));
        }
        if self.poll_interval_ms < 100 || self.poll_interval_ms > 600_000 {
            return Err(invalid(
                "poll_interval_ms",
                format!("{} must be between 100 and 600000", self.poll_interval_ms),
            ));
        }
        if self.max_start_wait_s > 86_400 {
            return Err(invalid(
                "max_start_wait_s",
                format!("{} s is more than a day of holding a provision open; use 600", self.max_start_wait_s),
            ));
        }
        if self.min_lifetime_s > 86_400 {
            return Err(invalid(
                "min_lifetime_s",
                format!("{} s is more than a day: no grant would be admitted; use 60", self.min_lifetime_s),
            ));
        }
        if self.network_final_after_s > 86_400 {
            return Err(invalid(
                "network_final_after_s",
                format!(
                    "{} s is more than a day: CloudWatch publishes within minutes; use 900",
                    self.network_final_after_s
                ),
            ));
        }
        if self.drain_s > DRAIN_S_MAX {
            return Err(invalid(
                "drain_s",
                format!(
                    "{} s is more than an hour of refusing grants before a stop; use 30 (at most {DRAIN_S_MAX}), and give \
                     the supervisor a longer stop timeout (systemd TimeoutStopSec)",
                    self.drain_s
                ),
            ));
        }
        self.guest.validate().map_err(|e| invalid("guest", e.to_string()))?;
        self.validate_ledger()?;
        Ok(())
    }
}
