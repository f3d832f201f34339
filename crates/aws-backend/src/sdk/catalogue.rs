//! What a region offers, over the SDK: DescribeInstanceTypes, DescribeSubnets and
//! DescribeInstanceTypeOfferings (per availability zone).

use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{Ec2Error, Filter, InstanceTypeInfo, InstanceTypeOffering, Operation, Page, PageRequest, SubnetInfo};

pub(super) async fn describe_instance_types_page(
    port: &SdkEc2,
    region: &RegionLabel,
    families: Vec<String>,
    page: PageRequest,
) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
    let op = Operation::DescribeInstanceTypes;
    let filters = (!families.is_empty()).then(|| {
        vec![
            ec2::Filter::builder()
                .name("instance-type")
                .set_values(Some(families.iter().map(|f| format!("{f}.*")).collect()))
                .build(),
        ]
    });
    let out = port
        .ec2(region, op)
        .await?
        .describe_instance_types()
        .set_filters(filters)
        .set_max_results(page.max_results.map(convert::max_results))
        .set_next_token(page.next_token)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    // A type without a vCPU count or memory size cannot be sized against; skip it.
    let items = out.instance_types().iter().filter_map(convert::instance_type).collect();
    Ok(Page { items, next_token: out.next_token().map(str::to_string) })
}

pub(super) async fn describe_subnets_page(
    port: &SdkEc2,
    region: &RegionLabel,
    subnet_ids: Vec<String>,
    filters: Vec<Filter>,
    page: PageRequest,
) -> Result<Page<SubnetInfo>, Ec2Error> {
    let op = Operation::DescribeSubnets;
    let ids = (!subnet_ids.is_empty()).then_some(subnet_ids);
    let out = port
        .ec2(region, op)
        .await?
        .describe_subnets()
        .set_subnet_ids(ids)
        .set_filters(convert::filters(filters))
        .set_max_results(page.max_results.map(convert::max_results))
        .set_next_token(page.next_token)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    let items = out.subnets().iter().map(|s| convert::subnet(op, s)).collect::<Result<_, _>>()?;
    Ok(Page { items, next_token: out.next_token().map(str::to_string) })
}

pub(super) async fn describe_instance_type_offerings_page(
    port: &SdkEc2,
    region: &RegionLabel,
    instance_types: Vec<String>,
    page: PageRequest,
) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
    let op = Operation::DescribeInstanceTypeOfferings;
    let filters = (!instance_types.is_empty())
        .then(|| vec![ec2::Filter::builder().name("instance-type").set_values(Some(instance_types)).build()]);
    let out = port
        .ec2(region, op)
        .await?
        .describe_instance_type_offerings()
        .location_type(ec2::LocationType::AvailabilityZone)
        .set_filters(filters)
        .set_max_results(page.max_results.map(convert::max_results))
        .set_next_token(page.next_token)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    // A row without a type or a zone tells nothing; skip it.
    let items = out.instance_type_offerings().iter().filter_map(convert::offering).collect();
    Ok(Page { items, next_token: out.next_token().map(str::to_string) })
}
