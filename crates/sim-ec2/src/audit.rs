//! The audit trail: a running SHA-256 over every call, its inputs and its outcome.
//!
//! Fields are written in a fixed, length-prefixed binary form, so the hash depends only on the
//! calls and answers, never on compiler version or hash-map order. Two runs with the same seed
//! and the same calls give the same [`Audit::hex`].

use aws_backend::port::{Ec2Error, InstanceInfo, Operation, Tags};
use sha2::{Digest, Sha256};

/// How many bytes the audit gathers before handing them to the hasher: fields are a few bytes
/// each, and one large `update` costs far less than many small ones.
const PENDING_BYTES_MAX: usize = 4_096;

pub(crate) struct Audit {
    hasher: Sha256,
    /// Bytes written but not yet hashed. The hash is over the byte stream, so when they are
    /// handed over changes nothing.
    pending: Vec<u8>,
    entries: u64,
}

impl Audit {
    pub(crate) fn new(seed: u64) -> Self {
        let mut audit = Self { hasher: Sha256::new(), pending: Vec::with_capacity(PENDING_BYTES_MAX * 2), entries: 0 };
        audit.str("sim-ec2 audit v1");
        audit.u64(seed);
        audit
    }

    /// Starts the record of one call (or one targeted fault, under a pseudo-operation tag).
    pub(crate) fn begin(&mut self, tag: u8, region: &str, now_ms: u64) {
        if self.pending.len() >= PENDING_BYTES_MAX {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        self.entries += 1;
        self.u8(0xA5);
        self.u8(tag);
        self.str(region);
        self.u64(now_ms);
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.pending.push(value);
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.pending.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn str(&mut self, value: &str) {
        self.u64(value.len() as u64);
        self.pending.extend_from_slice(value.as_bytes());
    }

    pub(crate) fn strs(&mut self, values: &[String]) {
        self.u64(values.len() as u64);
        for value in values {
            self.str(value);
        }
    }

    pub(crate) fn tags(&mut self, tags: &Tags) {
        self.u64(tags.len() as u64);
        for (key, value) in tags {
            self.str(key);
            self.str(value);
        }
    }

    pub(crate) fn instance(&mut self, info: &InstanceInfo) {
        self.str(&info.instance_id);
        self.str(&info.instance_type);
        self.str(info.state.name());
        self.str(info.state_reason_code.as_deref().unwrap_or(""));
        self.str(&info.public_dns_name);
        self.u64(info.launch_time_unix_ms);
        self.tags(&info.tags);
        self.str(&info.client_token);
    }

    /// Records the outcome: `ok` writes the answer's fields.
    pub(crate) fn outcome<T>(&mut self, result: &Result<T, Ec2Error>, ok: impl FnOnce(&mut Self, &T)) {
        match result {
            Ok(value) => {
                self.u8(1);
                ok(self, value);
            }
            Err(err) => {
                self.u8(0);
                self.str(&err.code);
            }
        }
    }

    /// The hash so far, in hex, followed by the number of records.
    pub(crate) fn hex(&self) -> String {
        let mut hasher = self.hasher.clone();
        hasher.update(&self.pending);
        let digest = hasher.finalize();
        let mut out = String::with_capacity(80);
        for byte in digest {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
        out.push_str(&format!("-{}", self.entries));
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The audit tag of an operation: its index in [`Operation::ALL`].
pub(crate) fn op_tag(op: Operation) -> u8 {
    Operation::ALL.iter().position(|o| *o == op).map_or(0xFF, |i| i as u8)
}
