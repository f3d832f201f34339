//! Format version 1's record and event, frozen: how frames written before version 2 decode.
//!
//! Version 2 added `image_id` to `LaunchRequested`. bincode encodes an enum by variant index
//! and a struct by field order, so the old shape must stay exactly as it was: these types are
//! a copy of `Record` and `Event` as version 1 wrote them, never to be changed. The nested
//! types (`GrantId`, `AlmanacTick`, `UsageMetrics`, `ObservedState`, `TerminationReason`,
//! `ResourceKind`) have not changed shape; if one ever does, freeze it here too.

use backend_api::{AlmanacTick, GrantId, UsageMetrics};
use serde::Deserialize;

use crate::event::{Event, ObservedState, Record, ResourceKind, TerminationReason};

/// A version 1 record.
#[derive(Deserialize)]
pub(crate) struct RecordV1 {
    grant: GrantId,
    seq: u64,
    at_unix_ms: u64,
    event: EventV1,
}

/// A version 1 event: `Event` as it was, variant for variant and field for field.
#[derive(Deserialize)]
enum EventV1 {
    GrantAdmitted {
        region: String,
        instance_type: String,
        vcpus: u32,
        memory_mib: u64,
        storage_bytes: u64,
        valid_to: AlmanacTick,
        valid_to_unix_ms: u64,
        key_name: String,
        group_name: String,
    },
    KeyPairImported {
        key_name: String,
        key_pair_id: String,
    },
    SecurityGroupCreated {
        group_id: String,
        group_name: String,
    },
    LaunchRequested {
        client_token: String,
        instance_type: String,
    },
    InstanceLaunched {
        instance_id: String,
        client_token: String,
        instance_type: String,
        vcpus: u32,
        memory_mib: u64,
    },
    InstanceStateObserved {
        instance_id: String,
        state: ObservedState,
        observed_at_unix_ms: u64,
    },
    NetworkSampled {
        instance_id: String,
        bytes_in: u64,
        bytes_out: u64,
        window_start_unix_ms: u64,
        window_end_unix_ms: u64,
    },
    TerminationRequested {
        reason: TerminationReason,
    },
    InstanceTerminated {
        instance_id: String,
    },
    KeyPairDeleted {
        key_name: String,
    },
    SecurityGroupDeleted {
        group_id: String,
    },
    GrantSettled {
        usage: UsageMetrics,
    },
    OrphanReaped {
        resource_kind: ResourceKind,
        resource_id: String,
    },
    LaunchAbsent {
        client_token: String,
    },
    ProvisionFailed {
        retryable: bool,
    },
    GrantRetried {
        attempt: u32,
        region: String,
        instance_type: String,
        vcpus: u32,
        memory_mib: u64,
        storage_bytes: u64,
        valid_to: AlmanacTick,
        valid_to_unix_ms: u64,
        key_name: String,
        group_name: String,
    },
    BillingCapped {
        at_unix_ms: u64,
    },
    NetworkMeasured {
        instance_id: String,
        bytes_in: u64,
        bytes_out: u64,
        window_start_unix_ms: u64,
        window_end_unix_ms: u64,
        complete: bool,
    },
    NetworkUnknown {
        instance_id: String,
        window_start_unix_ms: u64,
        window_end_unix_ms: u64,
    },
}

impl From<RecordV1> for Record {
    fn from(v1: RecordV1) -> Record {
        Record { grant: v1.grant, seq: v1.seq, at_unix_ms: v1.at_unix_ms, event: v1.event.into() }
    }
}

impl From<EventV1> for Event {
    fn from(v1: EventV1) -> Event {
        match v1 {
            EventV1::GrantAdmitted {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            } => Event::GrantAdmitted {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            },
            EventV1::KeyPairImported { key_name, key_pair_id } => Event::KeyPairImported { key_name, key_pair_id },
            EventV1::SecurityGroupCreated { group_id, group_name } => {
                Event::SecurityGroupCreated { group_id, group_name }
            }
            EventV1::LaunchRequested { client_token, instance_type } => {
                Event::LaunchRequested { client_token, instance_type, image_id: None }
            }
            EventV1::InstanceLaunched { instance_id, client_token, instance_type, vcpus, memory_mib } => {
                Event::InstanceLaunched { instance_id, client_token, instance_type, vcpus, memory_mib }
            }
            EventV1::InstanceStateObserved { instance_id, state, observed_at_unix_ms } => {
                Event::InstanceStateObserved { instance_id, state, observed_at_unix_ms }
            }
            EventV1::NetworkSampled { instance_id, bytes_in, bytes_out, window_start_unix_ms, window_end_unix_ms } => {
                Event::NetworkSampled { instance_id, bytes_in, bytes_out, window_start_unix_ms, window_end_unix_ms }
            }
            EventV1::TerminationRequested { reason } => Event::TerminationRequested { reason },
            EventV1::InstanceTerminated { instance_id } => Event::InstanceTerminated { instance_id },
            EventV1::KeyPairDeleted { key_name } => Event::KeyPairDeleted { key_name },
            EventV1::SecurityGroupDeleted { group_id } => Event::SecurityGroupDeleted { group_id },
            EventV1::GrantSettled { usage } => Event::GrantSettled { usage },
            EventV1::OrphanReaped { resource_kind, resource_id } => Event::OrphanReaped { resource_kind, resource_id },
            EventV1::LaunchAbsent { client_token } => Event::LaunchAbsent { client_token },
            EventV1::ProvisionFailed { retryable } => Event::ProvisionFailed { retryable },
            EventV1::GrantRetried {
                attempt,
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            } => Event::GrantRetried {
                attempt,
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            },
            EventV1::BillingCapped { at_unix_ms } => Event::BillingCapped { at_unix_ms },
            EventV1::NetworkMeasured {
                instance_id,
                bytes_in,
                bytes_out,
                window_start_unix_ms,
                window_end_unix_ms,
                complete,
            } => Event::NetworkMeasured {
                instance_id,
                bytes_in,
                bytes_out,
                window_start_unix_ms,
                window_end_unix_ms,
                complete,
            },
            EventV1::NetworkUnknown { instance_id, window_start_unix_ms, window_end_unix_ms } => {
                Event::NetworkUnknown { instance_id, window_start_unix_ms, window_end_unix_ms }
            }
        }
    }
}
