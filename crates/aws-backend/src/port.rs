//! The EC2 port: the slice of EC2 (and CloudWatch) the backend uses, in our own types.
//!
//! [`Ec2Port`] is implemented twice: over the AWS SDK (`crate::sdk`, behind the `sdk` feature)
//! and in memory by the `sim-ec2` crate. The provisioning logic in this crate is written only
//! against this trait, so production and simulation run the same code. Nothing here depends on
//! the AWS SDK.
//!
//! This file holds the traits; the types they speak in live in submodules, re-exported here:
//! `operation` (operations and their throttle classes), `error` ([`Ec2Error`]; its codes in
//! [`codes`]), `requests`, `answers`, `pages` (pagination) and `metrics` (CloudWatch).

mod answers;
pub mod codes;
mod error;
mod metrics;
mod operation;
mod pages;
mod requests;

use std::collections::BTreeMap;

use async_trait::async_trait;
use backend_api::RegionLabel;

pub use answers::{
    Architecture, InstanceInfo, InstanceState, InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering,
    KeyPairInfo, SecurityGroupInfo, SubnetInfo,
};
pub use error::Ec2Error;
pub use metrics::{METRIC_PERIOD_MS, NetworkUsage, metric_window};
pub use operation::{
    Operation, RUN_INSTANCES_RESOURCE_CAPACITY, RUN_INSTANCES_RESOURCE_REFILL_PER_S,
    TERMINATE_INSTANCES_RESOURCE_CAPACITY, TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S, ThrottleClass,
};
pub use pages::{Page, PageRequest, all_pages};
pub use requests::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Filter, ImportKeyPairRequest, RunInstancesRequest,
    ShutdownBehavior,
};

/// Resource tags, ordered so that output is deterministic.
pub type Tags = BTreeMap<String, String>;

