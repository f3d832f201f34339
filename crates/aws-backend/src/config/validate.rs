//! The check every configuration passes at load ([`AwsBootConfig::validate`]), and
//! [`ConfigError`]. The check does not stop at the first problem: it collects every one
//! ([`ConfigProblem`], naming the key, the value and the fix), so an operator fixes a file in
//! one pass (`aws-backend check-config` prints them all). The `[ledger]` keys are checked in
//! `ledger.rs`, the prices in `prices.rs`.

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
    /// The TOML does not parse or has wrong types or unknown fields. The parser stops at the
    /// first such problem, so this names one.
    #[error("parsing config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field.
        message: String,
    },
    /// Fields have values that cannot work: every one found, in the order of the file's keys
    /// as documented.
    #[error("{}", show_problems(problems))]
    Invalid {
        /// Each problem, never empty.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`] configuration; empty for the other kinds.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// One key with a value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, dotted as in TOML: `ami.us-east-1`, `ledger.lease_s`.
    pub field: String,
    /// What is wrong with the value (which it quotes) and what to write instead.
    pub reason: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config field `{}`: {}", self.field, self.reason)
    }
}

fn show_problems(problems: &[ConfigProblem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  {p}")).collect();
            format!("{} problems in the config:\n{}", many.len(), lines.join("\n"))
        }
    }
}

/// The problems found so far.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Notes that `field` cannot work, and why (quoting the value) and what to do.
    pub(super) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigProblem { field: field.into(), reason: reason.into() });
    }
}

/// The longest drain [`AwsBootConfig::drain_s`] allows: a provision takes minutes at most.
pub const DRAIN_S_MAX: u64 = 3_600;

pub(super) fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// True when `url` is an http(s) URL.
pub(super) fn is_http_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

