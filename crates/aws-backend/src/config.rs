//! The operator's configuration (`AwsBootConfig`), loaded from TOML and checked at load.
//!
//! This module holds the top-level keys, their defaults and the accessors the backend reads
//! them through; each section with types of its own has a file under `config/`: `ami`,
//! `ingress` (`ssh_ingress_cidrs`), `ledger`, `network` and `prices`. `validate` is the check at
//! load and [`ConfigError`]. Every public item is re-exported here, as `crate::config::X`.

mod ami;
mod ingress;
mod ledger;
mod network;
mod prices;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backend_api::{Almanac, RegionLabel, Secret};
use serde::Deserialize;

pub use ami::{AmiEntry, ImageSource, SSM_ALIAS_PREFIX, looks_like_ami_id};
pub use ingress::IngressCidr;
pub use ledger::{DynamoLedger, LEASE_S_MAX, LEASE_S_MIN, LedgerConfig, LedgerStore, StoreKind};
pub use network::NetworkConfig;
pub use prices::PriceEntry;
pub use validate::{ConfigError, ConfigProblem, DRAIN_S_MAX};

use crate::guest::GuestConfig;
use crate::port::Architecture;

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
    /// The AMI to launch, per region: an id or an SSM alias, for x86_64 alone
    /// (`us-east-1 = "ami-..."`) or per architecture
    /// (`us-east-1 = { x86_64 = "resolve:ssm:/aws/service/...", arm64 = "..." }`). See
    /// [`AmiEntry`] and [`ImageSource`].
    pub ami: BTreeMap<String, AmiEntry>,
    /// How long an AMI resolved from an SSM alias is used before the alias is read again, s.
    #[serde(default = "default_ami_refresh_s")]
    pub ami_refresh_s: u64,
    /// The operator's On-Demand prices, USD per hour: `"m7g.large" = 0.0816` for every region,
    /// or a table per region (`[prices.us-east-1]`), which wins over the global figure. When
    /// given, fitting types are tried cheapest first (see `sizing::by_price`); otherwise
    /// smallest first.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceEntry>,
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
    /// An endpoint override for SSM alone (a VPC endpoint). Falls back to `endpoint_url`, then
    /// to the SDK's own resolution (`AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub ssm_endpoint_url: Option<String>,
    /// IPv4 and IPv6 CIDRs allowed to reach TCP 22. The default, `["0.0.0.0/0"]`, is the seed's
    /// "from anywhere": kept so that existing configurations behave as before, but the binary
    /// warns at start about it (see [`AwsBootConfig::warnings`]).
    #[serde(default = "default_ssh_ingress_cidrs")]
    pub ssh_ingress_cidrs: Vec<IngressCidr>,
    /// Extra tags on every resource.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The subnets to launch into, per region (`[network.us-east-1]`). A region without an entry
    /// launches into its default VPC, as before, and says so in the log at start.
    #[serde(default)]
    pub network: BTreeMap<String, NetworkConfig>,
    /// The account's On-Demand vCPU quota per region for the standard classes (Service Quotas
    /// code L-1216C47A), when the operator knows it: grants the headroom cannot hold are
    /// refused before anything is created. Without it the bridge learns the quota from
    /// `VcpuLimitExceeded`.
    #[serde(default)]
    pub vcpu_quota: BTreeMap<String, u32>,
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
    /// How long after the end of the last 5-minute period an instance ran in its network figure
    /// is measured again, as final: CloudWatch publishes EC2's 5-minute `NetworkIn`/`NetworkOut`
    /// datapoints minutes after their period ends (docs/ec2-facts.md, "Billing and CloudWatch"), so the
    /// figure taken when the instance ends is provisional. The final figure is CloudWatch's
    /// only if every datapoint has been published by then: this is the longest publication lag
    /// the backend allows for. 0 takes the first figure as final (for a CloudWatch without lag,
    /// as moto's).
    #[serde(default = "default_network_final_after_s")]
    pub network_final_after_s: u64,
    /// How long a drain (SIGTERM, or `Bridge::drain`) waits for the provisions in flight
    /// before the process stops, in seconds; a provision still running then is left to the next
    /// process's recovery, as after a crash. A supervisor's stop timeout must be longer.
    #[serde(default = "default_drain_s")]
    pub drain_s: u64,
    /// How to map coalition ticks to time.
    pub almanac: Almanac,
    /// The usage ledger file, with the file store (the default). Required then; refused with
    /// `[ledger] store = "dynamodb"`, whose ledger is the table.
    #[serde(default)]
    pub ledger_path: PathBuf,
    /// Where the ledger is kept (`[ledger]`): the file at `ledger_path` (the default), or a
    /// DynamoDB table shared by a bridge group under a lease. See [`LedgerConfig`].
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The guest contract: content store, login user, container runtime.
    pub guest: GuestConfig,
}

