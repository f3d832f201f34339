//! The operator's configuration (`AwsBootConfig`), loaded from TOML and checked at load.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use backend_api::{Almanac, RegionLabel, Secret};
use serde::Deserialize;

use crate::guest::GuestConfig;
use crate::port::Architecture;

/// The tag key that marks every resource this backend creates; its value is [`AwsBootConfig::owner`].
pub const OWNER_TAG: &str = "compute-bridge:owner";
/// The tag key that names the grant a resource belongs to (64 hex characters).
pub const GRANT_TAG: &str = "compute-bridge:grant";

/// One entry of `ssh_ingress_cidrs`: an IPv4 or IPv6 network in CIDR notation, such as
/// `203.0.113.0/24` or `2001:db8::/32`, with every bit past the prefix clear.
///
/// Bits past the prefix are refused rather than dropped: EC2 masks them silently, so
/// `203.0.113.7/24` would let in the whole /24 where the operator probably meant one address
/// (ansible/ansible#25403 and #21871 show both the masking and the confusion it causes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct IngressCidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl IngressCidr {
    /// `0.0.0.0/0`: every IPv4 address, the seed's default.
    pub const IPV4_ANYWHERE: IngressCidr = IngressCidr { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix_len: 0 };
    /// `::/0`: every IPv6 address.
    pub const IPV6_ANYWHERE: IngressCidr = IngressCidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix_len: 0 };

    /// Parses `a.b.c.d/n` (n at most 32) or an IPv6 address and `/n` (n at most 128). The error
    /// names the value and says how to write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((addr_text, prefix_text)) = text.split_once('/') else {
            let hint = match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => format!("write \"{text}/32\" for that one address"),
                Ok(IpAddr::V6(_)) => format!("write \"{text}/128\" for that one address"),
                Err(_) => "write a network such as \"203.0.113.0/24\" or \"2001:db8::/32\"".to_string(),
            };
            return Err(format!("{text:?} is not a CIDR (no /prefix length): {hint}"));
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!(
                "{text:?} is not a CIDR: {addr_text:?} is neither an IPv4 nor an IPv6 address; write a network such as \"203.0.113.0/24\" or \"2001:db8::/32\""
            )
        })?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        // Digits only: `u8::from_str` would also take "+8", which no CIDR parser in EC2 accepts.
        let prefix_len = (!prefix_text.is_empty()
            && prefix_text.len() <= 3
            && prefix_text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| prefix_text.parse::<u8>().ok())
        .flatten()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
            format!(
                "{text:?} is not a CIDR: the prefix length of an {family} network is 0 to {max}, not {prefix_text:?}"
            )
        })?;
        let network = Self::mask(addr, prefix_len);
        if network != addr {
            let single = if addr.is_ipv6() { 128 } else { 32 };
            return Err(format!(
                "{text:?} has bits set past its /{prefix_len} prefix, which EC2 would silently widen to {network}/{prefix_len}: write \"{network}/{prefix_len}\" for the network, or \"{addr}/{single}\" for the one address"
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    /// `addr` with every bit past `prefix_len` cleared.
    fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let kept = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & kept))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let kept = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & kept))
            }
        }
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True for an IPv6 network (sent to EC2 as an `Ipv6Ranges` entry).
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True for `0.0.0.0/0` and `::/0`: the whole Internet of that family.
    pub fn is_anywhere(&self) -> bool {
        self.prefix_len == 0
    }
}

impl std::fmt::Display for IngressCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for IngressCidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for IngressCidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        // The field's name goes into the message: TOML's own error shows only the line.
        Self::parse(&text).map_err(|reason| format!("ssh_ingress_cidrs: {reason}"))
    }
}

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
    /// datapoints minutes after their period ends (shared/EC2-FACTS.md, Metering), so the
    /// figure taken when the instance ends is provisional. The final figure is CloudWatch's
    /// only if every datapoint has been published by then: this is the longest publication lag
    /// the backend allows for. 0 takes the first figure as final (for a CloudWatch without lag,
    /// as moto's).
    #[serde(default = "default_network_final_after_s")]
    pub network_final_after_s: u64,
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

