//! `status`: the grants the ledger shows still holding resources, read without taking the
//! ledger's lock (or the group's lease), as JSON lines or a table, and whether something needs
//! the operator (exit [`EXIT_NEEDS_OPERATOR`]): a live grant past its deadline and grace, a
//! network figure still not final long after it was due, or, in a group, live grants and no
//! bridge holding the lease.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use aws_backend::sdk::DynamoLeases;
use aws_backend::standby::LeaseTable as _;
use aws_backend::{AwsBootConfig, LedgerStore};
use backend_api::GrantId;
use serde_json::json;
use usage_ledger::{GrantState, NetworkStatus};

use crate::check::EXIT_NEEDS_OPERATOR;
use crate::ledger::scan_ledger;
use crate::{group, network_finality, usage_with_finality_json, wall_clock, wall_clock_unix_ms};

/// `status --output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// A table for people, grant ids shortened as in the logs.
    Table,
    /// One JSON object per line: the lease (group mode), each live grant, a summary.
    Json,
}

/// What needs the operator, as [`print_live_grants`] found it. Kept here because the group
/// mode's `status` (in `group.rs`) prints through [`print_live_grants`], whose signature it
/// relies on; `status` reads it after.
static FOUND: Mutex<Option<Attention>> = Mutex::new(None);

/// What needs the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Attention {
    /// Live grants past their deadline and its grace.
    overdue: usize,
    /// Grants (settled ones included) whose network figure is still provisional or unknown
    /// long after its final measurement was due.
    network_overdue: Vec<GrantId>,
    /// Live grants in all.
    live: usize,
}

impl Attention {
    fn needs_operator(&self) -> bool {
        self.overdue > 0 || !self.network_overdue.is_empty()
    }
}

/// `status`: the live grants of the ledger; exits [`EXIT_NEEDS_OPERATOR`] when something needs
/// the operator, 0 otherwise.
pub(crate) async fn status(config: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let cfg = AwsBootConfig::load(config)?;
    let (attention, lease_unheld) = match cfg.ledger_store() {
        LedgerStore::File { path } => {
            if !path.exists() {
                tracing::info!(path = %path.display(), "no ledger yet: nothing has run");
                return Ok(ExitCode::SUCCESS);
            }
            let records = scan_ledger(&path)?;
            (print_grants(&cfg, &records, &format!("ledger {}", path.display()), output, None)?, false)
        }
        LedgerStore::DynamoDb(ledger) => {
            let clock = wall_clock()?;
            let leases = DynamoLeases::connect(&cfg, &ledger, clock.clone()).await;
            match output {
                // The group mode prints the lease line and the grants as it always has.
                Output::Json => {
                    group::status(&cfg, &ledger).await?;
                    let found =
                        FOUND.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_default();
                    let held = leases.holder().await.context("reading the group's lease")?;
                    (found, held.is_none_or(|h| h.expires_unix_ms <= clock.now_unix_ms()))
                }
                Output::Table => {
                    let held = leases.holder().await.context("reading the group's lease")?;
                    let unheld = held.as_ref().is_none_or(|h| h.expires_unix_ms <= clock.now_unix_ms());
                    let holder = match &held {
                        Some(h) if !unheld => format!("held by {} (epoch {})", h.holder, h.epoch),
                        Some(h) => format!("expired (last held by {}, epoch {})", h.holder, h.epoch),
                        None => "never held".to_string(),
                    };
                    let records = leases.records().await.context("reading the group's ledger")?;
                    let records: Vec<_> = records.into_iter().map(|(record, _)| record).collect();
                    let lease_row = format!("lease of group {}: {holder}", ledger.group);
                    let source = format!("DynamoDB table {}", ledger.table);
                    (print_grants(&cfg, &records, &source, output, Some(lease_row))?, unheld)
                }
            }
        }
    };
    let unattended = lease_unheld && attention.live > 0;
    if unattended {
        tracing::warn!(
            live_grants = attention.live,
            "live grants and no bridge holds the group's lease: start `aws-backend run` on a bridge of the group"
        );
    }
    if output == Output::Json {
        let line = json!({ "summary": {
            "live_grants": attention.live,
            "overdue": attention.overdue,
            "network_overdue": attention.network_overdue.iter().map(GrantId::to_hex).collect::<Vec<_>>(),
            "unattended": unattended,
            "needs_operator": attention.needs_operator() || unattended,
        }});
        writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")?;
    }
    Ok(if attention.needs_operator() || unattended { ExitCode::from(EXIT_NEEDS_OPERATOR) } else { ExitCode::SUCCESS })
}

