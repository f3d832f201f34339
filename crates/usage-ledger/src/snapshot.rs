//! Snapshots of the folded books: every grant's state, the records hash so far, and the position
//! in the segments the snapshot covers, so that opening a ledger replays only what follows.
//!
//! The format is described in `docs/metering.md` ("Snapshots and segments"). In short, a
//! snapshot file `<ledger>.snap.<records, 20 digits>` holds:
//!
//! - header (16 bytes): magic `USGLSNAP`, snapshot version (u16 LE), flags (u16 LE, 0), CRC32 of
//!   the first 12 bytes (u32 LE);
//! - the body's length (u64 LE) and CRC32 (u32 LE);
//! - the body: a bincode (standard config, serde) encoding of the position, the anchor (the
//!   last covered frame's position and 8-byte header, checked against the log), the record count,
//!   the SHA-256 state of the records hash, and every grant's [`GrantState`] (a settled grant is
//!   already compacted to its phase, attempt, retry flag, settled usage and open network book).
//!
//! A snapshot is written to `<ledger>.snap.tmp`, `fsync`ed, renamed into place and the directory
//! `fsync`ed, so a crash leaves either the old set of snapshots or the new one; the newest
//! [`SNAPSHOTS_KEPT`] are kept. A snapshot that fails any check (torn, bit-flipped, of another
//! version) is skipped for the previous one, or for a full replay: never read into a wrong state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use backend_api::GrantId;
use serde::{Deserialize, Serialize};

use crate::state::GrantState;
use crate::store::StoreError;

/// The first eight bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"USGLSNAP";
/// The snapshot version this build writes and reads. Bump it whenever [`GrantState`]'s fields
/// change: a snapshot of another version is skipped (the log is replayed instead) and rewritten.
pub const SNAPSHOT_VERSION: u16 = 1;
/// How many snapshots are kept: the newest, and the one before it as a fallback.
pub const SNAPSHOTS_KEPT: usize = 2;
/// The header, the body length and the body CRC.
const PREFIX_LEN: usize = 16 + 8 + 4;

/// Where the records a snapshot covers end: the next record is the frame at byte `offset` of
/// segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The segment's index (0 is the ledger file itself).
    pub segment: u64,
    /// The byte offset in that segment.
    pub offset: u64,
}

/// The last frame a snapshot covers: its position and its 8-byte frame header (length word and
/// CRC32). Opening checks it against the log before using the snapshot, so that a snapshot
/// beside a log that was replaced or restored from elsewhere is skipped, not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Where the frame starts.
    pub at: Position,
    /// Its first 8 bytes.
    pub header: [u8; 8],
}

/// What the books give a snapshot: their durable records' count and hash state, and every
/// grant's state after them.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotData<'a> {
    /// Durable records covered.
    pub records: u64,
    /// The SHA-256 state of the records hash after them.
    pub hash_state: &'a [u8],
    /// Every grant's state after them.
    pub grants: &'a BTreeMap<GrantId, GrantState>,
}

#[derive(Serialize)]
struct BodyRef<'a> {
    position: Position,
    anchor: Option<Anchor>,
    records: u64,
    hash_state: &'a [u8],
    grants: &'a BTreeMap<GrantId, GrantState>,
}

/// A snapshot read back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    /// Where the covered records end.
    pub position: Position,
    /// The last covered frame (`None` when it covers no record).
    pub anchor: Option<Anchor>,
    /// Records covered.
    pub records: u64,
    /// The SHA-256 state of the records hash after them.
    pub hash_state: Vec<u8>,
    /// Every grant's state after them.
    pub grants: BTreeMap<GrantId, GrantState>,
}

fn header_bytes() -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The bytes of a snapshot file.
pub fn encode_snapshot(position: Position, anchor: Option<Anchor>, data: &SnapshotData<'_>) -> Result<Vec<u8>, String> {
    let body = BodyRef { position, anchor, records: data.records, hash_state: data.hash_state, grants: data.grants };
    let mut out = Vec::with_capacity(PREFIX_LEN + 64 * data.grants.len());
    out.extend_from_slice(&header_bytes());
    out.extend_from_slice(&[0u8; 12]);
    bincode::serde::encode_into_std_write(&body, &mut out, bincode::config::standard())
        .map_err(|e| format!("cannot encode the snapshot: {e}"))?;
    let body_len = (out.len() - PREFIX_LEN) as u64;
    let crc = crc32fast::hash(&out[PREFIX_LEN..]);
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads a snapshot file's bytes, or says what is wrong with them.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < PREFIX_LEN {
        return Err(format!("{} bytes, shorter than a snapshot's {PREFIX_LEN}-byte prefix (torn)", bytes.len()));
    }
    check_prefix(&bytes[..PREFIX_LEN], (bytes.len() - PREFIX_LEN) as u64)?;
    let stored_crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let body = &bytes[PREFIX_LEN..];
    let computed = crc32fast::hash(body);
    if computed != stored_crc {
        return Err(format!("body CRC32 is {computed:#010x}, the header says {stored_crc:#010x}"));
    }
    let (snapshot, used): (Snapshot, usize) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| format!("body passes its CRC but does not decode: {e}"))?;
    if used != body.len() {
        return Err(format!("{} trailing bytes after the body", body.len() - used));
    }
    Ok(snapshot)
}

/// The path `<ledger><suffix>`.
pub(crate) fn sibling(ledger: &Path, suffix: &str) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The file of the snapshot covering `records` records of the ledger at `ledger`.
pub fn snapshot_path(ledger: &Path, records: u64) -> PathBuf {
    sibling(ledger, &format!(".snap.{records:020}"))
}

