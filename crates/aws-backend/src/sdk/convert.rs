//! Maps AWS SDK shapes and errors to the port's own types, and back. Nothing outside `sdk`
//! sees an SDK type: this is where they stop.

use std::sync::Arc;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types as ec2;
use smol_str::SmolStr;

use crate::port::{
    Architecture, Ec2Error, Filter, InstanceInfo, InstanceState, InstanceStateChange, InstanceTypeInfo,
    InstanceTypeOffering, KeyPairInfo, Operation, SecurityGroupInfo, SubnetInfo, Tags,
};

/// The code of an answer we could not make sense of (a field EC2 always sends was missing).
pub(super) const UNEXPECTED_RESPONSE: &str = "UnexpectedResponse";

/// Maps an SDK error (EC2's, CloudWatch's or SSM's: all use the same smithy error types) to ours:
/// the service's own code when it sent one, `Transport` when the request never got an answer,
/// and `Http<status>` when only the status is known.
pub(super) fn error<E>(operation: Operation, err: SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let message = service.err().message().map_or_else(|| service.err().to_string(), str::to_string);
            match service.err().code() {
                Some(code) => Ec2Error::new(operation, code, message),
                None => Ec2Error::new(operation, format!("Http{status}"), message),
            }
        }
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            Ec2Error::new(operation, format!("Http{status}"), DisplayErrorContext(&err).to_string())
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            Ec2Error::new(operation, "Transport", DisplayErrorContext(&err).to_string())
        }
        // A request the SDK refused to build is our bug or our configuration, never transient.
        SdkError::ConstructionFailure(_) => {
            Ec2Error::new(operation, "RequestConstruction", DisplayErrorContext(&err).to_string())
        }
        _ => Ec2Error::new(operation, "Unknown", DisplayErrorContext(&err).to_string()),
    }
}

/// An answer missing something EC2 always sends.
pub(super) fn unexpected(operation: Operation, what: impl std::fmt::Display) -> Ec2Error {
    Ec2Error::new(operation, UNEXPECTED_RESPONSE, format!("the response has no {what}"))
}

/// A timestamp as unix milliseconds; 0 when absent (or, impossibly, before 1970).
pub(super) fn unix_ms(time: Option<&DateTime>) -> u64 {
    time.and_then(|t| t.to_millis().ok()).and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0)
}

/// Unix milliseconds as an SDK timestamp.
pub(super) fn date_time(unix_ms: u64) -> DateTime {
    DateTime::from_millis(i64::try_from(unix_ms).unwrap_or(i64::MAX))
}

