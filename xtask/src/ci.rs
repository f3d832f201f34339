//! `cargo xtask ci`: everything CI checks, so a green local run means a green CI.
//!
//! Steps: formatting, clippy with warnings denied, docs with warnings denied, the dependency
//! invariants of docs/ARCHITECTURE.md, then every test with moto's server (EC2, and DynamoDB for
//! the ledger store's tests, on one port) running on
//! 127.0.0.1 (installed with pip when missing) and cloud-init's schema validator present
//! (installed with apt-get when missing), then the simulation: `sim --self-test`, a fixed-seed
//! swarm sweep with crashes and `--check-determinism`, the same with two replicas sharing the
//! ledger, and one seed drawn from the clock.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;

use crate::{run_cmd, workspace_root};

/// Seeds in CI's swarm sweep: about two minutes on two cores (each seed runs twice).
const SWEEP_SEEDS: &str = "100";
/// Seeds in CI's sweep with two replicas under one lease: about a minute.
const REPLICA_SWEEP_SEEDS: &str = "40";

/// The proptest seed of CI's test run.
const PROPTEST_SEED: &str = "20261129";

/// Arguments of `cargo xtask ci`.
#[derive(Args)]
pub struct CiArgs {
    /// Skip fmt, clippy and docs; run only the tests (for quick local iterations).
    #[arg(long)]
    tests_only: bool,
}

/// Runs every CI step in order and stops at the first failure.
pub fn run(args: CiArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.tests_only {
        run_cmd("cargo", &["fmt", "--all", "--", "--check"], &[])?;
        run_cmd("cargo", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
        run_cmd("cargo", &["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings")])?;
        check_dependency_invariants()?;
    }
    ensure_cloud_init()?;
    let moto = MotoServer::start()?;
    let endpoint = moto.endpoint.clone();
    eprintln!("moto_server listening on {endpoint}");
    run_cmd(
        "cargo",
        &["test", "--workspace", "--all-targets"],
        // A fixed proptest seed: CI's verdict is the same on every run of the same tree (a
        // local `cargo test` still draws fresh cases; PROPTEST_CASES=3000 makes it a soak).
        &[
            ("MOTO_ENDPOINT", &endpoint),
            ("REQUIRE_MOTO", "1"),
            ("REQUIRE_CLOUD_INIT", "1"),
            ("PROPTEST_RNG_SEED", PROPTEST_SEED),
        ],
    )?;
    drop(moto);
    // The simulation: every checker proven able to fail, a fixed-seed swarm sweep with crashes
    // run twice per seed for determinism, and one seed drawn from the clock (it prints its seed).
    let sim = ["run", "--quiet", "--release", "-p", "xtask", "--", "sim"];
    run_cmd("cargo", &[&sim[..], &["--self-test"]].concat(), &[])?;
    run_cmd(
        "cargo",
        &[&sim[..], &["--seed", "1", "--seeds", SWEEP_SEEDS, "--faults", "swarm", "--crashes", "--check-determinism"]]
            .concat(),
        &[],
    )?;
    run_cmd(
        "cargo",
        &[
            &sim[..],
            &[
                "--seed",
                "1001",
                "--seeds",
                REPLICA_SWEEP_SEEDS,
                "--faults",
                "swarm",
                "--crashes",
                "--replicas",
                "2",
                "--check-determinism",
            ],
        ]
        .concat(),
        &[],
    )?;
    run_cmd("cargo", &sim, &[])?;
    eprintln!("xtask ci: all green in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `backend-api` and `usage-ledger` hold no AWS crate (the DynamoDB store is `ledger-dynamodb`'s);
/// the simulation path (xtask) holds no AWS SDK crate.
fn check_dependency_invariants() -> anyhow::Result<()> {
    for (package, forbidden) in
        [("backend-api", "aws-"), ("usage-ledger", "aws-"), ("xtask", "aws-sdk-"), ("sim-ec2", "aws-sdk-")]
    {
        let out = Command::new("cargo")
            .args(["tree", "-p", package, "-e", "normal,build", "--prefix", "none"])
            .current_dir(workspace_root())
            .output()
            .context("running cargo tree")?;
        ensure!(out.status.success(), "cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr));
        let tree = String::from_utf8_lossy(&out.stdout);
        let offending: Vec<&str> = tree.lines().filter(|l| l.starts_with(forbidden)).collect();
        ensure!(
            offending.is_empty(),
            "architecture invariant broken: `{package}` depends on {offending:?}; keep {forbidden}* crates behind aws-backend's `sdk` feature or in ledger-dynamodb"
        );
        eprintln!("invariant: {package} depends on no {forbidden}* crate");
    }
    Ok(())
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn ensure_cloud_init() -> anyhow::Result<()> {
    if have("cloud-init", "--version") {
        return Ok(());
    }
    eprintln!("cloud-init is missing (its schema validator checks the rendered user data): installing with apt-get");
    run_cmd("apt-get", &["update", "-qq"], &[])?;
    run_cmd(
        "apt-get",
        &["install", "-y", "-qq", "--no-install-recommends", "cloud-init"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )?;
    ensure!(have("cloud-init", "--version"), "cloud-init still missing after apt-get install cloud-init");
    Ok(())
}

/// moto's EC2 server on a free loopback port, killed on drop.
struct MotoServer {
    child: Child,
    endpoint: String,
}

impl MotoServer {
    fn start() -> anyhow::Result<Self> {
        if !have("moto_server", "--help") {
            eprintln!("moto_server is missing: installing moto[server] with pip");
            run_cmd("python3", &["-m", "pip", "install", "--quiet", "moto[server]"], &[])?;
            ensure!(have("moto_server", "--help"), "moto_server still missing after pip install 'moto[server]'");
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server")?;
        let server = MotoServer { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
