//! Snapshot: a process restarted on its ledger opens from the newest snapshot its store keeps
//! plus the records after it, and what it opens equals a full replay of the log: the same
//! grants in the same states, the same record count, the same records hash. The store notes each
//! opening that fell short (see `FrameStore::open_ledger`); this reports them.

use super::{Violation, names};
use crate::framestore::FrameStore;

/// What the openings since the last check found wrong.
pub fn check(store: &FrameStore) -> Vec<Violation> {
    store.take_findings().into_iter().map(|finding| Violation::safety(names::SNAPSHOT, finding)).collect()
}
