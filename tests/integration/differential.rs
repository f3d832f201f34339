//! The differential test: one scripted sequence of EC2 calls, run on `sim-ec2` with its faults
//! off and on moto's EC2 server over HTTP (through the backend's SDK port), must give the same
//! observable results: error codes, states, what Describe lists.
//!
//! Both sides are reached through `aws_backend::port::Ec2Port`, so the script is written once
//! ([`script`]). Each step adds a line to a [`Transcript`]: the call, then `ok <result>` or
//! `err <code>`. Ids are replaced by placeholders in the order they are first seen (`i-1`,
//! `sg-1`, `key-1`), the run's salt by `RUN`, and what differs from run to run (launch times,
//! DNS names, addresses, messages) is left out. Where the two differ by design, [`KNOWN`] names
//! the step, both answers and why; each entry is also in docs/simulation.md ("Differential test
//! against moto"). A known difference that stops holding fails the test as well, so the list
//! cannot go stale.
//!
//! `cargo xtask ci` starts `moto_server` and sets `MOTO_ENDPOINT`; without it the moto test says
//! loudly that it did not run, and fails when `REQUIRE_MOTO=1`, as the tests in `moto.rs` do.
#![cfg(feature = "sdk")]

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, ensure};
use aws_backend::AwsBootConfig;
use aws_backend::keys::SshKeyPair;
use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Ec2PortExt, Filter, ImportKeyPairRequest,
    InstanceInfo, InstanceState, KeyPairInfo, RunInstancesRequest, SecurityGroupInfo, ShutdownBehavior, Tags,
};
use aws_backend::sdk::SdkEc2;
use backend_api::RegionLabel;
use sim_ec2::{FaultConfig, ManualClock, SimConfig, SimEc2};

const REGION: &str = "us-east-1";
/// An AMI in moto's default image list (moto refuses unknown AMI ids; the sim takes any `ami-`).
const MOTO_AMI: &str = "ami-1e749f67";
/// That AMI's root device.
const MOTO_ROOT_DEVICE: &str = "/dev/sda1";
/// The tag every resource of a run carries, valued with the run's salt: moto's server is shared
/// by every test of the binary, so each Describe of the script is narrowed by it (or by ids).
const RUN_TAG: &str = "differential-run";
/// Well-formed ids that no run ever creates.
const UNKNOWN_INSTANCE: &str = "i-0123456789abcdef0";
const UNKNOWN_GROUP: &str = "sg-0123456789abcdef0";
/// `#!/bin/sh` and `true`, base64-encoded.
const USER_DATA_BASE64: &str = "IyEvYmluL3NoCnRydWUK";

/// A step on which the sim and moto answer differently by design: both answers, exactly as
/// the transcript writes them, and why. Each is a row of docs/simulation.md's table.
struct KnownDifference {
    step: &'static str,
    sim: &'static str,
    moto: &'static str,
    why: &'static str,
}

