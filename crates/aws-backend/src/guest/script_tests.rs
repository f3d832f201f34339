//! Runs the boot script under bash against a content store served on 127.0.0.1, with the
//! power-off, timer and container commands replaced by stand-ins that only record their
//! arguments. Each test checks the exact list of recorded commands, so "nothing else runs" is
//! part of every assertion.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::tests::{parse, spec, written_file};
use super::*;

/// Records `name args...` to the log. `systemctl is-active` answers "inactive", the others
/// succeed unless `FAKE_<NAME>_EXIT` says otherwise.
const RECORDER: &str = r#"#!/bin/bash
name=$(basename "$0")
printf '%s\n' "$name${*:+ $*}" >>"$GUEST_TEST_LOG"
case "$name $1" in
  "systemctl is-active") exit 3 ;;
esac
var="FAKE_$(printf '%s' "$name" | tr a-z- A-Z_)_EXIT"
exit "${!var:-0}"
"#;

/// A container runtime stand-in: records its arguments; `load` also records the sha256 of the
/// archive it was given and prints `FAKE_LOAD_OUTPUT`.
const FAKE_RUNTIME: &str = r#"#!/bin/bash
name=$(basename "$0")
printf '%s\n' "$name${*:+ $*}" >>"$GUEST_TEST_LOG"
if [[ $1 == load && $2 == --input ]]; then
  sum=$(sha256sum "$3")
  printf '%s\n' "loaded-sha256 ${sum%% *}" >>"$GUEST_TEST_LOG"
  printf '%b\n' "${FAKE_LOAD_OUTPUT:-Loaded image: grant/test:latest}"
fi
"#;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A small content store on 127.0.0.1: serves `blobs` by path, 404 otherwise, and counts
/// requests. The thread lives as long as the test binary.
struct ContentStore {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ContentStore {
    fn serve(blobs: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the content store");
        let port = listener.local_addr().expect("local address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                Self::answer(stream, &blobs, &seen);
            }
        });
        Self { port, requests }
    }

    fn answer(stream: TcpStream, blobs: &HashMap<String, Vec<u8>>, seen: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        // Skip the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        seen.lock().expect("request log").push(path.clone());
        let mut stream = &stream;
        let _ = match blobs.get(&path) {
            Some(body) => {
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                    .and_then(|()| stream.write_all(body))
            }
            None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        };
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address").port()
}

