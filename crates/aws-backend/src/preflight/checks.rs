//! The account checks of one region, each noting its findings in the report: the families'
//! offerings, the network a launch goes into, the AMI aliases, and the mutating calls sent
//! with `DryRun`.

use std::collections::{BTreeMap, BTreeSet};

use backend_api::RegionLabel;

use super::{
    AccountProbe, Check, DryRunCall, Outcome, PLACEHOLDER_GROUP, PLACEHOLDER_INSTANCE, PREFLIGHT_GRANT,
    PreflightReport, iam,
};
use crate::config::{AwsBootConfig, ImageSource, OWNER_TAG};
use crate::keys::SshKeyPair;
use crate::port::{Architecture, Ec2Port, Filter, InstanceTypeInfo, PageRequest, Tags, all_pages, codes};

/// Each family's offerings; returns the offered types.
pub(super) async fn offerings(
    cfg: &AwsBootConfig,
    port: &dyn Ec2Port,
    region: &RegionLabel,
    types: &[InstanceTypeInfo],
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
pub(super) async fn network(
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
pub(super) async fn amis(
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
pub(super) async fn permissions(
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
    // The calls that create carry their tags, which EC2 authorizes as ec2:CreateTags too.
    let mut tagging = Vec::new();
    for call in calls {
        let tags = matches!(
            call,
            DryRunCall::RunInstances { .. } | DryRunCall::CreateSecurityGroup { .. } | DryRunCall::ImportKeyPair { .. }
        );
        let action = format!("ec2:{}", call.operation().name());
        let (outcome, mut detail) = match probe.dry_run(region, call).await {
            Ok(()) => (
                Outcome::Unchecked,
                "the endpoint ignored DryRun and made the call: check `endpoint_url` points at EC2 or moto".to_string(),
            ),
            Err(err) => iam::judge(&action, &err, &cfg.owner),
        };
        if tags {
            if outcome == Outcome::Failed {
                detail.push_str(&format!(
                    "; it tags what it creates, so it also needs ec2:CreateTags ({})",
                    iam::statement_names("ec2:CreateTags")
                ));
            }
            tagging.push((action.clone(), outcome));
        }
        report.note(Check::Permission, Some(region), &action, outcome, detail);
    }
    // The bridge never calls CreateTags on its own: it is checked through the creating calls.
    let refused: Vec<&str> =
        tagging.iter().filter(|(_, o)| *o != Outcome::Passed).map(|(action, _)| action.as_str()).collect();
    let (outcome, detail) = if refused.is_empty() && !tagging.is_empty() {
        (
            Outcome::Passed,
            "allowed with the tags of every creating call (the bridge tags only while creating)".to_string(),
        )
    } else {
        (
            Outcome::Unchecked,
            format!("asked only with the creating calls' tags, and {} did not pass", refused.join(", ")),
        )
    };
    report.note(Check::Permission, Some(region), "ec2:CreateTags", outcome, detail);
}