/// Every known difference. Keep this in step with docs/simulation.md, "Differential test
/// against moto".
const KNOWN: &[KnownDifference] = &[
    KnownDifference {
        step: "ImportKeyPair malformed key",
        sim: "err InvalidKey.Format",
        moto: "err InvalidKeyPair.Format",
        why: "EC2 answers InvalidKey.Format (\"Key is not in valid OpenSSH public key format\"); moto uses \
              InvalidKeyPair.Format, another code of EC2's list",
    },
    KnownDifference {
        step: "RunInstances role=main",
        sim: "ok i-1 t3.micro running reason=- token=RUN-main tags={Name=diff-RUN-main,differential-run=RUN,role=main}",
        moto: "ok i-1 t3.micro pending reason=- token=RUN-main tags={Name=diff-RUN-main,differential-run=RUN,role=main}",
        why: "FaultConfig::none() has no launch delay, so the sim's instance is running when RunInstances answers; \
              moto answers pending as EC2 does, and both show running from the next Describe",
    },
    KnownDifference {
        step: "CreateTags on an unknown instance",
        sim: "err InvalidInstanceID.NotFound",
        moto: "ok",
        why: "moto tags any id without looking it up; EC2 answers InvalidInstanceID.NotFound",
    },
    KnownDifference {
        step: "DeleteSecurityGroup in use by a running instance",
        sim: "err DependencyViolation",
        moto: "ok",
        why: "moto never checks whether an instance uses the group; EC2 refuses with DependencyViolation",
    },
    KnownDifference {
        step: "TerminateInstances",
        sim: "ok [i-1 running->terminated]",
        moto: "ok [i-1 running->shutting-down]",
        why: "FaultConfig::none() has no shutting-down phase, so the sim's instance is terminated when the call \
              answers; moto answers shutting-down as EC2 does, and both show terminated from the next Describe",
    },
    KnownDifference {
        step: "TerminateInstances again",
        sim: "ok [i-1 terminated->terminated]",
        moto: "ok [i-1 terminated->shutting-down]",
        why: "moto answers shutting-down whatever the state; EC2 leaves a terminated instance terminated",
    },
    KnownDifference {
        step: "DeleteSecurityGroup after its instance terminated",
        sim: "ok",
        moto: "err InvalidGroup.NotFound",
        why: "follows from DeleteSecurityGroup in use: moto deleted the group then",
    },
    KnownDifference {
        step: "DescribeInstances malformed id",
        sim: "err InvalidInstanceID.Malformed",
        moto: "err InvalidInstanceID.NotFound",
        why: "moto does not check an id's form; EC2 answers InvalidInstanceID.Malformed for an id not shaped i-<hex>",
    },
    KnownDifference {
        step: "RunInstances role=token, same ClientToken again",
        sim: "ok i-2",
        moto: "ok i-3",
        why: "moto ignores ClientToken and launches a second instance; EC2 returns the first",
    },
    KnownDifference {
        step: "DescribeInstances tag:role=token",
        sim: "ok [i-2]",
        moto: "ok [i-2; i-3]",
        why: "follows from the previous row",
    },
    KnownDifference {
        step: "RunInstances with a missing key pair",
        sim: "err InvalidKeyPair.NotFound",
        moto: "ok pending",
        why: "moto does not look the key pair up; EC2 answers InvalidKeyPair.NotFound",
    },
    KnownDifference {
        step: "RunInstances with an unknown instance type",
        sim: "err InvalidParameterValue",
        moto: "ok pending",
        why: "moto launches any type name; EC2 answers InvalidParameterValue",
    },
];

/// One side's record of the script: per step its label and its normalised outcome.
struct Transcript {
    /// The run's salt, written `RUN` in the transcript.
    salt: String,
    steps: Vec<(String, String)>,
    /// Each id seen, and its placeholder.
    placeholders: BTreeMap<String, String>,
    /// How many ids of each prefix have been given a placeholder.
    counts: BTreeMap<String, usize>,
}

impl Transcript {
    fn new(salt: &str) -> Self {
        Self { salt: salt.to_string(), steps: Vec::new(), placeholders: BTreeMap::new(), counts: BTreeMap::new() }
    }

    /// The placeholder of `id`: its prefix and the order in which ids of that prefix were first
    /// seen (`i-0abc...` → `i-1`). An id no run creates (the unknown ones) is kept as it is.
    fn id(&mut self, id: &str) -> String {
        if id.is_empty() {
            return "-".into();
        }
        if [UNKNOWN_INSTANCE, UNKNOWN_GROUP].contains(&id) {
            return id.to_string();
        }
        if let Some(known) = self.placeholders.get(id) {
            return known.clone();
        }
        let prefix = id.split_once('-').map_or(id, |(p, _)| p).to_string();
        let count = self.counts.entry(prefix.clone()).or_default();
        *count += 1;
        let placeholder = format!("{prefix}-{count}");
        self.placeholders.insert(id.to_string(), placeholder.clone());
        placeholder
    }

    /// `text` with the run's salt written `RUN`.
    fn text(&self, text: &str) -> String {
        text.replace(&self.salt, "RUN")
    }

