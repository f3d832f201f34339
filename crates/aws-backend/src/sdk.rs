//! The EC2 port over the real AWS SDK (aws-sdk-ec2, aws-sdk-cloudwatch and aws-sdk-ssm), and the
//! lease table of a ledger in DynamoDB ([`DynamoLeases`], over `ledger-dynamodb`).
//!
//! [`SdkEc2`] keeps one set of clients per allowed region, built on first use. The SDK's own
//! retries are off: the backend's pacer retries with full jitter and keeps its own token buckets,
//! and two retry loops stacked on each other would multiply the calls a throttled account sees.
//! SDK types stay inside this module; its `convert` submodule maps them to the port's types.

mod convert;
mod inspect;
mod leases;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatch::types as cw;
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;
use tokio::sync::RwLock;

use crate::config::AwsBootConfig;
use crate::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Ec2Port, Filter, ImportKeyPairRequest, InstanceInfo,
    InstanceStateChange, InstanceTypeInfo, InstanceTypeOffering, KeyPairInfo, NetworkUsage, Operation, Page,
    PageRequest, RunInstancesRequest, SecurityGroupInfo, SubnetInfo, Tags, codes,
};

pub use inspect::SdkInspector;
pub use leases::DynamoLeases;

/// The code of the error for a region outside the configured allowlist.
pub const REGION_NOT_ALLOWED: &str = "RegionNotAllowed";

/// DescribeVolumes' page limit.
const DESCRIBE_VOLUMES_PAGE: i32 = 500;
/// GetMetricData's limit on queries per call; each instance takes two (in and out).
const METRIC_QUERIES_MAX: usize = 500;
/// The query's period, in seconds: the finest EC2's detailed monitoring publishes. The sum over
/// the window is the same with basic monitoring's 5-minute datapoints, each of which falls in
/// the minute its timestamp names (`port::metric_window` aligns windows to them).
const METRIC_PERIOD_S: i32 = 60;
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

/// A volume as DescribeVolumes returns it: enough to tell whether one was left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// EC2's id, `vol-...`.
    pub volume_id: String,
    /// EC2's state name: `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    /// Its tags.
    pub tags: Tags,
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

    async fn build_clients(&self, region: &RegionLabel) -> RegionClients {
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
        let shared = loader.load().await;
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

    /// DescribeVolumes with filters (e.g. `Filter::tag(OWNER_TAG, [owner])`), every page. Not
    /// part of the port: the backend never handles volumes itself (they go with their instance),
    /// but whoever checks that nothing was left behind must look at them.
    pub async fn describe_volumes(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> anyhow::Result<Vec<VolumeInfo>> {
        // The port has no DescribeVolumes operation; errors name it in their message.
        let operation = Operation::DescribeInstances;
        let client = self.ec2(region, operation).await?;
        let filters = convert::filters(filters);
        let mut volumes = Vec::new();
        let mut pages =
            client.describe_volumes().set_filters(filters).max_results(DESCRIBE_VOLUMES_PAGE).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| convert::error(operation, e))
                .map_err(|e| anyhow::anyhow!("DescribeVolumes in {region} failed with {}: {}", e.code, e.message))?;
            for v in page.volumes() {
                volumes.push(VolumeInfo {
                    volume_id: v.volume_id().unwrap_or_default().to_string(),
                    state: v.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                    tags: convert::tags(v.tags()),
                });
            }
        }
        Ok(volumes)
    }
}

#[async_trait]
impl Ec2Port for SdkEc2 {
    async fn import_key_pair(&self, region: &RegionLabel, req: ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        let op = Operation::ImportKeyPair;
        let out = self
            .ec2(region, op)
            .await?
            .import_key_pair()
            .key_name(&req.key_name)
            .public_key_material(Blob::new(req.public_key_openssh.into_bytes()))
            .set_tag_specifications(convert::tag_spec(ec2::ResourceType::KeyPair, &req.tags).map(|s| vec![s]))
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        Ok(KeyPairInfo {
            key_name: out.key_name().unwrap_or(&req.key_name).to_string(),
            key_pair_id: out.key_pair_id().unwrap_or_default().to_string(),
            tags: convert::tags(out.tags()),
            // ImportKeyPair does not say when; Describe does.
            create_time_unix_ms: 0,
        })
    }

    async fn describe_key_pairs(
        &self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        let op = Operation::DescribeKeyPairs;
        // DescribeKeyPairs is not paginated: it returns every match at once.
        let out = self
            .ec2(region, op)
            .await?
            .describe_key_pairs()
            .set_filters(convert::filters(filters))
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        out.key_pairs().iter().map(|k| convert::key_pair(op, k)).collect()
    }

