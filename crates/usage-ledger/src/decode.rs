//! A direct reader of the current payload version (`Envelope::V2`), byte for byte what bincode's
//! standard configuration decodes through serde, without serde's per-field visitors (a grant id
//! alone is 32 visits there).
//!
//! It is only a fast path: [`decode_v2`] returns `None` for anything it does not read whole
//! (an older version, a malformed payload, trailing bytes), and the caller then decodes with
//! bincode, which gives the record or the error it always gave. So the fast path can only ever
//! agree with bincode; the tests check that it does, record for record.
//!
//! The encoding, as bincode 2 writes it with `config::standard()`: unsigned integers as
//! varints (a value up to 250 in one byte; else a marker byte 251, 252 or 253 and the value as
//! a little-endian u16, u32 or u64), `u8` as one raw byte (a grant id is 32 of them), `bool` as
//! a byte 0 or 1, `Option` as a byte 0 or 1 then the value, a string as its length (a varint)
//! then its UTF-8 bytes, an enum as its variant index (a `u32` varint) then its fields, a
//! struct as its fields in order.

use backend_api::{AlmanacTick, GrantId, UsageMetrics};

use crate::event::{Event, ObservedState, Record, ResourceKind, TerminationReason};

/// The envelope's variant index for version 2 (see `file::EnvelopeRef`).
const ENVELOPE_V2: u32 = 1;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Some(out)
    }

    /// A varint of at most `max_marker` (251: u16, 252: u32, 253: u64), as bincode reads one.
    fn varint(&mut self, max_marker: u8) -> Option<u64> {
        match self.byte()? {
            small @ 0..=250 => Some(u64::from(small)),
            251 => Some(u64::from(u16::from_le_bytes(self.array()?))),
            252 if max_marker >= 252 => Some(u64::from(u32::from_le_bytes(self.array()?))),
            253 if max_marker >= 253 => Some(u64::from_le_bytes(self.array()?)),
            _ => None,
        }
    }

    fn u32(&mut self) -> Option<u32> {
        self.varint(252).and_then(|v| u32::try_from(v).ok())
    }

    fn u64(&mut self) -> Option<u64> {
        self.varint(253)
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u64()?).ok()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    fn option_string(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }

    fn tick(&mut self) -> Option<AlmanacTick> {
        self.u64().map(AlmanacTick)
    }

    fn usage(&mut self) -> Option<UsageMetrics> {
        Some(UsageMetrics {
            cpu_seconds: self.u64()?,
            ram_mib_seconds: self.u64()?,
            network_bytes: self.u64()?,
            storage_bytes: self.u64()?,
        })
    }

    fn observed_state(&mut self) -> Option<ObservedState> {
        Some(match self.u32()? {
            0 => ObservedState::Pending,
            1 => ObservedState::Running,
            2 => ObservedState::ShuttingDown,
            3 => ObservedState::Terminated,
            4 => ObservedState::Stopping,
            5 => ObservedState::Stopped,
            _ => return None,
        })
    }

    fn termination_reason(&mut self) -> Option<TerminationReason> {
        Some(match self.u32()? {
            0 => TerminationReason::Deadline,
            1 => TerminationReason::Exited,
            2 => TerminationReason::Operator,
            3 => TerminationReason::Rollback,
            _ => return None,
        })
    }

    fn resource_kind(&mut self) -> Option<ResourceKind> {
        Some(match self.u32()? {
            0 => ResourceKind::Instance,
            1 => ResourceKind::KeyPair,
            2 => ResourceKind::SecurityGroup,
            _ => return None,
        })
    }

    /// An `Event`: its variant index, then its fields in declaration order.
    fn event(&mut self) -> Option<Event> {
        Some(match self.u32()? {
            0 => Event::GrantAdmitted {
                region: self.string()?,
                instance_type: self.string()?,
                vcpus: self.u32()?,
                memory_mib: self.u64()?,
                storage_bytes: self.u64()?,
                valid_to: self.tick()?,
                valid_to_unix_ms: self.u64()?,
                key_name: self.string()?,
                group_name: self.string()?,
            },
            1 => Event::KeyPairImported { key_name: self.string()?, key_pair_id: self.string()? },
            2 => Event::SecurityGroupCreated { group_id: self.string()?, group_name: self.string()? },
            3 => Event::LaunchRequested {
                client_token: self.string()?,
                instance_type: self.string()?,
                image_id: self.option_string()?,
            },
            4 => Event::InstanceLaunched {
                instance_id: self.string()?,
                client_token: self.string()?,
                instance_type: self.string()?,
                vcpus: self.u32()?,
                memory_mib: self.u64()?,
            },
            5 => Event::InstanceStateObserved {
                instance_id: self.string()?,
                state: self.observed_state()?,
                observed_at_unix_ms: self.u64()?,
            },
            6 => Event::NetworkSampled {
                instance_id: self.string()?,
                bytes_in: self.u64()?,
                bytes_out: self.u64()?,
                window_start_unix_ms: self.u64()?,
                window_end_unix_ms: self.u64()?,
            },
            7 => Event::TerminationRequested { reason: self.termination_reason()? },
            8 => Event::InstanceTerminated { instance_id: self.string()? },
            9 => Event::KeyPairDeleted { key_name: self.string()? },
            10 => Event::SecurityGroupDeleted { group_id: self.string()? },
            11 => Event::GrantSettled { usage: self.usage()? },
            12 => Event::OrphanReaped { resource_kind: self.resource_kind()?, resource_id: self.string()? },
            13 => Event::LaunchAbsent { client_token: self.string()? },
            14 => Event::ProvisionFailed { retryable: self.bool()? },
            15 => Event::GrantRetried {
                attempt: self.u32()?,
                region: self.string()?,
                instance_type: self.string()?,
                vcpus: self.u32()?,
                memory_mib: self.u64()?,
                storage_bytes: self.u64()?,
                valid_to: self.tick()?,
                valid_to_unix_ms: self.u64()?,
                key_name: self.string()?,
                group_name: self.string()?,
            },
            16 => Event::BillingCapped { at_unix_ms: self.u64()? },
            17 => Event::NetworkMeasured {
                instance_id: self.string()?,
                bytes_in: self.u64()?,
                bytes_out: self.u64()?,
                window_start_unix_ms: self.u64()?,
                window_end_unix_ms: self.u64()?,
                complete: self.bool()?,
            },
            18 => Event::NetworkUnknown {
                instance_id: self.string()?,
                window_start_unix_ms: self.u64()?,
                window_end_unix_ms: self.u64()?,
            },
            19 => Event::BillingRulesAdopted { version: self.u32()? },
            _ => return None,
        })
    }
}

