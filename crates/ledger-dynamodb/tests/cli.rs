//! The `ledger-dynamodb` binary against moto's DynamoDB: create a table, import a file ledger,
//! then `verify`, `usage`, `dump`, `lease` and `export` it, as an operator would.
//!
//! Without `MOTO_ENDPOINT` this says loudly that it did not run, and fails under
//! `REQUIRE_MOTO=1` (as in `cargo xtask ci`).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use backend_api::{AlmanacTick, GrantId};
use usage_ledger::{Event, Ledger, Record, StoreError, scan_file};

fn moto_endpoint() -> Option<String> {
    match std::env::var("MOTO_ENDPOINT") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ => {
            assert!(
                !std::env::var("REQUIRE_MOTO").is_ok_and(|v| v == "1"),
                "REQUIRE_MOTO=1 but MOTO_ENDPOINT is not set: start `moto_server -H 127.0.0.1 -p 5055` and set \
                 MOTO_ENDPOINT=http://127.0.0.1:5055, or run `cargo xtask ci`, which does both"
            );
            let _ = writeln!(
                std::io::stderr(),
                "\n*** moto test `ledger-dynamodb cli` was NOT RUN: MOTO_ENDPOINT is not set (run `cargo xtask ci`).\n"
            );
            None
        }
    }
}

/// Runs the binary against moto; its stdout, or a panic with its stderr.
fn run(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ledger-dynamodb"))
        .args(["--endpoint-url", endpoint])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        // The tool takes no default region: moto answers for any.
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "ledger-dynamodb {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn file_records(path: &Path) -> Vec<Record> {
    let mut records = Vec::new();
    scan_file(path, |_, record, _| {
        records.push(record);
        Ok::<(), StoreError>(())
    })
    .unwrap();
    records
}

#[test]
fn import_then_verify_usage_dump_lease_and_export() {
    let Some(endpoint) = moto_endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let hash = {
        let (mut ledger, _) = Ledger::open_file(&path).unwrap();
        for n in 1..=3u8 {
            ledger
                .append(
                    GrantId([n; 32]),
                    1_800_000_000_000 + u64::from(n),
                    Event::GrantAdmitted {
                        region: "us-east-1".into(),
                        instance_type: "m7i.large".into(),
                        vcpus: 2,
                        memory_mib: 8192,
                        storage_bytes: 20 << 30,
                        valid_to: AlmanacTick(1000),
                        valid_to_unix_ms: 1_800_003_600_000,
                        key_name: format!("cb-{n}"),
                        group_name: format!("cb-{n}"),
                    },
                )
                .unwrap();
            ledger
                .append(
                    GrantId([n; 32]),
                    1_800_000_001_000,
                    Event::KeyPairImported { key_name: format!("cb-{n}"), key_pair_id: format!("key-{n}") },
                )
                .unwrap();
        }
        hex_of(ledger.records_hash())
    };
    let table = format!("ledger-cli-{}", std::process::id());
    run(&endpoint, &["create-table", "--table", &table]);
    let imported = run(&endpoint, &["import", "--from", path.to_str().unwrap(), "--table", &table, "--group", "g1"]);
    assert!(imported.contains("imported 6 records") && imported.contains(&hash), "{imported}");

    let verified = run(&endpoint, &["verify", "--table", &table]);
    assert!(verified.contains("intact: 6 records, 3 grants (3 live)"), "{verified}");

    let usage: serde_json::Value = serde_json::from_str(&run(&endpoint, &["usage", "--table", &table])).unwrap();
    assert_eq!(usage["grants"].as_array().unwrap().len(), 3);

    let dumped = run(&endpoint, &["dump", "--table", &table]);
    let expected: String =
        file_records(&path).iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect::<String>();
    assert_eq!(dumped, expected);

    // The import released its lease: the bridge may take it at once.
    let lease: serde_json::Value =
        serde_json::from_str(&run(&endpoint, &["lease", "--table", &table, "--group", "g1"])).unwrap();
    assert_eq!((lease["epoch"].as_u64(), lease["expires_unix_ms"].as_u64()), (Some(1), Some(0)));

    let back = dir.path().join("exported");
    let exported = run(&endpoint, &["export", "--table", &table, "--to", back.to_str().unwrap()]);
    assert!(exported.contains(&hash), "{exported}");
    assert_eq!(file_records(&back), file_records(&path));
}

fn hex_of(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
