//! Learning the guest's SSH host key from its console output, before `provision` returns.
//!
//! The guest generates its host key at first boot and cloud-init prints the public half to the
//! serial console (`guest::host_key_from_console` reads it). GetConsoleOutput is authenticated
//! by AWS and answers only what the instance itself wrote to its console, so the key the
//! requester pins is the one the machine holds, and no private key ever travels.
//!
//! EC2 publishes console output some time after boot (a few minutes on older instance
//! families; see "Get the console output", Amazon EC2 User Guide), so the backend looks after
//! a delay it learns per region, then polls on the non-mutating bucket, within
//! `guest.host_key_wait_s`.

use backend_api::{BackendError, GrantId, RegionLabel};

use crate::backend::AwsBackend;
use crate::errors::provider;
use crate::guest::host_key_from_console;
use crate::lag::Lag;
use crate::poller::Sighting;
use crate::port::{InstanceState, Operation};

/// The wait between two looks once the learned delay has passed without the key.
const POLL_INTERVAL_MS: u64 = 10_000;

impl AwsBackend {
    /// The host key the guest `instance_id` of `grant` printed to its console:
    /// `ssh-ed25519 BASE64`.
    ///
    /// The first look waits the delay learned for the region (see `Lag::Console`), then every
    /// [`POLL_INTERVAL_MS`]. Meanwhile the instance's sightings are recorded as
    /// `wait_running` records them, so a guest that ends while the backend waits is billed to
    /// its end, and the wait stops with it.
    ///
    /// Fails, for the provision to roll back, when none appears within `guest.host_key_wait_s`
    /// or before `deadline_unix_ms`, or the instance leaves `running` first (retryable: another
    /// instance may boot normally), or when the console shows an unusable key or two different
    /// ones (not retryable: the AMI or the guest is at fault).
    pub(crate) async fn read_host_key(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        instance_id: &str,
        deadline_unix_ms: u64,
    ) -> Result<String, BackendError> {
        let wait_s = self.shared.cfg.guest.host_key_wait_s;
        let started = self.now_ms();
        let give_up = started.saturating_add(wait_s.saturating_mul(1_000)).min(deadline_unix_ms);
        let mut rx = self.poller(region).subscribe(instance_id);
        let mut next_look = started.saturating_add(self.shared.lags.wait_ms(region, Lag::Console)).min(give_up);
        let mut first_look = true;
        loop {
            // Until the next look: follow the instance, as wait_running does.
            loop {
                let sighting = rx.borrow_and_update().clone();
                if let Sighting::Seen { info, at_unix_ms } = sighting {
                    self.observe(grant, &info, at_unix_ms, false).await?;
                    if info.state != InstanceState::Running {
                        return Err(BackendError::Provider {
                            operation: Operation::GetConsoleOutput.name().into(),
                            code: info
                                .state_reason_code
                                .as_deref()
                                .map_or_else(|| format!("Instance.{}", info.state), str::to_string),
                            message: format!("instance {instance_id} went {} before its host key was seen", info.state),
                            retryable: true,
                        });
                    }
                }
                if self.now_ms() >= next_look {
                    break;
                }
                tokio::select! {
                    biased;
                    () = rx.changed() => {}
                    () = self.shared.clock.sleep_until_unix_ms(next_look) => {}
                }
            }
            let output = self
                .ec2()
                .call(region, Operation::GetConsoleOutput, |port| port.get_console_output(region, instance_id))
                .await;
            let found = match output {
                Ok(Some(text)) => host_key_from_console(&text).map_err(|reason| BackendError::Provider {
                    operation: Operation::GetConsoleOutput.name().into(),
                    code: "Local.HostKeyUnusable".into(),
                    message: format!("instance {instance_id}: {reason}"),
                    retryable: false,
                })?,
                Ok(None) => None,
                // A new id may not be visible to every endpoint yet.
                Err(err) if err.is_not_found() => None,
                Err(err) => return Err(provider(err)),
            };
            let now = self.now_ms();
            if first_look {
                // Learnt towards the delay's 75th percentile: one look most of the time,
                // without making every requester wait for the slowest guest.
                self.shared.lags.nudge(region, Lag::Console, found.is_none());
                first_look = false;
            }
            if let Some(key) = found {
                return Ok(key);
            }
            if now >= give_up {
                return Err(BackendError::Provider {
                    operation: Operation::GetConsoleOutput.name().into(),
                    code: "Local.HostKeyNotSeen".into(),
                    message: format!(
                        "instance {instance_id} printed no SSH host key to its console within {wait_s} s of running: check that the AMI's cloud-init runs keys_to_console, or raise guest.host_key_wait_s"
                    ),
                    retryable: true,
                });
            }
            next_look = now.saturating_add(POLL_INTERVAL_MS).min(give_up);
        }
    }
}
