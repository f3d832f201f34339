//! `reap`: one reaper pass over every allowed region, printed as a JSON line per orphan and a
//! summary; a dry run removes nothing and reads the ledger without its lock.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use aws_backend::{AwsBootConfig, LedgerStore, ReapReport};
use backend_api::Secret;
use serde_json::json;

use crate::ledger::{key_seed, open_ledger, read_ledger_without_lock};
use crate::{group, open_backend, wall_clock};

/// `reap`: one reaper pass; true when nothing failed.
///
/// A real pass opens the ledger as `run` does, locked, since it records each removal and may
/// tear down overdue grants. A dry run only reads it, without the lock, so it also works while
/// `run` is running and creates no file.
pub(crate) async fn reap(config: &Path, dry_run: bool) -> anyhow::Result<bool> {
    let cfg = AwsBootConfig::load(config)?;
    let report = match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let (ledger, key_seed) = if dry_run {
                // A dry run provisions nothing, so no key is ever derived from this seed.
                (read_ledger_without_lock(&path)?, Secret::new("unused by a dry run"))
            } else {
                (open_ledger(&path)?, key_seed(&path)?)
            };
            let backend = open_backend(&cfg, wall_clock()?, ledger, key_seed, None).await?;
            backend.reap(dry_run).await
        }
        LedgerStore::DynamoDb(ledger) => group::reap(&cfg, &ledger, dry_run).await?,
    };
    let mut stdout = std::io::stdout().lock();
    for line in reap_lines(&report, dry_run) {
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    stdout.flush().context("writing to stdout")?;
    for error in &report.errors {
        tracing::error!(%error, "the reaper pass failed here; the next pass tries again");
    }
    if dry_run {
        tracing::info!(found = report.found.len(), "dry run: nothing was removed and the ledger was not written");
    }
    Ok(report.errors.is_empty())
}

/// The pass as JSON lines: one per orphan, then a summary.
///
/// The report counts removals but does not mark each orphan; an orphan counts as removed after
/// a real pass unless an error names its id (a security group found gone at deletion counts as
/// removed: it is gone).
fn reap_lines(report: &ReapReport, dry_run: bool) -> Vec<serde_json::Value> {
    let mut lines: Vec<serde_json::Value> = report
        .found
        .iter()
        .map(|orphan| {
            let failed = report.errors.iter().any(|e| e.contains(orphan.id.as_str()));
            json!({
                "region": orphan.region,
                "kind": orphan.kind,
                "id": orphan.id,
                "grant": orphan.grant,
                "reason": orphan.reason,
                "removed": !dry_run && !failed,
                "dry_run": dry_run,
            })
        })
        .collect();
    lines.push(json!({
        "found": report.found.len(),
        "removed": report.removed,
        "overdue_grants": report.overdue_grants,
        "errors": report.errors,
        "dry_run": dry_run,
    }));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(kind: &'static str, id: &str) -> aws_backend::Orphan {
        aws_backend::Orphan {
            region: "us-east-1".into(),
            kind,
            id: id.into(),
            grant: Some("cd".repeat(32)),
            reason: "its grant is not in the ledger".into(),
        }
    }

    #[test]
    fn a_dry_run_prints_every_orphan_as_not_removed() {
        let report = ReapReport {
            found: vec![orphan("instance", "i-0abc"), orphan("key-pair", "cb-x"), orphan("security-group", "sg-1")],
            ..ReapReport::default()
        };
        let lines = reap_lines(&report, true);
        assert_eq!(lines.len(), 4, "three orphans and a summary: {lines:?}");
        for (line, id) in lines.iter().zip(["i-0abc", "cb-x", "sg-1"]) {
            assert_eq!(line["id"], id);
            assert_eq!(line["region"], "us-east-1");
            assert_eq!(line["grant"], "cd".repeat(32));
            assert_eq!(line["reason"], "its grant is not in the ledger");
            assert_eq!(line["removed"], false);
            assert_eq!(line["dry_run"], true);
        }
        assert_eq!(lines[0]["kind"], "instance");
        let summary = &lines[3];
        assert_eq!(summary["found"], 3);
        assert_eq!(summary["removed"], 0);
        assert_eq!(summary["overdue_grants"], 0);
        assert_eq!(summary["errors"], json!([]));
        assert_eq!(summary["dry_run"], true);
    }

    #[test]
    fn a_real_pass_marks_as_removed_only_what_no_error_names() {
        let report = ReapReport {
            found: vec![orphan("instance", "i-0abc"), orphan("security-group", "sg-1")],
            removed: 1,
            overdue_grants: 2,
            errors: vec![
                "DeleteSecurityGroup sg-1: DeleteSecurityGroup failed with DependencyViolation: in use".into(),
            ],
        };
        let lines = reap_lines(&report, false);
        assert_eq!(lines[0]["removed"], true);
        assert_eq!(lines[1]["removed"], false);
        let summary = &lines[2];
        assert_eq!(summary["found"], 2);
        assert_eq!(summary["removed"], 1);
        assert_eq!(summary["overdue_grants"], 2);
        assert_eq!(summary["errors"][0], report.errors[0]);
        assert_eq!(summary["dry_run"], false);
    }
}
