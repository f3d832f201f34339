//! Runs the boot script under bash against a content store served on 127.0.0.1, with the
//! power-off, timer and container commands replaced by stand-ins that only record their
//! arguments, and `id` and `sudo` by stand-ins describing the login user. Each test checks the
//! exact list of recorded commands, so "nothing else runs" is part of every assertion. The
//! PATH check looks at real directories with the real `stat`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// An `id` stand-in that knows one user, `ec2-user`: `FAKE_ID_UID` is its uid (by default 4242,
/// which owns nothing the tests make) and `FAKE_ID_GROUPS` its groups as `name:gid` pairs (by
/// default its own group alone). Any other user does not exist. It records nothing: it only
/// answers questions.
const FAKE_ID: &str = r#"#!/bin/bash
if [[ $# -ne 2 || $2 != ec2-user ]]; then
  printf "id: '%s': no such user\n" "${2-}" >&2
  exit 1
fi
names=() gids=()
for pair in ${FAKE_ID_GROUPS:-ec2-user:4242}; do
  names+=("${pair%%:*}")
  gids+=("${pair##*:}")
done
case $1 in
  -u) printf '%s\n' "${FAKE_ID_UID:-4242}" ;;
  -G) printf '%s\n' "${gids[*]}" ;;
  -nG) printf '%s\n' "${names[*]}" ;;
  *) printf 'fake id: unexpected arguments: %s\n' "$*" >&2; exit 2 ;;
esac
"#;