/// A stand-in image archive: bytes with a recognisable pattern, large enough to take a few
/// reads.
fn image_bytes() -> Vec<u8> {
    (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fn sha256(bytes: &[u8]) -> ImageHash {
    ImageHash(Sha256::digest(bytes).into())
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// One run of the boot script in a fresh directory.
struct Guest {
    dir: PathBuf,
    output: Output,
}

impl Guest {
    /// Renders the user data for `cfg` and `spec`, writes the script and vars file from it
    /// into a fresh directory, and runs `boot.sh <mode> vars` with the stand-ins first on PATH.
    fn boot(cfg: &GuestConfig, spec: &GuestSpec<'_>, mode: &str, env: &[(&str, &str)]) -> Self {
        let user_data = render_user_data(cfg, spec).expect("renders");
        let document = parse(&user_data);
        Self::run(written_file(&document, BOOT_SCRIPT_PATH), written_file(&document, VARS_PATH), mode, env)
    }

    fn run(script: &str, vars: &str, mode: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "guest-script-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("create the stand-in directory");
        for (name, text) in [
            ("docker", FAKE_RUNTIME),
            ("podman", FAKE_RUNTIME),
            ("poweroff", RECORDER),
            ("shutdown", RECORDER),
            ("systemctl", RECORDER),
            ("systemd-run", RECORDER),
            ("reboot", RECORDER),
            ("halt", RECORDER),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).expect("write a stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod a stand-in");
        }
        std::fs::write(dir.join("boot.sh"), script).expect("write the script");
        std::fs::write(dir.join("vars"), vars).expect("write the vars file");
        std::fs::write(dir.join("log"), "").expect("create the log");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("timeout");
        command
            .args(["60", "bash"])
            .arg(dir.join("boot.sh"))
            .arg(mode)
            .arg(dir.join("vars"))
            .current_dir(&dir)
            .env("PATH", path)
            .env("GUEST_TEST_LOG", dir.join("log"))
            .env("GRANT_GUEST_WORK_DIR", dir.join("work"))
            .env("GRANT_GUEST_BACKOFF_S", "0")
            .env("no_proxy", "*")
            .env("NO_PROXY", "*");
        for proxy in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
            command.env_remove(proxy);
        }
        command.envs(env.iter().copied());
        let output = command.output().expect("run bash");
        Self { dir, output }
    }

    /// The recorded commands, one per line.
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log")).expect("read the log").lines().map(str::to_owned).collect()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Asserts that the script failed, powered off and logged `reason`, and that the recorded
    /// commands are exactly `expected` followed by the power-off.
    fn assert_refused(&self, reason: &str, expected: &[String]) {
        assert!(!self.output.status.success(), "the script must fail; stderr:\n{}", self.stderr());
        let mut expected = expected.to_vec();
        expected.push("poweroff".to_owned());
        assert_eq!(self.log(), expected, "stderr:\n{}", self.stderr());
        assert!(self.stderr().contains(reason), "stderr should say {reason:?}:\n{}", self.stderr());
        assert!(!exists_nonempty(&self.work().join("image.tar")), "a refused image must not be kept");
        assert!(!exists_nonempty(&self.work().join("image.partial")), "a refused image must not be kept");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn exists_nonempty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

fn store_config(port: u16) -> GuestConfig {
    GuestConfig {
        fetch_attempts: 3,
        deadline_grace_s: 120,
        ..GuestConfig::with_content_store(format!("http://127.0.0.1:{port}/blobs/{{hash}}"))
    }
}

/// The commands arming the deadline: the check for an armed timer, then `systemd-run`.
/// Returns them with the delay the script chose, which must be the time left to the power-off
/// give or take the seconds the test took.
fn arming(log: &[String], poweroff_at_unix_s: u64) -> Vec<String> {
    let line = log.get(1).cloned().unwrap_or_default();
    let delay_s: u64 = line
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("--on-active=")?.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no --on-active in {line:?}; log: {log:?}"));
    let expected = poweroff_at_unix_s - now_unix_s();
    assert!((expected..=expected + 10).contains(&delay_s), "delay {delay_s}s, expected about {expected}s");
    vec![
        "systemctl is-active --quiet grant-guest-deadline.timer".to_owned(),
        format!(
            "systemd-run --unit=grant-guest-deadline --on-active={delay_s}s --timer-property=AccuracySec=1s \
             systemctl poweroff"
        ),
    ]
}

#[test]
fn the_right_image_is_verified_loaded_and_started() {
    let image = image_bytes();
    let hash = sha256(&image);
    for runtime in ["docker", "podman"] {
        let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image.clone())]));
        let cfg = GuestConfig { container_runtime: runtime.to_owned(), ..store_config(store.port) };
        let valid_to = now_unix_s() + 3_600;
        let spec = spec(hash, valid_to);
        let guest = Guest::boot(&cfg, &spec, "start", &[]);
        assert!(guest.output.status.success(), "stderr:\n{}", guest.stderr());
        let log = guest.log();
        let mut expected = arming(&log, valid_to + 120);
        if runtime == "docker" {
            expected.push("systemctl start docker.service".to_owned());
        }
        expected.extend([
            format!("{runtime} load --input {}", guest.work().join("image.tar").display()),
            format!("loaded-sha256 {hash}"),
            format!(
                "{runtime} run --detach --pull=never --restart=unless-stopped --name grant-{} grant/test:latest",
                spec.grant_id.short()
            ),
        ]);
        assert_eq!(log, expected, "stderr:\n{}", guest.stderr());
        assert_eq!(store.requests(), [format!("/blobs/{hash}")]);
    }
}

#[test]
fn a_tampered_image_is_refused() {
    let image = image_bytes();
    let hash = sha256(&image);
    let mut tampered = image.clone();
    tampered[100_000] ^= 1;
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), tampered)]));
    let valid_to = now_unix_s() + 3_600;
    let guest = Guest::boot(&store_config(store.port), &spec(hash, valid_to), "start", &[]);
    guest.assert_refused("sha256", &arming(&guest.log(), valid_to + 120));
    assert_eq!(store.requests().len(), 1, "a mismatch is not retried");
}

#[test]
fn a_hash_the_store_does_not_have_is_refused_after_bounded_retries() {
    let image = image_bytes();
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{}", sha256(&image)), image)]));
    let wrong = ImageHash([0x77; 32]);
    let valid_to = now_unix_s() + 3_600;
    let guest = Guest::boot(&store_config(store.port), &spec(wrong, valid_to), "start", &[]);
    guest.assert_refused("fetching the image failed 3 times", &arming(&guest.log(), valid_to + 120));
    assert_eq!(store.requests(), vec![format!("/blobs/{wrong}"); 3]);
}

#[test]
fn an_unreachable_store_is_refused_after_bounded_retries() {
    let image = image_bytes();
    let valid_to = now_unix_s() + 3_600;
    let guest = Guest::boot(&store_config(closed_port()), &spec(sha256(&image), valid_to), "start", &[]);
    guest.assert_refused("fetching the image failed 3 times", &arming(&guest.log(), valid_to + 120));
}

#[test]
fn a_passed_deadline_powers_off_before_fetching() {
    let image = image_bytes();
    let hash = sha256(&image);
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image)]));
    let cfg = GuestConfig { deadline_grace_s: 0, ..store_config(store.port) };
    let guest = Guest::boot(&cfg, &spec(hash, now_unix_s() - 1), "start", &[]);
    guest.assert_refused("has passed", &[]);
    assert!(store.requests().is_empty(), "nothing may be fetched after the deadline");
}

