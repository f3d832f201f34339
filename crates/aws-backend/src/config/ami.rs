//! `ami`: the image each region launches per architecture, as written ([`AmiEntry`]) and as
//! read ([`ImageSource`]: a fixed id or an SSM alias).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate::is_name;
use crate::port::Architecture;

/// One region's `ami` entry, as written: one image for x86_64, or one per architecture. The
/// strings are checked at load ([`AwsBootConfig::validate`](super::AwsBootConfig::validate))
/// and read as [`ImageSource`]s.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AmiEntry {
    /// `us-east-1 = "ami-..."` or `"resolve:ssm:..."`: the x86_64 image (as before
    /// architectures were configurable).
    X86_64(String),
    /// `us-east-1 = { x86_64 = "...", arm64 = "..." }`: an image per architecture, keyed by
    /// EC2's architecture names.
    PerArchitecture(BTreeMap<String, String>),
}

impl AmiEntry {
    /// The raw value for `arch`, if the entry names one.
    pub(super) fn raw(&self, arch: Architecture) -> Option<&str> {
        match self {
            AmiEntry::X86_64(value) => (arch == Architecture::X86_64).then_some(value.as_str()),
            AmiEntry::PerArchitecture(map) => map.get(arch.as_str()).map(String::as_str),
        }
    }
}

/// The prefix of an AMI alias, in the syntax EC2 launch templates and RunInstances take
/// ("Use a Systems Manager parameter instead of an AMI ID", Amazon EC2 User Guide:
/// `resolve:ssm:parameter-name`).
pub const SSM_ALIAS_PREFIX: &str = "resolve:ssm:";

/// Where an AMI id comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageSource {
    /// A fixed id, `ami-...`.
    Id(String),
    /// The SSM parameter whose value is the id, e.g.
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`, re-read every
    /// `ami_refresh_s`.
    Parameter(String),
}

impl ImageSource {
    /// Parses `ami-...` or `resolve:ssm:NAME`; the error names the value and what to write.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix(SSM_ALIAS_PREFIX) {
            // Parameter names: letters, digits and `_.-/`, at most 2,048 characters with the
            // path ("PutParameter", AWS Systems Manager API Reference, Name). A `:version` or
            // `:label` selector is not taken: the alias is read as it is now.
            let ok = !name.is_empty()
                && name.len() <= 2_048
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
            if !ok {
                return Err(format!(
                    "{text:?} is not an SSM alias: write resolve:ssm: and a parameter name of letters, digits and _.-/, e.g. \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\""
                ));
            }
            return Ok(ImageSource::Parameter(name.to_string()));
        }
        if looks_like_ami_id(text) {
            return Ok(ImageSource::Id(text.to_string()));
        }
        Err(format!(
            "{text:?} is neither an AMI id (ami-...) nor an SSM alias: write \"ami-0123456789abcdef0\" or \"resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\""
        ))
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Id(id) => f.write_str(id),
            ImageSource::Parameter(name) => write!(f, "{SSM_ALIAS_PREFIX}{name}"),
        }
    }
}

/// `ami-` and up to 60 more name characters: what the configuration check has always taken
/// for an AMI id. Deliberately looser than EC2's hex rule, so that EC2's own refusal
/// (`InvalidAMIID.Malformed`) names a slightly wrong id with EC2's words (`refusals`).
pub fn looks_like_ami_id(id: &str) -> bool {
    id.len() > 4 && id.starts_with("ami-") && is_name(id, 64)
}
