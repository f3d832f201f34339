//! Fenced ownership of a shared ledger: a bridge waits as a standby until it holds its group's
//! lease, then acts, renewing the lease, and stops acting the moment it may have lost it.
//!
//! The store keeps the lease item and refuses every append carrying an older epoch than the
//! item's (see `docs/ARCHITECTURE.md`, "Fenced ownership"). EC2 takes no epoch, so the bridge
//! fences its own calls: a [`Tenure`] says until when, by this process's clock, the lease is
//! surely still ours, and the pacer refuses every EC2 call past that time or once the lease is
//! known lost. A standby acquires only after the lease's expiry (by its clock), and the holder
//! stops acting [`LeaseTimes::margin_ms`] before it (by its own): with clocks that drift apart
//! by less than the margin over one lease, the two never act at once. A holder renews from the
//! moment it acquires, through its replay of the ledger and its start-up ([`renewing`]), then
//! for as long as it acts ([`keep_lease`]), so a replay or a start-up longer than the lease
//! keeps it. A holder that could not renew in time, or whose append or renewal the store
//! fenced, stops for good: its process exits (the simulation drops it), and whatever it left in
//! flight is the next holder's recovery's to finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use backend_api::Clock;
use usage_ledger::{Lease, LeaseError, LeaseInfo, LedgerError, StoreError};

use crate::backend::BackendLedger;
use crate::pacing::lock;

/// The times of the lease protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How long an acquisition or a renewal holds the lease.
    pub duration_ms: u64,
    /// How often the holder renews: this long after the last renewal that got through (or the
    /// acquisition).
    pub renew_every_ms: u64,
    /// How long before its lease expires, by its own clock, a holder that could not renew stops
    /// acting: the most two bridges' clocks may drift apart during one lease.
    pub margin_ms: u64,
    /// How often a standby asks for the lease, and how soon a holder tries a failed renewal
    /// again.
    pub poll_ms: u64,
}

impl LeaseTimes {
    /// The times for a lease of `duration_ms`: renewed every third of it, a failed renewal tried
    /// again every sixth, a sixth of it as the margin, and a standby asking every sixth. A holder
    /// whose renewals fail thus tries three times (at a third, a half and two thirds of the
    /// lease after the last one that got through) and stops acting at five sixths.
    pub fn for_duration(duration_ms: u64) -> Self {
        Self { duration_ms, renew_every_ms: duration_ms / 3, margin_ms: duration_ms / 6, poll_ms: duration_ms / 6 }
    }
}

/// The store of a bridge group's lease and shared ledger: `ledger-dynamodb`'s table in
/// production, an in-memory one in the simulation.
#[async_trait]
pub trait LeaseTable: Send + Sync {
    /// The bridge group.
    fn group(&self) -> &str;

    /// Acquires the lease for `holder` for `duration_ms` (raising the epoch), when it is free,
    /// expired, or already `holder`'s.
    async fn acquire(&self, holder: &str, duration_ms: u64) -> Result<Lease, LeaseError>;

    /// Extends `lease` to `duration_ms` from now if it is still this holder's at its epoch;
    /// [`StoreError::Fenced`] when another holder has acquired it.
    async fn renew(&self, lease: &mut Lease, duration_ms: u64) -> Result<(), StoreError>;

    /// Gives `lease` up, so a standby may take over at once.
    async fn release(&self, lease: Lease) -> Result<(), StoreError>;

    /// Who holds the lease now, or `None` when nobody ever has.
    async fn holder(&self) -> Result<Option<LeaseInfo>, StoreError>;

    /// Replays the ledger and opens it for appends under `lease` (acquire first: a replay made
    /// before could miss the previous holder's last appends).
    async fn open_ledger(&self, lease: &Lease) -> Result<BackendLedger, LedgerError>;
}

/// What a holder knows of its own lease: until when it may act, or that it lost it. Shared by
/// the pacer (which refuses EC2 calls once it may not act) and the renewing task.
#[derive(Debug)]
pub struct Tenure {
    holder: String,
    epoch: u64,
    margin_ms: u64,
    act_until_unix_ms: AtomicU64,
    /// When the last acquisition or renewal that got through was sent.
    secured_unix_ms: AtomicU64,
    /// When the holder renews next: [`LeaseTimes::renew_every_ms`] after the last renewal that
    /// got through, [`LeaseTimes::poll_ms`] after one that failed.
    renew_at_unix_ms: AtomicU64,
    lost: std::sync::Mutex<Option<String>>,
}

