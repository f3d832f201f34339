//! The file store's ledger and the backend's key seed: the ledger opened under its lock (`run`,
//! a real `reap`) or read without it (`status`, a dry run, into a ledger that refuses appends),
//! and the key seed file the per-grant SSH keys derive from.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use aws_backend::DynStore;
use backend_api::Secret;
use rand::RngCore;
use usage_ledger::{FileOptions, Ledger};

/// The backend's key seed, kept next to the ledger at `<ledger_path>.keyseed`: 32 bytes from the
/// OS's randomness in hex, created with mode 0600 on first use. Every per-grant SSH key derives
/// from it, so a restarted backend re-derives the same keys; losing it only matters for grants
/// still running.
pub(crate) fn key_seed(ledger_path: &Path) -> anyhow::Result<Secret> {
    let mut name = ledger_path.as_os_str().to_owned();
    name.push(".keyseed");
    let path = PathBuf::from(name);
    match read_key_seed(&path) {
        Ok(seed) => Ok(seed),
        Err(err) if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let seed = Secret::new(hex::encode(bytes));
            bytes.fill(0);
            write_private_file(&path, seed.expose())
                .with_context(|| format!("creating key seed file {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new backend key seed");
            Ok(seed)
        }
        Err(err) => Err(err),
    }
}

/// Reads and checks the key seed file at `path` (64 hex characters). A missing file is an
/// `std::io::Error` of kind `NotFound` (the caller decides whether to create one).
pub(crate) fn read_key_seed(path: &Path) -> anyhow::Result<Secret> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(err.into()),
        Err(err) => return Err(err).with_context(|| format!("reading key seed file {}", path.display())),
    };
    let seed = Secret::new(text.trim());
    let ok = seed.expose().len() == 64 && seed.expose().bytes().all(|b| b.is_ascii_hexdigit());
    ensure!(
        ok,
        "key seed file {} is not 64 hex characters: restore it from backup, or delete it only if no grant is live",
        path.display()
    );
    warn_if_readable_by_others(path);
    Ok(seed)
}

#[cfg(unix)]
fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the key seed file is readable by others: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Opens the file ledger from its newest good snapshot and the records after it (the ledger's
/// default `FileOptions`: segments, and a snapshot every 100,000 records or 10 minutes of
/// record time), reporting (and having truncated) a torn tail and any skipped snapshot.
pub(crate) fn open_ledger(path: &Path) -> anyhow::Result<Ledger<DynStore>> {
    let (ledger, report) = Ledger::open_file_with(path, FileOptions::default())
        .with_context(|| format!("opening ledger {}", path.display()))?;
    if let Some(torn) = report.replay.torn_tail {
        tracing::warn!(
            path = %path.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            "the ledger ended in a partial record (a crash during a write); it was truncated"
        );
    }
    for (snapshot, reason) in &report.skipped_snapshots {
        tracing::warn!(snapshot = %snapshot.display(), reason = %reason, "a ledger snapshot was skipped");
    }
    tracing::info!(
        path = %path.display(),
        records = ledger.record_count(),
        replayed = report.replay.records,
        snapshot = ?report.snapshot,
        "ledger opened"
    );
    Ok(ledger.map_store(|store| DynStore(Box::new(store))))
}

/// Every whole record of the ledger at `path` (all its segments), read without locking or
/// modifying it; a partial last record (a write in progress, or a crash) is left out.
pub(crate) fn scan_ledger(path: &Path) -> anyhow::Result<Vec<usage_ledger::Record>> {
    let mut records = Vec::new();
    let (_, torn) = usage_ledger::inspect::scan_ledger(path, |_, record, _| {
        records.push(record);
        Ok::<(), usage_ledger::StoreError>(())
    })
    .with_context(|| format!("reading ledger {}", path.display()))?;
    if torn.is_some() {
        tracing::warn!(path = %path.display(), "the ledger ends in a partial record (a write in progress, or a crash)");
    }
    Ok(records)
}

/// A store that refuses every append: the home of a ledger read for a dry run, which must
/// write nothing. The reaper's dry run never appends; were it to, this makes it fail loudly
/// rather than write to a ledger another process holds.
pub(crate) struct RefuseAppends {
    pub(crate) path: PathBuf,
}

impl usage_ledger::EventStore for RefuseAppends {
    fn append(&mut self, _: &[usage_ledger::Record]) -> Result<(), usage_ledger::StoreError> {
        Err(usage_ledger::StoreError::Io {
            op: "append to (a dry run opened the ledger read-only)",
            path: self.path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        })
    }
}

/// The ledger as it stands, read without taking its lock (so while `run` holds it) into a
/// ledger that refuses appends. A missing file is an empty ledger.
pub(crate) fn read_ledger_without_lock(path: &Path) -> anyhow::Result<Ledger<DynStore>> {
    let store = DynStore(Box::new(RefuseAppends { path: path.to_path_buf() }));
    if !path.exists() {
        tracing::info!(path = %path.display(), "no ledger yet: every resource with our owner tag is an orphan");
        return Ok(Ledger::empty(store));
    }
    let records = scan_ledger(path)?;
    let count = records.len();
    let ledger = Ledger::open(store, records).with_context(|| format!("replaying ledger {}", path.display()))?;
    tracing::info!(path = %path.display(), records = count, "ledger read without its lock, for a dry run");
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use backend_api::GrantId;

    use super::*;

    #[test]
    fn a_key_seed_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("aws-backend-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ledger = dir.join("ledger");
        let first = key_seed(&ledger).expect("created");
        let again = key_seed(&ledger).expect("read back");
        assert_eq!(first.expose(), again.expose());
        assert_eq!(first.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("ledger.keyseed")).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join("ledger.keyseed"), "short").expect("write");
        let err = key_seed(&ledger).expect_err("malformed").to_string();
        assert!(err.contains("64 hex"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dry_run_reads_a_ledger_another_process_holds_and_cannot_write_it() {
        let dir = std::env::temp_dir().join(format!("aws-backend-readonly-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ledger");
        let _ = std::fs::remove_file(&path);
        let empty = read_ledger_without_lock(&path).expect("a missing ledger reads as empty");
        assert_eq!(empty.grants().count(), 0);
        assert!(!path.exists(), "reading must not create the ledger");

        // Given a ledger held (and locked) by a running backend, with one reaped orphan in it.
        let (mut held, _) = Ledger::open_file(&path).expect("opened");
        let grant = GrantId([0xEF; 32]);
        let event = usage_ledger::Event::OrphanReaped {
            resource_kind: usage_ledger::ResourceKind::KeyPair,
            resource_id: "cb-ef".into(),
        };
        held.append(grant, 1, event.clone()).expect("appended");

        let mut read = read_ledger_without_lock(&path).expect("read while held");
        assert!(read.grant(&grant).is_some_and(|s| s.is_settled()), "the record was not replayed");
        let err = read.append(grant, 2, event).expect_err("a dry run's ledger refuses appends").to_string();
        assert!(err.contains("read-only"), "{err}");
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
