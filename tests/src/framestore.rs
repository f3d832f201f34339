//! The simulation's ledger store: records kept as the file store's frames (the real encoder),
//! so that replaying it, after a crash or in the `ledger` checker, goes through the real decoder.
//! It can also lose or damage an append on purpose, for the self-test of the `ledger` checker.
//! With replicas it keeps the lease item too, and a handle opened under a lease
//! ([`FrameStore::writing_under`]) appends only while the item holds its epoch (see `replicas`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::HashSet;

use backend_api::GrantId;
use usage_ledger::{Event, EventStore, LeaseInfo, Record, StoreError, decode_frame, encode_frame};

/// What a store cut off by a partition answers.
pub const PARTITIONED: &str = "unreachable (a partition)";

/// A deliberate store fault, at the n-th append (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFault {
    /// Acknowledge the append but keep nothing of it.
    DropAppend(u64),
    /// Acknowledge the append and keep it with one bit flipped.
    CorruptAppend(u64),
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
}

impl FrameStore {
    /// An empty store, with `fault` armed if given.
    pub fn new(fault: Option<StoreFault>) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { fault, ..Inner::default() })), epoch: None, cut_off: None }
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
        Ok(())
    }
}
