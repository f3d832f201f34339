//! `cargo xtask ci`: everything CI checks, so a green local run means a green CI.
//!
//! Steps: formatting, clippy with warnings denied, docs with warnings denied, the dependency
//! invariants of docs/ARCHITECTURE.md, then every test with moto's server (EC2, and DynamoDB for
//! the ledger store's tests, on one port) running on 127.0.0.1 (moto pinned to
//! [`MOTO_VERSION`], installed with pip when missing or another version) and cloud-init's
//! schema validator present (installed with apt-get when missing), then the simulation (its
//! build in the `sim` profile, release with LTO, started in the background when CI starts): `sim --self-test`, fixed-seed
//! sweeps (swarm faults with crashes and `--check-determinism`, the same with two replicas
//! sharing the ledger, swarm faults without crashes, the default faults), and one seed drawn
//! from the clock. Each step's time is printed as it ends and all of them at the end.
//!
//! CI explores: every run draws a fresh proptest seed, prints it, and hands it to the tests as
//! `PROPTEST_RNG_SEED`; a failure is repeated by setting the printed variable, and proptest
//! keeps the failing case in the test's `proptest-regressions` file, to be committed.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use clap::Args;

use crate::{command, run_cmd, workspace_root};

// The sweeps' costs, measured in the `sim` profile's build: one core's seconds, each seed run twice
// where the sweep checks determinism; CI runs as many seeds at once as it has cores.

/// Seeds in CI's swarm sweep with crashes: about 60 s of one core.
const SWEEP_SEEDS: &str = "100";
/// Seeds in CI's sweep with two replicas under one lease: about 22 s of one core.
const REPLICA_SWEEP_SEEDS: &str = "40";
/// Seeds in CI's swarm sweep without crashes, the faults alone, where no recovery hides what a
/// fault left behind: about 20 s of one core.
const SWARM_SWEEP_SEEDS: &str = "40";
/// Seeds in CI's sweep with the default faults, the realistic mild world where no provision
/// may fail: about 4 s of one core.
const DEFAULT_SWEEP_SEEDS: &str = "20";

/// The moto release CI tests against: its answers are what the moto tests assert.
const MOTO_VERSION: &str = "5.2.1";

/// Arguments of `cargo xtask ci`.
#[derive(Args)]
pub struct CiArgs {
    /// Skip fmt, clippy and docs; run only the tests (for quick local iterations).
    #[arg(long)]
    tests_only: bool,
}

/// Runs every CI step in order and stops at the first failure; prints how long each took.
pub fn run(args: CiArgs) -> anyhow::Result<()> {
    let mut steps = Steps::new();
    let sim_build = SimBuild::start()?;
    if !args.tests_only {
        steps.run("fmt", "cargo", &["fmt", "--all", "--", "--check"], &[])?;
        steps.run("clippy", "cargo", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
        steps.run("doc", "cargo", &["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings")])?;
        check_dependency_invariants()?;
    }
    ensure_cloud_init()?;
    let moto = MotoServer::start()?;
    let endpoint = moto.endpoint.clone();
    eprintln!("moto_server {MOTO_VERSION} listening on {endpoint}");
    let proptest_seed = proptest_seed();
    eprintln!(
        "PROPTEST_RNG_SEED={proptest_seed} (a fresh seed each run; to repeat this run's cases, set it: \
         PROPTEST_RNG_SEED={proptest_seed} cargo xtask ci)"
    );
    let test_env = [
        ("MOTO_ENDPOINT", endpoint.as_str()),
        ("REQUIRE_MOTO", "1"),
        ("REQUIRE_CLOUD_INIT", "1"),
        // PROPTEST_CASES, when set, passes through: every property takes it (a soak).
        ("PROPTEST_RNG_SEED", &proptest_seed),
    ];
    steps.run("test build", "cargo", &["test", "--workspace", "--all-targets", "--no-run"], &[])?;
    // `cargo test` builds no other package's binaries, and the process tests
    // (tests/integration/process.rs) run the shipped `aws-backend`; with the same features as
    // the test build, so nothing is compiled twice.
    steps.run("binaries", "cargo", &["build", "--workspace", "--bins"], &[])?;
    steps
        .run("tests", "cargo", &["test", "--workspace", "--all-targets"], &test_env)
        .with_context(|| format!("the tests failed with PROPTEST_RNG_SEED={proptest_seed}"))?;
    drop(moto);
    // The simulation: every checker proven able to fail; fixed-seed sweeps, each seed run twice
    // for determinism where a crash or a fault could make a run depend on more than its seed,
    // as many seeds at once as there are cores; and one seed drawn from the clock (it prints
    // its seed).
    let waited = Instant::now();
    let xtask = sim_build.finish()?;
    steps.taken.push(("sim build (waited for)", waited.elapsed()));
    let xtask = xtask.to_str().context("the target directory's path is not UTF-8")?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    steps.run("self-test", xtask, &["sim", "--self-test", "--jobs", &jobs], &[])?;
    for (name, first, seeds, flags) in SWEEPS {
        let sweep = [&["sim", "--seed", first, "--seeds", seeds, "--jobs", &jobs], flags].concat();
        steps.run(name, xtask, &sweep, &[])?;
    }
    steps.run("seed from the clock", xtask, &["sim"], &[])?;
    steps.print();
    Ok(())
}