    fn tags(&self, tags: &Tags) -> String {
        let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{}={}", self.text(k), self.text(v))).collect();
        format!("{{{}}}", pairs.join(","))
    }

    fn instance(&mut self, i: &InstanceInfo) -> String {
        format!(
            "{} {} {} reason={} token={} tags={}",
            self.id(&i.instance_id),
            i.instance_type,
            i.state,
            i.state_reason_code.as_deref().filter(|r| !r.is_empty()).unwrap_or("-"),
            self.text(&i.client_token),
            self.tags(&i.tags),
        )
    }

    fn key_pair(&mut self, k: &KeyPairInfo) -> String {
        format!("{} {} tags={}", self.text(&k.key_name), self.id(&k.key_pair_id), self.tags(&k.tags))
    }

    fn group(&mut self, g: &SecurityGroupInfo) -> String {
        format!("{} {} tags={}", self.id(&g.group_id), self.text(&g.group_name), self.tags(&g.tags))
    }

    /// A Describe answer: its items, sorted (EC2 promises no order), in brackets.
    fn list<T>(&mut self, items: &[T], line: impl Fn(&mut Self, &T) -> String) -> String {
        let mut lines: Vec<String> = items.iter().map(|item| line(self, item)).collect();
        lines.sort();
        format!("[{}]", lines.join("; "))
    }

    /// Records step `label`: `ok` and what `ok` makes of the answer, or `err` and EC2's code.
    /// Returns the answer, for the steps that follow.
    fn record<T>(
        &mut self,
        label: &str,
        result: Result<T, Ec2Error>,
        ok: impl FnOnce(&mut Self, &T) -> String,
    ) -> Option<T> {
        let outcome = match &result {
            Ok(value) => {
                let shown = ok(self, value);
                if shown.is_empty() { "ok".to_string() } else { format!("ok {shown}") }
            }
            Err(e) => format!("err {}", e.code),
        };
        self.steps.push((label.to_string(), outcome));
        result.ok()
    }
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

/// The script, run once per side. `tick` is called before every call: the sim's clock moves a
/// second, so that its RunInstances bucket (5 tokens, refilling 2 per second) never throttles the
/// script; for moto it does nothing. Calls whose answers depend on something only one side did
/// (cleaning up what moto's missing ClientToken check left) are made but not recorded.
async fn script(port: &dyn Ec2Port, region: &RegionLabel, salt: &str, tick: &(dyn Fn() + Sync)) -> Transcript {
    let mut t = Transcript::new(salt);
    let run = [(RUN_TAG, salt)];
    let by_run = || Filter::tag(RUN_TAG, [salt]);
    let key_name = format!("diff-{salt}-key");
    let group_name = format!("diff-{salt}-sg");
    let public_key =
        SshKeyPair::ed25519_from_seed([0x5D; 32], "differential").expect("an ed25519 key from a seed").public_openssh;

    // Key pairs.
    tick();
    let import = ImportKeyPairRequest {
        key_name: key_name.clone(),
        public_key_openssh: public_key.clone(),
        tags: tags(&[run[0], ("role", "key")]),
    };
    let result = port.import_key_pair(region, import.clone()).await;
    t.record("ImportKeyPair", result, |t, k| t.key_pair(k));
    tick();
    let result = port.import_key_pair(region, import.clone()).await;
    t.record("ImportKeyPair same name again", result, |t, k| t.key_pair(k));
    tick();
    let malformed = ImportKeyPairRequest {
        key_name: format!("diff-{salt}-malformed"),
        public_key_openssh: "ssh-ed25519 this-is-not-base64!".into(),
        tags: tags(&run),
    };
    let result = port.import_key_pair(region, malformed).await;
    t.record("ImportKeyPair malformed key", result, |t, k| t.key_pair(k));
    tick();
    let result =
        port.describe_key_pairs(region, vec![Filter { name: "key-name".into(), values: vec![key_name.clone()] }]).await;
    t.record("DescribeKeyPairs key-name", result, |t, l| t.list(l, Transcript::key_pair));
    tick();
    let result = port.describe_key_pairs(region, vec![by_run()]).await;
    t.record("DescribeKeyPairs tag:differential-run", result, |t, l| t.list(l, Transcript::key_pair));

    // Security groups.
    tick();
    let create = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: group_name.clone(),
        description: "the differential test's group".into(),
        tags: tags(&[run[0], ("role", "group")]),
    };
    let result = port.create_security_group(region, create.clone()).await;
    let group_id = t.record("CreateSecurityGroup", result, |t, id| t.id(id)).unwrap_or_default();
    tick();
    let result = port.create_security_group(region, create).await;
    t.record("CreateSecurityGroup same name again", result, |t, id| t.id(id));
    tick();
    let ingress =
        AuthorizeIngressRequest { group_id: group_id.clone(), port: 22, cidrs: vec!["203.0.113.0/24".into()] };
    let result = port.authorize_ingress(region, ingress.clone()).await;
    t.record("AuthorizeSecurityGroupIngress", result, |_, ()| String::new());
    tick();
    let result = port.authorize_ingress(region, ingress).await;
    t.record("AuthorizeSecurityGroupIngress same rule again", result, |_, ()| String::new());
    tick();
    let result = port
        .authorize_ingress(
            region,
            AuthorizeIngressRequest { group_id: UNKNOWN_GROUP.into(), port: 22, cidrs: vec!["203.0.113.0/24".into()] },
        )
        .await;
    t.record("AuthorizeSecurityGroupIngress unknown group", result, |_, ()| String::new());
    tick();
    let result = port
        .describe_security_groups(
            region,
            Vec::new(),
            vec![Filter { name: "group-name".into(), values: vec![group_name.clone()] }],
        )
        .await;
    t.record("DescribeSecurityGroups group-name", result, |t, l| t.list(l, Transcript::group));
    tick();
    let result = port.describe_security_groups(region, Vec::new(), vec![by_run()]).await;
    t.record("DescribeSecurityGroups tag:differential-run", result, |t, l| t.list(l, Transcript::group));
    tick();
    let result = port.describe_security_groups(region, vec![group_id.clone()], Vec::new()).await;
    t.record("DescribeSecurityGroups by id", result, |t, l| t.list(l, Transcript::group));

