//! The durable file store: the ledger's frames in segments (the ledger file, then
//! `<ledger>.seg.<n>` as each fills up), appended and `fdatasync`ed one write at a time, with
//! snapshots of the books beside them.
//!
//! The frame format and the open rules of one segment are in [`crate::file`]; the layout of the
//! segments, the snapshots and the archive is described in `docs/metering.md` ("Snapshots and
//! segments"). Only the last segment is appended to: its torn tail is truncated on open as a
//! single-file ledger's always was; an earlier (sealed) segment must be whole, and damage in it
//! is corruption.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::event::Record;
use crate::file::{
    FRAME_HEADER_LEN, HEADER_LEN, MAX_WRITE_BYTES, PREALLOCATE_BYTES, PREALLOCATE_MIN_BYTES, ScanOutcome, TornTail,
    ZEROS, encode_frame, header_bytes, io_err,
};
use crate::segments::{archive_dir, list_segments, missing, replay_segments, segment_path};
pub(crate) use crate::segments::{lock_ledger, read_anchor};
use crate::snapshot::{Anchor, Position, SnapshotData, parent_dir, write_snapshot};
use crate::snapshot_job::SnapshotJob;
use crate::store::{EventStore, StoreError};

/// When the ledger's owner wants snapshots: after `every_records` appended records, or once the
/// records' own clock (their `at_unix_ms`, never the wall clock) has moved `every_ms` past the
/// last snapshot with at least one record since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Records between snapshots.
    pub every_records: u64,
    /// Milliseconds of record time between snapshots.
    pub every_ms: u64,
}

impl Default for SnapshotPolicy {
    /// Every 100,000 records or 10 minutes.
    fn default() -> Self {
        Self { every_records: 100_000, every_ms: 10 * 60 * 1000 }
    }
}

/// How a file store lays out and maintains its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// The active segment is sealed, and a new one started, before an append once it holds at
    /// least this many bytes.
    pub segment_bytes_max: u64,
    /// When to snapshot; `None`: never (opening still uses the snapshots there are).
    pub snapshots: Option<SnapshotPolicy>,
    /// Move sealed segments wholly covered by the newest snapshot to the archive directory
    /// (`<ledger>.archive/`) after each snapshot. Opening reads archived segments when it must
    /// replay them (a snapshot was lost or damaged).
    pub archive_covered_segments: bool,
}

impl Default for FileOptions {
    /// 64 MiB segments, snapshots with the default policy, no archiving.
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            snapshots: Some(SnapshotPolicy::default()),
            archive_covered_segments: false,
        }
    }
}

/// What opening a file store replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Every intact record, in file order.
    pub records: Vec<Record>,
    /// The partial last frame that was truncated, if any.
    pub torn_tail: Option<TornTail>,
}

/// What a streaming open replayed (see [`FileStore::open_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// Intact records replayed.
    pub records: u64,
    /// The partial last frame that was truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// Where the replay started: a snapshot's position, or the first frame of segment 0.
    pub start: Position,
    /// Segments read (from the start's on).
    pub segments: u64,
}

/// The durable store: append-only, preallocated segment files, `fdatasync`ed before an append
/// returns, with snapshots beside them (see the module documentation).
///
/// The ledger is locked exclusively (`<ledger>.lock`) while open, so two processes never append
/// to it at once. After a failed write or sync the store refuses further appends until it heals
/// (see [`EventStore::heal`]), which cuts off whatever was never acknowledged.
#[derive(Debug)]
pub struct FileStore {
    /// The ledger's name: segment 0's path, the stem of every other file.
    ledger: PathBuf,
    options: FileOptions,
    _lock: File,
    /// The active segment's index, path and file.
    segment: u64,
    path: PathBuf,
    file: File,
    buffer: Vec<u8>,
    poisoned: bool,
    /// The end of the last acknowledged frame: where the next append writes. Everything past it
    /// is unknown after a failed write, and is cut off when the store heals.
    acked_len: u64,
    /// The file's length: zeros from `acked_len` up to it, written and synced.
    allocated_len: u64,
    /// Records acknowledged since the last snapshot (or replayed after the one opened from).
    since_snapshot: u64,
    /// The newest record time seen, and its value at the last snapshot (before the first
    /// snapshot: the first record's time).
    clock_unix_ms: u64,
    snapshot_clock_unix_ms: Option<u64>,
    /// The snapshot being taken in the background, and the last one's error.
    job: SnapshotJob,
    /// Where the last acknowledged frame starts, once known: a snapshot keeps its 8-byte frame
    /// header as an anchor, checked against the log before the snapshot is used.
    last_frame: Option<Position>,
}

