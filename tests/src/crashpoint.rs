//! A port that "crashes" the backend at a chosen EC2 call: the call's effect happens (or not),
//! and its answer never comes back. Dropping the backend then is a crash at that await point,
//! the way a process dies between sending a request and recording its result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
};
use backend_api::RegionLabel;

/// Where the crash happens.
#[derive(Clone, Copy, Debug)]
pub enum CrashPoint {
    /// At the n-th call (0-based) of any operation.
    Call(u64),
    /// At the first call of this operation.
    Operation(Operation),
    /// After the first call of this operation that succeeds, whatever `effect_first` says: a
    /// crash known to follow the call's effect (a call EC2 refused had none).
    Effect(Operation),
}

/// Forwards to `inner` until the crash point, whose call hangs forever, after its effect when
/// `effect_first` is set.
pub struct CrashingPort {
    inner: Arc<dyn Ec2Port>,
    crash_at: CrashPoint,
    effect_first: bool,
    calls: AtomicU64,
    armed: AtomicBool,
    crashed: AtomicBool,
}

impl CrashingPort {
    /// A port that crashes at the `crash_at`-th call (0-based).
    pub fn new(inner: Arc<dyn Ec2Port>, crash_at: CrashPoint, effect_first: bool) -> Self {
        Self {
            inner,
            crash_at,
            effect_first,
            calls: AtomicU64::new(0),
            armed: AtomicBool::new(true),
            crashed: AtomicBool::new(false),
        }
    }

    /// A port that forwards everything until [`CrashingPort::arm`] is called (so that a backend
    /// can be built over it first); calls are counted from then on.
    pub fn disarmed(inner: Arc<dyn Ec2Port>, crash_at: CrashPoint, effect_first: bool) -> Self {
        let port = Self::new(inner, crash_at, effect_first);
        port.armed.store(false, Ordering::SeqCst);
        port
    }

    /// Starts counting calls towards the crash point.
    pub fn arm(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Calls counted since the port was armed.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    async fn gate<T, F>(&self, op: Operation, call: F) -> Result<T, Ec2Error>
    where
        F: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        if !self.armed.load(Ordering::SeqCst) {
            return call.await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let hit = match self.crash_at {
            CrashPoint::Call(at) => n == at,
            CrashPoint::Operation(at) => at == op && !self.crashed(),
            CrashPoint::Effect(at) => {
                if at != op || self.crashed() {
                    return call.await;
                }
                // A refused call had no effect: the crash waits for one that has.
                call.await?;
                self.crashed.store(true, Ordering::SeqCst);
                return std::future::pending().await;
            }
        };
        if !hit || self.crashed() {
            return call.await;
        }
        self.crashed.store(true, Ordering::SeqCst);
        if self.effect_first {
            let _ = call.await;
        }
        std::future::pending().await
    }
}

#[async_trait]
impl Ec2Port for CrashingPort {
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        self.gate(Operation::ImportKeyPair, self.inner.import_key_pair(region, req)).await
    }
    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        self.gate(Operation::DescribeKeyPairs, self.inner.describe_key_pairs(region, filters)).await
    }
    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        self.gate(Operation::DeleteKeyPair, self.inner.delete_key_pair(region, key_name)).await
    }
    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        self.gate(Operation::CreateSecurityGroup, self.inner.create_security_group(region, req)).await
    }
    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
        self.gate(Operation::AuthorizeSecurityGroupIngress, self.inner.authorize_ingress(region, req)).await
    }
    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        self.gate(
            Operation::DescribeSecurityGroups,
            self.inner.describe_security_groups_page(region, group_ids, filters, page),
        )
        .await
    }
    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        self.gate(Operation::DeleteSecurityGroup, self.inner.delete_security_group(region, group_id)).await
    }
    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
        self.gate(Operation::RunInstances, self.inner.run_instance(region, req)).await
    }
    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        self.gate(Operation::DescribeInstances, self.inner.describe_instances_page(region, instance_ids, filters, page))
            .await
    }
    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        self.gate(Operation::TerminateInstances, self.inner.terminate_instances(region, instance_ids)).await
    }
    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        self.gate(Operation::DescribeInstanceTypes, self.inner.describe_instance_types_page(region, families, page))
            .await
    }
    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error> {
        self.gate(Operation::CreateTags, self.inner.create_tags(region, resource_ids, tags)).await
    }
    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        self.gate(
            Operation::GetNetworkUsage,
            self.inner.network_usage(region, instance_ids, start_unix_ms, end_unix_ms),
        )
        .await
    }

    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        self.gate(Operation::GetConsoleOutput, self.inner.get_console_output(region, instance_id)).await
    }
    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        self.gate(Operation::DescribeSubnets, self.inner.describe_subnets_page(region, subnet_ids, filters, page)).await
    }
    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        self.gate(
            Operation::DescribeInstanceTypeOfferings,
            self.inner.describe_instance_type_offerings_page(region, instance_types, page),
        )
        .await
    }
    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        self.gate(Operation::GetParameter, self.inner.get_parameter(region, name)).await
    }
}