    // An instance with the key, the group, tags, user data and a ClientToken.
    let launch = |role: &str| RunInstancesRequest {
        image_id: MOTO_AMI.into(),
        instance_type: "t3.micro".into(),
        key_name: key_name.clone(),
        security_group_ids: vec![group_id.clone()],
        user_data_base64: USER_DATA_BASE64.into(),
        client_token: format!("{salt}-{role}"),
        root_volume_gib: 8,
        root_device_name: MOTO_ROOT_DEVICE.into(),
        imdsv2_required: true,
        imds_hop_limit: 1,
        shutdown_behavior: ShutdownBehavior::Terminate,
        instance_tags: tags(&[run[0], ("role", role), ("Name", format!("diff-{salt}-{role}").as_str())]),
        volume_tags: tags(&[run[0], ("role", role)]),
        subnet_id: None,
        availability_zone: None,
    };
    let role = |role: &str| Filter::tag("role", [role]);
    tick();
    let result = port.run_instance(region, launch("main")).await;
    let instance = t.record("RunInstances role=main", result, |t, i| t.instance(i)).map(|i| i.instance_id.to_string());
    let instance = instance.unwrap_or_else(|| UNKNOWN_INSTANCE.into());
    tick();
    let result = port.describe_instances(region, vec![instance.clone()], Vec::new()).await;
    t.record("DescribeInstances by id", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), role("main")]).await;
    t.record("DescribeInstances tag:role=main", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let running = Filter::instance_states(&[InstanceState::Running]);
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), running.clone()]).await;
    t.record("DescribeInstances instance-state-name=running", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let stopped = Filter::instance_states(&[InstanceState::Stopped]);
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), stopped]).await;
    t.record("DescribeInstances instance-state-name=stopped", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.create_tags(region, vec![instance.clone()], tags(&[("stage", "tagged")])).await;
    t.record("CreateTags on the instance", result, |_, ()| String::new());
    tick();
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), Filter::tag("stage", ["tagged"])]).await;
    t.record("DescribeInstances tag:stage=tagged", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.create_tags(region, vec![UNKNOWN_INSTANCE.into()], tags(&[("stage", "tagged")])).await;
    t.record("CreateTags on an unknown instance", result, |_, ()| String::new());

    // The group while its instance runs, then the instance's end.
    tick();
    let result = port.delete_security_group(region, &group_id).await;
    t.record("DeleteSecurityGroup in use by a running instance", result, |_, ()| String::new());
    tick();
    let result = port.terminate_instances(region, vec![instance.clone()]).await;
    t.record("TerminateInstances", result, |t, changes| {
        t.list(changes, |t, c| format!("{} {}->{}", t.id(&c.instance_id), c.previous_state, c.current_state))
    });
    tick();
    let result = port.terminate_instances(region, vec![instance.clone()]).await;
    t.record("TerminateInstances again", result, |t, changes| {
        t.list(changes, |t, c| format!("{} {}->{}", t.id(&c.instance_id), c.previous_state, c.current_state))
    });
    tick();
    let result = port.describe_instances(region, vec![instance.clone()], Vec::new()).await;
    t.record("DescribeInstances by id after termination", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let terminated = Filter::instance_states(&[InstanceState::Terminated]);
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), terminated]).await;
    t.record("DescribeInstances instance-state-name=terminated", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), running]).await;
    t.record("DescribeInstances instance-state-name=running after termination", result, |t, l| {
        t.list(l, Transcript::instance)
    });
    tick();
    let result = port.delete_security_group(region, &group_id).await;
    t.record("DeleteSecurityGroup after its instance terminated", result, |_, ()| String::new());
    tick();
    let result = port.describe_security_groups(region, Vec::new(), vec![by_run()]).await;
    t.record("DescribeSecurityGroups tag:differential-run after the delete", result, |t, l| {
        t.list(l, Transcript::group)
    });
    tick();
    let result = port.delete_security_group(region, UNKNOWN_GROUP).await;
    t.record("DeleteSecurityGroup unknown", result, |_, ()| String::new());

    // Lookups of what does not exist.
    tick();
    let result = port.describe_instances(region, vec![UNKNOWN_INSTANCE.into()], Vec::new()).await;
    t.record("DescribeInstances unknown id", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.describe_instances(region, vec!["x-123".into()], Vec::new()).await;
    t.record("DescribeInstances malformed id", result, |t, l| t.list(l, Transcript::instance));
    tick();
    let result = port.terminate_instances(region, vec![UNKNOWN_INSTANCE.into()]).await;
    t.record("TerminateInstances unknown id", result, |t, changes| {
        t.list(changes, |t, c| format!("{} {}->{}", t.id(&c.instance_id), c.previous_state, c.current_state))
    });

    // Instance types.
    tick();
    let result = port.describe_instance_types(region, vec!["t3".into()]).await;
    t.record("DescribeInstanceTypes t3", result, |t, l| {
        t.list(l, |_, ty| format!("{} vcpus={} mib={}", ty.instance_type, ty.vcpus, ty.memory_mib))
    });
    tick();
    let result = port.describe_instance_types(region, vec!["m6i".into()]).await;
    t.record("DescribeInstanceTypes m6i large and 4xlarge", result, |t, l| {
        let picked: Vec<_> =
            l.iter().filter(|ty| ["m6i.large", "m6i.4xlarge"].contains(&ty.instance_type.as_str())).cloned().collect();
        t.list(&picked, |_, ty| format!("{} vcpus={} mib={}", ty.instance_type, ty.vcpus, ty.memory_mib))
    });

    // The launches below need a group of their own: moto deleted the first one while its
    // instance ran.
    tick();
    let later = CreateSecurityGroupRequest {
        vpc_id: None,
        group_name: format!("{group_name}-later"),
        description: "the differential test's group for its later launches".into(),
        tags: tags(&[run[0], ("role", "later-group")]),
    };
    let result = port.create_security_group(region, later).await;
    let later_group = t.record("CreateSecurityGroup for the later launches", result, |t, id| t.id(id));
    let later_group = later_group.unwrap_or_default();
    let launch = |role: &str| RunInstancesRequest { security_group_ids: vec![later_group.clone()], ..launch(role) };

    // ClientToken: the same token and parameters twice. Last of the launches, since moto's
    // answer (a second instance) would otherwise shift every later placeholder.
    tick();
    let result = port.run_instance(region, launch("token")).await;
    let first = t.record("RunInstances role=token", result, |t, i| t.id(&i.instance_id));
    tick();
    let result = port.run_instance(region, launch("token")).await;
    let second = t.record("RunInstances role=token, same ClientToken again", result, |t, i| t.id(&i.instance_id));
    tick();
    let result = port.describe_instances(region, Vec::new(), vec![by_run(), role("token")]).await;
    t.record("DescribeInstances tag:role=token", result, |t, l| t.list(l, |t, i| t.id(&i.instance_id)));
    // Not recorded: the ids to end differ (moto made two instances).
    let mut ids: Vec<String> = first.into_iter().chain(second).map(|i| i.instance_id.to_string()).collect();
    ids.dedup();
    if !ids.is_empty() {
        tick();
        let _ = port.terminate_instances(region, ids).await;
    }

    // Launches EC2 refuses, each with one thing wrong. moto launches some of them: those are
    // ended unrecorded, and the transcript shows only the state they were launched in.
    let mut launched = Vec::new();
    for (label, request) in [
        (
            "RunInstances with a missing key pair",
            RunInstancesRequest { key_name: format!("diff-{salt}-missing"), ..launch("no-key") },
        ),
        (
            "RunInstances with an unknown group",
            RunInstancesRequest { security_group_ids: vec![UNKNOWN_GROUP.into()], ..launch("no-group") },
        ),
        (
            "RunInstances with an unknown instance type",
            RunInstancesRequest { instance_type: "t3.colossal".into(), ..launch("no-type") },
        ),
    ] {
        tick();
        let result = port.run_instance(region, request).await;
        launched.extend(t.record(label, result, |_, i| i.state.to_string()).map(|i| i.instance_id.to_string()));
    }
    if !launched.is_empty() {
        tick();
        let _ = port.terminate_instances(region, launched).await;
    }

    // Key pairs, the end.
    tick();
    let result = port.delete_key_pair(region, &key_name).await;
    t.record("DeleteKeyPair", result, |_, ()| String::new());
    tick();
    let result = port.delete_key_pair(region, &key_name).await;
    t.record("DeleteKeyPair of a missing name", result, |_, ()| String::new());
    tick();
    let result = port.describe_key_pairs(region, vec![by_run()]).await;
    t.record("DescribeKeyPairs tag:differential-run after the delete", result, |t, l| t.list(l, Transcript::key_pair));
    t
}