/// Prints a JSON line for each grant of `records` still holding resources, and warns when some
/// need the operator. `source` names the ledger in errors. The group mode's `status` calls it.
pub(crate) fn print_live_grants(
    cfg: &AwsBootConfig,
    records: &[usage_ledger::Record],
    source: &str,
) -> anyhow::Result<()> {
    let attention = print_grants(cfg, records, source, Output::Json, None)?;
    *FOUND.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(attention);
    Ok(())
}

/// Prints the live grants of `records` as `output` (a table under `header`), and says what
/// needs the operator.
fn print_grants(
    cfg: &AwsBootConfig,
    records: &[usage_ledger::Record],
    source: &str,
    output: Output,
    header: Option<String>,
) -> anyhow::Result<Attention> {
    let grants = usage_ledger::fold(records).with_context(|| format!("replaying {source}"))?;
    let now = wall_clock_unix_ms().unwrap_or(0);
    let attention = attention(cfg, &grants, now);
    let live: Vec<(&GrantId, &GrantState)> = grants.iter().filter(|(_, s)| !s.is_settled()).collect();
    let mut stdout = std::io::stdout().lock();
    match output {
        Output::Json => {
            for (id, state) in &live {
                writeln!(stdout, "{}", grant_json(cfg, id, state, now)).context("writing to stdout")?;
            }
        }
        Output::Table => {
            for line in table(cfg, header, &live, now) {
                writeln!(stdout, "{line}").context("writing to stdout")?;
            }
            if !attention.network_overdue.is_empty() {
                let ids: Vec<String> = attention.network_overdue.iter().map(GrantId::short).collect();
                writeln!(stdout, "network figure not final long after it was due: {}", ids.join(", "))
                    .context("writing to stdout")?;
            }
        }
    }
    if attention.overdue > 0 {
        // Past the guest's own power-off, nothing but a backend will end the grant's bookkeeping.
        tracing::warn!(
            overdue = attention.overdue,
            "some live grants are past their deadline and its grace: if no `aws-backend serve` is running, start it, \
             whose recovery ends them, or run `aws-backend reap`, which tears down overdue grants"
        );
    }
    if !attention.network_overdue.is_empty() {
        tracing::warn!(
            network_overdue = attention.network_overdue.len(),
            "some grants' network figures are still not final long after they were due: their bills may still \
             change; start `aws-backend serve`, whose recovery measures them again"
        );
    }
    Ok(attention)
}

/// True when `state` is live and past its deadline and the guest's grace.
fn is_overdue(cfg: &AwsBootConfig, state: &GrantState, now_unix_ms: u64) -> bool {
    !state.is_settled() && state.valid_to_unix_ms().saturating_add(cfg.deadline_grace_ms()) < now_unix_ms
}

/// True when `state`'s network figure is not final though its final measurement was due: past
/// the grant's end (its deadline while live; a settled grant keeps only when it settled), the
/// grace and `network_final_after_s`, and as long again.
fn is_network_overdue(cfg: &AwsBootConfig, state: &GrantState, now_unix_ms: u64) -> bool {
    let ended = if state.is_settled() { state.latest_unix_ms() } else { state.valid_to_unix_ms() };
    let due =
        ended.saturating_add(cfg.deadline_grace_ms()).saturating_add(cfg.network_final_after_ms().saturating_mul(2));
    state.network_status() != NetworkStatus::Complete && due < now_unix_ms
}

