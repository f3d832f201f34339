//! `status`: the grants the ledger shows still holding resources, one JSON line each, read
//! without taking the ledger's lock (or the group's lease).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use aws_backend::{AwsBootConfig, LedgerStore};
use serde_json::json;

use crate::ledger::scan_ledger;
use crate::{group, usage_json, wall_clock_unix_ms};

/// `status`: the live grants of the ledger, read without taking its lock (or, in DynamoDB,
/// without its lease, after a line saying who holds the lease).
pub(crate) async fn status(config: &Path) -> anyhow::Result<()> {
    let cfg = AwsBootConfig::load(config)?;
    match cfg.ledger_store() {
        LedgerStore::File { path } => {
            if !path.exists() {
                tracing::info!(path = %path.display(), "no ledger yet: nothing has run");
                return Ok(());
            }
            let records = scan_ledger(&path)?;
            print_live_grants(&cfg, &records, &format!("ledger {}", path.display()))
        }
        LedgerStore::DynamoDb(ledger) => group::status(&cfg, &ledger).await,
    }
}

/// Prints a JSON line for each grant of `records` still holding resources, and warns when some
/// are past their deadline. `source` names the ledger in errors.
pub(crate) fn print_live_grants(
    cfg: &AwsBootConfig,
    records: &[usage_ledger::Record],
    source: &str,
) -> anyhow::Result<()> {
    let grants = usage_ledger::fold(records).with_context(|| format!("replaying {source}"))?;
    let mut stdout = std::io::stdout().lock();
    for (id, state) in grants.iter().filter(|(_, s)| !s.is_settled()) {
        let resources: Vec<_> =
            state.held_resources().into_iter().map(|(kind, id)| json!({ "kind": kind, "id": id })).collect();
        let line = json!({
            "grant": id.to_hex(),
            "phase": state.phase(),
            "region": state.region(),
            "instance_type": state.instance_type(),
            "instance_id": state.instance(),
            "last_state": state.last_state(),
            "termination": state.termination(),
            "valid_to": state.valid_to().0,
            "valid_to_unix_ms": state.valid_to_unix_ms(),
            "launch_pending": state.launch_requested().is_some() && state.instance().is_none(),
            "resources": resources,
            "usage": usage_json(&state.usage()),
        });
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    // Past the guest's own power-off, nothing but a backend will end the grant's bookkeeping.
    let grace_ms = cfg.deadline_grace_ms();
    let now = wall_clock_unix_ms().unwrap_or(0);
    if grants.values().any(|s| !s.is_settled() && s.valid_to_unix_ms().saturating_add(grace_ms) < now) {
        tracing::warn!(
            "some live grants are past their deadline and its grace: if no `aws-backend serve` is running, start it, \
             whose recovery ends them, or run `aws-backend reap`, which tears down overdue grants"
        );
    }
    Ok(())
}
