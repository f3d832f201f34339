//! Read-only views of a file ledger for the operator's tools (`usage-ledger`): the books as of
//! now, from the newest whole snapshot and the records after it, and a full verification of
//! every segment and every snapshot. Nothing here takes the lock or modifies a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backend_api::GrantId;
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

use crate::event::Record;
use crate::file::{HEADER_LEN, TornTail, scan_from};
use crate::ledger::LedgerError;
use crate::segments::{list_segments, read_anchor, replay_segments, segment_path};
use crate::snapshot::{Position, Snapshot, list_snapshots, read_snapshot};
use crate::state::{ApplyError, GrantState};
use crate::store::StoreError;

/// A ledger's books as the tools see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerView {
    /// Every grant's state.
    pub grants: BTreeMap<GrantId, GrantState>,
    /// Records covered (by the snapshot and after it).
    pub records: u64,
    /// A partial last frame of the last segment (which opening the ledger would truncate).
    pub torn_tail: Option<TornTail>,
    /// The snapshot the view started from, if any.
    pub snapshot: Option<PathBuf>,
    /// Newer snapshots skipped, and why.
    pub skipped_snapshots: Vec<(PathBuf, String)>,
}

fn step(grants: &mut BTreeMap<GrantId, GrantState>, record: &Record) -> Result<(), ApplyError> {
    match grants.get_mut(&record.grant) {
        Some(state) => state.step(record),
        None => {
            grants.insert(record.grant, GrantState::first(record)?);
            Ok(())
        }
    }
}

/// An impossible event, named by where it is.
fn impossible_at(ledger: &Path, at: Position, err: &ApplyError) -> StoreError {
    StoreError::Corrupt {
        path: segment_path(ledger, at.segment),
        offset: at.offset,
        reason: format!("impossible event in the frame at byte offset {}: {err}", at.offset),
    }
}

/// Replays from `start` onto `grants`; an impossible event is [`StoreError::Corrupt`] naming
/// its frame.
fn replay_onto(
    ledger: &Path,
    segments: &[(u64, PathBuf)],
    start: Position,
    grants: &mut BTreeMap<GrantId, GrantState>,
) -> Result<(u64, Option<TornTail>), StoreError> {
    let (records, outcome) = replay_segments(ledger, segments, start, |at, record, _| {
        step(grants, &record).map_err(|e| impossible_at(ledger, at, &e))
    })?;
    Ok((records, outcome.and_then(|o| o.torn_tail)))
}

/// The books of the ledger at `path`: the newest snapshot that reads back whole (and whose
/// replay succeeds) plus the records after it, else a full replay.
pub fn read_ledger(path: &Path) -> Result<LedgerView, LedgerError> {
    let segments = list_segments(path)?;
    let snapshots = list_snapshots(path)?;
    if segments.is_empty() && snapshots.is_empty() {
        return Err(StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into());
    }
    let mut skipped_snapshots = Vec::new();
    for (_, snapshot_path) in snapshots {
        let Snapshot { position, anchor, records, grants, .. } = match read_snapshot(&snapshot_path) {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                skipped_snapshots.push((snapshot_path, reason));
                continue;
            }
        };
        let anchored = match anchor {
            Some(anchor) => read_anchor(path, anchor.at)?.is_some_and(|header| header == anchor.header),
            None => records == 0,
        };
        if !anchored {
            skipped_snapshots.push((snapshot_path, "its last frame does not match the log's".into()));
            continue;
        }
        let mut grants = grants;
        match replay_onto(path, &segments, position, &mut grants) {
            Ok((tail, torn_tail)) => {
                return Ok(LedgerView {
                    grants,
                    records: records + tail,
                    torn_tail,
                    snapshot: Some(snapshot_path),
                    skipped_snapshots,
                });
            }
            Err(err) => skipped_snapshots.push((snapshot_path, format!("the replay after it failed: {err}"))),
        }
    }
    let mut grants = BTreeMap::new();
    let start = Position { segment: 0, offset: HEADER_LEN };
    let (records, torn_tail) = replay_onto(path, &segments, start, &mut grants)?;
    Ok(LedgerView { grants, records, torn_tail, snapshot: None, skipped_snapshots })
}

/// What [`verify_ledger`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the whole log.
    pub records: u64,
    /// Grants, and the live ones among them.
    pub grants: u64,
    /// Grants not settled.
    pub live: u64,
    /// Segments read, with the end of each one's last intact frame.
    pub segments: Vec<(PathBuf, u64)>,
    /// Snapshots that read back whole and match the log at their position.
    pub good_snapshots: Vec<PathBuf>,
    /// Everything wrong: damaged or missing segments, a torn tail, impossible events, damaged
    /// snapshots or snapshots that disagree with the log. Empty when the ledger is intact.
    pub problems: Vec<String>,
}

