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
    for (grant, facts) in ctx.facts {
        let Some(guest) = &facts.guest else { continue };
        let pinned: String = guest.pinned_host_key.split(' ').take(2).collect::<Vec<_>>().join(" ");
        if guest.guest_host_key.as_deref() != Some(pinned.as_str()) {
            violations.push(Violation::safety(
                names::GUEST,
                format!(
                    "grant {grant}: the requester was told to pin host key {pinned:?} for instance {}, but its guest holds {:?}",
                    guest.instance_id, guest.guest_host_key
                ),
            ));
        }
        if guest.ingress != wanted_ingress() {
            violations.push(Violation::safety(
                names::GUEST,
                format!(
                    "grant {grant}: instance {} was handed over with ingress rules {:?}: want exactly SSH from the configured CIDRs, {:?}",
                    guest.instance_id,
                    guest.ingress,
                    wanted_ingress()
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
