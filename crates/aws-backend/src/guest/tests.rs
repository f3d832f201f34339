//! Tests of the rendered user data: its structure, cloud-init's own validator, refusals of bad
//! input, and a property test over hostile grant values and configuration strings.

use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::Value;

use super::*;

/// The backend's host key for every test.
pub(super) static HOST_KEY: LazyLock<SshKeyPair> =
    LazyLock::new(|| SshKeyPair::ed25519_from_seed([1; 32], "host").expect("host key"));

/// The per-grant login key for every test.
pub(super) static LOGIN_KEY: LazyLock<SshKeyPair> =
    LazyLock::new(|| SshKeyPair::ed25519_from_seed([2; 32], "grant-login").expect("login key"));

pub(super) fn spec(image_hash: ImageHash, valid_to_unix_s: u64) -> GuestSpec<'static> {
    GuestSpec {
        grant_id: GrantId([0xab; 32]),
        image_hash,
        authorized_key_openssh: &LOGIN_KEY.public_openssh,
        host_key: None,
        valid_to_unix_s,
    }
}

/// [`spec`] with the backend's host key shipped in the user data (the `user_data` opt-in).
pub(super) fn spec_shipping_host_key(image_hash: ImageHash, valid_to_unix_s: u64) -> GuestSpec<'static> {
    GuestSpec { host_key: Some(&HOST_KEY), ..spec(image_hash, valid_to_unix_s) }
}

fn config() -> GuestConfig {
    GuestConfig::with_content_store("https://store.example/blobs/{hash}")
}

/// [`config`] with `host_keys = "user_data"`.
fn config_shipping_host_key() -> GuestConfig {
    GuestConfig { host_keys: HostKeys::UserData, ..config() }
}

/// The JSON document after the `#cloud-config` line.
pub(super) fn parse(user_data: &str) -> Value {
    let body = user_data.strip_prefix("#cloud-config\n").expect("user data starts with #cloud-config");
    serde_json::from_str(body).expect("user data is JSON")
}

/// The content of the file written to `path`.
pub(super) fn written_file<'a>(document: &'a Value, path: &str) -> &'a str {
    document["write_files"]
        .as_array()
        .expect("write_files is a list")
        .iter()
        .find(|f| f["path"] == path)
        .and_then(|f| f["content"].as_str())
        .unwrap_or_else(|| panic!("no file {path} in write_files"))
}

/// A vars file value is acceptable to the boot script: the same character sets as its patterns.
fn vars_value_ok(key: &str, value: &str) -> bool {
    let hex64 = |v: &str| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match key {
        "GRANT_ID" | "IMAGE_SHA256" => hex64(value),
        "IMAGE_URL" => {
            let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
            rest.is_some_and(|r| !r.is_empty() && r.bytes().all(is_url_byte))
        }
        "CONTAINER_RUNTIME" => CONTAINER_RUNTIMES.contains(&value),
        "FETCH_ATTEMPTS" => value.parse::<u32>().is_ok_and(|n| (1..=20).contains(&n) && n.to_string() == value),
        "POWEROFF_AT_UNIX_S" => (1..=12).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit()),
        "LOGIN_USER" => check_login_user(value).is_ok(),
        _ => false,
    }
}

