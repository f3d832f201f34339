//! The EC2 port over the real AWS SDK (aws-sdk-ec2, aws-sdk-cloudwatch and aws-sdk-ssm), and the
//! lease table of a ledger in DynamoDB ([`DynamoLeases`], over `ledger-dynamodb`).
//!
//! [`SdkEc2`] keeps one set of clients per allowed region, built on first use. The SDK's own
//! retries are off: the backend's pacer retries with full jitter and keeps its own token buckets,
//! and two retry loops stacked on each other would multiply the calls a throttled account sees.
//! SDK types stay inside this module; its `convert` submodule maps them to the port's types.
//!
//! This file holds [`SdkEc2`], its clients and its `Ec2Port` impl, which hands each call to the
//! file of its family: `key_pairs`, `security_groups`, `instances`, `catalogue` (instance types,
//! offerings, subnets), `metrics` (CloudWatch), `parameters` (SSM) and `volumes`.

mod catalogue;
mod convert;
mod inspect;
mod instances;
mod key_pairs;
mod leases;
mod metrics;
mod parameters;
mod preflight;
mod security_groups;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use backend_api::RegionLabel;
use tokio::sync::RwLock;

use crate::config::AwsBootConfig;
use crate::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags,
};

pub use inspect::SdkInspector;
pub use leases::DynamoLeases;
pub use volumes::VolumeInfo;

/// The code of the error for a region outside the configured allowlist.
pub const REGION_NOT_ALLOWED: &str = "RegionNotAllowed";

/// How long to wait for a TCP connection before calling it a transport failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt of one call may take in all.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One region's clients.
struct RegionClients {
    ec2: aws_sdk_ec2::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    ssm: aws_sdk_ssm::Client,
}

/// The EC2 port over the AWS SDK, with a per-region client cache.
pub struct SdkEc2 {
    /// The allowed regions; a call naming another is refused without reaching AWS.
    regions: BTreeSet<RegionLabel>,
    /// Static credentials, when the configuration gives them (the SDK's type redacts itself in
    /// `Debug`); the standard chain otherwise.
    credentials: Option<Credentials>,
    endpoint_url: Option<String>,
    cloudwatch_endpoint_url: Option<String>,
    ssm_endpoint_url: Option<String>,
    clients: RwLock<BTreeMap<RegionLabel, Arc<RegionClients>>>,
}

impl std::fmt::Debug for SdkEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkEc2")
            .field("regions", &self.regions)
            .field("static_credentials", &self.credentials.is_some())
            .field("endpoint_url", &self.endpoint_url)
            .field("cloudwatch_endpoint_url", &self.cloudwatch_endpoint_url)
            .field("ssm_endpoint_url", &self.ssm_endpoint_url)
            .finish_non_exhaustive()
    }
}

impl SdkEc2 {
    /// A port for the regions, credentials and endpoint of `cfg`, with the clients of every
    /// allowed region built up front (building one reads the environment and profile files,
    /// but makes no network call).
    pub async fn new(cfg: &AwsBootConfig) -> Self {
        let credentials = cfg.credentials.as_ref().map(|c| {
            // The only place the secret leaves its wrapper: into the SDK's signer.
            Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.expose().to_string(),
                c.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "compute-bridge-config",
            )
        });
        let port = Self {
            regions: cfg.regions.iter().cloned().collect(),
            credentials,
            endpoint_url: cfg.endpoint_url.clone(),
            cloudwatch_endpoint_url: cfg.cloudwatch_endpoint_url.clone(),
            ssm_endpoint_url: cfg.ssm_endpoint_url.clone(),
            clients: RwLock::new(BTreeMap::new()),
        };
        for region in &cfg.regions {
            let clients = Arc::new(port.build_clients(region).await);
            port.clients.write().await.insert(region.clone(), clients);
        }
        port
    }

    /// The SDK's configuration for `region`: credentials, endpoint, no retries, our timeouts.
    async fn shared_config(&self, region: &RegionLabel) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        // Without an override the SDK reads AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL itself.
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        loader.load().await
    }

    async fn build_clients(&self, region: &RegionLabel) -> RegionClients {
        let shared = self.shared_config(region).await;
        let mut cloudwatch = aws_sdk_cloudwatch::config::Builder::from(&shared);
        if let Some(url) = &self.cloudwatch_endpoint_url {
            cloudwatch = cloudwatch.endpoint_url(url.clone());
        }
        // SSM follows `endpoint_url` (moto serves it on the same port as EC2) unless
        // `ssm_endpoint_url` names its own; without either the SDK reads AWS_ENDPOINT_URL_SSM /
        // AWS_ENDPOINT_URL itself.
        let mut ssm = aws_sdk_ssm::config::Builder::from(&shared);
        if let Some(url) = &self.ssm_endpoint_url {
            ssm = ssm.endpoint_url(url.clone());
        }
        RegionClients {
            ec2: aws_sdk_ec2::Client::new(&shared),
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cloudwatch.build()),
            ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
        }
    }

    /// The region's clients, from the cache or built now; a region outside the allowlist is
    /// refused with [`REGION_NOT_ALLOWED`].
    async fn client_for(&self, region: &RegionLabel, operation: Operation) -> Result<Arc<RegionClients>, Ec2Error> {
        if !self.regions.contains(region) {
            let allowed: Vec<&str> = self.regions.iter().map(RegionLabel::as_str).collect();
            return Err(Ec2Error::new(
                operation,
                REGION_NOT_ALLOWED,
                format!("region {region} is not in the configured regions {allowed:?}: add it to `regions` to use it"),
            ));
        }
        if let Some(clients) = self.clients.read().await.get(region) {
            return Ok(clients.clone());
        }
        let built = Arc::new(self.build_clients(region).await);
        Ok(self.clients.write().await.entry(region.clone()).or_insert(built).clone())
    }

    async fn ec2(&self, region: &RegionLabel, operation: Operation) -> Result<aws_sdk_ec2::Client, Ec2Error> {
        Ok(self.client_for(region, operation).await?.ec2.clone())
    }
}

