//! Key pairs over the SDK: ImportKeyPair, DescribeKeyPairs and DeleteKeyPair.

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types as ec2;
use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{Ec2Error, Filter, ImportKeyPairRequest, KeyPairInfo, Operation};

pub(super) async fn import_key_pair(
    port: &SdkEc2,
    region: &RegionLabel,
    req: ImportKeyPairRequest,
) -> Result<KeyPairInfo, Ec2Error> {
    let op = Operation::ImportKeyPair;
    let out = port
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

pub(super) async fn describe_key_pairs(
    port: &SdkEc2,
    region: &RegionLabel,
    filters: Vec<Filter>,
) -> Result<Vec<KeyPairInfo>, Ec2Error> {
    let op = Operation::DescribeKeyPairs;
    // DescribeKeyPairs is not paginated: it returns every match at once.
    let out = port
        .ec2(region, op)
        .await?
        .describe_key_pairs()
        .set_filters(convert::filters(filters))
        .send()
        .await
        .map_err(|e| convert::error(op, e))?;
    out.key_pairs().iter().map(|k| convert::key_pair(op, k)).collect()
}

pub(super) async fn delete_key_pair(port: &SdkEc2, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
    let op = Operation::DeleteKeyPair;
    port.ec2(region, op).await?.delete_key_pair().key_name(key_name).send().await.map_err(|e| convert::error(op, e))?;
    Ok(())
}