#[test]
fn the_per_boot_mode_only_arms_the_deadline() {
    let store = ContentStore::serve(HashMap::new());
    let valid_to = now_unix_s() + 600;
    let guest = Guest::boot(&store_config(store.port), &spec(ImageHash([1; 32]), valid_to), "arm-deadline", &[]);
    assert!(guest.output.status.success(), "stderr:\n{}", guest.stderr());
    assert_eq!(guest.log(), arming(&guest.log(), valid_to + 120));
    assert!(store.requests().is_empty());
}

#[test]
fn without_systemd_run_the_deadline_falls_back_to_shutdown_rounded_down() {
    let store = ContentStore::serve(HashMap::new());
    let valid_to = now_unix_s() + 600;
    let guest = Guest::boot(
        &store_config(store.port),
        &spec(ImageHash([1; 32]), valid_to),
        "arm-deadline",
        &[("FAKE_SYSTEMD_RUN_EXIT", "1")],
    );
    assert!(guest.output.status.success(), "stderr:\n{}", guest.stderr());
    let log = guest.log();
    assert_eq!(log.len(), 3, "{log:?}");
    // 720 s left, minus the second or two the test may take, rounds down to 11 minutes.
    assert!(log[2] == "shutdown -P +11" || log[2] == "shutdown -P +12", "{log:?}");

    let both_fail = Guest::boot(
        &store_config(store.port),
        &spec(ImageHash([1; 32]), valid_to),
        "arm-deadline",
        &[("FAKE_SYSTEMD_RUN_EXIT", "1"), ("FAKE_SHUTDOWN_EXIT", "1")],
    );
    assert!(!both_fail.output.status.success());
    assert_eq!(both_fail.log().last().map(String::as_str), Some("poweroff"), "no backstop, no machine");
}

#[test]
fn an_archive_with_other_than_one_image_is_refused() {
    let image = image_bytes();
    let hash = sha256(&image);
    for (load_output, count) in [
        ("Loaded image: a:1\\nLoaded image: b:2", "2"),
        ("nothing here", "0"),
        ("Loaded image: --privileged", "--privileged"),
    ] {
        let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image.clone())]));
        let valid_to = now_unix_s() + 3_600;
        let guest = Guest::boot(
            &store_config(store.port),
            &spec(hash, valid_to),
            "start",
            &[("FAKE_LOAD_OUTPUT", load_output)],
        );
        let mut expected = arming(&guest.log(), valid_to + 120);
        expected.extend([
            "systemctl start docker.service".to_owned(),
            format!("docker load --input {}", guest.work().join("image.tar").display()),
            format!("loaded-sha256 {hash}"),
        ]);
        guest.assert_refused(count, &expected);
    }
}

/// The script re-checks every value it reads, so even a vars file written by something other
/// than `render_user_data` cannot make it run a command.
#[test]
fn a_hostile_vars_file_runs_nothing() {
    let witness = std::env::temp_dir().join(format!("guest-pwned-{}", std::process::id()));
    let touch = format!("$(touch {})", witness.display());
    let good = written_file(
        &parse(
            &render_user_data(&store_config(closed_port()), &spec(ImageHash([1; 32]), now_unix_s() + 600))
                .expect("renders"),
        ),
        VARS_PATH,
    )
    .to_owned();
    let replace = |key: &str, value: &str| {
        good.lines()
            .map(|l| if l.starts_with(&format!("{key}=")) { format!("{key}={value}") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cases = [
        (replace("IMAGE_URL", &format!("http://127.0.0.1/{touch}")), "bad value for IMAGE_URL"),
        (replace("IMAGE_URL", "http://127.0.0.1/x;reboot"), "bad value for IMAGE_URL"),
        (replace("GRANT_ID", &format!("{}`reboot`", "a".repeat(64))), "bad value for GRANT_ID"),
        (replace("FETCH_ATTEMPTS", &format!("a[{touch}]")), "bad value for FETCH_ATTEMPTS"),
        (replace("POWEROFF_AT_UNIX_S", &format!("x[{touch}]")), "bad value for POWEROFF_AT_UNIX_S"),
        (replace("CONTAINER_RUNTIME", "reboot"), "bad value for CONTAINER_RUNTIME"),
        (format!("{good}\nPATH=/tmp"), "unknown key"),
        (format!("{good}\nIMAGE_SHA256={}", "0".repeat(64)), "repeated key"),
        (good.lines().skip(1).collect::<Vec<_>>().join("\n"), "lacks GRANT_ID"),
        (format!("{good}\n{touch}"), "malformed line"),
    ];
    for (vars, reason) in &cases {
        let guest = Guest::run(BOOT_SCRIPT, vars, "start", &[]);
        guest.assert_refused(reason, &[]);
        assert!(!witness.exists(), "a value was executed: {vars}");
    }
    let guest = Guest::run(BOOT_SCRIPT, &good, "start", &[("GRANT_GUEST_BACKOFF_S", &format!("a[{touch}]"))]);
    guest.assert_refused("bad GRANT_GUEST_BACKOFF_S", &[]);
    let guest = Guest::run(BOOT_SCRIPT, &good, "reboot", &[]);
    guest.assert_refused("unknown mode", &[]);
    assert!(!witness.exists());
}