/// Every snapshot file of the ledger at `ledger`, newest (most records) first.
pub fn list_snapshots(ledger: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let dir = parent_dir(ledger);
    let Some(name) = ledger.file_name().and_then(|n| n.to_str()) else { return Ok(Vec::new()) };
    let prefix = format!("{name}.snap.");
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => return Err(StoreError::Io { op: "list snapshots in", path: dir.to_path_buf(), source }),
    };
    for entry in entries {
        let entry =
            entry.map_err(|source| StoreError::Io { op: "list snapshots in", path: dir.to_path_buf(), source })?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if rest.len() == 20
            && let Ok(records) = rest.parse::<u64>()
        {
            found.push((records, entry.path()));
        }
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(found)
}

/// Reads and checks the snapshot at `path`, as [`decode_snapshot`] does, but decoding as it
/// reads (the CRC is checked at the end, before the result is returned), so that memory holds
/// the books and never the file's bytes as well.
pub fn read_snapshot(path: &Path) -> Result<Snapshot, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if file_len < PREFIX_LEN as u64 {
        return Err(format!("{file_len} bytes, shorter than a snapshot's {PREFIX_LEN}-byte prefix (torn)"));
    }
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix).map_err(|e| format!("cannot read: {e}"))?;
    let body_len = check_prefix(&prefix, file_len - PREFIX_LEN as u64)?;
    let stored_crc = u32::from_le_bytes([prefix[24], prefix[25], prefix[26], prefix[27]]);
    let mut body = ChunkReader {
        file,
        buf: vec![0; 1 << 20],
        pos: 0,
        len: 0,
        remaining: body_len,
        hasher: crc32fast::Hasher::new(),
        error: None,
    };
    let decoded: Result<Snapshot, _> = bincode::serde::decode_from_reader(&mut body, bincode::config::standard());
    // Whatever the decoder made of them, every byte must pass the CRC first.
    let trailing = (body.len - body.pos) as u64 + body.remaining;
    while body.fill() {}
    if let Some(e) = body.error {
        return Err(format!("cannot read: {e}"));
    }
    let computed = body.hasher.finalize();
    if computed != stored_crc {
        return Err(format!("body CRC32 is {computed:#010x}, the header says {stored_crc:#010x}"));
    }
    let snapshot = decoded.map_err(|e| format!("body passes its CRC but does not decode: {e}"))?;
    if trailing != 0 {
        return Err(format!("{trailing} trailing bytes after the body"));
    }
    Ok(snapshot)
}

/// Reads a snapshot's body in 1 MiB chunks, hashing (CRC32) each whole chunk as it arrives, and
/// serves the decoder from the chunk.
struct ChunkReader {
    file: File,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Body bytes not read from the file yet.
    remaining: u64,
    hasher: crc32fast::Hasher,
    error: Option<std::io::Error>,
}

impl ChunkReader {
    /// Reads the next chunk; false at the end of the body or on an error (kept in `error`).
    fn fill(&mut self) -> bool {
        if self.remaining == 0 || self.error.is_some() {
            return false;
        }
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(self.buf.len());
        if let Err(e) = self.file.read_exact(&mut self.buf[..n]) {
            self.error = Some(e);
            return false;
        }
        self.hasher.update(&self.buf[..n]);
        self.remaining -= n as u64;
        self.pos = 0;
        self.len = n;
        true
    }
}

impl bincode::de::read::Reader for &mut ChunkReader {
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        let mut done = 0;
        while done < bytes.len() {
            if self.pos == self.len && !self.fill() {
                return Err(bincode::error::DecodeError::UnexpectedEnd { additional: bytes.len() - done });
            }
            let n = (bytes.len() - done).min(self.len - self.pos);
            bytes[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.buf.get(self.pos..self.pos + n).filter(|_| self.pos + n <= self.len)
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

/// Checks a snapshot's header and that its body is `found` bytes long; returns that length.
fn check_prefix(bytes: &[u8], found: u64) -> Result<u64, String> {
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err("does not start with the snapshot magic USGLSNAP".into());
    }
    let header_crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32fast::hash(&bytes[..12]) != header_crc {
        return Err("header CRC32 mismatch".into());
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != SNAPSHOT_VERSION {
        return Err(format!("snapshot version {version}, this build reads {SNAPSHOT_VERSION}"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let body_len = u64::from_le_bytes(len);
    if body_len != found {
        return Err(format!("the body should be {body_len} bytes, the file holds {found} (torn or extended)"));
    }
    Ok(body_len)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// Writes a snapshot of `data` at `position` for the ledger at `ledger` durably (temporary file,
/// `fsync`, rename, directory `fsync`), then removes all but the newest [`SNAPSHOTS_KEPT`].
/// Returns its path.
pub fn write_snapshot(
    ledger: &Path,
    position: Position,
    anchor: Option<Anchor>,
    data: &SnapshotData<'_>,
) -> Result<PathBuf, StoreError> {
    let bytes = encode_snapshot(position, anchor, data).map_err(|reason| StoreError::Encode {
        grant: String::from("(snapshot)"),
        seq: data.records,
        reason,
    })?;
    let tmp = sibling(ledger, ".snap.tmp");
    let path = snapshot_path(ledger, data.records);
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    let dir = parent_dir(ledger);
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))?;
    for (_, old) in list_snapshots(ledger)?.into_iter().skip(SNAPSHOTS_KEPT) {
        std::fs::remove_file(&old).map_err(io("remove old snapshot", &old))?;
    }
    Ok(path)
}
