//! The simulated guest's side of the deadline contract: what the backend's boot script
//! (`aws_backend::guest::BOOT_SCRIPT`) does with the vars file its user data carries.
//!
//! The user data contract is ours (`docs/ARCHITECTURE.md`, the guest powers itself off at
//! `valid_to + guest.deadline_grace_s`): at boot the script arms a power-off at
//! `POWEROFF_AT_UNIX_S` (or powers off at once if that has passed), then fetches the image and
//! checks its sha256, powering off early when the fetch fails `FETCH_ATTEMPTS` times or the hash
//! does not match. A guest power-off reaches EC2 as `Client.InstanceInitiatedShutdown`, and the
//! instance then stops or terminates as its InstanceInitiatedShutdownBehavior says ("Change
//! instance initiated shutdown behavior", Amazon EC2 User Guide). User data without our vars
//! file (other callers) gets no guest model: such an instance runs until something ends it.
//!
//! Every draw here is a hash of the run's seed and the instance's id, not the PRNG, so adding
//! the guest changed no other draw of a run.

use aws_backend::guest::VARS_PATH;
use sha2::{Digest, Sha256};

/// How long after an instance reaches `running` cloud-init's `runcmd` starts the boot script
/// (the simulated console shows `modules:final` at about 10 s).
pub const RUNCMD_AFTER_RUNNING_MS: u64 = 10_000;

/// The boot script's back-off step between fetch attempts (`GRANT_GUEST_BACKOFF_S`'s default,
/// 5 s): attempt `k` failing waits `k` steps.
const FETCH_BACKOFF_MS: u64 = 5_000;

/// The longest one failing fetch attempt takes (curl's `--connect-timeout 10`).
const FETCH_ATTEMPT_MS_MAX: u64 = 10_000;

/// The longest a fetch that succeeds (with the wrong bytes) takes in the model.
const FETCH_MS_MAX: u64 = 60_000;

/// What the guest was told: the values of the vars file in its user data that the model uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestVars {
    /// When the guest powers itself off, unix seconds (`POWEROFF_AT_UNIX_S`).
    pub poweroff_at_unix_s: u64,
    /// How many times it tries to fetch the image (`FETCH_ATTEMPTS`).
    pub fetch_attempts: u32,
    /// The sha256 the image must have (`IMAGE_SHA256`).
    pub image_sha256: String,
}

/// Why the guest powered off before its deadline, as the boot script says it on the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The power-off time had passed when the script ran.
    DeadlinePassed,
    /// Every fetch attempt failed.
    ImageFetchFailed {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The fetched bytes hash to `got`, not the grant's sha256.
    ImageHashMismatch {
        /// What the fetched bytes hashed to.
        got: String,
    },
}

/// What the simulated guest does, drawn when its instance launches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlan {
    /// What its user data told it.
    pub vars: GuestVars,
    /// When it powers off (the instance then leaves `running`), unix ms: at its power-off time,
    /// or earlier when it refuses to run the image.
    pub powers_off_at_ms: u64,
    /// Why it powers off before its power-off time, if it does.
    pub refusal: Option<Refusal>,
}

impl GuestPlan {
    /// The fault-log kind of its early power-off, if it has one.
    pub fn fault_kind(&self) -> Option<&'static str> {
        match self.refusal {
            Some(Refusal::ImageFetchFailed { .. }) => Some("exit:guest-image-fetch-failed"),
            Some(Refusal::ImageHashMismatch { .. }) => Some("exit:guest-image-hash-mismatch"),
            Some(Refusal::DeadlinePassed) | None => None,
        }
    }

    /// What the boot script and the kernel print to the console once the guest has powered
    /// off, as a serial console has it (carriage returns included).
    pub fn console_tail(&self) -> String {
        let why = match &self.refusal {
            None => String::new(),
            Some(Refusal::DeadlinePassed) => format!(
                "grant-guest: refusing: the deadline (unix {}) has passed; powering off\r\n",
                self.vars.poweroff_at_unix_s
            ),
            Some(Refusal::ImageFetchFailed { attempts }) => {
                format!("grant-guest: refusing: fetching the image failed {attempts} times; powering off\r\n")
            }
            Some(Refusal::ImageHashMismatch { got }) => format!(
                "grant-guest: refusing: the image's sha256 is {got}, the grant names {}; powering off\r\n",
                self.vars.image_sha256
            ),
        };
        format!("{why}[  OK  ] Reached target System Power Off.\r\nreboot: Power down\r\n")
    }
}

/// The guest vars in `user_data` (plain text, not base64) when it is the backend's cloud-config
/// document with a well-formed vars file at [`VARS_PATH`]; `None` for anything else.
pub fn guest_vars(user_data: &str) -> Option<GuestVars> {
    let body = user_data.strip_prefix("#cloud-config\n")?;
    // The document is JSON (which is YAML); YAML comment lines may follow it, and cloud-init
    // ignores them, so only the first JSON value counts.
    let document: serde_json::Value = serde_json::Deserializer::from_str(body).into_iter().next()?.ok()?;
    let vars =
        document["write_files"].as_array()?.iter().find(|file| file["path"].as_str() == Some(VARS_PATH))?["content"]
            .as_str()?;
    let value =
        |key: &str| vars.lines().find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')));
    // The same patterns as the boot script's UNIX_S_RE, ATTEMPTS_RE and HEX64_RE.
    let poweroff = value("POWEROFF_AT_UNIX_S").filter(|v| (1..=12).contains(&v.len()))?;
    let attempts: u32 = value("FETCH_ATTEMPTS")?.parse().ok().filter(|n| (1..=20).contains(n))?;
    let sha =
        value("IMAGE_SHA256").filter(|v| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))?;
    Some(GuestVars {
        poweroff_at_unix_s: poweroff.parse().ok()?,
        fetch_attempts: attempts,
        image_sha256: sha.to_owned(),
    })
}

