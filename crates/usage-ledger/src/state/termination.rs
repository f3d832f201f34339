//! Termination: the request to end a grant, the instance's end, and the removal of the key
//! pair and security group (`TerminationRequested`, `InstanceTerminated`, `KeyPairDeleted`,
//! `SecurityGroupDeleted`).

use super::{ApplyError, Impossible, LiveGrant, Phase};
use crate::event::{Record, TerminationReason};

impl LiveGrant {
    /// `TerminationRequested`: the first reason is kept; a deadline ends the running period
    /// there and no later period opens.
    pub(super) fn termination_requested(&mut self, reason: TerminationReason, now: u64) -> Phase {
        if self.termination.is_none() {
            self.termination = Some(reason);
        }
        if reason == TerminationReason::Deadline {
            self.close_period(now);
            self.deadline_cut = true;
        }
        Phase::Terminating
    }

    /// `InstanceTerminated` of the held instance: its running period ends.
    pub(super) fn instance_terminated(
        &mut self,
        record: &Record,
        instance_id: &str,
        now: u64,
    ) -> Result<Phase, ApplyError> {
        if self.instance.as_deref() != Some(instance_id) {
            return Err(ApplyError::new(
                record,
                Impossible::InstanceNotHeld { instance_id: instance_id.to_string(), held: self.instance.clone() },
            ));
        }
        self.close_period(now);
        self.instance = None;
        Ok(Phase::Terminating)
    }

    /// `KeyPairDeleted` of the held key pair.
    pub(super) fn key_pair_deleted(&mut self, record: &Record, key_name: &str) -> Result<(), ApplyError> {
        if self.key_pair.is_none() || *key_name != self.key_name {
            return Err(ApplyError::new(
                record,
                Impossible::KeyPairNotHeld {
                    key_name: key_name.to_string(),
                    held: self.key_pair.as_ref().map(|_| self.key_name.clone()),
                },
            ));
        }
        self.key_pair = None;
        Ok(())
    }

    /// `SecurityGroupDeleted` of the held group.
    pub(super) fn security_group_deleted(&mut self, record: &Record, group_id: &str) -> Result<(), ApplyError> {
        if self.security_group.as_deref() != Some(group_id) {
            return Err(ApplyError::new(
                record,
                Impossible::SecurityGroupNotHeld { group_id: group_id.to_string(), held: self.security_group.clone() },
            ));
        }
        self.security_group = None;
        Ok(())
    }
}
