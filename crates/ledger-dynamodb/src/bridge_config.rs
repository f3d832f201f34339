//! What `ledger-dynamodb --config` reads of a bridge's configuration (the TOML `aws-backend`
//! runs with): the ledger's table, group, region and endpoint, and the credentials, resolved as
//! the bridge resolves them (`[ledger] region`, else the first of `regions`; `[ledger]
//! endpoint_url`, else `endpoint_url`). Only these keys are read and every other key is left
//! alone: this crate depends on no part of `aws-backend`, whose `check-config` checks the whole
//! file.

use std::path::Path;

use anyhow::{Context, bail};
use backend_api::Secret;
use serde::Deserialize;

/// The keys of a bridge configuration this tool uses.
#[derive(Debug, Default, Deserialize)]
pub struct BridgeConfig {
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    ledger: LedgerKeys,
}

#[derive(Debug, Deserialize)]
struct Credentials {
    access_key_id: String,
    secret_access_key: Secret,
    #[serde(default)]
    session_token: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
struct LedgerKeys {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint_url: Option<String>,
}

impl BridgeConfig {
    /// Reads the keys this tool uses from the bridge configuration at `path`; refuses a
    /// configuration whose ledger is not in DynamoDB.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("config {}", path.display()))
    }

    /// As [`BridgeConfig::load`], from TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: BridgeConfig = toml::from_str(text).context("parsing (check it with `aws-backend check-config`)")?;
        if cfg.ledger.store.as_deref() != Some("dynamodb") {
            bail!(
                "its ledger is not in DynamoDB ([ledger] store = \"dynamodb\"): read a file ledger with `usage-ledger`"
            );
        }
        Ok(cfg)
    }

    /// The table's region, as the bridge resolves it: `[ledger] region`, else the first of
    /// `regions`.
    pub fn region(&self) -> Option<&str> {
        self.ledger.region.as_deref().or(self.regions.first().map(String::as_str))
    }

    /// DynamoDB's endpoint, as the bridge resolves it: `[ledger] endpoint_url`, else
    /// `endpoint_url`.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.ledger.endpoint_url.as_deref().or(self.endpoint_url.as_deref())
    }

    /// `[ledger] table`.
    pub fn table(&self) -> Option<&str> {
        self.ledger.table.as_deref()
    }

    /// `[ledger] group`.
    pub fn group(&self) -> Option<&str> {
        self.ledger.group.as_deref()
    }

    /// `[credentials]` as a [`crate::Connection`] takes them: the key id and secret, and the
    /// session token.
    pub fn credentials(&self) -> (Option<(String, Secret)>, Option<Secret>) {
        match &self.credentials {
            Some(c) => (Some((c.access_key_id.clone(), c.secret_access_key.clone())), c.session_token.clone()),
            None => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_resolves_region_and_endpoint_and_other_keys_are_left_alone() {
        let cfg = BridgeConfig::from_toml(
            r#"
            regions = ["eu-west-1", "eu-central-1"]
            instance_families = ["m6i"]
            endpoint_url = "http://127.0.0.1:5055"
            credentials = { access_key_id = "AKID", secret_access_key = "not-shown" }
            [ledger]
            store = "dynamodb"
            table = "compute-bridge-ledger"
            group = "bridge-eu-1"
            "#,
        )
        .expect("reads");
        assert_eq!(cfg.region(), Some("eu-west-1"));
        assert_eq!(cfg.endpoint_url(), Some("http://127.0.0.1:5055"));
        assert_eq!((cfg.table(), cfg.group()), (Some("compute-bridge-ledger"), Some("bridge-eu-1")));
        assert!(!format!("{cfg:?}").contains("not-shown"));
        let own = BridgeConfig::from_toml(
            "regions = [\"eu-west-1\"]\n[ledger]\nstore = \"dynamodb\"\nregion = \"us-west-2\"\nendpoint_url = \"http://127.0.0.1:9\"",
        )
        .expect("reads");
        assert_eq!((own.region(), own.endpoint_url()), (Some("us-west-2"), Some("http://127.0.0.1:9")));
        let file =
            BridgeConfig::from_toml("regions = [\"eu-west-1\"]\nledger_path = \"/l\"").expect_err("a file ledger");
        assert!(format!("{file:#}").contains("usage-ledger"), "{file:#}");
    }
}