impl Tenure {
    /// The tenure of a lease just acquired.
    pub fn new(lease: &Lease, times: &LeaseTimes) -> Arc<Self> {
        let acquired_unix_ms = lease.expires_unix_ms.saturating_sub(times.duration_ms);
        Arc::new(Self {
            holder: lease.holder.clone(),
            epoch: lease.epoch,
            margin_ms: times.margin_ms,
            act_until_unix_ms: AtomicU64::new(lease.expires_unix_ms.saturating_sub(times.margin_ms)),
            secured_unix_ms: AtomicU64::new(acquired_unix_ms),
            renew_at_unix_ms: AtomicU64::new(acquired_unix_ms.saturating_add(times.renew_every_ms)),
            lost: std::sync::Mutex::new(None),
        })
    }

    /// The holder's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this holder may act at `now_unix_ms`; why not, when it may not.
    pub fn may_act(&self, now_unix_ms: u64) -> Result<(), String> {
        if let Some(why) = lock(&self.lost).as_ref() {
            return Err(why.clone());
        }
        let until = self.act_until_unix_ms.load(Ordering::SeqCst);
        if now_unix_ms >= until {
            return Err(format!(
                "the lease (epoch {}) was last renewed to end at unix ms {}, and this bridge stops acting {} ms before that; it is now {now_unix_ms}",
                self.epoch,
                until + self.margin_ms,
                self.margin_ms
            ));
        }
        Ok(())
    }

    /// Records a renewal sent at `sent_unix_ms` (the store measured the new expiry from no
    /// earlier than that).
    fn renewed(&self, sent_unix_ms: u64, times: &LeaseTimes) {
        let until = sent_unix_ms.saturating_add(times.duration_ms).saturating_sub(times.margin_ms);
        self.act_until_unix_ms.fetch_max(until, Ordering::SeqCst);
        self.secured_unix_ms.fetch_max(sent_unix_ms, Ordering::SeqCst);
        self.renew_at_unix_ms.store(sent_unix_ms.saturating_add(times.renew_every_ms), Ordering::SeqCst);
    }

    /// Records a renewal sent at `sent_unix_ms` that did not get through (the store could not
    /// be reached): the next try is a poll later.
    fn renewal_failed(&self, sent_unix_ms: u64, times: &LeaseTimes) {
        self.renew_at_unix_ms.store(sent_unix_ms.saturating_add(times.poll_ms.max(1)), Ordering::SeqCst);
    }

    /// When the holder renews next.
    fn renew_at_unix_ms(&self) -> u64 {
        self.renew_at_unix_ms.load(Ordering::SeqCst)
    }

    /// Until when this holder may act, unless it renews: its lease's end less the margin.
    pub fn acts_until_unix_ms(&self) -> u64 {
        self.act_until_unix_ms.load(Ordering::SeqCst)
    }

    /// When the last acquisition or renewal that got through was sent.
    pub fn secured_unix_ms(&self) -> u64 {
        self.secured_unix_ms.load(Ordering::SeqCst)
    }

    /// Marks the lease lost, for `why` (the first reason stays). Returns true the first time.
    pub fn lose(&self, why: impl Into<String>) -> bool {
        let mut lost = lock(&self.lost);
        if lost.is_some() {
            return false;
        }
        *lost = Some(why.into());
        true
    }

    /// Why the lease is lost, once it is.
    pub fn lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }
}

/// A lease acquired and the ledger replayed under it: what a bridge starts from.
pub struct Holding {
    /// The lease, as last renewed.
    pub lease: Lease,
    /// When this process acquired the lease, by its clock.
    pub acquired_unix_ms: u64,
    /// Its tenure, for the backend's pacer.
    pub tenure: Arc<Tenure>,
    /// The ledger, replayed after the lease was acquired.
    pub ledger: BackendLedger,
}

