//! The guest contract: the cloud-init user data rendered for one grant.
//!
//! What the guest does at boot is our promise to the requester and to the coalition: only the
//! per-grant key can log in (as an unprivileged user, so the promise below holds); the host key
//! is generated on the guest and its public half reaches the backend through the console output,
//! a channel AWS authenticates, so the requester can pin it before connecting; the machine runs
//! only the image whose sha256 the grant names; and it powers itself off at the deadline even if
//! the bridge is gone.
//!
//! The user data is a `#cloud-config` document written as JSON (JSON is YAML). The boot script
//! ([`embedded_boot_script`]) is constant text, identical for every grant; the grant's values reach it
//! through a separate vars file of `KEY=VALUE` lines, each checked here against a strict
//! character set and checked again by the script, which reads the file as data and never
//! sources it. So no grant field or configuration string can change the script's structure.
//!
//! Nothing secret goes into the user data: it is readable from the instance metadata service by
//! every process on the instance, and through `ec2:DescribeInstanceAttribute` by any IAM
//! principal allowed it. So by default the host key is not in it ([`HostKeys::Guest`]), and a
//! content store URL with a user name or password is refused. [`HostKeys::UserData`], where the
//! backend generates the host key and ships its private half in the user data, exists only for
//! targets that cannot serve console output (moto); it is an explicit opt-in.

use backend_api::{GrantId, ImageHash};
use serde::Deserialize;
use serde_json::json;
use ssh_key::{Algorithm, PrivateKey, PublicKey};

use crate::keys::SshKeyPair;

/// EC2's limit on user data, in bytes before base64.
pub const USER_DATA_MAX_BYTES: usize = 16_384;

/// The boot script as written, comments included. The guest gets [`embedded_boot_script`].
pub const BOOT_SCRIPT: &str = include_str!("guest/boot.sh");

/// The boot script byte for byte as it lands on the guest: [`BOOT_SCRIPT`] without its comment
/// lines (all but the `#!` line), which are a third of it and would otherwise crowd the 16 KiB
/// of user data. The script has no heredocs or multi-line strings, so no line that starts with
/// `#` is anything but a comment; the script tests run this text, not the file.
pub fn embedded_boot_script() -> &'static str {
    static EMBEDDED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut lines = BOOT_SCRIPT.lines();
        let shebang = lines.next().unwrap_or_default();
        std::iter::once(shebang).chain(lines.filter(|line| !line.trim_start().starts_with('#'))).fold(
            String::with_capacity(BOOT_SCRIPT.len()),
            |mut text, line| {
                text.push_str(line);
                text.push('\n');
                text
            },
        )
    });
    &EMBEDDED
}

/// Where the boot script is written on the guest.
pub const BOOT_SCRIPT_PATH: &str = "/usr/local/lib/grant-guest/boot.sh";

/// Where the vars file (the grant's values, `KEY=VALUE` lines) is written on the guest.
pub const VARS_PATH: &str = "/etc/grant-guest/vars";

/// Where the hook that re-arms the deadline power-off on every boot is written on the guest.
/// cloud-init runs the scripts in this directory on every boot, so a reboot cannot shed the
/// deadline (systemd timers made with `systemd-run` do not survive one).
pub const PER_BOOT_HOOK_PATH: &str = "/var/lib/cloud/scripts/per-boot/grant-guest-deadline";

/// The per-boot hook's text: constant, like the boot script.
pub const PER_BOOT_HOOK: &str =
    "#!/bin/bash\nexec /bin/bash /usr/local/lib/grant-guest/boot.sh arm-deadline /etc/grant-guest/vars\n";

/// The container runtimes the boot script knows how to drive.
pub const CONTAINER_RUNTIMES: &[&str] = &["docker", "podman"];

/// The most fetch attempts a configuration may ask for.
pub const FETCH_ATTEMPTS_MAX: u32 = 20;

/// The longest grace after the deadline a configuration may ask for, in seconds (one day).
pub const DEADLINE_GRACE_S_MAX: u64 = 86_400;

/// The latest power-off time the guest accepts: 9999-12-31T23:59:59Z, in unix seconds. Later
/// values are nonsense and would not fit the script's arithmetic anyway.
pub const POWEROFF_AT_UNIX_S_MAX: u64 = 253_402_300_799;