/// Where a region's grants launch: subnets named by id, or chosen by their tags (every tag
/// must match, as a term of Karpenter's `subnetSelectorTerms` does). Exactly one of the two.
/// The subnets must all be in one VPC, where each grant's security group is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Subnet ids, e.g. `["subnet-0123456789abcdef0"]`.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    /// Tags a subnet must carry to be used, e.g. `{ "compute-bridge/subnet" = "grants" }`.
    #[serde(default)]
    pub subnet_tags: BTreeMap<String, String>,
}

/// `[ledger]`: which store keeps the usage ledger, as the operator writes it. Checked at load
/// ([`AwsBootConfig::validate`]) and read through [`AwsBootConfig::ledger_store`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `"file"` (the default): the file at `ledger_path`, locked by one process, its key seed at
    /// `<ledger_path>.keyseed`. `"dynamodb"`: a table a bridge group shares, written only by
    /// the holder of the group's lease; the others stand by.
    #[serde(default)]
    pub store: StoreKind,
    /// The DynamoDB table (`store = "dynamodb"`).
    #[serde(default)]
    pub table: Option<String>,
    /// The bridge group: the bridges that share the table and its lease (`store = "dynamodb"`).
    #[serde(default)]
    pub group: Option<String>,
    /// How long an acquisition or a renewal holds the lease, in seconds (`store = "dynamodb"`):
    /// a standby takes over at most this long after the holder stopped renewing.
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
    /// The key seed file, the same on every bridge of the group (`store = "dynamodb"`).
    #[serde(default)]
    pub key_seed_path: Option<PathBuf>,
    /// The table's region (`store = "dynamodb"`). Default: the first of `regions`.
    #[serde(default)]
    pub region: Option<RegionLabel>,
    /// DynamoDB's endpoint (`store = "dynamodb"`). Default: `endpoint_url`, then the SDK's own
    /// resolution (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL`, then AWS).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::File,
            table: None,
            group: None,
            lease_s: default_lease_s(),
            key_seed_path: None,
            region: None,
            endpoint_url: None,
        }
    }
}

/// `[ledger] store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The file at `ledger_path`.
    #[default]
    File,
    /// A DynamoDB table shared by a bridge group.
    Dynamodb,
}

/// The shortest lease `[ledger] lease_s` takes: a sixth of it is the margin two bridges' clocks
/// may drift apart by, and a renewal (every third) must get through DynamoDB's timeouts.
pub const LEASE_S_MIN: u64 = 6;
/// The longest lease: a standby waits this long after its holder died before taking over.
pub const LEASE_S_MAX: u64 = 600;

fn default_lease_s() -> u64 {
    30
}

/// Where the ledger is kept, once the configuration is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerStore {
    /// The file at `path`, its key seed at `<path>.keyseed`.
    File {
        /// The ledger file.
        path: PathBuf,
    },
    /// A DynamoDB table shared by a bridge group.
    DynamoDb(DynamoLedger),
}

/// A ledger in a DynamoDB table shared by a bridge group (`[ledger] store = "dynamodb"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoLedger {
    /// The table.
    pub table: String,
    /// The bridge group.
    pub group: String,
    /// How long an acquisition or a renewal holds the lease, ms.
    pub lease_ms: u64,
    /// The key seed file every bridge of the group shares.
    pub key_seed_path: PathBuf,
    /// The table's region.
    pub region: RegionLabel,
    /// DynamoDB's endpoint, when not the SDK's own resolution.
    pub endpoint_url: Option<String>,
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

/// One region's `ami` entry, as written: one image for x86_64, or one per architecture. The
/// strings are checked at load ([`AwsBootConfig::validate`]) and read as [`ImageSource`]s.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AmiEntry {
    /// `us-east-1 = "ami-..."` or `"resolve:ssm:..."`: the x86_64 image (as before
    /// architectures were configurable).
    X86_64(String),
    /// `us-east-1 = { x86_64 = "...", arm64 = "..." }`: an image per architecture, keyed by
    /// EC2's architecture names.
    PerArchitecture(BTreeMap<String, String>),
}