/// Verifies the ledger at `path` without using its snapshots: every frame of every segment
/// (in the directory and the archive) is read and folded, then every snapshot is read back and
/// compared, at its position, with the fold of the log (grants, record count and hash state).
/// A damaged snapshot is a problem, and the log is verified without it.
pub fn verify_ledger(path: &Path) -> Result<VerifyReport, LedgerError> {
    let segments = list_segments(path)?;
    if segments.is_empty() {
        return Err(StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into());
    }
    let mut report = VerifyReport::default();
    let mut snapshots: Vec<(PathBuf, Snapshot)> = Vec::new();
    for (_, snapshot_path) in list_snapshots(path)? {
        match read_snapshot(&snapshot_path) {
            Ok(snapshot) => snapshots.push((snapshot_path, snapshot)),
            Err(reason) => report.problems.push(format!("{}: damaged snapshot: {reason}", snapshot_path.display())),
        }
    }
    snapshots.sort_by_key(|(_, s)| s.position);
    let mut pending = snapshots.into_iter().peekable();
    let mut grants = BTreeMap::new();
    let mut hasher = Sha256::new();
    let mut records = 0u64;
    let mut failed = false;
    'segments: for (index, (number, segment)) in segments.iter().enumerate() {
        if *number != index as u64 {
            report.problems.push(format!("{}: segment {index} is missing", path.display()));
            failed = true;
            break;
        }
        let last = index + 1 == segments.len();
        let mut check = |at: Position, grants: &BTreeMap<GrantId, GrantState>, hasher: &Sha256, records: u64| {
            while let Some((snapshot_path, snapshot)) = pending.next_if(|(_, s)| s.position <= at) {
                let anchored = match snapshot.anchor {
                    Some(anchor) => read_anchor(path, anchor.at).ok().flatten() == Some(anchor.header),
                    None => records == 0,
                };
                let matches = snapshot.position == at
                    && anchored
                    && snapshot.records == records
                    && snapshot.hash_state == hasher.serialize().to_vec()
                    && snapshot.grants == *grants;
                if matches {
                    report.good_snapshots.push(snapshot_path);
                } else {
                    report.problems.push(format!(
                        "{}: snapshot disagrees with the log at segment {} byte offset {}",
                        snapshot_path.display(),
                        snapshot.position.segment,
                        snapshot.position.offset
                    ));
                }
            }
        };
        let scanned = scan_from(segment, HEADER_LEN, |offset, record: Record, payload: &[u8]| {
            let at = Position { segment: *number, offset };
            check(at, &grants, &hasher, records);
            step(&mut grants, &record).map_err(|e| LedgerError::Store(impossible_at(path, at, &e)))?;
            hasher.update(payload);
            records += 1;
            Ok::<(), LedgerError>(())
        });
        match scanned {
            Ok(outcome) => {
                check(Position { segment: *number, offset: outcome.end_offset }, &grants, &hasher, records);
                report.segments.push((segment.clone(), outcome.end_offset));
                if let Some(torn) = outcome.torn_tail {
                    report.problems.push(if last {
                        format!(
                            "{}: torn tail at byte offset {}: {} bytes of a partial last frame (opening the ledger truncates it)",
                            segment.display(),
                            torn.offset,
                            torn.bytes
                        )
                    } else {
                        format!(
                            "{}: corrupt frame in a sealed segment at byte offset {}: {} bytes that are not whole frames (only the last segment may end in a torn write)",
                            segment.display(),
                            torn.offset,
                            torn.bytes
                        )
                    });
                    if !last {
                        failed = true;
                        break 'segments;
                    }
                }
            }
            Err(err) => {
                report.problems.push(err.to_string());
                failed = true;
                break;
            }
        }
    }
    if !failed {
        for (snapshot_path, snapshot) in pending {
            report.problems.push(format!(
                "{}: snapshot covers segment {} byte offset {}, past the end of the log",
                snapshot_path.display(),
                snapshot.position.segment,
                snapshot.position.offset
            ));
        }
    }
    report.records = records;
    report.grants = grants.len() as u64;
    report.live = grants.values().filter(|g| !g.is_settled()).count() as u64;
    Ok(report)
}

/// Every record of the ledger at `path`, in order over all its segments (the archive's
/// included), read without the lock and without modifying anything. Returns the count and the
/// last segment's torn tail, if any.
pub fn scan_ledger<E: From<StoreError>>(
    path: &Path,
    visit: impl FnMut(Position, Record, &[u8]) -> Result<(), E>,
) -> Result<(u64, Option<TornTail>), E> {
    let segments = list_segments(path)?;
    if segments.is_empty() {
        return Err(StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into());
    }
    let (records, outcome) = replay_segments(path, &segments, Position { segment: 0, offset: HEADER_LEN }, visit)?;
    Ok((records, outcome.and_then(|o| o.torn_tail)))
}