/// The placeholder in [`GuestConfig::content_store_url`] that the image's post-hash replaces.
pub const HASH_PLACEHOLDER: &str = "{hash}";

/// The longest image URL accepted, in bytes.
const IMAGE_URL_MAX_BYTES: usize = 2_048;

/// The longest authorized key line accepted before parsing, in bytes.
const AUTHORIZED_KEY_MAX_BYTES: usize = 4_096;

/// The shortest and longest wait for the host key in the console output a configuration may
/// ask for, in seconds.
pub const HOST_KEY_WAIT_S_RANGE: std::ops::RangeInclusive<u64> = 30..=3_600;

/// Where the guest's SSH host key comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeys {
    /// Generated on the guest at first boot; it never leaves it. cloud-init prints the public
    /// keys to the console between `-----BEGIN SSH HOST KEY KEYS-----` and
    /// `-----END SSH HOST KEY KEYS-----`, and the backend reads them with GetConsoleOutput
    /// before `provision` returns. The default.
    #[default]
    Guest,
    /// Generated by the backend from its key seed and shipped, private half included, in the
    /// user data, where anyone who can read the user data can read it. Only for targets that
    /// serve no console output (moto's EC2); never the default.
    UserData,
}

/// How the guest is set up: part of the operator's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Where images are fetched from: an http(s) URL template containing `{hash}`, which is
    /// replaced by the image's post-hash in lowercase hex, e.g.
    /// `https://store.example/blobs/{hash}`.
    pub content_store_url: String,
    /// The user the requester logs in as, e.g. `ec2-user`. It gets no sudo and no container
    /// runtime group: root on the guest could run something other than the granted image.
    #[serde(default = "GuestConfig::default_login_user")]
    pub login_user: String,
    /// The container runtime that loads and runs the image: one of [`CONTAINER_RUNTIMES`].
    /// The machine image must have it installed.
    #[serde(default = "GuestConfig::default_container_runtime")]
    pub container_runtime: String,
    /// How many times the guest tries to fetch the image before it gives up and powers off,
    /// `1..=20`.
    #[serde(default = "GuestConfig::default_fetch_attempts")]
    pub fetch_attempts: u32,
    /// How long after the grant's deadline the guest powers itself off, in seconds: a
    /// backstop for when the bridge cannot terminate the instance.
    #[serde(default = "GuestConfig::default_deadline_grace_s")]
    pub deadline_grace_s: u64,
    /// Where the host key comes from: `guest` (the default) or `user_data` (see [`HostKeys`]).
    #[serde(default)]
    pub host_keys: HostKeys,
    /// How long after the instance runs the backend waits for the host key in its console
    /// output before it fails the provision, in seconds (see [`HOST_KEY_WAIT_S_RANGE`]).
    #[serde(default = "GuestConfig::default_host_key_wait_s")]
    pub host_key_wait_s: u64,
}

impl GuestConfig {
    /// A configuration fetching from `content_store_url` with every other field at its default.
    pub fn with_content_store(content_store_url: impl Into<String>) -> Self {
        Self {
            content_store_url: content_store_url.into(),
            login_user: Self::default_login_user(),
            container_runtime: Self::default_container_runtime(),
            fetch_attempts: Self::default_fetch_attempts(),
            deadline_grace_s: Self::default_deadline_grace_s(),
            host_keys: HostKeys::default(),
            host_key_wait_s: Self::default_host_key_wait_s(),
        }
    }

    fn default_host_key_wait_s() -> u64 {
        600
    }

    fn default_login_user() -> String {
        "ec2-user".to_owned()
    }

    fn default_container_runtime() -> String {
        "docker".to_owned()
    }

    fn default_fetch_attempts() -> u32 {
        5
    }

    fn default_deadline_grace_s() -> u64 {
        60
    }

