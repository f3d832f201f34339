//! `usage-ledger`: the operator's view of a ledger file. Every command only reads the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use backend_api::GrantId;
use clap::{Parser, Subcommand};
use usage_ledger::report::usage_json;
use usage_ledger::{GrantState, LedgerError, Phase, Record, ScanOutcome, StoreError, scan_file};

/// Inspect a usage-ledger file without modifying it.
#[derive(Parser)]
#[command(name = "usage-ledger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every frame and every transition. Exit 0 when intact; 1 with the offset and reason
    /// otherwise (a torn tail, a corrupt frame, an impossible event).
    Verify {
        /// The ledger file.
        path: PathBuf,
    },
    /// Print the usage per grant, and the total, as JSON.
    Usage {
        /// The ledger file.
        path: PathBuf,
        /// Only this grant (64 hex characters).
        #[arg(long)]
        grant: Option<GrantId>,
    },
    /// Print every record as one JSON object per line.
    Dump {
        /// The ledger file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { path } => verify(&path),
        Command::Usage { path, grant } => usage(&path, grant),
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

/// Folds the whole file, keeping the offset of the record that failed.
fn fold_file(path: &Path) -> anyhow::Result<(BTreeMap<GrantId, GrantState>, ScanOutcome)> {
    let mut grants: BTreeMap<GrantId, GrantState> = BTreeMap::new();
    let mut failed_at = 0;
    let outcome = scan_file(path, |offset, record, _| {
        failed_at = offset;
        match grants.get_mut(&record.grant) {
            Some(state) => state.step(&record)?,
            None => {
                grants.insert(record.grant, GrantState::first(&record)?);
            }
        }
        Ok::<(), LedgerError>(())
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(LedgerError::Apply(err)) => {
            return Err(anyhow!("{}: impossible event in the frame at byte offset {failed_at}: {err}", path.display()));
        }
        Err(err) => return Err(err.into()),
    };
    Ok((grants, outcome))
}

fn warn_torn(path: &Path, outcome: &ScanOutcome) {
    if let Some(torn) = outcome.torn_tail {
        eprintln!(
            "usage-ledger: warning: {}: torn tail of {} bytes at byte offset {} ignored (opening the ledger truncates it)",
            path.display(),
            torn.bytes,
            torn.offset
        );
    }
}

fn verify(path: &Path) -> anyhow::Result<()> {
    let (grants, outcome) = fold_file(path)?;
    if let Some(torn) = outcome.torn_tail {
        return Err(anyhow!(
            "{}: torn tail at byte offset {}: {} bytes of a partial last frame (opening the ledger truncates it)",
            path.display(),
            torn.offset,
            torn.bytes
        ));
    }
    let live = grants.values().filter(|g| g.phase() != Phase::Settled).count();
    println!(
        "{}: intact: {} records, {} grants ({} live), {} bytes",
        path.display(),
        outcome.records,
        grants.len(),
        live,
        outcome.end_offset
    );
    Ok(())
}

fn usage(path: &Path, grant: Option<GrantId>) -> anyhow::Result<()> {
    let (grants, outcome) = fold_file(path)?;
    warn_torn(path, &outcome);
    let value = usage_json(&grants, grant).with_context(|| {
        format!("grant {} has no events in {}", grant.map(|g| g.to_hex()).unwrap_or_default(), path.display())
    })?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn dump(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let outcome = scan_file(path, |_, record: Record, _| {
        serde_json::to_writer(&mut out, &record).map_err(|e| StoreError::Encode {
            grant: record.grant.to_hex(),
            seq: record.seq,
            reason: e.to_string(),
        })?;
        out.write_all(b"\n").map_err(|source| StoreError::Io { op: "write to", path: "stdout".into(), source })?;
        Ok::<(), StoreError>(())
    })?;
    out.flush()?;
    warn_torn(path, &outcome);
    Ok(())
}
