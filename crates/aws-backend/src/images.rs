//! AMIs by alias: the id an SSM parameter names, resolved per region and architecture, cached
//! for `ami_refresh_s`, and kept when a refresh fails.
//!
//! An operator writes `resolve:ssm:/aws/service/ami-amazon-linux-latest/...` (the syntax EC2
//! launch templates take) instead of an id that changes with every patch release. The backend
//! reads the parameter with GetParameter before a launch needs it, and again once the refresh
//! interval has passed on the injected clock. A refresh that fails leaves the last good id in
//! use (and says so in the log): a grant should not fail because Parameter Store throttled a
//! read of a value that changes every few weeks. An alias that has never resolved fails the
//! provision before anything is created, retryably when the cause is transient.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backend_api::{BackendError, RegionLabel};

use crate::backend::AwsBackend;
use crate::config::{ImageSource, looks_like_ami_id};
use crate::pacing::lock;
use crate::port::{Architecture, Ec2Error, InstanceTypeInfo, Operation, codes};

/// After a failed refresh, how long the last good id is used before the alias is read again:
/// long enough that a throttled Parameter Store is not asked again by every grant, short
/// enough that a new AMI is not missed for long.
const RETRY_AFTER_FAILURE_MS: u64 = 60_000;

/// What is known of one (region, architecture) alias.
#[derive(Clone, Debug, Default)]
struct Entry {
    /// The last id the alias resolved to, and when it was read.
    resolved: Option<(String, u64)>,
    /// When the alias is next read (0: at once).
    next_read_unix_ms: u64,
}

/// One alias's entry, behind the lock its readers queue on.
type SharedEntry = Arc<tokio::sync::Mutex<Entry>>;

/// The resolved aliases, one lock per (region, architecture) so that one alias is read once
/// at a time however many grants want it, and a slow read holds up no other alias.
#[derive(Default)]
pub(crate) struct ImageCache {
    entries: Mutex<BTreeMap<(RegionLabel, Architecture), SharedEntry>>,
}

impl ImageCache {
    fn entry(&self, region: &RegionLabel, arch: Architecture) -> SharedEntry {
        lock(&self.entries).entry((region.clone(), arch)).or_default().clone()
    }
}

impl AwsBackend {
    /// The AMI id for every architecture among `types` in `region`: each fixed id as
    /// configured, each alias as last resolved (read again when due).
    pub(crate) async fn images_for(
        &self,
        region: &RegionLabel,
        types: &[InstanceTypeInfo],
    ) -> Result<BTreeMap<Architecture, String>, BackendError> {
        let archs: std::collections::BTreeSet<Architecture> = types.iter().map(|t| t.architecture).collect();
        let mut images = BTreeMap::new();
        for arch in archs {
            images.insert(arch, self.image_for(region, arch).await?);
        }
        Ok(images)
    }

    /// The AMI id for `arch` in `region`.
    pub(crate) async fn image_for(&self, region: &RegionLabel, arch: Architecture) -> Result<String, BackendError> {
        let cfg = &self.shared.cfg;
        let name = match cfg.image_source(region.as_str(), arch) {
            Some(ImageSource::Id(id)) => return Ok(id),
            Some(ImageSource::Parameter(name)) => name,
            None => {
                return Err(BackendError::Unsatisfiable {
                    reason: format!(
                        "no AMI is configured for {arch} in {region}: add `ami.{region}.{arch} = \"resolve:ssm:...\"`"
                    ),
                });
            }
        };
        let entry = self.shared.images.entry(region, arch);
        let mut entry = entry.lock().await;
        let now = self.now_ms();
        if let Some((id, _)) = &entry.resolved
            && now < entry.next_read_unix_ms
        {
            return Ok(id.clone());
        }
        let read = self.ec2().call(region, Operation::GetParameter, |port| port.get_parameter(region, &name))
            .await
            .map_err(|err| alias_error(region, arch, &name, err))
            .and_then(|value| {
                if looks_like_ami_id(&value) {
                    Ok(value)
                } else {
                    Err(BackendError::Unsatisfiable {
                        reason: format!(
                            "the SSM alias resolve:ssm:{name} (ami.{region}.{arch}) holds {value:?}, which is not an AMI id (ami-...): point the configuration at a parameter that holds an AMI id, such as /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
                        ),
                    })
                }
            });
        let now = self.now_ms();
        match (read, &entry.resolved) {
            (Ok(id), previous) => {
                let previous = previous.as_ref().map(|(old, _)| old.clone());
                if previous.as_ref() != Some(&id) {
                    tracing::info!(%region, %arch, alias = %name, image_id = %id, ?previous, "AMI alias resolved");
                }
                entry.resolved = Some((id.clone(), now));
                entry.next_read_unix_ms = now.saturating_add(cfg.ami_refresh_ms());
                Ok(id)
            }
            (Err(err), Some((id, read_at))) => {
                tracing::warn!(%region, %arch, alias = %name, image_id = %id, resolved_at_unix_ms = read_at, error = %err, "could not refresh the AMI alias; launching the last id it resolved to");
                let id = id.clone();
                entry.next_read_unix_ms = now.saturating_add(RETRY_AFTER_FAILURE_MS.min(cfg.ami_refresh_ms()));
                Ok(id)
            }
            (Err(err), None) => Err(err),
        }
    }
}

/// A failed read of an alias that has no last good id, as the backend reports it: retryable
/// when Parameter Store may answer next time, not when the parameter does not exist or the
/// role may not read it (the configuration or the IAM policy must change first).
fn alias_error(region: &RegionLabel, arch: Architecture, name: &str, err: Ec2Error) -> BackendError {
    if err.is_throttle() {
        return BackendError::Throttled { operation: err.operation.name().into() };
    }
    let fix = if err.is(codes::PARAMETER_NOT_FOUND) {
        format!(
            "no parameter {name} exists in {region}: check the alias in ami.{region}.{arch} (public AMI aliases start /aws/service/, e.g. /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch})"
        )
    } else if err.code.starts_with("AccessDenied") {
        format!("the bridge's role may not read {name}: grant ssm:GetParameter on it (docs/iam-policy.json)")
    } else {
        format!("could not read the AMI alias {name} for {arch} in {region}; the provision can be retried")
    };
    BackendError::Provider {
        operation: err.operation.name().into(),
        retryable: err.is_transient(),
        code: err.code,
        message: format!("{fix} ({})", err.message),
    }
}
