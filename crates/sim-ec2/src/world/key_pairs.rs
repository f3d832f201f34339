//! Key pairs: ImportKeyPair (and which public keys EC2 accepts), DescribeKeyPairs and
//! DeleteKeyPair, and the deleted key pairs DescribeKeyPairs still lists for a while.

use aws_backend::port::{Ec2Error, Filter, ImportKeyPairRequest, KeyPairInfo, Operation, Tags, codes};
use backend_api::RegionLabel;
use base64::Engine;

use super::filters::{matches, parse_filters};
use super::tags::validate_tags;
use super::{About, KeyPair, World, audit_filters, draw, err, extra_codes, new_id};
use crate::audit::op_tag;
use crate::consistency::{self, LagKind};

/// True for an OpenSSH public key EC2 imports: RSA or ED25519 only, whose base64 body is a key
/// blob of the kind its first word names. ECDSA (`ecdsa-sha2-nistp256` ...) and DSA keys are
/// refused: "ImportKeyPair" API reference ("Imports the public key from an RSA or ED25519 key
/// pair"), and "Create a key pair using a third-party tool" (supported types: RSA, ED25519).
fn valid_public_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else { return false };
    if !matches!(kind, "ssh-ed25519" | "ssh-rsa") {
        return false;
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(body) else { return false };
    // The blob opens with the key type as an SSH string: a 4-byte big-endian length, then it.
    let named = blob.get(..4).and_then(|len| {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        blob.get(4..4usize.checked_add(len)?)
    });
    named == Some(kind.as_bytes())
}

impl World {
    pub(crate) fn import_key_pair(
        &mut self,
        region: &RegionLabel,
        req: ImportKeyPairRequest,
    ) -> Result<KeyPairInfo, Ec2Error> {
        let op = Operation::ImportKeyPair;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.key_name);
        self.audit.str(&req.public_key_openssh);
        self.audit.tags(&req.tags);
        self.expose(req.tags.values().map(String::as_str).chain([req.public_key_openssh.as_str()]));
        let result = self.serve(op, region, About::Tags(&req.tags), |w, r| w.import_key_pair_in(r, &req));
        self.audit.outcome(&result, |a, kp| {
            a.str(&kp.key_pair_id);
            a.u64(kp.create_time_unix_ms);
        });
        result
    }

    fn import_key_pair_in(&mut self, r: usize, req: &ImportKeyPairRequest) -> Result<KeyPairInfo, Ec2Error> {
        let op = Operation::ImportKeyPair;
        let name = &req.key_name;
        if name.is_empty() || name.len() > 255 || !name.is_ascii() {
            return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("Invalid key pair name {name:?}")));
        }
        if !valid_public_key(&req.public_key_openssh) {
            return Err(err(op, extra_codes::KEY_FORMAT, "Key is not in valid OpenSSH public key format"));
        }
        validate_tags(op, &req.tags)?;
        if self.regions[r].key_pairs.contains_key(name) || self.deleted_key_pair_lingers(r, name) {
            return Err(err(op, codes::KEY_PAIR_DUPLICATE, format!("The keypair '{name}' already exists.")));
        }
        let id = new_id(&mut self.rng, "key");
        let visible_at_ms =
            self.now_ms + draw(&mut self.rng, self.faults.visibility_delay_ms_min, self.faults.visibility_delay_ms_max);
        let info = KeyPairInfo {
            key_name: name.clone(),
            key_pair_id: id.clone(),
            tags: req.tags.clone(),
            create_time_unix_ms: self.now_ms,
        };
        let changed_seq = self.next_seq();
        let tag_view = self.new_tag_view(&id, &Tags::new());
        let key_pair =
            KeyPair { id, tags: req.tags.clone(), tag_view, created_ms: self.now_ms, visible_at_ms, changed_seq };
        self.regions[r].key_pairs.insert(name.clone(), key_pair);
        self.regions[r].resources_seq = changed_seq;
        Ok(info)
    }

    pub(crate) fn describe_key_pairs(
        &mut self,
        region: &RegionLabel,
        filters: Vec<Filter>,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        let op = Operation::DescribeKeyPairs;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        audit_filters(&mut self.audit, &filters);
        let result: Result<Vec<KeyPairInfo>, Ec2Error> = self.serve(op, region, About::Nothing, |w, r| {
            let filters = parse_filters(op, &filters, &["key-name", "key-pair-id"])?;
            let now = w.now_ms;
            let region = &w.regions[r];
            // Deleted key pairs linger in the list for a while (see `consistency`).
            let lingering = region.deleted_key_pairs.iter().filter(|(_, (until, _))| now < *until);
            let mut listed: Vec<(&String, &KeyPair)> =
                region.key_pairs.iter().chain(lingering.map(|(name, (_, kp))| (name, kp))).collect();
            listed.sort_by(|a, b| a.0.cmp(b.0));
            Ok(listed
                .into_iter()
                .filter(|(_, kp)| now >= kp.visible_at_ms)
                .filter(|(name, kp)| {
                    matches(&filters, consistency::filter_tags(&kp.tags, &kp.tag_view, now), |f| match f {
                        "key-name" => Some(name.as_str()),
                        "key-pair-id" => Some(kp.id.as_str()),
                        _ => None,
                    })
                })
                .map(|(name, kp)| KeyPairInfo {
                    key_name: name.clone(),
                    key_pair_id: kp.id.clone(),
                    tags: kp.tags.clone(),
                    create_time_unix_ms: kp.created_ms,
                })
                .collect())
        });
        self.audit.outcome(&result, |a, list| {
            a.u64(list.len() as u64);
            for kp in list {
                a.str(&kp.key_pair_id);
                a.tags(&kp.tags);
            }
        });
        result
    }

    pub(crate) fn delete_key_pair(&mut self, region: &RegionLabel, key_name: &str) -> Result<(), Ec2Error> {
        let op = Operation::DeleteKeyPair;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(key_name);
        // EC2 answers success whether or not the key pair exists.
        let result = self.serve(op, region, About::KeyPair(key_name), |w, r| {
            if let Some(kp) = w.regions[r].key_pairs.remove(key_name) {
                w.regions[r].resources_seq = w.next_seq();
                w.linger_key_pair(r, key_name, kp);
            }
            Ok(())
        });
        self.audit.outcome(&result, |_, _| {});
        result
    }

    /// Keeps a key pair deleted now listed for its lingering lag.
    fn linger_key_pair(&mut self, r: usize, name: &str, key_pair: KeyPair) {
        let now = self.now_ms;
        let lag =
            consistency::lag_ms(self.seed, LagKind::Deleted, &key_pair.id, now, self.faults.deleted_visible_ms_max);
        let deleted = &mut self.regions[r].deleted_key_pairs;
        deleted.retain(|_, (until, _)| now < *until);
        if lag > 0 {
            deleted.insert(name.to_string(), (now + lag, key_pair));
        }
    }

    /// True while a deleted key pair named `name` still lingers (its name is taken).
    fn deleted_key_pair_lingers(&self, r: usize, name: &str) -> bool {
        self.regions[r].deleted_key_pairs.get(name).is_some_and(|(until, _)| self.now_ms < *until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_checked() {
        assert!(valid_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host"
        ));
        assert!(!valid_public_key("ssh-ed25519"));
        assert!(!valid_public_key("ssh-dss AAAA"));
        // The body must name the same kind as the first word.
        assert!(!valid_public_key(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host"
        ));
    }
}
