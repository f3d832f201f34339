//! Per-grant SSH keys, generated locally from injected randomness: AWS only ever sees the
//! public half.

use backend_api::Secret;
use ssh_key::{LineEnding, PrivateKey, private::Ed25519Keypair};

/// An ed25519 key pair in OpenSSH formats.
#[derive(Clone, Debug)]
pub struct SshKeyPair {
    /// The private key, OpenSSH PEM (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private_openssh: Secret,
    /// The public key, one line: `ssh-ed25519 AAAA... comment`.
    pub public_openssh: String,
}

/// Errors while encoding a generated key (these indicate a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("encoding an ed25519 key failed: {0}")]
pub struct KeyError(String);

impl SshKeyPair {
    /// The ed25519 key pair derived from `seed`, with `comment` on the public line.
    ///
    /// The seed comes from the backend's injected randomness (OS entropy in production, the
    /// simulation's PRNG in tests), so key generation never reads entropy on its own.
    pub fn ed25519_from_seed(seed: [u8; 32], comment: &str) -> Result<Self, KeyError> {
        let keypair = Ed25519Keypair::from_seed(&seed);
        let mut private = PrivateKey::from(keypair);
        private.set_comment(comment);
        let private_openssh = private.to_openssh(LineEnding::LF).map_err(|e| KeyError(e.to_string()))?;
        let public_openssh = private.public_key().to_openssh().map_err(|e| KeyError(e.to_string()))?;
        Ok(Self { private_openssh: Secret::new(private_openssh.as_str()), public_openssh })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_per_seed_and_parse_back() {
        let a = SshKeyPair::ed25519_from_seed([7; 32], "grant-abc").expect("key");
        let b = SshKeyPair::ed25519_from_seed([7; 32], "grant-abc").expect("key");
        let c = SshKeyPair::ed25519_from_seed([8; 32], "grant-abc").expect("key");
        assert_eq!(a.public_openssh, b.public_openssh);
        assert_ne!(a.public_openssh, c.public_openssh);
        assert!(a.public_openssh.starts_with("ssh-ed25519 "), "{}", a.public_openssh);
        assert!(a.public_openssh.ends_with(" grant-abc"), "{}", a.public_openssh);
        assert!(a.private_openssh.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let parsed = PrivateKey::from_openssh(a.private_openssh.expose()).expect("parses");
        assert_eq!(parsed.public_key().to_openssh().expect("encodes"), a.public_openssh);
        assert!(!format!("{a:?}").contains("PRIVATE"), "Debug must not print the private key");
    }
}
