//! A hand-driven clock for benchmarks and single-task tests that do not run under tokio.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use backend_api::Clock;

/// A clock that moves only when told to, or when someone sleeps on it (the sleep jumps time
/// forward to its deadline at once). Meant for one driver at a time: with several tasks sleeping
/// concurrently, use `backend_api::TokioClock` under a paused tokio runtime instead.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_unix_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_unix_ms`.
    pub fn new(start_unix_ms: u64) -> Self {
        Self { now_unix_ms: AtomicU64::new(start_unix_ms) }
    }

    /// Moves time forward by `duration_ms`.
    pub fn advance_ms(&self, duration_ms: u64) {
        self.now_unix_ms.fetch_add(duration_ms, Ordering::Relaxed);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now_unix_ms.load(Ordering::Relaxed)
    }

    async fn sleep_until_unix_ms(&self, deadline_unix_ms: u64) {
        self.now_unix_ms.fetch_max(deadline_unix_ms, Ordering::Relaxed);
    }
}