impl FileStore {
    /// Opens (creating if missing) the ledger at `path` with the default options, replaying and
    /// returning every record.
    pub fn open(path: impl AsRef<Path>) -> Result<(FileStore, OpenReport), StoreError> {
        let mut records = Vec::new();
        let (store, report) = Self::open_with(path, |_, record, _| {
            records.push(record);
            Ok::<(), StoreError>(())
        })?;
        Ok((store, OpenReport { records, torn_tail: report.torn_tail }))
    }

    /// Opens (creating if missing) the ledger at `path` with the default options, handing each
    /// replayed record to `visit` with its byte offset and payload instead of collecting them,
    /// so that replay memory does not grow with the log.
    pub fn open_with<E: From<StoreError>>(
        path: impl AsRef<Path>,
        visit: impl FnMut(u64, Record, &[u8]) -> Result<(), E>,
    ) -> Result<(FileStore, ReplayReport), E> {
        Self::open_from(path, FileOptions::default(), None, visit)
    }

    /// Opens (creating if missing) the ledger at `path`, replaying from `start` (a snapshot's
    /// position; `None`: from the first record) to the end of the last segment. The segments
    /// from `start`'s on must all be there (in the directory or the archive); a sealed one must
    /// be whole. The last segment's torn tail, if any, is truncated only once every segment
    /// replayed; on an error nothing was modified and the lock is released.
    pub fn open_from<E: From<StoreError>>(
        path: impl AsRef<Path>,
        options: FileOptions,
        start: Option<Position>,
        visit: impl FnMut(u64, Record, &[u8]) -> Result<(), E>,
    ) -> Result<(FileStore, ReplayReport), E> {
        let lock = lock_ledger(path.as_ref())?;
        Self::open_locked(path, options, lock, start, visit)
    }

    /// [`FileStore::open_from`] under a lock already taken with [`lock_ledger`].
    pub(crate) fn open_locked<E: From<StoreError>>(
        path: impl AsRef<Path>,
        options: FileOptions,
        lock: File,
        start: Option<Position>,
        mut visit: impl FnMut(u64, Record, &[u8]) -> Result<(), E>,
    ) -> Result<(FileStore, ReplayReport), E> {
        let ledger = path.as_ref().to_path_buf();
        let segments = list_segments(&ledger)?;
        let start = start.unwrap_or(Position { segment: 0, offset: HEADER_LEN });
        let last = segments.last().map_or(0, |(i, _)| *i);
        let mut clock_unix_ms = 0;
        let mut first_unix_ms = None;
        let mut last_frame = None;
        let (records, outcome) = replay_segments(&ledger, &segments, start, |at, record, payload| {
            clock_unix_ms = clock_unix_ms.max(record.at_unix_ms);
            first_unix_ms.get_or_insert(record.at_unix_ms);
            last_frame = Some(at);
            visit(at.offset, record, payload)
        })?;
        let active = segment_path(&ledger, last);
        let active = segments.iter().find(|(i, _)| *i == last).map_or(active, |(_, p)| p.clone());
        let mut store = Self::open_active(ledger, options, lock, last, &active, outcome)?;
        store.since_snapshot = records;
        store.clock_unix_ms = clock_unix_ms;
        store.snapshot_clock_unix_ms = first_unix_ms;
        store.last_frame = last_frame;
        let segments_read = last - start.segment + 1;
        let torn_tail = outcome.and_then(|o| o.torn_tail);
        Ok((store, ReplayReport { records, torn_tail, start, segments: segments_read }))
    }

