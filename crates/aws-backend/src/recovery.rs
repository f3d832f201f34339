//! Crash recovery and the orphan reaper.
//!
//! Recovery: a backend opened on an existing ledger resumes every grant that still holds
//! something. The reaper: lists everything carrying our owner tag and removes what no live grant
//! owns, so that nothing is left behind even when the ledger never heard of it.

use std::collections::BTreeMap;

use backend_api::{BackendError, GrantId, RegionLabel};
use serde::Serialize;
use usage_ledger::{Event, ObservedState, ResourceKind, TerminationReason};

use crate::backend::AwsBackend;
use crate::config::{GRANT_TAG, OWNER_TAG};
use crate::port::{Ec2Error, Filter, InstanceState, Operation, Tags};

/// What a recovery pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Grants found live in the ledger and resumed.
    pub resumed: usize,
    /// Grants that could not be finished, with the reason; the next pass tries again.
    pub failed: Vec<(String, String)>,
}

/// A resource carrying our owner tag that the reaper considered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    /// Its region.
    pub region: String,
    /// `instance`, `key-pair` or `security-group`.
    pub kind: &'static str,
    /// The provider's id (the name, for key pairs).
    pub id: String,
    /// The grant its tag names (hex), if any.
    pub grant: Option<String>,
    /// Why it is an orphan.
    pub reason: String,
}

/// What a reaper pass found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReapReport {
    /// Orphans found (all of them, in a dry run).
    pub found: Vec<Orphan>,
    /// Orphans removed.
    pub removed: usize,
    /// Live grants past their deadline whose teardown the reaper ran.
    pub overdue_grants: usize,
    /// Failures, each naming the resource; the next pass tries again.
    pub errors: Vec<String>,
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Instance => "instance",
        ResourceKind::KeyPair => "key-pair",
        ResourceKind::SecurityGroup => "security-group",
    }
}

fn grant_of(tags: &Tags) -> Option<GrantId> {
    tags.get(GRANT_TAG).and_then(|hex| hex.parse().ok())
}

enum Verdict {
    /// A live grant within its deadline owns it.
    Owned,
    /// A live grant owns it but its deadline (plus grace) passed.
    Overdue(GrantId),
    /// Nobody live owns it.
    Orphan(String),
}