/// Checks everything rendering promises about `user_data` for `cfg` and `spec`.
fn assert_structure(user_data: &str, cfg: &GuestConfig, spec: &GuestSpec<'_>) {
    assert!(user_data.len() <= USER_DATA_MAX_BYTES, "{} bytes", user_data.len());
    assert!(user_data.is_ascii(), "user data must be ASCII so YAML reads it exactly as JSON");
    let document = parse(user_data);
    let mut keys: Vec<&str> = document.as_object().expect("a mapping").keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "allow_public_ssh_keys",
        "disable_root",
        "runcmd",
        "ssh",
        "ssh_deletekeys",
        "ssh_genkeytypes",
        "ssh_pwauth",
        "users",
        "write_files",
    ];
    if spec.host_key.is_some() {
        expected.insert(6, "ssh_keys");
    }
    assert_eq!(keys, expected);
    // The login key's private half never travels; no private key does unless the operator
    // opted in to shipping the host key.
    assert_no_private_key(user_data, &LOGIN_KEY);
    if cfg.host_keys == HostKeys::Guest {
        assert!(!user_data.contains("PRIVATE KEY"), "private key material in the default user data");
        assert_no_private_key(user_data, &HOST_KEY);
    }

    // Only the per-grant key, in canonical form, for the configured user.
    let canonical = PublicKey::from_openssh(spec.authorized_key_openssh)
        .and_then(|k| k.to_openssh())
        .expect("an accepted key parses");
    assert_eq!(
        document["users"],
        json!([{
            "name": cfg.login_user,
            "lock_passwd": true,
            "shell": "/bin/bash",
            "ssh_authorized_keys": [canonical],
        }])
    );
    assert_eq!(document["disable_root"], true);
    assert_eq!(document["ssh_pwauth"], false);
    assert_eq!(document["allow_public_ssh_keys"], false);
    assert_eq!(document["ssh_deletekeys"], true);
    assert_eq!(document["ssh_genkeytypes"], json!(["ed25519"]));
    assert_eq!(document["ssh"], json!({ "emit_keys_to_console": true }));
    if let Some(host_key) = spec.host_key {
        assert_eq!(
            document["ssh_keys"],
            json!({
                "ed25519_private": host_key.private_openssh.expose(),
                "ed25519_public": host_key.public_openssh,
            })
        );
    }

    // The script and the hook are constant; only the vars file differs between grants.
    assert_eq!(document["write_files"].as_array().map(Vec::len), Some(3));
    assert_eq!(written_file(&document, BOOT_SCRIPT_PATH), embedded_boot_script());
    assert_eq!(written_file(&document, PER_BOOT_HOOK_PATH), PER_BOOT_HOOK);
    assert_eq!(document["runcmd"], json!([["/bin/bash", BOOT_SCRIPT_PATH, "start", VARS_PATH]]));

    let vars = written_file(&document, VARS_PATH);
    let lines: Vec<(&str, &str)> = vars.lines().map(|l| l.split_once('=').expect("KEY=VALUE")).collect();
    let keys: Vec<&str> = lines.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "GRANT_ID",
            "IMAGE_SHA256",
            "IMAGE_URL",
            "CONTAINER_RUNTIME",
            "FETCH_ATTEMPTS",
            "POWEROFF_AT_UNIX_S",
            "LOGIN_USER"
        ]
    );
    for (key, value) in &lines {
        assert!(vars_value_ok(key, value), "{key}={value:?} is outside the script's character set");
    }
    assert_eq!(lines[0].1, spec.grant_id.to_hex());
    assert_eq!(lines[1].1, spec.image_hash.to_hex());
    assert!(lines[2].1.contains(&spec.image_hash.to_hex()), "the URL names the hash: {}", lines[2].1);
    assert_eq!(lines[3].1, cfg.container_runtime);
    assert_eq!(lines[4].1, cfg.fetch_attempts.to_string());
    assert_eq!(lines[5].1, (spec.valid_to_unix_s + cfg.deadline_grace_s).to_string());
    assert_eq!(lines[6].1, cfg.login_user);
}

#[test]
fn renders_the_grant_into_a_constant_script_and_a_vars_file() {
    let cfg = config();
    let spec = spec(ImageHash([0x5a; 32]), 1_700_000_000);
    let user_data = render_user_data(&cfg, &spec).expect("renders");
    assert_structure(&user_data, &cfg, &spec);
    let vars = written_file(&parse(&user_data), VARS_PATH).to_owned();
    assert_eq!(
        vars,
        format!(
            "GRANT_ID={}\nIMAGE_SHA256={}\nIMAGE_URL=https://store.example/blobs/{}\nCONTAINER_RUNTIME=docker\n\
             FETCH_ATTEMPTS=5\nPOWEROFF_AT_UNIX_S=1700000060\nLOGIN_USER=ec2-user\n",
            "ab".repeat(32),
            "5a".repeat(32),
            "5a".repeat(32)
        )
    );
}