/// What the guest of `instance_id`, running from `running_at_ms`, does with `vars`; its
/// refusal to run the image comes with `image_failure_probability` (half failed fetches, half
/// hash mismatches).
pub fn plan(
    vars: GuestVars,
    running_at_ms: u64,
    seed: u64,
    instance_id: &str,
    image_failure_probability: f64,
) -> GuestPlan {
    let runcmd = running_at_ms.saturating_add(RUNCMD_AFTER_RUNNING_MS);
    let deadline = vars.poweroff_at_unix_s.saturating_mul(1_000);
    // arm_deadline runs first: a power-off time already past ends the guest at once.
    if deadline <= runcmd {
        return GuestPlan { vars, powers_off_at_ms: runcmd, refusal: Some(Refusal::DeadlinePassed) };
    }
    let fails = image_failure_probability > 0.0 && unit(seed, instance_id, "image") < image_failure_probability;
    let early = fails.then(|| {
        if draw_ms(seed, instance_id, "kind", 0, 1) == 0 {
            let n = u64::from(vars.fetch_attempts);
            let backoff = FETCH_BACKOFF_MS * n * (n - 1) / 2;
            let attempts = draw_ms(seed, instance_id, "fetch", 0, n * FETCH_ATTEMPT_MS_MAX);
            (runcmd + backoff + attempts, Refusal::ImageFetchFailed { attempts: vars.fetch_attempts })
        } else {
            let got = hex(&digest(seed, instance_id, "bytes"));
            (runcmd + draw_ms(seed, instance_id, "fetch", 1_000, FETCH_MS_MAX), Refusal::ImageHashMismatch { got })
        }
    });
    match early {
        Some((at, refusal)) if at < deadline => GuestPlan { vars, powers_off_at_ms: at, refusal: Some(refusal) },
        _ => GuestPlan { vars, powers_off_at_ms: deadline, refusal: None },
    }
}

/// A draw from `[min, max]` for `instance_id`, named by `label`.
pub fn draw_ms(seed: u64, instance_id: &str, label: &str, min: u64, max: u64) -> u64 {
    if max <= min {
        return min;
    }
    let d = digest(seed, instance_id, label);
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    min + x % (max - min + 1)
}

/// A draw from `[0, 1)` for `instance_id`, named by `label`.
fn unit(seed: u64, instance_id: &str, label: &str) -> f64 {
    let d = digest(seed, instance_id, label);
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn digest(seed: u64, instance_id: &str, label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sim-ec2 guest ");
    h.update(label.as_bytes());
    h.update(seed.to_le_bytes());
    h.update(instance_id.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(poweroff_at_unix_s: u64) -> GuestVars {
        GuestVars { poweroff_at_unix_s, fetch_attempts: 5, image_sha256: "ab".repeat(32) }
    }

    #[test]
    fn the_vars_are_read_from_the_backends_user_data_and_from_nothing_else() {
        use aws_backend::guest::{GuestConfig, GuestSpec, render_user_data};
        let login = aws_backend::keys::SshKeyPair::ed25519_from_seed([7; 32], "grant").expect("key");
        let spec = GuestSpec {
            grant_id: backend_api::GrantId([9; 32]),
            image_hash: backend_api::ImageHash([0xab; 32]),
            authorized_key_openssh: &login.public_openssh,
            host_key: None,
            valid_to_unix_s: 1_700_000_600,
        };
        let cfg = GuestConfig::with_content_store("https://store.example/blobs/{hash}");
        let text = render_user_data(&cfg, &spec).expect("render");
        let want = GuestVars { poweroff_at_unix_s: 1_700_000_660, fetch_attempts: 5, image_sha256: "ab".repeat(32) };
        assert_eq!(guest_vars(&text), Some(want.clone()));
        assert_eq!(guest_vars(&format!("{text}# a YAML comment\n")), Some(want), "comments after the document");
        assert_eq!(guest_vars("#!/bin/sh\necho hello\n"), None);
        assert_eq!(guest_vars(&text.replace("POWEROFF_AT_UNIX_S", "POWEROFF_AT")), None);
    }

    #[test]
    fn the_guest_powers_off_at_its_time_or_at_once_when_it_has_passed() {
        let p = plan(vars(2_000), 1_000_000, 1, "i-1", 0.0);
        assert_eq!((p.powers_off_at_ms, p.refusal), (2_000_000, None));
        let p = plan(vars(1_005), 1_000_000, 1, "i-1", 0.0);
        assert_eq!((p.powers_off_at_ms, p.refusal), (1_010_000, Some(Refusal::DeadlinePassed)));
    }

    #[test]
    fn a_failed_image_powers_the_guest_off_within_its_fetch_attempts() {
        let mut kinds = std::collections::BTreeSet::new();
        for k in 0..40 {
            let id = format!("i-{k}");
            let p = plan(vars(100_000), 1_000_000, 7, &id, 1.0);
            let refusal = p.refusal.clone().expect("a refusal");
            // Five attempts: 50 s of back-off and up to 10 s each.
            assert!((1_010_000..=1_010_000 + 50_000 + 50_000).contains(&p.powers_off_at_ms), "{p:?}");
            kinds.insert(matches!(refusal, Refusal::ImageFetchFailed { .. }));
            assert!(p.console_tail().contains("grant-guest: refusing: "), "{}", p.console_tail());
        }
        assert_eq!(kinds.len(), 2, "fetch failures and hash mismatches both happen");
    }
}