impl AwsBootConfig {
    /// Checks every field and returns every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.check_regions_and_amis(&mut problems);
        self.check_prices(&mut problems);
        self.check_network_and_quotas(&mut problems);
        self.check_names_and_sizes(&mut problems);
        self.check_access(&mut problems);
        self.check_timing(&mut problems);
        if let Err(e) = self.guest.validate() {
            problems.add("guest", e.to_string());
        }
        self.check_ledger(&mut problems);
        if problems.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems: problems.0 }) }
    }

    fn region_names(&self) -> Vec<&str> {
        self.regions.iter().map(RegionLabel::as_str).collect()
    }

    fn check_regions_and_amis(&self, problems: &mut Problems) {
        if self.regions.is_empty() {
            problems.add("regions", "is empty: list at least one region, e.g. [\"us-east-1\"]");
        }
        let mut seen = std::collections::BTreeSet::new();
        for region in &self.regions {
            if !seen.insert(region.as_str()) {
                problems.add("regions", format!("lists {region} twice: remove one"));
            }
            if !self.ami.contains_key(region.as_str()) {
                problems.add(
                    "ami",
                    format!(
                        "has no AMI for region {region}: add `{region} = \"ami-...\"` or `{region} = \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"`"
                    ),
                );
            }
        }
        for (region, entry) in &self.ami {
            match entry {
                AmiEntry::X86_64(value) => {
                    if let Err(reason) = ImageSource::parse(value) {
                        problems.add(format!("ami.{region}"), reason);
                    }
                }
                AmiEntry::PerArchitecture(map) if map.is_empty() => problems.add(
                    format!("ami.{region}"),
                    "is an empty table: give at least one architecture, e.g. { x86_64 = \"ami-...\" }",
                ),
                AmiEntry::PerArchitecture(map) => {
                    for (arch, value) in map {
                        let field = format!("ami.{region}.{arch}");
                        if Architecture::from_name(arch).is_none() {
                            problems.add(
                                field,
                                format!(
                                    "{arch:?} is not an architecture the backend launches: use x86_64 or arm64 (EC2's names)"
                                ),
                            );
                        } else if let Err(reason) = ImageSource::parse(value) {
                            problems.add(field, reason);
                        }
                    }
                }
            }
        }
        if self.ami_refresh_s < 60 || self.ami_refresh_s > 7 * 86_400 {
            problems.add(
                "ami_refresh_s",
                format!(
                    "{} s is outside 60 to 604800: AWS publishes new AMIs every few weeks; use 3600",
                    self.ami_refresh_s
                ),
            );
        }
    }

    fn check_prices(&self, problems: &mut Problems) {
        for (key, entry) in &self.prices {
            match entry {
                PriceEntry::UsdPerHour(usd) => check_price(problems, &format!("prices.\"{key}\""), key, *usd),
                PriceEntry::Region(_) if !self.allows(key) => problems.add(
                    format!("prices.{key}"),
                    format!(
                        "{key:?} is not one of the configured regions {:?}: a table under [prices] names a region; an instance type's price is written \"m7g.large\" = 0.0816",
                        self.region_names()
                    ),
                ),
                PriceEntry::Region(table) => {
                    for (itype, usd) in table {
                        check_price(problems, &format!("prices.{key}.\"{itype}\""), itype, *usd);
                    }
                }
            }
        }
    }

    fn check_network_and_quotas(&self, problems: &mut Problems) {
        for (region, network) in &self.network {
            let field = format!("network.{region}");
            if !self.allows(region) {
                problems.add(
                    &field,
                    format!(
                        "names a region not in `regions` {:?}: add {region} to `regions` or drop the entry",
                        self.region_names()
                    ),
                );
            }
            match (network.subnet_ids.is_empty(), network.subnet_tags.is_empty()) {
                (true, true) => problems.add(
                    &field,
                    "names no subnet: give `subnet_ids = [\"subnet-...\"]` or `subnet_tags = { key = \"value\" }`",
                ),
                (false, false) => problems.add(&field, "gives both `subnet_ids` and `subnet_tags`: keep one"),
                _ => {}
            }
            for bad in network.subnet_ids.iter().filter(|id| !(id.starts_with("subnet-") && is_name(id, 64))) {
                problems.add(
                    format!("{field}.subnet_ids"),
                    format!("{bad:?} is not a subnet id: write one like \"subnet-0123456789abcdef0\""),
                );
            }
        }
        for (region, quota) in &self.vcpu_quota {
            let field = format!("vcpu_quota.{region}");
            if !self.allows(region) {
                problems.add(
                    &field,
                    format!(
                        "names a region not in `regions` {:?}: add {region} to `regions` or drop the entry",
                        self.region_names()
                    ),
                );
            }
            if *quota == 0 {
                problems
                    .add(&field, "is 0: no grant could run; give the quota in vCPUs (Service Quotas code L-1216C47A)");
            }
        }
    }

    fn check_names_and_sizes(&self, problems: &mut Problems) {
        if self.instance_families.is_empty() {
            problems.add("instance_families", "is empty: list at least one family, e.g. [\"m6i\"]");
        }
        for family in &self.instance_families {
            let ok = !family.is_empty()
                && family.len() <= 16
                && family.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                problems.add("instance_families", format!("{family:?} is not a family name: write one like \"m6i\""));
            }
        }
        if !is_name(&self.owner, 64) {
            problems.add(
                "owner",
                format!("{:?} must be 1-64 characters of [A-Za-z0-9._-], e.g. \"bridge-prod-eu-1\"", self.owner),
            );
        }
        if !self.root_device_name.starts_with("/dev/") || self.root_device_name.len() > 32 {
            problems.add(
                "root_device_name",
                format!(
                    "{:?} is not a device: write one like \"/dev/xvda\" (the AMI's root device)",
                    self.root_device_name
                ),
            );
        }
        if self.min_root_volume_gib == 0 || self.min_root_volume_gib > 16_384 {
            problems.add(
                "min_root_volume_gib",
                format!(
                    "{} is outside 1 to 16384 GiB: use the AMI's root volume size, e.g. 8",
                    self.min_root_volume_gib
                ),
            );
        }
        for (key, value) in &self.tags {
            if key.starts_with("aws:") || key.starts_with("compute-bridge:") {
                problems.add(
                    format!("tags.{key}"),
                    "uses a reserved prefix (aws: and compute-bridge: are reserved): rename the key",
                );
            }
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                problems.add(
                    format!("tags.{key}"),
                    format!(
                        "has a key of {} and a value of {} characters: keys are 1-128 and values 0-256 characters",
                        key.len(),
                        value.len()
                    ),
                );
            }
        }
        if self.tags.len() > 40 {
            problems.add(
                "tags",
                format!(
                    "has {} tags: at most 40 extra tags (EC2 allows 50 per resource, we use some); drop some",
                    self.tags.len()
                ),
            );
        }
    }

    fn check_access(&self, problems: &mut Problems) {
        if self.ssh_ingress_cidrs.is_empty() {
            problems.add(
                "ssh_ingress_cidrs",
                "is empty: nobody could log in; list your requesters' ranges, e.g. [\"203.0.113.0/24\", \"2001:db8::/32\"]",
            );
        }
        let mut seen_cidrs = std::collections::BTreeSet::new();
        for cidr in &self.ssh_ingress_cidrs {
            // EC2 refuses a request that names one range twice ("The same permission must not
            // appear multiple times", input-output-hk/bitte#24), which would fail every provision:
            // refuse it here instead.
            if !seen_cidrs.insert(cidr) {
                problems.add("ssh_ingress_cidrs", format!("lists {cidr} twice: remove one"));
            }
        }
        for (field, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("cloudwatch_endpoint_url", &self.cloudwatch_endpoint_url),
            ("ssm_endpoint_url", &self.ssm_endpoint_url),
        ] {
            if let Some(url) = url.as_deref().filter(|url| !is_http_url(url)) {
                problems.add(
                    field,
                    format!("{url:?} is not an http(s) URL: write one like \"https://ec2.us-east-1.amazonaws.com\" or remove it"),
                );
            }
        }
        if let Some(creds) = &self.credentials
            && (creds.access_key_id.is_empty() || creds.secret_access_key.expose().is_empty())
        {
            // The secret is never quoted, not even when it is the one that is set.
            problems.add(
                "credentials",
                "access_key_id and secret_access_key must both be set, or drop [credentials] to use the standard AWS chain",
            );
        }
    }

    fn check_timing(&self, problems: &mut Problems) {
        if self.poll_interval_ms < 100 || self.poll_interval_ms > 600_000 {
            problems
                .add("poll_interval_ms", format!("{} is outside 100 to 600000 ms: use 5000", self.poll_interval_ms));
        }
        if self.max_start_wait_s > 86_400 {
            problems.add(
                "max_start_wait_s",
                format!("{} s is more than a day of holding a provision open; use 600", self.max_start_wait_s),
            );
        }
        if self.min_lifetime_s > 86_400 {
            problems.add(
                "min_lifetime_s",
                format!("{} s is more than a day: no grant would be admitted; use 60", self.min_lifetime_s),
            );
        }
        if self.network_final_after_s > 86_400 {
            problems.add(
                "network_final_after_s",
                format!(
                    "{} s is more than a day: CloudWatch publishes within minutes; use 900",
                    self.network_final_after_s
                ),
            );
        }
        if self.drain_s > DRAIN_S_MAX {
            problems.add(
                "drain_s",
                format!(
                    "{} s is more than an hour of refusing grants before a stop; use 30 (at most {DRAIN_S_MAX}), and give \
                     the supervisor a longer stop timeout (systemd TimeoutStopSec)",
                    self.drain_s
                ),
            );
        }
    }
}
