//! The durable file store: a header, then append-only frames `[len u32][crc32 u32][payload]`.
//!
//! The format is described in `docs/metering.md`. In short:
//!
//! - header (16 bytes): magic `USGLEDGR`, format version (u16 LE), flags (u16 LE, 0), CRC32 of
//!   the first 12 bytes (u32 LE);
//! - frame: a length word (u32 LE: payload length in the low 24 bits, a CRC-8 of those three
//!   bytes in the high 8, so that a damaged length is detected rather than mistaken for a torn
//!   tail), the CRC32 of the payload (u32 LE), and the payload: a bincode (standard config,
//!   serde) encoding of a versioned envelope around one [`Record`].
//!
//! The file is preallocated: zero bytes follow the last frame, written and synced ahead of the
//! frames that will overwrite them, so that an append's `fdatasync` persists only its data and
//! never the file's growth. One write carries at most [`MAX_WRITE_BYTES`] of frames (larger
//! appends are several writes, each synced), so a crash can damage only the bytes that far past
//! the last intact frame.
//!
//! Opening replays every frame. Zero bytes after the last frame are free space. Damage that ends
//! within [`MAX_WRITE_BYTES`] (or the damaged frame's own length) of the last intact frame, with
//! only zeros after it, is a torn tail: an unacknowledged write cut short. It is truncated and
//! reported. Damage anywhere else is an error naming its byte offset, and the file is left as
//! it was.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::event::Record;
use crate::store::StoreError;

/// The first eight bytes of every ledger file.
pub const MAGIC: [u8; 8] = *b"USGLEDGR";
/// The header's length in bytes.
pub const HEADER_LEN: u64 = 16;
/// A frame's fixed part: the length word and the CRC32.
pub const FRAME_HEADER_LEN: u64 = 8;
/// The largest payload a frame holds.
pub const MAX_PAYLOAD_BYTES: usize = (1 << 24) - 1;

const READ_BUFFER_BYTES: usize = 1 << 20;
/// The most bytes of frames one write carries. Only the last write can be torn, and it starts
/// right after the last acknowledged frame, so damage farther than this past the last intact
/// frame is not a torn write: it is corruption.
pub const MAX_WRITE_BYTES: usize = 64 << 10;
/// How far ahead of the last frame the file is filled with zeros, in one write and one sync, at
/// most: a file grows by its own length (so a small ledger stays small), from 64 KiB up to this.
pub const PREALLOCATE_BYTES: u64 = 8 << 20;
pub(crate) const PREALLOCATE_MIN_BYTES: u64 = 64 << 10;
pub(crate) static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The persisted form of a record. New versions are added as new variants; a reader converts
/// every older version to the current [`Record`]. Version 2 added `LaunchRequested::image_id`;
/// version 1 records decode through the frozen types of `v1`.
#[derive(Serialize)]
enum EnvelopeRef<'a> {
    /// Never written again: a placeholder keeping `V2`'s variant index (bincode encodes the
    /// index).
    #[allow(dead_code)]
    V1(()),
    V2(&'a Record),
}

#[derive(Deserialize)]
enum Envelope {
    V1(crate::v1::RecordV1),
    V2(Record),
}

impl Envelope {
    fn into_record(self) -> Record {
        match self {
            Envelope::V1(record) => record.into(),
            Envelope::V2(record) => record,
        }
    }
}

pub(crate) fn header_bytes() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// CRC-8 (polynomial 0x07): detects every single-bit error in the length bytes.
fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x07 } else { crc << 1 };
        }
    }
    crc
}

fn length_word(len: u32) -> u32 {
    let bytes = len.to_le_bytes();
    len | (u32::from(crc8(&bytes[..3])) << 24)
}

/// The payload length a length word holds, or `None` when the word is damaged.
fn parse_length_word(word: u32) -> Option<u32> {
    let len = word & 0x00ff_ffff;
    (len != 0 && length_word(len) == word).then_some(len)
}

/// Appends the envelope encoding of `record` (a frame's payload) to `out`.
pub fn encode_payload(record: &Record, out: &mut Vec<u8>) -> Result<(), StoreError> {
    bincode::serde::encode_into_std_write(EnvelopeRef::V2(record), out, bincode::config::standard())
        .map_err(|e| StoreError::Encode { grant: record.grant.to_hex(), seq: record.seq, reason: e.to_string() })?;
    Ok(())
}