    /// Checks every field; the error names the field, its value and the fix.
    pub fn validate(&self) -> Result<(), GuestError> {
        // Any hash will do to check the template; rendering substitutes the real one.
        image_url(&self.content_store_url, &ImageHash([0; 32]))?;
        check_login_user(&self.login_user)?;
        if !CONTAINER_RUNTIMES.contains(&self.container_runtime.as_str()) {
            return Err(config_error(
                "container_runtime",
                &self.container_runtime,
                format!("is not supported: use one of {}", CONTAINER_RUNTIMES.join(", ")),
            ));
        }
        if !(1..=FETCH_ATTEMPTS_MAX).contains(&self.fetch_attempts) {
            return Err(config_error(
                "fetch_attempts",
                &self.fetch_attempts.to_string(),
                format!("is out of range: use 1 to {FETCH_ATTEMPTS_MAX}, e.g. 5"),
            ));
        }
        if self.deadline_grace_s > DEADLINE_GRACE_S_MAX {
            return Err(config_error(
                "deadline_grace_s",
                &self.deadline_grace_s.to_string(),
                format!("is too long: use at most {DEADLINE_GRACE_S_MAX} seconds, e.g. 60"),
            ));
        }
        if !HOST_KEY_WAIT_S_RANGE.contains(&self.host_key_wait_s) {
            return Err(config_error(
                "host_key_wait_s",
                &self.host_key_wait_s.to_string(),
                format!(
                    "is out of range: use {} to {} seconds, e.g. 600",
                    HOST_KEY_WAIT_S_RANGE.start(),
                    HOST_KEY_WAIT_S_RANGE.end()
                ),
            ));
        }
        Ok(())
    }
}

/// One grant's values, as the guest needs them.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpec<'a> {
    /// The grant the machine runs for.
    pub grant_id: GrantId,
    /// The sha256 of the only image the machine may run.
    pub image_hash: ImageHash,
    /// The per-grant login public key, one line in OpenSSH format.
    pub authorized_key_openssh: &'a str,
    /// The host key the backend generated, shipped in the user data: only with
    /// [`HostKeys::UserData`]. `None` (the default configuration) lets the guest generate its
    /// own and print the public half to the console.
    pub host_key: Option<&'a SshKeyPair>,
    /// The grant's deadline, in unix seconds.
    pub valid_to_unix_s: u64,
}

/// Why user data could not be rendered. Each message names the offending value (never a
/// private key) and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// A configuration field is unusable.
    #[error("guest config {field} = {value:?} {problem}")]
    Config {
        /// The field's name in [`GuestConfig`].
        field: &'static str,
        /// The value given, cut to 80 characters.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The per-grant login key is not one OpenSSH public key line.
    #[error("authorized key {value:?} {problem}")]
    AuthorizedKey {
        /// The value given, cut to 80 characters.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The host key pair is unusable. The message never contains the private key.
    #[error("host key {public:?} {problem}")]
    HostKey {
        /// The public half, cut to 80 characters.
        public: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The power-off time (deadline plus grace) is beyond what the guest accepts.
    #[error(
        "power-off time valid_to {valid_to_unix_s} + deadline_grace_s {grace_s} is after {POWEROFF_AT_UNIX_S_MAX} \
         (year 9999): pass the grant's deadline in unix seconds, not milliseconds"
    )]
    Deadline {
        /// The grant's deadline, in unix seconds.
        valid_to_unix_s: u64,
        /// The configured grace, in seconds.
        grace_s: u64,
    },
    /// The rendered user data is over EC2's limit.
    #[error(
        "rendered user data is {size_bytes} bytes, over EC2's limit of {max_bytes}: shorten \
         content_store_url or the comment of the authorized key"
    )]
    TooLarge {
        /// The rendered size, in bytes.
        size_bytes: usize,
        /// The limit, [`USER_DATA_MAX_BYTES`].
        max_bytes: usize,
    },
}

