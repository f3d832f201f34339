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
use crate::ec2::Lookup;
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

    /// Brings one unfinished grant to its end. A resume that fails (TerminateInstances
    /// refused through its retries, the ledger cut off, say) is not dropped: it is tried again
    /// by the backend's own task (`arm_finish`), which follows a serving instance to its
    /// deadline (or its own end) as this did, and the armed deadline keeps trying to end the
    /// instance meanwhile. A failed teardown has armed its own retry already.
    pub async fn resume_grant(&self, grant: GrantId) -> Result<(), BackendError> {
        let result = self.resume_grant_once(grant).await;
        if result.is_err() && self.grant_state(&grant).is_some_and(|s| !s.is_settled()) {
            self.arm_finish(grant, crate::backend::Finish::Resume);
        }
        result
    }

    pub(crate) async fn resume_grant_once(&self, grant: GrantId) -> Result<(), BackendError> {
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
                if self.hooks().recovery_skips_overdue() && self.now_ms() > state.valid_to_unix_ms() {
                    self.follow_to_end(&grant, &region, &instance_id, None).await?;
                    return self.teardown(grant, TerminationReason::Deadline).await;
                }
                self.arm_deadline(grant, region.clone(), state.valid_to_unix_ms());
                self.follow_to_end(&grant, &region, &instance_id, Some(state.valid_to_unix_ms())).await?;
                self.teardown(grant, TerminationReason::Deadline).await
            }
            // Never seen running (provision died on the way) or already ending: tear down. First
            // look at it by id, unless the ledger saw it end: it may have been running all the
            // while the bridge was down (also after a termination was requested, by a process
            // that died before sending it), and that is billed.
            Some(instance_id) => {
                let instance_id = instance_id.to_string();
                if !state.last_state().is_some_and(ObservedState::ends_running)
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

#[cfg(test)]
mod tests {
    //! Key pair deletion under a tag-conditioned IAM policy, against a stub port that applies
    //! such a policy to DeleteKeyPair. The simulator does not model IAM; this stub does just
    //! enough of it.

    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use backend_api::{AlmanacTick, BackendError, GrantId, RegionLabel, Secret, TokioClock};
    use usage_ledger::{Event, Ledger, MemoryStore, TerminationReason};

    use crate::config::{AwsBootConfig, OWNER_TAG};
    use crate::port::{
        AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest,
        InstanceInfo, InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage,
        Operation, Page, PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
    };
    use crate::{AwsBackend, BackendParts, DynStore, TestSwitches, names};

    const OWNER: &str = "unit-bridge";
    const START_UNIX_MS: u64 = 1_700_000_000_000;

    /// Key pairs and an IAM policy that allows DeleteKeyPair only on key pairs tagged with our
    /// owner, as docs/iam-policy.json does. Every other call is answered as an empty account.
    #[derive(Default)]
    struct TagConditionedKeys {
        /// The key pairs that exist.
        keys: Mutex<Vec<KeyPairInfo>>,
        /// A key pair named here is deleted by someone else just before our DeleteKeyPair
        /// reaches EC2 (a teardown racing the reaper).
        vanishes_before_delete: Mutex<Option<String>>,
        /// Key pairs an explicit Deny protects: IAM refuses to delete them whatever their tags.
        denied: Mutex<Vec<String>>,
        /// Every call made, in order, as `Operation name`.
        calls: Mutex<Vec<String>>,
    }

    impl TagConditionedKeys {
        fn with_key(key_name: &str, tags: &[(&str, &str)]) -> Self {
            let stub = Self::default();
            stub.add_key(key_name, tags);
            stub
        }

        fn add_key(&self, key_name: &str, tags: &[(&str, &str)]) {
            let tags: Tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let key = KeyPairInfo {
                key_name: key_name.into(),
                key_pair_id: format!("key-{}", key_name.len()),
                tags,
                create_time_unix_ms: 0,
            };
            lock(&self.keys).push(key);
        }

        fn has_key(&self, key_name: &str) -> bool {
            lock(&self.keys).iter().any(|k| k.key_name == key_name)
        }

        fn note(&self, op: Operation, what: &str) {
            lock(&self.calls).push(format!("{op} {what}"));
        }

        fn calls(&self) -> Vec<String> {
            lock(&self.calls).clone()
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unexpected<T>(op: Operation) -> Result<T, Ec2Error> {
        Err(Ec2Error::new(op, "Local.NotInThisStub", "the key pair tests never make this call"))
    }

    #[async_trait]
    impl Ec2Port for TagConditionedKeys {
        async fn import_key_pair(&self, _: &RegionLabel, _: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
            unexpected(Operation::ImportKeyPair)
        }

        async fn describe_key_pairs(
            &self,
            _: &RegionLabel,
            filters: Vec<Filter>,
        ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
            self.note(Operation::DescribeKeyPairs, &format!("{filters:?}"));
            let matches = |k: &KeyPairInfo| {
                filters.iter().all(|f| match f.name.as_str() {
                    "key-name" => f.values.contains(&k.key_name),
                    name => name
                        .strip_prefix("tag:")
                        .is_some_and(|tag| k.tags.get(tag).is_some_and(|v| f.values.contains(v))),
                })
            };
            Ok(lock(&self.keys).iter().filter(|k| matches(k)).cloned().collect())
        }

        async fn delete_key_pair(&self, _: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
            self.note(Operation::DeleteKeyPair, key_name);
            if lock(&self.vanishes_before_delete).as_deref() == Some(key_name) {
                lock(&self.keys).retain(|k| k.key_name != key_name);
            }
            let mut keys = lock(&self.keys);
            // IAM first: the condition `aws:ResourceTag/compute-bridge:owner = OWNER` holds only
            // for a key pair that exists and carries the tag.
            let allowed = !lock(&self.denied).iter().any(|d| d == key_name)
                && keys
                    .iter()
                    .any(|k| k.key_name == key_name && k.tags.get(OWNER_TAG).map(String::as_str) == Some(OWNER));
            if !allowed {
                return Err(Ec2Error::new(
                    Operation::DeleteKeyPair,
                    "UnauthorizedOperation",
                    format!(
                        "You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/bridge is not authorized to perform: ec2:DeleteKeyPair on resource: arn:aws:ec2:us-east-1:123456789012:key-pair/{key_name}"
                    ),
                ));
            }
            keys.retain(|k| k.key_name != key_name);
            Ok(())
        }

        async fn create_security_group(
            &self,
            _: &RegionLabel,
            _: CreateSecurityGroupRequest,
        ) -> Result<String, Ec2Error> {
            unexpected(Operation::CreateSecurityGroup)
        }

        async fn authorize_ingress(&self, _: &RegionLabel, _: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
            unexpected(Operation::AuthorizeSecurityGroupIngress)
        }

        async fn describe_security_groups_page(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: Vec<Filter>,
            _: PageRequest,
        ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
            Ok(Page::last(Vec::new()))
        }

        async fn delete_security_group(&self, _: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
            self.note(Operation::DeleteSecurityGroup, group_id);
            Ok(())
        }

        async fn run_instance(&self, _: &RegionLabel, _: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
            unexpected(Operation::RunInstances)
        }

        async fn describe_instances_page(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: Vec<Filter>,
            _: PageRequest,
        ) -> Result<Page<InstanceInfo>, Ec2Error> {
            Ok(Page::last(Vec::new()))
        }

        async fn terminate_instances(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
        ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
            unexpected(Operation::TerminateInstances)
        }

        async fn describe_instance_types_page(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: PageRequest,
        ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
            Ok(Page::last(vec![InstanceTypeInfo {
                instance_type: "m6i.large".into(),
                vcpus: 2,
                memory_mib: 8_192,
                architecture: crate::port::Architecture::X86_64,
            }]))
        }

        async fn create_tags(&self, _: &RegionLabel, _: Vec<String>, _: Tags) -> Result<(), Ec2Error> {
            unexpected(Operation::CreateTags)
        }

        async fn network_usage(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: u64,
            _: u64,
        ) -> Result<Vec<NetworkUsage>, Ec2Error> {
            Ok(Vec::new())
        }

        async fn get_console_output(&self, _: &RegionLabel, _: &str) -> Result<Option<String>, Ec2Error> {
            unexpected(Operation::GetConsoleOutput)
        }

        async fn describe_subnets_page(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: Vec<Filter>,
            _: PageRequest,
        ) -> Result<Page<SubnetInfo>, Ec2Error> {
            unexpected(Operation::DescribeSubnets)
        }

        async fn describe_instance_type_offerings_page(
            &self,
            _: &RegionLabel,
            _: Vec<String>,
            _: PageRequest,
        ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
            unexpected(Operation::DescribeInstanceTypeOfferings)
        }

        async fn get_parameter(&self, _: &RegionLabel, _: &str) -> Result<String, Ec2Error> {
            unexpected(Operation::GetParameter)
        }
    }

    fn config() -> AwsBootConfig {
        AwsBootConfig::from_toml(&format!(
            r#"
            regions = ["us-east-1"]
            instance_families = ["m6i"]
            owner = "{OWNER}"
            ami = {{ us-east-1 = "ami-12345678" }}
            ledger_path = "/nonexistent/ledger"
            ssh_ingress_cidrs = ["203.0.113.0/24"]
            almanac = {{ epoch_unix_ms = {START_UNIX_MS}, tick_ms = 1000 }}
            guest = {{ content_store_url = "https://content.example/blobs/{{hash}}" }}
            "#
        ))
        .expect("the test configuration is valid")
    }

    const GRANT: GrantId = GrantId([0x42; 32]);

    /// Given a grant that imported its key pair and created its security group (and launched
    /// nothing), a backend over `port` holding it.
    async fn backend_holding_a_key_pair(port: Arc<TagConditionedKeys>) -> AwsBackend {
        let mut ledger = Ledger::open(DynStore(Box::new(MemoryStore::new())), Vec::new()).expect("empty ledger");
        let key_name = names::key_name(&GRANT);
        let group_name = names::group_name(&GRANT);
        let events = [
            Event::GrantAdmitted {
                region: "us-east-1".into(),
                instance_type: "m6i.large".into(),
                vcpus: 2,
                memory_mib: 8_192,
                storage_bytes: 8 << 30,
                valid_to: AlmanacTick(3_600),
                valid_to_unix_ms: START_UNIX_MS + 3_600_000,
                key_name: key_name.clone(),
                group_name: group_name.clone(),
            },
            Event::KeyPairImported { key_name, key_pair_id: "key-0123".into() },
            Event::SecurityGroupCreated { group_id: "sg-0123".into(), group_name },
        ];
        for (n, event) in events.into_iter().enumerate() {
            ledger.append(GRANT, START_UNIX_MS + n as u64, event).expect("a valid history");
        }
        AwsBackend::new(
            &config(),
            BackendParts {
                port,
                clock: Arc::new(TokioClock::starting_at(START_UNIX_MS + 1_000)),
                ledger,
                key_seed: Secret::new("unit-key-seed"),
                jitter_seed: 7,
                switches: TestSwitches::default(),
                tenure: None,
            },
        )
        .await
        .expect("backend")
    }

    fn key_pair_deleted(backend: &AwsBackend) -> bool {
        backend.grant_state(&GRANT).is_some_and(|s| s.key_pair().is_none())
    }

    #[tokio::test(start_paused = true)]
    async fn teardown_takes_unauthorized_for_a_key_pair_that_is_gone_as_done() {
        // Given a grant whose key pair is already gone (an earlier teardown deleted it and
        // crashed before recording it), under a policy conditioned on the owner tag.
        let port = Arc::new(TagConditionedKeys::default());
        let backend = backend_holding_a_key_pair(port.clone()).await;

        // When it is torn down.
        backend.teardown(GRANT, TerminationReason::Rollback).await.expect("teardown finishes");

        // Then DeleteKeyPair's UnauthorizedOperation was checked with DescribeKeyPairs by name,
        // the key pair recorded deleted, and the grant settled.
        let key_name = names::key_name(&GRANT);
        let calls = port.calls();
        let delete = calls.iter().position(|c| *c == format!("DeleteKeyPair {key_name}")).expect("deleted");
        assert!(
            calls[delete + 1].starts_with("DescribeKeyPairs")
                && calls[delete + 1].contains("key-name")
                && calls[delete + 1].contains(&key_name),
            "{calls:?}"
        );
        assert!(key_pair_deleted(&backend));
        assert!(backend.grant_state(&GRANT).is_some_and(|s| s.is_settled()));
    }

    #[tokio::test(start_paused = true)]
    async fn teardown_fails_naming_the_key_and_the_fix_when_iam_refuses_an_existing_key_pair() {
        // Given a grant whose key pair exists but lacks our owner tag, so IAM refuses to delete it.
        let key_name = names::key_name(&GRANT);
        let port = Arc::new(TagConditionedKeys::with_key(&key_name, &[("Name", "someone else's")]));
        let backend = backend_holding_a_key_pair(port.clone()).await;

        // When it is torn down.
        let err = backend.teardown(GRANT, TerminationReason::Rollback).await.expect_err("IAM refuses");

        // Then teardown stops with an error naming the key pair and the IAM fix, records no
        // deletion, leaves the grant live for the next pass, and the key pair is still there.
        let BackendError::Provider { operation, code, message, retryable } = &err else {
            panic!("not a provider error: {err:?}");
        };
        assert_eq!((operation.as_str(), code.as_str(), *retryable), ("DeleteKeyPair", "UnauthorizedOperation", false));
        for needle in [key_name.as_str(), "us-east-1", "ec2:DeleteKeyPair", "docs/iam-policy.json", OWNER_TAG, OWNER] {
            assert!(message.contains(needle), "{needle:?} missing from: {message}");
        }
        assert!(!key_pair_deleted(&backend), "a key pair that still exists was recorded deleted");
        assert!(backend.grant_state(&GRANT).is_some_and(|s| !s.is_settled()));
        assert!(port.has_key(&key_name));
    }

    #[tokio::test(start_paused = true)]
    async fn teardown_deletes_an_owner_tagged_key_pair_without_asking_describe() {
        let key_name = names::key_name(&GRANT);
        let port = Arc::new(TagConditionedKeys::with_key(&key_name, &[(OWNER_TAG, OWNER)]));
        let backend = backend_holding_a_key_pair(port.clone()).await;

        backend.teardown(GRANT, TerminationReason::Rollback).await.expect("teardown finishes");

        assert!(!port.has_key(&key_name));
        assert!(key_pair_deleted(&backend));
        assert!(!port.calls().iter().any(|c| c.contains("key-name")), "{:?}", port.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_reports_a_refused_key_pair_and_not_one_that_vanished() {
        // Given two orphan key pairs carrying our owner tag and no grant tag: one that a
        // teardown running alongside deletes just before the reaper's DeleteKeyPair, and one
        // an explicit Deny in the account keeps IAM from deleting.
        let port = Arc::new(TagConditionedKeys::default());
        port.add_key("stray-gone", &[(OWNER_TAG, OWNER)]);
        port.add_key("stray-refused", &[(OWNER_TAG, OWNER)]);
        *lock(&port.vanishes_before_delete) = Some("stray-gone".into());
        lock(&port.denied).push("stray-refused".into());
        let backend = backend_holding_a_key_pair(port.clone()).await;

        // When a reaper pass runs.
        let report = backend.reap(false).await;

        // Then both were found; the vanished one counts as removed, and the refused one is an
        // error naming it and the fix, and is still there.
        let found: Vec<&str> = report.found.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(found, ["stray-gone", "stray-refused"], "{report:?}");
        assert_eq!(report.removed, 1, "{report:?}");
        assert_eq!(report.errors.len(), 1, "{report:?}");
        let error = &report.errors[0];
        assert!(error.contains("stray-refused") && error.contains("ec2:DeleteKeyPair"), "{error}");
        assert!(port.has_key("stray-refused") && !port.has_key("stray-gone"));
    }
}