impl AwsBackend {
    /// Resumes every grant the ledger shows unfinished: re-watches instances that were running
    /// until their deadline (terminating at once those already past it), and finishes the
    /// teardown of half-provisioned and half-torn-down grants, including a launch whose result
    /// was never recorded (found by its ClientToken), and arms the final network measurement of
    /// every figure the ledger shows incomplete. Returns when every resumed grant is
    /// settled or has failed.
    ///
    /// The grants to resume are listed when this is called, not when the future is first
    /// polled, so grants admitted after the call are never mistaken for a dead process's.
    pub fn recover(&self) -> impl std::future::Future<Output = RecoveryReport> + Send + 'static {
        let live: Vec<GrantId> = self.with_ledger(|l| l.live_grants().map(|(id, _)| *id).collect());
        self.arm_pending_network();
        let backend = self.clone();
        async move {
            let mut report = RecoveryReport { resumed: live.len(), failed: Vec::new() };
            let mut tasks = tokio::task::JoinSet::new();
            for grant in live {
                let backend = backend.clone();
                tasks.spawn(async move { (grant, backend.resume_grant(grant).await) });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((grant, Err(err))) => report.failed.push((grant.to_hex(), err.to_string())),
                    Err(err) => report.failed.push((String::new(), format!("recovery task failed: {err}"))),
                }
            }
            report
        }
    }

    /// Brings one unfinished grant to its end.
    pub async fn resume_grant(&self, grant: GrantId) -> Result<(), BackendError> {
        let Some(state) = self.grant_state(&grant) else { return Ok(()) };
        if state.is_settled() {
            return Ok(());
        }
        let region = RegionLabel::new(state.region()).map_err(|e| BackendError::Local(e.to_string()))?;
        tracing::info!(grant = %grant.short(), phase = ?state.phase(), "resuming grant");
        let serving = state.termination().is_none() && state.last_state() == Some(ObservedState::Running);
        match state.instance() {
            // It ran, so its requester may be using it: watch it to the deadline as before, with
            // the deadline armed again (it died with the last process).
            Some(instance_id) if serving => {
                let instance_id = instance_id.to_string();
                self.arm_deadline(grant, region.clone(), state.valid_to_unix_ms());
                self.follow_to_end(&grant, &region, &instance_id, Some(state.valid_to_unix_ms())).await?;
                self.teardown(grant, TerminationReason::Deadline).await
            }
            // Never seen running (provision died on the way) or already ending: tear down. First
            // look at it by id: it may have been running all the while the bridge was down, and
            // that is billed.
            Some(instance_id) => {
                let instance_id = instance_id.to_string();
                if state.termination().is_none()
                    && let Err(err) = self.observe_by_id(&grant, &region, &instance_id).await
                {
                    tracing::warn!(error = %err, "could not look at the instance before tearing it down");
                }
                self.teardown(grant, state.termination().unwrap_or(TerminationReason::Rollback)).await
            }
            None => self.teardown(grant, state.termination().unwrap_or(TerminationReason::Rollback)).await,
        }
    }

    fn verdict(&self, tags: &Tags, now_ms: u64) -> Verdict {
        let Some(grant) = grant_of(tags) else {
            return Verdict::Orphan("carries our owner tag but no grant tag".into());
        };
        match self.grant_state(&grant) {
            None => Verdict::Orphan("its grant is not in the ledger".into()),
            Some(state) if state.is_settled() => Verdict::Orphan("its grant is settled".into()),
            Some(state) if now_ms > state.valid_to_unix_ms().saturating_add(self.config().deadline_grace_ms()) => {
                Verdict::Overdue(grant)
            }
            Some(_) => Verdict::Owned,
        }
    }

    /// One reaper pass over every allowed region: one Describe per resource kind per region.
    /// Removes (or, with `dry_run`, only lists) every resource carrying our owner tag that no
    /// live grant owns and that is older than `reaper_grace_ms`, recording each removal in the
    /// ledger; runs the teardown of live grants past their deadline plus grace.
    pub async fn reap(&self, dry_run: bool) -> ReapReport {
        let mut report = ReapReport::default();
        let mut overdue: BTreeMap<GrantId, ()> = BTreeMap::new();
        for region in self.config().regions.clone() {
            if let Err(err) = self.reap_region(&region, dry_run, &mut report, &mut overdue).await {
                report.errors.push(format!("{region}: {err}"));
            }
        }
        if !dry_run {
            for grant in overdue.into_keys() {
                report.overdue_grants += 1;
                if let Err(err) = self.teardown(grant, TerminationReason::Deadline).await {
                    report.errors.push(format!("overdue grant {grant}: {err}"));
                }
            }
        }
        report
    }

    async fn reap_region(
        &self,
        region: &RegionLabel,
        dry_run: bool,
        report: &mut ReapReport,
        overdue: &mut BTreeMap<GrantId, ()>,
    ) -> Result<(), Ec2Error> {
        let port = self.inner.port.clone();
        let pacer = self.inner.pacer.clone();
        let owner = vec![Filter::tag(OWNER_TAG, [self.config().owner.clone()])];
        let now = self.now_ms();
        let grace = self.config().reaper_grace_ms;

        let instances = pacer
            .call(region, Operation::DescribeInstances, || port.describe_instances(region, Vec::new(), owner.clone()))
            .await?;
        let key_pairs =
            pacer.call(region, Operation::DescribeKeyPairs, || port.describe_key_pairs(region, owner.clone())).await?;
        let groups = pacer
            .call(region, Operation::DescribeSecurityGroups, || {
                port.describe_security_groups(region, Vec::new(), owner.clone())
            })
            .await?;

        let mut doomed_instances = Vec::new();
        for info in instances.iter().filter(|i| i.state != InstanceState::Terminated) {
            match self.verdict(&info.tags, now) {
                Verdict::Owned => {}
                Verdict::Overdue(grant) => {
                    overdue.insert(grant, ());
                }
                Verdict::Orphan(_) if now < info.launch_time_unix_ms.saturating_add(grace) => {}
                Verdict::Orphan(reason) => {
                    report.found.push(Orphan {
                        region: region.to_string(),
                        kind: "instance",
                        id: info.instance_id.clone(),
                        grant: grant_of(&info.tags).map(|g| g.to_hex()),
                        reason,
                    });
                    doomed_instances.push((info.instance_id.clone(), grant_of(&info.tags)));
                }
            }
        }
        if !dry_run && !doomed_instances.is_empty() {
            let ids: Vec<String> = doomed_instances.iter().map(|(id, _)| id.clone()).collect();
            match pacer
                .call(region, Operation::TerminateInstances, || port.terminate_instances(region, ids.clone()))
                .await
            {
                Ok(_) => {
                    for (id, grant) in doomed_instances {
                        self.note_reaped(grant, ResourceKind::Instance, id, report).await;
                    }
                }
                Err(err) => report.errors.push(format!("TerminateInstances {ids:?}: {err}")),
            }
        }

        for key in &key_pairs {
            let verdict = self.verdict(&key.tags, now);
            let young = key.create_time_unix_ms != 0 && now < key.create_time_unix_ms.saturating_add(grace);
            let Verdict::Orphan(reason) = verdict else { continue };
            if young {
                continue;
            }
            let grant = grant_of(&key.tags);
            report.found.push(Orphan {
                region: region.to_string(),
                kind: kind_name(ResourceKind::KeyPair),
                id: key.key_name.clone(),
                grant: grant.map(|g| g.to_hex()),
                reason,
            });
            if dry_run {
                continue;
            }
            match pacer.call(region, Operation::DeleteKeyPair, || port.delete_key_pair(region, &key.key_name)).await {
                Ok(()) => self.note_reaped(grant, ResourceKind::KeyPair, key.key_name.clone(), report).await,
                Err(err) => report.errors.push(format!("DeleteKeyPair {}: {err}", key.key_name)),
            }
        }

        for group in &groups {
            // Groups carry no creation time: the ledger alone decides, and a group still used
            // by a terminating instance answers DependencyViolation and waits for the next pass.
            let Verdict::Orphan(reason) = self.verdict(&group.tags, now) else { continue };
            let grant = grant_of(&group.tags);
            report.found.push(Orphan {
                region: region.to_string(),
                kind: kind_name(ResourceKind::SecurityGroup),
                id: group.group_id.clone(),
                grant: grant.map(|g| g.to_hex()),
                reason,
            });
            if dry_run {
                continue;
            }
            match pacer
                .call(region, Operation::DeleteSecurityGroup, || port.delete_security_group(region, &group.group_id))
                .await
            {
                Ok(()) => self.note_reaped(grant, ResourceKind::SecurityGroup, group.group_id.clone(), report).await,
                Err(err) if err.is_not_found() => {}
                Err(err) => report.errors.push(format!("DeleteSecurityGroup {}: {err}", group.group_id)),
            }
        }
        Ok(())
    }

    async fn note_reaped(&self, grant: Option<GrantId>, kind: ResourceKind, id: String, report: &mut ReapReport) {
        report.removed += 1;
        tracing::info!(kind = kind_name(kind), id = %id, "reaped orphan");
        let grant = grant.unwrap_or(GrantId([0; 32]));
        if let Err(err) = self.record(grant, Event::OrphanReaped { resource_kind: kind, resource_id: id }).await {
            report.errors.push(format!("recording the reaping: {err}"));
        }
    }
}
