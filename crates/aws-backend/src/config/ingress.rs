//! `ssh_ingress_cidrs`: [`IngressCidr`], one IPv4 or IPv6 network allowed to reach TCP 22,
//! parsed strictly (bits past the prefix are refused, not masked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// One entry of `ssh_ingress_cidrs`: an IPv4 or IPv6 network in CIDR notation, such as
/// `203.0.113.0/24` or `2001:db8::/32`, with every bit past the prefix clear.
///
/// Bits past the prefix are refused rather than dropped: EC2 masks them silently, so
/// `203.0.113.7/24` would let in the whole /24 where the operator probably meant one address
/// (ansible/ansible#25403 and #21871 show both the masking and the confusion it causes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct IngressCidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl IngressCidr {
    /// `0.0.0.0/0`: every IPv4 address, the seed's default.
    pub const IPV4_ANYWHERE: IngressCidr = IngressCidr { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix_len: 0 };
    /// `::/0`: every IPv6 address.
    pub const IPV6_ANYWHERE: IngressCidr = IngressCidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix_len: 0 };

    /// Parses `a.b.c.d/n` (n at most 32) or an IPv6 address and `/n` (n at most 128). The error
    /// names the value and says how to write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((addr_text, prefix_text)) = text.split_once('/') else {
            let hint = match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => format!("write \"{text}/32\" for that one address"),
                Ok(IpAddr::V6(_)) => format!("write \"{text}/128\" for that one address"),
                Err(_) => "write a network such as \"203.0.113.0/24\" or \"2001:db8::/32\"".to_string(),
            };
            return Err(format!("{text:?} is not a CIDR (no /prefix length): {hint}"));
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!(
                "{text:?} is not a CIDR: {addr_text:?} is neither an IPv4 nor an IPv6 address; write a network such as \"203.0.113.0/24\" or \"2001:db8::/32\""
            )
        })?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        // Digits only: `u8::from_str` would also take "+8", which no CIDR parser in EC2 accepts.
        let prefix_len = (!prefix_text.is_empty()
            && prefix_text.len() <= 3
            && prefix_text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| prefix_text.parse::<u8>().ok())
        .flatten()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
            format!(
                "{text:?} is not a CIDR: the prefix length of an {family} network is 0 to {max}, not {prefix_text:?}"
            )
        })?;
        let network = Self::mask(addr, prefix_len);
        if network != addr {
            let single = if addr.is_ipv6() { 128 } else { 32 };
            return Err(format!(
                "{text:?} has bits set past its /{prefix_len} prefix, which EC2 would silently widen to {network}/{prefix_len}: write \"{network}/{prefix_len}\" for the network, or \"{addr}/{single}\" for the one address"
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    /// `addr` with every bit past `prefix_len` cleared.
    fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let kept = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & kept))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let kept = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & kept))
            }
        }
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True for an IPv6 network (sent to EC2 as an `Ipv6Ranges` entry).
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// True for `0.0.0.0/0` and `::/0`: the whole Internet of that family.
    pub fn is_anywhere(&self) -> bool {
        self.prefix_len == 0
    }
}

impl std::fmt::Display for IngressCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for IngressCidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for IngressCidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        // The field's name goes into the message: TOML's own error shows only the line.
        Self::parse(&text).map_err(|reason| format!("ssh_ingress_cidrs: {reason}"))
    }
}
