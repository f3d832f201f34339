//! Simulated SSM Parameter Store, for the public AMI aliases: GetParameter answers the AMI id
//! a parameter such as `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`
//! holds in a region, behind Parameter Store's own throughput quota.
//!
//! - **Parameters.** Per region, name to value ([`SimConfig::public_parameters`](crate::SimConfig),
//!   or the defaults of `crate::ssm`). An unknown name answers `ParameterNotFound`
//!   ("GetParameter", AWS Systems Manager API Reference, Errors).
//! - **Republishing.** `SimEc2::publish_image` puts a new AMI under an alias, as AWS does with
//!   every Amazon Linux release ("Query for the latest Amazon Linux AMI IDs using AWS Systems
//!   Manager Parameter Store", AWS Compute Blog: the parameters are updated when a new AMI is
//!   released); the next GetParameter answers the new id.
//! - **Quota.** GetParameter has its own bucket per region, 40 requests refilling 40 a second
//!   (Parameter Store's standard throughput, "AWS Systems Manager endpoints and quotas"), apart
//!   from EC2's; an empty bucket answers `ThrottlingException`. Server errors answer SSM's
//!   `InternalServerError`; an outage of the region answers it too. EC2's
//!   `throttle_probability` does not apply.

use aws_backend::port::{Ec2Error, Operation, codes};
use backend_api::RegionLabel;

use super::{About, World, err};
use crate::audit::op_tag;

impl World {
    /// Everything before a GetParameter reaches the parameters: region, outage, targeted
    /// faults, Parameter Store's bucket, random server errors.
    pub(super) fn ssm_gate(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
    ) -> Result<usize, Ec2Error> {
        let now = self.now_ms;
        let r = self.gate_common(op, region, about, codes::INTERNAL_SERVER_ERROR)?;
        let bucket = &mut self.regions[r].buckets[op.index()];
        if !bucket.has_token(now) {
            self.bucket_throttles.push((now, region.clone(), op));
            return Err(err(op, codes::THROTTLING_EXCEPTION, "Rate exceeded"));
        }
        bucket.take_token();
        if self.chance(self.faults.internal_error_probability) {
            self.fault_about(codes::INTERNAL_SERVER_ERROR, r, about);
            return Err(err(op, codes::INTERNAL_SERVER_ERROR, "An internal error has occurred"));
        }
        Ok(r)
    }

    /// GetParameter: the value `name` holds in `region` now.
    pub(crate) fn get_parameter(&mut self, region: &RegionLabel, name: &str) -> Result<String, Ec2Error> {
        let op = Operation::GetParameter;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(name);
        let result = self.serve(op, region, About::Nothing, |w, r| {
            w.parameters
                .get(&(r, name.to_string()))
                .cloned()
                .ok_or_else(|| err(op, codes::PARAMETER_NOT_FOUND, format!("Parameter {name} not found.")))
        });
        self.audit.outcome(&result, |a, value| a.str(value));
        result
    }

    /// Points `name` in region `r` at `value` from now on (a targeted change: a new release).
    pub(crate) fn set_parameter(&mut self, r: usize, name: &str, value: &str) {
        self.audit.begin(0xF5, self.regions[r].label.as_str(), self.now_ms);
        self.audit.str(name);
        self.audit.str(value);
        self.parameters.insert((r, name.to_string()), value.to_string());
    }
}