/// A `sudo` stand-in for `sudo -n -l -U USER` only: prints `FAKE_SUDO_LIST` (by default that
/// USER may not run sudo, in sudo's words) and exits with `FAKE_SUDO_EXIT`. It records nothing.
const FAKE_SUDO: &str = r#"#!/bin/bash
if [[ $# -ne 4 || $1 != -n || $2 != -l || $3 != -U ]]; then
  printf 'fake sudo: unexpected arguments: %s\n' "$*" >&2
  exit 2
fi
printf '%b\n' "${FAKE_SUDO_LIST:-User $4 is not allowed to run sudo on guest.}"
exit "${FAKE_SUDO_EXIT:-0}"
"#;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The host key cloud-init would have generated on the test's machine, comment and all.
fn guest_host_key() -> SshKeyPair {
    SshKeyPair::ed25519_from_seed([7; 32], "root@ip-10-0-0-7").expect("a key")
}

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

/// A fresh directory holding the stand-ins, where one run of the boot script happens. A test
/// may make directories in it and put them on the front of the script's PATH first.
struct Machine {
    dir: PathBuf,
    path_first: Vec<String>,
}

impl Machine {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "guest-script-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("create the stand-in directory");
        // Whatever the umask, the stand-ins' directory and the one above it are writable by
        // their owner alone, who is not the login user unless a test says so, so the PATH
        // check passes over them.
        for made in [&dir, &bin] {
            std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o755)).expect("chmod the directory");
        }
        for (name, text) in [
            ("docker", FAKE_RUNTIME),
            ("podman", FAKE_RUNTIME),
            ("poweroff", RECORDER),
            ("shutdown", RECORDER),
            ("systemctl", RECORDER),
            ("systemd-run", RECORDER),
            ("reboot", RECORDER),
            ("halt", RECORDER),
            ("id", FAKE_ID),
            ("sudo", FAKE_SUDO),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).expect("write a stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod a stand-in");
        }
        std::fs::write(dir.join("log"), "").expect("create the log");
        std::fs::create_dir_all(dir.join("ssh")).expect("create the ssh directory");
        std::fs::write(dir.join("ssh/ssh_host_ed25519_key.pub"), format!("{}\n", guest_host_key().public_openssh))
            .expect("write the host key");
        Self { dir, path_first: Vec::new() }
    }

    /// Makes the directory `name` (and any missing above it) in the machine's directory, with
    /// `mode`.
    fn make_dir(&self, name: &str, mode: u32) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::create_dir_all(&path).expect("create a directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod a directory");
        path
    }

    /// Puts `entry` on the script's PATH, before the stand-ins and after entries put there
    /// earlier.
    fn put_on_path(&mut self, entry: impl AsRef<Path>) {
        self.path_first.push(entry.as_ref().display().to_string());
    }

    /// Renders the user data for `cfg` and `spec`, writes the script and vars file from it and
    /// runs `boot.sh <mode> vars`.
    fn boot(self, cfg: &GuestConfig, spec: &GuestSpec<'_>, mode: &str, env: &[(&str, &str)]) -> Guest {
        let user_data = render_user_data(cfg, spec).expect("renders");
        let document = parse(&user_data);
        self.run(written_file(&document, BOOT_SCRIPT_PATH), written_file(&document, VARS_PATH), mode, env)
    }

    /// Runs `script <mode> vars` with the test's entries and then the stand-ins first on PATH.
    fn run(self, script: &str, vars: &str, mode: &str, env: &[(&str, &str)]) -> Guest {
        let dir = &self.dir;
        std::fs::write(dir.join("boot.sh"), script).expect("write the script");
        std::fs::write(dir.join("vars"), vars).expect("write the vars file");
        let mut path = self.path_first.clone();
        path.push(dir.join("bin").display().to_string());
        path.push(std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("timeout");
        command
            .args(["60", "bash"])
            .arg(dir.join("boot.sh"))
            .arg(mode)
            .arg(dir.join("vars"))
            .current_dir(dir)
            .env("PATH", path.join(":"))
            .env("GUEST_TEST_LOG", dir.join("log"))
            .env("GRANT_GUEST_WORK_DIR", dir.join("work"))
            .env("GRANT_GUEST_BACKOFF_S", "0")
            .env("GRANT_GUEST_SSH_DIR", dir.join("ssh"))
            .env("GRANT_GUEST_CONSOLE", dir.join("console"))
            .env("no_proxy", "*")
            .env("NO_PROXY", "*");
        for proxy in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
            command.env_remove(proxy);
        }
        command.envs(env.iter().copied());
        let output = command.output().expect("run bash");
        Guest { machine: self, output }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run of the boot script.
struct Guest {
    machine: Machine,
    output: Output,
}

impl Guest {
    /// Runs the boot script for `cfg` and `spec` on a fresh machine.
    fn boot(cfg: &GuestConfig, spec: &GuestSpec<'_>, mode: &str, env: &[(&str, &str)]) -> Self {
        Machine::new().boot(cfg, spec, mode, env)
    }

    /// Runs `script` with `vars` on a fresh machine.
    fn run(script: &str, vars: &str, mode: &str, env: &[(&str, &str)]) -> Self {
        Machine::new().run(script, vars, mode, env)
    }

    /// The recorded commands, one per line.
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.machine.dir.join("log"))
            .expect("read the log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn work(&self) -> PathBuf {
        self.machine.dir.join("work")
    }

    /// What the script wrote to the console (empty if nothing).
    fn console(&self) -> String {
        std::fs::read_to_string(self.machine.dir.join("console")).unwrap_or_default()
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
        let guest = Guest::run(embedded_boot_script(), vars, "start", &[]);
        guest.assert_refused(reason, &[]);
        assert!(!witness.exists(), "a value was executed: {vars}");
    }
    let guest =
        Guest::run(embedded_boot_script(), &good, "start", &[("GRANT_GUEST_BACKOFF_S", &format!("a[{touch}]"))]);
    guest.assert_refused("bad GRANT_GUEST_BACKOFF_S", &[]);
    let guest = Guest::run(embedded_boot_script(), &good, "reboot", &[]);
    guest.assert_refused("unknown mode", &[]);
    assert!(!witness.exists());
}

/// Boots `start` on `machine` against a store holding a good image, for `login_user` and
/// `runtime`, with the login user described to the `id` and `sudo` stand-ins by `env`, and
/// asserts that the script refused for `reason` right after arming the deadline: nothing was
/// fetched, loaded or run.
fn assert_login_user_refused(machine: Machine, login_user: &str, runtime: &str, env: &[(&str, &str)], reason: &str) {
    let image = image_bytes();
    let hash = sha256(&image);
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image)]));
    let cfg = GuestConfig {
        login_user: login_user.to_owned(),
        container_runtime: runtime.to_owned(),
        ..store_config(store.port)
    };
    let valid_to = now_unix_s() + 3_600;
    let guest = machine.boot(&cfg, &spec(hash, valid_to), "start", env);
    guest.assert_refused(reason, &arming(&guest.log(), valid_to + 120));
    assert!(store.requests().is_empty(), "nothing may be fetched for a privileged login user");
    assert_eq!(guest.console(), "", "a machine refused to its login user must not present a host key");
}

