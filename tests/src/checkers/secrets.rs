//! Secrets: no requester's private key reaches anything a reader of EC2's API can read back
//! (tags, imported key material, group descriptions, user data): AWS only ever sees the public
//! half of the login key pair.
//!
//! The checker derives each grant's login key from the simulation's key seed, as the backend
//! does, and looks for the key-specific lines of its OpenSSH form (every base64 line but the
//! first, which all such keys share) among the words of every text a call handed EC2. The
//! host key that the user data still carries (the guest-security issue removes it) is another
//! key, and is not looked for.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use aws_backend::keys::SshKeyPair;
use aws_backend::names;
use backend_api::{GrantId, Secret};
use sim_ec2::SimEc2;

use super::{Violation, names as checker};

/// The state of the check: what EC2 was handed so far, and the keys looked for.
#[derive(Debug, Default)]
pub struct Secrets {
    seen: usize,
    words: HashSet<String>,
    keys: BTreeMap<GrantId, Vec<String>>,
    reported: BTreeSet<GrantId>,
}

impl Secrets {
    /// Looks for the login keys of `grants`, derived from `key_seed`.
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a GrantId>, key_seed: &Secret) -> Self {
        let keys = grants
            .into_iter()
            .filter_map(|grant| {
                let comment = format!("compute-bridge-{}", grant.short());
                let key = SshKeyPair::ed25519_from_seed(names::key_seed(key_seed, grant, "login"), &comment).ok()?;
                let lines: Vec<String> = key
                    .private_openssh
                    .expose()
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .skip(1)
                    .filter(|l| l.len() >= 40)
                    .map(str::to_string)
                    .collect();
                Some((*grant, lines))
            })
            .collect();
        Self { keys, ..Self::default() }
    }

    /// Reads what calls handed EC2 since the last check, and reports each grant whose login
    /// private key is among it.
    pub fn check(&mut self, sim: &SimEc2) -> Vec<Violation> {
        let new = sim.exposed_since(self.seen);
        self.seen += new.len();
        for text in &new {
            self.words.extend(
                text.split(|c: char| c.is_whitespace() || c == '#').filter(|w| w.len() >= 40).map(str::to_string),
            );
        }
        let mut violations = Vec::new();
        for (grant, lines) in &self.keys {
            if !self.reported.contains(grant) && lines.iter().any(|l| self.words.contains(l)) {
                self.reported.insert(*grant);
                violations.push(Violation::safety(
                    checker::SECRETS,
                    format!("the login private key of grant {grant} reached EC2's API (tags, key material, description or user data)"),
                ));
            }
        }
        violations
    }
}
