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

#[test]
fn usage_over_a_billing_period_and_export_of_settled_grants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let usage = write_log(&path);

    // Grant A settled at T0 + 140 s; B is live.
    let since = (T0 + 100_000).to_string();
    let until = (T0 + 200_000).to_string();
    let period = run(&["usage", "--since", &since, "--until", &until], &path);
    assert!(period.status.success(), "{}", stderr(&period));
    let json: serde_json::Value = serde_json::from_str(&stdout(&period)).unwrap();
    assert_eq!(json["settled"].as_array().unwrap().len(), 1);
    assert_eq!(json["settled"][0]["grant"], A.to_hex());
    assert_eq!(json["settled"][0]["settled_unix_ms"], T0 + 140_000);
    assert_eq!(json["settled"][0]["final"], true);
    assert_eq!(json["settled"][0]["network"], "complete");
    assert_eq!(serde_json::from_value::<UsageMetrics>(json["total_settled"].clone()).unwrap(), usage);
    assert_eq!(json["live"][0]["grant"], B.to_hex());
    assert_eq!(json["live"][0]["final"], false);

    let later = run(&["usage", "--since", &(T0 + 140_001).to_string()], &path);
    let json: serde_json::Value = serde_json::from_str(&stdout(&later)).unwrap();
    assert!(json["settled"].as_array().unwrap().is_empty(), "the period starts after the settlement");
    assert_eq!(json["live"].as_array().unwrap().len(), 1, "live grants are always shown");

    let export = run(&["export"], &path);
    assert!(export.status.success(), "{}", stderr(&export));
    let lines: Vec<serde_json::Value> = stdout(&export).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["schema"], 1);
    assert_eq!(lines[0]["grant"], A.to_hex());
    assert_eq!(lines[0]["attempt"], 0);
    assert_eq!(lines[0]["settled_unix_ms"], T0 + 140_000);
    assert_eq!(lines[0]["usage"]["cpu_seconds"], usage.cpu_seconds);
    assert_eq!(lines[0]["final"], true);
    let none = run(&["export", "--until", "2023-01-01"], &path);
    assert!(stdout(&none).is_empty(), "T0 is in November 2023");
}

/// Writes a ledger in several small segments with a snapshot in the middle.
fn write_segmented(path: &Path) {
    let options =
        usage_ledger::FileOptions { segment_bytes_max: 300, snapshots: None, archive_covered_segments: false };
    let (mut ledger, _) = Ledger::open_file_with(path, options).unwrap();
    let reap = |i: usize| Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: format!("key-{i}") };
    for i in 0..20 {
        ledger.append(GrantId([i as u8; 32]), T0 + i as u64, reap(i)).unwrap();
    }
    ledger.snapshot().unwrap();
    for i in 20..30 {
        ledger.append(GrantId([i as u8; 32]), T0 + i as u64, reap(i)).unwrap();
    }
}

#[test]
fn verify_detects_bit_flips_and_truncations_of_segments_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    write_segmented(&path);
    let segments = usage_ledger::list_segments(&path).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let snapshots = usage_ledger::snapshot::list_snapshots(&path).unwrap();
    assert_eq!(snapshots.len(), 1);
    let intact = run(&["verify"], &path);
    assert!(intact.status.success(), "{}", stderr(&intact));
    assert!(stdout(&intact).contains("intact: 30 records, 30 grants (0 live)"), "{}", stdout(&intact));
    assert!(stdout(&intact).contains("1 snapshot(s) agreeing"), "{}", stdout(&intact));

    let damage = |file: &Path, change: &dyn Fn(&mut Vec<u8>), expect: &str| {
        let original = std::fs::read(file).unwrap();
        let mut bytes = original.clone();
        change(&mut bytes);
        std::fs::write(file, &bytes).unwrap();
        let verify = run(&["verify"], &path);
        assert!(!verify.status.success(), "{} damaged, verify passed", file.display());
        assert!(stderr(&verify).contains(expect), "{}: {}", file.display(), stderr(&verify));
        assert_eq!(std::fs::read(file).unwrap(), bytes, "verify modifies nothing");
        // The tools still read the books, from the log when the snapshot is the damaged part.
        if file == snapshots[0].1 {
            let usage = run(&["usage"], &path);
            assert!(usage.status.success(), "{}", stderr(&usage));
            assert!(stderr(&usage).contains("skipped"), "{}", stderr(&usage));
        }
        std::fs::write(file, original).unwrap();
    };
    let snapshot = &snapshots[0].1;
    let sealed = &segments[1].1;
    let active = &segments.last().unwrap().1;
    for at in [0, 9, 20, 30, 200] {
        damage(
            snapshot,
            &|b| {
                let i = at.min(b.len() - 1);
                b[i] ^= 0x10;
            },
            "damaged snapshot",
        );
    }
    damage(snapshot, &|b| b.truncate(b.len() - 1), "damaged snapshot");
    damage(snapshot, &|b| b.truncate(10), "damaged snapshot");
    damage(sealed, &|b| b[20] ^= 0x01, "corrupt frame in a sealed segment");
    damage(sealed, &|b| b[12] ^= 0x80, "header");
    damage(sealed, &|b| b.truncate(b.len() - 2), "sealed segment");
    damage(&segments[0].1, &|b| b.truncate(b.len() - 5), "sealed segment");
    // The active segment is preallocated: cut into its last frame, not just its free space.
    let end = usage_ledger::scan_file(active, |_, _, _| Ok::<(), usage_ledger::StoreError>(())).unwrap().end_offset;
    damage(active, &|b| b.truncate(end as usize - 3), "torn tail");
    // A flip in the last frame is indistinguishable from a torn write: reported as one.
    damage(active, &|b| b[end as usize - 1] ^= 0x04, "torn tail");
    // A whole segment missing.
    let moved = dir.path().join("elsewhere");
    std::fs::rename(sealed, &moved).unwrap();
    let verify = run(&["verify"], &path);
    assert!(!verify.status.success());
    assert!(stderr(&verify).contains("missing"), "{}", stderr(&verify));
    std::fs::rename(&moved, sealed).unwrap();
    assert!(run(&["verify"], &path).status.success());
}