/// Waits as a standby until `holder` acquires the lease of `table`'s group, then replays the
/// ledger under it ([`replay_under`], renewing the lease meanwhile). Asks every
/// [`LeaseTimes::poll_ms`]; logs who holds the lease when that changes. Fails only when the
/// lease or the ledger cannot be used at all (a bad name, a ledger that does not replay), or
/// when the lease is lost during the replay.
pub async fn wait_for_lease(
    table: &dyn LeaseTable,
    holder: &str,
    times: &LeaseTimes,
    clock: &dyn Clock,
) -> anyhow::Result<Holding> {
    let mut last_seen: Option<(String, u64)> = None;
    let lease = loop {
        match table.acquire(holder, times.duration_ms).await {
            Ok(lease) => break lease,
            Err(LeaseError::Held { held, .. }) => {
                let seen = Some((held.holder.clone(), held.epoch));
                if seen != last_seen {
                    tracing::info!(
                        group = table.group(),
                        holder = %held.holder,
                        epoch = held.epoch,
                        expires_unix_ms = held.expires_unix_ms,
                        "standing by: another bridge holds the ledger lease"
                    );
                    last_seen = seen;
                }
            }
            Err(LeaseError::Store(err)) => {
                tracing::warn!(group = table.group(), error = %err, "could not ask for the ledger lease; asking again");
            }
            Err(err @ LeaseError::InvalidName { .. }) => return Err(err.into()),
        }
        clock.sleep_ms(times.poll_ms.max(1)).await;
    };
    tracing::info!(
        group = table.group(),
        holder,
        epoch = lease.epoch,
        "acquired the ledger lease: replaying the ledger"
    );
    replay_under(table, lease, times, clock).await
}

/// Replays the ledger of `table` under `lease`, just acquired, renewing the lease meanwhile
/// (a long ledger's replay may outlast it): what a bridge that took the lease starts from.
/// Releases the lease when the ledger does not replay, so a standby need not wait it out; fails,
/// naming why, when the lease is lost during the replay.
pub async fn replay_under(
    table: &dyn LeaseTable,
    mut lease: Lease,
    times: &LeaseTimes,
    clock: &dyn Clock,
) -> anyhow::Result<Holding> {
    let acquired_unix_ms = lease.expires_unix_ms.saturating_sub(times.duration_ms);
    let tenure = Tenure::new(&lease, times);
    let acquired = lease.clone();
    match renewing(table, &mut lease, &tenure, times, clock, table.open_ledger(&acquired)).await {
        Ok(Ok(ledger)) => Ok(Holding { lease, acquired_unix_ms, tenure, ledger }),
        Ok(Err(err)) => {
            // Let a standby try rather than make it wait out the lease.
            if let Err(release) = table.release(lease).await {
                tracing::warn!(error = %release, "could not release the lease after failing to replay the ledger");
            }
            Err(anyhow::Error::new(err).context("replaying the shared ledger after acquiring its lease"))
        }
        Err(why) => Err(anyhow::anyhow!(
            "lost the ledger lease of bridge group {} (epoch {}) while replaying the ledger: {why}",
            table.group(),
            lease.epoch
        )),
    }
}

/// Runs `work` while renewing `lease` on `tenure`'s schedule, as a holder must between acquiring
/// and [`keep_lease`]: its replay and its start-up (the backend asks EC2 for each region's
/// instance types and subnets, paced) may outlast the lease. Returns what `work` returned, with
/// `lease` as last renewed for [`keep_lease`] to carry on; or, when the lease is lost first, why
/// (the tenure is then marked lost, so nothing built under it acts, and `work` is dropped).
pub async fn renewing<T>(
    table: &dyn LeaseTable,
    lease: &mut Lease,
    tenure: &Tenure,
    times: &LeaseTimes,
    clock: &dyn Clock,
    work: impl Future<Output = T>,
) -> Result<T, String> {
    // Biased, as the simulation needs (tokio's select! otherwise draws its order at random).
    tokio::select! {
        biased;
        out = work => Ok(out),
        why = renew_until_lost(table, lease, tenure, times, clock) => {
            tenure.lose(why.clone());
            Err(why)
        }
    }
}

/// Renews `lease` [`LeaseTimes::renew_every_ms`] after the last renewal that got through (or
/// the acquisition: the schedule [`renewing`] kept carries on), and tries a renewal that failed
/// again [`LeaseTimes::poll_ms`] later, for as long as it holds; returns why it stopped holding:
/// the store fenced a renewal or an append (another bridge took over), or the lease ran out by
/// this process's clock before a renewal got through (a pause, or a store that failed for too
/// long). The caller then stops acting (see [`crate::AwsBackend::lose_lease`]).
pub async fn keep_lease(
    table: &dyn LeaseTable,
    mut lease: Lease,
    tenure: &Tenure,
    times: &LeaseTimes,
    clock: &dyn Clock,
) -> String {
    renew_until_lost(table, &mut lease, tenure, times, clock).await
}

