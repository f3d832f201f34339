//! `check-config --aws`'s account check (`aws_backend::preflight`) against moto's server: a good
//! configuration passes; an unknown subnet, an AMI alias that does not resolve and a family
//! without an offering in a region are each named; and, on a moto of its own that enforces IAM,
//! a refused action is named with the statement of `docs/iam-policy.json` to add.
#![cfg(feature = "sdk")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use aws_backend::AwsBootConfig;
use aws_backend::preflight::{self, Check, Finding, Outcome, POLICY_JSON, PreflightReport};
use aws_backend::sdk::SdkEc2;
use serde_json::Value;

use crate::moto::{MOTO_AMI, MOTO_ROOT_DEVICE, moto_endpoint};

/// A configuration for moto at `endpoint`: `head` gives `regions`, `instance_families`, `ami`
/// and anything else; the rest is fixed.
fn config(endpoint: &str, key_id: &str, secret: &str, head: &str) -> anyhow::Result<AwsBootConfig> {
    AwsBootConfig::from_toml(&format!(
        r#"
        {head}
        owner = "moto-preflight"
        root_device_name = "{MOTO_ROOT_DEVICE}"
        endpoint_url = "{endpoint}"
        ledger_path = "/nonexistent/unused"
        almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
        credentials = {{ access_key_id = "{key_id}", secret_access_key = "{secret}" }}
        guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
        "#
    ))
    .context("the preflight config")
}

async fn check(cfg: &AwsBootConfig) -> PreflightReport {
    let port = SdkEc2::new(cfg).await;
    preflight::check_account(cfg, &port, &port).await
}