impl AmiEntry {
    /// The raw value for `arch`, if the entry names one.
    fn raw(&self, arch: Architecture) -> Option<&str> {
        match self {
            AmiEntry::X86_64(value) => (arch == Architecture::X86_64).then_some(value.as_str()),
            AmiEntry::PerArchitecture(map) => map.get(arch.as_str()).map(String::as_str),
        }
    }
}

/// The prefix of an AMI alias, in the syntax EC2 launch templates and RunInstances take
/// ("Use a Systems Manager parameter instead of an AMI ID", Amazon EC2 User Guide:
/// `resolve:ssm:parameter-name`).
pub const SSM_ALIAS_PREFIX: &str = "resolve:ssm:";

/// Where an AMI id comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageSource {
    /// A fixed id, `ami-...`.
    Id(String),
    /// The SSM parameter whose value is the id, e.g.
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`, re-read every
    /// `ami_refresh_s`.
    Parameter(String),
}

impl ImageSource {
    /// Parses `ami-...` or `resolve:ssm:NAME`; the error names the value and what to write.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix(SSM_ALIAS_PREFIX) {
            // Parameter names: letters, digits and `_.-/`, at most 2,048 characters with the
            // path ("PutParameter", AWS Systems Manager API Reference, Name). A `:version` or
            // `:label` selector is not taken: the alias is read as it is now.
            let ok = !name.is_empty()
                && name.len() <= 2_048
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
            if !ok {
                return Err(format!(
                    "{text:?} is not an SSM alias: write resolve:ssm: and a parameter name of letters, digits and _.-/, e.g. \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\""
                ));
            }
            return Ok(ImageSource::Parameter(name.to_string()));
        }
        if looks_like_ami_id(text) {
            return Ok(ImageSource::Id(text.to_string()));
        }
        Err(format!(
            "{text:?} is neither an AMI id (ami-...) nor an SSM alias: write \"ami-0123456789abcdef0\" or \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\""
        ))
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Id(id) => f.write_str(id),
            ImageSource::Parameter(name) => write!(f, "{SSM_ALIAS_PREFIX}{name}"),
        }
    }
}

/// `ami-` and up to 60 more name characters: what the configuration check has always taken
/// for an AMI id. Deliberately looser than EC2's hex rule, so that EC2's own refusal
/// (`InvalidAMIID.Malformed`) names a slightly wrong id with EC2's words (`refusals`).
pub fn looks_like_ami_id(id: &str) -> bool {
    id.len() > 4 && id.starts_with("ami-") && is_name(id, 64)
}

/// One `prices` entry, as written: a global price for an instance type, or a region's table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PriceEntry {
    /// `"m7g.large" = 0.0816`: USD per hour in every region without a figure of its own.
    UsdPerHour(f64),
    /// `[prices.us-east-1]`: USD per hour by instance type in that region.
    Region(BTreeMap<String, f64>),
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
        self.guest.validate().map_err(|e| invalid("guest", e.to_string()))?;
        self.validate_ledger()?;
        Ok(())
    }

    /// Checks `ledger_path` and `[ledger]`: the keys the chosen store needs are there and
    /// usable, and no key of the other store is given (it would be silently ignored).
    fn validate_ledger(&self) -> Result<(), ConfigError> {
        let ledger = &self.ledger;
        let has_path = !self.ledger_path.as_os_str().is_empty();
        match ledger.store {
            StoreKind::File => {
                if !has_path {
                    return Err(invalid(
                        "ledger_path",
                        "is missing: give the ledger file, e.g. ledger_path = \"/var/lib/compute-bridge/aws.ledger\", or keep the ledger in DynamoDB with [ledger] store = \"dynamodb\"",
                    ));
                }
                let dynamodb_only = [
                    ("table", ledger.table.is_some()),
                    ("group", ledger.group.is_some()),
                    ("key_seed_path", ledger.key_seed_path.is_some()),
                    ("region", ledger.region.is_some()),
                    ("endpoint_url", ledger.endpoint_url.is_some()),
                    ("lease_s", ledger.lease_s != default_lease_s()),
                ];
                if let Some((key, _)) = dynamodb_only.iter().find(|(_, given)| *given) {
                    return Err(invalid(
                        format!("ledger.{key}"),
                        "is only used with store = \"dynamodb\": add store = \"dynamodb\" to [ledger], or remove it (the file store keeps its key seed at <ledger_path>.keyseed)",
                    ));
                }
            }
            StoreKind::Dynamodb => {
                if has_path {
                    return Err(invalid(
                        "ledger_path",
                        "is not used with [ledger] store = \"dynamodb\" (the ledger is the table): remove it; to move a file ledger into the table, see `ledger-dynamodb import` in docs/operations.md",
                    ));
                }
                let table = ledger.table.as_deref().ok_or_else(|| {
                    invalid("ledger.table", "is missing: name the DynamoDB table, e.g. table = \"compute-bridge-ledger\" (create it with `ledger-dynamodb create-table`)")
                })?;
                // DynamoDB's own rule for table names (CreateTable, TableName).
                let table_ok = (3..=255).contains(&table.len())
                    && table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !table_ok {
                    return Err(invalid(
                        "ledger.table",
                        format!("{table:?} is not a DynamoDB table name: use 3-255 characters of [A-Za-z0-9_.-]"),
                    ));
                }
                let group = ledger.group.as_deref().ok_or_else(|| {
                    invalid("ledger.group", "is missing: name the bridge group that shares the table, e.g. group = \"bridge-eu-1\"; every bridge of the group gives the same")
                })?;
                usage_ledger::check_lease_name("group", group).map_err(|e| invalid("ledger.group", e.to_string()))?;
                if !(LEASE_S_MIN..=LEASE_S_MAX).contains(&ledger.lease_s) {
                    return Err(invalid(
                        "ledger.lease_s",
                        format!(
                            "{} s is outside {LEASE_S_MIN} to {LEASE_S_MAX}: a standby takes over at most this long after its holder stopped; use 30",
                            ledger.lease_s
                        ),
                    ));
                }
                let seed = ledger.key_seed_path.as_ref().ok_or_else(|| {
                    invalid(
                        "ledger.key_seed_path",
                        "is missing: every bridge of a group must derive the same per-grant SSH keys, so give the path of the group's key seed file, the same file on every bridge (see \"Running a standby\" in docs/operations.md)",
                    )
                })?;
                if seed.as_os_str().is_empty() || !seed.is_absolute() {
                    return Err(invalid(
                        "ledger.key_seed_path",
                        format!(
                            "{} is not an absolute path: give one, e.g. \"/etc/compute-bridge/group.keyseed\"",
                            seed.display()
                        ),
                    ));
                }
                if let Some(url) = &ledger.endpoint_url {
                    match url::Url::parse(url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                        _ => return Err(invalid("ledger.endpoint_url", format!("{url:?} is not an http(s) URL"))),
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the ledger is kept. Call on a checked configuration (every `load` is).
    pub fn ledger_store(&self) -> LedgerStore {
        match self.ledger.store {
            StoreKind::File => LedgerStore::File { path: self.ledger_path.clone() },
            StoreKind::Dynamodb => LedgerStore::DynamoDb(DynamoLedger {
                table: self.ledger.table.clone().unwrap_or_default(),
                group: self.ledger.group.clone().unwrap_or_default(),
                lease_ms: self.ledger.lease_s.saturating_mul(1_000),
                key_seed_path: self.ledger.key_seed_path.clone().unwrap_or_default(),
                region: self.ledger.region.clone().unwrap_or_else(|| self.default_region().clone()),
                endpoint_url: self.ledger.endpoint_url.clone().or_else(|| self.endpoint_url.clone()),
            }),
        }
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

/// Refuses a price that is not a positive, finite USD figure, or a key that is no type name.
fn check_price(field: &str, instance_type: &str, usd_per_hour: f64) -> Result<(), ConfigError> {
    if !instance_type.contains('.') || !is_name(instance_type, 64) {
        return Err(invalid(
            field,
            format!(
                "{instance_type:?} is neither an instance type (like \"m7g.large\") nor, with a table, a configured region"
            ),
        ));
    }
    if !(usd_per_hour.is_finite() && usd_per_hour > 0.0) {
        return Err(invalid(field, format!("{usd_per_hour} is not a price: write USD per hour above 0, e.g. 0.0816")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid configuration whose `ssh_ingress_cidrs` line is `cidrs_line` (empty: the default).
    fn config_with(cidrs_line: &str) -> Result<AwsBootConfig, ConfigError> {
        AwsBootConfig::from_toml(&format!(
            r#"
            regions = ["us-east-1"]
            instance_families = ["m6i"]
            owner = "unit"
            ami = {{ us-east-1 = "ami-12345678" }}
            ledger_path = "/nonexistent/ledger"
            almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
            guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
            {cidrs_line}
            "#
        ))
    }

    fn refused(cidrs_line: &str) -> String {
        match config_with(cidrs_line) {
            Ok(cfg) => panic!("{cidrs_line} was accepted as {:?}", cfg.ssh_ingress_cidrs),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn ipv4_and_ipv6_cidrs_are_accepted_and_printed_canonically() {
        let cfg =
            config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "198.51.100.7/32", "2001:DB8:0:0::/32", "::/0"]"#)
                .expect("valid CIDRs");
        let printed: Vec<String> = cfg.ssh_ingress_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(printed, ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32", "::/0"]);
        let families: Vec<bool> = cfg.ssh_ingress_cidrs.iter().map(IngressCidr::is_ipv6).collect();
        assert_eq!(families, [false, false, true, true]);
        assert_eq!(cfg.ssh_ingress_cidrs[0].prefix_len(), 24);
        assert_eq!(cfg.ssh_ingress_cidrs[3], IngressCidr::IPV6_ANYWHERE);
    }

    #[test]
    fn the_default_is_still_the_whole_ipv4_internet() {
        let cfg = config_with("").expect("valid");
        assert_eq!(cfg.ssh_ingress_cidrs, [IngressCidr::IPV4_ANYWHERE]);
        assert_eq!(cfg.ssh_ingress_cidrs[0].to_string(), "0.0.0.0/0");
    }

    #[test]
    fn prefixes_longer_than_the_family_allows_are_refused_naming_the_value() {
        let err = refused(r#"ssh_ingress_cidrs = ["10.0.0.0/33"]"#);
        assert!(
            err.contains("ssh_ingress_cidrs") && err.contains("\"10.0.0.0/33\"") && err.contains("0 to 32"),
            "{err}"
        );
        let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::/129"]"#);
        assert!(err.contains("\"2001:db8::/129\"") && err.contains("0 to 128"), "{err}");
        // An IPv6 prefix is fine up to 128 but an IPv4 one is not.
        assert!(config_with(r#"ssh_ingress_cidrs = ["2001:db8::1/128"]"#).is_ok());
        for bad in ["10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/0008", "10.0.0.0/8/8"] {
            let err = refused(&format!(r#"ssh_ingress_cidrs = ["{bad}"]"#));
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn garbage_and_bare_addresses_are_refused_with_the_fix() {
        let err = refused(r#"ssh_ingress_cidrs = ["anywhere"]"#);
        assert!(err.contains("\"anywhere\"") && err.contains("203.0.113.0/24"), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["10.0.0.256/8"]"#);
        assert!(err.contains("neither an IPv4 nor an IPv6 address"), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["fe80::1%eth0/64"]"#);
        assert!(err.contains("fe80::1%eth0"), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["198.51.100.7"]"#);
        assert!(err.contains("\"198.51.100.7/32\""), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::7"]"#);
        assert!(err.contains("\"2001:db8::7/128\""), "{err}");
    }

    #[test]
    fn host_bits_past_the_prefix_are_refused_with_both_readings() {
        let err = refused(r#"ssh_ingress_cidrs = ["203.0.113.7/24"]"#);
        assert!(err.contains("\"203.0.113.0/24\"") && err.contains("\"203.0.113.7/32\""), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::1/32"]"#);
        assert!(err.contains("\"2001:db8::/32\"") && err.contains("\"2001:db8::1/128\""), "{err}");
    }

    #[test]
    fn empty_and_repeated_lists_are_refused() {
        let err = refused("ssh_ingress_cidrs = []");
        assert!(err.contains("ssh_ingress_cidrs") && err.contains("is empty"), "{err}");
        let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::/32", "2001:0db8::/32"]"#);
        assert!(err.contains("2001:db8::/32 twice"), "{err}");
    }

    #[test]
    fn opening_ssh_to_the_whole_internet_is_warned_about_per_family() {
        let warnings = config_with("").expect("valid").warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("0.0.0.0/0") && warnings[0].contains("whole IPv4 Internet"), "{warnings:?}");
        assert!(warnings[0].contains("ssh_ingress_cidrs = ["), "the warning says how to narrow it: {warnings:?}");

        let warnings = config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "::/0"]"#).expect("valid").warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("::/0") && warnings[0].contains("whole IPv6 Internet"), "{warnings:?}");

        let narrow = config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "2001:db8::/32", "0.0.0.0/1"]"#);
        assert_eq!(narrow.expect("valid").warnings(), Vec::<String>::new());
    }

    /// A valid configuration whose `ami` part is `ami` (`regions` names us-east-1 and
    /// eu-west-1) followed by the lines `extra` (tables last, as TOML wants).
    fn config_ami(ami: &str, extra: &str) -> Result<AwsBootConfig, ConfigError> {
        AwsBootConfig::from_toml(&format!(
            r#"
            regions = ["us-east-1", "eu-west-1"]
            instance_families = ["m6i", "m7g"]
            owner = "unit"
            ledger_path = "/nonexistent/ledger"
            almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
            guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
            {ami}
            {extra}
            "#
        ))
    }

    const X86_ALIAS: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

    #[test]
    fn amis_are_ids_or_aliases_for_one_or_each_architecture() {
        let cfg = config_ami(
            &format!(
                r#"
                [ami]
                eu-west-1 = "ami-0123456789abcdef0"
                us-east-1 = {{ x86_64 = "resolve:ssm:{X86_ALIAS}", arm64 = "ami-0fedcba9876543210" }}
                "#
            ),
            "",
        )
        .expect("valid");
        // The old form still means x86_64.
        assert_eq!(
            cfg.image_source("eu-west-1", Architecture::X86_64),
            Some(ImageSource::Id("ami-0123456789abcdef0".into()))
        );
        assert_eq!(cfg.image_source("eu-west-1", Architecture::Arm64), None);
        assert_eq!(cfg.architectures("eu-west-1"), [Architecture::X86_64].into());
        assert_eq!(cfg.image_source("us-east-1", Architecture::X86_64), Some(ImageSource::Parameter(X86_ALIAS.into())));
        assert_eq!(cfg.architectures("us-east-1"), Architecture::ALL.into());
        assert_eq!(cfg.ami_refresh_s, 3_600, "the default refresh");
        assert_eq!(
            ImageSource::Parameter(X86_ALIAS.into()).to_string(),
            format!("resolve:ssm:{X86_ALIAS}"),
            "printed as written"
        );
        // A dotted key works as well as an inline table.
        let dotted = config_ami(
            &format!(
                r#"
                ami.us-east-1.arm64 = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
                ami.eu-west-1 = "resolve:ssm:{X86_ALIAS}"
                "#
            ),
            "ami_refresh_s = 600",
        )
        .expect("valid");
        assert_eq!(dotted.architectures("us-east-1"), [Architecture::Arm64].into());
        assert_eq!(dotted.ami_refresh_ms(), 600_000);
    }

    #[test]
    fn bad_amis_are_refused_naming_the_key_and_the_fix() {
        let refused = |ami: &str, extra: &str| match config_ami(ami, extra) {
            Ok(_) => panic!("{ami} {extra} was accepted"),
            Err(err) => err.to_string(),
        };
        let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "al2023" }"#, "");
        assert!(err.contains("ami.eu-west-1") && err.contains("\"al2023\"") && err.contains("resolve:ssm:"), "{err}");
        let err = refused(
            r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = { aarch64 = "ami-0123456789abcdef0" } }"#,
            "",
        );
        assert!(err.contains("ami.eu-west-1.aarch64") && err.contains("x86_64 or arm64"), "{err}");
        let err = refused(
            r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = { arm64 = "resolve:ssm:/aws/service/a b" } }"#,
            "",
        );
        assert!(err.contains("ami.eu-west-1.arm64") && err.contains("not an SSM alias"), "{err}");
        let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = {} }"#, "");
        assert!(err.contains("ami.eu-west-1") && err.contains("empty table"), "{err}");
        let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0" }"#, "");
        assert!(err.contains("no AMI for region eu-west-1") && err.contains("resolve:ssm:"), "{err}");
        let both = r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "ami-0123456789abcdef0" }"#;
        let err = refused(both, "ami_refresh_s = 5");
        assert!(err.contains("ami_refresh_s") && err.contains("3600"), "{err}");
    }

    #[test]
    fn prices_are_global_or_per_region_and_the_region_wins() {
        let both = r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "ami-0123456789abcdef0" }"#;
        let cfg = config_ami(
            both,
            r#"
            [prices]
            "m7g.large" = 0.0816
            "m6i.large" = 0.096
            [prices.eu-west-1]
            "m7g.large" = 0.0892
            "#,
        )
        .expect("valid");
        assert_eq!(cfg.prices_for("us-east-1")["m7g.large"], 0.0816);
        assert_eq!(cfg.prices_for("eu-west-1")["m7g.large"], 0.0892);
        assert_eq!(cfg.prices_for("eu-west-1")["m6i.large"], 0.096);
        assert!(config_ami(both, "").expect("valid").prices_for("us-east-1").is_empty());

        let refused = |extra: &str| match config_ami(both, extra) {
            Ok(_) => panic!("{extra} was accepted"),
            Err(err) => err.to_string(),
        };
        let err = refused("[prices]\n\"m7g.large\" = -1.0");
        assert!(err.contains("prices.\"m7g.large\"") && err.contains("above 0"), "{err}");
        let err = refused("[prices.ap-south-1]\n\"m7g.large\" = 0.05");
        assert!(err.contains("prices.ap-south-1") && err.contains("configured regions"), "{err}");
        let err = refused("[prices]\nm7g = 0.05");
        assert!(err.contains("\"m7g\"") && err.contains("instance type"), "{err}");
    }

    /// A valid configuration but for its ledger: `path_line` (a `ledger_path = ...` line, or
    /// nothing) and the `[ledger]` table's lines (nothing: no table).
    fn config_ledger(path_line: &str, ledger: &str) -> Result<AwsBootConfig, ConfigError> {
        let table = if ledger.is_empty() { String::new() } else { format!("[ledger]\n{ledger}") };
        AwsBootConfig::from_toml(&format!(
            r#"
            regions = ["eu-west-1"]
            instance_families = ["m6i"]
            owner = "unit"
            ami = {{ eu-west-1 = "ami-12345678" }}
            endpoint_url = "http://127.0.0.1:5098"
            {path_line}
            almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
            guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
            {table}
            "#
        ))
    }

    const DYNAMO: &str = r#"
        store = "dynamodb"
        table = "compute-bridge-ledger"
        group = "bridge-eu-1"
        key_seed_path = "/etc/compute-bridge/group.keyseed"
    "#;

    fn ledger_refused(path_line: &str, ledger: &str) -> String {
        match config_ledger(path_line, ledger) {
            Ok(cfg) => panic!("{path_line} [ledger] {ledger} was accepted as {:?}", cfg.ledger),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_file_store_is_the_default_and_behaves_as_before() {
        let cfg = config_ledger(r#"ledger_path = "/var/lib/cb/aws.ledger""#, "").expect("valid");
        assert_eq!(cfg.ledger_store(), LedgerStore::File { path: "/var/lib/cb/aws.ledger".into() });
        let explicit = config_ledger(r#"ledger_path = "/var/lib/cb/aws.ledger""#, r#"store = "file""#);
        assert_eq!(explicit.expect("valid").ledger_store(), cfg.ledger_store());

        let err = ledger_refused("", "");
        assert!(err.contains("`ledger_path`") && err.contains("is missing") && err.contains("dynamodb"), "{err}");
        // A DynamoDB key with the file store would be silently ignored: refused, naming it.
        let err = ledger_refused(r#"ledger_path = "/l""#, r#"table = "t-1""#);
        assert!(err.contains("`ledger.table`") && err.contains("store = \"dynamodb\""), "{err}");
        let err = ledger_refused(r#"ledger_path = "/l""#, r#"key_seed_path = "/s""#);
        assert!(err.contains("`ledger.key_seed_path`") && err.contains("<ledger_path>.keyseed"), "{err}");
        let err = ledger_refused(r#"ledger_path = "/l""#, r#"lease_s = 60"#);
        assert!(err.contains("`ledger.lease_s`"), "{err}");
    }

    #[test]
    fn a_dynamodb_ledger_names_its_table_group_lease_and_shared_key_seed() {
        let cfg = config_ledger("", DYNAMO).expect("valid");
        let LedgerStore::DynamoDb(ddb) = cfg.ledger_store() else { panic!("{:?}", cfg.ledger_store()) };
        assert_eq!(ddb.table, "compute-bridge-ledger");
        assert_eq!(ddb.group, "bridge-eu-1");
        assert_eq!(ddb.lease_ms, 30_000, "the default lease");
        assert_eq!(ddb.key_seed_path, PathBuf::from("/etc/compute-bridge/group.keyseed"));
        assert_eq!(ddb.region.as_str(), "eu-west-1", "the first of `regions` by default");
        assert_eq!(ddb.endpoint_url.as_deref(), Some("http://127.0.0.1:5098"), "endpoint_url by default");

        let own = format!("{DYNAMO}\nlease_s = 6\nregion = \"us-east-2\"\nendpoint_url = \"http://127.0.0.1:8000\"");
        let LedgerStore::DynamoDb(ddb) = config_ledger("", &own).expect("valid").ledger_store() else { panic!() };
        assert_eq!((ddb.lease_ms, ddb.region.as_str()), (6_000, "us-east-2"));
        assert_eq!(ddb.endpoint_url.as_deref(), Some("http://127.0.0.1:8000"));
    }

    #[test]
    fn bad_dynamodb_ledger_keys_are_refused_naming_the_key_and_the_fix() {
        let without =
            |key: &str| DYNAMO.lines().filter(|l| !l.trim_start().starts_with(key)).collect::<Vec<_>>().join("\n");
        let err = ledger_refused("", &without("key_seed_path"));
        assert!(
            err.contains("`ledger.key_seed_path`")
                && err.contains("same per-grant SSH keys")
                && err.contains("every bridge"),
            "{err}"
        );
        let err = ledger_refused("", &without("table"));
        assert!(err.contains("`ledger.table`") && err.contains("create-table"), "{err}");
        let err = ledger_refused("", &without("group"));
        assert!(err.contains("`ledger.group`") && err.contains("is missing"), "{err}");
        let err = ledger_refused(r#"ledger_path = "/l""#, DYNAMO);
        assert!(err.contains("`ledger_path`") && err.contains("remove it"), "{err}");
        for lease_s in [0, 5, 601] {
            let err = ledger_refused("", &format!("{DYNAMO}\nlease_s = {lease_s}"));
            assert!(err.contains("`ledger.lease_s`") && err.contains("6 to 600") && err.contains("use 30"), "{err}");
        }
        assert!(config_ledger("", &format!("{DYNAMO}\nlease_s = 600")).is_ok());
        let err = ledger_refused("", &DYNAMO.replace("compute-bridge-ledger", "my table"));
        assert!(err.contains("`ledger.table`") && err.contains("\"my table\""), "{err}");
        let err = ledger_refused("", &DYNAMO.replace("bridge-eu-1", "bridge eu"));
        assert!(err.contains("`ledger.group`") && err.contains("without spaces"), "{err}");
        let err = ledger_refused("", &DYNAMO.replace("/etc/compute-bridge/group.keyseed", "group.keyseed"));
        assert!(err.contains("`ledger.key_seed_path`") && err.contains("absolute"), "{err}");
        let err = ledger_refused("", &format!("{DYNAMO}\nendpoint_url = \"localhost:8000\""));
        assert!(err.contains("`ledger.endpoint_url`"), "{err}");
        let err = ledger_refused("", r#"store = "sqlite""#);
        assert!(err.contains("sqlite") && err.contains("dynamodb"), "{err}");
        let err = ledger_refused("", &format!("{DYNAMO}\nlease_ms = 6000"));
        assert!(err.contains("lease_ms"), "{err}");
    }
}