/// Runs `cloud-init schema` on `user_data`; fails loudly when cloud-init is not installed.
fn assert_cloud_init_accepts(user_data: &str, name: &str) {
    let path: PathBuf = std::env::temp_dir().join(format!("guest-schema-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, user_data).expect("write the user data");
    let output = Command::new("cloud-init").arg("schema").arg("--config-file").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "cloud-init is not installed, so the user data cannot be validated: install it with \
             `apt-get install -y cloud-init` (cargo xtask ci does this when it is missing)"
        ),
        Err(e) => panic!("running cloud-init schema failed: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("Valid cloud-config"),
        "cloud-init schema refused the {name} user data ({}):\n{stdout}\n{stderr}\n{user_data}",
        output.status
    );
}

#[test]
fn cloud_init_accepts_the_user_data() {
    let hostile_comment_key = format!("{} it's \"$(reboot)\"; `id` \\ {{hash}} #", LOGIN_KEY.public_openssh);
    let plain = config();
    let ipv6 = GuestConfig {
        content_store_url: "http://[::1]:8080/v1/blobs?sha256={hash}&format=docker-archive".into(),
        login_user: "_grant-user".into(),
        container_runtime: "podman".into(),
        fetch_attempts: 20,
        deadline_grace_s: DEADLINE_GRACE_S_MAX,
        host_keys: HostKeys::Guest,
        host_key_wait_s: 600,
    };
    let base = spec(ImageHash([0x11; 32]), 1_800_000_000);
    let hostile = GuestSpec { authorized_key_openssh: &hostile_comment_key, ..base };
    let shipping = config_shipping_host_key();
    let shipped = spec_shipping_host_key(ImageHash([0x11; 32]), 1_800_000_000);
    for (name, cfg, spec) in
        [("plain", &plain, &base), ("ipv6-podman", &ipv6, &hostile), ("host-key-in-user-data", &shipping, &shipped)]
    {
        let user_data = render_user_data(cfg, spec).expect("renders");
        assert_structure(&user_data, cfg, spec);
        assert_cloud_init_accepts(&user_data, name);
    }
}

#[test]
fn configuration_deserializes_with_defaults_and_refuses_unknown_fields() {
    let cfg: GuestConfig = toml::from_str(r#"content_store_url = "https://store.example/blobs/{hash}""#)
        .expect("only the URL is required");
    assert_eq!(cfg, config());
    cfg.validate().expect("defaults are valid");
    let err = toml::from_str::<GuestConfig>("content_store_url = \"https://s/{hash}\"\nfetch_attempt = 3")
        .expect_err("a misspelt field must not be ignored");
    assert!(err.to_string().contains("fetch_attempt"), "{err}");
}

#[test]
fn bad_configuration_is_refused_naming_the_field_and_the_fix() {
    let cases: Vec<(&str, GuestConfig, &str)> = vec![
        ("content_store_url", GuestConfig::with_content_store("https://store.example/blobs/"), "{hash}"),
        ("content_store_url", GuestConfig::with_content_store("store.example/{hash}"), "http(s) URL"),
        ("content_store_url", GuestConfig::with_content_store("ftp://store.example/{hash}"), "http"),
        ("content_store_url", GuestConfig::with_content_store("https://u:p@store.example/{hash}"), "credentials"),
        ("content_store_url", GuestConfig::with_content_store("https://store.example/{hash}#x"), "fragment"),
        (
            "content_store_url",
            GuestConfig::with_content_store("https://store.example/{hash}?a=$(id)"),
            "percent-encode",
        ),
        (
            "content_store_url",
            GuestConfig::with_content_store("https://store.example/{hash}\n;reboot"),
            "percent-encode",
        ),
        ("login_user", GuestConfig { login_user: "Ec2-user".into(), ..config() }, "ec2-user"),
        ("login_user", GuestConfig { login_user: "a;reboot".into(), ..config() }, "ec2-user"),
        ("login_user", GuestConfig { login_user: String::new(), ..config() }, "ec2-user"),
        ("login_user", GuestConfig { login_user: "a".repeat(33), ..config() }, "ec2-user"),
        ("login_user", GuestConfig { login_user: "root".into(), ..config() }, "unprivileged"),
        ("container_runtime", GuestConfig { container_runtime: "docker; reboot".into(), ..config() }, "docker, podman"),
        ("fetch_attempts", GuestConfig { fetch_attempts: 0, ..config() }, "1 to 20"),
        ("fetch_attempts", GuestConfig { fetch_attempts: 21, ..config() }, "1 to 20"),
        ("deadline_grace_s", GuestConfig { deadline_grace_s: 86_401, ..config() }, "at most 86400"),
    ];
    for (field, cfg, fix) in cases {
        let err = cfg.validate().expect_err(field);
        let message = err.to_string();
        assert!(matches!(&err, GuestError::Config { field: f, .. } if *f == field), "{message}");
        assert!(message.contains(field) && message.contains(fix), "{message} should name {field} and {fix}");
        assert!(!message.contains('\n'), "one line: {message}");
        let rendered = render_user_data(&cfg, &spec(ImageHash([0; 32]), 0)).expect_err("rendering validates too");
        assert_eq!(rendered.to_string(), message);
    }
}

#[test]
fn only_one_plain_public_key_is_authorized() {
    let key = &LOGIN_KEY.public_openssh;
    let cases = [
        format!("command=\"reboot\" {key}"),
        format!("{key}\n{}", HOST_KEY.public_openssh),
        format!("{key}\r"),
        "ssh-ed25519 AAAAnotbase64!".to_owned(),
        String::new(),
        format!("{key} caf\u{e9}"),
        "x".repeat(5_000),
    ];
    for line in &cases {
        let spec = GuestSpec { authorized_key_openssh: line, ..spec(ImageHash([0; 32]), 0) };
        let err = render_user_data(&config(), &spec).expect_err(line);
        let message = err.to_string();
        assert!(matches!(err, GuestError::AuthorizedKey { .. }), "{message}");
        assert!(message.contains("ssh-ed25519 AAAA... grant"), "the fix shows an example: {message}");
    }
    // A valid key is written back in canonical form, so stray spaces or a trailing newline
    // cannot reach authorized_keys.
    let padded = format!("{key}   ");
    let spec = GuestSpec { authorized_key_openssh: &padded, ..spec(ImageHash([0; 32]), 0) };
    let user_data = render_user_data(&config(), &spec).expect("renders");
    assert_eq!(parse(&user_data)["users"][0]["ssh_authorized_keys"], json!([key]));
}

#[test]
fn unusable_host_keys_are_refused_without_printing_the_private_half() {
    let other = SshKeyPair::ed25519_from_seed([3; 32], "other").expect("key");
    let mismatched = SshKeyPair { private_openssh: HOST_KEY.private_openssh.clone(), ..other.clone() };
    let garbage = SshKeyPair {
        private_openssh: backend_api::Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n"),
        ..HOST_KEY.clone()
    };
    let two_lines =
        SshKeyPair { public_openssh: format!("{}\nssh-ed25519 AAAA", HOST_KEY.public_openssh), ..HOST_KEY.clone() };
    for (pair, problem) in
        [(&mismatched, "does not match"), (&garbage, "not an OpenSSH private key"), (&two_lines, "one printable")]
    {
        let spec = GuestSpec { host_key: Some(pair), ..spec(ImageHash([0; 32]), 0) };
        let message = render_user_data(&config_shipping_host_key(), &spec).expect_err(problem).to_string();
        assert!(message.contains(problem) && message.contains("ed25519_from_seed"), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "the private half leaked: {message}");
    }
}

#[test]
fn a_deadline_past_year_9999_is_refused() {
    for valid_to in [u64::MAX, POWEROFF_AT_UNIX_S_MAX - 59, 1_700_000_000_000] {
        let message =
            render_user_data(&config(), &spec(ImageHash([0; 32]), valid_to)).expect_err("too late").to_string();
        assert!(message.contains(&valid_to.to_string()) && message.contains("not milliseconds"), "{message}");
    }
    render_user_data(&config(), &spec(ImageHash([0; 32]), POWEROFF_AT_UNIX_S_MAX - 60)).expect("the last second");
}

#[test]
fn oversized_user_data_is_refused_naming_the_size() {
    // The host key's comment is repeated in both halves; a long one pushes the size over.
    let bulky = SshKeyPair::ed25519_from_seed([4; 32], &"c".repeat(6_000)).expect("key");
    let spec = GuestSpec { host_key: Some(&bulky), ..spec(ImageHash([0; 32]), 0) };
    let err = render_user_data(&config_shipping_host_key(), &spec).expect_err("too large");
    let message = err.to_string();
    let GuestError::TooLarge { size_bytes, max_bytes } = err else { panic!("expected TooLarge, got {message}") };
    assert!(size_bytes > USER_DATA_MAX_BYTES && max_bytes == USER_DATA_MAX_BYTES);
    assert!(message.contains(&size_bytes.to_string()) && message.contains("16384"), "{message}");
    // The ordinary case leaves plenty of room.
    let normal = render_user_data(&config(), &super::tests::spec(ImageHash([0; 32]), 0)).expect("renders");
    assert!(normal.len() < USER_DATA_MAX_BYTES * 3 / 4, "{} bytes", normal.len());
}

/// Text built to break YAML, shell and the vars file: quotes, newlines, metacharacters,
/// Unicode line breaks and the placeholder itself.
fn hostile() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "(\\{hash\\}|[a-z0-9_ .:/?=&%+@,~-]|[\n\r\t'\"$`;|<>(){}#*!\\\\\\[\\]]|\u{85}|\u{2028}|\u{e9}|\u{0}){0,40}",
    )
    .expect("valid regex")
}

