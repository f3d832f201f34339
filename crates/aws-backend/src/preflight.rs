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
//! implements both. `iam.rs` reads the shipped policy and sorts EC2's answers.

mod iam;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use backend_api::{GrantId, RegionLabel};
use serde::Serialize;

pub use iam::{Answer, POLICY_JSON, classify, statements_granting};

use crate::config::{AwsBootConfig, ImageSource, OWNER_TAG};
use crate::keys::SshKeyPair;
use crate::port::{Architecture, Ec2Error, Ec2Port, Filter, Operation, PageRequest, Tags, all_pages, codes};

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
const PREFLIGHT_GRANT: GrantId = GrantId([0; 32]);
/// A well-formed id of nothing, for the calls that act on an existing resource.
const PLACEHOLDER_INSTANCE: &str = "i-0000000000000000f";
const PLACEHOLDER_GROUP: &str = "sg-0000000000000000f";

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
    let offered = check_offerings(cfg, port, region, &types, report).await;
    let network = check_network(cfg, port, region, report).await;
    let images = check_amis(cfg, port, region, report).await;
    // The launch the dry run asks for: the first architecture with both an image and an
    // offered type, its smallest type.
    let launch = images.iter().find_map(|(arch, image)| {
        types
            .iter()
            .filter(|t| t.architecture == *arch && offered.contains(&t.instance_type))
            .min_by_key(|t| (t.vcpus, t.memory_mib))
            .map(|t| (image.clone(), t.instance_type.clone()))
    });
    check_permissions(cfg, probe, region, launch, network, report).await;
}

/// Each family's offerings; returns the offered types.
async fn check_offerings(
    cfg: &AwsBootConfig,
    port: &dyn Ec2Port,
    region: &RegionLabel,
    types: &[crate::port::InstanceTypeInfo],
    report: &mut PreflightReport,
) -> BTreeSet<String> {
    let names: Vec<String> = types.iter().map(|t| t.instance_type.clone()).collect();
    let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // EC2 takes at most 200 values in one filter.
    for chunk in names.chunks(100) {
        let rows = all_pages(PageRequest::unpaged(), |page| {
            port.describe_instance_type_offerings_page(region, chunk.to_vec(), page)
        })
        .await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    offered.entry(row.instance_type).or_default().insert(row.availability_zone);
                }
            }
            Err(err) => {
                report.note(
                    Check::Offering,
                    Some(region),
                    "DescribeInstanceTypeOfferings",
                    Outcome::Failed,
                    format!("failed ({err}): grant ec2:DescribeInstanceTypeOfferings (statement DescribeWhatTheBridgeReads of docs/iam-policy.json)"),
                );
                return BTreeSet::new();
            }
        }
    }
    for family in &cfg.instance_families {
        let prefix = format!("{family}.");
        let family_types: Vec<&String> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
        let zones: BTreeSet<&String> = family_types.iter().filter_map(|t| offered.get(*t)).flatten().collect();
        if family_types.is_empty() {
            report.note(
                Check::Offering,
                Some(region),
                family,
                Outcome::Failed,
                format!("EC2 lists no {family} instance types in {region}: check the family's name in `instance_families`, or drop it"),
            );
        } else if zones.is_empty() {
            report.note(
                Check::Offering,
                Some(region),
                family,
                Outcome::Failed,
                format!(
                    "no zone of {region} offers any of the {} {family} types: drop {family} from `instance_families`, or {region} from `regions`",
                    family_types.len()
                ),
            );
        } else {
            let offered_types = family_types.iter().filter(|t| offered.contains_key(**t)).count();
            report.note(
                Check::Offering,
                Some(region),
                family,
                Outcome::Passed,
                format!("{offered_types} types offered in {} zones", zones.len()),
            );
        }
    }
    offered.into_keys().collect()
}

