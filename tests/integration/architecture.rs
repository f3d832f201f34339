//! The code map's invariants (docs/ARCHITECTURE.md, "Invariants of the code"), checked on the
//! sources themselves, so that the map cannot drift from the code without a red test.

use std::path::{Path, PathBuf};

/// The longest a non-test source file may be.
const FILE_LINES_MAX: usize = 600;
/// The longest one `impl` block may be.
const IMPL_LINES_MAX: usize = 400;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds tests/").to_path_buf()
}

/// Every `.rs` file under `dir`, recursively, as (path relative to the workspace, text).
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let relative = path.strip_prefix(root).expect("under the workspace").display().to_string();
                out.push((relative, text));
            }
        }
    }
    let root = workspace();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out
}

/// True for a file that holds only tests: `tests.rs`, `*_tests.rs`, or under a `tests/` folder.
fn is_test_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "tests.rs" || name.ends_with("_tests.rs") || path.contains("/tests/")
}

/// The text of `text` before its first `#[cfg(test)]` module: the shipped part of a file.
fn shipped(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ").map_or(text, |at| &text[..at])
}

/// Each top-level `impl` block of `text` as (first line number, length in lines): from a line
/// starting with `impl` to the next line that is exactly `}`.
fn impl_blocks(text: &str) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let mut open: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        match open {
            None if (line.starts_with("impl") || line.starts_with("pub(crate) impl"))
                && !line.trim_end().ends_with(';')
                && !line.trim_end().ends_with("{}") =>
            {
                open = Some(n);
            }
            Some(start) if line == "}" => {
                blocks.push((start + 1, n - start + 1));
                open = None;
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn no_shipped_source_file_is_over_600_lines_and_no_impl_block_over_400() {
    let mut long = Vec::new();
    for dir in ["crates/aws-backend/src", "crates/sim-ec2/src", "crates/usage-ledger/src"] {
        for (path, text) in sources(dir) {
            if is_test_file(&path) {
                continue;
            }
            let lines = text.lines().count();
            if lines > FILE_LINES_MAX {
                long.push(format!("{path}: {lines} lines (at most {FILE_LINES_MAX}: split it by phase)"));
            }
            for (line, len) in impl_blocks(shipped(&text)) {
                if len > IMPL_LINES_MAX {
                    long.push(format!("{path}:{line}: an impl block of {len} lines (at most {IMPL_LINES_MAX})"));
                }
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

#[test]
fn the_impl_block_finder_sees_top_level_blocks_only() {
    let text = "impl A {\n    fn f() {\n    }\n}\nimpl B for C;\nstruct D;\nimpl E {\n}\n";
    assert_eq!(impl_blocks(text), vec![(1, 4), (7, 2)]);
    assert!(is_test_file("crates/x/src/guest/script_tests.rs"));
    assert!(is_test_file("crates/x/src/config/tests.rs"));
    assert!(!is_test_file("crates/x/src/backend/provision.rs"));
}

/// The files under `dir` whose shipped text contains `needle`, other than `allowed`.
fn holders(dir: &str, needle: &str, allowed: &[&str]) -> Vec<String> {
    sources(dir)
        .into_iter()
        .filter(|(path, text)| !is_test_file(path) && shipped(text).contains(needle))
        .map(|(path, _)| path)
        .filter(|path| !allowed.iter().any(|a| path.ends_with(a)))
        .collect()
}

#[test]
fn no_phase_reads_a_switch() {
    let readers = holders("crates/aws-backend/src", "switches.", &["src/switches.rs"]);
    assert!(readers.is_empty(), "switch fields read outside switches.rs (ask a hook instead): {readers:?}");
}

#[test]
fn only_the_journal_holds_the_ledger() {
    let holders = holders("crates/aws-backend/src", "SharedLedger", &["src/journal.rs"]);
    assert!(holders.is_empty(), "the ledger is held outside journal.rs (append through the journal): {holders:?}");
}

#[test]
fn only_the_ec2_client_and_the_pollers_hold_the_port_and_the_pacer() {
    // backend.rs hands BackendParts' port to the EC2 client, and keeps nothing of it.
    let port =
        holders("crates/aws-backend/src", "Arc<dyn Ec2Port>", &["src/ec2.rs", "src/poller.rs", "src/backend.rs"]);
    assert!(port.is_empty(), "the port is held outside ec2.rs and poller.rs: {port:?}");
    let pacer = holders("crates/aws-backend/src", "Arc<Pacer>", &["src/ec2.rs", "src/poller.rs"]);
    assert!(pacer.is_empty(), "the pacer is held outside ec2.rs and poller.rs: {pacer:?}");
}