    /// Opens the active segment for appends after its replay (`outcome`; `None` when it does not
    /// exist yet): creates it, or truncates its torn tail.
    fn open_active(
        ledger: PathBuf,
        options: FileOptions,
        lock: File,
        segment: u64,
        path: &Path,
        outcome: Option<ScanOutcome>,
    ) -> Result<Self, StoreError> {
        if path.starts_with(archive_dir(&ledger)) {
            return Err(StoreError::Io {
                op: "append to (the active segment is in the archive: move it back)",
                path: path.to_path_buf(),
                source: std::io::Error::from(ErrorKind::InvalidInput),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err("open", path))?;
        let mut end = HEADER_LEN;
        match outcome {
            None => write_header(path, &file)?,
            Some(outcome) => {
                end = outcome.end_offset;
                if let Some(torn) = outcome.torn_tail {
                    file.set_len(torn.offset).map_err(io_err("truncate torn tail of", path))?;
                    file.sync_all().map_err(io_err("fsync", path))?;
                    if torn.offset == 0 {
                        write_header(path, &file)?;
                        end = HEADER_LEN;
                    }
                }
                if end == 0 {
                    // An empty file: a new ledger.
                    write_header(path, &file)?;
                    end = HEADER_LEN;
                }
            }
        }
        let allocated_len = file.metadata().map_or(end, |m| m.len()).max(end);
        Ok(Self {
            ledger,
            options,
            _lock: lock,
            segment,
            path: path.to_path_buf(),
            file,
            buffer: Vec::with_capacity(64 * 1024),
            poisoned: false,
            acked_len: end,
            allocated_len,
            since_snapshot: 0,
            clock_unix_ms: 0,
            snapshot_clock_unix_ms: None,
            job: SnapshotJob::default(),
            last_frame: None,
        })
    }

    /// Fills the file with zeros past `needed` (by the file's length, within 64 KiB and
    /// `PREALLOCATE_BYTES`), and syncs it with its new length, so that the appends to come
    /// overwrite allocated, initialised blocks.
    fn preallocate(&mut self, needed: u64) -> std::io::Result<()> {
        let target = needed.saturating_add(needed.clamp(PREALLOCATE_MIN_BYTES, PREALLOCATE_BYTES));
        let mut at = self.allocated_len;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        self.file.sync_all()?;
        self.allocated_len = target;
        Ok(())
    }

    /// Writes the encoded frames in `self.buffer` after the acknowledged ones, syncing after
    /// each write of at most `MAX_WRITE_BYTES` (cut at frame boundaries).
    fn write_frames(&mut self) -> std::io::Result<()> {
        let end = self.acked_len + self.buffer.len() as u64;
        if end > self.allocated_len {
            self.preallocate(end)?;
        }
        let mut start = 0;
        let mut at = self.acked_len;
        while start < self.buffer.len() {
            let mut cut = start;
            while cut < self.buffer.len() {
                let word = u32::from_le_bytes([
                    self.buffer[cut],
                    self.buffer[cut + 1],
                    self.buffer[cut + 2],
                    self.buffer[cut + 3],
                ]);
                let frame = FRAME_HEADER_LEN as usize + (word & 0x00ff_ffff) as usize;
                if cut > start && cut + frame - start > MAX_WRITE_BYTES {
                    break;
                }
                cut += frame;
            }
            self.file.write_all_at(&self.buffer[start..cut], at)?;
            self.file.sync_data()?;
            at += (cut - start) as u64;
            start = cut;
        }
        Ok(())
    }

    /// Seals the active segment (its preallocated zeros cut off) and starts the next one. On an
    /// error the active segment is unchanged, and nothing acknowledged is touched.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.file.set_len(self.acked_len).map_err(io_err("seal (truncate)", &self.path))?;
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        self.allocated_len = self.acked_len;
        let next = self.segment + 1;
        let path = segment_path(&self.ledger, next);
        // A file left by an earlier rotation that failed half way holds no acknowledged record.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        write_header(&path, &file)?;
        self.file = file;
        self.path = path;
        self.segment = next;
        self.acked_len = HEADER_LEN;
        self.allocated_len = HEADER_LEN;
        Ok(())
    }

    /// The active segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ledger's path (segment 0, and the stem of the other files).
    pub fn ledger_path(&self) -> &Path {
        &self.ledger
    }

    /// Where the acknowledged records end.
    pub fn position(&self) -> Position {
        Position { segment: self.segment, offset: self.acked_len }
    }

    /// Restarts the snapshot policy's clock at the newest record replayed: called after an open
    /// from a snapshot, whose tail is then the only thing not covered.
    pub(crate) fn restart_snapshot_clock(&mut self, anchor: Option<Position>) {
        self.last_frame = self.last_frame.or(anchor);
        self.snapshot_clock_unix_ms = Some(self.clock_unix_ms);
    }

    /// Waits until the snapshot being taken in the background, if any, is written.
    pub fn wait_for_snapshot(&self) {
        self.job.wait();
    }

    /// Why the last snapshot failed, if it did (cleared by the next one that succeeds). Appends
    /// go on without snapshots; the next is tried after another policy period.
    pub fn last_snapshot_error(&self) -> Option<String> {
        self.job.last_error()
    }
}

impl FileStore {
    /// The last acknowledged frame's position and 8-byte frame header, read back from its
    /// segment (`None` before the first frame).
    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        let Some(at) = self.last_frame else { return Ok(None) };
        read_anchor(&self.ledger, at)?
            .map(|header| Some(Anchor { at, header }))
            .ok_or_else(|| missing(&self.ledger, at.segment))
    }
}

