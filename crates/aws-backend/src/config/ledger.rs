//! `[ledger]` and `ledger_path`: where the usage ledger is kept, as written ([`LedgerConfig`]),
//! checked ([`AwsBootConfig::validate`] calls `check_ledger`) and resolved
//! ([`AwsBootConfig::ledger_store`] gives a [`LedgerStore`]).

use std::path::PathBuf;

use backend_api::RegionLabel;
use serde::Deserialize;

use super::AwsBootConfig;
use super::validate::{Problems, is_http_url};

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

pub(super) fn default_lease_s() -> u64 {
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

impl AwsBootConfig {
    /// Checks `ledger_path` and `[ledger]`: the keys the chosen store needs are there and
    /// usable, and no key of the other store is given (it would be silently ignored).
    pub(super) fn check_ledger(&self, problems: &mut Problems) {
        let ledger = &self.ledger;
        let has_path = !self.ledger_path.as_os_str().is_empty();
        match ledger.store {
            StoreKind::File => {
                if !has_path {
                    problems.add(
                        "ledger_path",
                        "is missing: give the ledger file, e.g. ledger_path = \"/var/lib/compute-bridge/aws.ledger\", or keep the ledger in DynamoDB with [ledger] store = \"dynamodb\"",
                    );
                }
                let dynamodb_only = [
                    ("table", ledger.table.is_some()),
                    ("group", ledger.group.is_some()),
                    ("key_seed_path", ledger.key_seed_path.is_some()),
                    ("region", ledger.region.is_some()),
                    ("endpoint_url", ledger.endpoint_url.is_some()),
                    ("lease_s", ledger.lease_s != default_lease_s()),
                ];
                for (key, _) in dynamodb_only.iter().filter(|(_, given)| *given) {
                    problems.add(
                        format!("ledger.{key}"),
                        "is only used with store = \"dynamodb\": add store = \"dynamodb\" to [ledger], or remove it (the file store keeps its key seed at <ledger_path>.keyseed)",
                    );
                }
            }
            StoreKind::Dynamodb => self.check_dynamodb_ledger(problems, has_path),
        }
    }

    fn check_dynamodb_ledger(&self, problems: &mut Problems, has_path: bool) {
        let ledger = &self.ledger;
        if has_path {
            problems.add(
                "ledger_path",
                format!(
                    "{} is not used with [ledger] store = \"dynamodb\" (the ledger is the table): remove it; to move a file ledger into the table, see `ledger-dynamodb import` in docs/operations.md",
                    self.ledger_path.display()
                ),
            );
        }
        match ledger.table.as_deref() {
            None => problems.add(
                "ledger.table",
                "is missing: name the DynamoDB table, e.g. table = \"compute-bridge-ledger\" (create it with `ledger-dynamodb create-table`)",
            ),
            // DynamoDB's own rule for table names (CreateTable, TableName).
            Some(table)
                if !((3..=255).contains(&table.len())
                    && table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))) =>
            {
                problems.add(
                    "ledger.table",
                    format!("{table:?} is not a DynamoDB table name: use 3-255 characters of [A-Za-z0-9_.-]"),
                );
            }
            Some(_) => {}
        }
        match ledger.group.as_deref() {
            None => problems.add(
                "ledger.group",
                "is missing: name the bridge group that shares the table, e.g. group = \"bridge-eu-1\"; every bridge of the group gives the same",
            ),
            Some(group) => {
                if let Err(e) = usage_ledger::check_lease_name("group", group) {
                    problems.add("ledger.group", e.to_string());
                }
            }
        }
        if !(LEASE_S_MIN..=LEASE_S_MAX).contains(&ledger.lease_s) {
            problems.add(
                "ledger.lease_s",
                format!(
                    "{} s is outside {LEASE_S_MIN} to {LEASE_S_MAX}: a standby takes over at most this long after its holder stopped; use 30",
                    ledger.lease_s
                ),
            );
        }
        match &ledger.key_seed_path {
            None => problems.add(
                "ledger.key_seed_path",
                "is missing: every bridge of a group must derive the same per-grant SSH keys, so give the path of the group's key seed file, the same file on every bridge (see \"Running a standby\" in docs/operations.md)",
            ),
            Some(seed) if seed.as_os_str().is_empty() || !seed.is_absolute() => problems.add(
                "ledger.key_seed_path",
                format!(
                    "{} is not an absolute path: give one, e.g. \"/etc/compute-bridge/group.keyseed\"",
                    seed.display()
                ),
            ),
            Some(_) => {}
        }
        if let Some(url) = ledger.endpoint_url.as_deref().filter(|url| !is_http_url(url)) {
            problems.add(
                "ledger.endpoint_url",
                format!("{url:?} is not an http(s) URL: write one like \"http://127.0.0.1:5055\" or remove it"),
            );
        }
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
}
