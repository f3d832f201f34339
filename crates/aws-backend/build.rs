//! Stamps the build with the git commit it was built from (`AWS_BACKEND_GIT_COMMIT`, read by
//! `aws_backend::version()`): `git rev-parse --short HEAD` when git and a repository are there,
//! `unknown` otherwise, so a build from a source archive still succeeds.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AWS_BACKEND_GIT_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself, the branch it names, and packed refs, each only
    // if it exists (Cargo reruns a build script on every build while a watched file is
    // missing, which would rebuild this crate and its dependents every time). A branch whose
    // file is packed away later is a change Cargo sees, and the next run watches packed-refs.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|branch| git(&["rev-parse", "--git-path", &branch])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    .filter(|path| std::path::Path::new(path).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
