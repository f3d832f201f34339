//! The segments of a file ledger: where they are (the ledger file, `<ledger>.seg.<n>`, the
//! archive directory), their replay in order from a position, and the ledger's lock file. The
//! layout is described in `docs/metering.md` ("Snapshots and segments").

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::event::Record;
use crate::file::{HEADER_LEN, ScanOutcome, TornTail, corrupt, io_err, scan_from};
use crate::snapshot::{Position, parent_dir, sibling};
use crate::store::StoreError;

/// The file of segment `index` of the ledger at `ledger`: the ledger file itself for 0.
pub fn segment_path(ledger: &Path, index: u64) -> PathBuf {
    if index == 0 { ledger.to_path_buf() } else { sibling(ledger, &format!(".seg.{index:06}")) }
}

/// The directory archived segments move to.
pub fn archive_dir(ledger: &Path) -> PathBuf {
    sibling(ledger, ".archive")
}

/// Every segment of the ledger at `ledger`, in the ledger's directory or its archive (a live
/// copy wins), by index.
pub fn list_segments(ledger: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let Some(name) = ledger.file_name().and_then(|n| n.to_str()) else { return Ok(Vec::new()) };
    let prefix = format!("{name}.seg.");
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for dir in [parent_dir(ledger).to_path_buf(), archive_dir(ledger)] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::Io { op: "list segments in", path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list segments in", &dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else { continue };
            let index = if file_name == name {
                Some(0)
            } else {
                file_name.strip_prefix(&prefix).filter(|n| n.len() == 6).and_then(|n| n.parse::<u64>().ok())
            };
            if let Some(index) = index
                && !found.iter().any(|(i, _)| *i == index)
            {
                found.push((index, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads the `segments` of the ledger at `ledger` (as [`list_segments`] gives them) from
/// `start` to the end, without modifying anything, calling `visit` with each frame's position,
/// record and payload. Every segment from `start`'s on must be there; a sealed one must be whole
/// (a partial frame in it is corruption). Returns the records read and the last segment's scan
/// (`None` when the ledger has no segment yet).
pub(crate) fn replay_segments<E: From<StoreError>>(
    ledger: &Path,
    segments: &[(u64, PathBuf)],
    start: Position,
    mut visit: impl FnMut(Position, Record, &[u8]) -> Result<(), E>,
) -> Result<(u64, Option<ScanOutcome>), E> {
    let last = segments.last().map_or(0, |(i, _)| *i);
    if start.segment > last || (segments.is_empty() && start.offset > HEADER_LEN) {
        return Err(StoreError::Corrupt {
            path: segment_path(ledger, start.segment),
            offset: start.offset,
            reason: format!("the replay should start in segment {}, the last is {last}", start.segment),
        }
        .into());
    }
    let mut records = 0;
    let mut outcome = None;
    for index in start.segment..=last {
        let Some((_, path)) = segments.iter().find(|(i, _)| *i == index) else {
            if segments.is_empty() {
                break;
            }
            return Err(missing(ledger, index).into());
        };
        let from = if index == start.segment { start.offset } else { HEADER_LEN };
        let scanned = scan_from(path, from, |offset, record: Record, payload: &[u8]| {
            visit(Position { segment: index, offset }, record, payload)
        })?;
        records += scanned.records;
        if index < last
            && let Some(torn) = scanned.torn_tail
        {
            return Err(corrupt(path, torn.offset, sealed_torn(torn)).into());
        }
        outcome = Some(scanned);
    }
    Ok((records, outcome))
}

/// The 8-byte frame header at `at` in the ledger's segments (the directory's or the archive's),
/// or `None` when that segment is missing.
pub(crate) fn read_anchor(ledger: &Path, at: Position) -> Result<Option<[u8; 8]>, StoreError> {
    let Some((_, path)) = list_segments(ledger)?.into_iter().find(|(i, _)| *i == at.segment) else {
        return Ok(None);
    };
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let mut header = [0u8; 8];
    match file.read_exact_at(&mut header, at.offset) {
        Ok(()) => Ok(Some(header)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(source) => Err(StoreError::Io { op: "read", path, source }),
    }
}

pub(crate) fn missing(ledger: &Path, index: u64) -> StoreError {
    StoreError::Corrupt {
        path: segment_path(ledger, index),
        offset: 0,
        reason: format!(
            "segment {index} is missing (not in the directory nor in {}): restore it, or the snapshot covering it",
            archive_dir(ledger).display()
        ),
    }
}

fn sealed_torn(torn: TornTail) -> String {
    format!(
        "a sealed segment holds {} bytes that are not whole frames here (only the last segment may end in a torn write)",
        torn.bytes
    )
}

/// Takes the ledger's lock file, `<ledger>.lock`.
pub(crate) fn lock_ledger(ledger: &Path) -> Result<File, StoreError> {
    let path = sibling(ledger, ".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open", &path))?;
    file.try_lock().map_err(|e| StoreError::Io {
        op: "lock (is another process using the ledger?)",
        path: path.clone(),
        source: match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => std::io::Error::from(ErrorKind::WouldBlock),
        },
    })?;
    Ok(file)
}
