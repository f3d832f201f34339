//! The `Backend` trait's six methods: each delegates to the phase that does the work.

use async_trait::async_trait;
use backend_api::{
    AlmanacTick, Backend, BackendError, Capabilities, ComputeGrant, Envelope, ProvisionedInstance, UsageMetrics,
};
use tracing::Instrument;
use usage_ledger::TerminationReason;

use super::{AwsBackend, BACKEND_NAME};
use crate::sizing;

#[async_trait]
impl Backend for AwsBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn capabilities(&self) -> anyhow::Result<Capabilities> {
        let mut max_cpu_millicores = 0u32;
        let mut max_ram_mib = 0u32;
        for region in &self.shared.cfg.regions {
            if let Ok(types) = self.catalogue(region).await {
                for t in types.iter() {
                    max_cpu_millicores = max_cpu_millicores.max(t.vcpus.saturating_mul(1_000));
                    max_ram_mib = max_ram_mib.max(u32::try_from(t.memory_mib).unwrap_or(u32::MAX));
                }
            }
        }
        Ok(Capabilities {
            regions: self.shared.cfg.regions.clone(),
            // AWS has no consumer TDX offering: TDX grants go to another backend.
            tdx_capable: false,
            max_cpu_millicores,
            max_ram_mib,
            vcpu_headroom: self
                .shared
                .cfg
                .regions
                .iter()
                .filter_map(|r| self.vcpu_headroom(r).map(|room| (r.clone(), room)))
                .collect(),
        })
    }

    fn can_satisfy(&self, grant: &ComputeGrant<'_>) -> bool {
        if self.check_grant(grant).is_err() {
            return false;
        }
        // Sizes are checked against the cached catalogues (loaded at start), among the types
        // whose architecture has an AMI: a grant that fits in no allowed region cannot be
        // satisfied.
        self.regions().with_catalogues(|catalogue| {
            if catalogue.is_empty() {
                return true;
            }
            catalogue.iter().any(|(region, types)| {
                let archs = self.shared.cfg.architectures(region.as_str());
                sizing::launchable(types, &archs, region.as_str())
                    .and_then(|usable| sizing::fitting(&usable, grant.manifest))
                    .is_ok()
            })
        })
    }

    async fn provision(&self, grant: &ComputeGrant<'_>, envelope: &Envelope) -> anyhow::Result<ProvisionedInstance> {
        let region = self.region_for(envelope)?;
        let span =
            tracing::info_span!("grant", grant = %grant.id.short(), %region, instance_id = tracing::field::Empty);
        async {
            self.check_grant(grant)?;
            self.ensure_ledger_writable()?;
            // Nothing is created before valid_from: wait for it (check_grant bounds the wait).
            let valid_from_ms = self.shared.cfg.almanac.tick_to_unix_ms(grant.valid_from);
            if valid_from_ms > self.now_ms() && self.hooks().waits_for_valid_from() {
                tracing::info!(valid_from = %grant.valid_from, "waiting for valid_from");
                self.shared.clock.sleep_until_unix_ms(valid_from_ms).await;
                self.check_grant(grant)?;
            }
            self.provision_inner(grant, region.clone()).await
        }
        .instrument(span)
        .await
        .inspect(|_| crate::telemetry::provision("ok", String::new()))
        .inspect_err(|err| {
            if !crate::telemetry::on() {
                return;
            }
            let outcome = if self.grant_state(&grant.id).is_some() { "failed" } else { "refused" };
            crate::telemetry::provision(outcome, error_code(err));
        })
        .map_err(anyhow::Error::from)
    }

    async fn watch_until_exit(
        &self,
        instance: &ProvisionedInstance,
        valid_to: AlmanacTick,
    ) -> anyhow::Result<UsageMetrics> {
        self.refuse_if_stopped()?;
        let grant = instance.grant_id;
        let span = tracing::info_span!("grant", grant = %grant.short(), region = %instance.region, instance_id = %instance.instance_id);
        async {
            let state = self.grant_state(&grant).ok_or_else(|| BackendError::UnknownInstance {
                grant: grant.to_hex(),
                instance_id: instance.instance_id.clone(),
            })?;
            if state.is_settled() {
                // Terminated and torn down already: the usage is final.
                return Ok(state.usage());
            }
            if state.instance() == Some(instance.instance_id.as_str()) {
                let deadline = self.shared.cfg.almanac.tick_to_unix_ms(valid_to).min(state.valid_to_unix_ms());
                self.follow_to_end(&grant, &instance.region, &instance.instance_id, Some(deadline)).await?;
            } else if !state.ever_launched().contains(&instance.instance_id) {
                return Err(BackendError::UnknownInstance {
                    grant: grant.to_hex(),
                    instance_id: instance.instance_id.clone(),
                });
            }
            let usage = self.grant_state(&grant).map(|s| s.usage()).unwrap_or_default();
            Ok(self.hooks().watched_usage(usage))
        }
        .instrument(span)
        .await
        .map_err(anyhow::Error::from)
    }

    async fn terminate(&self, instance: &ProvisionedInstance) -> anyhow::Result<()> {
        self.refuse_if_stopped()?;
        let grant = instance.grant_id;
        let span = tracing::info_span!("grant", grant = %grant.short(), region = %instance.region, instance_id = %instance.instance_id);
        self.teardown(grant, TerminationReason::Operator).instrument(span).await.map_err(anyhow::Error::from)
    }
}

/// The code a provision's failure is counted under: the provider's code, or the kind of error.
fn error_code(err: &BackendError) -> String {
    match err {
        BackendError::Provider { code, .. } => code.clone(),
        BackendError::RegionNotAllowed { .. } => "RegionNotAllowed".into(),
        BackendError::Unsatisfiable { .. } => "Unsatisfiable".into(),
        BackendError::DeadlinePassed { .. } => "DeadlinePassed".into(),
        BackendError::InvalidInput { .. } => "InvalidInput".into(),
        BackendError::CapacityUnavailable { .. } => "CapacityUnavailable".into(),
        BackendError::Throttled { .. } => "Throttled".into(),
        BackendError::Unavailable { .. } => "Unavailable".into(),
        BackendError::UnknownInstance { .. } => "UnknownInstance".into(),
        BackendError::Local(_) => "Local".into(),
        _ => "Other".into(),
    }
}
