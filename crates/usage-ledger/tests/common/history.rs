//! A generator of valid histories: random grants' lives, every record applying.

#![allow(dead_code)]

use std::collections::BTreeMap;

use backend_api::{AlmanacTick, GrantId};
use proptest::prelude::*;
use usage_ledger::{Event, GrantState, ObservedState, Phase, Record, ResourceKind, TerminationReason, apply};

pub const T0: u64 = 1_700_000_000_000;

/// One step of a generated history: which grant, which of its possible next events, how far the
/// clock moves (sometimes backwards, as after a restart), and a number to draw values from.
#[derive(Clone, Debug)]
pub struct Step {
    pub grant: u8,
    pub choice: u8,
    pub dt_ms: i64,
    pub n: u64,
}

pub fn step() -> impl Strategy<Value = Step> {
    (0u8..4, any::<u8>(), prop_oneof![9 => 0i64..120_000, 1 => -60_000i64..0], any::<u64>())
        .prop_map(|(grant, choice, dt_ms, n)| Step { grant, choice, dt_ms, n })
}

pub fn grant_id(index: u8) -> GrantId {
    GrantId([index.wrapping_mul(37).wrapping_add(1); 32])
}

const STATES: [ObservedState; 6] = [
    ObservedState::Pending,
    ObservedState::Running,
    ObservedState::ShuttingDown,
    ObservedState::Terminated,
    ObservedState::Stopping,
    ObservedState::Stopped,
];
const REASONS: [TerminationReason; 4] =
    [TerminationReason::Deadline, TerminationReason::Exited, TerminationReason::Operator, TerminationReason::Rollback];

/// Every event that may follow `state` (a model of what a backend could write).
fn candidates(index: u8, state: Option<&GrantState>, now: u64, n: u64) -> Vec<Event> {
    let orphan = Event::OrphanReaped { resource_kind: ResourceKind::Instance, resource_id: format!("i-orphan-{n}") };
    let Some(state) = state else {
        let admitted = Event::GrantAdmitted {
            region: "us-east-1".into(),
            instance_type: "t3.small".into(),
            vcpus: 2,
            memory_mib: 2048,
            storage_bytes: (n % 64) << 30,
            valid_to: AlmanacTick(n % 1000),
            valid_to_unix_ms: now + 3_600_000,
            key_name: format!("k-{index}"),
            group_name: format!("g-{index}"),
        };
        return vec![admitted.clone(), admitted.clone(), admitted, orphan];
    };
    if state.is_settled() {
        return vec![orphan];
    }
    let mut out = Vec::new();
    let provisioning = matches!(state.phase(), Phase::Admitted | Phase::Provisioning);
    if provisioning && state.key_pair().is_none() {
        out.push(Event::KeyPairImported { key_name: state.key_name().into(), key_pair_id: format!("key-{index}") });
    }
    if provisioning && state.security_group().is_none() {
        out.push(Event::SecurityGroupCreated {
            group_id: format!("sg-{index}"),
            group_name: state.group_name().into(),
        });
    }
    if provisioning && state.ever_launched().is_empty() {
        out.push(Event::LaunchRequested {
            client_token: format!("tok-{}", n % 3),
            instance_type: "t3.small".into(),
            image_id: n.is_multiple_of(2).then(|| format!("ami-{n:08x}")),
        });
    }
    if let (Some(token), true) = (state.launch_requested(), state.ever_launched().is_empty()) {
        out.push(Event::InstanceLaunched {
            instance_id: format!("i-{index}"),
            client_token: token.into(),
            instance_type: "t3.medium".into(),
            vcpus: 1 + (n % 8) as u32,
            memory_mib: 512 * (1 + n % 16),
        });
    }
    if let Some(id) = state.instance() {
        for _ in 0..3 {
            let jitter = (n % 20_000) as i64 - 10_000;
            out.push(Event::InstanceStateObserved {
                instance_id: id.into(),
                state: STATES[(n / 7 % 6) as usize],
                observed_at_unix_ms: now.saturating_add_signed(jitter),
            });
        }
        out.push(Event::InstanceStateObserved {
            instance_id: id.into(),
            state: ObservedState::Running,
            observed_at_unix_ms: now,
        });
        out.push(Event::InstanceTerminated { instance_id: id.into() });
    }
    if let Some(id) = state.ever_launched().first() {
        out.push(Event::NetworkSampled {
            instance_id: id.clone(),
            bytes_in: n % 1_000_000,
            bytes_out: n % 77_777,
            window_start_unix_ms: now.saturating_sub(60_000),
            window_end_unix_ms: now,
        });
    }
    out.push(Event::TerminationRequested { reason: REASONS[(n % 4) as usize] });
    if state.key_pair().is_some() {
        out.push(Event::KeyPairDeleted { key_name: state.key_name().into() });
    }
    if let Some(id) = state.security_group() {
        out.push(Event::SecurityGroupDeleted { group_id: id.into() });
    }
    if state.held_resources().is_empty() {
        out.push(Event::GrantSettled { usage: state.usage() });
    }
    out
}

/// Turns steps into a valid history: every record applies.
pub fn history(steps: &[Step]) -> Vec<Record> {
    let mut grants: BTreeMap<GrantId, GrantState> = BTreeMap::new();
    let mut now = T0;
    let mut records = Vec::new();
    for step in steps {
        now = now.saturating_add_signed(step.dt_ms);
        let id = grant_id(step.grant);
        let state = grants.get(&id);
        let options = candidates(step.grant, state, now, step.n);
        let event = options[step.choice as usize % options.len()].clone();
        let record = Record { grant: id, seq: state.map_or(0, GrantState::next_seq), at_unix_ms: now, event };
        let next = apply(state, &record).unwrap_or_else(|e| panic!("generator produced an impossible event: {e}"));
        grants.insert(id, next);
        records.push(record);
    }
    records
}

pub fn histories(max_len: usize) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(step(), 1..max_len).prop_map(|steps| history(&steps))
}
