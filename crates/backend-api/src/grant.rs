//! What a requester was granted, and what it used.

use serde::{Deserialize, Serialize};

use crate::AlmanacTick;

/// A malformed hex id or hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} {value:?} is not 64 hex characters (32 bytes): pass the full sha256 in hex")]
pub struct ParseHashError {
    what: &'static str,
    value: String,
}

fn parse_32(what: &'static str, value: &str) -> Result<[u8; 32], ParseHashError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| ParseHashError { what, value: value.chars().take(80).collect() })?;
    Ok(out)
}

macro_rules! hex32 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The 64 lowercase hex characters of the value.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseHashError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_32($what, s).map(Self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        // Hex in human-readable formats (JSON, TOML), raw bytes in binary ones (bincode).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { self.0.serialize(s) }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }
    };
}

hex32!(
    /// The 32-byte id of a compute grant, as the marketplace assigned it.
    GrantId,
    "grant id"
);
hex32!(
    /// The sha256 of a container image's bytes (its "post-hash"): the only image a grant may run.
    ImageHash,
    "image post-hash"
);

impl GrantId {
    /// A short, stable prefix for names and log lines (16 hex characters).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

/// What the requester asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeManifest {
    /// CPU in thousandths of a vCPU.
    pub cpu_millicores: u32,
    /// Memory in MiB.
    pub ram_mib: u32,
    /// Root volume size in GiB.
    pub storage_gib: u32,
    /// Whether the workload must run in an Intel TDX trust domain.
    pub tdx_required: bool,
    /// The sha256 of the container image to run.
    pub image_post_hash: ImageHash,
}

/// One grant: a manifest, borrowed from the requester's message, and a validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputeGrant<'a> {
    /// The grant's id.
    pub id: GrantId,
    /// What the requester asked for.
    pub manifest: &'a ComputeManifest,
    /// The first tick the machine may run.
    pub valid_from: AlmanacTick,
    /// The deadline: the machine must be told to terminate no later than this tick.
    pub valid_to: AlmanacTick,
}

/// What a grant used, the figures the marketplace settles on. Adding saturates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UsageMetrics {
    /// vCPUs × seconds running.
    pub cpu_seconds: u64,
    /// MiB of memory × seconds running.
    pub ram_mib_seconds: u64,
    /// Bytes in plus bytes out over the network.
    pub network_bytes: u64,
    /// Bytes of provisioned storage.
    pub storage_bytes: u64,
}

impl UsageMetrics {
    /// True when every field of `self` is at most the same field of `other`.
    pub fn le_fieldwise(&self, other: &UsageMetrics) -> bool {
        self.cpu_seconds <= other.cpu_seconds
            && self.ram_mib_seconds <= other.ram_mib_seconds
            && self.network_bytes <= other.network_bytes
            && self.storage_bytes <= other.storage_bytes
    }
}

impl std::ops::Add for UsageMetrics {
    type Output = UsageMetrics;
    fn add(mut self, rhs: UsageMetrics) -> UsageMetrics {
        self += rhs;
        self
    }
}

impl std::ops::AddAssign for UsageMetrics {
    fn add_assign(&mut self, rhs: UsageMetrics) {
        self.cpu_seconds = self.cpu_seconds.saturating_add(rhs.cpu_seconds);
        self.ram_mib_seconds = self.ram_mib_seconds.saturating_add(rhs.ram_mib_seconds);
        self.network_bytes = self.network_bytes.saturating_add(rhs.network_bytes);
        self.storage_bytes = self.storage_bytes.saturating_add(rhs.storage_bytes);
    }
}

impl std::iter::Sum for UsageMetrics {
    fn sum<I: Iterator<Item = UsageMetrics>>(iter: I) -> UsageMetrics {
        iter.fold(UsageMetrics::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_refuse_bad_input() {
        let id: GrantId = "ab".repeat(32).parse().expect("64 hex chars");
        assert_eq!(id.to_hex(), "ab".repeat(32));
        assert_eq!(id.short(), "ab".repeat(8));
        let err = "xyz".parse::<ImageHash>().expect_err("not hex");
        assert!(err.to_string().contains("\"xyz\""), "{err}");
        assert!(err.to_string().contains("image post-hash"), "{err}");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<GrantId>(&json).expect("deserialize"), id);
    }

    #[test]
    fn usage_adds_and_saturates() {
        let a = UsageMetrics { cpu_seconds: 1, ram_mib_seconds: 2, network_bytes: 3, storage_bytes: u64::MAX };
        let b = UsageMetrics { cpu_seconds: 10, ram_mib_seconds: 20, network_bytes: 30, storage_bytes: 1 };
        let sum = a + b;
        assert_eq!(
            sum,
            UsageMetrics { cpu_seconds: 11, ram_mib_seconds: 22, network_bytes: 33, storage_bytes: u64::MAX }
        );
        assert!(a.le_fieldwise(&sum) && b.le_fieldwise(&sum));
        assert!(!sum.le_fieldwise(&a));
        assert_eq!([a, b].into_iter().sum::<UsageMetrics>(), sum);
    }
}