/// The sim, faults off, in one region, on a clock that moves only when `tick` says.
fn sim() -> (Arc<SimEc2>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(tests::fixture::START_UNIX_MS));
    let config = SimConfig::new(14, vec![region()]).with_faults(FaultConfig::none());
    let sim = SimEc2::new(config, clock.clone()).expect("a valid sim config");
    (Arc::new(sim), clock)
}

fn region() -> RegionLabel {
    RegionLabel::new(REGION).expect("a valid region")
}

async fn sim_transcript(salt: &str) -> Transcript {
    let (sim, clock) = sim();
    script(sim.as_ref(), &region(), salt, &|| clock.advance_ms(1_000)).await
}

/// The SDK port pointed at moto.
async fn moto_port(endpoint: &str) -> anyhow::Result<SdkEc2> {
    let cfg = AwsBootConfig::from_toml(&format!(
        r#"
        regions = ["{REGION}"]
        instance_families = ["t3"]
        owner = "differential"
        ami = {{ {REGION} = "{MOTO_AMI}" }}
        endpoint_url = "{endpoint}"
        ledger_path = "/nonexistent/unused"
        almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
        credentials = {{ access_key_id = "testing", secret_access_key = "testing" }}
        guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
        "#
    ))
    .context("the moto config")?;
    Ok(SdkEc2::new(&cfg).await)
}

