//! Preflight: the account checked as a run would use it, before a run
//! (`aws-backend check-config --aws`).
//!
//! [`check_account`] asks, against the configured endpoint: do the credentials resolve; does
//! each region answer; does each configured subnet exist (or, without `[network]`, is there a
//! default VPC); does each AMI alias resolve; does each instance family have an offering in
//! each region; and may the credentials make every mutating call the bridge makes, asked with
//! EC2's `DryRun` (`DryRunOperation`: allowed; `UnauthorizedOperation`: not, and the finding
//! names the statement of `docs/iam-policy.json` to add). Nothing is created: every mutating
//! call is sent with `DryRun` only, through [`AccountProbe`], and every other call is a read.
//!
//! The checks are written against the port and the probe, in our own types; `sdk::SdkEc2`
//! implements both. `checks.rs` holds one region's checks; `iam.rs` reads the shipped policy
//! and sorts EC2's answers.

mod checks;
mod iam;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use backend_api::{GrantId, RegionLabel};
use serde::Serialize;

pub use iam::{Answer, POLICY_JSON, classify, statements_granting};

use crate::config::AwsBootConfig;
use crate::port::{Ec2Error, Ec2Port, Operation, PageRequest, Tags, all_pages};

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The credentials a run would sign with.
    Credentials,
    /// A region answering at all.
    Region,
    /// The subnets of `[network]`, or the default VPC a region without one launches into.
    Subnet,
    /// An AMI alias of `ami`.
    Ami,
    /// An instance family's offerings in a region.
    Offering,
    /// One IAM action, asked with `DryRun`.
    Permission,
    /// Where the ledger is kept: its file's directory, or its DynamoDB table and the group's
    /// key seed (checked by the binary, which holds the stores).
    Ledger,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// As a run needs it.
    Passed,
    /// A run would fail on it: the detail says what to change.
    Failed,
    /// EC2's answer did not settle it (for example, it refused the placeholder resource before
    /// looking at the permission); the detail says why and when a run finds out.
    Unchecked,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// The region it was checked in, when it is a region's.
    pub region: Option<String>,
    /// The subject: a subnet id, an alias, a family, an action such as `ec2:RunInstances`.
    pub subject: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, and for a failure what to do.
    pub detail: String,
}

/// Every finding of one preflight, in the order the checks ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PreflightReport {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl PreflightReport {
    /// The findings a run would fail on.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.outcome == Outcome::Failed)
    }

    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// How many findings came out `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.findings.iter().filter(|f| f.outcome == outcome).count()
    }

    fn note(
        &mut self,
        check: Check,
        region: Option<&RegionLabel>,
        subject: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check,
            region: region.map(ToString::to_string),
            subject: subject.into(),
            outcome,
            detail: detail.into(),
        });
    }
}

/// A mutating call as the bridge makes it, to be sent with `DryRun`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DryRunCall {
    /// RunInstances of one instance of `instance_type` from `image_id`, tagged `tags` (as a
    /// launch tags its instance and volume, which EC2 authorizes as `ec2:CreateTags` too).
    RunInstances {
        /// The AMI.
        image_id: String,
        /// The type.
        instance_type: String,
        /// The subnet, when `[network]` names one.
        subnet_id: Option<String>,
        /// The tags a launch carries.
        tags: Tags,
    },
    /// CreateSecurityGroup, tagged.
    CreateSecurityGroup {
        /// The group's name.
        group_name: String,
        /// The VPC, when `[network]` puts grants in one.
        vpc_id: Option<String>,
        /// The tags.
        tags: Tags,
    },
    /// AuthorizeSecurityGroupIngress of TCP 22 from `cidr`.
    AuthorizeSecurityGroupIngress {
        /// A placeholder group id.
        group_id: String,
        /// One of `ssh_ingress_cidrs`.
        cidr: String,
    },
    /// ImportKeyPair, tagged.
    ImportKeyPair {
        /// The key's name.
        key_name: String,
        /// A real ed25519 public key (EC2 may check the material before the permission).
        public_key_openssh: String,
        /// The tags.
        tags: Tags,
    },
    /// TerminateInstances of a placeholder instance.
    TerminateInstances {
        /// The placeholder id.
        instance_id: String,
    },
    /// DeleteSecurityGroup of a placeholder group.
    DeleteSecurityGroup {
        /// The placeholder id.
        group_id: String,
    },
    /// DeleteKeyPair of a placeholder key.
    DeleteKeyPair {
        /// The key's name.
        key_name: String,
    },
}

