//! Teardown: ending the instance, deleting the key pair and the group, settling the grant; retried
//! by a task of its own when it fails.

use std::future::Future;
use std::sync::Arc;

use backend_api::{BackendError, GrantId, RegionLabel};
use usage_ledger::{Event, TerminationReason};

use super::{AwsBackend, VISIBILITY_WINDOW_MS};
use crate::errors::{self, local, provider};
use crate::lag::Lag;
use crate::names;
use crate::pacing::Backoff;
use crate::port::{Filter, Operation, codes};

/// The longest wait between two tries of a failed teardown (see `arm_finish`).
const FINISH_RETRY_MAX_MS: u64 = 5 * 60_000;
/// How long DeleteSecurityGroup is retried through `DependencyViolation`.
const DEPENDENCY_WINDOW_MS: u64 = 15 * 60_000;

/// What a retrying task of `arm_finish` tries again.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Finish {
    /// The teardown, for this reason.
    Teardown(TerminationReason),
    /// Recovery's resume of the grant: follow a serving instance to its deadline (or its end),
    /// then tear down.
    Resume,
}

/// One teardown of a grant at a time. Two at once (compute-bridge's `terminate` racing
/// recovery's, the reaper's or a retrying task's) would both wait for the instance's end, and
/// the later one's DeleteSecurityGroup, answered NotFound because the first deleted the group,
/// would wait out EC2's visibility window before taking NotFound for gone. Behind this lock the
/// later one finds the grant settled and returns at once.
#[derive(Debug, Default)]
pub(crate) struct TeardownLocks(std::sync::Mutex<std::collections::BTreeMap<GrantId, Arc<tokio::sync::Mutex<()>>>>);

