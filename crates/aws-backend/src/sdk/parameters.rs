//! Parameter Store over the SDK: GetParameter, which reads an AMI alias as an id.

use backend_api::RegionLabel;

use super::{SdkEc2, convert};
use crate::port::{Ec2Error, Operation, codes};

pub(super) async fn get_parameter(port: &SdkEc2, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
    let op = Operation::GetParameter;
    let client = port.client_for(region, op).await?.ssm.clone();
    let out = client.get_parameter().name(name).send().await.map_err(|e| convert::error(op, e))?;
    let value = out.parameter().and_then(|p| p.value()).filter(|v| !v.is_empty());
    value
        .map(str::to_string)
        .ok_or_else(|| Ec2Error::new(op, codes::PARAMETER_NOT_FOUND, format!("the parameter {name} answered no value")))
}
