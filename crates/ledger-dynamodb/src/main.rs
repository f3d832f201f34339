//! `ledger-dynamodb`: the operator's tool for a usage ledger in DynamoDB: create the table, move
//! a file ledger in and out, and read a table as `usage-ledger` reads a file (`verify`, `usage`,
//! `dump`, with the same output). It lives here, not in `usage-ledger`, which stays free of AWS.
//! Only `import` writes records, and only under the group's lease.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use backend_api::{GrantId, TokioClock};
use clap::{Parser, Subcommand};
use ledger_dynamodb::{Connection, DynamoTable, export_file, import_file};
use usage_ledger::report::usage_json;
use usage_ledger::{GrantState, Phase, Record};

/// Read and move a usage ledger kept in DynamoDB.
#[derive(Parser)]
#[command(name = "ledger-dynamodb", version, about)]
struct Cli {
    /// The table's region.
    #[arg(long, global = true, default_value = "us-east-1")]
    region: String,
    /// An endpoint other than AWS's (moto, DynamoDB Local). Default: the SDK's own resolution
    /// (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL, then AWS). Credentials come from the
    /// standard AWS chain.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the table: on-demand capacity, point-in-time recovery on.
    CreateTable {
        /// The table.
        #[arg(long)]
        table: String,
    },
    /// Copy a file ledger into an empty table under the group's lease, then read it back and
    /// check the records hash.
    Import {
        /// The ledger file (stop the bridge writing it first).
        #[arg(long)]
        from: PathBuf,
        /// The table.
        #[arg(long)]
        table: String,
        /// The bridge group whose lease the import takes (and releases when done).
        #[arg(long)]
        group: String,
        /// The lease holder's name. Default: `import-<pid>`.
        #[arg(long)]
        holder: Option<String>,
        /// How long the lease is taken for, in milliseconds: longer than the import takes.
        #[arg(long, default_value_t = 600_000)]
        lease_ms: u64,
    },
    /// Copy every record of the table into a new file ledger.
    Export {
        /// The table.
        #[arg(long)]
        table: String,
        /// The file to create (refused when it holds records).
        #[arg(long)]
        to: PathBuf,
    },
    /// Check every record and every transition. Exit 0 when intact; 1 naming the record
    /// otherwise.
    Verify {
        /// The table.
        #[arg(long)]
        table: String,
    },
    /// Print the usage per grant, and the total, as JSON.
    Usage {
        /// The table.
        #[arg(long)]
        table: String,
        /// Only this grant (64 hex characters).
        #[arg(long)]
        grant: Option<GrantId>,
    },
    /// Print every record as one JSON object per line, in append order.
    Dump {
        /// The table.
        #[arg(long)]
        table: String,
    },
    /// Print who holds the group's lease, as JSON.
    Lease {
        /// The table.
        #[arg(long)]
        table: String,
        /// The bridge group.
        #[arg(long)]
        group: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ledger-dynamodb: cannot start a tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ledger-dynamodb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The wall clock, read here and only here, handed to the lease as a `Clock`.
fn wall_clock() -> anyhow::Result<TokioClock> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    Ok(TokioClock::starting_at(u64::try_from(since_epoch.as_millis()).context("the system clock is past 2^64 ms")?))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connection = Connection {
        region: cli.region,
        endpoint_url: cli.endpoint_url,
        static_credentials: None,
        session_token: None,
    };
    let client = connection.client().await;
    let open = |name: &str| DynamoTable::new(client.clone(), name);
    match cli.command {
        Command::CreateTable { table } => {
            open(&table).create().await?;
            println!("created table {table}: on-demand capacity, point-in-time recovery on");
        }
        Command::Import { from, table, group, holder, lease_ms } => {
            let table = open(&table);
            let holder = holder.unwrap_or_else(|| format!("import-{}", std::process::id()));
            let lease = table.acquire(&group, &holder, lease_ms, &wall_clock()?).await?;
            let report = import_file(&table, &lease, &from).await;
            // Released whether or not the import worked, so the bridge can start at once.
            let released = table.release(lease).await;
            let report = report?;
            released?;
            println!(
                "imported {} records from {} into {}: records hash {} (read back and checked)",
                report.records,
                from.display(),
                table.name(),
                hex::encode(report.records_hash)
            );
        }
        Command::Export { table, to } => {
            let report = export_file(&open(&table), &to).await?;
            println!(
                "exported {} records from {table} into {}: records hash {}",
                report.records,
                to.display(),
                hex::encode(report.records_hash)
            );
        }
        Command::Verify { table } => {
            let (grants, records) = fold(&open(&table)).await?;
            let live = grants.values().filter(|g| g.phase() != Phase::Settled).count();
            println!("{table}: intact: {records} records, {} grants ({live} live)", grants.len());
        }
        Command::Usage { table, grant } => {
            let (grants, _) = fold(&open(&table)).await?;
            let value = usage_json(&grants, grant).with_context(|| {
                format!("grant {} has no events in table {table}", grant.map(|g| g.to_hex()).unwrap_or_default())
            })?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Command::Dump { table } => {
            use std::io::Write;
            let replayed = open(&table).replay().await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for (record, _) in &replayed.records {
                serde_json::to_writer(&mut out, record)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Command::Lease { table, group } => {
            let value = match open(&table).lease_holder(&group).await? {
                Some(held) => serde_json::json!({
                    "group": group,
                    "holder": held.holder,
                    "epoch": held.epoch,
                    "expires_unix_ms": held.expires_unix_ms,
                }),
                None => serde_json::json!({ "group": group, "holder": null }),
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    Ok(())
}

/// Folds the whole table, naming the record whose transition is impossible.
async fn fold(table: &DynamoTable) -> anyhow::Result<(BTreeMap<GrantId, GrantState>, u64)> {
    let replayed = table.replay().await?;
    let mut grants: BTreeMap<GrantId, GrantState> = BTreeMap::new();
    for (position, (record, _)) in replayed.records.iter().enumerate() {
        let stepped = match grants.get_mut(&record.grant) {
            Some(state) => state.step(record),
            None => GrantState::first(record).map(|state| {
                grants.insert(record.grant, state);
            }),
        };
        stepped.map_err(|err| impossible(table, position, record, &err))?;
    }
    Ok((grants, replayed.records.len() as u64))
}

fn impossible(table: &DynamoTable, position: usize, record: &Record, err: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "table {}: impossible event in record {position} (grant {} seq {}): {err}",
        table.name(),
        record.grant.to_hex(),
        record.seq
    )
}
