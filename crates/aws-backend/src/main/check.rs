//! `check-config`: a configuration checked before a run. Every problem of the file is printed
//! at once (exit 2); with `--aws`, the account is checked as a run would use it
//! (`aws_backend::preflight`), and a failed check exits [`EXIT_NEEDS_OPERATOR`].

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use aws_backend::preflight::{self, Check, Finding, Outcome, PreflightReport};
use aws_backend::sdk::{DynamoLeases, SdkEc2};
use aws_backend::standby::LeaseTable as _;
use aws_backend::{AwsBootConfig, ConfigError, LedgerStore};

use crate::ledger::read_key_seed;
use crate::wall_clock;

/// The configuration cannot be used: it does not read, parse or pass the checks.
pub(crate) const EXIT_CONFIG: u8 = crate::exit::Exit::Config.code();
/// The check ran and found something the operator must fix: `check-config --aws`, an account
/// a run would fail in; `status`, grants past their deadline or a lease nobody holds.
pub(crate) const EXIT_NEEDS_OPERATOR: u8 = crate::exit::Exit::NeedsOperator.code();

/// `check-config`: prints every problem of `config`, or a summary of it and, with `aws`, of
/// the account check.
pub(crate) async fn check_config(config: &Path, aws: bool) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let cfg = match AwsBootConfig::load(config) {
        Ok(cfg) => cfg,
        Err(err) => {
            for line in config_error_lines(config, &err) {
                writeln!(stdout, "{line}").context("writing to stdout")?;
            }
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for line in summary(config, &cfg) {
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    if !aws {
        return Ok(ExitCode::SUCCESS);
    }
    stdout.flush().context("writing to stdout")?;
    let port = SdkEc2::new(&cfg).await;
    let mut report = preflight::check_account(&cfg, &port, &port).await;
    report.findings.extend(check_ledger(&cfg).await);
    for line in report_lines(&report) {
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NEEDS_OPERATOR) })
}

/// The ledger as a run would open it: the file ledger's directory exists; or the DynamoDB
/// table answers a read of the group's lease (GetItem) and the group's key seed file reads.
/// Nothing is created or written.
async fn check_ledger(cfg: &AwsBootConfig) -> Vec<Finding> {
    let finding = |subject: String, outcome: Outcome, detail: String| Finding {
        check: Check::Ledger,
        region: None,
        subject,
        outcome,
        detail,
    };
    match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let subject = path.display().to_string();
            if dir.is_dir() {
                let state = if path.exists() { "exists" } else { "will be created at the first run" };
                vec![finding(subject, Outcome::Passed, format!("the ledger file {state}"))]
            } else {
                vec![finding(
                    subject,
                    Outcome::Failed,
                    format!("its directory {} does not exist: create it, or fix `ledger_path`", dir.display()),
                )]
            }
        }
        LedgerStore::DynamoDb(ledger) => {
            let mut findings = Vec::new();
            let subject = format!("table {} in {}", ledger.table, ledger.region);
            match wall_clock() {
                Ok(clock) => match DynamoLeases::connect(cfg, &ledger, clock).await.holder().await {
                    Ok(held) => {
                        let lease = match held {
                            Some(h) => {
                                format!("group {}'s lease last held by {} (epoch {})", ledger.group, h.holder, h.epoch)
                            }
                            None => format!("group {}'s lease never held", ledger.group),
                        };
                        findings.push(finding(subject, Outcome::Passed, format!("answers; {lease}")));
                    }
                    Err(err) => findings.push(finding(
                        subject,
                        Outcome::Failed,
                        format!(
                            "reading the group's lease failed: {err}; a missing table is created with `ledger-dynamodb \
                             create-table`, a refused read needs statement UsageLedgerTable of docs/iam-policy.json"
                        ),
                    )),
                },
                Err(err) => findings.push(finding(subject, Outcome::Failed, format!("{err:#}"))),
            }
            let seed = ledger.key_seed_path.display().to_string();
            // The seed is read to check it, never printed.
            match read_key_seed(&ledger.key_seed_path) {
                Ok(_) => findings.push(finding(seed, Outcome::Passed, "the group's key seed reads".into())),
                Err(err) => findings.push(finding(
                    seed,
                    Outcome::Failed,
                    format!(
                        "{err:#}: copy the group's key seed file here from another bridge of the group (see \"Running a standby\")"
                    ),
                )),
            }
            findings
        }
    }
}

