//! The process as it ships: the real `aws-backend` binary, started as `serve`, driven through
//! its Unix socket over HTTP/1.1 (hyper's client over a `UnixStream`), stopped with signals,
//! against moto's EC2 (and DynamoDB, for group mode) over HTTP.
//!
//! The binary is the one cargo built next to this test (`target/<profile>/aws-backend`);
//! `cargo xtask ci` builds it (`cargo build --workspace --bins`) before the tests, since
//! `cargo test` does not build another package's binaries. Without it, or with one older than
//! the sources, these tests say so loudly and, under `REQUIRE_MOTO=1` (as in CI), fail. The
//! moto tests among them also say loudly that they did not run without `MOTO_ENDPOINT`.
#![cfg(feature = "sdk")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use aws_backend::AwsBootConfig;
use aws_backend::sdk::{DynamoLeases, SdkEc2, SdkInspector};
use backend_api::{Clock, TokioClock};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::moto::{hex, moto_config_text, moto_endpoint, wall_clock_unix_ms};
/// The `aws-backend` binary cargo built next to this test, or `None` after saying loudly why
/// it cannot be used (missing, or older than the sources it is built from).
fn binary(test: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/integration-<hash> -> target/<profile>/aws-backend
    let path = exe.parent().and_then(Path::parent).expect("a deps directory").join("aws-backend");
    let problem = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Err(_) => Some(format!("{} does not exist", path.display())),
        Ok(built) => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
            let newest = newest_source(root);
            (newest > built).then(|| format!("{} is older than the sources it is built from", path.display()))
        }
    };
    let Some(problem) = problem else { return Some(path) };
    let required = std::env::var("REQUIRE_MOTO").is_ok_and(|v| v == "1");
    assert!(!required, "{problem}: run `cargo build --workspace --bins` before the tests (`cargo xtask ci` does)");
    let _ = writeln!(
        std::io::stderr(),
        "\n************************************************************************\n\
         *** process test `{test}` was NOT RUN: {problem}.\n\
         *** Run `cargo build --workspace --bins` first (`cargo xtask ci` does).\n\
         ************************************************************************\n"
    );
    None
}

/// The newest modification time among the workspace's crate sources, manifests and lock file.
fn newest_source(root: &Path) -> SystemTime {
    fn walk(dir: &Path, newest: &mut SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(modified);
            }
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(modified) = std::fs::metadata(root.join("Cargo.lock")).and_then(|m| m.modified()) {
        newest = newest.max(modified);
    }
    for krate in std::fs::read_dir(root.join("crates")).into_iter().flatten().flatten() {
        walk(&krate.path().join("src"), &mut newest);
        if let Ok(modified) = std::fs::metadata(krate.path().join("Cargo.toml")).and_then(|m| m.modified()) {
            newest = newest.max(modified);
        }
    }
    newest
}

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("aws-backend-process-{test}-{}", hex(&rand::random::<[u8; 6]>())));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A configuration for moto: this test's owner, 1 s ticks from now, grants of seconds, a 20 s
/// drain. `ledger` is the ledger's lines (`ledger_path = ...`, or a `[ledger]` table, last).
fn config_text(endpoint: &str, owner: &str, epoch_unix_ms: u64, ledger: &str) -> String {
    moto_config_text(endpoint, owner, epoch_unix_ms, &format!("drain_s = 20\n{ledger}"))
}