/// Appends one whole frame holding `record` to `out`.
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    encode_payload(record, out)?;
    let len = out.len() - start - FRAME_HEADER_LEN as usize;
    if len > MAX_PAYLOAD_BYTES {
        out.truncate(start);
        return Err(StoreError::Encode {
            grant: record.grant.to_hex(),
            seq: record.seq,
            reason: format!("{len} bytes is more than a frame holds ({MAX_PAYLOAD_BYTES})"),
        });
    }
    let payload_start = start + FRAME_HEADER_LEN as usize;
    let crc = crc32fast::hash(&out[payload_start..]);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&length_word(len).to_le_bytes());
    out[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes the frame at the start of `bytes`: the record and the frame's length, `Ok(None)`
/// when `bytes` holds less than a whole frame, or why the frame is corrupt.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Record, usize)>, String> {
    let header = FRAME_HEADER_LEN as usize;
    let Some(head) = bytes.get(..header) else { return Ok(None) };
    let word = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let stored_crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let len = parse_length_word(word).ok_or_else(|| format!("length word {word:#010x} fails its check byte"))?;
    let Some(payload) = bytes.get(header..header + len as usize) else { return Ok(None) };
    let computed = crc32fast::hash(payload);
    if computed != stored_crc {
        return Err(format!("payload CRC32 is {computed:#010x}, the frame says {stored_crc:#010x}"));
    }
    Ok(Some((decode_payload(payload)?, header + len as usize)))
}

/// Decodes one frame's payload.
pub fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    // The current version, read directly; anything else (and every error) through bincode.
    match crate::decode::decode_v2(payload) {
        Some(record) => Ok(record),
        None => decode_payload_bincode(payload),
    }
}

/// Decodes one frame's payload with bincode: every version, and the error for a payload that
/// is not one.
pub(crate) fn decode_payload_bincode(payload: &[u8]) -> Result<Record, String> {
    let (envelope, used): (Envelope, usize) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| {
        format!("payload passes its CRC but does not decode ({e}): written by a newer usage-ledger?")
    })?;
    if used != payload.len() {
        return Err(format!("payload has {} trailing bytes after the record", payload.len() - used));
    }
    Ok(envelope.into_record())
}

/// A partial last frame, cut off by a crash during an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where the partial frame starts (the length of the intact file).
    pub offset: u64,
    /// How many bytes it has.
    pub bytes: u64,
}

/// What a read of the whole file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Intact records read.
    pub records: u64,
    /// The end of the last intact frame.
    pub end_offset: u64,
    /// A partial last frame, if any. [`scan_file`] leaves it; [`crate::FileStore::open`] truncates it.
    pub torn_tail: Option<TornTail>,
    /// Zero bytes after the last intact frame (space preallocated for appends), when there is
    /// no torn tail.
    pub free_bytes: u64,
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

pub(crate) fn corrupt(path: &Path, offset: u64, reason: String) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), offset, reason }
}

pub(crate) fn check_header(path: &Path, header: &[u8]) -> Result<(), StoreError> {
    if header[..8] != MAGIC {
        return Err(StoreError::NotALedger {
            path: path.to_path_buf(),
            reason: format!("magic is {:?}, expected {:?}", String::from_utf8_lossy(&header[..8]), "USGLEDGR"),
        });
    }
    let stored = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let computed = crc32fast::hash(&header[..12]);
    if stored != computed {
        return Err(corrupt(path, 0, format!("header CRC32 is {stored:#010x}, computed {computed:#010x}")));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// The offset just past the last non-zero byte at or after `offset`, or `None` when every byte
/// from `offset` to the end is zero.
fn nonzero_end(path: &Path, offset: u64) -> Result<Option<u64>, StoreError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err("seek", path))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut at = offset;
    let mut end = None;
    loop {
        let n = file.read(&mut buffer).map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(last) = buffer[..n].iter().rposition(|&b| b != 0) {
            end = Some(at + last as u64 + 1);
        }
        at += n as u64;
    }
}

