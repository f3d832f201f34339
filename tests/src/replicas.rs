//! Bridge replicas sharing one ledger (`cargo xtask sim --replicas N`): the in-memory lease
//! table, each replica's clock (which a pause stops) and each replica's view of EC2 (which
//! notes every call it sends, for the `fence` checker).
//!
//! [`SimLeases`] keeps the lease item beside the [`FrameStore`]'s records, with DynamoDB's
//! conditions (see `ledger-dynamodb`): acquiring raises the epoch when the lease is free,
//! expired or the acquirer's own; renewing needs the holder and epoch unchanged; a store opened
//! under a lease refuses every append once the epoch has moved on ([`StoreError::Fenced`]) and
//! every record whose grant and sequence are already stored ([`StoreError::SequenceTaken`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_backend::port::{Ec2Error, Ec2Port, Operation};
use aws_backend::standby::LeaseTable;
use aws_backend::{BackendLedger, DynStore};
use backend_api::{Clock, TokioClock};
use usage_ledger::{Lease, LeaseError, LeaseInfo, LedgerError, StoreError, check_lease_name};

use crate::checkers::fence::FenceLog;
use crate::framestore::FrameStore;
use crate::gated::{Gate, GatedPort};

/// The bridge group the simulation's replicas belong to.
pub const GROUP: &str = "sim";

/// The lease table over a [`FrameStore`], noting each acquisition in the fence log.
pub struct SimLeases {
    store: FrameStore,
    clock: Arc<dyn Clock>,
    log: FenceLog,
}

impl SimLeases {
    /// The lease table of `store`, read with `clock` (the acquiring replica's).
    pub fn new(store: FrameStore, clock: Arc<dyn Clock>, log: FenceLog) -> Self {
        Self { store, clock, log }
    }
}

#[async_trait]
impl LeaseTable for SimLeases {
    fn group(&self) -> &str {
        GROUP
    }

    async fn acquire(&self, holder: &str, duration_ms: u64) -> Result<Lease, LeaseError> {
        check_lease_name("holder", holder)?;
        self.store.reach("acquire the lease")?;
        let now_unix_ms = self.clock.now_unix_ms();
        let lease = self.store.with_lease(|item| {
            let free = item.as_ref().is_none_or(|l| l.expires_unix_ms <= now_unix_ms || l.holder == holder);
            if !free {
                let held = item.clone().expect("a held lease exists");
                return Err(LeaseError::Held { group: GROUP.to_string(), held, now_unix_ms });
            }
            let epoch = item.as_ref().map_or(0, |l| l.epoch) + 1;
            let expires_unix_ms = now_unix_ms.saturating_add(duration_ms);
            *item = Some(LeaseInfo { holder: holder.to_string(), epoch, expires_unix_ms });
            Ok(Lease { group: GROUP.to_string(), holder: holder.to_string(), epoch, expires_unix_ms })
        })?;
        self.log.acquired(&lease.holder, lease.epoch, now_unix_ms);
        Ok(lease)
    }

    async fn renew(&self, lease: &mut Lease, duration_ms: u64) -> Result<(), StoreError> {
        self.store.reach("renew the lease")?;
        let expires_unix_ms = self.clock.now_unix_ms().saturating_add(duration_ms);
        self.store.with_lease(|item| match item {
            Some(l) if l.holder == lease.holder && l.epoch == lease.epoch => {
                l.expires_unix_ms = expires_unix_ms;
                Ok(())
            }
            other => Err(fenced(lease, other.as_ref())),
        })?;
        lease.expires_unix_ms = expires_unix_ms;
        Ok(())
    }

    async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        self.store.reach("release the lease")?;
        self.store.with_lease(|item| match item {
            Some(l) if l.holder == lease.holder && l.epoch == lease.epoch => {
                l.expires_unix_ms = 0;
                Ok(())
            }
            other => Err(fenced(&lease, other.as_ref())),
        })
    }

    async fn holder(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.store.reach("read the lease")?;
        Ok(self.store.with_lease(|item| item.clone()))
    }

    async fn open_ledger(&self, lease: &Lease) -> Result<BackendLedger, LedgerError> {
        self.store.reach("replay")?;
        self.store.open_ledger(DynStore(Box::new(self.store.writing_under(lease.epoch)))).map_err(|reason| {
            LedgerError::Store(StoreError::Remote { store: "the simulation's store".into(), op: "replay", reason })
        })
    }
}

/// The error of a write whose lease `item` no longer is `lease`.
pub fn fenced(lease: &Lease, item: Option<&LeaseInfo>) -> StoreError {
    StoreError::Fenced {
        group: lease.group.clone(),
        epoch: lease.epoch,
        reason: match item {
            Some(now) => format!("{} holds it at epoch {}", now.holder, now.epoch),
            None => "the lease item is gone".to_string(),
        },
    }
}

