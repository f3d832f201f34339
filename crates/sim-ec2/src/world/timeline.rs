//! An instance's timeline: the state changes planned for it (drawn when it launched, or when
//! something ended it), and what is read off them at a moment: its state, the segment
//! DescribeInstances shows, how long it ran and the bytes it moved; and the exits planned over
//! it.

use std::sync::Arc;

use aws_backend::port::{InstanceInfo, InstanceState, Tags};
use smol_str::SmolStr;

use super::{Instance, Segment, reasons};
use crate::truth::{InstanceTruth, StateInterval};

impl Instance {
    /// When the guest first ran, if it has.
    pub(super) fn running_since(&self) -> Option<u64> {
        self.timeline.iter().find(|s| s.state == InstanceState::Running).map(|s| s.from_ms)
    }

    pub(super) fn segment_at(&self, t: u64) -> Segment {
        let i = self.timeline.partition_point(|s| s.from_ms <= t);
        self.timeline[i.saturating_sub(1)]
    }

    pub(super) fn state_at(&self, t: u64) -> InstanceState {
        self.segment_at(t).state
    }

    /// True when nothing about the instance changes with time any more after `t` (its last
    /// planned state has begun and is not `running`, whose figures grow): its truth then stays
    /// as it is until a call changes it.
    pub(super) fn settled_by(&self, t: u64) -> bool {
        self.timeline.last().is_some_and(|s| s.from_ms <= t && s.state != InstanceState::Running)
    }

    /// Brings `truth`, built from this instance's timeline as it still is at some earlier time,
    /// up to `now`: the intervals that began since, and the figures that grow. What it gives is
    /// what [`World::truth`] would build afresh.
    pub(super) fn advance_truth(&self, truth: &mut InstanceTruth, now: u64) {
        let past = self.timeline.partition_point(|s| s.from_ms <= now);
        let known = truth.intervals.len();
        if past > known {
            if let Some(open) = truth.intervals.last_mut() {
                open.to_ms = Some(self.timeline[known].from_ms);
            }
            for k in known..past {
                let seg = self.timeline[k];
                truth.intervals.push(StateInterval {
                    state: seg.state,
                    from_ms: seg.from_ms,
                    to_ms: (k + 1 < past).then(|| self.timeline[k + 1].from_ms),
                    reason_code: seg.reason.map(str::to_string),
                });
            }
        }
        truth.state = self.state_at(now);
        truth.running_ms = self.running_ms_until(now);
        (truth.network_bytes_in, truth.network_bytes_out) = self.bytes_until(now);
    }

    /// When the instance leaves `pending`/`running` for good, as planned now.
    pub(super) fn exit_from(&self) -> Option<u64> {
        self.timeline
            .iter()
            .find(|s| !matches!(s.state, InstanceState::Pending | InstanceState::Running))
            .map(|s| s.from_ms)
    }

    /// True when its guest's own power-off ended it by `t` (nothing ended it before).
    pub(super) fn guest_powered_off_by(&self, t: u64) -> bool {
        self.guest.as_ref().is_some_and(|g| {
            g.powers_off_at_ms <= t
                && self
                    .timeline
                    .iter()
                    .any(|s| s.from_ms == g.powers_off_at_ms && s.reason == Some(reasons::INSTANCE_INITIATED_SHUTDOWN))
        })
    }

    /// When the instance is (or is planned to be) terminated.
    pub(super) fn terminated_from(&self) -> Option<u64> {
        self.timeline.last().filter(|s| s.state == InstanceState::Terminated).map(|s| s.from_ms)
    }

    pub(super) fn expired(&self, now: u64, visible_ms: u64) -> bool {
        self.terminated_from().is_some_and(|t| now >= t.saturating_add(visible_ms))
    }

    pub(super) fn describable(&self, now: u64, visible_ms: u64) -> bool {
        now >= self.visible_at_ms && !self.expired(now, visible_ms)
    }

    /// True while the instance's security groups count as in use.
    pub(super) fn holds_groups(&self, now: u64) -> bool {
        self.terminated_from().is_none_or(|t| now < t.saturating_add(self.dependency_lag_ms))
    }

    pub(super) fn running_ms_until(&self, t: u64) -> u64 {
        let mut total = 0;
        for (i, seg) in self.timeline.iter().enumerate() {
            if seg.state != InstanceState::Running {
                continue;
            }
            let end = self.timeline.get(i + 1).map_or(u64::MAX, |next| next.from_ms).min(t);
            total += end.saturating_sub(seg.from_ms);
        }
        total
    }

    /// Cumulative (bytes in, bytes out) up to `t`: traffic flows only while running.
    pub(super) fn bytes_until(&self, t: u64) -> (u64, u64) {
        let ms = u128::from(self.running_ms_until(t));
        let scale = |rate: u64| u64::try_from(u128::from(rate) * ms / 1_000).unwrap_or(u64::MAX);
        (scale(self.bytes_in_per_s), scale(self.bytes_out_per_s))
    }

    /// What DescribeInstances says of it at `now`.
    pub(super) fn info(&self, now: u64) -> InstanceInfo {
        self.info_of(self.segment_at(now))
    }

    /// The segment DescribeInstances shows at `now`: a stale one for a moment after
    /// TerminateInstances (see `consistency`), else the true one.
    pub(super) fn described_segment(&self, now: u64) -> Segment {
        match self.stale {
            Some((until, seg)) if now < until => seg,
            _ => self.segment_at(now),
        }
    }

    /// What DescribeInstances says of it when showing `seg`.
    pub(super) fn info_of(&self, seg: Segment) -> InstanceInfo {
        let public_dns_name = match seg.state {
            InstanceState::Running | InstanceState::ShuttingDown | InstanceState::Stopping => self.public_dns.clone(),
            _ => SmolStr::default(),
        };
        // Nothing here allocates: short strings are inline, long ones and the tags shared.
        InstanceInfo {
            instance_id: self.id.clone(),
            instance_type: SmolStr::new_static(self.spec.name),
            state: seg.state,
            state_reason_code: seg.reason.map(SmolStr::new_static),
            public_dns_name,
            launch_time_unix_ms: self.launched_ms,
            tags: Arc::clone(&self.shown_tags),
            client_token: self.client_token.clone(),
            availability_zone: self.az_name.clone(),
        }
    }

    /// Merges `tags` into its tags, as CreateTags does.
    pub(super) fn merge_tags(&mut self, tags: &Tags) {
        self.tags.merge(tags);
        self.shown_tags = Arc::new(self.tags.to_tags());
    }

    /// Replaces every planned change from `at` on with an exit: shutting-down then terminated,
    /// or stopping then stopped. Returns when the instance will be terminated, if it will.
    pub(super) fn plan_exit(&mut self, at: u64, reason: &'static str, stop: bool, delay_ms: u64) -> Option<u64> {
        self.timeline.retain(|s| s.from_ms < at);
        let (first, then) = if stop {
            (InstanceState::Stopping, InstanceState::Stopped)
        } else {
            (InstanceState::ShuttingDown, InstanceState::Terminated)
        };
        let end = at.saturating_add(delay_ms);
        self.timeline.push(Segment { state: first, from_ms: at, reason: Some(reason) });
        self.timeline.push(Segment { state: then, from_ms: end, reason: Some(reason) });
        (!stop).then_some(end)
    }
}
