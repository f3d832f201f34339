//! The orphan reaper: lists everything carrying our owner tag and removes what no live grant
//! owns, so that nothing is left behind even when the ledger never heard of it; and runs the
//! teardown of live grants long past their deadline.

use std::collections::BTreeMap;

use backend_api::{GrantId, RegionLabel};
use serde::Serialize;
use usage_ledger::{Event, ResourceKind, TerminationReason};

use super::AwsBackend;
use crate::config::{GRANT_TAG, OWNER_TAG};
use crate::ec2::Lookup;
use crate::port::{Ec2Error, Filter, InstanceState, Operation, Tags};

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
    /// ledger; runs the teardown of live grants past their deadline plus grace: those with an
    /// instance still up, and those whose ledger has been quiet for `reaper_grace_ms` (a
    /// teardown that failed half way, its instance gone but its group or key pair left, with
    /// no task left to finish it).
    pub async fn reap(&self, dry_run: bool) -> ReapReport {
        let mut report = ReapReport::default();
        let mut overdue: BTreeMap<GrantId, ()> = BTreeMap::new();
        let now = self.now_ms();
        let (grace, quiet) = (self.config().deadline_grace_ms(), self.config().reaper_grace_ms);
        self.with_ledger(|books| {
            let stalled = books.grants().filter(|(_, s)| {
                !s.is_settled()
                    && now > s.valid_to_unix_ms().saturating_add(grace)
                    && now >= s.latest_unix_ms().saturating_add(quiet)
            });
            overdue.extend(stalled.map(|(grant, _)| (*grant, ())));
        });
        for region in self.config().regions.clone() {
            if let Err(err) = self.reap_region(&region, dry_run, &mut report, &mut overdue).await {
                report.errors.push(format!("{region}: {err}"));
            }
        }
        if !dry_run {
            for grant in overdue.into_keys() {
                report.overdue_grants += 1;
                if let Err(err) = self.teardown(grant, TerminationReason::Deadline).await {
                    report.errors.push(format!("overdue grant {}: {err}", grant.short()));
                }
            }
        }
        if !dry_run {
            crate::telemetry::reaper_pass(report.found.len(), report.removed, report.errors.len());
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
        let ec2 = self.ec2();
        let owner = vec![Filter::tag(OWNER_TAG, [self.config().owner.clone()])];
        let now = self.now_ms();
        let grace = self.config().reaper_grace_ms;

        let instances = ec2.instances(region, Lookup::Owner(&self.config().owner)).await?;
        let key_pairs = ec2
            .call(region, Operation::DescribeKeyPairs, |port| port.describe_key_pairs(region, owner.clone()))
            .await?;
        let groups = ec2
            .pages(region, Operation::DescribeSecurityGroups, false, |port, page| {
                port.describe_security_groups_page(region, Vec::new(), owner.clone(), page)
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
                        id: info.instance_id.to_string(),
                        grant: grant_of(&info.tags).map(|g| g.to_hex()),
                        reason,
                    });
                    doomed_instances.push((info.instance_id.to_string(), grant_of(&info.tags)));
                }
            }
        }
        if !dry_run && !doomed_instances.is_empty() {
            let ids: Vec<String> = doomed_instances.iter().map(|(id, _)| id.clone()).collect();
            match ec2.terminate(region, &ids).await {
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
            // Confirmed like teardown's: under a tag-conditioned IAM policy, a key pair deleted
            // meanwhile (by a teardown running alongside) answers UnauthorizedOperation, which
            // must not be reported as a failure when the key pair is in fact gone.
            match self.delete_key_pair_confirmed(region, &key.key_name).await {
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
            match ec2
                .call(region, Operation::DeleteSecurityGroup, |port| {
                    port.delete_security_group(region, &group.group_id)
                })
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