/// Moves the sealed segments of the ledger at `ledger` before `segment` out of its directory into
/// the archive.
pub(crate) fn archive_before(ledger: &Path, segment: u64) -> Result<(), StoreError> {
    let archive = archive_dir(ledger);
    let live = parent_dir(ledger);
    for (index, path) in list_segments(ledger)? {
        if index >= segment || path.starts_with(&archive) {
            continue;
        }
        std::fs::create_dir_all(&archive).map_err(io_err("create archive", &archive))?;
        let Some(name) = path.file_name() else { continue };
        let to = archive.join(name);
        std::fs::rename(&path, &to).map_err(io_err("archive segment", &path))?;
        File::open(&archive).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", &archive))?;
        File::open(live).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", live))?;
    }
    Ok(())
}

fn write_header(path: &Path, file: &File) -> Result<(), StoreError> {
    file.write_all_at(&header_bytes(), 0).map_err(io_err("write header to", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    // The new file's directory entry must be durable too.
    let dir = parent_dir(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory of", path))?;
    Ok(())
}

impl EventStore for FileStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if self.poisoned {
            self.heal()?;
        }
        if records.is_empty() {
            return Ok(());
        }
        if self.acked_len >= self.options.segment_bytes_max.max(HEADER_LEN + 1) {
            self.rotate()?;
        }
        self.buffer.clear();
        let mut last_start = 0;
        for record in records {
            last_start = self.buffer.len() as u64;
            encode_frame(record, &mut self.buffer)?;
        }
        let result = self.write_frames();
        let written = self.buffer.len() as u64;
        if self.buffer.capacity() > 1 << 20 {
            self.buffer = Vec::with_capacity(64 * 1024);
        }
        match result {
            Ok(()) => {
                self.last_frame = Some(Position { segment: self.segment, offset: self.acked_len + last_start });
                self.acked_len += written;
                self.since_snapshot += records.len() as u64;
                let newest = records.iter().map(|r| r.at_unix_ms).max().unwrap_or(0);
                self.clock_unix_ms = self.clock_unix_ms.max(newest);
                self.snapshot_clock_unix_ms.get_or_insert(records[0].at_unix_ms);
                Ok(())
            }
            Err(source) => {
                self.poisoned = true;
                Err(StoreError::Io { op: "append to", path: self.path.clone(), source })
            }
        }
    }

    /// After a failed write or sync: cuts the file back to the last acknowledged append (what
    /// followed was never acknowledged, so no acknowledged record is lost and none is doubled),
    /// syncs, and takes appends again (the next one preallocates afresh). Fails, leaving the
    /// store poisoned, while the disk does.
    fn heal(&mut self) -> Result<(), StoreError> {
        if !self.poisoned {
            return Ok(());
        }
        let path = self.path.clone();
        self.file.set_len(self.acked_len).map_err(io_err("truncate the unacknowledged tail of", &path))?;
        self.file.sync_all().map_err(io_err("fsync", &path))?;
        self.allocated_len = self.acked_len;
        self.poisoned = false;
        Ok(())
    }

    fn snapshot_due(&self) -> bool {
        self.options.snapshots.is_some_and(|p| {
            self.since_snapshot > 0
                && (self.since_snapshot >= p.every_records
                    || self.snapshot_clock_unix_ms.is_some_and(|c| self.clock_unix_ms.saturating_sub(c) >= p.every_ms))
        })
    }

    /// Writes a snapshot of `data` at the store's position (see [`write_snapshot`]), then,
    /// when the options say so, archives the segments it covers. On an error the next snapshot
    /// is tried after another policy period, and [`FileStore::last_snapshot_error`] says why.
    fn save_snapshot(&mut self, data: &SnapshotData<'_>) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Io {
                op: "snapshot (a failed append is not healed yet)",
                path: self.path.clone(),
                source: std::io::Error::from(ErrorKind::InvalidInput),
            });
        }
        // One snapshot at a time: they share the temporary file.
        self.job.wait();
        let position = self.position();
        self.since_snapshot = 0;
        self.snapshot_clock_unix_ms = Some(self.clock_unix_ms);
        let result =
            self.anchor().and_then(|anchor| write_snapshot(&self.ledger, position, anchor, data)).and_then(|_| {
                if self.options.archive_covered_segments {
                    archive_before(&self.ledger, position.segment)
                } else {
                    Ok(())
                }
            });
        match &result {
            Ok(()) => self.job.clear_error(),
            Err(e) => self.job.set_error(e.to_string()),
        }
        result
    }

    /// Takes the snapshot in the background, from the store's own durable records (see
    /// `snapshot_job`): the appends that follow do not wait for it. While one is still being
    /// taken, the next waits for a later append.
    fn start_snapshot(&mut self) -> bool {
        if self.poisoned || self.job.is_running() {
            return true;
        }
        let anchor = match self.anchor() {
            Ok(anchor) => anchor,
            Err(e) => {
                self.job.set_error(e.to_string());
                return true;
            }
        };
        let position = self.position();
        self.since_snapshot = 0;
        self.snapshot_clock_unix_ms = Some(self.clock_unix_ms);
        self.job.start(&self.ledger, position, anchor, self.options.archive_covered_segments);
        true
    }
}