fn show(report: &PreflightReport) -> String {
    report
        .findings
        .iter()
        .map(|f| format!("{:?} {:?} {:?} {}: {}", f.outcome, f.check, f.region, f.subject, f.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The failed finding of `check` about `subject` (in `region`).
fn failed<'a>(report: &'a PreflightReport, check: Check, region: &str, subject: &str) -> Option<&'a Finding> {
    report.failures().find(|f| f.check == check && f.region.as_deref() == Some(region) && f.subject == subject)
}

#[tokio::test]
async fn a_good_config_passes_the_account_check() -> anyhow::Result<()> {
    let Some(endpoint) = moto_endpoint("a_good_config_passes_the_account_check") else { return Ok(()) };
    let head = format!(
        r#"regions = ["us-east-1"]
        instance_families = ["m6i", "t3"]
        ami = {{ us-east-1 = "{MOTO_AMI}" }}"#
    );
    let report = check(&config(&endpoint, "testing", "testing", &head)?).await;
    ensure!(report.passed(), "a good config failed:\n{}", show(&report));
    for action in
        ["ec2:RunInstances", "ec2:CreateSecurityGroup", "ec2:ImportKeyPair", "ec2:CreateTags", "ec2:TerminateInstances"]
    {
        ensure!(
            report
                .findings
                .iter()
                .any(|f| f.check == Check::Permission && f.subject == action && f.outcome == Outcome::Passed),
            "{action} was not asked with DryRun and allowed:\n{}",
            show(&report)
        );
    }
    for check in [Check::Credentials, Check::Region, Check::Subnet, Check::Offering] {
        ensure!(report.findings.iter().any(|f| f.check == check), "no {check:?} finding:\n{}", show(&report));
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_subnet_an_unresolved_alias_and_a_family_without_offering_are_each_named() -> anyhow::Result<()> {
    let Some(endpoint) =
        moto_endpoint("an_unknown_subnet_an_unresolved_alias_and_a_family_without_offering_are_each_named")
    else {
        return Ok(());
    };
    // moto offers c6a in us-east-1 but in no zone of eu-north-1.
    let head = format!(
        r#"regions = ["us-east-1", "eu-north-1"]
        instance_families = ["m6i", "c6a"]
        ami = {{ us-east-1 = "{MOTO_AMI}", eu-north-1 = "resolve:ssm:/compute-bridge/preflight/no-such-alias" }}
        network = {{ us-east-1 = {{ subnet_ids = ["subnet-0123456789abcdef0"] }} }}"#
    );
    let report = check(&config(&endpoint, "testing", "testing", &head)?).await;
    ensure!(!report.passed(), "a broken account passed:\n{}", show(&report));
    let subnet = failed(&report, Check::Subnet, "us-east-1", "subnet-0123456789abcdef0")
        .with_context(|| format!("the unknown subnet is not named:\n{}", show(&report)))?;
    ensure!(subnet.detail.contains("network.us-east-1.subnet_ids"), "{}", subnet.detail);
    let alias = failed(&report, Check::Ami, "eu-north-1", "resolve:ssm:/compute-bridge/preflight/no-such-alias")
        .with_context(|| format!("the unresolved alias is not named:\n{}", show(&report)))?;
    ensure!(alias.detail.contains("ami.eu-north-1"), "{}", alias.detail);
    let family = failed(&report, Check::Offering, "eu-north-1", "c6a")
        .with_context(|| format!("the family without offering is not named:\n{}", show(&report)))?;
    ensure!(family.detail.contains("instance_families"), "{}", family.detail);
    // Only those: c6a is offered in us-east-1, m6i in both, and us-east-1's alias-free AMI is fine.
    ensure!(report.failures().count() == 3, "other failures:\n{}", show(&report));
    Ok(())
}

/// The calls [`iam_user`] makes before moto enforces IAM.
const IAM_SETUP_CALLS: u32 = 3;

/// A moto server of this test's own, killed on drop: it enforces IAM, which would break every
/// other test sharing `MOTO_ENDPOINT`'s server.
struct OwnMoto {
    child: Child,
    endpoint: String,
}

impl OwnMoto {
    fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // moto answers its first requests without checking them, then checks every
            // request's signature and the caller's policies: the first three make the user.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", IAM_SETUP_CALLS.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server (the IAM test runs one of its own)")?;
        let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("moto_server did not listen on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped policy as moto can evaluate it (moto's IAM ignores resource ARNs' tags and
/// conditions: every statement on `*`, no condition), less `drop`.
fn policy_without(drop: &str) -> String {
    let mut policy: Value = serde_json::from_str(POLICY_JSON).expect("the shipped policy is JSON");
    for statement in policy["Statement"].as_array_mut().expect("statements") {
        let statement = statement.as_object_mut().expect("a statement");
        statement.remove("Condition");
        statement.insert("Resource".into(), Value::String("*".into()));
        let actions: Vec<Value> = match statement.get("Action") {
            Some(Value::Array(many)) => many.clone(),
            Some(one) => vec![one.clone()],
            None => Vec::new(),
        };
        let kept: Vec<Value> = actions.into_iter().filter(|a| a.as_str() != Some(drop)).collect();
        statement.insert("Action".into(), Value::Array(kept));
    }
    policy["Statement"]
        .as_array_mut()
        .expect("statements")
        .retain(|s| s["Action"].as_array().is_some_and(|a| !a.is_empty()));
    policy.to_string()
}

/// Makes an IAM user with `policy` in moto at `endpoint` in [`IAM_SETUP_CALLS`] calls (with
/// boto3, which moto's server installs: the workspace builds no IAM client), and returns the
/// user's access key id and secret.
fn iam_user(endpoint: &str, policy: &str) -> anyhow::Result<(String, String)> {
    const SCRIPT: &str = r#"
import sys
import boto3
endpoint, policy = sys.argv[1], sys.stdin.read()
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="bridge")
iam.put_user_policy(UserName="bridge", PolicyName="bridge", PolicyDocument=policy)
key = iam.create_access_key(UserName="bridge")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, endpoint])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 (with boto3) to make the IAM user")?;
    {
        use std::io::Write as _;
        child.stdin.take().context("stdin")?.write_all(policy.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "making the IAM user failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
        _ => bail!("no access key in {text:?}"),
    }
}

#[tokio::test]
async fn with_moto_enforcing_iam_a_refused_action_is_named_with_the_statement_to_add() -> anyhow::Result<()> {
    // Run where the moto tests run; the server is this test's own.
    if moto_endpoint("with_moto_enforcing_iam_a_refused_action_is_named_with_the_statement_to_add").is_none() {
        return Ok(());
    }
    let moto = OwnMoto::start()?;
    let (key_id, secret) = iam_user(&moto.endpoint, &policy_without("ec2:TerminateInstances"))?;
    let head = format!(
        r#"regions = ["us-east-1"]
        instance_families = ["m6i"]
        ami = {{ us-east-1 = "{MOTO_AMI}" }}"#
    );
    let report = check(&config(&moto.endpoint, &key_id, &secret, &head)?).await;
    let refused = failed(&report, Check::Permission, "us-east-1", "ec2:TerminateInstances")
        .with_context(|| format!("the refused action is not named:\n{}", show(&report)))?;
    ensure!(
        refused.detail.contains("EndOnlyWhatIsOurs") && refused.detail.contains("moto-preflight"),
        "the statement to add is not named with the configured owner: {}",
        refused.detail
    );
    ensure!(report.failures().count() == 1, "only TerminateInstances is refused:\n{}", show(&report));
    ensure!(
        report.findings.iter().any(|f| f.subject == "ec2:RunInstances" && f.outcome == Outcome::Passed),
        "the allowed calls pass under IAM:\n{}",
        show(&report)
    );
    // The wrong secret is refused as credentials, not as a permission.
    let wrong = check(&config(&moto.endpoint, &key_id, "not-the-secret", &head)?).await;
    ensure!(
        wrong.failures().any(|f| f.check == Check::Region && f.detail.contains("credentials")),
        "a wrong secret is not named as the credentials:\n{}",
        show(&wrong)
    );
    Ok(())
}
