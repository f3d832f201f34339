//! Provisioning one grant, in order: checks, key pair and group, launch, running, host key; a
//! rollback when a step fails.

use backend_api::{BackendError, ComputeGrant, GrantId, ProvisionedInstance, RegionLabel};
use base64::Engine;
use usage_ledger::{Event, GrantState, TerminationReason};

use super::{AwsBackend, BACKEND_NAME};
use crate::errors::local;
use crate::guest::{GuestSpec, HostKeys, render_user_data};
use crate::keys::SshKeyPair;
use crate::port::{RunInstancesRequest, ShutdownBehavior};
use crate::{names, sizing};

impl AwsBackend {
    fn keys_for(&self, grant: &GrantId) -> Result<(SshKeyPair, SshKeyPair), BackendError> {
        let comment = format!("compute-bridge-{}", grant.short());
        let login = SshKeyPair::ed25519_from_seed(names::key_seed(&self.shared.key_seed, grant, "login"), &comment)
            .map_err(local)?;
        let host = SshKeyPair::ed25519_from_seed(names::key_seed(&self.shared.key_seed, grant, "host"), &comment)
            .map_err(local)?;
        Ok((login, host))
    }

    pub(super) async fn provision_inner(
        &self,
        grant: &ComputeGrant<'_>,
        region: RegionLabel,
    ) -> Result<ProvisionedInstance, BackendError> {
        let cfg = &self.shared.cfg;
        let types = self.launchable_types(&region).await?;
        let fitting = sizing::by_price(sizing::fitting(&types, grant.manifest)?, &cfg.prices_for(region.as_str()));
        let fitting = self.hooks().fitting(&types, fitting);
        // Every architecture the launch may need has its AMI before anything is created: an
        // alias that has never resolved fails the provision here, with nothing to roll back.
        let images = self.images_for(&region, &fitting).await?;
        let storage_gib = grant.manifest.storage_gib.max(cfg.min_root_volume_gib);
        let valid_to_unix_ms = cfg.almanac.tick_to_unix_ms(grant.valid_to);
        let (login, host) = self.keys_for(&grant.id)?;
        let user_data = render_user_data(
            &cfg.guest,
            &GuestSpec {
                grant_id: grant.id,
                image_hash: grant.manifest.image_post_hash,
                authorized_key_openssh: &login.public_openssh,
                host_key: (cfg.guest.host_keys == HostKeys::UserData).then_some(&host),
                valid_to_unix_s: self.hooks().guest_poweroff_unix_s(valid_to_unix_ms.div_ceil(1_000)),
            },
        )
        .map_err(|e| BackendError::InvalidInput { field: "grant".into(), reason: e.to_string() })?;
        let user_data = self.hooks().user_data(user_data, &login);
        let network = self.network(&region).await?;
        // The vCPU quota, when known, is checked before anything is created: a grant it cannot
        // hold is refused retryably, and the types it cannot hold are never tried.
        let headroom = self.vcpu_headroom(&region);
        if let Some(room) = headroom {
            let needed = fitting.iter().map(|t| t.vcpus).min().unwrap_or(0);
            if needed > room && self.grant_state(&grant.id).is_none_or(|s| s.is_settled()) {
                return Err(crate::refusals::no_vcpu_headroom(&region, room, needed));
            }
        }
        self.refresh_offerings(&region).await;

        // Validation is over: from here on things get created, and every step is recorded
        // before the next one starts.
        let first = &fitting[0];
        let admission = Event::GrantAdmitted {
            region: region.to_string(),
            instance_type: first.instance_type.clone(),
            vcpus: first.vcpus,
            memory_mib: first.memory_mib,
            storage_bytes: u64::from(storage_gib) << 30,
            valid_to: grant.valid_to,
            valid_to_unix_ms,
            key_name: names::key_name(&grant.id),
            group_name: names::group_name(&grant.id),
        };
        match decide_admission(&grant.id, self.grant_state(&grant.id).as_ref())? {
            Admission::Retry { attempt } => {
                tracing::info!(attempt, "retrying a provision that failed with a retryable error");
                self.admit(grant.id, admission.retried(attempt)).await?;
            }
            Admission::Resume => tracing::info!("resuming a provision the ledger shows unfinished"),
            Admission::New => self.admit(grant.id, admission).await?,
        }

        let created = async {
            self.hooks().before_creating(&grant.id)?;
            let slots = self.regions().prep_slots(&region);
            let slot = slots.acquire_owned().await.map_err(local)?;
            let vpc_id = network.as_ref().map(|n| n.vpc_id.clone());
            let (key, group) = tokio::join!(
                self.ensure_key_pair(&grant.id, &region, &login),
                self.ensure_security_group(&grant.id, &region, vpc_id)
            );
            drop(slot);
            let key_created = key?;
            let (group_id, group_created) = group?;
            // RunInstances needs both visible: wait out the lag since the later creation.
            let created = key_created.max(group_created);
            let request = RunInstancesRequest {
                // Set per attempt, to the AMI of the attempt's architecture (`ensure_instance`).
                image_id: String::new(),
                instance_type: String::new(),
                key_name: names::key_name(&grant.id),
                security_group_ids: vec![group_id],
                user_data_base64: base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes()),
                client_token: String::new(),
                root_volume_gib: storage_gib,
                root_device_name: cfg.root_device_name.clone(),
                imdsv2_required: self.hooks().imds().0,
                imds_hop_limit: self.hooks().imds().1,
                shutdown_behavior: ShutdownBehavior::Terminate,
                instance_tags: self.hooks().instance_tags(names::grant_tags(cfg, &grant.id)),
                volume_tags: names::grant_tags(cfg, &grant.id),
                subnet_id: None,
                availability_zone: None,
            };
            let instance_id = self
                .ensure_instance(
                    &grant.id,
                    &region,
                    &fitting,
                    &images,
                    network.as_ref(),
                    headroom,
                    request,
                    grant.valid_to,
                    created,
                )
                .await?;
            self.arm_deadline(grant.id, region.clone(), valid_to_unix_ms);
            tracing::Span::current().record("instance_id", instance_id.as_str());
            let info = self.wait_running(&grant.id, &region, &instance_id, valid_to_unix_ms).await?;
            let host_public = match cfg.guest.host_keys {
                HostKeys::UserData => host.public_openssh.clone(),
                HostKeys::Guest if self.hooks().pins_backend_host_key() => host.public_openssh.clone(),
                HostKeys::Guest => self.read_host_key(&grant.id, &region, &instance_id, valid_to_unix_ms).await?,
            };
            Ok::<_, BackendError>((info, host_public))
        };
        // A drain that ran out of time stops the provision where it is: rolled back below,
        // retryable, as after any failure that invites a retry.
        let (created, cut_by_drain) = tokio::select! {
            biased;
            () = self.provisions_cancelled() => (Err(BackendError::Unavailable {
                reason: "this bridge drained before the provision finished; it was rolled back and the grant may be \
                         sent again (to this bridge once it is back, or to another)"
                    .to_string(),
            }), true),
            created = created => (created, false),
        };

