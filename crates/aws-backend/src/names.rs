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

/// The RunInstances ClientToken of the launch try `try_index` (the place tried: the instance
/// type and zone, `placement::try_index`) of a grant's first provision: 64 ASCII characters at
/// most, as EC2 requires.
pub fn client_token(grant: &GrantId, try_index: usize) -> String {
    format!("cb-{}-{try_index}", &grant.to_hex()[..48])
}

/// The ClientToken of the launch try `try_index` (see [`client_token`]) of provision attempt
/// `retry` (0 for the first provision, see `GrantRetried`): the first attempt's tokens are
/// [`client_token`]'s, later ones `cb-<first 44 hex>-r<retry>-<try_index>`, so a retry never
/// reuses a launch of an earlier attempt.
pub fn client_token_for(grant: &GrantId, retry: u32, try_index: usize) -> String {
    if retry == 0 {
        return client_token(grant, try_index);
    }
    format!("cb-{}-r{retry}-{try_index}", &grant.to_hex()[..44])
}

/// The try index a token of [`client_token`] or [`client_token_for`] was made for.
pub fn token_try_index(token: &str) -> Option<usize> {
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
    fn tokens_fit_ec2_and_name_their_try_index() {
        let grant = GrantId([0xAB; 32]);
        for try_index in [0, 7, 123] {
            let token = client_token(&grant, try_index);
            assert!(token.len() <= 64 && token.is_ascii(), "{token}");
            assert_eq!(token_try_index(&token), Some(try_index));
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