#[test]
fn the_host_key_the_script_prints_is_the_one_the_backend_reads_back() {
    let image = image_bytes();
    let hash = sha256(&image);
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image)]));
    let guest = Guest::boot(&store_config(store.port), &spec(hash, now_unix_s() + 3_600), "start", &[]);
    assert!(guest.output.status.success(), "stderr:\n{}", guest.stderr());
    let console = guest.console();
    // The public half only, without cloud-init's comment, between cloud-init's own lines.
    let key = guest_host_key();
    let bare = key.public_openssh.rsplit_once(' ').expect("a comment").0;
    assert_eq!(console, format!("{CONSOLE_KEYS_BEGIN}\n{bare}\n{CONSOLE_KEYS_END}\n"));
    assert!(!console.contains("PRIVATE"));
    assert_eq!(host_key_from_console(&console), Ok(Some(bare.to_owned())));
    // Next to cloud-init's own block, as a real console has it, the key still reads back.
    let both = format!("{CONSOLE_KEYS_BEGIN}\n{}\n{CONSOLE_KEYS_END}\nci-info: done\n{console}", key.public_openssh);
    assert_eq!(host_key_from_console(&both), Ok(Some(bare.to_owned())));
}

#[test]
fn a_machine_without_a_usable_host_key_powers_off_before_fetching() {
    for (text, reason) in [
        (None, "no ed25519 host key in"),
        (Some("ssh-ed25519 not*base64 root@x\n"), "the ed25519 host key in"),
        (Some("ssh-rsa AAAAB3NzaC1yc2E root@x\n"), "the ed25519 host key in"),
    ] {
        let image = image_bytes();
        let hash = sha256(&image);
        let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image)]));
        let machine = Machine::new();
        let path = machine.dir.join("ssh/ssh_host_ed25519_key.pub");
        match text {
            None => std::fs::remove_file(&path).expect("remove the key"),
            Some(text) => std::fs::write(&path, text).expect("write the key"),
        }
        let valid_to = now_unix_s() + 3_600;
        let guest = machine.boot(&store_config(store.port), &spec(hash, valid_to), "start", &[]);
        guest.assert_refused(reason, &arming(&guest.log(), valid_to + 120));
        assert!(store.requests().is_empty(), "nothing may be fetched without a host key");
        assert_eq!(guest.console(), "");
    }
}

#[test]
fn an_unprivileged_login_user_gets_the_machine() {
    // Directories on PATH that look close to writable but are not: one below a sticky
    // world-writable directory, a missing one below a closed directory, a link to a closed
    // directory, and a group-writable one whose group the user is not in.
    let mut machine = Machine::new();
    machine.make_dir("sticky", 0o1777);
    let below_sticky = machine.make_dir("sticky/bin", 0o755);
    let closed = machine.make_dir("closed", 0o755);
    let link = machine.dir.join("link");
    std::os::unix::fs::symlink(&closed, &link).expect("make a link");
    let other_group = machine.make_dir("other-group", 0o775);
    let other_gid = std::fs::metadata(&other_group).expect("stat").gid();
    for entry in [below_sticky, closed.join("missing"), link, other_group] {
        machine.put_on_path(entry);
    }
    let groups = format!("ec2-user:{} adm:{}", other_gid + 1, other_gid + 2);

    let image = image_bytes();
    let hash = sha256(&image);
    let store = ContentStore::serve(HashMap::from([(format!("/blobs/{hash}"), image)]));
    let valid_to = now_unix_s() + 3_600;
    let spec = spec(hash, valid_to);
    let guest = machine.boot(&store_config(store.port), &spec, "start", &[("FAKE_ID_GROUPS", &groups)]);
    assert!(guest.output.status.success(), "stderr:\n{}", guest.stderr());
    let mut expected = arming(&guest.log(), valid_to + 120);
    expected.extend([
        "systemctl start docker.service".to_owned(),
        format!("docker load --input {}", guest.work().join("image.tar").display()),
        format!("loaded-sha256 {hash}"),
        format!(
            "docker run --detach --pull=never --restart=unless-stopped --name grant-{} grant/test:latest",
            spec.grant_id.short()
        ),
    ]);
    assert_eq!(guest.log(), expected, "stderr:\n{}", guest.stderr());
    assert!(
        guest.stderr().contains("the login user ec2-user (uid 4242, groups ec2-user adm) is unprivileged"),
        "the check must say whom it passed:\n{}",
        guest.stderr()
    );
}

