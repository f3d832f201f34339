//! Guest: the host key the requester pins is the one the guest holds (its own, printed to its
//! console, unless the configuration ships one), and the instance it gets was launched with
//! IMDSv2 required and a hop limit of 1, so containers on it cannot reach the metadata service,
//! and its security groups let in exactly SSH (TCP 22) from the configured CIDRs
//! (`ssh_ingress_cidrs`), nothing else and from nowhere else.
//!
//! The harness records, at the moment provision hands an instance over, what it returned and
//! what the simulator says the guest holds ([`GuestFacts`]); this checker compares them.

use super::{Context, Violation, names};

/// What the harness saw of the guest it handed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFacts {
    /// The instance handed over.
    pub instance_id: String,
    /// The host key provision returned, for the requester to pin.
    pub pinned_host_key: String,
    /// The host key the guest holds (the simulator's ground truth), `type base64`.
    pub guest_host_key: Option<String>,
    /// The instance's IMDS options: tokens required, PUT response hop limit.
    pub imds: Option<(bool, u8)>,
    /// The ingress rules (TCP port, CIDR) of the instance's security groups, sorted.
    pub ingress: Vec<(u16, String)>,
}

/// The ingress every handed-over instance must have: SSH from the fixture's CIDRs.
fn wanted_ingress() -> Vec<(u16, String)> {
    let mut wanted: Vec<(u16, String)> =
        crate::fixture::SSH_INGRESS_CIDRS.iter().map(|c| (22, (*c).to_string())).collect();
    wanted.sort();
    wanted
}

/// Checks every handed-over instance's guest facts.
pub fn check(ctx: &Context<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let wanted = wanted_ingress();
    for (grant, facts) in ctx.facts {
        let Some(guest) = &facts.guest else { continue };
        let pinned = key_type_and_blob(&guest.pinned_host_key);
        if guest.guest_host_key.as_deref() != Some(pinned) {
            violations.push(Violation::safety(
                names::GUEST,
                format!(
                    "grant {grant}: the requester was told to pin host key {pinned:?} for instance {}, but its guest holds {:?}",
                    guest.instance_id, guest.guest_host_key
                ),
            ));
        }
        if guest.ingress != wanted {
            violations.push(Violation::safety(
                names::GUEST,
                format!(
                    "grant {grant}: instance {} was handed over with ingress rules {:?}: want exactly SSH from the configured CIDRs, {:?}",
                    guest.instance_id,
                    guest.ingress,
                    wanted
                ),
            ));
        }
        if guest.imds != Some((true, 1)) {
            violations.push(Violation::safety(
                names::GUEST,
                format!(
                    "grant {grant}: instance {} runs with IMDS options {:?} (tokens required, hop limit): want IMDSv2 and a hop limit of 1",
                    guest.instance_id, guest.imds
                ),
            ));
        }
    }
    violations
}

/// The first two space-separated fields of an OpenSSH public key line (its type and blob, the
/// comment left out): `line.split(' ').take(2)` joined by a space, without building it.
fn key_type_and_blob(line: &str) -> &str {
    match line.match_indices(' ').nth(1) {
        Some((second_space, _)) => &line[..second_space],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::key_type_and_blob;

    #[test]
    fn the_pinned_key_is_the_lines_first_two_fields_as_split_and_join_give_them() {
        for line in ["ssh-ed25519 AAAA comment", "ssh-ed25519 AAAA", "ssh-ed25519", "", "a  b c", " a b", "a b c d"] {
            let joined = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
            assert_eq!(key_type_and_blob(line), joined, "{line:?}");
        }
    }
}
