//! Deterministic names, tokens, tags and key seeds for a grant's resources.
//!
//! Everything here is a pure function of the grant id (and the backend's key seed), so that a
//! restarted backend finds the same key pair and group names and re-issues RunInstances with
//! the same ClientToken and the same parameters: EC2 then returns the instance it already
//! launched instead of a second one.

use backend_api::{GrantId, Secret};
use sha2::{Digest, Sha256};

use crate::config::{AwsBootConfig, GRANT_TAG, OWNER_TAG};
use crate::port::Tags;

/// The key pair's name: `cb-` and the grant id in hex.
pub fn key_name(grant: &GrantId) -> String {
    format!("cb-{}", grant.to_hex())
}

/// The security group's name: `cb-` and the grant id in hex.
pub fn group_name(grant: &GrantId) -> String {
    format!("cb-{}", grant.to_hex())
}

/// The RunInstances ClientToken of launch `attempt` (0-based; one attempt per instance type
/// tried): 64 ASCII characters at most, as EC2 requires.
pub fn client_token(grant: &GrantId, attempt: usize) -> String {
    format!("cb-{}-{attempt}", &grant.to_hex()[..48])
}

/// The ClientToken of try `attempt` (the index of the instance type in the fallback list) of
/// provision attempt `retry` (0 for the first provision, see `GrantRetried`): the first
/// attempt's tokens are [`client_token`]'s, later ones `cb-<first 44 hex>-r<retry>-<attempt>`,
/// so a retry never reuses a launch of an earlier attempt.
pub fn client_token_for(grant: &GrantId, retry: u32, attempt: usize) -> String {
    if retry == 0 {
        return client_token(grant, attempt);
    }
    format!("cb-{}-r{retry}-{attempt}", &grant.to_hex()[..44])
}

/// The attempt number a token of [`client_token`] or [`client_token_for`] was made for.
pub fn token_attempt(token: &str) -> Option<usize> {
    token.rsplit('-').next()?.parse().ok()
}

/// The tags every resource of `grant` carries: owner, grant, a Name, and the operator's extras.
pub fn grant_tags(cfg: &AwsBootConfig, grant: &GrantId) -> Tags {
    let mut tags: Tags = cfg.tags.clone();
    tags.insert(OWNER_TAG.into(), cfg.owner.clone());
    tags.insert(GRANT_TAG.into(), grant.to_hex());
    tags.insert("Name".into(), format!("compute-bridge {}", grant.short()));
    tags
}

/// A 32-byte seed for one of the grant's keys (`purpose` is `login` or `host`), derived from
/// the backend's secret key seed so that it can be derived again after a restart.
pub fn key_seed(backend_seed: &Secret, grant: &GrantId, purpose: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"compute-bridge key seed v1\0");
    hasher.update(backend_seed.expose().as_bytes());
    hasher.update([0]);
    hasher.update(purpose.as_bytes());
    hasher.update([0]);
    hasher.update(grant.0);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_fit_ec2_and_name_their_attempt() {
        let grant = GrantId([0xAB; 32]);
        for attempt in [0, 7, 123] {
            let token = client_token(&grant, attempt);
            assert!(token.len() <= 64 && token.is_ascii(), "{token}");
            assert_eq!(token_attempt(&token), Some(attempt));
        }
        assert_ne!(client_token(&grant, 0), client_token(&GrantId([0xAC; 32]), 0));
    }

    #[test]
    fn key_seeds_differ_by_purpose_grant_and_backend() {
        let a = Secret::new("a");
        let grant = GrantId([1; 32]);
        assert_ne!(key_seed(&a, &grant, "login"), key_seed(&a, &grant, "host"));
        assert_ne!(key_seed(&a, &grant, "login"), key_seed(&a, &GrantId([2; 32]), "login"));
        assert_ne!(key_seed(&a, &grant, "login"), key_seed(&Secret::new("b"), &grant, "login"));
        assert_eq!(key_seed(&a, &grant, "login"), key_seed(&a, &grant, "login"));
    }
}
