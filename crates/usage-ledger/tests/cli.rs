//! The operator CLI on a log the test writes.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use backend_api::{AlmanacTick, GrantId, UsageMetrics};
use usage_ledger::{Event, Ledger, ObservedState, ResourceKind, TerminationReason};

const T0: u64 = 1_700_000_000_000;
const A: GrantId = GrantId([0xaa; 32]);
const B: GrantId = GrantId([0xbb; 32]);

fn run(args: &[&str], path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usage-ledger")).args(args).arg(path).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Grant A runs for 120 s and settles; grant B is admitted and holds a key pair.
fn write_log(path: &Path) -> UsageMetrics {
    write_log_with(path, 0)
}

/// [`write_log`], then `reaped` more small frames (orphans reaped for grant A), in the same
/// session: a second open could race the other test's child processes, which may briefly hold
/// a copy of the file and its lock between fork and exec.
fn write_log_with(path: &Path, reaped: usize) -> UsageMetrics {
    let (mut ledger, _) = Ledger::open_file(path).unwrap();
    let admitted = |name: &str| Event::GrantAdmitted {
        region: "us-east-1".into(),
        instance_type: "t3.small".into(),
        vcpus: 2,
        memory_mib: 2048,
        storage_bytes: 1 << 30,
        valid_to: AlmanacTick(10),
        valid_to_unix_ms: T0 + 600_000,
        key_name: format!("k-{name}"),
        group_name: format!("g-{name}"),
    };
    let events = vec![
        admitted("a"),
        Event::LaunchRequested {
            client_token: "tok".into(),
            instance_type: "t3.small".into(),
            image_id: Some("ami-0123456789abcdef0".into()),
        },
        Event::InstanceLaunched {
            instance_id: "i-a".into(),
            client_token: "tok".into(),
            instance_type: "t3.small".into(),
            vcpus: 2,
            memory_mib: 2048,
        },
        Event::InstanceStateObserved {
            instance_id: "i-a".into(),
            state: ObservedState::Running,
            observed_at_unix_ms: T0 + 10_000,
        },
        Event::NetworkSampled {
            instance_id: "i-a".into(),
            bytes_in: 1000,
            bytes_out: 234,
            window_start_unix_ms: T0,
            window_end_unix_ms: T0 + 60_000,
        },
        Event::TerminationRequested { reason: TerminationReason::Deadline },
        Event::InstanceTerminated { instance_id: "i-a".into() },
    ];
    for (i, event) in events.into_iter().enumerate() {
        let at = if i == 5 { T0 + 130_000 } else { T0 + 1_000 * i as u64 };
        ledger.append(A, at, event).unwrap();
    }
    let usage = ledger.usage(&A).unwrap();
    ledger.append(A, T0 + 140_000, Event::GrantSettled { usage }).unwrap();
    ledger
        .append(A, T0 + 150_000, Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: "k".into() })
        .unwrap();
    ledger.append(B, T0, admitted("b")).unwrap();
    ledger.append(B, T0, Event::KeyPairImported { key_name: "k-b".into(), key_pair_id: "key-b".into() }).unwrap();
    let reaped = (0..reaped).map(|i| {
        (A, T0 + 200_000, Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: format!("k{i}") })
    });
    ledger.append_batch(reaped).unwrap();
    usage
}

#[test]
fn verify_usage_and_dump_work_on_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.log");
    let usage = write_log(&path);
    assert_eq!(
        usage,
        UsageMetrics { cpu_seconds: 240, ram_mib_seconds: 2048 * 120, network_bytes: 1234, storage_bytes: 1 << 30 }
    );

    let verify = run(&["verify"], &path);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).contains("intact: 11 records, 2 grants (1 live)"), "{}", stdout(&verify));

    let all = run(&["usage"], &path);
    assert!(all.status.success(), "{}", stderr(&all));
    let json: serde_json::Value = serde_json::from_str(&stdout(&all)).unwrap();
    assert_eq!(json["grants"].as_array().unwrap().len(), 2);
    assert_eq!(json["grants"][0]["grant"], A.to_hex());
    assert_eq!(json["grants"][0]["phase"], "Settled");
    assert_eq!(serde_json::from_value::<UsageMetrics>(json["grants"][0]["usage"].clone()).unwrap(), usage);
    assert_eq!(serde_json::from_value::<UsageMetrics>(json["total"].clone()).unwrap(), usage);

    let one = run(&["usage", "--grant", &B.to_hex()], &path);
    assert!(one.status.success(), "{}", stderr(&one));
    let json: serde_json::Value = serde_json::from_str(&stdout(&one)).unwrap();
    assert_eq!(json["grant"], B.to_hex());
    assert_eq!(json["phase"], "Provisioning");

    let unknown = run(&["usage", "--grant", &"cc".repeat(32)], &path);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains(&"cc".repeat(32)), "{}", stderr(&unknown));

    let dump = run(&["dump"], &path);
    assert!(dump.status.success(), "{}", stderr(&dump));
    let lines: Vec<serde_json::Value> = stdout(&dump).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 11);
    assert_eq!(lines[0]["grant"], A.to_hex());
    assert_eq!(lines[0]["seq"], 0);
    assert_eq!(lines[3]["event"]["InstanceStateObserved"]["state"], "Running");
    assert_eq!(lines[10]["event"]["KeyPairImported"]["key_pair_id"], "key-b");
}

#[test]
fn verify_names_the_offset_of_a_corrupt_frame_and_of_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.log");
    // More than one write's worth of frames follows the frame to damage, so the damage cannot
    // be a torn write.
    write_log_with(&path, 4_000);
    let original = std::fs::read(&path).unwrap();

    // Find the frames' offsets through the dump-independent scanner.
    let mut offsets = Vec::new();
    let outcome = usage_ledger::scan_file(&path, |offset, _, _| {
        offsets.push(offset);
        Ok::<(), usage_ledger::StoreError>(())
    })
    .unwrap();
    let data_end = outcome.end_offset as usize;
    assert!(data_end - offsets[3] as usize > usage_ledger::file::MAX_WRITE_BYTES);
    assert!(outcome.free_bytes > 0, "the file is preallocated");
    let mut corrupt = original.clone();
    corrupt[offsets[2] as usize + 20] ^= 0x10;
    std::fs::write(&path, &corrupt).unwrap();
    let verify = run(&["verify"], &path);
    assert!(!verify.status.success());
    let message = stderr(&verify);
    assert!(message.contains(&format!("byte offset {}", offsets[2])), "{message}");
    assert!(message.contains("CRC32"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), corrupt, "verify must not modify the file");

    // A torn tail: verify fails naming it; usage and dump still read the intact frames.
    std::fs::write(&path, &original[..data_end - 3]).unwrap();
    let verify = run(&["verify"], &path);
    assert!(!verify.status.success());
    let last = offsets.last().unwrap();
    assert!(stderr(&verify).contains(&format!("torn tail at byte offset {last}")), "{}", stderr(&verify));
    let dump = run(&["dump"], &path);
    assert!(dump.status.success());
    assert_eq!(stdout(&dump).lines().count(), offsets.len() - 1);
    assert!(stderr(&dump).contains("torn tail"), "{}", stderr(&dump));

    // Not a ledger at all.
    std::fs::write(&path, b"{\"not\": \"a ledger\"}").unwrap();
    let verify = run(&["verify"], &path);
    assert!(!verify.status.success());
    assert!(stderr(&verify).contains("not a usage ledger"), "{}", stderr(&verify));
}
