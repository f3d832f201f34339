//! `Terminations`: who may send TerminateInstances for an instance now (one caller at a time,
//! nobody once EC2 accepted it), and the instances of a region gathered into one call.

use std::collections::BTreeMap;
use std::sync::Mutex;

use backend_api::RegionLabel;
use tokio::sync::oneshot;

use crate::pacing::lock;
use crate::port::Ec2Error;

/// Where TerminateInstances stands for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// A caller is sending it.
    InFlight,
    /// EC2 accepted it.
    Accepted,
}

/// What became of an instance gathered into a shared TerminateInstances.
#[derive(Debug)]
pub(crate) enum Together {
    /// EC2 accepted the call that named it.
    Done,
    /// Send it alone: the shared call failed for one of its instances (not yet visible, say),
    /// or the call was never made.
    Alone,
    /// The shared call failed for all: this error.
    Failed(Ec2Error),
}

/// An instance waiting to be terminated together with others, and where to tell it what
/// became of it.
pub(crate) type Gathered = (String, oneshot::Sender<Together>);

/// The claims and the gathering queues, shared by every caller.
#[derive(Debug, Default)]
pub(crate) struct Terminations {
    /// Instances TerminateInstances has accepted, or is being sent for: asking again gains
    /// nothing.
    sent: Mutex<BTreeMap<String, Claim>>,
    /// Per region, the instances waiting to be terminated together.
    queue: Mutex<BTreeMap<RegionLabel, Vec<Gathered>>>,
}

/// The right to send TerminateInstances for one instance: taken by one caller at a time, and
/// given back when dropped unless the call succeeded (`keep`).
pub(crate) struct TerminateClaim<'a> {
    terminations: &'a Terminations,
    instance_id: String,
    kept: bool,
}

/// What asking for the claim found.
pub(crate) enum ClaimAsk<'a> {
    /// This caller sends the call.
    Taken(TerminateClaim<'a>),
    /// Another caller is sending it now; it may still fail.
    InFlight,
    /// EC2 has accepted it already.
    Accepted,
}

impl TerminateClaim<'_> {
    /// EC2 accepted the call: nobody sends it again.
    pub(crate) fn keep(mut self) {
        self.kept = true;
        lock(&self.terminations.sent).insert(self.instance_id.clone(), Claim::Accepted);
    }
}

impl Drop for TerminateClaim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.terminations.sent).remove(&self.instance_id);
        }
    }
}

/// The first caller of an instant: on drop (cancelled while gathering), it lets the others
/// go alone rather than wait forever.
pub(crate) struct GatherLeader<'a> {
    terminations: &'a Terminations,
    region: RegionLabel,
}

impl GatherLeader<'_> {
    /// The instances gathered so far; later ones start a gathering of their own.
    pub(crate) fn take(&self) -> Vec<Gathered> {
        lock(&self.terminations.queue).remove(&self.region).unwrap_or_default()
    }
}

impl Drop for GatherLeader<'_> {
    fn drop(&mut self) {
        for (_, tx) in self.take() {
            let _ = tx.send(Together::Alone);
        }
    }
}

impl Terminations {
    /// Asks for the right to send TerminateInstances for `instance_id`.
    pub(crate) fn claim(&self, instance_id: &str) -> ClaimAsk<'_> {
        let mut sent = lock(&self.sent);
        match sent.get(instance_id) {
            Some(Claim::InFlight) => ClaimAsk::InFlight,
            Some(Claim::Accepted) => ClaimAsk::Accepted,
            None => {
                sent.insert(instance_id.to_string(), Claim::InFlight);
                ClaimAsk::Taken(TerminateClaim {
                    terminations: self,
                    instance_id: instance_id.to_string(),
                    kept: false,
                })
            }
        }
    }

    /// Queues `instance_id` to be terminated with the others of `region`: the first of an
    /// instant leads (it sends the call for all), the others wait for its word.
    pub(crate) fn gather(
        &self,
        region: &RegionLabel,
        instance_id: &str,
    ) -> (Option<GatherLeader<'_>>, oneshot::Receiver<Together>) {
        let (tx, rx) = oneshot::channel();
        let leads = {
            let mut queues = lock(&self.queue);
            let queue = queues.entry(region.clone()).or_default();
            queue.push((instance_id.to_string(), tx));
            queue.len() == 1
        };
        (leads.then(|| GatherLeader { terminations: self, region: region.clone() }), rx)
    }
}
