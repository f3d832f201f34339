//! Key pair deletion under a tag-conditioned IAM policy, against a stub port that applies
//! such a policy to DeleteKeyPair. The simulator does not model IAM; this stub does just
//! enough of it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backend_api::{AlmanacTick, BackendError, GrantId, RegionLabel, Secret, TokioClock};
use usage_ledger::{Event, Ledger, MemoryStore, TerminationReason};

use crate::config::{AwsBootConfig, OWNER_TAG};
use crate::pacing::lock;
use crate::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
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

fn unexpected<T>(op: Operation) -> Result<T, Ec2Error> {
    Err(Ec2Error::new(op, "Local.NotInThisStub", "the key pair tests never make this call"))
}

#[async_trait]
impl Ec2Port for TagConditionedKeys {
    async fn import_key_pair(&self, _: &RegionLabel, _: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        unexpected(Operation::ImportKeyPair)
    }

    async fn describe_key_pairs(&self, _: &RegionLabel, filters: Vec<Filter>) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        self.note(Operation::DescribeKeyPairs, &format!("{filters:?}"));
        let matches = |k: &KeyPairInfo| {
            filters.iter().all(|f| match f.name.as_str() {
                "key-name" => f.values.contains(&k.key_name),
                name => {
                    name.strip_prefix("tag:").is_some_and(|tag| k.tags.get(tag).is_some_and(|v| f.values.contains(v)))
                }
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
            && keys.iter().any(|k| k.key_name == key_name && k.tags.get(OWNER_TAG).map(String::as_str) == Some(OWNER));
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

    async fn create_security_group(&self, _: &RegionLabel, _: CreateSecurityGroupRequest) -> Result<String, Ec2Error> {
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
        _: &[String],
        _: &[Filter],
        _: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        Ok(Page::last(Vec::new()))
    }

    async fn terminate_instances(&self, _: &RegionLabel, _: Vec<String>) -> Result<Vec<InstanceStateChange>, Ec2Error> {
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
        _: &[String],
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
