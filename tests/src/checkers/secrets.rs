//! Secrets: no requester's private key reaches anything a reader of EC2's API can read back
//! (tags, imported key material, group descriptions, user data): AWS only ever sees the public
//! half of the login key pair.
//!
//! The checker derives each grant's login key from the simulation's key seed, as the backend
//! does, and looks for the key-specific lines of its OpenSSH form (every base64 line but the
//! first, which all such keys share) among the words of every text a call handed EC2. The
//! host key that the user data still carries (the guest-security issue removes it) is another
//! key, and is not looked for.

use std::collections::{BTreeSet, HashMap};

use aws_backend::keys::SshKeyPair;
use aws_backend::names;
use backend_api::{GrantId, Secret};
use sim_ec2::SimEc2;

use super::{Violation, names as checker};

/// The state of the check: how far it has read what EC2 was handed, and the keys looked for.
///
/// A grant is reported at the first check after one of its key's lines reached EC2. Each check
/// reads only the texts handed over since the last, so it looks their words up among the key
/// lines (not every key among all words so far): the same grants, found at the same checks.
#[derive(Debug, Default)]
pub struct Secrets {
    seen: usize,
    /// Every key-specific line looked for, with the grants whose login key holds it.
    owners: HashMap<String, Vec<GrantId>>,
    reported: BTreeSet<GrantId>,
}

impl Secrets {
    /// Looks for the login keys of `grants`, derived from `key_seed`.
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a GrantId>, key_seed: &Secret) -> Self {
        let keys: Vec<(GrantId, Vec<String>)> = grants
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
        let mut owners: HashMap<String, Vec<GrantId>> = HashMap::new();
        for (grant, lines) in keys {
            for line in lines {
                owners.entry(line).or_default().push(grant);
            }
        }
        Self { owners, ..Self::default() }
    }

    /// Reads what calls handed EC2 since the last check, and reports each grant whose login
    /// private key is among it.
    pub fn check(&mut self, sim: &SimEc2) -> Vec<Violation> {
        let new = sim.exposed_since(self.seen);
        self.seen += new.len();
        let mut found = BTreeSet::new();
        for text in &new {
            for word in text.split(|c: char| c.is_whitespace() || c == '#').filter(|w| w.len() >= 40) {
                found.extend(self.owners.get(word).into_iter().flatten().copied());
            }
        }
        let mut violations = Vec::new();
        for grant in found {
            if self.reported.insert(grant) {
                violations.push(Violation::safety(
                    checker::SECRETS,
                    format!("the login private key of grant {grant} reached EC2's API (tags, key material, description or user data)"),
                ));
            }
        }
        violations
    }
}