fn config_strategy() -> impl Strategy<Value = GuestConfig> {
    let url = prop_oneof![
        Just("https://store.example/blobs/{hash}".to_owned()),
        hostile(),
        hostile().prop_map(|s| format!("https://store.example/{s}{{hash}}")),
        hostile().prop_map(|s| format!("http://127.0.0.1:9/{{hash}}?{s}")),
    ];
    let user = prop_oneof![Just("ec2-user".to_owned()), "[a-z_][a-z0-9_-]{0,35}", hostile()];
    let runtime = prop_oneof![Just("docker".to_owned()), Just("podman".to_owned()), hostile()];
    let attempts = prop_oneof![1..=FETCH_ATTEMPTS_MAX, any::<u32>()];
    let grace = prop_oneof![0..=DEADLINE_GRACE_S_MAX, any::<u64>()];
    (url, user, runtime, attempts, grace).prop_map(
        |(content_store_url, login_user, container_runtime, fetch_attempts, deadline_grace_s)| GuestConfig {
            content_store_url,
            login_user,
            container_runtime,
            fetch_attempts,
            deadline_grace_s,
            host_keys: HostKeys::Guest,
            host_key_wait_s: 600,
        },
    )
}

fn authorized_key_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(LOGIN_KEY.public_openssh.clone()),
        hostile(),
        hostile().prop_map(|comment| format!("{} {comment}", LOGIN_KEY.public_openssh)),
        hostile().prop_map(|prefix| format!("{prefix}{}", LOGIN_KEY.public_openssh)),
    ]
}