impl Drop for FileStore {
    /// Waits for a snapshot being taken: the next owner of the ledger may write its own.
    fn drop(&mut self) {
        self.job.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use backend_api::GrantId;

    use super::*;
    use crate::event::{Event, ResourceKind};
    use crate::file::encode_frame;

    fn record(seq: u64) -> Record {
        Record {
            grant: GrantId([3; 32]),
            seq,
            at_unix_ms: 1_700_000_000_000 + seq,
            event: Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: format!("key-{seq}") },
        }
    }

    #[test]
    fn a_poisoned_store_heals_by_cutting_what_was_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let (mut store, _) = FileStore::open(&path).unwrap();
        store.append(&[record(0)]).unwrap();
        // Given a write that failed half way: bytes on disk nobody acknowledged,
        let mut torn = Vec::new();
        encode_frame(&record(1), &mut torn).unwrap();
        store.file.write_all_at(&torn[..torn.len() / 2], store.acked_len).unwrap();
        store.poisoned = true;
        // when the next append comes,
        store.append(&[record(1)]).unwrap();
        drop(store);
        // then the store healed itself and the file holds each acknowledged record once.
        let (_, report) = FileStore::open(&path).unwrap();
        assert_eq!(report.records, vec![record(0), record(1)]);
        assert_eq!(report.torn_tail, None);
    }
}
