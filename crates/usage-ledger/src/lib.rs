//! Event-sourced, crash-safe metering for compute grants.
//!
//! Every change in a grant's life is an [`Event`] stored in a [`Record`]; a grant's state and
//! its [`UsageMetrics`](backend_api::UsageMetrics) are a pure [`fold`] over its records. The
//! [`Ledger`] keeps that fold up to date over an [`EventStore`] (a [`SharedLedger`] for concurrent
//! tasks, with group commit): a [`MemoryStore`] for
//! simulation and tests, or the durable [`FileStore`]. The metering rules and the file format
//! are written down in `docs/metering.md`.
//!
//! This crate does no network IO and knows nothing of AWS.

mod decode;
mod event;
pub mod file;
mod file_store;
pub mod inspect;
mod lease;
mod ledger;
pub mod report;
mod segments;
mod shared;
pub mod snapshot;
mod snapshot_job;
mod state;
mod store;
mod v1;

pub use event::{BILLING_RULES_VERSION, Event, ObservedState, Record, ResourceKind, TerminationReason};
pub use file::{ScanOutcome, TornTail, decode_frame, encode_frame, scan_file, scan_from};
pub use file_store::{FileOptions, FileStore, OpenReport, ReplayReport, SnapshotPolicy};
pub use lease::{LEASE_NAME_CHARS_MAX, Lease, LeaseError, LeaseInfo, check_lease_name};
pub use ledger::{Books, FileOpenReport, Ledger, LedgerError};
pub use segments::{archive_dir, list_segments, segment_path};
pub use shared::SharedLedger;
pub use snapshot::{Position, SNAPSHOT_VERSION, Snapshot, SnapshotData};
pub use state::{
    ApplyError, GrantState, Impossible, MIN_BILLED_SECONDS, NetworkFigure, NetworkStatus, PendingNetwork, Phase, apply,
    billed_seconds, fold,
};
pub use store::{EventStore, MemoryStore, StoreError};

/// The version of the file format this build writes (and the newest it reads).
pub const FORMAT_VERSION: u16 = 1;

#[cfg(test)]
mod apply_tests;
