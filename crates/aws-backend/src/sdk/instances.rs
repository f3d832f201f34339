//! Instances over the SDK: RunInstances (one instance with its root volume, metadata options and
//! tags), DescribeInstances, TerminateInstances, CreateTags and GetConsoleOutput.

use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{
    Ec2Error, Filter, InstanceInfo, InstanceStateChange, Operation, Page, PageRequest, RunInstancesRequest, Tags,
};

pub(super) async fn run_instance(
    port: &SdkEc2,
    region: &RegionLabel,
    req: RunInstancesRequest,
) -> Result<InstanceInfo, Ec2Error> {
    let op = Operation::RunInstances;
    let volume_gib = i32::try_from(req.root_volume_gib).map_err(|_| {
        Ec2Error::new(op, "InvalidParameterValue", format!("root volume of {} GiB is too large", req.root_volume_gib))
    })?;
    let root = ec2::BlockDeviceMapping::builder()
        .device_name(req.root_device_name)
        .ebs(
            ec2::EbsBlockDevice::builder()
                .volume_size(volume_gib)
                .volume_type(ec2::VolumeType::Gp3)
                .encrypted(true)
                .delete_on_termination(true)
                .build(),
        )
        .build();
    let metadata = ec2::InstanceMetadataOptionsRequest::builder()
        .http_endpoint(ec2::InstanceMetadataEndpointState::Enabled)
        .http_tokens(if req.imdsv2_required { ec2::HttpTokensState::Required } else { ec2::HttpTokensState::Optional })
        .http_put_response_hop_limit(i32::from(req.imds_hop_limit))
        .build();
    let tag_specs: Vec<_> = [
        convert::tag_spec(ec2::ResourceType::Instance, &req.instance_tags),
        convert::tag_spec(ec2::ResourceType::Volume, &req.volume_tags),
    ]
    .into_iter()
    .flatten()
    .collect();
    let placement = req
        .availability_zone
        .filter(|_| req.subnet_id.is_none())
        .map(|zone| ec2::Placement::builder().availability_zone(zone).build());
    let out = port
        .ec2(region, op)
        .await?
        .run_instances()
        .image_id(req.image_id)
        .set_subnet_id(req.subnet_id)
        .set_placement(placement)
        .instance_type(ec2::InstanceType::from(req.instance_type.as_str()))
        .key_name(req.key_name)
        .set_security_group_ids(Some(req.security_group_ids))
        .user_data(req.user_data_base64)
        .client_token(req.client_token)
        .min_count(1)
        .max_count(1)
        .block_device_mappings(root)
        .metadata_options(metadata)
        .instance_initiated_shutdown_behavior(convert::shutdown_behavior(req.shutdown_behavior))
        .set_tag_specifications((!tag_specs.is_empty()).then_some(tag_specs))
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    let first = out.instances().first().ok_or_else(|| convert::unexpected(op, "instance"))?;
    convert::instance(op, first)
}

pub(super) async fn describe_instances_page(
    port: &SdkEc2,
    region: &RegionLabel,
    instance_ids: &[String],
    filters: &[Filter],
    page: PageRequest,
) -> Result<Page<InstanceInfo>, Ec2Error> {
    let op = Operation::DescribeInstances;
    let ids = (!instance_ids.is_empty()).then(|| instance_ids.to_vec());
    let out = port
        .ec2(region, op)
        .await?
        .describe_instances()
        .set_instance_ids(ids)
        .set_filters(convert::filters(filters.to_vec()))
        .set_max_results(page.max_results.map(convert::max_results))
        .set_next_token(page.next_token)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    let mut items = Vec::new();
    for reservation in out.reservations() {
        for i in reservation.instances() {
            items.push(convert::instance(op, i)?);
        }
    }
    Ok(Page { items, next_token: out.next_token().map(str::to_string) })
}

pub(super) async fn terminate_instances(
    port: &SdkEc2,
    region: &RegionLabel,
    instance_ids: Vec<String>,
) -> Result<Vec<InstanceStateChange>, Ec2Error> {
    let op = Operation::TerminateInstances;
    let out = port
        .ec2(region, op)
        .await?
        .terminate_instances()
        .set_instance_ids(Some(instance_ids))
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    out.terminating_instances().iter().map(|c| convert::state_change(op, c)).collect()
}

pub(super) async fn create_tags(
    port: &SdkEc2,
    region: &RegionLabel,
    resource_ids: Vec<String>,
    tags: Tags,
) -> Result<(), Ec2Error> {
    let op = Operation::CreateTags;
    port.ec2(region, op)
        .await?
        .create_tags()
        .set_resources(Some(resource_ids))
        .set_tags(Some(convert::sdk_tags(&tags)))
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    Ok(())
}

pub(super) async fn get_console_output(
    port: &SdkEc2,
    region: &RegionLabel,
    instance_id: &str,
) -> Result<Option<String>, Ec2Error> {
    let op = Operation::GetConsoleOutput;
    let out = port
        .ec2(region, op)
        .await?
        .get_console_output()
        .instance_id(instance_id)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    let Some(encoded) = out.output().filter(|o| !o.is_empty()) else { return Ok(None) };
    // EC2 answers base64; the text itself may hold any bytes a serial console saw.
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim())
        .map_err(|e| convert::unexpected(op, format_args!("base64 console output ({e})")))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}