/// Renders the plain (not base64) user data for one grant.
///
/// Every value is checked before it is written: the configuration by [`GuestConfig::validate`],
/// the authorized key by parsing it (it is written back in canonical form), the host key by
/// parsing both halves and checking that they match, the deadline against
/// [`POWEROFF_AT_UNIX_S_MAX`], and the result against [`USER_DATA_MAX_BYTES`].
pub fn render_user_data(cfg: &GuestConfig, spec: &GuestSpec<'_>) -> Result<String, GuestError> {
    cfg.validate()?;
    let url = image_url(&cfg.content_store_url, &spec.image_hash)?;
    let authorized_key = canonical_authorized_key(spec.authorized_key_openssh)?;
    match (cfg.host_keys, spec.host_key) {
        (HostKeys::UserData, Some(pair)) => check_host_key(pair)?,
        (HostKeys::Guest, None) => {}
        (HostKeys::UserData, None) => {
            return Err(GuestError::HostKey {
                public: String::new(),
                problem:
                    "is missing, and host_keys = \"user_data\" ships it in the user data: pass the backend's host key"
                        .into(),
            });
        }
        (HostKeys::Guest, Some(pair)) => {
            return Err(GuestError::HostKey {
                public: shown(&pair.public_openssh),
                problem: "was given, but host_keys = \"guest\" keeps every private key out of the user data: pass none, or set host_keys = \"user_data\"".into(),
            });
        }
    }
    let poweroff_at_unix_s = spec
        .valid_to_unix_s
        .checked_add(cfg.deadline_grace_s)
        .filter(|t| *t <= POWEROFF_AT_UNIX_S_MAX)
        .ok_or(GuestError::Deadline { valid_to_unix_s: spec.valid_to_unix_s, grace_s: cfg.deadline_grace_s })?;

    let vars = render_vars(&[
        ("GRANT_ID", spec.grant_id.to_hex()),
        ("IMAGE_SHA256", spec.image_hash.to_hex()),
        ("IMAGE_URL", url),
        ("CONTAINER_RUNTIME", cfg.container_runtime.clone()),
        ("FETCH_ATTEMPTS", cfg.fetch_attempts.to_string()),
        ("POWEROFF_AT_UNIX_S", poweroff_at_unix_s.to_string()),
        ("LOGIN_USER", cfg.login_user.clone()),
    ]);

    // `ssh_deletekeys` removes any host key baked into the AMI, and `ssh_genkeytypes` makes
    // cloud-init generate only an ed25519 key, which `ssh.emit_keys_to_console` prints to the
    // console for the backend to read. With `ssh_keys` given (the user_data opt-in), cloud-init
    // skips generation altogether and installs ours.
    let mut document = json!({
        "users": [{
            "name": cfg.login_user,
            "lock_passwd": true,
            "shell": "/bin/bash",
            "ssh_authorized_keys": [authorized_key],
        }],
        "disable_root": true,
        "ssh_pwauth": false,
        "allow_public_ssh_keys": false,
        "ssh_deletekeys": true,
        "ssh_genkeytypes": ["ed25519"],
        "ssh": { "emit_keys_to_console": true },
        "write_files": [
            { "path": BOOT_SCRIPT_PATH, "owner": "root:root", "permissions": "0755", "content": embedded_boot_script() },
            { "path": PER_BOOT_HOOK_PATH, "owner": "root:root", "permissions": "0755", "content": PER_BOOT_HOOK },
            { "path": VARS_PATH, "owner": "root:root", "permissions": "0644", "content": vars },
        ],
        "runcmd": [["/bin/bash", BOOT_SCRIPT_PATH, "start", VARS_PATH]],
    });
    if let Some(pair) = spec.host_key {
        document["ssh_keys"] = json!({
            "ed25519_private": pair.private_openssh.expose(),
            "ed25519_public": pair.public_openssh,
        });
    }
    let user_data = format!("#cloud-config\n{document:#}\n");
    if user_data.len() > USER_DATA_MAX_BYTES {
        return Err(GuestError::TooLarge { size_bytes: user_data.len(), max_bytes: USER_DATA_MAX_BYTES });
    }
    Ok(user_data)
}

/// The line cloud-init prints before the host's public keys on the console.
pub const CONSOLE_KEYS_BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
/// The line cloud-init prints after them.
pub const CONSOLE_KEYS_END: &str = "-----END SSH HOST KEY KEYS-----";