/// [`keep_lease`]'s loop. Its schedule lives in `tenure`, so a loop dropped at an await and
/// started again carries it on (a renewal in flight when it was dropped is sent again at once).
async fn renew_until_lost(
    table: &dyn LeaseTable,
    lease: &mut Lease,
    tenure: &Tenure,
    times: &LeaseTimes,
    clock: &dyn Clock,
) -> String {
    loop {
        clock.sleep_until_unix_ms(tenure.renew_at_unix_ms()).await;
        let now = clock.now_unix_ms();
        if let Err(why) = tenure.may_act(now) {
            return why;
        }
        match table.renew(lease, times.duration_ms).await {
            Ok(()) => tenure.renewed(now, times),
            Err(err @ StoreError::Fenced { .. }) => return err.to_string(),
            Err(err) => {
                tenure.renewal_failed(now, times);
                crate::telemetry::lease_renewal_failed();
                tracing::warn!(
                    group = table.group(),
                    error = %err,
                    retry_in_ms = times.poll_ms,
                    "could not renew the ledger lease; trying again"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use backend_api::TokioClock;
    use usage_ledger::{Ledger, MemoryStore};

    use super::*;
    use crate::DynStore;

    const START_UNIX_MS: u64 = 1_000_000;

    /// A lease table in memory on the test's clock, with DynamoDB's conditions. Its replay takes
    /// `replay_ms`; its next `failing_renewals` renewals fail as an unreachable store's would;
    /// it notes when each renewal came and whether it got through.
    struct MemLeases {
        clock: Arc<TokioClock>,
        replay_ms: u64,
        item: Mutex<Option<LeaseInfo>>,
        failing_renewals: AtomicU64,
        renewals: Mutex<Vec<(u64, bool)>>,
    }

    impl MemLeases {
        fn new(clock: Arc<TokioClock>, replay_ms: u64, failing_renewals: u64) -> Self {
            Self {
                clock,
                replay_ms,
                item: Mutex::new(None),
                failing_renewals: AtomicU64::new(failing_renewals),
                renewals: Mutex::new(Vec::new()),
            }
        }

        /// Each renewal's time, as ms after the start, and whether it got through.
        fn renewals(&self) -> Vec<(u64, bool)> {
            lock(&self.renewals).iter().map(|&(at, ok)| (at - START_UNIX_MS, ok)).collect()
        }
    }

    #[async_trait]
    impl LeaseTable for MemLeases {
        fn group(&self) -> &str {
            "g"
        }

        async fn acquire(&self, holder: &str, duration_ms: u64) -> Result<Lease, LeaseError> {
            let now_unix_ms = self.clock.now_unix_ms();
            let mut item = lock(&self.item);
            if let Some(held) = item.as_ref().filter(|l| l.expires_unix_ms > now_unix_ms && l.holder != holder) {
                return Err(LeaseError::Held { group: "g".into(), held: held.clone(), now_unix_ms });
            }
            let epoch = item.as_ref().map_or(0, |l| l.epoch) + 1;
            let expires_unix_ms = now_unix_ms + duration_ms;
            *item = Some(LeaseInfo { holder: holder.into(), epoch, expires_unix_ms });
            Ok(Lease { group: "g".into(), holder: holder.into(), epoch, expires_unix_ms })
        }

        async fn renew(&self, lease: &mut Lease, duration_ms: u64) -> Result<(), StoreError> {
            let now_unix_ms = self.clock.now_unix_ms();
            let failing = self.failing_renewals.load(Ordering::SeqCst) > 0;
            lock(&self.renewals).push((now_unix_ms, !failing));
            if failing {
                self.failing_renewals.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Remote { store: "memory".into(), op: "renew", reason: "unreachable".into() });
            }
            match lock(&self.item).as_mut() {
                Some(l) if l.holder == lease.holder && l.epoch == lease.epoch => {
                    l.expires_unix_ms = now_unix_ms + duration_ms;
                    lease.expires_unix_ms = l.expires_unix_ms;
                    Ok(())
                }
                other => {
                    Err(StoreError::Fenced { group: "g".into(), epoch: lease.epoch, reason: format!("{other:?}") })
                }
            }
        }

        async fn release(&self, _lease: Lease) -> Result<(), StoreError> {
            unreachable!("these tests release nothing")
        }

        async fn holder(&self) -> Result<Option<LeaseInfo>, StoreError> {
            Ok(lock(&self.item).clone())
        }

        async fn open_ledger(&self, _lease: &Lease) -> Result<BackendLedger, LedgerError> {
            self.clock.sleep_ms(self.replay_ms).await;
            Ledger::open(DynStore(Box::new(MemoryStore::new())), Vec::new())
        }
    }

    /// A standby that asks for the lease every `poll_ms` until it acquires it.
    async fn stand_by(table: &MemLeases, holder: &str, times: &LeaseTimes) -> Lease {
        loop {
            if let Ok(lease) = table.acquire(holder, times.duration_ms).await {
                return lease;
            }
            table.clock.sleep_ms(times.poll_ms).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_slower_than_the_lease_keeps_it() {
        // Given a 6 s lease and a ledger whose replay takes twice that, and a standby asking.
        let times = LeaseTimes::for_duration(6_000);
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let table = MemLeases::new(clock.clone(), 2 * times.duration_ms, 0);
        let standby = stand_by(&table, "b", &times);
        tokio::pin!(standby);

        // When A acquires the free lease and replays.
        let holding = tokio::select! {
            biased;
            holding = wait_for_lease(&table, "a", &times, clock.as_ref()) => holding.expect("A takes the free lease"),
            taken = &mut standby => panic!(
                "B acquired the lease (epoch {}) {} ms after the start, while A was replaying",
                taken.epoch,
                clock.now_unix_ms() - START_UNIX_MS
            ),
        };

        // Then A still holds its lease after the replay, and may act.
        let now = clock.now_unix_ms();
        assert_eq!(now - START_UNIX_MS, 2 * times.duration_ms, "the replay takes twice the lease");
        assert_eq!(holding.tenure.may_act(now), Ok(()));
        let held = table.holder().await.expect("reads").expect("held");
        assert_eq!((held.holder.as_str(), held.epoch), ("a", 1), "{held:?}");
        assert!(held.expires_unix_ms > now, "A's lease ran out during its replay: {held:?}, now {now}");
        assert_eq!(holding.lease.expires_unix_ms, held.expires_unix_ms, "the holding carries the renewed lease");
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_up_slower_than_the_lease_keeps_it_and_the_schedule_carries_on() {
        // Given A took the lease and replayed in 1 s, and a standby asking.
        let times = LeaseTimes::for_duration(6_000);
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let table = MemLeases::new(clock.clone(), 1_000, 0);
        let mut holding = wait_for_lease(&table, "a", &times, clock.as_ref()).await.expect("A takes the free lease");
        assert_eq!(holding.acquired_unix_ms, START_UNIX_MS);
        let standby = stand_by(&table, "b", &times);
        tokio::pin!(standby);

        // When A's start-up takes twice the lease, under `renewing`.
        let start_up = clock.sleep_ms(2 * times.duration_ms);
        let started = tokio::select! {
            biased;
            started = renewing(&table, &mut holding.lease, &holding.tenure, &times, clock.as_ref(), start_up) => started,
            taken = &mut standby => panic!("B acquired the lease (epoch {}) during A's start-up", taken.epoch),
        };

        // Then A still holds its lease and may act.
        let now = clock.now_unix_ms();
        assert_eq!(now - START_UNIX_MS, 13_000);
        assert_eq!(started, Ok(()));
        assert_eq!(holding.tenure.may_act(now), Ok(()));

        // When A then keeps its lease for 3.5 s.
        tokio::select! {
            biased;
            why = keep_lease(&table, holding.lease, &holding.tenure, &times, clock.as_ref()) => panic!("A lost its lease: {why}"),
            taken = &mut standby => panic!("B acquired the lease (epoch {}) while A kept it", taken.epoch),
            () = clock.sleep_ms(3_500) => {}
        }

        // Then A renewed every 2 s from its acquisition on: through the replay, the start-up
        // and after it.
        let renewals: Vec<u64> = table.renewals().into_iter().map(|(at, ok)| if ok { at } else { 0 }).collect();
        assert_eq!(renewals, [2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 14_000, 16_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lost_during_the_start_up_stops_it_and_marks_the_tenure_lost() {
        // Given A holds the lease, and B took it over behind A's back (A's clock was stopped).
        let times = LeaseTimes::for_duration(6_000);
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let table = MemLeases::new(clock.clone(), 0, 0);
        let mut holding = wait_for_lease(&table, "a", &times, clock.as_ref()).await.expect("A takes the free lease");
        lock(&table.item).as_mut().expect("held").expires_unix_ms = START_UNIX_MS;
        table.acquire("b", times.duration_ms).await.expect("B takes the expired lease");

        // When A starts up. Then its first renewal is fenced, the start-up is dropped, and A may
        // not act.
        let start_up = async {
            clock.sleep_ms(2 * times.duration_ms).await;
            "started"
        };
        let started = renewing(&table, &mut holding.lease, &holding.tenure, &times, clock.as_ref(), start_up).await;
        let why = started.expect_err("the lease was fenced");
        assert_eq!(clock.now_unix_ms() - START_UNIX_MS, times.renew_every_ms, "{why}");
        assert!(why.contains("epoch 1"), "{why}");
        assert_eq!(holding.tenure.may_act(clock.now_unix_ms()), Err(why));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_tried_again_a_poll_later() {
        // Given a 6 s lease (renewed every 2 s, a poll of 1 s) whose first renewal fails.
        let times = LeaseTimes::for_duration(6_000);
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let table = MemLeases::new(clock.clone(), 0, 1);
        let holding = wait_for_lease(&table, "a", &times, clock.as_ref()).await.expect("A takes the free lease");

        // When A keeps its lease for 5.5 s.
        tokio::select! {
            biased;
            why = keep_lease(&table, holding.lease, &holding.tenure, &times, clock.as_ref()) => panic!("A lost its lease: {why}"),
            () = clock.sleep_ms(5_500) => {}
        }

        // Then the failed renewal at 2 s is tried again at 3 s, a poll later; the next renewal
        // follows a third of the lease after the one that got through.
        assert_eq!(
            table.renewals(),
            [(2_000, false), (3_000, true), (5_000, true)],
            "renewals (ms after acquiring, got through)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_renewals_all_fail_stops_at_five_sixths_of_its_lease() {
        // Given a 6 s lease whose renewals all fail.
        let times = LeaseTimes::for_duration(6_000);
        let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
        let table = MemLeases::new(clock.clone(), 0, u64::MAX);
        let holding = wait_for_lease(&table, "a", &times, clock.as_ref()).await.expect("A takes the free lease");

        // When A keeps its lease. Then it tries at 2, 3 and 4 s, and gives up at 5 s, when its
        // tenure ends.
        let why = keep_lease(&table, holding.lease, &holding.tenure, &times, clock.as_ref()).await;
        assert_eq!(clock.now_unix_ms() - START_UNIX_MS, 5_000, "{why}");
        assert!(why.contains("stops acting 1000 ms before"), "{why}");
        assert_eq!(table.renewals(), [(2_000, false), (3_000, false), (4_000, false)]);
    }

    fn lease(expires_unix_ms: u64) -> Lease {
        Lease { group: "g".into(), holder: "h".into(), epoch: 3, expires_unix_ms }
    }

    #[test]
    fn a_holder_stops_acting_a_margin_before_its_lease_ends() {
        let times = LeaseTimes::for_duration(30_000);
        let tenure = Tenure::new(&lease(100_000), &times);
        assert!(tenure.may_act(94_999).is_ok());
        let why = tenure.may_act(95_000).expect_err("past the margin");
        assert!(why.contains("epoch 3") && why.contains("100000"), "{why}");
        tenure.renewed(90_000, &times);
        assert!(tenure.may_act(114_999).is_ok(), "a renewal sent at 90 s holds to 120 s less the margin");
        assert!(tenure.may_act(115_000).is_err());
    }

    #[test]
    fn a_lost_lease_stays_lost_with_its_first_reason() {
        let times = LeaseTimes::for_duration(30_000);
        let tenure = Tenure::new(&lease(100_000), &times);
        assert!(tenure.lose("fenced by epoch 4"));
        assert!(!tenure.lose("ran out"));
        tenure.renewed(90_000, &times);
        assert_eq!(tenure.may_act(1).expect_err("lost"), "fenced by epoch 4");
    }
}
