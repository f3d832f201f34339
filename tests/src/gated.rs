//! A port that forwards every call to another through a [`Gate`], which may note it, hold it or
//! never let its answer come back: the simulation's crash points and replica processes are
//! gates over `SimEc2`.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
};
use backend_api::RegionLabel;

/// What happens around each call of a [`GatedPort`].
pub trait Gate: Send + Sync + 'static {
    /// Runs `call`, a call of `op` to the inner port (or not), and answers for it.
    fn pass<T: Send>(
        &self,
        op: Operation,
        call: impl Future<Output = Result<T, Ec2Error>> + Send,
    ) -> impl Future<Output = Result<T, Ec2Error>> + Send;

    /// Sees each call that creates something, before it is passed on (default: nothing).
    fn creating(&self, _region: &RegionLabel, _call: Creating<'_>) {}

    /// Sees the first page of each DescribeInstances listing (no instance ids), once it is
    /// answered: `ok` when EC2 answered it (default: nothing).
    fn listed(&self, _region: &RegionLabel, _filters: &[Filter], _ok: bool) {}
}

/// A call that creates something, as its request names it.
#[derive(Clone, Copy, Debug)]
pub enum Creating<'a> {
    /// ImportKeyPair.
    KeyPair(&'a ImportKeyPairRequest),
    /// CreateSecurityGroup.
    SecurityGroup(&'a CreateSecurityGroupRequest),
    /// RunInstances.
    Instance(&'a RunInstancesRequest),
}

/// `inner` behind `gate`.
pub struct GatedPort<G> {
    inner: Arc<dyn Ec2Port>,
    gate: G,
}

impl<G: Gate> GatedPort<G> {
    /// `inner` behind `gate`.
    pub fn with_gate(inner: Arc<dyn Ec2Port>, gate: G) -> Self {
        Self { inner, gate }
    }

    /// The gate.
    pub fn gate(&self) -> &G {
        &self.gate
    }
}

#[async_trait]
impl<G: Gate> Ec2Port for GatedPort<G> {
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        self.gate.creating(region, Creating::KeyPair(&req));
        self.gate.pass(Operation::ImportKeyPair, self.inner.import_key_pair(region, req)).await
    }

    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        self.gate.pass(Operation::DescribeKeyPairs, self.inner.describe_key_pairs(region, filters)).await
    }

    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        self.gate.pass(Operation::DeleteKeyPair, self.inner.delete_key_pair(region, key_name)).await
    }

    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        self.gate.creating(region, Creating::SecurityGroup(&req));
        self.gate.pass(Operation::CreateSecurityGroup, self.inner.create_security_group(region, req)).await
    }

    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
        self.gate.pass(Operation::AuthorizeSecurityGroupIngress, self.inner.authorize_ingress(region, req)).await
    }

    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        self.gate
            .pass(
                Operation::DescribeSecurityGroups,
                self.inner.describe_security_groups_page(region, group_ids, filters, page),
            )
            .await
    }

    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        self.gate.pass(Operation::DeleteSecurityGroup, self.inner.delete_security_group(region, group_id)).await
    }

    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
        self.gate.creating(region, Creating::Instance(&req));
        self.gate.pass(Operation::RunInstances, self.inner.run_instance(region, req)).await
    }

    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        filters: &[Filter],
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        let listing = (instance_ids.is_empty() && page.next_token.is_none()).then(|| filters.to_vec());
        let answer = self
            .gate
            .pass(Operation::DescribeInstances, self.inner.describe_instances_page(region, instance_ids, filters, page))
            .await;
        if let Some(filters) = listing {
            self.gate.listed(region, &filters, answer.is_ok());
        }
        answer
    }

    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        self.gate.pass(Operation::TerminateInstances, self.inner.terminate_instances(region, instance_ids)).await
    }

    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        self.gate
            .pass(Operation::DescribeInstanceTypes, self.inner.describe_instance_types_page(region, families, page))
            .await
    }

    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error> {
        self.gate.pass(Operation::CreateTags, self.inner.create_tags(region, resource_ids, tags)).await
    }

    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        self.gate
            .pass(
                Operation::GetNetworkUsage,
                self.inner.network_usage(region, instance_ids, start_unix_ms, end_unix_ms),
            )
            .await
    }

    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        self.gate.pass(Operation::GetConsoleOutput, self.inner.get_console_output(region, instance_id)).await
    }

    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        self.gate
            .pass(Operation::DescribeSubnets, self.inner.describe_subnets_page(region, subnet_ids, filters, page))
            .await
    }

    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        self.gate
            .pass(
                Operation::DescribeInstanceTypeOfferings,
                self.inner.describe_instance_type_offerings_page(region, instance_types, page),
            )
            .await
    }

    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        self.gate.pass(Operation::GetParameter, self.inner.get_parameter(region, name)).await
    }
}
