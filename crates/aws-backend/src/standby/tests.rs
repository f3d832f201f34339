//! The lease protocol's tests: acquisition, renewal, fencing, on a table in memory.

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
            other => Err(StoreError::Fenced { group: "g".into(), epoch: lease.epoch, reason: format!("{other:?}") }),
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
