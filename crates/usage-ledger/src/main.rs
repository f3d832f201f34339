//! `usage-ledger`: the operator's view of a ledger (its segments and snapshots). Every command
//! only reads: none takes the lock or modifies a file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use backend_api::GrantId;
use clap::{Parser, Subcommand};
use usage_ledger::inspect::{LedgerView, read_ledger, scan_ledger, verify_ledger};
use usage_ledger::report::{export_json, parse_instant, period_json, usage_json};
use usage_ledger::{Record, StoreError, TornTail};

/// Inspect a usage ledger without modifying it.
#[derive(Parser)]
#[command(name = "usage-ledger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every frame of every segment and every transition, then every snapshot against the
    /// log. Exit 0 when intact; 1 naming each problem otherwise (a torn tail, a corrupt frame, a
    /// missing segment, an impossible event, a damaged snapshot or one that disagrees with the
    /// log; the log is verified without the snapshots).
    Verify {
        /// The ledger file (segment 0).
        path: PathBuf,
    },
    /// Print the usage per grant, and the total, as JSON; with `--since` or `--until`, a billing
    /// period: the grants settled in it and every live grant's usage so far, each marked final
    /// or not.
    Usage {
        /// The ledger file (segment 0).
        path: PathBuf,
        /// Only this grant (64 hex characters).
        #[arg(long)]
        grant: Option<GrantId>,
        /// The period's start, inclusive: unix ms, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long, value_parser = parse_instant)]
        since: Option<u64>,
        /// The period's end, exclusive (same forms).
        #[arg(long, value_parser = parse_instant)]
        until: Option<u64>,
    },
    /// Print every settled grant (those settled in `--since`..`--until`, when given) as one JSON
    /// object per line, in settlement order; the schema is in docs/metering.md.
    Export {
        /// The ledger file (segment 0).
        path: PathBuf,
        /// Only grants settled at or after this instant (same forms as `usage --since`).
        #[arg(long, value_parser = parse_instant)]
        since: Option<u64>,
        /// Only grants settled before this instant.
        #[arg(long, value_parser = parse_instant)]
        until: Option<u64>,
    },
    /// Print every record as one JSON object per line.
    Dump {
        /// The ledger file (segment 0).
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { path } => verify(&path),
        Command::Usage { path, grant, since, until } => usage(&path, grant, since, until),
        Command::Export { path, since, until } => export(&path, since, until),
        Command::Dump { path } => dump(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("usage-ledger: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn warn_torn(path: &Path, torn: Option<TornTail>) {
    if let Some(torn) = torn {
        eprintln!(
            "usage-ledger: warning: {}: torn tail of {} bytes at byte offset {} ignored (opening the ledger truncates it)",
            path.display(),
            torn.bytes,
            torn.offset
        );
    }
}

/// The books, warning about skipped snapshots and a torn tail.
fn view(path: &Path) -> anyhow::Result<LedgerView> {
    let view = read_ledger(path).with_context(|| format!("reading ledger {}", path.display()))?;
    for (snapshot, reason) in &view.skipped_snapshots {
        eprintln!("usage-ledger: warning: snapshot {} skipped: {reason}", snapshot.display());
    }
    warn_torn(path, view.torn_tail);
    Ok(view)
}

fn verify(path: &Path) -> anyhow::Result<()> {
    let report = verify_ledger(path)?;
    if !report.problems.is_empty() {
        return Err(anyhow!("{} problem(s):\n{}", report.problems.len(), report.problems.join("\n")));
    }
    let bytes: u64 = report.segments.iter().map(|(_, end)| end).sum();
    println!(
        "{}: intact: {} records, {} grants ({} live), {} bytes in {} segment(s), {} snapshot(s) agreeing with the log",
        path.display(),
        report.records,
        report.grants,
        report.live,
        bytes,
        report.segments.len(),
        report.good_snapshots.len()
    );
    Ok(())
}

fn usage(path: &Path, grant: Option<GrantId>, since: Option<u64>, until: Option<u64>) -> anyhow::Result<()> {
    let view = view(path)?;
    let value = if since.is_some() || until.is_some() {
        period_json(&view.grants, since, until)
    } else {
        usage_json(&view.grants, grant).with_context(|| {
            format!("grant {} has no events in {}", grant.map(|g| g.to_hex()).unwrap_or_default(), path.display())
        })?
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn export(path: &Path, since: Option<u64>, until: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    let view = view(path)?;
    let mut settled: Vec<_> = view
        .grants
        .iter()
        .filter_map(|(id, state)| state.settled_unix_ms().map(|at| (at, id, state)))
        .filter(|(at, _, _)| usage_ledger::report::in_period(*at, since, until))
        .collect();
    settled.sort_by_key(|(at, id, _)| (*at, **id));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (_, id, state) in settled {
        if let Some(line) = export_json(id, state) {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn dump(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (_, torn) = scan_ledger(path, |_, record: Record, _| {
        serde_json::to_writer(&mut out, &record).map_err(|e| StoreError::Encode {
            grant: record.grant.to_hex(),
            seq: record.seq,
            reason: e.to_string(),
        })?;
        out.write_all(b"\n").map_err(|source| StoreError::Io { op: "write to", path: "stdout".into(), source })?;
        Ok::<(), StoreError>(())
    })?;
    out.flush()?;
    warn_torn(path, torn);
    Ok(())
}