/// What damage found at `offset` (the end of the last intact frame) is: free space when only
/// zeros follow, a torn tail when the non-zero bytes end within what one write could have torn
/// (`MAX_WRITE_BYTES`, or the damaged frame's own length when its length word is intact), or
/// corruption, described by `reason`.
fn classify_damage(
    path: &Path,
    records: u64,
    offset: u64,
    frame_len: Option<u64>,
    reason: impl FnOnce() -> String,
) -> Result<ScanOutcome, StoreError> {
    let Some(end) = nonzero_end(path, offset)? else {
        let free_bytes = std::fs::metadata(path).map_err(io_err("stat", path))?.len() - offset;
        return Ok(ScanOutcome { records, end_offset: offset, torn_tail: None, free_bytes });
    };
    let reach = (MAX_WRITE_BYTES as u64).max(frame_len.unwrap_or(0));
    if end - offset <= reach {
        let torn_tail = Some(TornTail { offset, bytes: end - offset });
        return Ok(ScanOutcome { records, end_offset: offset, torn_tail, free_bytes: 0 });
    }
    Err(corrupt(path, offset, reason()))
}

/// Reads every frame of the ledger at `path` without modifying it, calling `visit` with each
/// frame's offset, decoded record and payload bytes, in order.
///
/// A damaged header or frame is [`StoreError::Corrupt`] naming its offset; a partial last frame
/// is reported in [`ScanOutcome::torn_tail`]. A file shorter than the header is reported as a
/// torn tail at offset 0 when its bytes are a prefix of a header.
pub fn scan_file<E: From<StoreError>>(
    path: &Path,
    visit: impl FnMut(u64, Record, &[u8]) -> Result<(), E>,
) -> Result<ScanOutcome, E> {
    scan_from(path, HEADER_LEN, visit)
}

/// [`scan_file`] from the frame at byte `start` (a frame boundary, such as a snapshot's
/// position) instead of the first frame. The header is checked all the same; a `start` past
/// the end of the file is [`StoreError::Corrupt`].
pub fn scan_from<E: From<StoreError>>(
    path: &Path,
    start: u64,
    mut visit: impl FnMut(u64, Record, &[u8]) -> Result<(), E>,
) -> Result<ScanOutcome, E> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    if file_len < HEADER_LEN {
        if start > HEADER_LEN {
            return Err(corrupt(path, start, format!("a position past the end of the file ({file_len} bytes)")).into());
        }
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(io_err("read", path))?;
        let expected = header_bytes();
        if bytes[..] != expected[..bytes.len()] {
            return Err(StoreError::NotALedger {
                path: path.to_path_buf(),
                reason: format!("{} bytes that do not begin a usage-ledger header", bytes.len()),
            }
            .into());
        }
        let torn_tail = (file_len > 0).then_some(TornTail { offset: 0, bytes: file_len });
        return Ok(ScanOutcome { records: 0, end_offset: 0, torn_tail, free_bytes: 0 });
    }
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header).map_err(io_err("read", path))?;
    check_header(path, &header)?;
    let mut offset = start.max(HEADER_LEN);
    if offset > file_len {
        return Err(corrupt(path, offset, format!("a position past the end of the file ({file_len} bytes)")).into());
    }
    if offset > HEADER_LEN {
        reader.seek(SeekFrom::Start(offset)).map_err(io_err("seek", path))?;
    }
    let mut records = 0u64;
    let mut payload = Vec::new();
    loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            return Ok(ScanOutcome { records, end_offset: offset, torn_tail: None, free_bytes: 0 });
        }
        if remaining < FRAME_HEADER_LEN {
            return Ok(classify_damage(path, records, offset, None, || "a partial frame header".into())?);
        }
        let mut frame_header = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut frame_header).map_err(io_err("read", path))?;
        let word = u32::from_le_bytes([frame_header[0], frame_header[1], frame_header[2], frame_header[3]]);
        let stored_crc = u32::from_le_bytes([frame_header[4], frame_header[5], frame_header[6], frame_header[7]]);
        let Some(len) = parse_length_word(word) else {
            return Ok(classify_damage(path, records, offset, None, || {
                format!("length word {word:#010x} fails its check byte")
            })?);
        };
        let frame_len = FRAME_HEADER_LEN + u64::from(len);
        if frame_len > remaining {
            return Ok(classify_damage(path, records, offset, Some(frame_len), || {
                format!("a frame of {frame_len} bytes runs past the end of the file")
            })?);
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err("read", path))?;
        let computed = crc32fast::hash(&payload);
        if computed != stored_crc {
            return Ok(classify_damage(path, records, offset, Some(frame_len), || {
                format!("payload CRC32 is {computed:#010x}, the frame says {stored_crc:#010x}")
            })?);
        }
        let record = decode_payload(&payload).map_err(|reason| corrupt(path, offset, reason))?;
        visit(offset, record, &payload)?;
        records += 1;
        offset += frame_len;
    }
}
