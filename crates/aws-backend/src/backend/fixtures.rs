//! Test fixtures for the backend's phases: a grant's state after a given history.

use backend_api::{AlmanacTick, GrantId};
use usage_ledger::{Event, GrantState, Record, apply};

/// The state of `grant` after `events`, one a second from `first_unix_ms` on.
pub(crate) fn state_after(grant: GrantId, first_unix_ms: u64, events: Vec<Event>) -> GrantState {
    let mut state: Option<GrantState> = None;
    for (seq, event) in events.into_iter().enumerate() {
        let record = Record { grant, seq: seq as u64, at_unix_ms: first_unix_ms + seq as u64 * 1_000, event };
        state = Some(apply(state.as_ref(), &record).expect("a possible transition"));
    }
    state.expect("at least one event")
}

/// A grant admitted in eu-west-1 as an m7i.large with 8 GiB of storage, due at
/// `valid_to_unix_ms`.
pub(crate) fn admitted(valid_to_unix_ms: u64) -> Event {
    Event::GrantAdmitted {
        region: "eu-west-1".into(),
        instance_type: "m7i.large".into(),
        vcpus: 2,
        memory_mib: 8_192,
        storage_bytes: 8 << 30,
        valid_to: AlmanacTick(1),
        valid_to_unix_ms,
        key_name: "k".into(),
        group_name: "g".into(),
    }
}
