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
mod tests;