#[test]
fn a_missing_login_user_is_refused() {
    assert_login_user_refused(
        Machine::new(),
        "grant-ghost",
        "docker",
        &[],
        "the login user grant-ghost does not exist",
    );
}

#[test]
fn a_login_user_with_uid_0_is_refused() {
    let uid = [("FAKE_ID_UID", "0")];
    assert_login_user_refused(Machine::new(), "ec2-user", "docker", &uid, "the login user ec2-user has uid 0");
}

#[test]
fn a_login_user_in_wheel_is_refused() {
    let groups = [("FAKE_ID_GROUPS", "ec2-user:4242 adm:4 wheel:10")];
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &groups,
        "the login user ec2-user is in group wheel",
    );
}

#[test]
fn a_login_user_in_sudo_is_refused() {
    let groups = [("FAKE_ID_GROUPS", "ec2-user:4242 sudo:27")];
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &groups,
        "the login user ec2-user is in group sudo",
    );
}

#[test]
fn a_login_user_in_admin_is_refused() {
    let groups = [("FAKE_ID_GROUPS", "admin:4242")];
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &groups,
        "the login user ec2-user is in group admin",
    );
}

#[test]
fn a_login_user_that_can_write_a_console_is_refused() {
    // dialout owns the serial console GetConsoleOutput reads, tty the virtual ones: a member
    // could print a host key block of its own.
    for group in ["dialout", "tty"] {
        let groups = [("FAKE_ID_GROUPS", format!("ec2-user:4242 {group}:20"))];
        let env: Vec<(&str, &str)> = groups.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_login_user_refused(
            Machine::new(),
            "ec2-user",
            "docker",
            &env,
            &format!("the login user ec2-user is in group {group}"),
        );
    }
}

#[test]
fn a_login_user_in_docker_is_refused() {
    let groups = [("FAKE_ID_GROUPS", "ec2-user:4242 docker:993")];
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &groups,
        "the login user ec2-user is in group docker",
    );
}

#[test]
fn a_login_user_in_the_runtimes_group_is_refused_when_podman_runs_the_image() {
    let groups = [("FAKE_ID_GROUPS", "ec2-user:4242 podman:992")];
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "podman",
        &groups,
        "the login user ec2-user is in group podman",
    );
}

#[test]
fn a_login_user_with_a_sudo_rule_is_refused() {
    let listing = "Matching Defaults entries for ec2-user on guest:\\n    env_reset, secure_path=/usr/bin\\n\\n\
                   User ec2-user may run the following commands on guest:\\n    (ALL) NOPASSWD: ALL";
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &[("FAKE_SUDO_LIST", listing)],
        "the login user ec2-user has a sudo rule: (ALL) NOPASSWD: ALL",
    );
}

/// A sudo whose answer the script cannot read is no answer: it refuses rather than guess.
#[test]
fn an_unreadable_sudo_listing_is_refused() {
    assert_login_user_refused(
        Machine::new(),
        "ec2-user",
        "docker",
        &[("FAKE_SUDO_LIST", "sudo: /etc/sudoers is world writable"), ("FAKE_SUDO_EXIT", "1")],
        "unreadable sudo -l -U ec2-user: sudo: /etc/sudoers is world writable",
    );
}