impl DryRunCall {
    /// The operation, whose IAM action is `ec2:` and its name.
    pub fn operation(&self) -> Operation {
        match self {
            DryRunCall::RunInstances { .. } => Operation::RunInstances,
            DryRunCall::CreateSecurityGroup { .. } => Operation::CreateSecurityGroup,
            DryRunCall::AuthorizeSecurityGroupIngress { .. } => Operation::AuthorizeSecurityGroupIngress,
            DryRunCall::ImportKeyPair { .. } => Operation::ImportKeyPair,
            DryRunCall::TerminateInstances { .. } => Operation::TerminateInstances,
            DryRunCall::DeleteSecurityGroup { .. } => Operation::DeleteSecurityGroup,
            DryRunCall::DeleteKeyPair { .. } => Operation::DeleteKeyPair,
        }
    }
}

/// What the preflight needs beyond the port: the credentials, and calls sent with `DryRun`.
#[async_trait]
pub trait AccountProbe: Send + Sync {
    /// Resolves the credentials a call in `region` would be signed with; `Ok` says where they
    /// came from (never the secret), `Err` why none resolved.
    async fn credentials(&self, region: &RegionLabel) -> Result<String, String>;
    /// Sends `call` in `region` with `DryRun` set and returns EC2's answer, which is always an
    /// error: `DryRunOperation` when the call would have been allowed. `Ok` means the endpoint
    /// ignored `DryRun` and did it.
    async fn dry_run(&self, region: &RegionLabel, call: DryRunCall) -> Result<(), Ec2Error>;
}

/// The placeholder grant whose names the dry runs use: never a real grant's.
pub(crate) const PREFLIGHT_GRANT: GrantId = GrantId([0; 32]);
/// A well-formed id of nothing, for the calls that act on an existing resource.
pub(crate) const PLACEHOLDER_INSTANCE: &str = "i-0000000000000000f";
pub(crate) const PLACEHOLDER_GROUP: &str = "sg-0000000000000000f";

/// Checks the account as a run of `cfg` would use it. Never creates anything.
pub async fn check_account(cfg: &AwsBootConfig, port: &dyn Ec2Port, probe: &dyn AccountProbe) -> PreflightReport {
    let mut report = PreflightReport::default();
    let first = cfg.default_region();
    match probe.credentials(first).await {
        Ok(source) => report.note(Check::Credentials, None, "credentials", Outcome::Passed, source),
        Err(why) => {
            report.note(
                Check::Credentials,
                None,
                "credentials",
                Outcome::Failed,
                format!("{why}: give [credentials] in the config, or set up the standard AWS chain (AWS_ACCESS_KEY_ID, a profile, an instance role)"),
            );
            return report;
        }
    }
    for region in &cfg.regions {
        check_region(cfg, port, probe, region, &mut report).await;
    }
    report
}

async fn check_region(
    cfg: &AwsBootConfig,
    port: &dyn Ec2Port,
    probe: &dyn AccountProbe,
    region: &RegionLabel,
    report: &mut PreflightReport,
) {
    let types = all_pages(PageRequest::unpaged(), |page| {
        port.describe_instance_types_page(region, cfg.instance_families.clone(), page)
    })
    .await;
    let types = match types {
        Ok(types) => {
            report.note(Check::Region, Some(region), region.as_str(), Outcome::Passed, "answers");
            types
        }
        Err(err) => {
            let detail = match classify(&err) {
                Answer::BadCredentials => {
                    format!("refuses the credentials ({err}): check [credentials] or the AWS chain")
                }
                _ => format!(
                    "does not answer DescribeInstanceTypes ({err}): check `endpoint_url`, the network, and that the region is enabled for the account"
                ),
            };
            report.note(Check::Region, Some(region), region.as_str(), Outcome::Failed, detail);
            return;
        }
    };
    let offered = checks::offerings(cfg, port, region, &types, report).await;
    let network = checks::network(cfg, port, region, report).await;
    let images = checks::amis(cfg, port, region, report).await;
    // The launch the dry run asks for: the first architecture with both an image and an
    // offered type, its smallest type.
    let launch = images.iter().find_map(|(arch, image)| {
        types
            .iter()
            .filter(|t| t.architecture == *arch && offered.contains(&t.instance_type))
            .min_by_key(|t| (t.vcpus, t.memory_mib))
            .map(|t| (image.clone(), t.instance_type.clone()))
    });
    checks::permissions(cfg, probe, region, launch, network, report).await;
}
