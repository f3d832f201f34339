//! Snapshots the file store takes in the background, from its own durable records.
//!
//! When a snapshot is due, the store notes where its acknowledged records end (the position and
//! the last frame's anchor) and hands that to a thread of its own, which folds the log up to
//! there: from the newest snapshot before it (or from the start) through the frames after it,
//! exactly as opening the ledger would. It then writes the snapshot
//! ([`write_snapshot`](crate::snapshot::write_snapshot)) and archives the segments it covers.
//! Appends go on meanwhile: the thread reads only sealed segments and the active segment's
//! bytes before the noted position, which are never written again, and it never touches the
//! live books, so nothing waits for it (not the appender, not a query). It costs the fold of
//! the records since the last snapshot, on the other core, and a second copy of the books while
//! it runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::event::Record;
use crate::file::{FRAME_HEADER_LEN, HEADER_LEN, decode_frame};
use crate::file_store::archive_before;
use crate::ledger::Books;
use crate::segments::{list_segments, read_anchor};
use crate::snapshot::{Anchor, Position, SnapshotData, list_snapshots, read_snapshot, write_snapshot};
use crate::store::StoreError;

/// A background snapshot, running or done, and the last error of one.
#[derive(Debug, Default)]
pub(crate) struct SnapshotJob {
    running: Mutex<Option<JoinHandle<()>>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl SnapshotJob {
    /// True while a snapshot is being taken.
    pub(crate) fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Starts taking a snapshot at `end` (the last covered frame at `anchor`) of the ledger at
    /// `ledger`, archiving the segments it covers when `archive`.
    pub(crate) fn start(&self, ledger: &Path, end: Position, anchor: Option<Anchor>, archive: bool) {
        self.wait();
        let (ledger, last_error) = (ledger.to_path_buf(), self.last_error.clone());
        let spawned = std::thread::Builder::new().name("ledger-snapshot".into()).spawn(move || {
            let result = refold(&ledger, end, anchor)
                .and_then(|_| if archive { archive_before(&ledger, end.segment) } else { Ok(()) });
            *last_error.lock().unwrap_or_else(PoisonError::into_inner) = result.err().map(|e| e.to_string());
        });
        match spawned {
            Ok(handle) => *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle),
            Err(e) => self.set_error(format!("cannot start the snapshot thread: {e}")),
        }
    }

    /// Waits for the snapshot being taken, if any.
    pub(crate) fn wait(&self) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = running
            && handle.join().is_err()
        {
            self.set_error("the snapshot thread panicked".to_string());
        }
    }

    /// Why the last snapshot failed, if it did.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub(crate) fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Folds the ledger at `ledger` up to `end` (from the newest usable snapshot before it) and
/// writes the snapshot there. Returns its path.
pub(crate) fn refold(ledger: &Path, end: Position, anchor: Option<Anchor>) -> Result<PathBuf, StoreError> {
    let (mut books, start) = base(ledger, end)?;
    let segments = list_segments(ledger)?;
    let mut last_frame = None;
    for index in start.segment..=end.segment {
        let Some((_, path)) = segments.iter().find(|(i, _)| *i == index) else {
            return Err(corrupt(ledger, index, 0, "the segment is missing".into()));
        };
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io { op: "read", path: path.clone(), source })?;
        let from = if index == start.segment { start.offset } else { HEADER_LEN };
        let to = if index == end.segment { end.offset } else { bytes.len() as u64 };
        let Some(frames) = bytes.get(from as usize..to as usize) else {
            return Err(corrupt(ledger, index, to, format!("the segment is {} bytes, shorter than that", bytes.len())));
        };
        let mut at = 0usize;
        while at < frames.len() {
            let offset = from + at as u64;
            let (record, len): (Record, usize) = match decode_frame(&frames[at..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(corrupt(ledger, index, offset, "a partial frame".into())),
                Err(reason) => return Err(corrupt(ledger, index, offset, reason)),
            };
            let payload = &frames[at + FRAME_HEADER_LEN as usize..at + len];
            books.replay(&record, payload).map_err(|e| corrupt(ledger, index, offset, e.to_string()))?;
            last_frame = Some(Position { segment: index, offset });
            at += len;
        }
    }
    if last_frame != anchor.map(|a| a.at) && last_frame.is_some() {
        return Err(corrupt(
            ledger,
            end.segment,
            end.offset,
            "the last frame folded is not the snapshot's anchor".into(),
        ));
    }
    let hash_state = books.hash_state();
    let grants = books.durable_grants();
    let data = SnapshotData { records: books.record_count(), hash_state: &hash_state, grants: &grants };
    write_snapshot(ledger, end, anchor, &data)
}

/// The books of the newest snapshot at or before `end` that reads back whole and matches the
/// log, and its position; or empty books at the start.
fn base(ledger: &Path, end: Position) -> Result<(Books, Position), StoreError> {
    for (_, path) in list_snapshots(ledger)? {
        let Ok(snapshot) = read_snapshot(&path) else { continue };
        if snapshot.position > end {
            continue;
        }
        let anchored = match snapshot.anchor {
            Some(anchor) => read_anchor(ledger, anchor.at)?.is_some_and(|header| header == anchor.header),
            None => snapshot.records == 0,
        };
        let position = snapshot.position;
        if anchored && let Ok(books) = Books::from_snapshot(snapshot) {
            return Ok((books, position));
        }
    }
    Ok((Books::default(), Position { segment: 0, offset: HEADER_LEN }))
}

fn corrupt(ledger: &Path, segment: u64, offset: u64, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: crate::segments::segment_path(ledger, segment),
        offset,
        reason: format!("while taking a snapshot: {reason}"),
    }
}