#[async_trait]
impl Ec2Port for SdkEc2 {
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        key_pairs::import_key_pair(self, region, req).await
    }

    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        key_pairs::describe_key_pairs(self, region, filters).await
    }

    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        key_pairs::delete_key_pair(self, region, key_name).await
    }

    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        security_groups::create_security_group(self, region, req).await
    }

    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
        security_groups::authorize_ingress(self, region, req).await
    }

    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        security_groups::describe_security_groups_page(self, region, group_ids, filters, page).await
    }

    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        security_groups::delete_security_group(self, region, group_id).await
    }

    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
        instances::run_instance(self, region, req).await
    }

    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        filters: &[Filter],
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        instances::describe_instances_page(self, region, instance_ids, filters, page).await
    }

    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        instances::terminate_instances(self, region, instance_ids).await
    }

    async fn describe_instance_types_page(
        &self,
        region: &RegionLabel,
        families: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeInfo>, Ec2Error> {
        catalogue::describe_instance_types_page(self, region, families, page).await
    }

    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        catalogue::describe_subnets_page(self, region, subnet_ids, filters, page).await
    }

    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        catalogue::describe_instance_type_offerings_page(self, region, instance_types, page).await
    }

    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error> {
        instances::create_tags(self, region, resource_ids, tags).await
    }

    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: &[String],
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        metrics::network_usage(self, region, instance_ids, start_unix_ms, end_unix_ms).await
    }

    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        parameters::get_parameter(self, region, name).await
    }

    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        instances::get_console_output(self, region, instance_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn regions_outside_the_allowlist_are_refused_without_a_call() {
        let cfg = crate::AwsBootConfig::from_toml(
            r#"
            regions = ["us-east-1"]
            instance_families = ["m6i"]
            owner = "unit"
            ami = { us-east-1 = "ami-12345678" }
            endpoint_url = "http://127.0.0.1:9"
            ledger_path = "/nonexistent/ledger"
            almanac = { epoch_unix_ms = 0, tick_ms = 1000 }
            credentials = { access_key_id = "AKID", secret_access_key = "not-a-real-secret" }
            guest = { content_store_url = "http://127.0.0.1:9/blobs/{hash}" }
            "#,
        )
        .expect("valid config");
        let port = SdkEc2::new(&cfg).await;
        let printed = format!("{port:?}");
        assert!(!printed.contains("not-a-real-secret"), "{printed}");
        let region = RegionLabel::new("eu-north-1").expect("label");
        let err = port.describe_key_pairs(&region, Vec::new()).await.expect_err("refused");
        assert_eq!(err.code, REGION_NOT_ALLOWED);
        assert_eq!(err.operation, Operation::DescribeKeyPairs);
        assert!(err.message.contains("us-east-1"), "{err}");
    }
}
