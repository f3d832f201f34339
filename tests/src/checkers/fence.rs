//! `fence`: with bridge replicas sharing one ledger, only the lease's latest holder acts. Once a
//! replica process has acquired the lease, every EC2 (CloudWatch, SSM) call sent by any other
//! process is a violation, from the moment of that acquisition on: the earlier holder must
//! have stopped (its lease ran out by its own clock, or the store fenced it) and left what it
//! had in flight to the new holder's recovery. No process may act before it first acquired.
//!
//! The log is kept in the order things happened (the simulation runs on one thread), so "after"
//! needs no clock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use aws_backend::port::Operation;

use super::{Violation, names};
use crate::fixture::START_UNIX_MS;

/// One thing the fence checker is told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceEvent {
    /// A replica process acquired the lease.
    Acquired {
        /// The process.
        holder: String,
        /// The epoch it acquired.
        epoch: u64,
        /// When.
        at_unix_ms: u64,
    },
    /// A replica process sent a call.
    Called {
        /// The process.
        holder: String,
        /// The call.
        op: Operation,
        /// When.
        at_unix_ms: u64,
    },
}

/// The shared log of acquisitions and calls, in the order they happened.
#[derive(Clone, Debug, Default)]
pub struct FenceLog {
    events: Arc<Mutex<Vec<FenceEvent>>>,
}

impl FenceLog {
    fn push(&self, event: FenceEvent) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    /// Notes an acquisition.
    pub fn acquired(&self, holder: &str, epoch: u64, at_unix_ms: u64) {
        self.push(FenceEvent::Acquired { holder: holder.to_string(), epoch, at_unix_ms });
    }

    /// Notes a call.
    pub fn called(&self, holder: &str, op: Operation, at_unix_ms: u64) {
        self.push(FenceEvent::Called { holder: holder.to_string(), op, at_unix_ms });
    }

    /// How many acquisitions so far.
    pub fn acquisitions(&self) -> usize {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.iter().filter(|e| matches!(e, FenceEvent::Acquired { .. })).count()
    }
}

/// The checker: reads the log incrementally.
#[derive(Debug, Default)]
pub struct FenceChecker {
    log: FenceLog,
    read: usize,
    /// The latest acquisition: holder, epoch, when.
    holder: Option<(String, u64, u64)>,
    /// Processes already reported (one violation each).
    reported: BTreeSet<String>,
}

fn minutes(at_unix_ms: u64) -> String {
    let s = at_unix_ms.saturating_sub(START_UNIX_MS) / 1_000;
    format!("t+{}m{:02}s", s / 60, s % 60)
}

impl FenceChecker {
    /// A checker of `log`.
    pub fn new(log: FenceLog) -> Self {
        Self { log, ..Self::default() }
    }

    /// The violations among the events logged since the last check.
    pub fn check(&mut self) -> Vec<Violation> {
        let events: Vec<FenceEvent> = {
            let all = self.log.events.lock().unwrap_or_else(PoisonError::into_inner);
            all[self.read..].to_vec()
        };
        self.read += events.len();
        let mut found = Vec::new();
        for event in events {
            match event {
                FenceEvent::Acquired { holder, epoch, at_unix_ms } => self.holder = Some((holder, epoch, at_unix_ms)),
                FenceEvent::Called { holder, op, at_unix_ms } => {
                    let message = match &self.holder {
                        Some((current, _, _)) if *current == holder => continue,
                        Some((current, epoch, since)) => format!(
                            "{holder} sent {op} at {}, after {current} took the ledger lease at epoch {epoch} ({}): a fenced replica acted",
                            minutes(at_unix_ms),
                            minutes(*since)
                        ),
                        None => {
                            format!("{holder} sent {op} at {} before any replica held the lease", minutes(at_unix_ms))
                        }
                    };
                    if self.reported.insert(holder) {
                        found.push(Violation::safety(names::FENCE, message));
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_holder_may_call() {
        let log = FenceLog::default();
        let mut checker = FenceChecker::new(log.clone());
        log.acquired("a", 1, START_UNIX_MS);
        log.called("a", Operation::RunInstances, START_UNIX_MS + 1);
        assert!(checker.check().is_empty());
        log.acquired("b", 2, START_UNIX_MS + 10_000);
        log.called("b", Operation::DescribeInstances, START_UNIX_MS + 10_001);
        log.called("a", Operation::TerminateInstances, START_UNIX_MS + 12_000);
        log.called("a", Operation::TerminateInstances, START_UNIX_MS + 13_000);
        let found = checker.check();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains("a sent TerminateInstances at t+0m12s, after b took"),
            "{}",
            found[0].message
        );
    }
}
