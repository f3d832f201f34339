//! `cargo xtask sim` exits with the safety code and prints a reproduce line when an invariant
//! breaks, with the hung code and a reproduce line when a run outlives the watchdog, and exits 0
//! when none does.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sim")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running xtask: {e}"))
}

#[test]
fn a_deliberate_bug_exits_with_the_safety_code_and_a_reproduce_line() {
    let out =
        sim(&["--seed", "3", "--grants", "12", "--hours", "0.2", "--faults", "none", "--break", "skip-group-delete"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains(
            "reproduce: cargo xtask sim --seed 3 --grants 12 --hours 0.2 --faults none --break skip-group-delete"
        ),
        "{stderr}"
    );
}

#[test]
fn a_clean_run_exits_zero_and_json_is_one_object() {
    let out = sim(&["--seed", "4", "--grants", "12", "--hours", "0.2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    assert_eq!(summary["seed"], 4);
    assert_eq!(summary["violations"].as_array().map(Vec::len), Some(0));
}

#[test]
fn an_unknown_breakage_or_checker_is_a_usage_error_naming_the_choices() {
    let out = sim(&["--break", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skip-group-delete"));
    let out = sim(&["--disable-checker", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metering"));
}

#[test]
fn a_run_past_the_watchdog_exits_with_the_hung_code_and_a_reproduce_line() {
    // Ten virtual hours of 5,000 grants take far longer than a second in any build.
    let out = sim(&["--seed", "5", "--grants", "5000", "--hours", "10", "--watchdog-s", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "stderr: {stderr}");
    assert!(
        stderr.contains(
            "SEED=5: Hung run (no result within 1 s, the watchdog stopped the sweep); reproduce: cargo xtask sim \
             --seed 5 --grants 5000 --hours 10 --faults default --watchdog-s 1"
        ),
        "{stderr}"
    );
}