/// The simulation's build (xtask in the `sim` profile: release with LTO), started when CI starts. It needs no AWS SDK
/// crate, so it compiles while the clippy and test builds wait for aws-sdk-ec2: one crate that
/// keeps one core busy for minutes while the other has nothing to do. It has a target
/// directory of its own (`ci-sim` in the workspace's), since cargo builds one thing at a time
/// in each.
struct SimBuild {
    child: Child,
    started: Instant,
    log: PathBuf,
    binary: PathBuf,
}

impl SimBuild {
    fn start() -> anyhow::Result<Self> {
        let target = target_directory()?.join("ci-sim");
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        let log = target.join("build.log");
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "$ cargo build --profile sim -p xtask (in the background, into {}; its output goes to {})",
            target.display(),
            log.display()
        );
        let child = command("cargo")
            .args(["build", "--profile", "sim", "-p", "xtask"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the simulation's build")?;
        let binary = target.join("sim").join(format!("xtask{}", std::env::consts::EXE_SUFFIX));
        Ok(Self { child, started: Instant::now(), log, binary })
    }

    /// Waits for the build and returns the binary; fails with the build's output when it failed.
    fn finish(mut self) -> anyhow::Result<PathBuf> {
        let status = self.child.wait().context("waiting for the simulation's build")?;
        eprintln!("xtask ci: the simulation's build (sim profile) took {:.0} s", self.started.elapsed().as_secs_f64());
        if !status.success() {
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            bail!("the simulation's build failed with {status}; its output is above and in {}", self.log.display());
        }
        Ok(self.binary.clone())
    }
}

impl Drop for SimBuild {
    /// A CI that stopped early does not leave the build running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workspace's target directory, as cargo resolves it (`CARGO_TARGET_DIR` and config
/// included).
fn target_directory() -> anyhow::Result<PathBuf> {
    let out = command("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let target = metadata["target_directory"].as_str().context("cargo metadata names no target_directory")?;
    Ok(PathBuf::from(target))
}

/// CI's fixed-seed sweeps: name, first seed, seeds, and the flags that make the sweep.
const SWEEPS: [(&str, &str, &str, &[&str]); 4] = [
    ("swarm sweep with crashes", "1", SWEEP_SEEDS, &["--faults", "swarm", "--crashes", "--check-determinism"]),
    (
        "replica sweep",
        "1001",
        REPLICA_SWEEP_SEEDS,
        &["--faults", "swarm", "--crashes", "--replicas", "2", "--check-determinism"],
    ),
    ("swarm sweep", "2001", SWARM_SWEEP_SEEDS, &["--faults", "swarm", "--check-determinism"]),
    ("default-faults sweep", "3001", DEFAULT_SWEEP_SEEDS, &["--faults", "default"]),
];

/// CI's steps with how long each took: printed as each ends and together at the end, so that
/// a slow CI says where its time went.
struct Steps {
    started: Instant,
    taken: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new() -> Self {
        Self { started: Instant::now(), taken: Vec::new() }
    }

    /// Runs one step with [`run_cmd`] and records its time.
    fn run(&mut self, name: &'static str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = run_cmd(program, args, envs);
        let taken = started.elapsed();
        eprintln!("xtask ci: {name} took {:.0} s", taken.as_secs_f64());
        self.taken.push((name, taken));
        result
    }

    fn print(&self) {
        for (name, taken) in &self.taken {
            eprintln!("  {name:<28} {:>6.0} s", taken.as_secs_f64());
        }
        eprintln!("xtask ci: all green in {:.0} s", self.started.elapsed().as_secs_f64());
    }
}

/// The proptest seed of this run: `PROPTEST_RNG_SEED` when it is set (to repeat a run), else
/// a fresh one, the wall clock hashed with the OS's entropy (std's `RandomState` keys its hasher
/// from it).
fn proptest_seed() -> String {
    match std::env::var("PROPTEST_RNG_SEED") {
        Ok(seed) if !seed.trim().is_empty() => seed.trim().to_string(),
        _ => RandomState::new().hash_one(SystemTime::now()).to_string(),
    }
}

/// `backend-api` and `usage-ledger` hold no AWS crate (the DynamoDB store is `ledger-dynamodb`'s);
/// the simulation path (xtask) holds no AWS SDK crate.
fn check_dependency_invariants() -> anyhow::Result<()> {
    for (package, forbidden) in
        [("backend-api", "aws-"), ("usage-ledger", "aws-"), ("xtask", "aws-sdk-"), ("sim-ec2", "aws-sdk-")]
    {
        let out = command("cargo")
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
    // The shipped binary is built from aws-backend alone (`cargo build --release -p
    // aws-backend`), with the features that resolves to: never the harness's test switches.
    let out = command("cargo")
        .args(["tree", "-p", "aws-backend", "-e", "features", "-i", "aws-backend", "-f", "{f}", "--depth", "0"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo tree")?;
    ensure!(out.status.success(), "cargo tree -p aws-backend failed: {}", String::from_utf8_lossy(&out.stderr));
    let features = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        !features.contains("test-switches"),
        "architecture invariant broken: aws-backend built alone has the features {features:?}; only the harness (tests/) \
         may enable test-switches"
    );
    eprintln!("invariant: the shipped aws-backend is built without test-switches (features: {features})");
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
        ensure_moto()?;
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

/// The installed moto's version, as pip reports it (`None` when moto is not installed).
fn moto_version() -> Option<String> {
    let out = Command::new("python3").args(["-m", "pip", "show", "moto"]).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string())
}

/// Installs `moto[server]==MOTO_VERSION` with pip when `moto_server` is missing or moto is at
/// another version: CI tests against the release the moto tests were written for, and says so
/// loudly when it had to change what it found.
fn ensure_moto() -> anyhow::Result<()> {
    let pinned = format!("moto[server]=={MOTO_VERSION}");
    let found = moto_version();
    let server = have("moto_server", "--help");
    if server && found.as_deref() == Some(MOTO_VERSION) {
        return Ok(());
    }
    match found.as_deref() {
        Some(other) if other != MOTO_VERSION => eprintln!(
            "\n*** moto {other} is installed, but CI tests against moto {MOTO_VERSION}: installing {pinned} \
             (`python3 -m pip show moto` says which one is there)\n"
        ),
        _ => eprintln!("moto_server is missing: installing {pinned} with pip"),
    }
    run_cmd("python3", &["-m", "pip", "install", "--quiet", &pinned], &[])?;
    let now = moto_version();
    ensure!(
        now.as_deref() == Some(MOTO_VERSION) && have("moto_server", "--help"),
        "after pip install '{pinned}': moto is {}, moto_server {}; install it by hand and run again",
        now.as_deref().unwrap_or("not installed"),
        if have("moto_server", "--help") { "present" } else { "missing" }
    );
    Ok(())
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
