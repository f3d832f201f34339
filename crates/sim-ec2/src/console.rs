//! The simulated guest's console output: what cloud-init prints, host keys included.
//!
//! A real guest generates its SSH host key at first boot and cloud-init prints the public half
//! between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`
//! (cc_keys_to_console); EC2 serves the text through GetConsoleOutput some time after boot
//! ("Get the console output", Amazon EC2 User Guide). When the user data ships a host key
//! (`ssh_keys`, the backend's `user_data` opt-in), cloud-init installs that one instead and
//! prints it. The simulated guest does the same: its key is drawn from the instance's id and
//! the world's seed, so a run is deterministic and a checker can recompute it.

use aws_backend::guest::{CONSOLE_KEYS_BEGIN, CONSOLE_KEYS_END};
use aws_backend::keys::SshKeyPair;
use base64::Engine;
use sha2::{Digest, Sha256};

/// What checkers may know of an instance's guest (see `SimEc2::guest_of`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestTruth {
    /// The host key the guest holds, `ssh-ed25519 BASE64`: the one its user data shipped, or
    /// the one it generated and prints to its console.
    pub host_key: String,
    /// Its IMDS options: tokens required, PUT response hop limit.
    pub imds: (bool, u8),
    /// When GetConsoleOutput first shows the key, unix ms; `None` if the guest never ran.
    pub console_at_ms: Option<u64>,
    /// The power-off time its user data gave it (`POWEROFF_AT_UNIX_S`), unix ms; `None` when
    /// the user data was not the backend's, so no guest model runs (see `guest`).
    pub poweroff_at_ms: Option<u64>,
    /// When the guest powers off by its own plan, unix ms: at `poweroff_at_ms`, or earlier when
    /// it refuses the image, or at boot when the power-off time had passed. Something else may
    /// end the instance first.
    pub powers_off_at_ms: Option<u64>,
    /// Why the guest powers off before `poweroff_at_ms`, if it does.
    pub refusal: Option<crate::guest::Refusal>,
}

/// The host key the simulated guest of `instance_id` generates in a world seeded with `seed`:
/// its public half, `ssh-ed25519 BASE64`, without a comment.
pub fn guest_host_key(seed: u64, instance_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"sim-ec2 guest host key");
    hasher.update(seed.to_le_bytes());
    hasher.update(instance_id.as_bytes());
    let key_seed: [u8; 32] = hasher.finalize().into();
    match SshKeyPair::ed25519_from_seed(key_seed, "") {
        Ok(pair) => without_comment(&pair.public_openssh),
        // Deriving an ed25519 key from 32 bytes cannot fail; an empty key fails the backend's
        // parse loudly if it ever does.
        Err(_) => String::new(),
    }
}

/// The public host key the user data ships (`ssh_keys.ed25519_public`), if any.
pub fn shipped_host_key(user_data_base64: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(user_data_base64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let body = text.strip_prefix("#cloud-config\n")?;
    let document: serde_json::Value = serde_json::from_str(body).ok()?;
    document["ssh_keys"]["ed25519_public"].as_str().map(without_comment)
}

/// `type base64` of an OpenSSH public key line.
fn without_comment(line: &str) -> String {
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// The console text of a guest that booted with `host_key` on `hostname`, as cloud-init
/// prints it (carriage returns included, as a serial console has them).
pub fn console_text(hostname: &str, host_key: &str) -> String {
    let mut text = String::new();
    text.push_str("[    0.000000] Linux version 6.1.0 (sim-ec2)\r\n");
    text.push_str("[    4.210000] cloud-init[812]: Cloud-init v. 22.2.2 running 'init' (sim-ec2)\r\n");
    text.push_str("[    9.870000] cloud-init[1204]: Cloud-init v. 22.2.2 running 'modules:final' (sim-ec2)\r\n");
    text.push_str("ec2: #############################################################\r\n");
    text.push_str("ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n");
    text.push_str(&format!("ec2: 256 SHA256:simulated root@{hostname} (ED25519)\r\n"));
    text.push_str("ec2: -----END SSH HOST KEY FINGERPRINTS-----\r\n");
    text.push_str("ec2: #############################################################\r\n");
    text.push_str(CONSOLE_KEYS_BEGIN);
    text.push_str("\r\n");
    text.push_str(&format!("{host_key} root@{hostname}\r\n"));
    text.push_str(CONSOLE_KEYS_END);
    text.push_str("\r\n");
    text
}

#[cfg(test)]
mod tests {
    use aws_backend::guest::host_key_from_console;

    use super::*;

    #[test]
    fn the_backend_reads_the_simulated_guests_key_back() {
        let key = guest_host_key(7, "i-0123456789abcdef0");
        assert!(key.starts_with("ssh-ed25519 "), "{key}");
        assert_ne!(key, guest_host_key(8, "i-0123456789abcdef0"), "the seed matters");
        assert_eq!(host_key_from_console(&console_text("ip-10-0-0-1", &key)), Ok(Some(key)));
    }
}
