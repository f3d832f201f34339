//! One grant's life as a bench's history: admitted, created, launched, running, `samples`
//! network samples, ended, torn down and settled, one event per call. Shared by `bench_ledger`
//! and `bench_dynamodb` (which includes this file by path: examples of two crates share no
//! module otherwise).

use backend_api::{AlmanacTick, GrantId};
use usage_ledger::{Event, GrantState, ObservedState, Record, TerminationReason};

/// One grant's life, one event per call, with the usage it settles on computed by the fold.
pub(crate) struct Life {
    pub(crate) id: GrantId,
    pub(crate) step: u64,
    pub(crate) state: Option<GrantState>,
    /// `NetworkSampled` events in the life.
    pub(crate) samples: u64,
}

impl Life {
    pub(crate) fn with_samples(n: u64, samples: u64) -> Self {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        Self { id: GrantId(id), step: 0, state: None, samples }
    }

    /// The next event at `now`, or `None` once settled.
    pub(crate) fn next(&mut self, now: u64) -> Option<Record> {
        let n = u64::from_be_bytes(self.id.0[..8].try_into().unwrap());
        let instance = || format!("i-{n:017x}");
        let event = match self.step {
            0 => Event::GrantAdmitted {
                region: "us-east-1".into(),
                instance_type: "m7i.large".into(),
                vcpus: 2,
                memory_mib: 8192,
                storage_bytes: 20 << 30,
                valid_to: AlmanacTick(n + 1000),
                valid_to_unix_ms: now + 3_600_000,
                key_name: format!("cb-{n:016x}"),
                group_name: format!("cb-{n:016x}"),
            },
            1 => Event::KeyPairImported { key_name: format!("cb-{n:016x}"), key_pair_id: format!("key-{n:017x}") },
            2 => Event::SecurityGroupCreated { group_id: format!("sg-{n:017x}"), group_name: format!("cb-{n:016x}") },
            3 => Event::LaunchRequested {
                client_token: format!("tok-{n:016x}"),
                instance_type: "m7i.large".into(),
                image_id: Some("ami-0123456789abcdef0".into()),
            },
            4 => Event::InstanceLaunched {
                instance_id: instance(),
                client_token: format!("tok-{n:016x}"),
                instance_type: "m7i.large".into(),
                vcpus: 2,
                memory_mib: 8192,
            },
            5 => Event::InstanceStateObserved {
                instance_id: instance(),
                state: ObservedState::Pending,
                observed_at_unix_ms: now,
            },
            6 => Event::InstanceStateObserved {
                instance_id: instance(),
                state: ObservedState::Running,
                observed_at_unix_ms: now,
            },
            s if s < 7 + self.samples => Event::NetworkSampled {
                instance_id: instance(),
                bytes_in: 1_000_000 + s,
                bytes_out: 50_000,
                window_start_unix_ms: now.saturating_sub(60_000),
                window_end_unix_ms: now,
            },
            s => match s - 7 - self.samples {
                0 => Event::TerminationRequested { reason: TerminationReason::Deadline },
                1 => Event::InstanceStateObserved {
                    instance_id: instance(),
                    state: ObservedState::ShuttingDown,
                    observed_at_unix_ms: now,
                },
                2 => Event::InstanceTerminated { instance_id: instance() },
                3 => Event::KeyPairDeleted { key_name: format!("cb-{n:016x}") },
                4 => Event::SecurityGroupDeleted { group_id: format!("sg-{n:017x}") },
                5 => Event::GrantSettled { usage: self.state.as_ref().unwrap().usage() },
                _ => return None,
            },
        };
        let seq = self.state.as_ref().map_or(0, GrantState::next_seq);
        let record = Record { grant: self.id, seq, at_unix_ms: now, event };
        self.state = Some(usage_ledger::apply(self.state.as_ref(), &record).unwrap());
        self.step += 1;
        Some(record)
    }
}