/// EC2 tags as our map; tags without a key are dropped.
pub(super) fn tags(tags: &[ec2::Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
}

/// Our tags as EC2's list.
pub(super) fn sdk_tags(tags: &Tags) -> Vec<ec2::Tag> {
    tags.iter().map(|(k, v)| ec2::Tag::builder().key(k).value(v).build()).collect()
}

/// A TagSpecification for `resource`, or none when there are no tags (EC2 refuses an empty one).
pub(super) fn tag_spec(resource: ec2::ResourceType, tags: &Tags) -> Option<ec2::TagSpecification> {
    (!tags.is_empty())
        .then(|| ec2::TagSpecification::builder().resource_type(resource).set_tags(Some(sdk_tags(tags))).build())
}

/// Our filters as EC2's; `None` for no filters, so the request carries none.
/// `MaxResults` as the SDK takes it (EC2's bounds are far below `i32::MAX`).
pub(super) fn max_results(max: u32) -> i32 {
    i32::try_from(max).unwrap_or(i32::MAX)
}

pub(super) fn filters(filters: Vec<Filter>) -> Option<Vec<ec2::Filter>> {
    (!filters.is_empty()).then(|| {
        filters.into_iter().map(|f| ec2::Filter::builder().name(f.name).set_values(Some(f.values)).build()).collect()
    })
}

/// An EC2 state object as ours.
pub(super) fn state(operation: Operation, state: Option<&ec2::InstanceState>) -> Result<InstanceState, Ec2Error> {
    let name = state.and_then(|s| s.name()).ok_or_else(|| unexpected(operation, "instance state"))?;
    InstanceState::from_name(name.as_str()).ok_or_else(|| {
        Ec2Error::new(operation, UNEXPECTED_RESPONSE, format!("unknown instance state {:?}", name.as_str()))
    })
}

/// An EC2 instance as ours.
pub(super) fn instance(operation: Operation, i: &ec2::Instance) -> Result<InstanceInfo, Ec2Error> {
    let instance_id = i.instance_id().ok_or_else(|| unexpected(operation, "instance id"))?.into();
    Ok(InstanceInfo {
        state: state(operation, i.state())?,
        instance_type: i.instance_type().map(|t| t.as_str().into()).unwrap_or_default(),
        state_reason_code: i.state_reason().and_then(|r| r.code()).map(SmolStr::from),
        public_dns_name: i.public_dns_name().unwrap_or_default().into(),
        launch_time_unix_ms: unix_ms(i.launch_time()),
        tags: Arc::new(tags(i.tags())),
        client_token: i.client_token().unwrap_or_default().into(),
        availability_zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().into(),
        instance_id,
    })
}

/// A described subnet as ours.
pub(super) fn subnet(operation: Operation, s: &ec2::Subnet) -> Result<SubnetInfo, Ec2Error> {
    Ok(SubnetInfo {
        subnet_id: s.subnet_id().ok_or_else(|| unexpected(operation, "subnet id"))?.to_string(),
        vpc_id: s.vpc_id().ok_or_else(|| unexpected(operation, "vpc id"))?.to_string(),
        availability_zone: s.availability_zone().ok_or_else(|| unexpected(operation, "availability zone"))?.to_string(),
        default_for_az: s.default_for_az().unwrap_or(false),
        tags: tags(s.tags()),
    })
}

/// A TerminateInstances change as ours.
pub(super) fn state_change(
    operation: Operation,
    c: &ec2::InstanceStateChange,
) -> Result<InstanceStateChange, Ec2Error> {
    Ok(InstanceStateChange {
        instance_id: c.instance_id().ok_or_else(|| unexpected(operation, "instance id"))?.to_string(),
        previous_state: state(operation, c.previous_state())?,
        current_state: state(operation, c.current_state())?,
    })
}

/// A described key pair as ours.
pub(super) fn key_pair(operation: Operation, k: &ec2::KeyPairInfo) -> Result<KeyPairInfo, Ec2Error> {
    Ok(KeyPairInfo {
        key_name: k.key_name().ok_or_else(|| unexpected(operation, "key name"))?.to_string(),
        key_pair_id: k.key_pair_id().unwrap_or_default().to_string(),
        tags: tags(k.tags()),
        create_time_unix_ms: unix_ms(k.create_time()),
    })
}

/// A described security group as ours.
pub(super) fn security_group(operation: Operation, g: &ec2::SecurityGroup) -> Result<SecurityGroupInfo, Ec2Error> {
    Ok(SecurityGroupInfo {
        group_id: g.group_id().ok_or_else(|| unexpected(operation, "group id"))?.to_string(),
        group_name: g.group_name().unwrap_or_default().to_string(),
        tags: tags(g.tags()),
    })
}

/// A described instance type as ours; `None` for a type without a vCPU count or memory size,
/// or without an architecture the backend launches (`ProcessorInfo.SupportedArchitectures`:
/// x86_64 types also list `i386`, which is never chosen; Mac types list only `x86_64_mac` or
/// `arm64_mac`, which need dedicated hosts).
pub(super) fn instance_type(t: &ec2::InstanceTypeInfo) -> Option<InstanceTypeInfo> {
    let vcpus = u32::try_from(t.v_cpu_info()?.default_v_cpus()?).ok()?;
    let memory_mib = u64::try_from(t.memory_info()?.size_in_mib()?).ok()?;
    let supported = t.processor_info()?.supported_architectures();
    let architecture =
        Architecture::ALL.into_iter().find(|ours| supported.iter().any(|theirs| theirs.as_str() == ours.as_str()))?;
    Some(InstanceTypeInfo { instance_type: t.instance_type()?.as_str().to_string(), vcpus, memory_mib, architecture })
}

/// One DescribeInstanceTypeOfferings row by availability zone; `None` without a type or zone.
pub(super) fn offering(o: &ec2::InstanceTypeOffering) -> Option<InstanceTypeOffering> {
    Some(InstanceTypeOffering {
        instance_type: o.instance_type()?.as_str().to_string(),
        availability_zone: o.location()?.to_string(),
    })
}

/// Our shutdown behaviour as EC2's.
pub(super) fn shutdown_behavior(behavior: crate::port::ShutdownBehavior) -> ec2::ShutdownBehavior {
    match behavior {
        crate::port::ShutdownBehavior::Stop => ec2::ShutdownBehavior::Stop,
        crate::port::ShutdownBehavior::Terminate => ec2::ShutdownBehavior::Terminate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_convert_with_state_time_and_tags() {
        let sdk = ec2::Instance::builder()
            .instance_id("i-0123")
            .instance_type(ec2::InstanceType::M6iLarge)
            .state(ec2::InstanceState::builder().name(ec2::InstanceStateName::ShuttingDown).build())
            .state_reason(ec2::StateReason::builder().code("Client.InstanceInitiatedShutdown").build())
            .launch_time(DateTime::from_millis(1_700_000_000_123))
            .tags(ec2::Tag::builder().key("k").value("v").build())
            .client_token("tok")
            .build();
        let ours = instance(Operation::DescribeInstances, &sdk).expect("converts");
        assert_eq!(ours.instance_id, "i-0123");
        assert_eq!(ours.instance_type, "m6i.large");
        assert_eq!(ours.state, InstanceState::ShuttingDown);
        assert_eq!(ours.state_reason_code.as_deref(), Some("Client.InstanceInitiatedShutdown"));
        assert_eq!(ours.launch_time_unix_ms, 1_700_000_000_123);
        assert_eq!(ours.tags.get("k").map(String::as_str), Some("v"));
        assert_eq!(ours.client_token, "tok");
        assert_eq!(ours.public_dns_name, "");
    }

    #[test]
    fn an_instance_without_a_state_is_an_unexpected_response() {
        let sdk = ec2::Instance::builder().instance_id("i-1").build();
        let err = instance(Operation::DescribeInstances, &sdk).expect_err("no state");
        assert_eq!(err.code, UNEXPECTED_RESPONSE);
        assert!(!err.is_transient());
    }

    #[test]
    fn empty_tags_and_filters_are_left_out() {
        assert!(tag_spec(ec2::ResourceType::Instance, &Tags::new()).is_none());
        assert!(filters(Vec::new()).is_none());
        let spec = tag_spec(ec2::ResourceType::Volume, &Tags::from([("a".into(), "b".into())])).expect("spec");
        assert_eq!(spec.resource_type(), Some(&ec2::ResourceType::Volume));
        assert_eq!(spec.tags().len(), 1);
    }

    #[test]
    fn offerings_need_a_type_and_a_zone() {
        let full = ec2::InstanceTypeOffering::builder()
            .instance_type(ec2::InstanceType::M6iLarge)
            .location_type(ec2::LocationType::AvailabilityZone)
            .location("us-east-1b")
            .build();
        assert_eq!(
            offering(&full),
            Some(InstanceTypeOffering { instance_type: "m6i.large".into(), availability_zone: "us-east-1b".into() })
        );
        let partial = ec2::InstanceTypeOffering::builder().instance_type(ec2::InstanceType::M6iLarge).build();
        assert_eq!(offering(&partial), None);
    }

    #[test]
    fn instance_types_need_vcpus_and_memory() {
        let processor = |archs: &[ec2::ArchitectureType]| {
            ec2::ProcessorInfo::builder().set_supported_architectures(Some(archs.to_vec())).build()
        };
        let full = ec2::InstanceTypeInfo::builder()
            .instance_type(ec2::InstanceType::M6iXlarge)
            .v_cpu_info(ec2::VCpuInfo::builder().default_v_cpus(4).build())
            .memory_info(ec2::MemoryInfo::builder().size_in_mib(16_384).build())
            .processor_info(processor(&[ec2::ArchitectureType::I386, ec2::ArchitectureType::X8664]))
            .build();
        assert_eq!(
            instance_type(&full),
            Some(InstanceTypeInfo {
                instance_type: "m6i.xlarge".into(),
                vcpus: 4,
                memory_mib: 16_384,
                architecture: Architecture::X86_64
            })
        );
        let graviton = ec2::InstanceTypeInfo::builder()
            .instance_type(ec2::InstanceType::M7gLarge)
            .v_cpu_info(ec2::VCpuInfo::builder().default_v_cpus(2).build())
            .memory_info(ec2::MemoryInfo::builder().size_in_mib(8_192).build())
            .processor_info(processor(&[ec2::ArchitectureType::Arm64]))
            .build();
        assert_eq!(instance_type(&graviton).map(|t| t.architecture), Some(Architecture::Arm64));
        let mac = ec2::InstanceTypeInfo::builder()
            .instance_type(ec2::InstanceType::Mac2Metal)
            .v_cpu_info(ec2::VCpuInfo::builder().default_v_cpus(12).build())
            .memory_info(ec2::MemoryInfo::builder().size_in_mib(16_384).build())
            .processor_info(processor(&[ec2::ArchitectureType::Arm64Mac]))
            .build();
        assert_eq!(instance_type(&mac), None, "Mac types need dedicated hosts");
        let partial = ec2::InstanceTypeInfo::builder().instance_type(ec2::InstanceType::M6iXlarge).build();
        assert_eq!(instance_type(&partial), None);
    }

    #[test]
    fn times_before_the_epoch_or_absent_are_zero() {
        assert_eq!(unix_ms(None), 0);
        assert_eq!(unix_ms(Some(&DateTime::from_millis(-5))), 0);
        assert_eq!(unix_ms(Some(&date_time(42))), 42);
    }
}