/// The EC2 surface the backend uses. Every call names its region.
///
/// Implementations return EC2's real error codes in [`Ec2Error`]; retries and backoff are the
/// caller's business, not the port's.
#[async_trait]
pub trait Ec2Port: Send + Sync + 'static {
    /// ImportKeyPair.
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error>;
    /// DescribeKeyPairs with filters (empty: all).
    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error>;
    /// DeleteKeyPair by name; a missing name succeeds, as in EC2.
    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error>;
    /// CreateSecurityGroup; returns the group id.
    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error>;
    /// AuthorizeSecurityGroupIngress.
    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error>;
    /// One page of DescribeSecurityGroups by ids (empty: any) and filters.
    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error>;
    /// DeleteSecurityGroup by id.
    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error>;
    /// RunInstances for exactly one instance.
    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error>;
    /// One page of DescribeInstances by ids (empty: any) and filters. An id that is unknown (or
    /// not yet visible) fails the whole call with `InvalidInstanceID.NotFound`, as EC2 does.
    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        filters: &[Filter],
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error>;
    /// TerminateInstances.
    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error>;
    /// One page of DescribeInstanceTypes within the given families (e.g. `m6i`); empty: all.
    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error>;
    /// CreateTags.
    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error>;
    /// Network bytes per instance: CloudWatch's GetMetricData for NetworkIn and NetworkOut (Sum)
    /// with StartTime `start_unix_ms` and EndTime `end_unix_ms`, as they are. CloudWatch answers
    /// the datapoints published so far whose timestamp (their period's start) lies in
    /// `[StartTime rounded down to the minute, EndTime)`; a datapoint is published minutes after
    /// its period ends, and now and then never. Ask for a [`metric_window`] to count whole
    /// periods. Instances without data are absent or zero.
    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error>;
    /// GetConsoleOutput: the instance's console output as text, `None` while EC2 has none yet.
    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error>;
    /// One page of DescribeSubnets by ids (empty: any) and filters (`tag:KEY`, `tag-key`,
    /// `vpc-id`, `availability-zone`, `subnet-id`, `default-for-az`). An unknown id fails the
    /// whole call with `InvalidSubnetID.NotFound`.
    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error>;
    /// One page of DescribeInstanceTypeOfferings by availability zone: which zones of the region
    /// offer each of `instance_types` (empty: every type). A type absent from a zone's rows is
    /// not offered there, and RunInstances placed in that zone answers `Unsupported`.
    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error>;
    /// SSM's GetParameter: the value of the parameter `name` in the region, e.g. the AMI id
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64` holds today. An
    /// unknown name answers `ParameterNotFound`; throttling answers `ThrottlingException`.
    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error>;
}

/// The paginated Describe calls with every page followed, unpaced (see [`all_pages`]): for
/// tests, tools and the simulator's own checks. Backend code uses `Pacer::pages` instead.
#[async_trait]
pub trait Ec2PortExt: Ec2Port {
    /// Every page of DescribeInstances.
    async fn describe_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<InstanceInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstances, !instance_ids.is_empty());
        all_pages(first, |page| self.describe_instances_page(region, &instance_ids, &filters, page)).await
    }

    /// Every page of DescribeSecurityGroups.
    async fn describe_security_groups(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<SecurityGroupInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeSecurityGroups, !group_ids.is_empty());
        all_pages(first, |page| self.describe_security_groups_page(region, group_ids.clone(), filters.clone(), page))
            .await
    }

    /// Every page of DescribeInstanceTypes.
    async fn describe_instance_types(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstanceTypes, false);
        all_pages(first, |page| self.describe_instance_types_page(region, families.clone(), page)).await
    }

    /// Every page of DescribeSubnets.
    async fn describe_subnets(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<SubnetInfo>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeSubnets, !subnet_ids.is_empty());
        all_pages(first, |page| self.describe_subnets_page(region, subnet_ids.clone(), filters.clone(), page)).await
    }

    /// Every page of DescribeInstanceTypeOfferings.
    async fn describe_instance_type_offerings(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
    ) -> Result<Vec<InstanceTypeOffering>, Ec2Error> {
        let first = PageRequest::listing(Operation::DescribeInstanceTypeOfferings, false);
        all_pages(first, |page| self.describe_instance_type_offerings_page(region, instance_types.clone(), page)).await
    }
}

impl<P: Ec2Port + ?Sized> Ec2PortExt for P {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_windows_cover_whole_five_minute_periods() {
        assert_eq!(metric_window(301_000, 599_000), (300_000, 600_000));
        assert_eq!(metric_window(300_000, 300_001), (300_000, 600_000));
        assert_eq!(metric_window(300_000, 300_000), (300_000, 600_000), "never empty");
        assert_eq!(metric_window(0, 900_000), (0, 900_000));
        assert_eq!(metric_window(899_999, 900_001), (600_000, 1_200_000));
    }

    #[test]
    fn cloudwatch_throttling_is_a_throttle_with_its_own_quota() {
        let err = Ec2Error::new(Operation::GetNetworkUsage, codes::THROTTLING, "Rate exceeded");
        assert!(err.is_throttle() && err.is_transient());
        let class = Operation::GetNetworkUsage.throttle_class();
        assert_eq!((class, class.capacity(), class.refill_per_s()), (ThrottleClass::GetMetricData, 50, 50));
        assert!(!ThrottleClass::ALL.contains(&class), "not one of EC2's buckets");
    }

    #[test]
    fn ssm_throttling_is_a_throttle_with_parameter_stores_quota() {
        let err = Ec2Error::new(Operation::GetParameter, codes::THROTTLING_EXCEPTION, "Rate exceeded");
        assert!(err.is_throttle() && err.is_transient());
        assert!(Ec2Error::new(Operation::GetParameter, codes::INTERNAL_SERVER_ERROR, "").is_transient());
        assert!(!Ec2Error::new(Operation::GetParameter, codes::PARAMETER_NOT_FOUND, "").is_transient());
        let class = Operation::GetParameter.throttle_class();
        assert_eq!((class, class.capacity(), class.refill_per_s()), (ThrottleClass::GetParameter, 40, 40));
        assert!(!ThrottleClass::ALL.contains(&class), "not one of EC2's buckets");
        assert_eq!(Operation::ALL[Operation::GetParameter.index()], Operation::GetParameter);
    }

    #[test]
    fn architectures_have_ec2s_names() {
        assert_eq!(Architecture::from_name("arm64"), Some(Architecture::Arm64));
        assert_eq!(Architecture::from_name("x86_64"), Some(Architecture::X86_64));
        assert_eq!(Architecture::from_name("i386"), None);
        assert_eq!(Architecture::Arm64.to_string(), "arm64");
    }
}