/// A replica's clock: the simulation's, except that a pause holds every sleep of the replica's
/// tasks until the pause ends, as a stopped process (a VM frozen, a long GC) wakes only then.
/// A pause lands at a task's next sleep: the pacer's wait before a call, a poll's interval, a
/// backoff, the renewal's interval.
#[derive(Debug)]
pub struct ReplicaClock {
    inner: Arc<TokioClock>,
    paused_until_unix_ms: AtomicU64,
}

impl ReplicaClock {
    /// A clock reading `inner`.
    pub fn new(inner: Arc<TokioClock>) -> Arc<Self> {
        Arc::new(Self { inner, paused_until_unix_ms: AtomicU64::new(0) })
    }

    /// Pauses the replica until `until_unix_ms`.
    pub fn pause_until(&self, until_unix_ms: u64) {
        self.paused_until_unix_ms.fetch_max(until_unix_ms, Ordering::SeqCst);
    }
}

#[async_trait]
impl Clock for ReplicaClock {
    fn now_unix_ms(&self) -> u64 {
        self.inner.now_unix_ms()
    }

    async fn sleep_until_unix_ms(&self, deadline_unix_ms: u64) {
        self.inner.sleep_until_unix_ms(deadline_unix_ms).await;
        loop {
            let paused_until = self.paused_until_unix_ms.load(Ordering::SeqCst);
            if self.inner.now_unix_ms() >= paused_until {
                return;
            }
            self.inner.sleep_until_unix_ms(paused_until).await;
        }
    }
}

/// One replica's process's view of EC2: the simulator, with every call noted in the fence log
/// under the holder name of the process that sent it.
pub type ReplicaPort = GatedPort<FenceNote>;

/// The gate of a [`ReplicaPort`]: notes each call, then sends it.
pub struct FenceNote {
    holder: String,
    clock: Arc<dyn Clock>,
    log: FenceLog,
}

impl ReplicaPort {
    /// `inner` as the process `holder` sees it.
    pub fn new(inner: Arc<dyn Ec2Port>, holder: &str, clock: Arc<dyn Clock>, log: FenceLog) -> Self {
        GatedPort::with_gate(inner, FenceNote { holder: holder.to_string(), clock, log })
    }
}

impl Gate for FenceNote {
    async fn pass<T: Send>(
        &self,
        op: Operation,
        call: impl Future<Output = Result<T, Ec2Error>> + Send,
    ) -> Result<T, Ec2Error> {
        self.log.called(&self.holder, op, self.clock.now_unix_ms());
        call.await
    }
}

#[cfg(test)]
mod tests {
    use backend_api::GrantId;
    use usage_ledger::{Event, EventStore, Record};

    use super::*;

    fn record(seq: u64) -> Record {
        Record { grant: GrantId([7; 32]), seq, at_unix_ms: 1, event: Event::GrantSettled { usage: Default::default() } }
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_an_expired_lease_and_fences_the_holder() {
        let clock = Arc::new(TokioClock::starting_at(1_000_000));
        let store = FrameStore::new(None);
        let log = FenceLog::default();
        let table = SimLeases::new(store.clone(), clock.clone(), log.clone());
        let mut first = table.acquire("a", 8_000).await.expect("a free lease");
        assert_eq!(first.epoch, 1);
        let mut writer = store.writing_under(first.epoch);
        writer.append(&[record(0)]).expect("the holder writes");
        // Held: another may not take it, and the holder renews.
        match table.acquire("b", 8_000).await {
            Err(LeaseError::Held { held, .. }) => assert_eq!(held.holder, "a"),
            other => panic!("acquired a held lease: {other:?}"),
        }
        clock.sleep_ms(5_000).await;
        table.renew(&mut first, 8_000).await.expect("the holder renews");
        clock.sleep_ms(7_999).await;
        assert!(table.acquire("b", 8_000).await.is_err(), "the renewal holds to 13 s");
        clock.sleep_ms(1).await;
        let second = table.acquire("b", 8_000).await.expect("an expired lease");
        assert_eq!(second.epoch, 2);
        // The old holder can neither write nor renew; the new one writes, once per sequence.
        assert!(matches!(writer.append(&[record(1)]), Err(StoreError::Fenced { epoch: 1, .. })));
        assert!(matches!(table.renew(&mut first, 8_000).await, Err(StoreError::Fenced { .. })));
        let mut new_writer = store.writing_under(second.epoch);
        assert!(matches!(new_writer.append(&[record(0)]), Err(StoreError::SequenceTaken { seq: 0, .. })));
        new_writer.append(&[record(1)]).expect("the new holder writes");
        assert_eq!(store.records().expect("decodes").len(), 2);
        assert_eq!(log.acquisitions(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_a_replicas_sleeps_until_it_ends() {
        let base = Arc::new(TokioClock::starting_at(1_000_000));
        let clock = ReplicaClock::new(base.clone());
        clock.pause_until(1_010_000);
        clock.sleep_ms(1_000).await;
        assert_eq!(clock.now_unix_ms(), 1_010_000);
        clock.sleep_ms(1_000).await;
        assert_eq!(clock.now_unix_ms(), 1_011_000, "after the pause, sleeps are as long as asked");
    }
}
