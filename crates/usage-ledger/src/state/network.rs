//! Network metering: the book of CloudWatch's figures per instance (`NetworkMeasured`,
//! `NetworkUnknown`, and their amendments after settlement) and the samples of older ledgers
//! (`NetworkSampled`).

use super::{ApplyError, GrantState, Impossible, LiveGrant};
use crate::event::Record;

/// The network figures of a grant's instances (see `NetworkMeasured` and `NetworkUnknown`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct NetworkBook {
    /// Where the instances ran: a settled grant keeps it to finish its measurement.
    region: String,
    entries: Vec<NetworkEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NetworkEntry {
    instance_id: String,
    window_start_unix_ms: u64,
    window_end_unix_ms: u64,
    figure: NetworkFigure,
}

/// What the ledger knows of one instance's network bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkFigure {
    /// CloudWatch could not answer; billed as 0 until measured.
    Unknown,
    /// Measured when the instance ended, before CloudWatch had published its last minutes.
    Provisional(u64),
    /// Measured after the publication lag: final.
    Complete(u64),
}

impl NetworkFigure {
    fn bytes(self) -> u64 {
        match self {
            NetworkFigure::Unknown => 0,
            NetworkFigure::Provisional(b) | NetworkFigure::Complete(b) => b,
        }
    }
}

/// How final a grant's network figure is, over all its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetworkStatus {
    /// Every instance's figure is complete (or the grant recorded none: nothing launched, or
    /// a ledger written before `NetworkMeasured`).
    Complete,
    /// Some figure is provisional; none is unknown.
    Provisional,
    /// CloudWatch could not answer for some instance yet.
    Unknown,
}

/// An instance whose network figure is not complete yet, with the window to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingNetwork {
    /// The region it ran in.
    pub region: String,
    /// The instance.
    pub instance_id: String,
    /// Window start (its launch), unix ms.
    pub window_start_unix_ms: u64,
    /// Window end (when it was seen gone), unix ms.
    pub window_end_unix_ms: u64,
    /// What is recorded so far.
    pub figure: NetworkFigure,
}

impl GrantState {
    /// How final the grant's network figure is.
    pub fn network_status(&self) -> NetworkStatus {
        self.network.as_ref().map_or(NetworkStatus::Complete, |b| {
            b.entries
                .iter()
                .map(|e| match e.figure {
                    NetworkFigure::Unknown => NetworkStatus::Unknown,
                    NetworkFigure::Provisional(_) => NetworkStatus::Provisional,
                    NetworkFigure::Complete(_) => NetworkStatus::Complete,
                })
                .max()
                .unwrap_or(NetworkStatus::Complete)
        })
    }

    /// The grant's instances whose network figure is not complete yet.
    pub fn network_pending(&self) -> Vec<PendingNetwork> {
        let Some(book) = &self.network else { return Vec::new() };
        book.entries
            .iter()
            .filter(|e| !matches!(e.figure, NetworkFigure::Complete(_)))
            .map(|e| PendingNetwork {
                region: book.region.clone(),
                instance_id: e.instance_id.clone(),
                window_start_unix_ms: e.window_start_unix_ms,
                window_end_unix_ms: e.window_end_unix_ms,
                figure: e.figure,
            })
            .collect()
    }

    /// A settled grant whose every figure is complete keeps only their sum.
    pub(super) fn compact_network(&mut self) {
        if self.live.is_none()
            && let Some(book) = &self.network
            && book.entries.iter().all(|e| matches!(e.figure, NetworkFigure::Complete(_)))
        {
            self.settled_usage.network_bytes = self.settled_usage.network_bytes.saturating_add(book.total());
            self.network = None;
        }
    }

