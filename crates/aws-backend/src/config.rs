//! The operator's configuration (`AwsBootConfig`), loaded from TOML and checked at load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backend_api::{Almanac, RegionLabel, Secret};
use serde::Deserialize;

use crate::guest::GuestConfig;

/// The tag key that marks every resource this backend creates; its value is [`AwsBootConfig::owner`].
pub const OWNER_TAG: &str = "compute-bridge:owner";
/// The tag key that names the grant a resource belongs to (64 hex characters).
pub const GRANT_TAG: &str = "compute-bridge:grant";

/// Static operator credentials. When absent, the standard AWS credential chain is used.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    /// The access key id (not secret on its own, but kept out of logs anyway).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// An optional session token.
    #[serde(default)]
    pub session_token: Option<Secret>,
}

/// Everything the AWS backend needs to know, as the operator writes it in TOML.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsBootConfig {
    /// Regions grants may be placed in; the first is used when a grant names none.
    pub regions: Vec<RegionLabel>,
    /// Instance families to size grants from, e.g. `["m6i", "c6i", "r6i"]`.
    pub instance_families: Vec<String>,
    /// The value of the owner tag on every resource: which bridge owns it. The reaper only
    /// ever touches resources with this owner.
    pub owner: String,
    /// The AMI to launch, per region.
    pub ami: BTreeMap<String, String>,
    /// The AMI's root device name.
    #[serde(default = "default_root_device_name")]
    pub root_device_name: String,
    /// The smallest root volume the AMI accepts, in GiB; smaller requests get this size.
    #[serde(default = "default_min_root_volume_gib")]
    pub min_root_volume_gib: u32,
    /// Static credentials; the standard AWS chain when absent.
    #[serde(default)]
    pub credentials: Option<StaticCredentials>,
    /// An endpoint override for every region (moto, LocalStack). `AWS_ENDPOINT_URL_EC2` and
    /// `AWS_ENDPOINT_URL` are honoured by the SDK when this is absent.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// An endpoint override for CloudWatch alone (a VPC endpoint; in tests, the CBOR-to-JSON
    /// bridge in front of moto). Falls back to `endpoint_url`, then to the SDK's own
    /// resolution (`AWS_ENDPOINT_URL_CLOUDWATCH`, `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub cloudwatch_endpoint_url: Option<String>,
    /// CIDRs allowed to reach TCP 22.
    #[serde(default = "default_ssh_ingress_cidrs")]
    pub ssh_ingress_cidrs: Vec<ipnet::Ipv4Net>,
    /// Extra tags on every resource.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How often the shared per-region poller describes the watched instances.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long a resource must exist before the reaper may remove it (eventual consistency).
    #[serde(default = "default_reaper_grace_ms")]
    pub reaper_grace_ms: u64,
    /// The least time before `valid_to` at which RunInstances may still be sent: a grant with
    /// less left is refused, and a provision that reaches the launch later than this gives up.
    /// An instance launched seconds before its deadline could not be used, and EC2 may not even
    /// let us terminate it on time (a new instance id is invisible for a few seconds).
    #[serde(default = "default_min_lifetime_s")]
    pub min_lifetime_s: u64,
    /// The longest a provision waits for a grant's `valid_from`; a grant that starts later is
    /// refused (nothing is created before `valid_from`).
    #[serde(default = "default_max_start_wait_s")]
    pub max_start_wait_s: u64,
    /// How long after an instance ends its network figure is measured again, as final:
    /// CloudWatch publishes EC2's 5-minute `NetworkIn`/`NetworkOut` datapoints minutes late
    /// (shared/EC2-FACTS.md, Metering), so the figure taken when the instance ends is
    /// provisional. 0 takes the first figure as final (for a CloudWatch without lag, as moto's).
    #[serde(default = "default_network_final_after_s")]
    pub network_final_after_s: u64,
    /// How to map coalition ticks to time.
    pub almanac: Almanac,
    /// The usage ledger file.
    pub ledger_path: PathBuf,
    /// The guest contract: content store, login user, container runtime.
    pub guest: GuestConfig,
}

fn default_root_device_name() -> String {
    "/dev/xvda".into()
}
fn default_min_root_volume_gib() -> u32 {
    8
}
fn default_ssh_ingress_cidrs() -> Vec<ipnet::Ipv4Net> {
    vec![ipnet::Ipv4Net::default()]
}
fn default_poll_interval_ms() -> u64 {
    5_000
}
fn default_reaper_grace_ms() -> u64 {
    10 * 60_000
}
fn default_min_lifetime_s() -> u64 {
    60
}
fn default_max_start_wait_s() -> u64 {
    600
}
fn default_network_final_after_s() -> u64 {
    900
}

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

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl AwsBootConfig {
    /// Reads, parses and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: AwsBootConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

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
            match self.ami.get(region.as_str()) {
                None => {
                    return Err(invalid(
                        "ami",
                        format!("has no AMI for region {region}: add `{region} = \"ami-...\"`"),
                    ));
                }
                Some(ami) if !(ami.starts_with("ami-") && is_name(ami, 64)) => {
                    return Err(invalid(format!("ami.{region}"), format!("{ami:?} is not an AMI id (ami-...)")));
                }
                Some(_) => {}
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
                "is empty: nobody could log in; use [\"0.0.0.0/0\"] or your ranges",
            ));
        }
        for (field, url) in
            [("endpoint_url", &self.endpoint_url), ("cloudwatch_endpoint_url", &self.cloudwatch_endpoint_url)]
        {
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
        self.guest.validate().map_err(|e| invalid("guest", e.to_string()))?;
        Ok(())
    }

    /// The region a grant runs in: the envelope's, or the first allowed one.
    pub fn default_region(&self) -> &RegionLabel {
        &self.regions[0]
    }

    /// How long after `valid_to` an instance may still be up: the guest powers itself off then
    /// (`guest.deadline_grace_s`) if the bridge has not ended it.
    pub fn deadline_grace_ms(&self) -> u64 {
        self.guest.deadline_grace_s.saturating_mul(1_000)
    }

    /// [`AwsBootConfig::max_start_wait_s`] in milliseconds.
    pub fn max_start_wait_ms(&self) -> u64 {
        self.max_start_wait_s.saturating_mul(1_000)
    }

    /// [`AwsBootConfig::network_final_after_s`] in milliseconds.
    pub fn network_final_after_ms(&self) -> u64 {
        self.network_final_after_s.saturating_mul(1_000)
    }

    /// [`AwsBootConfig::min_lifetime_s`] in milliseconds.
    pub fn min_lifetime_ms(&self) -> u64 {
        self.min_lifetime_s.saturating_mul(1_000)
    }

    /// True when `region` is allowed.
    pub fn allows(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == region)
    }
}