proptest! {
    #[test]
    fn any_input_renders_the_same_script_or_a_clear_error(
        cfg in config_strategy(),
        key in authorized_key_strategy(),
        grant_id in any::<[u8; 32]>(),
        image_hash in any::<[u8; 32]>(),
        valid_to_unix_s in prop_oneof![0..=POWEROFF_AT_UNIX_S_MAX, any::<u64>()],
    ) {
        let spec = GuestSpec {
            grant_id: GrantId(grant_id),
            image_hash: ImageHash(image_hash),
            authorized_key_openssh: &key,
            host_key: None,
            valid_to_unix_s,
        };
        match render_user_data(&cfg, &spec) {
            Ok(user_data) => assert_structure(&user_data, &cfg, &spec),
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.contains(": "), "the message says what to do: {message}");
                prop_assert!(!message.contains('\n'), "the message is one line: {message}");
                prop_assert!(!message.contains("PRIVATE KEY"), "the private key leaked: {message}");
            }
        }
    }
}

/// Configurations inside every documented range.
fn valid_config_strategy() -> impl Strategy<Value = GuestConfig> {
    (
        "https?://[a-z]{1,10}\\.example(:[0-9]{1,4})?/[a-z0-9/._~-]{0,30}\\{hash\\}(\\?[a-z]{1,5}=[a-z0-9%+@,:]{0,10})?",
        "[a-z_][a-z0-9_-]{0,31}".prop_filter("root is refused", |u| u != "root"),
        prop_oneof![Just("docker".to_owned()), Just("podman".to_owned())],
        1..=FETCH_ATTEMPTS_MAX,
        0..=DEADLINE_GRACE_S_MAX,
    )
        .prop_map(|(content_store_url, login_user, container_runtime, fetch_attempts, deadline_grace_s)| GuestConfig {
            content_store_url,
            login_user,
            container_runtime,
            fetch_attempts,
            deadline_grace_s,
            host_keys: HostKeys::Guest,
            host_key_wait_s: 600,
        })
}

proptest! {
    #[test]
    fn values_inside_their_ranges_always_render(
        cfg in valid_config_strategy(),
        comment in "[ -~]{0,200}",
        grant_id in any::<[u8; 32]>(),
        image_hash in any::<[u8; 32]>(),
        valid_to_unix_s in 0..=POWEROFF_AT_UNIX_S_MAX - DEADLINE_GRACE_S_MAX,
    ) {
        let key = format!("{} {comment}", LOGIN_KEY.public_openssh);
        let spec = GuestSpec {
            grant_id: GrantId(grant_id),
            image_hash: ImageHash(image_hash),
            authorized_key_openssh: &key,
            host_key: None,
            valid_to_unix_s,
        };
        let user_data = render_user_data(&cfg, &spec);
        prop_assert!(user_data.is_ok(), "{:?}", user_data.err().map(|e| e.to_string()));
        if let Ok(user_data) = user_data {
            assert_structure(&user_data, &cfg, &spec);
        }
    }
}

