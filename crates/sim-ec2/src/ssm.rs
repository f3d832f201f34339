//! The public SSM parameters a simulated region serves: AMI aliases, as AWS publishes them
//! under `/aws/service/ami-amazon-linux-latest/` ("Query for the latest Amazon Linux AMI IDs
//! using AWS Systems Manager Parameter Store", AWS Compute Blog; moto 5.2 ships a copy per
//! region in `ssm/resources/ami-amazon-linux-latest/`).

use aws_backend::port::Architecture;
use backend_api::RegionLabel;
use serde::{Deserialize, Serialize};

use crate::config::SimError;
use crate::placement::{SimImage, well_formed_ami};

/// Amazon Linux 2023's x86_64 alias, as AWS names it.
pub const AL2023_X86_64_ALIAS: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
/// Amazon Linux 2023's arm64 alias, as AWS names it.
pub const AL2023_ARM64_ALIAS: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";
/// The AMI [`AL2023_X86_64_ALIAS`] names by default when [`SimConfig::images`](crate::SimConfig)
/// is empty (made up, well formed; every region has it).
pub const DEFAULT_AL2023_X86_64_AMI: &str = "ami-0a2023086640000a1";
/// The AMI [`AL2023_ARM64_ALIAS`] names by default when `images` is empty.
pub const DEFAULT_AL2023_ARM64_AMI: &str = "ami-0a2023a64000000b2";

/// One public parameter of one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimParameter {
    /// The region that serves it (parameters are regional).
    pub region: RegionLabel,
    /// Its name, e.g. [`AL2023_X86_64_ALIAS`].
    pub name: String,
    /// Its value, e.g. an AMI id.
    pub value: String,
}

/// Refuses parameters that name an AMI `images` does not list in their region.
pub(crate) fn validate_parameters(parameters: &[SimParameter], images: &[SimImage]) -> Result<(), SimError> {
    for p in parameters {
        if p.name.is_empty() {
            return Err(SimError::Config(format!("public_parameters: a parameter of {} has no name", p.region)));
        }
        let names_unknown_image = p.value.starts_with("ami-")
            && !images.is_empty()
            && !images.iter().any(|i| i.region == p.region && i.image_id == p.value);
        if names_unknown_image || (p.value.starts_with("ami-") && !well_formed_ami(&p.value)) {
            return Err(SimError::Config(format!(
                "public_parameters: {} in {} names {}, which images does not list there: add a SimImage for it, or point the parameter at one",
                p.name, p.region, p.value
            )));
        }
    }
    Ok(())
}

/// The parameters and the AMIs behind them a region serves when
/// [`SimConfig::public_parameters`](crate::SimConfig) is empty: the AL2023 aliases, naming
/// [`DEFAULT_AL2023_X86_64_AMI`] and [`DEFAULT_AL2023_ARM64_AMI`] (which then exist, 8 GiB each)
/// when `images` is empty, or else the region's first listed image of each architecture.
pub(crate) fn defaults(region: &RegionLabel, images: &[SimImage]) -> (Vec<SimParameter>, Vec<SimImage>) {
    let aliases = [
        (Architecture::X86_64, AL2023_X86_64_ALIAS, DEFAULT_AL2023_X86_64_AMI),
        (Architecture::Arm64, AL2023_ARM64_ALIAS, DEFAULT_AL2023_ARM64_AMI),
    ];
    let mut parameters = Vec::new();
    let mut published = Vec::new();
    for (architecture, alias, default_id) in aliases {
        let image_id = if images.is_empty() {
            published.push(SimImage {
                region: region.clone(),
                image_id: default_id.to_string(),
                root_snapshot_gib: crate::placement::DEFAULT_ROOT_SNAPSHOT_GIB,
                architecture,
            });
            Some(default_id.to_string())
        } else {
            images.iter().find(|i| i.region == *region && i.architecture == architecture).map(|i| i.image_id.clone())
        };
        if let Some(value) = image_id {
            parameters.push(SimParameter { region: region.clone(), name: alias.to_string(), value });
        }
    }
    (parameters, published)
}