/// Where a launch goes: `[network]`'s subnets, each named, or the default VPC. Returns a
/// subnet to launch the dry run into and its VPC, when `[network]` gives subnets that exist.
async fn check_network(
    cfg: &AwsBootConfig,
    port: &dyn Ec2Port,
    region: &RegionLabel,
    report: &mut PreflightReport,
) -> Option<(String, String)> {
    let describe = |ids: Vec<String>, filters: Vec<Filter>| {
        all_pages(PageRequest::unpaged(), move |page| {
            port.describe_subnets_page(region, ids.clone(), filters.clone(), page)
        })
    };
    let Some(network) = cfg.network.get(region.as_str()) else {
        let defaults =
            describe(Vec::new(), vec![Filter { name: "default-for-az".into(), values: vec!["true".into()] }]).await;
        match defaults {
            Ok(subnets) if !subnets.is_empty() => report.note(
                Check::Subnet,
                Some(region),
                "default VPC",
                Outcome::Passed,
                format!("no [network.{region}]: grants launch into the default VPC ({} default subnets)", subnets.len()),
            ),
            Ok(_) => report.note(
                Check::Subnet,
                Some(region),
                "default VPC",
                Outcome::Failed,
                format!("{region} has no default VPC and the config no [network.{region}]: every launch would fail with VPCIdNotSpecified; add [network.{region}] subnet_ids = [\"subnet-...\"]"),
            ),
            Err(err) => report.note(Check::Subnet, Some(region), "default VPC", Outcome::Failed, format!("DescribeSubnets failed: {err}")),
        }
        return None;
    };
    let mut found = Vec::new();
    let field = format!("network.{region}");
    for id in &network.subnet_ids {
        match describe(vec![id.clone()], Vec::new()).await {
            Ok(subnets) if !subnets.is_empty() => {
                report.note(
                    Check::Subnet,
                    Some(region),
                    id,
                    Outcome::Passed,
                    format!("exists, in {}", subnets[0].vpc_id),
                );
                found.extend(subnets);
            }
            Ok(_) => report.note(
                Check::Subnet,
                Some(region),
                id,
                Outcome::Failed,
                format!("{id} does not exist in {region}: fix {field}.subnet_ids"),
            ),
            Err(err) if err.code == codes::SUBNET_NOT_FOUND => report.note(
                Check::Subnet,
                Some(region),
                id,
                Outcome::Failed,
                format!("{id} does not exist in {region} (EC2: {}): fix {field}.subnet_ids", err.code),
            ),
            Err(err) => {
                report.note(Check::Subnet, Some(region), id, Outcome::Failed, format!("DescribeSubnets failed: {err}"))
            }
        }
    }
    if !network.subnet_tags.is_empty() {
        let filters: Vec<Filter> = network.subnet_tags.iter().map(|(k, v)| Filter::tag(k, [v.clone()])).collect();
        let subject = format!("{field}.subnet_tags");
        match describe(Vec::new(), filters).await {
            Ok(subnets) if !subnets.is_empty() => {
                report.note(
                    Check::Subnet,
                    Some(region),
                    &subject,
                    Outcome::Passed,
                    format!("{} subnets carry the tags", subnets.len()),
                );
                found.extend(subnets);
            }
            Ok(_) => report.note(
                Check::Subnet,
                Some(region),
                &subject,
                Outcome::Failed,
                format!("no subnet of {region} carries every tag of {subject}: tag one, or fix the tags"),
            ),
            Err(err) => report.note(
                Check::Subnet,
                Some(region),
                &subject,
                Outcome::Failed,
                format!("DescribeSubnets failed: {err}"),
            ),
        }
    }
    let vpcs: BTreeSet<&str> = found.iter().map(|s| s.vpc_id.as_str()).collect();
    if vpcs.len() > 1 {
        report.note(Check::Subnet, Some(region), &field, Outcome::Failed, format!("the subnets are in several VPCs {vpcs:?}: a grant's security group lives in one; keep the subnets of one VPC"));
    }
    found.first().map(|s| (s.subnet_id.clone(), s.vpc_id.clone()))
}