/// Compares the two transcripts step by step: equal, or as [`KNOWN`] says. Returns every
/// mismatch, one readable block each.
fn compare(sim: &Transcript, moto: &Transcript) -> Vec<String> {
    let mut problems = Vec::new();
    let labels = |t: &Transcript| t.steps.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();
    if labels(sim) != labels(moto) {
        problems.push(format!("the two ran different steps:\n  sim:  {:?}\n  moto: {:?}", labels(sim), labels(moto)));
        return problems;
    }
    for ((step, on_sim), (_, on_moto)) in sim.steps.iter().zip(&moto.steps) {
        match KNOWN.iter().find(|k| k.step == step) {
            Some(known) if on_sim != known.sim || on_moto != known.moto => problems.push(format!(
                "step `{step}`, a known difference ({}), no longer answers as listed:\n  sim:  {on_sim}\n        \
                 (listed: {})\n  moto: {on_moto}\n        (listed: {})",
                known.why, known.sim, known.moto
            )),
            Some(_) => {}
            None if on_sim != on_moto => {
                problems.push(format!("step `{step}` differs:\n  sim:  {on_sim}\n  moto: {on_moto}"));
            }
            None => {}
        }
    }
    problems
}

/// Both transcripts side by side, for a failure message.
fn side_by_side(sim: &Transcript, moto: &Transcript) -> String {
    let mut out = String::new();
    for (n, ((step, on_sim), (_, on_moto))) in sim.steps.iter().zip(&moto.steps).enumerate() {
        let mark = if on_sim == on_moto {
            ' '
        } else if KNOWN.iter().any(|k| k.step == step) {
            'k'
        } else {
            '!'
        };
        out.push_str(&format!("{mark} {n:>2} {step}\n       sim:  {on_sim}\n       moto: {on_moto}\n"));
    }
    out
}

