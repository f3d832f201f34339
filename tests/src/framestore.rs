//! The simulation's ledger store: records kept as the file store's frames (the real encoder),
//! so that replaying it, after a crash or in the `ledger` checker, goes through the real decoder.
//! It can also lose or damage an append on purpose, for the self-test of the `ledger` checker.
//! With replicas it keeps the lease item too, and a handle opened under a lease
//! ([`FrameStore::writing_under`]) appends only while the item holds its epoch (see `replicas`).
//!
//! It keeps snapshots as a store of the real backend does: when a ledger's leader asks
//! ([`EventStore::snapshot_due`], every [`FrameStore::snapshot_every`] records), the books it
//! hands over are encoded with the real snapshot encoder at the log's current end, the newest
//! two kept. A restarted process opens from the newest snapshot that decodes plus the frames
//! after it ([`FrameStore::open_ledger`]), and each such opening is compared with a full replay
//! for the `snapshot` checker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::HashSet;

use backend_api::GrantId;
use usage_ledger::file::encode_payload;
use usage_ledger::snapshot::{decode_snapshot, encode_snapshot};
use usage_ledger::{
    Books, Event, EventStore, GrantState, LeaseInfo, Ledger, MemoryStore, Position, Record, SnapshotData, StoreError,
    decode_frame, encode_frame,
};

/// What a store cut off by a partition answers.
pub const PARTITIONED: &str = "unreachable (a partition)";

/// A deliberate store fault, at the n-th append (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFault {
    /// Acknowledge the append but keep nothing of it.
    DropAppend(u64),
    /// Acknowledge the append and keep it with one bit flipped.
    CorruptAppend(u64),
    /// Save each snapshot at the log's end after the next append instead of the current one
    /// (a store that reads its position late): the records of that append are skipped by a
    /// replay from the snapshot.
    SnapshotLatePosition,
}

/// How many snapshots the store keeps: the newest and one fallback, as the file store does.
pub const SNAPSHOTS_KEPT: usize = 2;

/// A snapshot the store keeps: the log offset it covers, and its bytes.
#[derive(Debug)]
struct Kept {
    offset: usize,
    bytes: Vec<u8>,
}

/// A snapshot held back by [`StoreFault::SnapshotLatePosition`] until the next append.
#[derive(Debug)]
struct Late {
    records: u64,
    hash_state: Vec<u8>,
    grants: std::collections::BTreeMap<GrantId, GrantState>,
}

/// Frames in memory. Clones share the same bytes, so a crash is reopening on a clone.
#[derive(Clone, Debug, Default)]
pub struct FrameStore {
    inner: Arc<Mutex<Inner>>,
    /// The lease epoch this handle writes under; `None`: a bridge's own store, unfenced.
    epoch: Option<u64>,
    /// When set, this handle's process cannot reach the store (a partition, with replicas).
    cut_off: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Default)]
struct Inner {
    bytes: Vec<u8>,
    appends: u64,
    fault: Option<StoreFault>,
    /// The lease item of the replicas' group.
    lease: Option<LeaseInfo>,
    /// Every (grant, sequence) stored under a lease, as DynamoDB's keys.
    keys: HashSet<(GrantId, u64)>,
    /// The key pair and group names of every stored `GrantAdmitted`.
    admitted_names: HashSet<String>,
    /// The client token of every stored `LaunchRequested`.
    launch_tokens: HashSet<String>,
    /// Records between snapshots; 0: none taken.
    snapshot_every: u64,
    /// Records appended since the last snapshot.
    since_snapshot: u64,
    /// The snapshots kept, oldest first.
    snapshots: Vec<Kept>,
    late: Option<Late>,
    /// What the openings from a snapshot found wrong, for the `snapshot` checker.
    findings: Vec<String>,
}

