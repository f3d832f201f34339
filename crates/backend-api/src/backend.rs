//! The `Backend` trait and the types it returns.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{AlmanacTick, ComputeGrant, GrantId, Secret, UsageMetrics};

/// A provider region, e.g. `us-east-1`: lowercase ASCII letters, digits and hyphens.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionLabel(String);

/// A region label that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("region {0:?} is not a region name: use lowercase letters, digits and hyphens, e.g. us-east-1")]
pub struct RegionLabelError(String);

impl RegionLabel {
    /// Checks `value` and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, RegionLabelError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if ok { Ok(Self(value)) } else { Err(RegionLabelError(value)) }
    }

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionLabel {
    type Error = RegionLabelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RegionLabel::new(value)
    }
}

impl From<RegionLabel> for String {
    fn from(value: RegionLabel) -> String {
        value.0
    }
}

impl std::str::FromStr for RegionLabel {
    type Err = RegionLabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionLabel::new(s)
    }
}

impl std::fmt::Display for RegionLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for RegionLabel {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// What a backend can offer, as compute-bridge advertises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Regions grants may be placed in.
    pub regions: Vec<RegionLabel>,
    /// Whether grants that require Intel TDX can be run.
    pub tdx_capable: bool,
    /// The largest CPU request any one grant can get, in millicores.
    pub max_cpu_millicores: u32,
    /// The largest memory request any one grant can get, in MiB.
    pub max_ram_mib: u32,
    /// Per region, the vCPUs new grants can still get under the provider's quota, where the
    /// backend knows the quota (absent: unknown, or no quota). A grant needing more is refused
    /// retryably until the headroom returns.
    #[serde(default)]
    pub vcpu_headroom: std::collections::BTreeMap<RegionLabel, u32>,
}

/// A machine running for a grant: what the requester needs to reach it, and what the backend
/// needs to end it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedInstance {
    /// The backend that owns it, as [`Backend::name`] returns.
    pub backend: String,
    /// The grant it runs for.
    pub grant_id: GrantId,
    /// Where it runs.
    pub region: RegionLabel,
    /// The provider's instance id.
    pub instance_id: String,
    /// The public DNS name to connect to (may be empty where the provider gives none).
    pub public_dns: String,
    /// The machine's SSH host public key in OpenSSH format, known before anyone connects so
    /// the requester can pin it.
    pub ssh_host_public_key: String,
    /// The per-grant SSH private key (OpenSSH PEM); only its public half was sent to the
    /// provider.
    pub ssh_private_key: Secret,
}

/// The request envelope a grant arrived in: routing hints from the requester.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The region the requester asked for, if any.
    pub region: Option<RegionLabel>,
}

impl Envelope {
    /// An envelope asking for `region`.
    pub fn for_region(region: RegionLabel) -> Self {
        Self { region: Some(region) }
    }

    /// The region the requester asked for, if any.
    pub fn requested_region(&self) -> Option<&str> {
        self.region.as_ref().map(RegionLabel::as_str)
    }
}

/// A compute backend: turns a grant into a running machine and back into nothing.
///
/// Every method returns `anyhow::Result` (the signature compute-bridge calls); the error
/// inside is a [`BackendError`](crate::BackendError) wherever the backend decided it, so callers
/// can downcast and ask whether to retry.
///
/// Implementations are `Send + Sync` and the trait is object safe: compute-bridge holds them as
/// `Box<dyn Backend>`.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A short, stable name, e.g. `"aws"`.
    fn name(&self) -> &'static str;

    /// What this backend can offer.
    async fn capabilities(&self) -> anyhow::Result<Capabilities>;

    /// A cheap, local pre-check: false when this backend can never run the grant (TDX it lacks,
    /// a region it may not use, a size no machine has, a deadline already passed). True does
    /// not promise that `provision` succeeds.
    fn can_satisfy(&self, grant: &ComputeGrant<'_>) -> bool;

    /// Creates a machine for `grant` and returns it running.
    ///
    /// Guarantee: either returns a running instance, or returns an error and leaves nothing
    /// behind (everything created on the way has been removed, or is recorded so that
    /// recovery removes it). Bad input is refused before anything is created.
    async fn provision(
        &self,
        grant: &ComputeGrant<'_>,
        envelope: &crate::Envelope,
    ) -> anyhow::Result<ProvisionedInstance>;

    /// Watches `instance` until it is gone and returns what it used.
    ///
    /// Guarantee: the instance is told to terminate no later than `valid_to` (not on the next
    /// poll after it); the call returns only once the instance has exited or been terminated,
    /// and the usage it returns is final for the instance.
    async fn watch_until_exit(
        &self,
        instance: &ProvisionedInstance,
        valid_to: AlmanacTick,
    ) -> anyhow::Result<UsageMetrics>;

    /// Ends the instance and removes every resource created for its grant.
    ///
    /// Guarantee: idempotent (calling it again after success succeeds and changes nothing) and
    /// safe on a half-provisioned grant (it removes whatever exists).
    async fn terminate(&self, instance: &ProvisionedInstance) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_labels_are_checked() {
        assert!(RegionLabel::new("us-east-1").is_ok());
        for bad in ["", "US-EAST-1", "us east", "-x", "x-", "us-east-1\n"] {
            let err = RegionLabel::new(bad).expect_err(bad);
            assert!(err.to_string().contains("us-east-1"), "the fix names an example: {err}");
        }
        let envelope = Envelope::for_region(RegionLabel::new("eu-west-1").expect("valid"));
        assert_eq!(envelope.requested_region(), Some("eu-west-1"));
        assert_eq!(Envelope::default().requested_region(), None);
    }

    #[test]
    fn backend_is_object_safe() {
        fn takes(_: Option<&dyn Backend>) {}
        takes(None);
        fn boxed(_: Option<Box<dyn Backend>>) {}
        boxed(None);
    }
}
