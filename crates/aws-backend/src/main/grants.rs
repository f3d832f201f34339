//! A grant as the operator's tools write it (docs/grants-format.md): one line of `run`'s
//! grants file, and the body of `serve`'s `POST /v1/grants`.

use std::path::Path;

use anyhow::{Context, ensure};
use backend_api::{AlmanacTick, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, RegionLabel};
use serde::Deserialize;

/// One grant: the grants-format fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantLine {
    pub(crate) id: GrantId,
    cpu_millicores: u32,
    ram_mib: u32,
    storage_gib: u32,
    tdx_required: bool,
    image_post_hash: ImageHash,
    pub(crate) valid_from: AlmanacTick,
    pub(crate) valid_to: AlmanacTick,
    #[serde(default)]
    region: Option<RegionLabel>,
}

impl GrantLine {
    /// What the grant asks for.
    pub(crate) fn manifest(&self) -> ComputeManifest {
        ComputeManifest {
            cpu_millicores: self.cpu_millicores,
            ram_mib: self.ram_mib,
            storage_gib: self.storage_gib,
            tdx_required: self.tdx_required,
            image_post_hash: self.image_post_hash,
        }
    }

    /// The grant, over `manifest` (from [`GrantLine::manifest`]).
    pub(crate) fn grant<'a>(&self, manifest: &'a ComputeManifest) -> ComputeGrant<'a> {
        ComputeGrant { id: self.id, manifest, valid_from: self.valid_from, valid_to: self.valid_to }
    }

    /// The region asked for, if any.
    pub(crate) fn envelope(&self) -> Envelope {
        Envelope { region: self.region.clone() }
    }

    /// The checks a grant passes before it reaches the backend, which the backend would not
    /// name as the field of the file or the body: the window's order.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.valid_from > self.valid_to {
            return Err(format!(
                "valid_from {} is after valid_to {}: a grant's window starts before it ends",
                self.valid_from.0, self.valid_to.0
            ));
        }
        Ok(())
    }
}

/// Reads and checks the whole grants file before anything is created: a bad line refuses the
/// run, naming the line.
pub(crate) fn read_grants(path: &Path) -> anyhow::Result<Vec<GrantLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading grants file {}", path.display()))?;
    let mut grants: Vec<GrantLine> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let grant: GrantLine = serde_json::from_str(line).with_context(|| {
            format!("grants file {} line {number}: not a grant (see docs/grants-format.md)", path.display())
        })?;
        if let Err(why) = grant.check() {
            anyhow::bail!("grants file {} line {number}: {why}", path.display());
        }
        ensure!(
            !grants.iter().any(|g| g.id == grant.id),
            "grants file {} line {number}: grant {} appears twice; a grant provisions once",
            path.display(),
            grant.id
        );
        grants.push(grant);
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_lines_parse_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("aws-backend-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("grants.jsonl");
        let good = format!(
            r#"{{"id":"{}","cpu_millicores":1500,"ram_mib":2048,"storage_gib":8,"tdx_required":false,"image_post_hash":"{}","valid_from":10,"valid_to":20,"region":"us-east-1"}}"#,
            "ab".repeat(32),
            "5a".repeat(32)
        );
        std::fs::write(&path, format!("{good}\n\n")).expect("write");
        let grants = read_grants(&path).expect("one good line");
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].valid_to, AlmanacTick(20));
        assert_eq!(grants[0].envelope().region.as_ref().map(RegionLabel::as_str), Some("us-east-1"));

        std::fs::write(&path, format!("{good}\n{good}\n")).expect("write");
        let err = format!("{:#}", read_grants(&path).expect_err("duplicate"));
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");

        std::fs::write(&path, format!("{good}\n{}\n", good.replace("\"cpu_millicores\"", "\"cpu\""))).expect("write");
        let err = format!("{:#}", read_grants(&path).expect_err("unknown field"));
        assert!(err.contains("line 2") && err.contains("cpu"), "{err}");

        std::fs::write(&path, good.replace("\"valid_from\":10", "\"valid_from\":30")).expect("write");
        let err = format!("{:#}", read_grants(&path).expect_err("window backwards"));
        assert!(err.contains("line 1") && err.contains("valid_from 30 is after valid_to 20"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