/// Asserts that no line of `pair`'s private key body that is particular to it appears in `text`
/// (the first lines of every OpenSSH ed25519 private key are the same format header).
fn assert_no_private_key(text: &str, pair: &SshKeyPair) {
    static REFERENCE: LazyLock<SshKeyPair> =
        LazyLock::new(|| SshKeyPair::ed25519_from_seed([77; 32], "reference").expect("reference key"));
    let common: Vec<&str> = REFERENCE.private_openssh.expose().lines().collect();
    let particular = pair.private_openssh.expose().lines().filter(|l| !l.starts_with("-----") && !common.contains(l));
    let mut checked = 0;
    for line in particular {
        checked += 1;
        assert!(!text.contains(line), "a line of a private key is in the user data");
    }
    assert!(checked > 0, "the private key has lines of its own to look for");
}

#[test]
fn the_default_ships_no_host_key_and_the_opt_in_ships_the_backends() {
    let guest = render_user_data(&config(), &spec(ImageHash([0; 32]), 0)).expect("renders");
    assert!(parse(&guest).get("ssh_keys").is_none());
    let shipped =
        render_user_data(&config_shipping_host_key(), &spec_shipping_host_key(ImageHash([0; 32]), 0)).expect("renders");
    assert_eq!(parse(&shipped)["ssh_keys"]["ed25519_public"], HOST_KEY.public_openssh);
    // A mode and a key that disagree are refused, naming the setting.
    let mixed = render_user_data(&config(), &spec_shipping_host_key(ImageHash([0; 32]), 0)).expect_err("mixed");
    assert!(mixed.to_string().contains("host_keys") && !mixed.to_string().contains("PRIVATE KEY"), "{mixed}");
    let missing = render_user_data(&config_shipping_host_key(), &spec(ImageHash([0; 32]), 0)).expect_err("missing");
    assert!(missing.to_string().contains("user_data"), "{missing}");
}

#[test]
fn the_host_key_is_read_from_cloud_inits_console_block() {
    let public = HOST_KEY.public_openssh.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let console = format!(
        "[   12.3] cloud-init[901]: Cloud-init v. 22.2.2 running 'modules:final'\r\n\
         ec2: #############################################################\r\n\
         ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n\
         ec2: 256 SHA256:abc root@ip-10-0-0-1 (ED25519)\r\n\
         ec2: -----END SSH HOST KEY FINGERPRINTS-----\r\n\
         -----BEGIN SSH HOST KEY KEYS-----\r\n\
         {public} root@ip-10-0-0-1\r\n\
         -----END SSH HOST KEY KEYS-----\r\n"
    );
    assert_eq!(host_key_from_console(&console), Ok(Some(public.clone())));
    // Nothing yet, or a block still being written: keep waiting.
    assert_eq!(host_key_from_console(""), Ok(None));
    let partial = console.split("-----END SSH HOST KEY KEYS").next().expect("a prefix").to_owned();
    assert_eq!(host_key_from_console(&partial), Ok(None));
    // A block without an ed25519 key, or with a damaged one, is refused with the reason.
    let rsa_only = "-----BEGIN SSH HOST KEY KEYS-----\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC root@x\n-----END SSH HOST KEY KEYS-----\n";
    assert!(host_key_from_console(rsa_only).expect_err("no ed25519").contains("ed25519"));
    let damaged = console.replace(&public, "ssh-ed25519 AAAA!!!");
    assert!(host_key_from_console(&damaged).is_err());
    // A block with a second, different ed25519 line (someone else wrote into it) is refused.
    let injected = console.replace(
        &public,
        &format!("{public}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f x"),
    );
    assert!(host_key_from_console(&injected).expect_err("two in one block").contains("two different"));
    // The same block printed again (a reboot) is fine; a second, different key is refused.
    assert_eq!(host_key_from_console(&format!("{console}{console}")), Ok(Some(public.clone())));
    let other = SshKeyPair::ed25519_from_seed([9; 32], "other").expect("key");
    let two = format!(
        "{console}-----BEGIN SSH HOST KEY KEYS-----\n{}\n-----END SSH HOST KEY KEYS-----\n",
        other.public_openssh
    );
    assert!(host_key_from_console(&two).expect_err("two keys").contains("two different"));
}
