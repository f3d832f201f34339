//! The docs name only commands and options the binary has: every `aws-backend ...` the
//! documents mention, in code blocks or inline, names a subcommand of [`Cli`] and only options
//! that subcommand (or the command line as a whole) takes. A document that shows
//! `aws-backend usage`, which never existed, fails here.

use clap::CommandFactory as _;

use crate::Cli;

/// The documents an operator reads, with their text.
const DOCS: [(&str, &str); 5] = [
    ("README.md", include_str!("../../../../README.md")),
    ("docs/operations.md", include_str!("../../../../docs/operations.md")),
    ("docs/grants-format.md", include_str!("../../../../docs/grants-format.md")),
    ("docs/metering.md", include_str!("../../../../docs/metering.md")),
    ("docs/ARCHITECTURE.md", include_str!("../../../../docs/ARCHITECTURE.md")),
];

/// Each mention of the binary in `text`: the words after `aws-backend` (or `cargo run -p
/// aws-backend --`) up to the end of the inline code span, the line or a `#` comment.
fn mentions(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("aws-backend") {
            let before = &rest[..at];
            let after = &rest[at + "aws-backend".len()..];
            rest = after;
            // Only the binary: not `crates/aws-backend`, `aws-backend`'s (the crate), `-p aws-backend`
            // (a cargo line, whose `--` is handled below) or `aws_backend`.
            let starts_command = before.is_empty() || before.ends_with('`') || before.ends_with(' ');
            if !starts_command || before.ends_with("-p ") || before.ends_with("/") {
                let Some(cargo) = after.strip_prefix(" --") else { continue };
                if !before.ends_with("-p ") {
                    continue;
                }
                found.push(words(cargo));
                continue;
            }
            if !after.starts_with(' ') {
                continue;
            }
            found.push(words(after));
        }
    }
    found.retain(|w| !w.is_empty());
    found
}

/// The words of a command up to the end of its code span; `[--a|--b]` reads as `--a --b`.
fn words(text: &str) -> Vec<String> {
    let span = text.split('`').next().unwrap_or_default();
    span.split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '|' | ',' | ')' | '(' | ';' | ':'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_the_docs_mention_exists_with_the_options_shown() {
    let cli = Cli::command();
    let global: Vec<String> = cli.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
    let mut problems = Vec::new();
    let mut seen = 0;
    for (doc, text) in DOCS {
        for words in mentions(text) {
            let Some(first) = words.iter().find(|w| !w.starts_with('-')) else { continue };
            // Prose such as "`aws-backend` (lib)" or "aws-backend run's": not a command line.
            if !first.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            let Some(sub) = cli.find_subcommand(first) else {
                if words.iter().any(|w| w.starts_with("--")) || words.len() == 1 {
                    problems.push(format!("{doc}: `aws-backend {}`: no subcommand {first:?}", words.join(" ")));
                }
                continue;
            };
            seen += 1;
            let known: Vec<String> = sub.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
            for flag in words.iter().filter_map(|w| w.strip_prefix("--")) {
                let flag = flag.split('=').next().unwrap_or_default();
                let builtin = matches!(flag, "help" | "version");
                if !builtin && !known.iter().chain(&global).any(|k| k == flag) {
                    problems.push(format!("{doc}: `aws-backend {}`: {first} takes no --{flag}", words.join(" ")));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the docs disagree with the command line:\n{}", problems.join("\n"));
    assert!(seen >= 10, "only {seen} command lines found in the docs: is the scanner still reading them?");
}

#[test]
fn the_scanner_finds_a_command_that_does_not_exist() {
    let text = "Run `aws-backend usage --config FILE` to see the bill; see crates/aws-backend/src.";
    let found = mentions(text);
    assert_eq!(found, vec![vec!["usage".to_string(), "--config".into(), "FILE".into()]]);
    let cli = Cli::command();
    assert!(cli.find_subcommand("usage").is_none());
    let cargo = mentions("cargo run -p aws-backend -- status --config moto.toml");
    assert_eq!(cargo, vec![vec!["status".to_string(), "--config".into(), "moto.toml".into()]]);
}
