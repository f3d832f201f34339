//! Observation: what the bridge saw of the held instance (`InstanceStateObserved`), which opens
//! and closes the running periods that are billed.

use super::{ApplyError, Impossible, LiveGrant};
use crate::event::{ObservedState, Record};

impl LiveGrant {
    /// `InstanceStateObserved` of the held instance, given the grant's clock before the event
    /// (`clock_unix_ms`) and after its record time (`now`). Returns the grant's clock after it.
    pub(super) fn state_observed(
        &mut self,
        record: &Record,
        clock_unix_ms: u64,
        now: u64,
        instance_id: &str,
        state: ObservedState,
        observed_at_unix_ms: u64,
    ) -> Result<u64, ApplyError> {
        if self.instance.as_deref() != Some(instance_id) {
            return Err(ApplyError::new(
                record,
                Impossible::InstanceNotHeld { instance_id: instance_id.to_string(), held: self.instance.clone() },
            ));
        }
        let at = clock_unix_ms.max(observed_at_unix_ms);
        let latest = now.max(at);
        if state == ObservedState::Running {
            // Under rules 3 the attempt's first period may open before the grant's
            // clock, down to the launch request: the bridge saw the run late (it was
            // down) and records EC2's LaunchTime. Later periods never reach back.
            let opens_at = if self.billing_rules >= 3 && !self.ever_running {
                observed_at_unix_ms.max(self.launch_requested_unix_ms)
            } else {
                at
            };
            if self.running_since_unix_ms.is_none() && !self.deadline_cut && !self.past_deadline(opens_at) {
                self.running_since_unix_ms = Some(opens_at);
                self.ever_running = true;
            }
        } else if state.ends_running() {
            self.close_period(at);
        }
        self.last_state = Some(state);
        Ok(latest)
    }
}