    async fn delete_key_pair(&self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteKeyPair;
        self.ec2(region, op)
            .await?
            .delete_key_pair()
            .key_name(key_name)
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        Ok(())
    }

    async fn create_security_group(
        &self,
        region: &RegionLabel,
        req: CreateSecurityGroupRequest,
    ) -> Result<String, Ec2Error> {
        let op = Operation::CreateSecurityGroup;
        let out = self
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

    async fn authorize_ingress(&self, region: &RegionLabel, req: AuthorizeIngressRequest) -> Result<(), Ec2Error> {
        let op = Operation::AuthorizeSecurityGroupIngress;
        let permission = ingress_permission(req.port, req.cidrs);
        self.ec2(region, op)
            .await?
            .authorize_security_group_ingress()
            .group_id(req.group_id)
            .ip_permissions(permission)
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        Ok(())
    }

    async fn describe_security_groups_page(
        &self,
        region: &RegionLabel,
        group_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SecurityGroupInfo>, Ec2Error> {
        let op = Operation::DescribeSecurityGroups;
        let ids = (!group_ids.is_empty()).then_some(group_ids);
        let out = self
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

    async fn delete_security_group(&self, region: &RegionLabel, group_id: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteSecurityGroup;
        self.ec2(region, op)
            .await?
            .delete_security_group()
            .group_id(group_id)
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        Ok(())
    }

    async fn run_instance(&self, region: &RegionLabel, req: RunInstancesRequest) -> Result<InstanceInfo, Ec2Error> {
        let op = Operation::RunInstances;
        let volume_gib = i32::try_from(req.root_volume_gib).map_err(|_| {
            Ec2Error::new(
                op,
                "InvalidParameterValue",
                format!("root volume of {} GiB is too large", req.root_volume_gib),
            )
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
            .http_tokens(if req.imdsv2_required {
                ec2::HttpTokensState::Required
            } else {
                ec2::HttpTokensState::Optional
            })
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
        let out = self
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

    async fn describe_instances_page(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<InstanceInfo>, Ec2Error> {
        let op = Operation::DescribeInstances;
        let ids = (!instance_ids.is_empty()).then_some(instance_ids);
        let out = self
            .ec2(region, op)
            .await?
            .describe_instances()
            .set_instance_ids(ids)
            .set_filters(convert::filters(filters))
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

    async fn terminate_instances(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
    ) -> Result<Vec<InstanceStateChange>, Ec2Error> {
        let op = Operation::TerminateInstances;
        let out = self
            .ec2(region, op)
            .await?
            .terminate_instances()
            .set_instance_ids(Some(instance_ids))
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        out.terminating_instances().iter().map(|c| convert::state_change(op, c)).collect()
    }

    async fn describe_instance_types_page(
        &self,
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
        let out = self
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

    async fn describe_subnets_page(
        &self,
        region: &RegionLabel,
        subnet_ids: Vec<String>,
        filters: Vec<Filter>,
        page: PageRequest,
    ) -> Result<Page<SubnetInfo>, Ec2Error> {
        let op = Operation::DescribeSubnets;
        let ids = (!subnet_ids.is_empty()).then_some(subnet_ids);
        let out = self
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

    async fn describe_instance_type_offerings_page(
        &self,
        region: &RegionLabel,
        instance_types: Vec<String>,
        page: PageRequest,
    ) -> Result<Page<InstanceTypeOffering>, Ec2Error> {
        let op = Operation::DescribeInstanceTypeOfferings;
        let filters = (!instance_types.is_empty())
            .then(|| vec![ec2::Filter::builder().name("instance-type").set_values(Some(instance_types)).build()]);
        let out = self
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

    async fn create_tags(&self, region: &RegionLabel, resource_ids: Vec<String>, tags: Tags) -> Result<(), Ec2Error> {
        let op = Operation::CreateTags;
        self.ec2(region, op)
            .await?
            .create_tags()
            .set_resources(Some(resource_ids))
            .set_tags(Some(convert::sdk_tags(&tags)))
            .send()
            .await
            .map_err(|e| convert::error(op, e))?;
        Ok(())
    }

    async fn network_usage(
        &self,
        region: &RegionLabel,
        instance_ids: Vec<String>,
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<Vec<NetworkUsage>, Ec2Error> {
        let op = Operation::GetNetworkUsage;
        if instance_ids.is_empty() || end_unix_ms <= start_unix_ms {
            return Ok(Vec::new());
        }
        let client = self.client_for(region, op).await?.cloudwatch.clone();
        // As the port says: StartTime and EndTime as given (the caller aligns them to periods).
        let (start, end) = (start_unix_ms, end_unix_ms);
        let mut usage: Vec<NetworkUsage> =
            instance_ids.iter().map(|id| NetworkUsage { instance_id: id.clone(), bytes_in: 0, bytes_out: 0 }).collect();
        // Query ids are `i<index>` (NetworkIn) and `o<index>` (NetworkOut), index into `usage`.
        for (chunk_no, chunk) in instance_ids.chunks(METRIC_QUERIES_MAX / 2).enumerate() {
            let base = chunk_no * (METRIC_QUERIES_MAX / 2);
            let queries: Vec<cw::MetricDataQuery> = chunk
                .iter()
                .enumerate()
                .flat_map(|(n, id)| {
                    [("i", "NetworkIn"), ("o", "NetworkOut")]
                        .map(|(prefix, metric)| network_query(prefix, base + n, metric, id))
                })
                .collect();
            let mut pages = client
                .get_metric_data()
                .start_time(convert::date_time(start))
                .end_time(convert::date_time(end))
                .set_metric_data_queries(Some(queries))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| convert::error(op, e))?;
                for result in page.metric_data_results() {
                    let Some((is_in, index)) = result.id().and_then(parse_query_id) else { continue };
                    let Some(entry) = usage.get_mut(index) else { continue };
                    let bytes = sum_bytes(result.values());
                    if is_in {
                        entry.bytes_in = entry.bytes_in.saturating_add(bytes);
                    } else {
                        entry.bytes_out = entry.bytes_out.saturating_add(bytes);
                    }
                }
            }
        }
        Ok(usage)
    }

    async fn get_parameter(&self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        let op = Operation::GetParameter;
        let client = self.client_for(region, op).await?.ssm.clone();
        let out = client.get_parameter().name(name).send().await.map_err(|e| convert::error(op, e))?;
        let value = out.parameter().and_then(|p| p.value()).filter(|v| !v.is_empty());
        value.map(str::to_string).ok_or_else(|| {
            Ec2Error::new(op, codes::PARAMETER_NOT_FOUND, format!("the parameter {name} answered no value"))
        })
    }

    async fn get_console_output(&self, region: &RegionLabel, instance_id: &str) -> Result<Option<String>, Ec2Error> {
        let op = Operation::GetConsoleOutput;
        let out = self
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
}

/// The rule letting TCP `port` in from `cidrs`: IPv4 ranges as `IpRanges` (`CidrIp`), IPv6 ones
/// (those holding a `:`) as `Ipv6Ranges` (`CidrIpv6`), since EC2 refuses an IPv6 range given as
/// `CidrIp` as malformed (aws/aws-cli#2428). An empty family is left out of the request.
fn ingress_permission(port: u16, cidrs: Vec<String>) -> ec2::IpPermission {
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

/// One GetMetricData query: the Sum of `metric` for `instance_id`, per minute.
fn network_query(prefix: &str, index: usize, metric: &str, instance_id: &str) -> cw::MetricDataQuery {
    let metric = cw::Metric::builder()
        .namespace("AWS/EC2")
        .metric_name(metric)
        .dimensions(cw::Dimension::builder().name("InstanceId").value(instance_id).build())
        .build();
    cw::MetricDataQuery::builder()
        .id(format!("{prefix}{index}"))
        .metric_stat(cw::MetricStat::builder().metric(metric).period(METRIC_PERIOD_S).stat("Sum").build())
        .return_data(true)
        .build()
}

/// Parses a query id of [`network_query`]: (is it NetworkIn, index).
fn parse_query_id(id: &str) -> Option<(bool, usize)> {
    let is_in = match id.as_bytes().first()? {
        b'i' => true,
        b'o' => false,
        _ => return None,
    };
    Some((is_in, id.get(1..)?.parse().ok()?))
}

/// The sum of CloudWatch's per-period byte counts, rounded, ignoring nonsense values.
fn sum_bytes(values: &[f64]) -> u64 {
    let total: f64 = values.iter().filter(|v| v.is_finite() && **v > 0.0).sum();
    // `as` saturates for floats, which is what we want for an absurd total.
    total.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_round_trip() {
        let q = network_query("o", 417, "NetworkOut", "i-1");
        assert_eq!(q.id(), Some("o417"));
        assert_eq!(parse_query_id("o417"), Some((false, 417)));
        assert_eq!(parse_query_id("i0"), Some((true, 0)));
        assert_eq!(parse_query_id("x1"), None);
        assert_eq!(parse_query_id("i"), None);
    }

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

    #[test]
    fn byte_sums_ignore_nonsense() {
        assert_eq!(sum_bytes(&[1.0, 2.4, f64::NAN, -3.0, f64::INFINITY]), 3);
        assert_eq!(sum_bytes(&[]), 0);
    }

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
