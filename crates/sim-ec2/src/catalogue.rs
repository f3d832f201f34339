//! The instance-type catalogue DescribeInstanceTypes answers from: real EC2 sizes.
//!
//! Figures are the default vCPUs and memory (MiB) that DescribeInstanceTypes reports for each
//! type (see "Amazon EC2 instance type specifications", docs.aws.amazon.com/ec2/latest/instancetypes/),
//! and the architecture its `ProcessorInfo.SupportedArchitectures` lists (x86_64 for the Intel
//! families, arm64 for the Graviton3 families m7g, c7g and r7g: "General purpose instances",
//! "Compute optimized instances" and "Memory optimized instances" in the same guide; the
//! figures agree with moto 5.2's copy of DescribeInstanceTypes, `ec2/resources/instance_types.json`).

use aws_backend::port::Architecture;

/// One instance type's size and architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceTypeSpec {
    /// The type's name, e.g. `m6i.large`.
    pub name: &'static str,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The architecture an AMI must have to launch on it.
    pub architecture: Architecture,
}

impl InstanceTypeSpec {
    /// The family, e.g. `m6i` for `m6i.large`.
    pub fn family(&self) -> &'static str {
        family_of(self.name)
    }
}

const fn spec(name: &'static str, vcpus: u32, memory_mib: u64) -> InstanceTypeSpec {
    InstanceTypeSpec { name, vcpus, memory_mib, architecture: Architecture::X86_64 }
}

/// A Graviton (arm64) type.
const fn spec_arm(name: &'static str, vcpus: u32, memory_mib: u64) -> InstanceTypeSpec {
    InstanceTypeSpec { name, vcpus, memory_mib, architecture: Architecture::Arm64 }
}

