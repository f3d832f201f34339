//! The preflight's probe over the SDK ([`AccountProbe`] for [`SdkEc2`]): the credentials the
//! clients would sign with, and the bridge's mutating calls sent with `DryRun`, which EC2
//! answers with `DryRunOperation` or `UnauthorizedOperation` and never carries out.

use async_trait::async_trait;
use aws_sdk_ec2::config::ProvideCredentials as _;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;

use super::security_groups::ingress_permission;
use super::{SdkEc2, convert};
use crate::port::Ec2Error;
use crate::preflight::{AccountProbe, DryRunCall};

#[async_trait]
impl AccountProbe for SdkEc2 {
    async fn credentials(&self, region: &RegionLabel) -> Result<String, String> {
        let provider =
            self.shared_config(region).await.credentials_provider().ok_or("no credentials provider is configured")?;
        let credentials = provider.provide_credentials().await.map_err(|e| format!("no credentials resolved: {e}"))?;
        // The key id is not secret on its own, but only its first characters are shown.
        let key: String = credentials.access_key_id().chars().take(4).collect();
        let source = if self.credentials.is_some() { "[credentials] of the config" } else { "the standard AWS chain" };
        Ok(format!("resolved from {source} (access key {key}...)"))
    }

    async fn dry_run(&self, region: &RegionLabel, call: DryRunCall) -> Result<(), Ec2Error> {
        let op = call.operation();
        let client = self.ec2(region, op).await?;
        match call {
            DryRunCall::RunInstances { image_id, instance_type, subnet_id, tags } => client
                .run_instances()
                .dry_run(true)
                .image_id(image_id)
                .instance_type(ec2::InstanceType::from(instance_type.as_str()))
                .set_subnet_id(subnet_id)
                .min_count(1)
                .max_count(1)
                .set_tag_specifications(Some(
                    [
                        convert::tag_spec(ec2::ResourceType::Instance, &tags),
                        convert::tag_spec(ec2::ResourceType::Volume, &tags),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ))
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::CreateSecurityGroup { group_name, vpc_id, tags } => client
                .create_security_group()
                .dry_run(true)
                .group_name(group_name)
                .description("compute-bridge-preflight-DryRun")
                .set_vpc_id(vpc_id)
                .set_tag_specifications(convert::tag_spec(ec2::ResourceType::SecurityGroup, &tags).map(|s| vec![s]))
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::AuthorizeSecurityGroupIngress { group_id, cidr } => client
                .authorize_security_group_ingress()
                .dry_run(true)
                .group_id(group_id)
                .ip_permissions(ingress_permission(22, vec![cidr]))
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::ImportKeyPair { key_name, public_key_openssh, tags } => client
                .import_key_pair()
                .dry_run(true)
                .key_name(key_name)
                .public_key_material(Blob::new(public_key_openssh.into_bytes()))
                .set_tag_specifications(convert::tag_spec(ec2::ResourceType::KeyPair, &tags).map(|s| vec![s]))
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::TerminateInstances { instance_id } => client
                .terminate_instances()
                .dry_run(true)
                .instance_ids(instance_id)
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::DeleteSecurityGroup { group_id } => client
                .delete_security_group()
                .dry_run(true)
                .group_id(group_id)
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
            DryRunCall::DeleteKeyPair { key_name } => client
                .delete_key_pair()
                .dry_run(true)
                .key_name(key_name)
                .send()
                .await
                .map(drop)
                .map_err(|e| convert::error(op, e)),
        }
    }
}