fn attention(cfg: &AwsBootConfig, grants: &BTreeMap<GrantId, GrantState>, now_unix_ms: u64) -> Attention {
    Attention {
        overdue: grants.values().filter(|s| is_overdue(cfg, s, now_unix_ms)).count(),
        network_overdue: grants
            .iter()
            .filter(|(_, s)| is_network_overdue(cfg, s, now_unix_ms))
            .map(|(id, _)| *id)
            .collect(),
        live: grants.values().filter(|s| !s.is_settled()).count(),
    }
}

fn grant_json(cfg: &AwsBootConfig, id: &GrantId, state: &GrantState, now_unix_ms: u64) -> serde_json::Value {
    let resources: Vec<_> =
        state.held_resources().into_iter().map(|(kind, id)| json!({ "kind": kind, "id": id })).collect();
    json!({
        "grant": id.to_hex(),
        "phase": state.phase(),
        "region": state.region(),
        "instance_type": state.instance_type(),
        "instance_id": state.instance(),
        "last_state": state.last_state(),
        "termination": state.termination(),
        "valid_to": state.valid_to().0,
        "valid_to_unix_ms": state.valid_to_unix_ms(),
        "overdue": is_overdue(cfg, state, now_unix_ms),
        "launch_pending": state.launch_requested().is_some() && state.instance().is_none(),
        "resources": resources,
        "usage": usage_with_finality_json(&state.usage(), state.network_status()),
    })
}