/// Each alias of the region resolved; returns the image of each architecture (ids as written).
async fn check_amis(
    cfg: &AwsBootConfig,
    port: &dyn Ec2Port,
    region: &RegionLabel,
    report: &mut PreflightReport,
) -> Vec<(Architecture, String)> {
    let mut images = Vec::new();
    for arch in Architecture::ALL {
        match cfg.image_source(region.as_str(), arch) {
            None => {}
            Some(ImageSource::Id(id)) => images.push((arch, id)),
            Some(ImageSource::Parameter(name)) => {
                let subject = format!("{}{name}", crate::config::SSM_ALIAS_PREFIX);
                match port.get_parameter(region, &name).await {
                    Ok(id) => {
                        report.note(
                            Check::Ami,
                            Some(region),
                            &subject,
                            Outcome::Passed,
                            format!("{arch} resolves to {id}"),
                        );
                        images.push((arch, id));
                    }
                    Err(err) => {
                        let why = if err.code == codes::PARAMETER_NOT_FOUND {
                            "no such parameter".to_string()
                        } else {
                            err.to_string()
                        };
                        report.note(
                            Check::Ami,
                            Some(region),
                            &subject,
                            Outcome::Failed,
                            format!("the {arch} alias does not resolve in {region} ({why}): fix ami.{region}, e.g. \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"; grants of {arch} types cannot launch there"),
                        );
                    }
                }
            }
        }
    }
    images
}

/// Every mutating call of the bridge, sent with `DryRun`.
async fn check_permissions(
    cfg: &AwsBootConfig,
    probe: &dyn AccountProbe,
    region: &RegionLabel,
    launch: Option<(String, String)>,
    network: Option<(String, String)>,
    report: &mut PreflightReport,
) {
    let mut tags: Tags = cfg.tags.clone();
    tags.insert(OWNER_TAG.into(), cfg.owner.clone());
    // No spaces in what the dry runs send: moto 5.2's IAM mode recomputes SigV4 over a body
    // holding a space differently and answers AuthFailure (seen in tests/integration/preflight.rs).
    tags.insert("Name".into(), "compute-bridge-preflight".into());
    let key_name = crate::names::key_name(&PREFLIGHT_GRANT);
    let public_key = SshKeyPair::ed25519_from_seed([7; 32], "compute-bridge-preflight")
        .map(|k| k.public_openssh)
        .unwrap_or_default();
    let mut calls = Vec::new();
    match launch {
        Some((image_id, instance_type)) => calls.push(DryRunCall::RunInstances {
            image_id,
            instance_type,
            subnet_id: network.as_ref().map(|(subnet, _)| subnet.clone()),
            tags: tags.clone(),
        }),
        None => report.note(
            Check::Permission,
            Some(region),
            "ec2:RunInstances",
            Outcome::Unchecked,
            format!("no image and offered type of one architecture in {region} to ask with (see the findings above)"),
        ),
    }
    calls.extend([
        DryRunCall::CreateSecurityGroup {
            group_name: crate::names::group_name(&PREFLIGHT_GRANT),
            vpc_id: network.map(|(_, vpc)| vpc),
            tags: tags.clone(),
        },
        DryRunCall::AuthorizeSecurityGroupIngress {
            group_id: PLACEHOLDER_GROUP.into(),
            cidr: cfg.ssh_ingress_cidrs.first().map(ToString::to_string).unwrap_or_default(),
        },
        DryRunCall::ImportKeyPair { key_name: key_name.clone(), public_key_openssh: public_key, tags },
        DryRunCall::TerminateInstances { instance_id: PLACEHOLDER_INSTANCE.into() },
        DryRunCall::DeleteSecurityGroup { group_id: PLACEHOLDER_GROUP.into() },
        DryRunCall::DeleteKeyPair { key_name },
    ]);
    for call in calls {
        let action = format!("ec2:{}", call.operation().name());
        let (outcome, detail) = match probe.dry_run(region, call).await {
            Ok(()) => (
                Outcome::Unchecked,
                "the endpoint ignored DryRun and made the call: check `endpoint_url` points at EC2 or moto".to_string(),
            ),
            Err(err) => iam::judge(&action, &err, &cfg.owner),
        };
        report.note(Check::Permission, Some(region), &action, outcome, detail);
    }
}
