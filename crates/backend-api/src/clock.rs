//! Injected time: nothing in a backend reads the wall clock directly.

use async_trait::async_trait;

/// A source of the current time and of sleeps.
///
/// Backends take one so that the same code runs against real time in production and
/// virtual time in the simulator.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time in unix milliseconds.
    fn now_unix_ms(&self) -> u64;

    /// Returns once `now_unix_ms() >= deadline_unix_ms`.
    async fn sleep_until_unix_ms(&self, deadline_unix_ms: u64);

    /// Sleeps for `duration_ms` milliseconds.
    async fn sleep_ms(&self, duration_ms: u64) {
        let deadline = self.now_unix_ms().saturating_add(duration_ms);
        self.sleep_until_unix_ms(deadline).await;
    }
}

/// A clock on tokio's time, anchored to a unix time given at construction.
///
/// In production the anchor is the wall clock read once by the binary; under a paused tokio
/// runtime (`start_paused = true`) the same clock is virtual and deterministic, which is how
/// the simulator runs the unchanged backend.
#[derive(Debug, Clone)]
pub struct TokioClock {
    anchor_unix_ms: u64,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `anchor_unix_ms` now and advances with tokio's time.
    pub fn starting_at(anchor_unix_ms: u64) -> Self {
        Self { anchor_unix_ms, anchor: tokio::time::Instant::now() }
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn now_unix_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.anchor);
        self.anchor_unix_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    async fn sleep_until_unix_ms(&self, deadline_unix_ms: u64) {
        let wait_ms = deadline_unix_ms.saturating_sub(self.now_unix_ms());
        if wait_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_time_advances_only_by_sleeping() {
        let clock = TokioClock::starting_at(1_000_000);
        assert_eq!(clock.now_unix_ms(), 1_000_000);
        clock.sleep_until_unix_ms(1_060_000).await;
        assert_eq!(clock.now_unix_ms(), 1_060_000);
        clock.sleep_ms(500).await;
        assert_eq!(clock.now_unix_ms(), 1_060_500);
        // A deadline in the past returns at once.
        clock.sleep_until_unix_ms(0).await;
        assert_eq!(clock.now_unix_ms(), 1_060_500);
    }
}
