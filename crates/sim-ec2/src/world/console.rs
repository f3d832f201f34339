//! The guest as EC2 shows it: GetConsoleOutput and when its text appears, and what checkers may
//! know of a guest.

use aws_backend::port::{Ec2Error, Operation};
use backend_api::RegionLabel;
use sha2::{Digest, Sha256};

use super::{About, Instance, World};
use crate::audit::op_tag;

impl World {
    /// GetConsoleOutput: what the guest printed, once EC2 publishes it (a while after the guest
    /// first ran; see `crate::console`). Terminated instances keep theirs while they are listed.
    pub(crate) fn get_console_output(
        &mut self,
        region: &RegionLabel,
        instance_id: &str,
    ) -> Result<Option<String>, Ec2Error> {
        let op = Operation::GetConsoleOutput;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(instance_id);
        let ids = [instance_id.to_owned()];
        let result = self.serve(op, region, About::Instances(&ids), |w, r| {
            let i = w.visible_instance(op, r, instance_id)?;
            let inst = &w.regions[r].instances[i];
            let Some(ran) = inst.running_since().filter(|t| *t <= w.now_ms) else { return Ok(None) };
            if w.now_ms < ran.saturating_add(w.console_delay_ms(instance_id)) {
                return Ok(None);
            }
            let mut text = crate::console::console_text(&inst.id, inst.host_key(w.seed));
            if let Some(plan) = inst.guest.as_ref().filter(|_| inst.guest_powered_off_by(w.now_ms)) {
                text.push_str(&plan.console_tail());
            }
            Ok(Some(text))
        });
        self.audit.outcome(&result, |a, text| a.str(text.as_deref().unwrap_or_default()));
        result
    }

    /// How long after its guest first ran EC2 publishes an instance's console output: drawn
    /// from the instance's id and the seed rather than the PRNG, so that adding this did not
    /// change any other draw of a run.
    fn console_delay_ms(&self, instance_id: &str) -> u64 {
        let (min, max) = (self.faults.console_delay_ms_min, self.faults.console_delay_ms_max);
        if max <= min {
            return min;
        }
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(instance_id.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let draw = u64::from_le_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        min + draw % (max - min + 1)
    }

    /// What checkers may know of the guest of `instance_id`, when the instance exists.
    pub(crate) fn guest_of(&self, instance_id: &str) -> Option<crate::console::GuestTruth> {
        let (r, i) = self.find_instance(instance_id)?;
        let inst = &self.regions[r].instances[i];
        let host_key = inst.host_key(self.seed).to_string();
        let console_at_ms = inst.running_since().map(|t| t.saturating_add(self.console_delay_ms(instance_id)));
        Some(crate::console::GuestTruth {
            host_key,
            imds: inst.imds,
            console_at_ms,
            poweroff_at_ms: inst.guest.as_ref().map(|g| g.vars.poweroff_at_unix_s.saturating_mul(1_000)),
            powers_off_at_ms: inst.guest.as_ref().map(|g| g.powers_off_at_ms),
            refusal: inst.guest.as_ref().and_then(|g| g.refusal.clone()),
        })
    }

    /// What the guest of `instance_id` does (see `guest`), when the instance exists and its
    /// user data was the backend's: cheaper than `guest_of`, which derives the host key.
    pub(crate) fn guest_plan_of(&self, instance_id: &str) -> Option<crate::guest::GuestPlan> {
        let (r, i) = self.find_instance(instance_id)?;
        self.regions[r].instances[i].guest.clone()
    }
}

impl Instance {
    /// The host key its console shows: the one its user data shipped, else the one its guest
    /// generates (derived from the seed and its id, once).
    fn host_key(&self, seed: u64) -> &str {
        match &self.shipped_host_key {
            Some(key) => key,
            None => self.generated_host_key.get_or_init(|| crate::console::guest_host_key(seed, &self.id)),
        }
    }
}