/// Every simulated instance type, family by family, smallest first.
pub const CATALOGUE: &[InstanceTypeSpec] = &[
    spec("t3.nano", 2, 512),
    spec("t3.micro", 2, 1024),
    spec("t3.small", 2, 2048),
    spec("t3.medium", 2, 4096),
    spec("t3.large", 2, 8192),
    spec("t3.xlarge", 4, 16384),
    spec("t3.2xlarge", 8, 32768),
    spec("m5.large", 2, 8192),
    spec("m5.xlarge", 4, 16384),
    spec("m5.2xlarge", 8, 32768),
    spec("m5.4xlarge", 16, 65536),
    spec("m5.8xlarge", 32, 131072),
    spec("m5.12xlarge", 48, 196608),
    spec("m5.16xlarge", 64, 262144),
    spec("m5.24xlarge", 96, 393216),
    spec("m5.metal", 96, 393216),
    spec("m6i.large", 2, 8192),
    spec("m6i.xlarge", 4, 16384),
    spec("m6i.2xlarge", 8, 32768),
    spec("m6i.4xlarge", 16, 65536),
    spec("m6i.8xlarge", 32, 131072),
    spec("m6i.12xlarge", 48, 196608),
    spec("m6i.16xlarge", 64, 262144),
    spec("m6i.24xlarge", 96, 393216),
    spec("m6i.32xlarge", 128, 524288),
    spec("m6i.metal", 128, 524288),
    spec("c5.large", 2, 4096),
    spec("c5.xlarge", 4, 8192),
    spec("c5.2xlarge", 8, 16384),
    spec("c5.4xlarge", 16, 32768),
    spec("c5.9xlarge", 36, 73728),
    spec("c5.12xlarge", 48, 98304),
    spec("c5.18xlarge", 72, 147456),
    spec("c5.24xlarge", 96, 196608),
    spec("c5.metal", 96, 196608),
    spec("c6i.large", 2, 4096),
    spec("c6i.xlarge", 4, 8192),
    spec("c6i.2xlarge", 8, 16384),
    spec("c6i.4xlarge", 16, 32768),
    spec("c6i.8xlarge", 32, 65536),
    spec("c6i.12xlarge", 48, 98304),
    spec("c6i.16xlarge", 64, 131072),
    spec("c6i.24xlarge", 96, 196608),
    spec("c6i.32xlarge", 128, 262144),
    spec("c6i.metal", 128, 262144),
    spec("r5.large", 2, 16384),
    spec("r5.xlarge", 4, 32768),
    spec("r5.2xlarge", 8, 65536),
    spec("r5.4xlarge", 16, 131072),
    spec("r5.8xlarge", 32, 262144),
    spec("r5.12xlarge", 48, 393216),
    spec("r5.16xlarge", 64, 524288),
    spec("r5.24xlarge", 96, 786432),
    spec("r5.metal", 96, 786432),
    spec("r6i.large", 2, 16384),
    spec("r6i.xlarge", 4, 32768),
    spec("r6i.2xlarge", 8, 65536),
    spec("r6i.4xlarge", 16, 131072),
    spec("r6i.8xlarge", 32, 262144),
    spec("r6i.12xlarge", 48, 393216),
    spec("r6i.16xlarge", 64, 524288),
    spec("r6i.24xlarge", 96, 786432),
    spec("r6i.32xlarge", 128, 1048576),
    spec("r6i.metal", 128, 1048576),
    spec_arm("m7g.medium", 1, 4096),
    spec_arm("m7g.large", 2, 8192),
    spec_arm("m7g.xlarge", 4, 16384),
    spec_arm("m7g.2xlarge", 8, 32768),
    spec_arm("m7g.4xlarge", 16, 65536),
    spec_arm("m7g.8xlarge", 32, 131072),
    spec_arm("m7g.12xlarge", 48, 196608),
    spec_arm("m7g.16xlarge", 64, 262144),
    spec_arm("m7g.metal", 64, 262144),
    spec_arm("c7g.medium", 1, 2048),
    spec_arm("c7g.large", 2, 4096),
    spec_arm("c7g.xlarge", 4, 8192),
    spec_arm("c7g.2xlarge", 8, 16384),
    spec_arm("c7g.4xlarge", 16, 32768),
    spec_arm("c7g.8xlarge", 32, 65536),
    spec_arm("c7g.12xlarge", 48, 98304),
    spec_arm("c7g.16xlarge", 64, 131072),
    spec_arm("c7g.metal", 64, 131072),
    spec_arm("r7g.medium", 1, 8192),
    spec_arm("r7g.large", 2, 16384),
    spec_arm("r7g.xlarge", 4, 32768),
    spec_arm("r7g.2xlarge", 8, 65536),
    spec_arm("r7g.4xlarge", 16, 131072),
    spec_arm("r7g.8xlarge", 32, 262144),
    spec_arm("r7g.12xlarge", 48, 393216),
    spec_arm("r7g.16xlarge", 64, 524288),
    spec_arm("r7g.metal", 64, 524288),
];

/// The family part of a type name: everything before the first dot.
pub fn family_of(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

/// The catalogue entry for `instance_type`, if EC2 has it.
pub fn lookup(instance_type: &str) -> Option<&'static InstanceTypeSpec> {
    CATALOGUE.iter().find(|spec| spec.name == instance_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sizes_plausible() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for spec in CATALOGUE {
            // Every family here has at least 2 GiB per vCPU except t3's small sizes.
            assert!(spec.memory_mib >= 256 * u64::from(spec.vcpus), "{spec:?}");
        }
        assert_eq!(lookup("m6i.large"), Some(&spec("m6i.large", 2, 8192)));
        assert_eq!(lookup("r6i.32xlarge").map(|s| s.memory_mib), Some(1_048_576));
        assert_eq!(lookup("m6i.huge"), None);
        assert_eq!(lookup("m7g.large"), Some(&spec_arm("m7g.large", 2, 8192)));
        assert_eq!(lookup("m6i.large").map(|s| s.architecture), Some(Architecture::X86_64));
        assert!(CATALOGUE.iter().all(|s| (s.family().ends_with('g')) == (s.architecture == Architecture::Arm64)));
    }
}
