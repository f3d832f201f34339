//! The targeted calls a test makes of the world, each written to the audit: `fail_next`,
//! `interrupt`, `hide_from_tag_filters`, `region_outage`, `exhaust_capacity`, and
//! `publish_image` (a new AMI under an alias). A capacity shortage spreading as a drawn one
//! would is `placement`'s `start_capacity_shortage`.

use std::cmp::Reverse;

use aws_backend::port::{InstanceState, Operation, ShutdownBehavior};
use backend_api::RegionLabel;

use super::{World, draw};
use crate::InterruptReason;
use crate::audit::op_tag;
use crate::catalogue;
use crate::config::SimError;

impl World {
    /// Publishes `image` in its region and points the parameter `alias` there at it.
    pub(crate) fn publish_image(&mut self, alias: &str, image: crate::placement::SimImage) -> Result<(), SimError> {
        crate::placement::validate_images(std::slice::from_ref(&image))?;
        let r = self.region_index(&image.region).ok_or_else(|| SimError::UnknownRegion(image.region.to_string()))?;
        self.account.published.retain(|i| !(i.region == image.region && i.image_id == image.image_id));
        let id = image.image_id.clone();
        self.account.published.push(image);
        self.set_parameter(r, alias, &id);
        Ok(())
    }

    pub(crate) fn fail_next(&mut self, op: Operation, code: &str) {
        self.audit.begin(0xF0, "", self.now_ms);
        self.audit.u8(op_tag(op));
        self.audit.str(code);
        self.fail_next.entry(op).or_default().push_back(code.to_string());
    }

    pub(crate) fn interrupt(&mut self, instance_id: &str, reason: InterruptReason) -> Result<bool, SimError> {
        let (r, i) =
            self.find_instance(instance_id).ok_or_else(|| SimError::UnknownInstance(instance_id.to_string()))?;
        let now = self.now_ms;
        self.audit.begin(0xF1, self.regions[r].label.as_str(), now);
        self.audit.str(instance_id);
        let code = reason.state_reason_code();
        self.audit.str(code);
        let instance = &self.regions[r].instances[i];
        if !matches!(instance.state_at(now), InstanceState::Pending | InstanceState::Running) {
            self.audit.u8(0);
            return Ok(false);
        }
        let stop = reason == InterruptReason::ScheduledRetirement
            || reason == InterruptReason::GuestShutdown && instance.shutdown_behavior == ShutdownBehavior::Stop;
        let delay = draw(&mut self.rng, self.faults.termination_delay_ms_min, self.faults.termination_delay_ms_max);
        let region = &mut self.regions[r];
        if let Some(t) = region.instances[i].plan_exit(now, code, stop, delay) {
            region.expiry.push(Reverse((t.saturating_add(self.faults.terminated_visible_ms), i)));
        }
        self.truth_seq += 1;
        region.instances[i].changed_seq = self.truth_seq;
        self.audit.u8(1);
        let tags = region.instances[i].tags.to_tags();
        self.current = Some((Operation::TerminateInstances, r));
        self.fault(&format!("interrupt:{code}"), vec![tags]);
        self.current = None;
        Ok(true)
    }

    pub(crate) fn hide_from_tag_filters(&mut self, instance_id: &str, duration_ms: u64) -> Result<(), SimError> {
        let (r, i) =
            self.find_instance(instance_id).ok_or_else(|| SimError::UnknownInstance(instance_id.to_string()))?;
        let now = self.now_ms;
        self.audit.begin(0xF3, self.regions[r].label.as_str(), now);
        self.audit.str(instance_id);
        self.audit.u64(duration_ms);
        let until = now.saturating_add(duration_ms);
        let inst = &mut self.regions[r].instances[i];
        inst.hidden_from_tag_filters_until_ms = inst.hidden_from_tag_filters_until_ms.max(until);
        let tags = inst.tags.to_tags();
        self.current = Some((Operation::DescribeInstances, r));
        self.fault("hide_from_tag_filters", vec![tags]);
        self.current = None;
        Ok(())
    }

    pub(crate) fn region_outage(&mut self, region: &RegionLabel, duration_ms: u64) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        self.audit.begin(0xF2, region.as_str(), self.now_ms);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        let reg = &mut self.regions[r];
        reg.outage_until_ms = reg.outage_until_ms.max(until);
        Ok(())
    }

    pub(crate) fn exhaust_capacity(
        &mut self,
        region: &RegionLabel,
        instance_type: &str,
        duration_ms: u64,
    ) -> Result<(), SimError> {
        let r = self.region_index(region).ok_or_else(|| SimError::UnknownRegion(region.to_string()))?;
        let spec =
            catalogue::lookup(instance_type).ok_or_else(|| SimError::UnknownInstanceType(instance_type.to_string()))?;
        self.audit.begin(0xF3, region.as_str(), self.now_ms);
        self.audit.str(instance_type);
        self.audit.u64(duration_ms);
        let until = self.now_ms.saturating_add(duration_ms);
        let reg = &mut self.regions[r];
        for az in 0..reg.azs.len() as u8 {
            let slot = reg.capacity_short_until_ms.entry((spec.name, az)).or_default();
            *slot = (*slot).max(until);
        }
        Ok(())
    }
}