    /// Records `figure` for `instance_id`, replacing what was known unless `only_if_absent`.
    fn set_network(
        network: &mut Option<Box<NetworkBook>>,
        region: &str,
        instance_id: &str,
        window: (u64, u64),
        figure: NetworkFigure,
        only_if_absent: bool,
    ) {
        let book =
            network.get_or_insert_with(|| Box::new(NetworkBook { region: region.to_string(), entries: Vec::new() }));
        match book.entries.iter_mut().find(|e| e.instance_id == instance_id) {
            Some(_) if only_if_absent => {}
            Some(entry) => {
                (entry.window_start_unix_ms, entry.window_end_unix_ms) = window;
                entry.figure = figure;
            }
            None => book.entries.push(NetworkEntry {
                instance_id: instance_id.to_string(),
                window_start_unix_ms: window.0,
                window_end_unix_ms: window.1,
                figure,
            }),
        }
    }

    /// `NetworkMeasured` after settlement: an amendment, only a complete figure, only for an
    /// instance whose figure is still open.
    pub(super) fn amend_network(
        &mut self,
        record: &Record,
        instance_id: &str,
        bytes: u64,
        window: (u64, u64),
        complete: bool,
    ) -> Result<(), ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        let open = self.network_pending().iter().any(|p| p.instance_id == *instance_id);
        if !complete || !open {
            return fail(Impossible::AfterSettlement);
        }
        if window.1 < window.0 {
            return fail(Impossible::BackwardsWindow { start_unix_ms: window.0, end_unix_ms: window.1 });
        }
        Self::set_network(&mut self.network, "", instance_id, window, NetworkFigure::Complete(bytes), false);
        self.compact_network();
        Ok(())
    }
}

impl LiveGrant {
    /// `NetworkSampled` (older ledgers): bytes added to the attempt's usage.
    pub(super) fn network_sampled(
        &mut self,
        record: &Record,
        instance_id: &str,
        bytes: (u64, u64),
        window: (u64, u64),
    ) -> Result<(), ApplyError> {
        if !self.ever_launched.iter().any(|id| id == instance_id) {
            return Err(ApplyError::new(
                record,
                Impossible::InstanceNeverLaunched { instance_id: instance_id.to_string() },
            ));
        }
        if window.1 < window.0 {
            return Err(ApplyError::new(
                record,
                Impossible::BackwardsWindow { start_unix_ms: window.0, end_unix_ms: window.1 },
            ));
        }
        self.network_bytes = self.network_bytes.saturating_add(bytes.0).saturating_add(bytes.1);
        Ok(())
    }
}

/// `NetworkMeasured` (a provisional or complete figure) or, with `figure` `None`,
/// `NetworkUnknown` for an instance of a live grant.
pub(super) fn record_network(
    live: &LiveGrant,
    network: &mut Option<Box<NetworkBook>>,
    record: &Record,
    instance_id: &str,
    window: (u64, u64),
    figure: Option<NetworkFigure>,
) -> Result<(), ApplyError> {
    check_network(live, network.as_deref(), record, instance_id, window.0, window.1)?;
    match figure {
        Some(figure) => GrantState::set_network(network, &live.region, instance_id, window, figure, false),
        // A figure already known is not forgotten because a later query failed.
        None => GrantState::set_network(network, &live.region, instance_id, window, NetworkFigure::Unknown, true),
    }
    Ok(())
}

/// A network figure must name an instance the grant launched and a window that does not end
/// before it starts.
/// An earlier attempt's instance is known by its entry in the book.
fn check_network(
    live: &LiveGrant,
    book: Option<&NetworkBook>,
    record: &Record,
    instance_id: &str,
    start: u64,
    end: u64,
) -> Result<(), ApplyError> {
    let earlier = book.is_some_and(|b| b.entries.iter().any(|e| e.instance_id == instance_id));
    if !earlier && !live.ever_launched.iter().any(|id| id == instance_id) {
        return Err(ApplyError::new(
            record,
            Impossible::InstanceNeverLaunched { instance_id: instance_id.to_string() },
        ));
    }
    if end < start {
        return Err(ApplyError::new(record, Impossible::BackwardsWindow { start_unix_ms: start, end_unix_ms: end }));
    }
    Ok(())
}

impl NetworkBook {
    pub(super) fn total(&self) -> u64 {
        self.entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.figure.bytes()))
    }
}