/// The script on the sim (faults off) and on moto gives the same transcript, but for the known
/// differences, each of which still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_and_moto_answer_the_same_script_alike() -> anyhow::Result<()> {
    let Some(endpoint) = crate::moto::moto_endpoint("the_sim_and_moto_answer_the_same_script_alike") else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let salt = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let on_sim = sim_transcript(&salt).await;
    let port = moto_port(&endpoint).await?;
    let on_moto = script(&port, &region(), &salt, &|| {}).await;
    let problems = compare(&on_sim, &on_moto);
    ensure!(
        problems.is_empty(),
        "the sim and moto differ beyond the known differences (docs/simulation.md, \"Differential test against \
         moto\"):\n\n{}\n\nthe whole script ('!' differs, 'k' a known difference):\n{}",
        problems.join("\n\n"),
        side_by_side(&on_sim, &on_moto)
    );
    eprintln!(
        "differential test: {} steps alike on the sim and moto ({} known differences) in {:.1} s",
        on_sim.steps.len(),
        KNOWN.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Without moto: the script runs on the sim, every known difference names a step of it, and
/// the sim still answers those steps as listed, so a plain `cargo test` notices a sim change
/// that makes the list wrong.
#[tokio::test]
async fn the_known_differences_hold_on_the_sim() -> anyhow::Result<()> {
    let on_sim = sim_transcript("0123456789ab").await;
    for known in KNOWN {
        let answer = on_sim.steps.iter().find(|(step, _)| step == known.step).map(|(_, a)| a.as_str());
        ensure!(answer.is_some(), "known difference `{}` names no step of the script", known.step);
        ensure!(answer == Some(known.sim), "step `{}`: the sim answers {answer:?}, listed {:?}", known.step, known.sim);
    }
    Ok(())
}