/// What a configuration that does not load prints: every problem, one line each, and what
/// to do next.
fn config_error_lines(config: &Path, err: &ConfigError) -> Vec<String> {
    match err.problems() {
        [] => vec![format!("error: {err}")],
        problems => {
            let mut lines: Vec<String> = problems.iter().map(|p| format!("error: {p}")).collect();
            lines.push(format!(
                "config {}: {} problem{}; fix {} and run `aws-backend check-config` again",
                config.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                if problems.len() == 1 { "it" } else { "them" },
            ));
            lines
        }
    }
}

/// The short summary of a good configuration, then its warnings.
fn summary(config: &Path, cfg: &AwsBootConfig) -> Vec<String> {
    let regions: Vec<&str> = cfg.regions.iter().map(|r| r.as_str()).collect();
    let ledger = match cfg.ledger_store() {
        LedgerStore::File { path } => format!("file {}", path.display()),
        LedgerStore::DynamoDb(d) => format!("DynamoDB table {} in {} (group {})", d.table, d.region, d.group),
    };
    let networks: Vec<String> =
        cfg.regions
            .iter()
            .map(|r| {
                if cfg.network.contains_key(r.as_str()) {
                    format!("{r}: [network]")
                } else {
                    format!("{r}: default VPC")
                }
            })
            .collect();
    let mut lines = vec![
        format!("config {} is good", config.display()),
        format!("  owner:     {}", cfg.owner),
        format!("  regions:   {}", regions.join(", ")),
        format!("  families:  {}", cfg.instance_families.join(", ")),
        format!("  networks:  {}", networks.join(", ")),
        format!("  ledger:    {ledger}"),
        format!("  endpoint:  {}", cfg.endpoint_url.as_deref().unwrap_or("AWS (the SDK's resolution)")),
    ];
    lines.extend(cfg.warnings().into_iter().map(|w| format!("warning: {w}")));
    lines
}

/// One line per finding, then a count.
fn report_lines(report: &PreflightReport) -> Vec<String> {
    let mut lines: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            let outcome = match f.outcome {
                Outcome::Passed => "ok",
                Outcome::Failed => "FAILED",
                Outcome::Unchecked => "unchecked",
            };
            let check =
                serde_json::to_value(f.check).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            format!("{outcome:<9} {check:<11} {:<14} {}: {}", f.region.as_deref().unwrap_or("-"), f.subject, f.detail)
        })
        .collect();
    lines.push(format!(
        "account check: {} passed, {} failed, {} unchecked",
        report.count(Outcome::Passed),
        report.count(Outcome::Failed),
        report.count(Outcome::Unchecked)
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_gets_a_line_and_the_count_says_what_to_do() {
        let err = AwsBootConfig::from_toml(
            r#"
            regions = []
            instance_families = []
            owner = "o"
            ami = {}
            ledger_path = "/l"
            almanac = { epoch_unix_ms = 0, tick_ms = 1000 }
            guest = { content_store_url = "http://127.0.0.1:9/blobs/{hash}" }
            "#,
        )
        .expect_err("refused");
        let lines = config_error_lines(Path::new("c.toml"), &err);
        assert!(lines[0].starts_with("error: config field `regions`"), "{lines:?}");
        assert!(lines[1].starts_with("error: config field `instance_families`"), "{lines:?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("config c.toml: 2 problems; fix them and run `aws-backend check-config` again")
        );
    }

    #[test]
    fn a_report_prints_a_line_per_finding_and_the_counts() {
        let report = PreflightReport {
            findings: vec![Finding {
                check: Check::Subnet,
                region: Some("us-east-1".into()),
                subject: "subnet-1".into(),
                outcome: Outcome::Failed,
                detail: "does not exist".into(),
            }],
        };
        let lines = report_lines(&report);
        assert_eq!(lines[0], "FAILED    subnet      us-east-1      subnet-1: does not exist");
        assert_eq!(lines[1], "account check: 0 passed, 1 failed, 0 unchecked");
    }
}