/// One `aws-backend serve` process.
struct Serve {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn start(binary: &Path, config: &Path, socket: &Path, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child, socket: socket.to_path_buf(), log: log.to_path_buf() })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid()).status()?;
        ensure!(status.success(), "kill -{signal} {} failed", self.pid());
        Ok(())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, for at most `within`.
    async fn exited(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                bail!("aws-backend did not exit within {within:?}; its log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
        call(&self.socket, method, path, body).await.with_context(|| format!("aws-backend's log:\n{}", self.logs()))
    }

    /// Waits until `GET /v1/status` says `phase`, for at most `within`.
    async fn phase(&mut self, phase: &str, within: Duration) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            if let Ok(answer) = self.call(Method::GET, "/v1/status", None).await
                && answer.body["phase"] == phase
            {
                return Ok(answer.body);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("aws-backend exited ({status}) before it was {phase}; its log:\n{}", self.logs());
            }
            ensure!(
                started.elapsed() < within,
                "aws-backend was not {phase} within {within:?}; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer: status, `Retry-After` if any, JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

/// How long a request may wait for its answer: a provision on moto takes a second or two.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request over the Unix socket at `socket`, answered within [`ANSWER_WITHIN`].
async fn call(socket: &Path, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    let what = format!("{method} {path}");
    tokio::time::timeout(ANSWER_WITHIN, call_once(socket, method, path, body))
        .await
        .with_context(|| format!("no answer to {what} within {ANSWER_WITHIN:?}"))?
}

async fn call_once(socket: &Path, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "aws-backend")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.into_body().collect().await?.to_bytes();
    // JSON, except the Prometheus text of `/metrics` (and `/healthz`'s "ok"), kept as a string.
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    Ok(Answer { status, retry_after, body })
}

/// A grant's body (the grants-format fields): 1 vCPU, 1 GiB, from tick `from` to tick `to`.
fn grant_body(id: &str, from: u64, to: u64) -> Value {
    json!({
        "id": id,
        "cpu_millicores": 1000,
        "ram_mib": 1024,
        "storage_gib": 8,
        "tdx_required": false,
        "image_post_hash": "5a".repeat(32),
        "valid_from": from,
        "valid_to": to,
    })
}

/// The tick of `unix_ms` with 1 s ticks from `epoch_unix_ms`.
fn tick(epoch_unix_ms: u64, unix_ms: u64) -> u64 {
    (unix_ms - epoch_unix_ms) / 1_000
}

/// Waits until `GET /v1/grants/{id}` says the grant is settled; returns its state.
async fn settled(serve: &Serve, id: &str, within: Duration) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let answer = serve.call(Method::GET, &format!("/v1/grants/{id}"), None).await?;
        if answer.status == StatusCode::OK && answer.body["settled"] == true {
            return Ok(answer.body);
        }
        ensure!(started.elapsed() < within, "grant {id} not settled within {within:?}: {answer:?}\n{}", serve.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn nothing_left(cfg: &AwsBootConfig) -> anyhow::Result<()> {
    let port = Arc::new(SdkEc2::new(cfg).await);
    let inspector = SdkInspector::new(port, cfg.regions.clone());
    let left = inspector.resources_of_owner(&cfg.owner).await?;
    ensure!(left.is_empty(), "resources with owner {} remain: {left:#?}", cfg.owner);
    Ok(())
}

/// Configuration errors exit 2 and a ledger that cannot be opened exits 4, before anything
/// reaches a cloud: what a supervisor reads (`RestartPreventExitStatus=2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_2_on_a_bad_config_and_4_on_an_unusable_ledger() -> anyhow::Result<()> {
    let Some(binary) = binary("serve_exits_2_on_a_bad_config_and_4_on_an_unusable_ledger") else { return Ok(()) };
    let started = Instant::now();
    let scratch = Scratch::new("exits");
    let dir = &scratch.0;
    let now = wall_clock_unix_ms();
    // No cloud is asked: the endpoint is a closed port.
    let endpoint = "http://127.0.0.1:9";

    let bad = dir.join("bad.toml");
    let ledger = format!("ledger_path = \"{}\"", dir.join("ledger").display());
    std::fs::write(&bad, config_text(endpoint, "exits", now, &ledger).replace("drain_s = 20", "drain_s = 99999"))?;
    let mut serve = Serve::start(&binary, &bad, &dir.join("a.sock"), &dir.join("bad.log"))?;
    let status = serve.exited(Duration::from_secs(10)).await?;
    ensure!(status.code() == Some(2), "a bad config exited {status}: {}", serve.logs());
    ensure!(serve.logs().contains("drain_s"), "the error does not name drain_s: {}", serve.logs());

    // A directory where the ledger file should be: it cannot be opened.
    let unusable = dir.join("unusable.toml");
    std::fs::write(&unusable, config_text(endpoint, "exits", now, &format!("ledger_path = \"{}\"", dir.display())))?;
    let mut serve = Serve::start(&binary, &unusable, &dir.join("b.sock"), &dir.join("unusable.log"))?;
    let status = serve.exited(Duration::from_secs(10)).await?;
    ensure!(status.code() == Some(4), "an unusable ledger exited {status}: {}", serve.logs());
    ensure!(!dir.join("b.sock").exists(), "the socket was left behind");

    // A --listen address already taken: a configuration error, and the Unix socket is removed.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let good = dir.join("good.toml");
    std::fs::write(&good, config_text(endpoint, "exits", now, &ledger))?;
    let out = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&good)
        .arg("--socket")
        .arg(dir.join("c.sock"))
        .args(["--listen", &taken.local_addr()?.to_string()])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains("--listen"),
        "a taken --listen exited {}: {stderr}",
        out.status
    );
    ensure!(!dir.join("c.sock").exists(), "the socket was left behind");
    eprintln!("process exit-code test passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `run` is a client of the same runtime: a malformed grants file exits 2, naming its line; a
/// grant of the file is provisioned, ended at valid_to and printed with its usage, and the
/// process exits 0 (with `--no-wait-network`: moto's CloudWatch never gives the final figure,
/// which the log says it leaves to the next process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_each_grants_usage_and_exits_0_and_2_for_a_bad_file() -> anyhow::Result<()> {
    let test = "run_prints_each_grants_usage_and_exits_0_and_2_for_a_bad_file";
    let Some(endpoint) = moto_endpoint(test) else { return Ok(()) };
    let Some(binary) = binary(test) else { return Ok(()) };
    let started = Instant::now();
    let scratch = Scratch::new("run");
    let dir = &scratch.0;
    let salt = hex(&rand::random::<[u8; 6]>());
    let epoch = wall_clock_unix_ms();
    let ledger = format!("ledger_path = \"{}\"", dir.join("aws.ledger").display());
    let text = config_text(&endpoint, &format!("moto-run-{salt}"), epoch, &ledger);
    let config = dir.join("config.toml");
    std::fs::write(&config, &text)?;
    let run = move |grants: &Path| {
        Command::new(&binary)
            .args(["run", "--no-wait-network", "--config"])
            .arg(&config)
            .arg("--grants")
            .arg(grants)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
    };

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"id\": 1}}\n", grant_body(&format!("{salt}{}", "00".repeat(26)), 0, 1)))?;
    let out = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&bad)
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "a bad grants file exited {}: {stderr}", out.status);
    ensure!(stderr.contains("line 2"), "the error does not name the line: {stderr}");

    let now = tick(epoch, wall_clock_unix_ms());
    let grant = format!("{salt}{}", "01".repeat(26));
    let grants = dir.join("grants.jsonl");
    std::fs::write(&grants, format!("{}\n", grant_body(&grant, now, now + 4)))?;
    let out = tokio::task::spawn_blocking(move || run(&grants)).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(0), "run exited {}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 1 && lines[0]["grant"] == grant.as_str(), "stdout: {stdout}");
    ensure!(lines[0]["usage"]["cpu_seconds"].as_u64().is_some_and(|s| s > 0), "stdout: {stdout}");
    ensure!(stderr.contains("--no-wait-network: leaving the final network measurements"), "{stderr}");
    nothing_left(&AwsBootConfig::from_toml(&text)?).await?;
    eprintln!("process run test passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `serve` with a file ledger: a grant sent through the socket is in flight (waiting for its
/// valid_from) when SIGTERM comes; the drain refuses a new grant with 503 and `Retry-After`,
/// lets the one in flight finish and exits 0. Started again on the same ledger (with a drain of
/// 1 s), the bridge's recovery takes the grant over; the grant sent again answers 200 with the
/// same instance (a resume), and the service terminates it at valid_to by itself. A second
/// grant in flight when that process is SIGTERMed outlasts its drain: its POST answers 503, the
/// process exits 0, and a third process provisions the grant anew (201), which a DELETE ends.
/// Bad requests name the field; nothing is left in moto; the bill is EC2's minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_on_sigterm_and_the_next_process_finishes_the_grant() -> anyhow::Result<()> {
    let test = "serve_drains_on_sigterm_and_the_next_process_finishes_the_grant";
    let Some(endpoint) = moto_endpoint(test) else { return Ok(()) };
    let Some(binary) = binary(test) else { return Ok(()) };
    let started = Instant::now();
    let scratch = Scratch::new("drain");
    let dir = &scratch.0;
    let salt = hex(&rand::random::<[u8; 6]>());
    let owner = format!("moto-process-{salt}");
    let epoch = wall_clock_unix_ms();
    let ledger = format!("ledger_path = \"{}\"", dir.join("aws.ledger").display());
    let text = config_text(&endpoint, &owner, epoch, &ledger);
    let config = dir.join("config.toml");
    std::fs::write(&config, &text)?;
    let short = dir.join("short-drain.toml");
    std::fs::write(&short, text.replace("drain_s = 20", "drain_s = 1"))?;
    let cfg = AwsBootConfig::from_toml(&text)?;
    let socket = dir.join("api.sock");

    let step = |what: &str| eprintln!("  {:>5.1} s  {what}", started.elapsed().as_secs_f64());
    let mut first = Serve::start(&binary, &config, &socket, &dir.join("first.log"))?;
    first.phase("admitting", Duration::from_secs(30)).await?;
    step("first process admitting");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket)?.permissions());
    ensure!(mode & 0o777 == 0o600, "the socket's mode is {:o}", mode & 0o777);
    // SIGHUP is ignored.
    first.signal("HUP")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.phase("admitting", Duration::from_secs(1)).await?;
    ensure!(first.logs().contains("SIGHUP ignored"), "SIGHUP was not logged:\n{}", first.logs());

    // Bad requests are refused naming the field.
    let id = format!("{salt}{}", "00".repeat(26));
    let mut bad = grant_body(&id, 0, 10);
    bad.as_object_mut().context("an object")?.remove("ram_mib");
    let answer = first.call(Method::POST, "/v1/grants", Some(bad)).await?;
    ensure!(answer.status == StatusCode::BAD_REQUEST && answer.body["field"] == "ram_mib", "{answer:?}");
    let mut elsewhere = grant_body(&id, 0, 10_000);
    elsewhere["region"] = json!("eu-north-1");
    let answer = first.call(Method::POST, "/v1/grants", Some(elsewhere)).await?;
    ensure!(answer.status == StatusCode::UNPROCESSABLE_ENTITY && answer.body["field"] == "region", "{answer:?}");

    // Given a grant in flight: it waits for its valid_from, 3 s away.
    let now = tick(epoch, wall_clock_unix_ms());
    let (from, to) = (now + 3, now + 14);
    let valid_to_unix_ms = epoch + to * 1_000;
    let grant = format!("{salt}{}", "01".repeat(26));
    let posted = tokio::spawn({
        let (socket, body) = (socket.clone(), grant_body(&grant, from, to));
        async move { call(&socket, Method::POST, "/v1/grants", Some(body)).await }
    });
    let waited = Instant::now();
    while first.call(Method::GET, "/v1/status", None).await?.body["in_flight"] != 1 {
        ensure!(waited.elapsed() < Duration::from_secs(3), "the grant never was in flight:\n{}", first.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // When SIGTERM comes. Then the bridge drains: a new grant is refused, retryably.
    first.signal("TERM")?;
    let status = first.phase("draining", Duration::from_secs(3)).await?;
    ensure!(status["in_flight"] == 1, "{status}");
    // Not ready while draining: a load balancer or supervisor sends grants elsewhere.
    let ready = first.call(Method::GET, "/readyz", None).await?;
    ensure!(ready.status == StatusCode::SERVICE_UNAVAILABLE && ready.body["ready"] == false, "{ready:?}");
    let alive = first.call(Method::GET, "/healthz", None).await?;
    ensure!(alive.status == StatusCode::OK, "{alive:?}");
    let other = format!("{salt}{}", "02".repeat(26));
    let answer = first.call(Method::POST, "/v1/grants", Some(grant_body(&other, now, now + 60))).await?;
    ensure!(answer.status == StatusCode::SERVICE_UNAVAILABLE, "a draining bridge took a grant: {answer:?}");
    ensure!(answer.retry_after.is_some() && answer.body["retryable"] == true, "{answer:?}");
    // And the grant in flight is provisioned, and the process exits 0.
    let answer = posted.await??;
    ensure!(answer.status == StatusCode::CREATED, "the grant in flight: {answer:?}\n{}", first.logs());
    let instance_id = answer.body["instance_id"].as_str().context("an instance id")?.to_string();
    ensure!(answer.body["ssh_private_key"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")), "{answer:?}");
    ensure!(answer.body["ssh_host_public_key"].as_str().is_some_and(|k| k.starts_with("ssh-ed25519")), "{answer:?}");
    let status = first.exited(Duration::from_secs(25)).await?;
    step("first process drained");
    ensure!(status.code() == Some(0), "the drained process exited {status}:\n{}", first.logs());
    let private_key = answer.body["ssh_private_key"].as_str().context("a private key")?.to_string();
    let key_body = private_key.lines().nth(1).context("a key body")?;
    ensure!(!first.logs().contains(key_body), "the private key reached the log");
    ensure!(!socket.exists(), "the drained process left its socket");
    let drained_in = waited.elapsed();

    // When the service starts again on the same ledger.
    let mut second = Serve::start(&binary, &short, &socket, &dir.join("second.log"))?;
    second.phase("admitting", Duration::from_secs(30)).await?;
    let answer = second.call(Method::GET, &format!("/v1/grants/{grant}"), None).await?;
    ensure!(answer.status == StatusCode::OK && answer.body["instance_id"] == instance_id.as_str(), "{answer:?}");
    // Then the grant sent again is resumed, not provisioned twice.
    let answer = second.call(Method::POST, "/v1/grants", Some(grant_body(&grant, from, to))).await?;
    step("second process resumed the grant");
    ensure!(answer.status == StatusCode::OK, "the grant sent again: {answer:?}\n{}", second.logs());
    ensure!(answer.body["instance_id"] == instance_id.as_str(), "a second instance: {answer:?}");
    // And the service ends it at valid_to by itself.
    let state = settled(&second, &grant, Duration::from_secs(30)).await?;
    step("the grant settled at valid_to");
    let settled_at = wall_clock_unix_ms();
    ensure!(settled_at >= valid_to_unix_ms, "settled at {settled_at}, before valid_to {valid_to_unix_ms}");
    // The bill: the instance ran from about valid_from to valid_to, billed per second with
    // EC2's one-minute minimum (docs/metering.md), and nothing past valid_to.
    let cpu_seconds = state["usage"]["cpu_seconds"].as_u64().context("cpu_seconds")?;
    let ram_mib_seconds = state["usage"]["ram_mib_seconds"].as_u64().context("ram_mib_seconds")?;
    let seconds = ram_mib_seconds / 1_024;
    ensure!(seconds == 60.max(to - from) || seconds == 60.max(to - from + 1), "billed {seconds} s: {state}");
    // The smallest fitting type (t3.micro) has 2 vCPUs.
    ensure!(cpu_seconds == 2 * seconds, "billed {cpu_seconds} cpu seconds for {seconds} s: {state}");
    let status = second.call(Method::GET, "/v1/status", None).await?;
    ensure!(status.body["live_grants"].as_array().is_some_and(Vec::is_empty), "{status:?}");
    // The metrics show what happened: EC2 calls by operation, ledger appends timed, and the
    // deadline's lateness (TerminateInstances accepted, and EC2 showing the instance gone).
    let ready = second.call(Method::GET, "/readyz", None).await?;
    ensure!(ready.status == StatusCode::OK && ready.body["ready"] == true, "{ready:?}");
    let scrape = second.call(Method::GET, "/metrics", None).await?;
    let text = scrape.body.as_str().context("Prometheus text")?.to_string();
    let sample = |name: &str, label: &str| -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name) && l.contains(label))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    };
    for (name, label) in [
        ("bridge_ec2_calls_total", "operation=\"TerminateInstances\""),
        ("bridge_ledger_append_seconds_count", ""),
        ("bridge_deadline_lateness_seconds_count", "stage=\"terminate_sent\""),
        ("bridge_pacer_wait_seconds_count", ""),
    ] {
        ensure!(sample(name, label).is_some_and(|n| n >= 1.0), "no {name}{{{label}}} in the scrape:\n{text}");
    }
    let late = sample("bridge_deadline_lateness_seconds_sum", "stage=\"terminate_sent\"").unwrap_or(f64::MAX);
    ensure!(late < 10.0, "TerminateInstances was accepted {late} s after valid_to:\n{text}");
    ensure!(text.contains("bridge_grants{phase=\"running\"} 0"), "the gauges are set at scrape time:\n{text}");
    step("metrics scraped");

    // Given a second grant in flight, 4 s before its valid_from, when SIGTERM comes: the drain
    // of 1 s runs out first. Then its POST is refused retryably and the process exits 0.
    let now = tick(epoch, wall_clock_unix_ms());
    let (from, to) = (now + 4, now + 12);
    let again = format!("{salt}{}", "03".repeat(26));
    let posted = tokio::spawn({
        let (socket, body) = (socket.clone(), grant_body(&again, from, to));
        async move { call(&socket, Method::POST, "/v1/grants", Some(body)).await }
    });
    let waited = Instant::now();
    while second.call(Method::GET, "/v1/status", None).await?.body["in_flight"] != 1 {
        ensure!(waited.elapsed() < Duration::from_secs(3), "the second grant never was in flight:\n{}", second.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.signal("TERM")?;
    let answer = posted.await??;
    ensure!(answer.status == StatusCode::SERVICE_UNAVAILABLE, "a provision cut short: {answer:?}\n{}", second.logs());
    ensure!(answer.retry_after.is_some() && answer.body["retryable"] == true, "{answer:?}");
    let status = second.exited(Duration::from_secs(10)).await?;
    step("second process drained, cut short");
    ensure!(status.code() == Some(0), "the second process exited {status}:\n{}", second.logs());
    ensure!(
        second.logs().contains("cut_short=1"),
        "the drain did not say it cut a provision short:\n{}",
        second.logs()
    );

    // When a third process is sent that grant again, it provisions it anew; DELETE ends it.
    let mut third = Serve::start(&binary, &config, &socket, &dir.join("third.log"))?;
    third.phase("admitting", Duration::from_secs(30)).await?;
    step("third process admitting");
    let answer = third.call(Method::POST, "/v1/grants", Some(grant_body(&again, from, to))).await?;
    step("third process provisioned the grant cut short");
    ensure!(answer.status == StatusCode::CREATED, "the grant sent again: {answer:?}\n{}", third.logs());
    let answer = third.call(Method::DELETE, &format!("/v1/grants/{again}"), None).await?;
    step("third process deleted it");
    ensure!(answer.status == StatusCode::OK && answer.body["settled"] == true, "DELETE: {answer:?}\n{}", third.logs());
    let answer = third.call(Method::DELETE, &format!("/v1/grants/{again}"), None).await?;
    ensure!(answer.status == StatusCode::OK, "a second DELETE: {answer:?}");
    third.signal("TERM")?;
    let status = third.exited(Duration::from_secs(25)).await?;
    step("third process drained");
    ensure!(status.code() == Some(0), "the third process exited {status}:\n{}", third.logs());
    nothing_left(&cfg).await?;
    eprintln!(
        "process drain test passed in {:.1} s (SIGTERM to exit 0 in {:.1} s)",
        started.elapsed().as_secs_f64(),
        drained_in.as_secs_f64()
    );
    Ok(())
}

/// Group mode (DynamoDB on moto): `serve` processes share a ledger under the group's lease.
/// The standby refuses grants (503, `Retry-After`); the holder provisions one and is killed
/// (SIGKILL: no drain, no release); the standby takes the lease over once it expires and
/// recovers the grant. That new holder is then paused (SIGSTOP) past its lease while a third
/// process stands by: the third takes over, and the paused one, let go (SIGCONT), finds its
/// lease lost and exits 3 without acting. The third ends the grant at valid_to; nothing is
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serve_takes_over_when_the_holder_is_killed() -> anyhow::Result<()> {
    let test = "a_standby_serve_takes_over_when_the_holder_is_killed";
    let Some(endpoint) = moto_endpoint(test) else { return Ok(()) };
    let Some(binary) = binary(test) else { return Ok(()) };
    let started = Instant::now();
    let scratch = Scratch::new("group");
    let dir = &scratch.0;
    let salt = hex(&rand::random::<[u8; 6]>());
    let owner = format!("moto-group-{salt}");
    let epoch = wall_clock_unix_ms();
    let seed = dir.join("group.keyseed");
    std::fs::write(&seed, hex(&rand::random::<[u8; 32]>()))?;
    std::fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let ledger = format!(
        "[ledger]\nstore = \"dynamodb\"\ntable = \"ledger-process-{salt}\"\ngroup = \"g-{salt}\"\nlease_s = 6\nkey_seed_path = \"{}\"",
        seed.display()
    );
    let text = config_text(&endpoint, &owner, epoch, &ledger);
    let config = dir.join("config.toml");
    std::fs::write(&config, &text)?;
    let cfg = AwsBootConfig::from_toml(&text)?;
    let aws_backend::LedgerStore::DynamoDb(shared) = cfg.ledger_store() else { bail!("not a DynamoDB ledger") };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(epoch));
    DynamoLeases::connect(&cfg, &shared, clock).await.table().create().await.context("creating the table")?;

    let mut first = Serve::start(&binary, &config, &dir.join("a.sock"), &dir.join("a.log"))?;
    first.phase("admitting", Duration::from_secs(30)).await?;
    let mut second = Serve::start(&binary, &config, &dir.join("b.sock"), &dir.join("b.log"))?;
    second.phase("standing-by", Duration::from_secs(30)).await?;

    // Past both takeovers (about 6 s each with a lease of 6 s), so the last holder's recovery
    // watches the grant to its deadline; should a slow machine take longer, the grant ends at
    // once instead, and every check below still holds.
    let now = tick(epoch, wall_clock_unix_ms());
    let to = now + 18;
    let valid_to_unix_ms = epoch + to * 1_000;
    let grant = format!("{salt}{}", "01".repeat(26));
    let answer = second.call(Method::POST, "/v1/grants", Some(grant_body(&grant, now, to))).await?;
    ensure!(answer.status == StatusCode::SERVICE_UNAVAILABLE && answer.retry_after.is_some(), "{answer:?}");
    let answer = first.call(Method::POST, "/v1/grants", Some(grant_body(&grant, now, to))).await?;
    ensure!(answer.status == StatusCode::CREATED, "the holder's provision: {answer:?}\n{}", first.logs());

    // When the holder is killed: no drain, the lease is not released.
    first.signal("KILL")?;
    let killed_at = Instant::now();
    let status = first.exited(Duration::from_secs(5)).await?;
    ensure!(status.code().is_none(), "SIGKILL should end the holder by the signal: {status}");
    // Then the standby takes over once the lease expires, and recovers the grant.
    second.phase("admitting", Duration::from_secs(20)).await?;
    let first_takeover = killed_at.elapsed();
    let answer = second.call(Method::GET, &format!("/v1/grants/{grant}"), None).await?;
    ensure!(answer.status == StatusCode::OK, "the new holder's replay lacks the grant: {answer:?}");

    // When the new holder is paused past its lease while a third process stands by.
    let mut third = Serve::start(&binary, &config, &dir.join("c.sock"), &dir.join("c.log"))?;
    third.phase("standing-by", Duration::from_secs(30)).await?;
    second.signal("STOP")?;
    let paused_at = Instant::now();
    // Then the third takes over; the paused one, let go, finds its lease lost and exits 3.
    third.phase("admitting", Duration::from_secs(20)).await?;
    let second_takeover = paused_at.elapsed();
    second.signal("CONT")?;
    let status = second.exited(Duration::from_secs(15)).await?;
    ensure!(status.code() == Some(3), "the paused holder exited {status}, not 3 (lease lost):\n{}", second.logs());

    // And the third ends the grant at valid_to.
    let state = settled(&third, &grant, Duration::from_secs(40)).await?;
    let settled_at = wall_clock_unix_ms();
    ensure!(settled_at >= valid_to_unix_ms, "settled at {settled_at}, before valid_to {valid_to_unix_ms}: {state}");
    third.signal("INT")?;
    let status = third.exited(Duration::from_secs(25)).await?;
    ensure!(status.code() == Some(0), "the last holder exited {status}:\n{}", third.logs());
    nothing_left(&cfg).await?;
    eprintln!(
        "process group test passed in {:.1} s (lease 6 s; takeover {:.1} s after SIGKILL, {:.1} s after SIGSTOP)",
        started.elapsed().as_secs_f64(),
        first_takeover.as_secs_f64(),
        second_takeover.as_secs_f64()
    );
    Ok(())
}
