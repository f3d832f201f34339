//! `Tasks`: the backend's own spawned tasks of one kind (armed deadlines, teardowns tried again,
//! final network measurements), at most one per key, all stopped together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinHandle;

use crate::pacing::lock;

/// The tasks of one kind, by key. A task removes itself when it ends (`done`); the backend
/// aborts them all when it stops.
#[derive(Debug)]
pub(crate) struct Tasks<K> {
    running: Mutex<BTreeMap<K, JoinHandle<()>>>,
}

impl<K: Ord> Default for Tasks<K> {
    fn default() -> Self {
        Self { running: Mutex::new(BTreeMap::new()) }
    }
}

impl<K: Ord> Tasks<K> {
    /// Spawns `task` under `key`, aborting the task it replaces.
    pub(crate) fn replace(&self, key: K, task: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(task);
        if let Some(previous) = lock(&self.running).insert(key, task) {
            previous.abort();
        }
    }

    /// Spawns `task` under `key` unless a task still runs there: one at a time per key.
    pub(crate) fn arm(&self, key: K, task: impl Future<Output = ()> + Send + 'static) {
        let mut running = lock(&self.running);
        if running.get(&key).is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Some(previous) = running.insert(key, tokio::spawn(task)) {
            previous.abort();
        }
    }

    /// Forgets the task under `key`: it has ended.
    pub(crate) fn done(&self, key: &K) {
        lock(&self.running).remove(key);
    }

    /// Aborts every task.
    pub(crate) fn abort_all(&self) {
        for task in lock(&self.running).values() {
            task.abort();
        }
    }
}