fn default_ami_refresh_s() -> u64 {
    3_600
}
fn default_root_device_name() -> String {
    "/dev/xvda".into()
}
fn default_min_root_volume_gib() -> u32 {
    8
}
fn default_ssh_ingress_cidrs() -> Vec<IngressCidr> {
    vec![IngressCidr::IPV4_ANYWHERE]
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
fn default_drain_s() -> u64 {
    30
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

    /// What is allowed but risky in this configuration, one sentence each, for the binary to log
    /// at start: today, SSH open to the whole Internet (`0.0.0.0/0` or `::/0`, the first being
    /// the default).
    pub fn warnings(&self) -> Vec<String> {
        self.ssh_ingress_cidrs
            .iter()
            .filter(|cidr| cidr.is_anywhere())
            .map(|cidr| {
                let family = if cidr.is_ipv6() { "IPv6" } else { "IPv4" };
                format!(
                    "ssh_ingress_cidrs includes {cidr}: TCP 22 of every grant's machine is open to the whole {family} Internet; \
                     list only your requesters' ranges instead, e.g. ssh_ingress_cidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]"
                )
            })
            .collect()
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

    /// [`AwsBootConfig::drain_s`] in milliseconds.
    pub fn drain_ms(&self) -> u64 {
        self.drain_s.saturating_mul(1_000)
    }

    /// [`AwsBootConfig::min_lifetime_s`] in milliseconds.
    pub fn min_lifetime_ms(&self) -> u64 {
        self.min_lifetime_s.saturating_mul(1_000)
    }

    /// True when `region` is allowed.
    pub fn allows(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == region)
    }

    /// Where the AMI for `arch` in `region` comes from; `None` when the configuration gives
    /// none (instance types of that architecture are then never chosen there).
    pub fn image_source(&self, region: &str, arch: Architecture) -> Option<ImageSource> {
        // Checked at load, so a value that does not parse here cannot occur; it reads as none.
        self.ami.get(region)?.raw(arch).and_then(|raw| ImageSource::parse(raw).ok())
    }

    /// The architectures `region` has an AMI for.
    pub fn architectures(&self, region: &str) -> std::collections::BTreeSet<Architecture> {
        Architecture::ALL.into_iter().filter(|arch| self.image_source(region, *arch).is_some()).collect()
    }

    /// [`AwsBootConfig::ami_refresh_s`] in milliseconds.
    pub fn ami_refresh_ms(&self) -> u64 {
        self.ami_refresh_s.saturating_mul(1_000)
    }

    /// The operator's prices in `region`, USD per hour by instance type: the region's table
    /// over the global figures. Empty when no prices are configured.
    pub fn prices_for(&self, region: &str) -> BTreeMap<String, f64> {
        let mut prices: BTreeMap<String, f64> = self
            .prices
            .iter()
            .filter_map(|(key, entry)| match entry {
                PriceEntry::UsdPerHour(usd) => Some((key.clone(), *usd)),
                PriceEntry::Region(_) => None,
            })
            .collect();
        if let Some(PriceEntry::Region(table)) = self.prices.get(region) {
            prices.extend(table.iter().map(|(k, v)| (k.clone(), *v)));
        }
        prices
    }
}
