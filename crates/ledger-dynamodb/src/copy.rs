//! Moving a ledger between a file and a table: [`import_file`] and [`export_file`].

use std::path::Path;

use usage_ledger::{EventStore, Ledger, LedgerError, MemoryStore, Record, StoreError};

use crate::table::DynamoTable;
use usage_ledger::Lease;

/// What an import or export copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Records copied.
    pub records: u64,
    /// The records hash of the source, which the destination was read back and found to have.
    pub records_hash: [u8; 32],
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The ledger could not be read, folded or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The destination already holds records.
    #[error("{destination} already holds {records} records: copy into an empty table or a new file")]
    NotEmpty {
        /// The table or file.
        destination: String,
        /// How many records it holds.
        records: u64,
    },
    /// The file has a torn tail: its last append was cut short.
    #[error(
        "{path}: torn tail of {bytes} bytes at byte offset {offset}: open the ledger once (the backend truncates it) or check it with `usage-ledger verify`, then import"
    )]
    TornTail {
        /// The file.
        path: String,
        /// Where the torn frame starts.
        offset: u64,
        /// Its length.
        bytes: u64,
    },
    /// The copy, read back, does not have the source's records hash.
    #[error(
        "{destination} read back has records hash {found}, the source {expected}: the copy is not faithful; do not use it, and report this"
    )]
    HashMismatch {
        /// The table or file.
        destination: String,
        /// The source's hash, in hex.
        expected: String,
        /// The copy's hash, in hex.
        found: String,
    },
}

fn hash_of<P: AsRef<[u8]>>(records: impl IntoIterator<Item = (Record, P)>) -> Result<[u8; 32], LedgerError> {
    Ok(Ledger::open_replayed(MemoryStore::new(), records)?.records_hash())
}

/// Copies the file ledger at `path` into `table`, which must hold no records, writing under
/// `lease` (so no bridge writes the table meanwhile) with each record's payload as the file
/// stores it. Reads the table back and checks that its records hash is the file's.
pub async fn import_file(table: &DynamoTable, lease: &Lease, path: &Path) -> Result<CopyReport, CopyError> {
    let mut source: Vec<(Record, Vec<u8>)> = Vec::new();
    // Every segment of the file ledger, in order (its snapshots are not needed: every record
    // is copied).
    let (_, torn_tail) = usage_ledger::inspect::scan_ledger(path, |_, record, payload| {
        source.push((record, payload.to_vec()));
        Ok::<(), StoreError>(())
    })
    .map_err(LedgerError::from)?;
    if let Some(torn) = torn_tail {
        return Err(CopyError::TornTail { path: path.display().to_string(), offset: torn.offset, bytes: torn.bytes });
    }
    // Folding first refuses a file with an impossible transition before anything is written.
    let expected = hash_of(source.iter().map(|(r, p)| (r.clone(), p.as_slice())))?;
    let existing = table.replay().await.map_err(LedgerError::from)?;
    if !existing.records.is_empty() {
        return Err(CopyError::NotEmpty { destination: table.label(), records: existing.records.len() as u64 });
    }
    let (records, payloads): (Vec<Record>, Vec<Vec<u8>>) = source.into_iter().unzip();
    table
        .write_encoded(lease, &records, &payloads, existing.next_pos, existing.next_log)
        .await
        .map_err(LedgerError::from)?;
    let found = hash_of(table.replay().await.map_err(LedgerError::from)?.records)?;
    if found != expected {
        return Err(CopyError::HashMismatch {
            destination: table.label(),
            expected: hex::encode(expected),
            found: hex::encode(found),
        });
    }
    Ok(CopyReport { records: records.len() as u64, records_hash: expected })
}

/// Copies every record of `table` into a new file ledger at `path` (refused when it already
/// holds records). The file stores each record in the current format version, so a table
/// holding older versions (imported from an old file) exports with another records hash; the
/// report carries the file's.
pub async fn export_file(table: &DynamoTable, path: &Path) -> Result<CopyReport, CopyError> {
    let replayed = table.replay().await.map_err(LedgerError::from)?;
    let records: Vec<Record> = replayed.records.into_iter().map(|(record, _)| record).collect();
    // The hash the file will have: the records re-encoded in the current version. Folding
    // first refuses a table with an impossible transition before anything is written.
    let expected = Ledger::open(MemoryStore::new(), records.clone())?.records_hash();
    let (ledger, _) = Ledger::open_file(path)?;
    if ledger.record_count() > 0 {
        return Err(CopyError::NotEmpty { destination: path.display().to_string(), records: ledger.record_count() });
    }
    let (mut store, _) = ledger.into_parts();
    store.append(&records).map_err(LedgerError::from)?;
    drop(store);
    let (reopened, _) = Ledger::open_file(path)?;
    if reopened.records_hash() != expected {
        return Err(CopyError::HashMismatch {
            destination: path.display().to_string(),
            expected: hex::encode(expected),
            found: hex::encode(reopened.records_hash()),
        });
    }
    Ok(CopyReport { records: reopened.record_count(), records_hash: expected })
}