/// The record in a version 2 payload that decodes whole with nothing after it; `None` for
/// anything else (decode that with bincode, see the module documentation).
pub(crate) fn decode_v2(payload: &[u8]) -> Option<Record> {
    let mut reader = Reader { bytes: payload };
    if reader.u32()? != ENVELOPE_V2 {
        return None;
    }
    let record = Record {
        grant: GrantId(reader.array()?),
        seq: reader.u64()?,
        at_unix_ms: reader.u64()?,
        event: reader.event()?,
    };
    reader.bytes.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::file::{decode_payload_bincode, encode_payload};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![4 => "[a-z0-9-]{0,24}", 1 => any::<String>(), 1 => "[a-z]{240,300}"]
    }

    /// Integers of every varint width, and the edges between them.
    fn int() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..=250, 251u64..=65_535, 65_536u64..=u64::from(u32::MAX), any::<u64>(), Just(u64::MAX)]
    }

    fn int32() -> impl Strategy<Value = u32> {
        int().prop_map(|v| v as u32)
    }

    fn admitted() -> impl Strategy<Value = Event> {
        (text(), text(), int32(), int(), int(), int(), int(), text(), text()).prop_map(
            |(
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                tick,
                valid_to_unix_ms,
                key_name,
                group_name,
            )| {
                Event::GrantAdmitted {
                    region,
                    instance_type,
                    vcpus,
                    memory_mib,
                    storage_bytes,
                    valid_to: AlmanacTick(tick),
                    valid_to_unix_ms,
                    key_name,
                    group_name,
                }
            },
        )
    }

    fn event() -> impl Strategy<Value = Event> {
        let state = (0usize..6).prop_map(|i| {
            [
                ObservedState::Pending,
                ObservedState::Running,
                ObservedState::ShuttingDown,
                ObservedState::Terminated,
                ObservedState::Stopping,
                ObservedState::Stopped,
            ][i]
        });
        let reason = (0usize..4).prop_map(|i| {
            [
                TerminationReason::Deadline,
                TerminationReason::Exited,
                TerminationReason::Operator,
                TerminationReason::Rollback,
            ][i]
        });
        let kind =
            (0usize..3).prop_map(|i| [ResourceKind::Instance, ResourceKind::KeyPair, ResourceKind::SecurityGroup][i]);
        let usage = (int(), int(), int(), int()).prop_map(|(a, b, c, d)| UsageMetrics {
            cpu_seconds: a,
            ram_mib_seconds: b,
            network_bytes: c,
            storage_bytes: d,
        });
        prop_oneof![
            admitted(),
            (text(), text()).prop_map(|(key_name, key_pair_id)| Event::KeyPairImported { key_name, key_pair_id }),
            (text(), text()).prop_map(|(group_id, group_name)| Event::SecurityGroupCreated { group_id, group_name }),
            (text(), text(), proptest::option::of(text())).prop_map(|(client_token, instance_type, image_id)| {
                Event::LaunchRequested { client_token, instance_type, image_id }
            }),
            (text(), text(), text(), int32(), int()).prop_map(
                |(instance_id, client_token, instance_type, vcpus, memory_mib)| Event::InstanceLaunched {
                    instance_id,
                    client_token,
                    instance_type,
                    vcpus,
                    memory_mib
                }
            ),
            (text(), state, int()).prop_map(|(instance_id, state, observed_at_unix_ms)| {
                Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms }
            }),
            (text(), int(), int(), int(), int()).prop_map(|(instance_id, a, b, c, d)| Event::NetworkSampled {
                instance_id,
                bytes_in: a,
                bytes_out: b,
                window_start_unix_ms: c,
                window_end_unix_ms: d
            }),
            reason.prop_map(|reason| Event::TerminationRequested { reason }),
            text().prop_map(|instance_id| Event::InstanceTerminated { instance_id }),
            text().prop_map(|key_name| Event::KeyPairDeleted { key_name }),
            text().prop_map(|group_id| Event::SecurityGroupDeleted { group_id }),
            usage.prop_map(|usage| Event::GrantSettled { usage }),
            (kind, text()).prop_map(|(resource_kind, resource_id)| Event::OrphanReaped { resource_kind, resource_id }),
            text().prop_map(|client_token| Event::LaunchAbsent { client_token }),
            any::<bool>().prop_map(|retryable| Event::ProvisionFailed { retryable }),
            (int32(), admitted()).prop_map(|(attempt, admitted)| admitted.retried(attempt)),
            int().prop_map(|at_unix_ms| Event::BillingCapped { at_unix_ms }),
            (text(), int(), int(), int(), int(), any::<bool>()).prop_map(|(instance_id, a, b, c, d, complete)| {
                Event::NetworkMeasured {
                    instance_id,
                    bytes_in: a,
                    bytes_out: b,
                    window_start_unix_ms: c,
                    window_end_unix_ms: d,
                    complete,
                }
            }),
            (text(), int(), int()).prop_map(|(instance_id, c, d)| Event::NetworkUnknown {
                instance_id,
                window_start_unix_ms: c,
                window_end_unix_ms: d
            }),
            int32().prop_map(|version| Event::BillingRulesAdopted { version }),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (any::<[u8; 32]>(), int(), int(), event()).prop_map(|(grant, seq, at_unix_ms, event)| Record {
            grant: GrantId(grant),
            seq,
            at_unix_ms,
            event,
        })
    }

    /// A damaged copy of a payload: bytes changed, cut off or added.
    fn damage(payload: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut out = payload.to_vec();
        for &(at, kind, value) in edits {
            let at = at % (out.len() + 1);
            match kind % 4 {
                0 if at < out.len() => out[at] = value,
                1 => out.truncate(at),
                2 => out.insert(at, value),
                _ if at < out.len() => out[at] ^= 1 << (value % 8),
                _ => {}
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Given any record as the store encodes it, the fast path reads it, and reads what
        /// bincode reads.
        #[test]
        fn the_fast_path_reads_every_record_as_bincode_does(record in record()) {
            let mut payload = Vec::new();
            encode_payload(&record, &mut payload).unwrap();
            prop_assert_eq!(decode_v2(&payload), Some(record.clone()));
            prop_assert_eq!(decode_payload_bincode(&payload), Ok(record));
        }

        /// Given a damaged payload, the fast path either declines it or reads exactly what
        /// bincode reads from it (never a record bincode would refuse).
        #[test]
        fn the_fast_path_never_reads_what_bincode_would_not(
            record in record(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
        ) {
            let mut payload = Vec::new();
            encode_payload(&record, &mut payload).unwrap();
            let damaged = damage(&payload, &edits);
            if let Some(fast) = decode_v2(&damaged) {
                prop_assert_eq!(decode_payload_bincode(&damaged), Ok(fast));
            }
        }
    }

    /// Every variant, by name, with no wildcard: a new `Event` variant stops this test from
    /// compiling, so whoever adds one comes here, and adds it to `Reader::event` and to
    /// `event()` above as well.
    #[test]
    fn every_event_variant_is_read_directly() {
        fn index(event: &Event) -> u32 {
            match event {
                Event::GrantAdmitted { .. } => 0,
                Event::KeyPairImported { .. } => 1,
                Event::SecurityGroupCreated { .. } => 2,
                Event::LaunchRequested { .. } => 3,
                Event::InstanceLaunched { .. } => 4,
                Event::InstanceStateObserved { .. } => 5,
                Event::NetworkSampled { .. } => 6,
                Event::TerminationRequested { .. } => 7,
                Event::InstanceTerminated { .. } => 8,
                Event::KeyPairDeleted { .. } => 9,
                Event::SecurityGroupDeleted { .. } => 10,
                Event::GrantSettled { .. } => 11,
                Event::OrphanReaped { .. } => 12,
                Event::LaunchAbsent { .. } => 13,
                Event::ProvisionFailed { .. } => 14,
                Event::GrantRetried { .. } => 15,
                Event::BillingCapped { .. } => 16,
                Event::NetworkMeasured { .. } => 17,
                Event::NetworkUnknown { .. } => 18,
                Event::BillingRulesAdopted { .. } => 19,
            }
        }
        let event = Event::BillingRulesAdopted { version: 3 };
        let record = Record { grant: GrantId([7; 32]), seq: 1, at_unix_ms: 2, event };
        let mut payload = Vec::new();
        encode_payload(&record, &mut payload).unwrap();
        // The envelope's index, the grant, two one-byte varints, then the event's index.
        assert_eq!(u32::from(payload[35]), index(&record.event));
        assert_eq!(decode_v2(&payload), Some(record));
    }

    #[test]
    fn a_version_1_payload_is_left_to_bincode() {
        // The envelope's variant 0 (V1), whatever follows.
        assert_eq!(decode_v2(&[0, 1, 2, 3]), None);
    }
}