impl TeardownLocks {
    /// Runs `teardown` once no other teardown of `grant` runs (in the order they asked).
    async fn one_at_a_time<T>(&self, grant: GrantId, teardown: impl Future<Output = T>) -> T {
        let lock = self.map().entry(grant).or_default().clone();
        let result = {
            let _held = lock.lock().await;
            teardown.await
        };
        let mut map = self.map();
        // The map's and this caller's: nobody else waits for it.
        if Arc::strong_count(&lock) == 2 {
            map.remove(&grant);
        }
        result
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<GrantId, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl From<TerminationReason> for Finish {
    fn from(reason: TerminationReason) -> Self {
        Finish::Teardown(reason)
    }
}

impl AwsBackend {
    /// Removes everything the grant holds and settles it. Idempotent; works on a grant in any
    /// phase, including one whose records stop mid-provision. When it fails (the ledger cannot
    /// be written, EC2 keeps refusing), a task of the backend's own goes on trying (see
    /// `arm_finish`): nothing else may be left to follow the instance, and its run would go
    /// unobserved and unbilled.
    pub(crate) async fn teardown(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        let result = self.teardown_once(grant, reason).await;
        if result.is_err() {
            self.arm_finish(grant, reason);
        }
        result
    }

    /// Tries `teardown_once` (or, for [`Finish::Resume`], recovery's `resume_grant_once`, which
    /// follows a serving instance to its deadline first) again until the grant settles: every
    /// poll interval while the ledger cannot be written (so that the instance is followed again
    /// as soon as it heals), otherwise backing off from a poll interval to 5 minutes. One task
    /// per grant; stopped with the backend's other tasks, and never armed by a backend that may
    /// no longer act.
    pub(crate) fn arm_finish(&self, grant: GrantId, finish: impl Into<Finish>) {
        let finish = finish.into();
        if !self.acting() || self.lease_lost().is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let clock = self.shared.clock.clone();
        let poll_ms = self.config().poll_interval_ms.max(1);
        let task = async move {
            let mut wait_ms = poll_ms;
            loop {
                clock.sleep_ms(wait_ms).await;
                let Some(shared) = weak.upgrade() else { return };
                let backend = AwsBackend { shared };
                if !backend.acting() || backend.grant_state(&grant).is_none_or(|s| s.is_settled()) {
                    break;
                }
                let tried = match finish {
                    Finish::Teardown(reason) => backend.teardown_once(grant, reason).await,
                    Finish::Resume => backend.resume_grant_once(grant).await,
                };
                match tried {
                    Ok(()) => break,
                    // While the ledger fails, that failure is logged once (`note_ledger`), not
                    // once per grant every poll interval.
                    Err(err) if backend.shared.journal.degraded() => {
                        tracing::debug!(grant = %grant.short(), error = %err, "teardown waits for the ledger");
                        wait_ms = poll_ms;
                    }
                    Err(err) => {
                        tracing::warn!(grant = %grant.short(), error = %err, "teardown failed again; retrying");
                        wait_ms = (wait_ms * 2).min(FINISH_RETRY_MAX_MS);
                    }
                }
            }
            if let Some(shared) = weak.upgrade() {
                shared.finishing.done(&grant);
            }
        };
        self.shared.finishing.arm(grant, task);
    }

    async fn teardown_once(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        self.shared.teardowns.one_at_a_time(grant, self.teardown_alone(grant, reason)).await
    }

    async fn teardown_alone(&self, grant: GrantId, reason: TerminationReason) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(&grant) else { return Ok(()) };
        if state.is_settled() {
            return Ok(());
        }
        let region = RegionLabel::new(state.region()).map_err(local)?;
        if let Err(err) = self.record_termination(grant, reason).await {
            // The instance is ended whether or not the ledger takes the request (recorded
            // when it heals, by the next try): a rollback must not leave it running.
            if let Some(instance_id) = self.instance_to_end(&grant) {
                let _ = self.request_termination(&grant, &region, &instance_id, reason).await;
            }
            return Err(err);
        }

        // An instance whose launch was requested but never recorded: find it by its token.
        if state.ever_launched().is_empty()
            && let Some(token) = state.launch_requested()
        {
            self.adopt_unrecorded_instance(&grant, &region, token).await?;
        }
        if let Some(instance_id) = self.grant_state(&grant).and_then(|s| s.instance().map(str::to_string)) {
            // Watched from now: TerminateInstances may wait out EC2's visibility lag while the
            // instance starts running, and a poll's sighting reaches only a watched instance;
            // `follow_to_end` then reads the latest one.
            let _watching = self.poller(&region).subscribe(&instance_id);
            self.request_termination(&grant, &region, &instance_id, reason).await?;
            self.follow_to_end(&grant, &region, &instance_id, None).await?;
        }
        // About when the instance was recorded gone (the grant's latest record, taken before
        // anything else is deleted): its group stays "in use" for a while after.
        let gone_at = self.grant_state(&grant).filter(|s| !s.ever_launched().is_empty()).map(|s| s.latest_unix_ms());

        // The key pair: DeleteKeyPair of a missing name succeeds, so delete by name even when
        // the import was never recorded (under a tag-conditioned IAM policy it may answer
        // UnauthorizedOperation instead, which `delete_key_pair_confirmed` resolves).
        let key_name = state.key_name().to_string();
        self.delete_key_pair_confirmed(&region, &key_name).await?;
        self.record_if(grant, |s| s.filter(|s| s.key_pair().is_some()).map(|_| Event::KeyPairDeleted { key_name }))
            .await?;

        // The security group, found by name when its creation was never recorded.
        let mut group_id = self.grant_state(&grant).and_then(|s| s.security_group().map(str::to_string));
        if group_id.is_none()
            && let Some(found) = self.find_group_by_name(&grant, &region).await?
        {
            let group_name = names::group_name(&grant);
            let id = found.clone();
            self.record_if(grant, |s| {
                s.filter(|s| !s.is_settled() && s.security_group().is_none())
                    .map(|_| Event::SecurityGroupCreated { group_id: id, group_name })
            })
            .await?;
            group_id = Some(found);
        }
        if let Some(group_id) = group_id {
            if self.hooks().deletes_security_group() {
                self.delete_group(&region, &group_id, gone_at).await?;
            }
            // Another teardown (the reaper's, recovery's) may have recorded it meanwhile.
            self.record_if(grant, |s| {
                s.filter(|s| s.security_group() == Some(group_id.as_str()))
                    .map(|_| Event::SecurityGroupDeleted { group_id: group_id.clone() })
            })
            .await?;
        }

        if !self.hooks().settles(&grant) {
            return Ok(());
        }
        // A grant settles only when every launch it requested is resolved: recorded, or proved
        // absent. An unresolved one may be running, and nobody would meter it.
        if let Some(state) = self.grant_state(&grant)
            && !state.is_settled()
            && state.ever_launched().is_empty()
            && let Some(token) = state.launch_requested()
        {
            return Err(BackendError::Local(format!(
                "grant {} cannot settle: its launch {token} is unresolved; recovery or the reaper will finish it",
                grant.short()
            )));
        }
        self.record_if(grant, |s| s.filter(|s| !s.is_settled()).map(|s| Event::GrantSettled { usage: s.usage() })).await
    }

    /// DeleteKeyPair by name; returns once the key pair is gone, whether this call deleted it or
    /// it was missing already.
    ///
    /// EC2 answers success for a name that does not exist, but under an IAM policy that allows
    /// DeleteKeyPair only on key pairs carrying our owner tag, a missing name answers
    /// `UnauthorizedOperation` instead: a key pair that does not exist has no tags for the
    /// condition to match (docs/ec2-facts.md, "Teardown"). So `UnauthorizedOperation` alone does
    /// not say whether anything is left. DescribeKeyPairs by name tells: absent, the key pair is
    /// gone and teardown goes on; present, IAM really refuses to delete it, and the error names
    /// the key pair and the policy statement to fix. Describe answering "absent" for a key
    /// pair too new to be visible yet is the same risk as DeleteKeyPair's success for one: the
    /// reaper, which lists by owner tag, removes such a key pair once it shows.
    pub(crate) async fn delete_key_pair_confirmed(
        &self,
        region: &RegionLabel,
        key_name: &str,
    ) -> Result<(), BackendError> {
        let refused = match self
            .ec2()
            .call(region, Operation::DeleteKeyPair, |port| port.delete_key_pair(region, key_name))
            .await
        {
            Ok(()) => return Ok(()),
            Err(err) if err.is(errors::codes::UNAUTHORIZED_OPERATION) => err,
            Err(err) => return Err(provider(err)),
        };
        let by_name = vec![Filter { name: "key-name".into(), values: vec![key_name.to_string()] }];
        let found = self
            .ec2()
            .call(region, Operation::DescribeKeyPairs, |port| port.describe_key_pairs(region, by_name.clone()))
            .await
            .map_err(provider)?;
        if !found.iter().any(|k| k.key_name == key_name) {
            tracing::info!(
                %region,
                key_name,
                "DeleteKeyPair answered UnauthorizedOperation for a key pair DescribeKeyPairs does not show: it is gone"
            );
            return Ok(());
        }
        let (tag, owner) = (crate::config::OWNER_TAG, &self.shared.cfg.owner);
        Err(BackendError::Provider {
            operation: refused.operation.name().into(),
            code: refused.code,
            retryable: false,
            message: format!(
                "IAM refused to delete key pair {key_name} in {region}, and DescribeKeyPairs shows it still exists: \
                 allow ec2:DeleteKeyPair on arn:aws:ec2:{region}:<account>:key-pair/{key_name} for key pairs tagged \
                 {tag} = {owner} (statement EndOnlyWhatIsOurs of docs/iam-policy.json), and check that the key \
                 pair carries that tag; EC2 said: {}",
                refused.message
            ),
        })
    }

    /// DeleteSecurityGroup, retried through `DependencyViolation` (the instance's network
    /// interface lingers after termination) and through invisibility of a new group.
    /// With `gone_at` (when its instance was seen gone), first waits out the learned lag after
    /// which EC2 usually lets the group go.
    async fn delete_group(
        &self,
        region: &RegionLabel,
        group_id: &str,
        gone_at: Option<u64>,
    ) -> Result<(), BackendError> {
        self.wait_lag(region, Lag::Dependency, gone_at, true).await;
        let started = self.now_ms();
        let mut attempt = 0;
        let mut met = false;
        loop {
            let result = self
                .ec2()
                .call(region, Operation::DeleteSecurityGroup, |port| port.delete_security_group(region, group_id))
                .await;
            match result {
                Ok(()) => {
                    self.learn_lag(region, Lag::Dependency, gone_at, met);
                    return Ok(());
                }
                Err(err) if err.is(codes::DEPENDENCY_VIOLATION) && self.now_ms() < started + DEPENDENCY_WINDOW_MS => {
                    met = true;
                    // The instance's network interface takes seconds to tens of seconds to go:
                    // start the backoff at a few seconds rather than hammering.
                    self.ec2().backoff(Backoff::Interface, attempt).await;
                    attempt += 1;
                    continue;
                }
                Err(err) if err.is_not_found() => {
                    // Invisible yet, or already deleted. After the window it is gone.
                    if self.now_ms() >= started + VISIBILITY_WINDOW_MS {
                        return Ok(());
                    }
                }
                Err(err) => return Err(provider(err)),
            }
            self.ec2().backoff(Backoff::Recheck, attempt).await;
            attempt += 1;
        }
    }
}
