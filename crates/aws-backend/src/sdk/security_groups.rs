//! Security groups over the SDK: CreateSecurityGroup, AuthorizeSecurityGroupIngress (the SSH
//! rule, each address family in its own list), DescribeSecurityGroups and DeleteSecurityGroup.

use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Filter, Operation, Page, PageRequest,
    SecurityGroupInfo,
};

pub(super) async fn create_security_group(
    port: &SdkEc2,
    region: &RegionLabel,
    req: CreateSecurityGroupRequest,
) -> Result<String, Ec2Error> {
    let op = Operation::CreateSecurityGroup;
    let out = port
        .ec2(region, op)
        .await?
        .create_security_group()
        .group_name(req.group_name)
        .description(req.description)
        .set_vpc_id(req.vpc_id)
        .set_tag_specifications(convert::tag_spec(ec2::ResourceType::SecurityGroup, &req.tags).map(|s| vec![s]))
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    out.group_id().map(str::to_string).ok_or_else(|| convert::unexpected(op, "group id"))
}

pub(super) async fn authorize_ingress(
    port: &SdkEc2,
    region: &RegionLabel,
    req: AuthorizeIngressRequest,
) -> Result<(), Ec2Error> {
    let op = Operation::AuthorizeSecurityGroupIngress;
    let permission = ingress_permission(req.port, req.cidrs);
    port.ec2(region, op)
        .await?
        .authorize_security_group_ingress()
        .group_id(req.group_id)
        .ip_permissions(permission)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    Ok(())
}

pub(super) async fn describe_security_groups_page(
    port: &SdkEc2,
    region: &RegionLabel,
    group_ids: Vec<String>,
    filters: Vec<Filter>,
    page: PageRequest,
) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
    let op = Operation::DescribeSecurityGroups;
    let ids = (!group_ids.is_empty()).then_some(group_ids);
    let out = port
        .ec2(region, op)
        .await?
        .describe_security_groups()
        .set_group_ids(ids)
        .set_filters(convert::filters(filters))
        .set_max_results(page.max_results.map(convert::max_results))
        .set_next_token(page.next_token)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    let items = out.security_groups().iter().map(|g| convert::security_group(op, g)).collect::<Result<_, _>>()?;
    Ok(Page { items, next_token: out.next_token().map(str::to_string) })
}

pub(super) async fn delete_security_group(port: &SdkEc2, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
    let op = Operation::DeleteSecurityGroup;
    port.ec2(region, op)
        .await?
        .delete_security_group()
        .group_id(group_id)
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    Ok(())
}

/// The rule letting TCP `port` in from `cidrs`: IPv4 ranges as `IpRanges` (`CidrIp`), IPv6 ones
/// (those holding a `:`) as `Ipv6Ranges` (`CidrIpv6`), since EC2 refuses an IPv6 range given as
/// `CidrIp` as malformed (aws/aws-cli#2428). An empty family is left out of the request.
pub(super) fn ingress_permission(port: u16, cidrs: Vec<String>) -> ec2::IpPermission {
    let (ipv6, ipv4): (Vec<String>, Vec<String>) = cidrs.into_iter().partition(|cidr| cidr.contains(':'));
    let ip_ranges: Vec<ec2::IpRange> =
        ipv4.into_iter().map(|cidr| ec2::IpRange::builder().cidr_ip(cidr).build()).collect();
    let ipv6_ranges: Vec<ec2::Ipv6Range> =
        ipv6.into_iter().map(|cidr| ec2::Ipv6Range::builder().cidr_ipv6(cidr).build()).collect();
    ec2::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(i32::from(port))
        .to_port(i32::from(port))
        .set_ip_ranges((!ip_ranges.is_empty()).then_some(ip_ranges))
        .set_ipv6_ranges((!ipv6_ranges.is_empty()).then_some(ipv6_ranges))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_sends_each_address_family_in_its_own_list() {
        let cidrs = ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32", "::/0"].map(String::from).to_vec();
        let permission = ingress_permission(22, cidrs);
        assert_eq!(permission.ip_protocol(), Some("tcp"));
        assert_eq!((permission.from_port(), permission.to_port()), (Some(22), Some(22)));
        let v4: Vec<_> = permission.ip_ranges().iter().filter_map(|r| r.cidr_ip()).collect();
        let v6: Vec<_> = permission.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).collect();
        assert_eq!(v4, ["203.0.113.0/24", "198.51.100.7/32"]);
        assert_eq!(v6, ["2001:db8::/32", "::/0"]);

        // A single family sends no empty list of the other.
        let only_v4 = ingress_permission(22, vec!["0.0.0.0/0".into()]);
        assert!(only_v4.ipv6_ranges.is_none(), "{only_v4:?}");
        let only_v6 = ingress_permission(22, vec!["2001:db8::/32".into()]);
        assert!(only_v6.ip_ranges.is_none(), "{only_v6:?}");
    }
}
