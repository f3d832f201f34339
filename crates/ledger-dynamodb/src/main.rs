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
use ledger_dynamodb::bridge_config::BridgeConfig;
use ledger_dynamodb::{Connection, DynamoTable, export_file, import_file};
use usage_ledger::report::usage_json;
use usage_ledger::{GrantState, Phase, Record};

/// Read and move a usage ledger kept in DynamoDB.
#[derive(Parser)]
#[command(name = "ledger-dynamodb", version, about)]
struct Cli {
    /// The bridge's configuration (the TOML `aws-backend` runs with): the table, group, region,
    /// endpoint and credentials of its `[ledger] store = "dynamodb"`, as the bridge resolves
    /// them. The options below win over it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The table's region. Default: the config's (`[ledger] region`, else the first of
    /// `regions`), else `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    #[arg(long, global = true)]
    region: Option<String>,
    /// An endpoint other than AWS's (moto, DynamoDB Local). Default: the config's, else the
    /// SDK's own resolution (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL, then AWS).
    /// Credentials come from the config's `[credentials]`, else the standard AWS chain.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the table: on-demand capacity, point-in-time recovery on.
    CreateTable {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Copy a file ledger into an empty table under the group's lease, then read it back and
    /// check the records hash.
    Import {
        /// The ledger file (stop the bridge writing it first).
        #[arg(long)]
        from: PathBuf,
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
        /// The bridge group whose lease the import takes (and releases when done). Default:
        /// the config's `[ledger] group`.
        #[arg(long)]
        group: Option<String>,
        /// The lease holder's name. Default: `import-<pid>`.
        #[arg(long)]
        holder: Option<String>,
        /// How long the lease is taken for, in milliseconds: longer than the import takes.
        #[arg(long, default_value_t = 600_000)]
        lease_ms: u64,
    },
    /// Copy every record of the table into a new file ledger.
    Export {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
        /// The file to create (refused when it holds records).
        #[arg(long)]
        to: PathBuf,
    },
    /// Check every record and every transition. Exit 0 when intact; 1 naming the record
    /// otherwise.
    Verify {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Print the usage per grant, and the total, as JSON.
    Usage {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
        /// Only this grant (64 hex characters).
        #[arg(long)]
        grant: Option<GrantId>,
    },
    /// Print every record as one JSON object per line, in append order.
    Dump {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Print who holds the group's lease, as JSON.
    Lease {
        /// The table. Default: the config's `[ledger] table`.
        #[arg(long)]
        table: Option<String>,
        /// The bridge group. Default: the config's `[ledger] group`.
        #[arg(long)]
        group: Option<String>,
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

/// The region: `--region`, the config's, `AWS_REGION`, `AWS_DEFAULT_REGION`; never a guess.
/// `env` reads an environment variable.
fn region(
    given: Option<String>,
    cfg: Option<&BridgeConfig>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    let from_env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    given
        .or_else(|| cfg.and_then(BridgeConfig::region).map(str::to_string))
        .or_else(|| from_env("AWS_REGION"))
        .or_else(|| from_env("AWS_DEFAULT_REGION"))
        .context("no region: give --region, --config (the bridge's configuration) or AWS_REGION")
}

/// `given`, or the config's `key` through `of`; the error names both.
fn named(
    given: Option<String>,
    cfg: Option<&BridgeConfig>,
    of: fn(&BridgeConfig) -> Option<&str>,
    key: &str,
) -> anyhow::Result<String> {
    given
        .or_else(|| cfg.and_then(of).map(str::to_string))
        .with_context(|| format!("no {key}: give --{key}, or --config with [ledger] {key}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = cli.config.as_deref().map(BridgeConfig::load).transpose()?;
    let cfg = cfg.as_ref();
    let (static_credentials, session_token) = cfg.map(BridgeConfig::credentials).unwrap_or_default();
    let connection = Connection {
        region: region(cli.region, cfg, |name| std::env::var(name).ok())?,
        endpoint_url: cli.endpoint_url.or_else(|| cfg.and_then(BridgeConfig::endpoint_url).map(str::to_string)),
        static_credentials,
        session_token,
    };
    let client = connection.client().await;
    let open = |name: &str| DynamoTable::new(client.clone(), name);
    let table_of = |given: Option<String>| named(given, cfg, BridgeConfig::table, "table");
    let group_of = |given: Option<String>| named(given, cfg, BridgeConfig::group, "group");
    match cli.command {
        Command::CreateTable { table } => {
            let table = table_of(table)?;
            open(&table).create().await?;
            println!("created table {table}: on-demand capacity, point-in-time recovery on");
        }
        Command::Import { from, table, group, holder, lease_ms } => {
            let (table, group) = (open(&table_of(table)?), group_of(group)?);
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
            let table = table_of(table)?;
            let report = export_file(&open(&table), &to).await?;
            println!(
                "exported {} records from {table} into {}: records hash {}",
                report.records,
                to.display(),
                hex::encode(report.records_hash)
            );
        }
        Command::Verify { table } => {
            let table = table_of(table)?;
            let (grants, records) = fold(&open(&table)).await?;
            let live = grants.values().filter(|g| g.phase() != Phase::Settled).count();
            println!("{table}: intact: {records} records, {} grants ({live} live)", grants.len());
        }
        Command::Usage { table, grant } => {
            let table = table_of(table)?;
            let (grants, _) = fold(&open(&table)).await?;
            let value = usage_json(&grants, grant).with_context(|| {
                format!("grant {} has no events in table {table}", grant.map(|g| g.to_hex()).unwrap_or_default())
            })?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Command::Dump { table } => {
            use std::io::Write;
            let table = table_of(table)?;
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
            let (table, group) = (table_of(table)?, group_of(group)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_flag_the_config_or_aws_region_and_is_never_guessed() {
        let cfg = BridgeConfig::from_toml("regions = [\"eu-west-1\"]\n[ledger]\nstore = \"dynamodb\"").expect("reads");
        let env = |name: &str| (name == "AWS_REGION").then(|| "ap-south-1".to_string());
        let none = |_: &str| None;
        assert_eq!(region(Some("us-west-2".into()), Some(&cfg), env).expect("flag"), "us-west-2");
        assert_eq!(region(None, Some(&cfg), env).expect("config"), "eu-west-1");
        assert_eq!(region(None, None, env).expect("AWS_REGION"), "ap-south-1");
        let err = region(None, None, none).expect_err("no region");
        assert!(format!("{err}").contains("AWS_REGION"), "{err}");
        let table = named(None, Some(&cfg), BridgeConfig::table, "table").expect_err("no table");
        assert!(format!("{table}").contains("--table") && format!("{table}").contains("[ledger] table"), "{table}");
    }
}