        match created {
            Ok((info, host_public)) => Ok(ProvisionedInstance {
                backend: BACKEND_NAME.into(),
                grant_id: grant.id,
                region,
                instance_id: info.instance_id.into(),
                public_dns: info.public_dns_name.into(),
                ssh_host_public_key: host_public,
                ssh_private_key: login.private_openssh.clone(),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "provision failed; rolling back");
                let retryable = self.hooks().failure_retryable(err.is_retryable(), cut_by_drain);
                if let Err(record) = self
                    .record_if(grant.id, |s| {
                        s.filter(|s| !s.is_settled()).map(|_| Event::ProvisionFailed { retryable })
                    })
                    .await
                {
                    tracing::error!(error = %record, "could not record the failure; the grant cannot be retried");
                }
                if let Err(rollback) = self.teardown(grant.id, TerminationReason::Rollback).await {
                    // Everything is in the ledger, so recovery and the reaper finish the job.
                    tracing::error!(error = %rollback, "rollback incomplete; recovery will finish it");
                }
                Err(err)
            }
        }
    }
}

/// How a provision goes on, by what the ledger holds for the grant.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Never seen: admit it.
    New,
    /// The last attempt failed with an error that invited a retry, and was rolled back: a new
    /// attempt (numbered `attempt`), with ClientTokens of its own. Its predecessor holds
    /// nothing, so two instances of the grant are never up at once.
    Retry {
        /// The new attempt's number.
        attempt: u32,
    },
    /// Admitted and unfinished (a provision that died on the way): go on where it stopped.
    Resume,
}