/// The guest's ed25519 host public key (`ssh-ed25519 BASE64`, no comment) as cloud-init printed
/// it to the console between [`CONSOLE_KEYS_BEGIN`] and [`CONSOLE_KEYS_END`].
///
/// `Ok(None)` while no whole block is there yet (the console output lags the guest). An error
/// says why a whole block is unusable: no ed25519 key in it, a key that does not parse, or two
/// blocks with different keys (cloud-init generates the key once per instance, so a second key
/// means something else wrote to the console; the first one is not trusted either).
pub fn host_key_from_console(console: &str) -> Result<Option<String>, String> {
    let mut found: Option<String> = None;
    let mut block: Option<Vec<&str>> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r').trim();
        if line == CONSOLE_KEYS_BEGIN {
            block = Some(Vec::new());
        } else if line == CONSOLE_KEYS_END {
            let Some(lines) = block.take() else { continue };
            let key = ed25519_in_block(&lines)?;
            match &found {
                Some(earlier) if *earlier != key => {
                    return Err(format!(
                        "the console shows two different host keys ({earlier} and {key}): only cloud-init's first boot should print one"
                    ));
                }
                _ => found = Some(key),
            }
        } else if let Some(lines) = block.as_mut() {
            lines.push(line);
        }
    }
    Ok(found)
}

fn ed25519_in_block(lines: &[&str]) -> Result<String, String> {
    let ed25519: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("ssh-ed25519 ")).collect();
    let body = |l: &str| l.split(' ').nth(1).map(str::to_owned);
    // cloud-init prints one key per type; a second, different one was written by someone else.
    if let Some(other) = ed25519.iter().skip(1).find(|l| body(l) != body(ed25519[0])) {
        return Err(format!(
            "the console's host key block holds two different ssh-ed25519 keys ({} and {}): only cloud-init should print one",
            shown(ed25519[0]),
            shown(other)
        ));
    }
    let first = ed25519.first();
    let Some(line) = first else {
        return Err(format!(
            "the console's host key block has no ssh-ed25519 key (it lists {}): the AMI's cloud-init must generate ed25519 host keys",
            lines.iter().map(|l| l.split(' ').next().unwrap_or_default()).collect::<Vec<_>>().join(", ")
        ));
    };
    let key = PublicKey::from_openssh(line)
        .map_err(|e| format!("the console's ssh-ed25519 host key {:?} does not parse: {e}", shown(line)))?;
    let mut canonical = key.clone();
    canonical.set_comment("");
    canonical
        .to_openssh()
        .map(|text| text.trim_end().to_owned())
        .map_err(|e| format!("the console's host key cannot be re-encoded: {e}"))
}

/// The vars file: one `KEY=VALUE` line per entry. Every value has been checked against the
/// character set the boot script accepts for its key, none of which includes a newline.
fn render_vars(entries: &[(&str, String)]) -> String {
    entries.iter().map(|(key, value)| format!("{key}={value}\n")).collect()
}

/// The first 80 characters of `value`, for messages.
fn shown(value: &str) -> String {
    value.chars().take(80).collect()
}

fn config_error(field: &'static str, value: &str, problem: String) -> GuestError {
    GuestError::Config { field, value: shown(value), problem }
}

/// Bytes allowed in an image URL, the same set as the boot script's `URL_RE`: unreserved
/// characters, the delimiters a path and query need, `%` for escapes and brackets for IPv6
/// hosts. Quotes, spaces, `$`, `;`, backquotes, `#`, parentheses and control characters are out.
fn is_url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~:/?=&%+@,-[]".contains(&b)
}