#[test]
fn a_path_directory_the_login_user_owns_is_refused() {
    let mut machine = Machine::new();
    // Owned and closed to everyone else: the owner can still chmod it.
    let owned = machine.make_dir("owned", 0o555);
    // As root the test gives the directory to the stand-in's default uid; otherwise it cannot,
    // and tells the stand-in that the login user is the test's own user instead.
    let mut uid = std::fs::metadata(&owned).expect("stat").uid();
    if uid == 0 {
        std::os::unix::fs::chown(&owned, Some(4242), None).expect("chown as root");
        uid = 4242;
    }
    machine.put_on_path(&owned);
    assert_login_user_refused(
        machine,
        "ec2-user",
        "docker",
        &[("FAKE_ID_UID", &uid.to_string())],
        &format!(
            "the login user ec2-user can write {0} (owned by it), so it controls {0} on root's PATH",
            owned.display()
        ),
    );
}

#[test]
fn a_group_writable_path_directory_is_refused() {
    let mut machine = Machine::new();
    let shared = machine.make_dir("shared", 0o775);
    let gid = std::fs::metadata(&shared).expect("stat").gid();
    machine.put_on_path(&shared);
    assert_login_user_refused(
        machine,
        "ec2-user",
        "docker",
        &[("FAKE_ID_GROUPS", &format!("ec2-user:4242 builders:{gid}"))],
        &format!(
            "the login user ec2-user can write {0} (writable by its group {gid}), so it controls {0} on root's PATH",
            shared.display()
        ),
    );
}

#[test]
fn a_world_writable_path_directory_is_refused() {
    // The sticky bit does not help on PATH itself: creating a new name there is enough.
    for mode in [0o777, 0o1777] {
        let mut machine = Machine::new();
        let open = machine.make_dir("open", mode);
        machine.put_on_path(&open);
        let reason = format!(
            "the login user ec2-user can write {0} (world-writable), so it controls {0} on root's PATH",
            open.display()
        );
        assert_login_user_refused(machine, "ec2-user", "docker", &[], &reason);
    }
}

/// A directory above a PATH entry, or above where a missing entry would be, or behind a link,
/// lets the user put its own directory in the entry's place.
#[test]
fn a_path_entry_the_login_user_can_replace_is_refused() {
    type Setup = fn(&Machine) -> (PathBuf, String);
    let cases: [Setup; 4] = [
        |m| {
            let open = m.make_dir("open", 0o777);
            let bin = m.make_dir("open/bin", 0o755);
            let reason = format!("can write {} (world-writable), so it controls {} on", open.display(), bin.display());
            (bin, reason)
        },
        |m| {
            let open = m.make_dir("open", 0o777);
            let missing = open.join("missing");
            let reason =
                format!("can write {} (world-writable), so it controls {} on", open.display(), missing.display());
            (missing, reason)
        },
        |m| {
            let open = m.make_dir("open", 0o777);
            let link = m.dir.join("link");
            std::os::unix::fs::symlink(&open, &link).expect("make a link");
            (link.clone(), format!("can write {0} (world-writable), so it controls {0} on", link.display()))
        },
        |m| {
            // The link and everything above it are closed; the writable directory is above
            // its target.
            m.make_dir("open", 0o777);
            let bin = m.make_dir("open/bin", 0o755);
            let link = m.dir.join("link");
            std::os::unix::fs::symlink(&bin, &link).expect("make a link");
            let bin = std::fs::canonicalize(&bin).expect("canonical path");
            let open = bin.parent().expect("a parent").to_owned();
            let reason = format!("can write {} (world-writable), so it controls {} on", open.display(), bin.display());
            (link, reason)
        },
    ];
    for setup in cases {
        let mut machine = Machine::new();
        let (entry, reason) = setup(&machine);
        machine.put_on_path(entry);
        assert_login_user_refused(machine, "ec2-user", "docker", &[], &reason);
    }
}

#[test]
fn a_relative_path_entry_is_refused() {
    for entry in [".", "", "bin"] {
        let mut machine = Machine::new();
        machine.put_on_path(entry);
        let reason = format!("root's PATH has the relative entry '{entry}'");
        assert_login_user_refused(machine, "ec2-user", "docker", &[], &reason);
    }
}