/// Whether a grant in `state` (`None`: not in the ledger) may be provisioned, and how.
fn decide_admission(grant: &GrantId, state: Option<&GrantState>) -> Result<Admission, BackendError> {
    match state {
        Some(state) if state.is_settled() && state.retry_allowed() => {
            Ok(Admission::Retry { attempt: state.attempt() + 1 })
        }
        Some(state) if state.is_settled() => Err(BackendError::InvalidInput {
            field: "grant.id".into(),
            reason: format!(
                "grant {} was already provisioned and settled, and its last attempt did not fail with a retryable error; a grant provisions once",
                grant.short()
            ),
        }),
        // A retryable failure still rolling back: the retry is welcome once it has settled.
        Some(state) if state.termination().is_some() && state.retry_allowed() => Err(BackendError::Unavailable {
            reason: format!("grant {grant}'s last attempt failed and is being rolled back; retry once it has settled"),
        }),
        Some(state) if state.termination().is_some() => Err(BackendError::InvalidInput {
            field: "grant.id".into(),
            reason: format!("grant {} is being torn down; wait for terminate to finish", grant.short()),
        }),
        Some(_) => Ok(Admission::Resume),
        None => Ok(Admission::New),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fixtures;
    use backend_api::UsageMetrics;

    const GRANT: GrantId = GrantId([9; 32]);

    /// The grant's state after `events`.
    fn given(events: Vec<Event>) -> GrantState {
        fixtures::state_after(GRANT, 1_700_000_000_000, events)
    }

    fn admitted() -> Event {
        fixtures::admitted(1_700_000_600_000)
    }

    fn settled() -> Event {
        Event::GrantSettled { usage: UsageMetrics::default() }
    }

    #[test]
    fn given_nothing_in_the_ledger_when_provisioned_then_a_new_admission() {
        assert_eq!(decide_admission(&GRANT, None).ok(), Some(Admission::New));
    }

    #[test]
    fn given_an_unfinished_provision_when_provisioned_then_it_resumes() {
        let state = given(vec![admitted()]);
        assert_eq!(decide_admission(&GRANT, Some(&state)).ok(), Some(Admission::Resume));
    }

    #[test]
    fn given_a_retryable_failure_rolled_back_when_provisioned_then_attempt_one() {
        let state = given(vec![
            admitted(),
            Event::ProvisionFailed { retryable: true },
            Event::TerminationRequested { reason: TerminationReason::Rollback },
            settled(),
        ]);
        assert_eq!(decide_admission(&GRANT, Some(&state)).ok(), Some(Admission::Retry { attempt: 1 }));
    }

    #[test]
    fn given_a_settled_grant_when_provisioned_again_then_refused() {
        let state =
            given(vec![admitted(), Event::TerminationRequested { reason: TerminationReason::Operator }, settled()]);
        assert!(matches!(decide_admission(&GRANT, Some(&state)), Err(BackendError::InvalidInput { .. })));
    }

    #[test]
    fn given_a_grant_being_torn_down_when_provisioned_then_refused() {
        let state = given(vec![admitted(), Event::TerminationRequested { reason: TerminationReason::Operator }]);
        let Err(BackendError::InvalidInput { reason, .. }) = decide_admission(&GRANT, Some(&state)) else {
            panic!("not refused");
        };
        assert!(reason.contains("being torn down"), "{reason}");
    }
}
