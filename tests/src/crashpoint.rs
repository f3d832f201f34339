//! A port that "crashes" the backend at a chosen EC2 call: the call's effect happens (or not),
//! and its answer never comes back. Dropping the backend then is a crash at that await point,
//! the way a process dies between sending a request and recording its result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_backend::port::{Ec2Error, Ec2Port, Operation};

use crate::gated::{Gate, GatedPort};

/// Where the crash happens.
#[derive(Clone, Copy, Debug)]
pub enum CrashPoint {
    /// At the n-th call (0-based) of any operation.
    Call(u64),
    /// At the first call of this operation.
    Operation(Operation),
    /// After the first call of this operation that succeeds, whatever `effect_first` says: a
    /// crash known to follow the call's effect (a call EC2 refused had none).
    Effect(Operation),
}

/// Forwards to `inner` until the crash point, whose call hangs forever, after its effect when
/// `effect_first` is set.
pub type CrashingPort = GatedPort<CrashGate>;

/// The gate of a [`CrashingPort`].
pub struct CrashGate {
    crash_at: CrashPoint,
    effect_first: bool,
    calls: AtomicU64,
    armed: AtomicBool,
    crashed: AtomicBool,
}

impl CrashingPort {
    /// A port that crashes at the `crash_at`-th call (0-based).
    pub fn new(inner: Arc<dyn Ec2Port>, crash_at: CrashPoint, effect_first: bool) -> Self {
        GatedPort::with_gate(
            inner,
            CrashGate {
                crash_at,
                effect_first,
                calls: AtomicU64::new(0),
                armed: AtomicBool::new(true),
                crashed: AtomicBool::new(false),
            },
        )
    }

    /// A port that forwards everything until [`CrashingPort::arm`] is called (so that a backend
    /// can be built over it first); calls are counted from then on.
    pub fn disarmed(inner: Arc<dyn Ec2Port>, crash_at: CrashPoint, effect_first: bool) -> Self {
        let port = Self::new(inner, crash_at, effect_first);
        port.gate().armed.store(false, Ordering::SeqCst);
        port
    }

    /// Starts counting calls towards the crash point.
    pub fn arm(&self) {
        self.gate().calls.store(0, Ordering::SeqCst);
        self.gate().armed.store(true, Ordering::SeqCst);
    }

    /// Calls counted since the port was armed.
    pub fn calls(&self) -> u64 {
        self.gate().calls.load(Ordering::SeqCst)
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.gate().crashed()
    }
}

impl CrashGate {
    fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }
}

impl Gate for CrashGate {
    async fn pass<T: Send>(
        &self,
        op: Operation,
        call: impl std::future::Future<Output = Result<T, Ec2Error>> + Send,
    ) -> Result<T, Ec2Error> {
        if !self.armed.load(Ordering::SeqCst) {
            return call.await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let hit = match self.crash_at {
            CrashPoint::Call(at) => n == at,
            CrashPoint::Operation(at) => at == op && !self.crashed(),
            CrashPoint::Effect(at) => {
                if at != op || self.crashed() {
                    return call.await;
                }
                // A refused call had no effect: the crash waits for one that has.
                call.await?;
                self.crashed.store(true, Ordering::SeqCst);
                return std::future::pending().await;
            }
        };
        if !hit || self.crashed() {
            return call.await;
        }
        self.crashed.store(true, Ordering::SeqCst);
        if self.effect_first {
            let _ = call.await;
        }
        std::future::pending().await
    }
}