/// The table: a header, a row per live grant, a count.
fn table(
    cfg: &AwsBootConfig,
    header: Option<String>,
    live: &[(&GrantId, &GrantState)],
    now_unix_ms: u64,
) -> Vec<String> {
    let mut lines: Vec<String> = header.into_iter().collect();
    if live.is_empty() {
        lines.push("no live grants".into());
        return lines;
    }
    let row = |cells: [&str; 7]| {
        format!(
            "{:<16}  {:<12}  {:<14}  {:<19}  {:<12}  {:<11}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
        .trim_end()
        .to_string()
    };
    lines.push(row(["GRANT", "PHASE", "REGION", "INSTANCE", "DEADLINE", "NETWORK", "ATTENTION"]));
    for (id, state) in live {
        let phase = serde_json::to_value(state.phase())
            .ok()
            .and_then(|v| v.as_str().map(str::to_lowercase))
            .unwrap_or_default();
        let attention = match (is_overdue(cfg, state, now_unix_ms), is_network_overdue(cfg, state, now_unix_ms)) {
            (true, _) => "overdue",
            (false, true) => "network not final",
            (false, false) => "",
        };
        lines.push(row([
            &id.short(),
            &phase,
            state.region(),
            state.instance().unwrap_or("-"),
            &relative(state.valid_to_unix_ms(), now_unix_ms),
            network_finality(state.network_status()),
            attention,
        ]));
    }
    lines.push(format!("{} live grant{}", live.len(), if live.len() == 1 { "" } else { "s" }));
    lines
}

/// `at` relative to `now`: `in 4m12s`, `3h05m ago`.
fn relative(at_unix_ms: u64, now_unix_ms: u64) -> String {
    let (ms, future) =
        if at_unix_ms >= now_unix_ms { (at_unix_ms - now_unix_ms, true) } else { (now_unix_ms - at_unix_ms, false) };
    let s = ms / 1_000;
    let span =
        if s >= 3_600 { format!("{}h{:02}m", s / 3_600, s % 3_600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) };
    if future { format!("in {span}") } else { format!("{span} ago") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_api::AlmanacTick;
    use usage_ledger::{Event, Record};

    fn cfg() -> AwsBootConfig {
        AwsBootConfig::from_toml(
            r#"
            regions = ["us-east-1"]
            instance_families = ["m6i"]
            owner = "unit"
            ami = { us-east-1 = "ami-12345678" }
            ledger_path = "/nonexistent/ledger"
            almanac = { epoch_unix_ms = 0, tick_ms = 1000 }
            guest = { content_store_url = "http://127.0.0.1:9/blobs/{hash}", deadline_grace_s = 60 }
            "#,
        )
        .expect("valid")
    }

    /// A grant admitted in us-east-1, due 100 s after the epoch.
    fn admitted() -> Event {
        Event::GrantAdmitted {
            region: "us-east-1".into(),
            instance_type: "m6i.large".into(),
            vcpus: 2,
            memory_mib: 8_192,
            valid_to: AlmanacTick(100),
            valid_to_unix_ms: 100_000,
            storage_bytes: 0,
            key_name: "k".into(),
            group_name: "g".into(),
        }
    }

    #[test]
    fn times_read_relative_to_now() {
        assert_eq!(relative(10_000 + 252_000, 10_000), "in 4m12s");
        assert_eq!(relative(0, 3 * 3_600_000 + 5 * 60_000), "3h05m ago");
    }

    #[test]
    fn a_live_grant_past_its_deadline_and_grace_needs_the_operator_and_shows_in_the_table() {
        let cfg = cfg();
        let grant = GrantId([0xab; 32]);
        let record = Record { grant, seq: 0, at_unix_ms: 0, event: admitted() };
        let grants = usage_ledger::fold([&record]).expect("folds");
        // Deadline 100 s, grace 60 s: overdue from 160 s on.
        assert_eq!(attention(&cfg, &grants, 150_000).overdue, 0);
        let late = attention(&cfg, &grants, 170_000);
        assert_eq!((late.overdue, late.live), (1, 1));
        assert!(late.needs_operator());
        let live: Vec<_> = grants.iter().collect();
        let lines = table(&cfg, Some("lease".into()), &live, 170_000);
        assert_eq!(lines[0], "lease");
        assert!(lines[1].starts_with("GRANT"), "{lines:?}");
        assert!(lines[2].starts_with(&grant.short()) && lines[2].ends_with("overdue"), "{lines:?}");
        assert!(lines[2].contains("1m10s ago"), "{lines:?}");
        assert_eq!(lines[3], "1 live grant");
        let line = grant_json(&cfg, &grant, &grants[&grant], 170_000);
        assert_eq!(line["grant"], grant.to_hex());
        assert_eq!(line["overdue"], true);
        assert_eq!(line["usage"]["network_finality"], "complete");
    }

    #[test]
    fn a_network_figure_still_unknown_long_after_it_was_due_needs_the_operator() {
        let cfg = cfg();
        let grant = GrantId([0xcd; 32]);
        let events = [
            admitted(),
            Event::LaunchRequested { client_token: "t".into(), instance_type: "m6i.large".into(), image_id: None },
            Event::InstanceLaunched {
                instance_id: "i-1".into(),
                client_token: "t".into(),
                instance_type: "m6i.large".into(),
                vcpus: 2,
                memory_mib: 8_192,
            },
            Event::NetworkUnknown {
                instance_id: "i-1".into(),
                window_start_unix_ms: 1_000,
                window_end_unix_ms: 90_000,
            },
        ];
        let records: Vec<Record> = events
            .into_iter()
            .enumerate()
            .map(|(seq, event)| Record { grant, seq: seq as u64, at_unix_ms: 1_000 * seq as u64, event })
            .collect();
        let grants = usage_ledger::fold(&records).expect("folds");
        assert_eq!(grants[&grant].network_status(), NetworkStatus::Unknown);
        // Deadline 100 s, grace 60 s, network_final_after_s 900 s twice: due at 1960 s.
        assert!(attention(&cfg, &grants, 1_900_000).network_overdue.is_empty());
        let late = attention(&cfg, &grants, 2_000_000);
        assert_eq!(late.network_overdue, vec![grant]);
        assert!(late.needs_operator());
        let line = grant_json(&cfg, &grant, &grants[&grant], 2_000_000);
        assert_eq!(line["usage"]["network_finality"], "unknown");
    }
}