impl FrameStore {
    /// An empty store, with `fault` armed if given.
    pub fn new(fault: Option<StoreFault>) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { fault, ..Inner::default() })), epoch: None, cut_off: None }
    }

    /// Asks for a snapshot every `records` records (0: never).
    pub fn snapshot_every(self, records: u64) -> Self {
        self.lock().snapshot_every = records;
        self
    }

    /// A handle on the same records that appends only while the lease item holds `epoch`.
    pub fn writing_under(&self, epoch: u64) -> Self {
        Self { epoch: Some(epoch), ..self.clone() }
    }

    /// A handle on the same records that cannot reach them while `cut_off` is set.
    pub fn reached_through(&self, cut_off: Arc<AtomicBool>) -> Self {
        Self { cut_off: Some(cut_off), ..self.clone() }
    }

    /// Refuses when this handle's process is cut off from the store.
    pub fn reach(&self, op: &'static str) -> Result<(), StoreError> {
        match &self.cut_off {
            Some(cut) if cut.load(Ordering::SeqCst) => Err(StoreError::Remote {
                store: "the simulation's shared store".to_string(),
                op,
                reason: PARTITIONED.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Runs `f` on the lease item, atomically.
    pub fn with_lease<T>(&self, f: impl FnOnce(&mut Option<LeaseInfo>) -> T) -> T {
        f(&mut self.lock().lease)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the stored bytes from `offset` on.
    pub fn with_bytes_from<T>(&self, offset: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        let inner = self.lock();
        f(inner.bytes.get(offset..).unwrap_or_default())
    }

    /// True when a stored `GrantAdmitted` names `name` as its key pair or group.
    pub fn holds_admission_naming(&self, name: &str) -> bool {
        self.lock().admitted_names.contains(name)
    }

    /// True when a stored `LaunchRequested` carries `client_token`.
    pub fn holds_launch_request(&self, client_token: &str) -> bool {
        self.lock().launch_tokens.contains(client_token)
    }

    /// Every stored record, decoded, or why the bytes do not decode (naming the offset).
    pub fn records(&self) -> Result<Vec<Record>, String> {
        self.with_bytes_from(0, |bytes| match decode_frames(bytes, 0) {
            (records, _, None) => Ok(records),
            (_, _, Some(error)) => Err(error),
        })
    }
}

/// Decodes the frames in `bytes` (which start at `base_offset` of the log): the records, the
/// bytes they took, and why decoding stopped early, if it did (naming the offset).
pub fn decode_frames(bytes: &[u8], base_offset: usize) -> (Vec<Record>, usize, Option<String>) {
    let mut records = Vec::new();
    let mut used = 0;
    while used < bytes.len() {
        let at = base_offset + used;
        match decode_frame(&bytes[used..]) {
            Ok(Some((record, len))) => {
                records.push(record);
                used += len;
            }
            Ok(None) => return (records, used, Some(format!("a partial frame at offset {at}"))),
            Err(reason) => return (records, used, Some(format!("corrupt frame at offset {at}: {reason}"))),
        }
    }
    (records, used, None)
}

impl EventStore for FrameStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut frames = Vec::new();
        for record in records {
            encode_frame(record, &mut frames)?;
        }
        self.reach("append")?;
        let mut inner = self.lock();
        if let Some(epoch) = self.epoch {
            let group = crate::replicas::GROUP.to_string();
            match &inner.lease {
                Some(l) if l.epoch == epoch => {}
                held => {
                    let reason = held.as_ref().map_or("the lease item is gone".to_string(), |l| {
                        format!("{} holds it at epoch {}", l.holder, l.epoch)
                    });
                    return Err(StoreError::Fenced { group, epoch, reason });
                }
            }
            if let Some(taken) = records.iter().find(|r| inner.keys.contains(&(r.grant, r.seq))) {
                return Err(StoreError::SequenceTaken { grant: taken.grant.to_hex(), seq: taken.seq });
            }
            inner.keys.extend(records.iter().map(|r| (r.grant, r.seq)));
        }
        inner.appends += 1;
        match inner.fault {
            Some(StoreFault::DropAppend(n)) if n == inner.appends => return Ok(()),
            Some(StoreFault::CorruptAppend(n)) if n == inner.appends => {
                let middle = frames.len() / 2;
                frames[middle] ^= 0x10;
            }
            _ => {}
        }
        for record in records {
            match &record.event {
                Event::GrantAdmitted { key_name, group_name, .. } => {
                    inner.admitted_names.extend([key_name.clone(), group_name.clone()]);
                }
                Event::LaunchRequested { client_token, .. } => {
                    inner.launch_tokens.insert(client_token.clone());
                }
                _ => {}
            }
        }
        inner.bytes.extend_from_slice(&frames);
        inner.since_snapshot += records.len() as u64;
        if let Some(late) = inner.late.take() {
            let data = SnapshotData { records: late.records, hash_state: &late.hash_state, grants: &late.grants };
            inner.keep_snapshot(&data);
        }
        Ok(())
    }

    fn snapshot_due(&self) -> bool {
        let inner = self.lock();
        inner.snapshot_every > 0 && inner.since_snapshot >= inner.snapshot_every
    }

    fn save_snapshot(&mut self, data: &SnapshotData<'_>) -> Result<(), StoreError> {
        self.reach("save a snapshot")?;
        let mut inner = self.lock();
        if let Some(epoch) = self.epoch {
            // As DynamoDB's snapshot write is conditional on the lease item.
            match &inner.lease {
                Some(l) if l.epoch == epoch => {}
                _ => {
                    let (group, reason) = (crate::replicas::GROUP.to_string(), "the lease moved on".to_string());
                    return Err(StoreError::Fenced { group, epoch, reason });
                }
            }
        }
        inner.since_snapshot = 0;
        if inner.fault == Some(StoreFault::SnapshotLatePosition) {
            let grants = data.grants.clone();
            inner.late = Some(Late { records: data.records, hash_state: data.hash_state.to_vec(), grants });
            return Ok(());
        }
        inner.keep_snapshot(data);
        Ok(())
    }
}

impl Inner {
    /// Encodes `data` at the log's end and keeps it, dropping the oldest past
    /// [`SNAPSHOTS_KEPT`].
    fn keep_snapshot(&mut self, data: &SnapshotData<'_>) {
        let offset = self.bytes.len();
        let position = Position { segment: 0, offset: offset as u64 };
        match encode_snapshot(position, None, data) {
            Ok(bytes) => self.snapshots.push(Kept { offset, bytes }),
            Err(reason) => self.findings.push(format!("a snapshot at offset {offset} does not encode: {reason}")),
        }
        if self.snapshots.len() > SNAPSHOTS_KEPT {
            self.snapshots.remove(0);
        }
    }
}

impl FrameStore {
    /// Opens a ledger writing through `handle` as a restarted process would: from the newest
    /// snapshot that decodes and replays, plus the frames after it, else from a full replay.
    /// An opening that could not use the newest snapshot, or whose books differ from a full
    /// replay's, is noted for the `snapshot` checker ([`FrameStore::take_findings`]). Fails
    /// when neither a snapshot nor the whole log replays.
    pub fn open_ledger<S: EventStore>(&self, handle: S) -> Result<Ledger<S>, String> {
        let (bytes, snapshots) = {
            let inner = self.lock();
            let kept = inner.snapshots.iter().map(|k| (k.offset, k.bytes.clone())).collect::<Vec<_>>();
            (inner.bytes.clone(), kept)
        };
        let full = match decode_frames(&bytes, 0) {
            (records, _, None) => Ledger::open(MemoryStore::new(), records).map_err(|e| format!("{e:#}")),
            (_, _, Some(error)) => Err(error),
        };
        let mut findings = Vec::new();
        for (newest, (offset, snapshot)) in snapshots.iter().rev().enumerate() {
            match resume(snapshot, &bytes, *offset) {
                Ok(resumed) => {
                    if let Ok(full) = &full {
                        findings.extend(differences(&resumed, full, *offset));
                    }
                    self.lock().findings.extend(findings);
                    return Ok(resumed.map_store(|_| handle));
                }
                Err(reason) if newest == 0 => {
                    findings.push(format!(
                        "a restarted process opened its ledger without the newest snapshot: the snapshot at log offset {offset} is not usable: {reason}"
                    ));
                }
                Err(_) => {}
            }
        }
        self.lock().findings.extend(findings);
        full.map(|ledger| ledger.map_store(|_| handle))
    }

    /// What openings from a snapshot found wrong since the last call.
    pub fn take_findings(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().findings)
    }
}

/// A ledger resumed from `snapshot` with the frames of `log` after `offset`.
fn resume(snapshot: &[u8], log: &[u8], offset: usize) -> Result<Ledger<MemoryStore>, String> {
    let snapshot = decode_snapshot(snapshot)?;
    let books = Books::from_snapshot(snapshot)?;
    let tail = match decode_frames(log.get(offset..).unwrap_or_default(), offset) {
        (records, _, None) => records,
        (_, _, Some(error)) => return Err(error),
    };
    let mut replayed = Vec::with_capacity(tail.len());
    for record in tail {
        let mut payload = Vec::new();
        encode_payload(&record, &mut payload).map_err(|e| e.to_string())?;
        replayed.push((record, payload));
    }
    Ledger::open_after(MemoryStore::new(), books, replayed).map_err(|e| format!("the tail after it: {e:#}"))
}

/// How a ledger resumed from the snapshot at `offset` differs from the full replay's.
fn differences(resumed: &Ledger<MemoryStore>, full: &Ledger<MemoryStore>, offset: usize) -> Vec<String> {
    let mut found = Vec::new();
    let at = format!("a ledger opened from the snapshot at log offset {offset} and the records after it");
    if resumed.record_count() != full.record_count() {
        found.push(format!("{at} counts {} records, the log holds {}", resumed.record_count(), full.record_count()));
    }
    if resumed.records_hash() != full.records_hash() {
        found.push(format!("{at} has another records hash than a full replay"));
    }
    let (mut ours, mut theirs) = (resumed.grants(), full.grants());
    loop {
        match (ours.next(), theirs.next()) {
            (None, None) => break,
            (Some((id, a)), Some((other, b))) if id == other => {
                if a != b {
                    found.push(format!(
                        "{at}: grant {} is {:?} there, {:?} in a full replay",
                        id.to_hex(),
                        a.phase(),
                        b.phase()
                    ));
                    break;
                }
            }
            (a, b) => {
                let name = |g: Option<(&GrantId, &GrantState)>| g.map_or("none".to_string(), |(id, _)| id.to_hex());
                found.push(format!("{at} lists grant {} where a full replay lists {}", name(a), name(b)));
                break;
            }
        }
    }
    found
}