/// The URL the guest fetches `hash` from.
fn image_url(template: &str, hash: &ImageHash) -> Result<String, GuestError> {
    let fail = |problem: &str| config_error("content_store_url", template, problem.to_owned());
    if !template.contains(HASH_PLACEHOLDER) {
        return Err(fail(
            "has no {hash} placeholder: write the URL with {hash} where the post-hash goes, e.g. https://store.example/blobs/{hash}",
        ));
    }
    let substituted = template.replace(HASH_PLACEHOLDER, &hash.to_hex());
    let url = url::Url::parse(&substituted).map_err(|e| {
        fail(&format!("is not a URL ({e}): write an absolute http(s) URL, e.g. https://store.example/blobs/{{hash}}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail("is not http(s): the guest fetches with curl over http or https only"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("has no host: write the content store's host name, e.g. https://store.example/blobs/{hash}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(fail(
            "carries credentials: the requester can read the user data, so the content store must serve images without them",
        ));
    }
    if url.fragment().is_some() {
        return Err(fail("has a #fragment, which is never sent to the server: remove it"));
    }
    let serialized = url.as_str();
    if let Some(bad) = serialized.bytes().find(|b| !is_url_byte(*b)) {
        return Err(fail(&format!(
            "contains {:?}: use only letters, digits and ._~:/?=&%+@,-[] (percent-encode anything else)",
            char::from(bad)
        )));
    }
    if serialized.len() > IMAGE_URL_MAX_BYTES {
        return Err(fail(&format!("is {} bytes long: use at most {IMAGE_URL_MAX_BYTES}", serialized.len())));
    }
    Ok(serialized.to_owned())
}

fn check_login_user(user: &str) -> Result<(), GuestError> {
    let bytes = user.as_bytes();
    let well_formed = matches!(bytes.first(), Some(b'a'..=b'z' | b'_'))
        && bytes.len() <= 32
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if !well_formed {
        return Err(config_error(
            "login_user",
            user,
            "is not a user name: use 1 to 32 of a-z, 0-9, _ and -, starting with a letter or _, e.g. ec2-user"
                .to_owned(),
        ));
    }
    if user == "root" {
        return Err(config_error(
            "login_user",
            user,
            "is refused: root login stays disabled; use an unprivileged user, e.g. ec2-user".to_owned(),
        ));
    }
    Ok(())
}

/// True when `s` is printable ASCII: no control characters (newlines included), nothing that
/// YAML or a shell could read as structure beyond what JSON escaping already handles.
fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// The authorized key in canonical OpenSSH form (`algorithm base64 comment`), re-encoded from
/// the parsed key so that nothing but a key reaches `authorized_keys` (no options, no second
/// line).
fn canonical_authorized_key(line: &str) -> Result<String, GuestError> {
    let fail = |problem: &str| GuestError::AuthorizedKey { value: shown(line), problem: problem.to_owned() };
    if line.len() > AUTHORIZED_KEY_MAX_BYTES {
        return Err(fail(&format!(
            "is {} bytes long: pass one public key line, e.g. ssh-ed25519 AAAA... grant",
            line.len()
        )));
    }
    if !is_printable_ascii(line) {
        return Err(fail(
            "contains a newline, control or non-ASCII character: pass one public key line, e.g. ssh-ed25519 AAAA... grant",
        ));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        fail(&format!("is not an OpenSSH public key ({e}): pass one line such as ssh-ed25519 AAAA... grant"))
    })?;
    let canonical = key
        .to_openssh()
        .map_err(|e| fail(&format!("cannot be re-encoded ({e}): pass an ed25519 key from SshKeyPair")))?;
    if !is_printable_ascii(&canonical) {
        return Err(fail("re-encodes with a control character: pass a key whose comment is printable ASCII"));
    }
    Ok(canonical)
}

/// Checks that the host key pair is an unencrypted ed25519 pair whose halves match and whose
/// text is plain ASCII, so it can go into `ssh_keys` as is.
fn check_host_key(pair: &SshKeyPair) -> Result<(), GuestError> {
    let fail = |problem: &str| GuestError::HostKey { public: shown(&pair.public_openssh), problem: problem.to_owned() };
    const FIX: &str = "generate it with SshKeyPair::ed25519_from_seed";
    if !is_printable_ascii(&pair.public_openssh) {
        return Err(fail(&format!("public half is not one printable ASCII line: {FIX}")));
    }
    let private_text = pair.private_openssh.expose();
    if !private_text.bytes().all(|b| b == b'\n' || (b' '..=b'~').contains(&b)) {
        return Err(fail(&format!("private half is not ASCII PEM text: {FIX}")));
    }
    // The parse error is not shown: its text could quote the private key.
    let private = PrivateKey::from_openssh(private_text)
        .map_err(|_| fail(&format!("private half is not an OpenSSH private key: {FIX}")))?;
    if private.is_encrypted() {
        return Err(fail(&format!("private half is encrypted, and sshd cannot use it unattended: {FIX}")));
    }
    if private.algorithm() != Algorithm::Ed25519 {
        return Err(fail(&format!("is {}, and the guest installs ed25519 host keys only: {FIX}", private.algorithm())));
    }
    let public = PublicKey::from_openssh(&pair.public_openssh)
        .map_err(|e| fail(&format!("public half is not an OpenSSH public key ({e}): {FIX}")))?;
    if public.key_data() != private.public_key().key_data() {
        return Err(fail(&format!("public half does not match the private half: {FIX}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod script_tests;
