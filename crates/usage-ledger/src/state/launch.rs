//! Provisioning: the key pair, the security group, the launch request and the launched
//! instance (`KeyPairImported`, `SecurityGroupCreated`, `LaunchRequested`, `InstanceLaunched`,
//! `LaunchAbsent`). Each transition returns the phase after it.

use super::{ApplyError, Impossible, LiveGrant, Phase};
use crate::event::Record;

impl LiveGrant {
    /// `KeyPairImported`: the admitted key name, one key pair at a time, before any teardown.
    pub(super) fn key_pair_imported(
        &mut self,
        record: &Record,
        phase: Phase,
        key_name: &str,
        key_pair_id: &str,
    ) -> Result<Phase, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if !matches!(phase, Phase::Admitted | Phase::Provisioning) {
            return fail(Impossible::WrongPhase { phase, allowed: "Admitted or Provisioning" });
        }
        if *key_name != self.key_name {
            return fail(Impossible::KeyNameMismatch { admitted: self.key_name.clone(), found: key_name.to_string() });
        }
        if let Some(held) = &self.key_pair {
            return fail(Impossible::KeyPairAlreadyHeld { key_pair_id: held.clone() });
        }
        self.key_pair = Some(key_pair_id.to_string());
        Ok(Phase::Provisioning)
    }

    /// `SecurityGroupCreated`: the admitted group name, one group at a time.
    pub(super) fn security_group_created(
        &mut self,
        record: &Record,
        phase: Phase,
        group_id: &str,
        group_name: &str,
    ) -> Result<Phase, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        // Also while Terminating: a teardown that finds, by its name, a group whose
        // creation was never recorded (the process died in between) records it so that
        // its deletion can be recorded too.
        if !matches!(phase, Phase::Admitted | Phase::Provisioning | Phase::Terminating) {
            return fail(Impossible::WrongPhase { phase, allowed: "Admitted, Provisioning or Terminating" });
        }
        if *group_name != self.group_name {
            return fail(Impossible::GroupNameMismatch {
                admitted: self.group_name.clone(),
                found: group_name.to_string(),
            });
        }
        if let Some(held) = &self.security_group {
            return fail(Impossible::SecurityGroupAlreadyHeld { group_id: held.clone() });
        }
        self.security_group = Some(group_id.to_string());
        Ok(if phase != Phase::Terminating { Phase::Provisioning } else { phase })
    }

    /// `LaunchRequested`: at most one instance per attempt, before any teardown.
    pub(super) fn launch_requested(
        &mut self,
        record: &Record,
        phase: Phase,
        now: u64,
        client_token: &str,
        image_id: &Option<String>,
    ) -> Result<Phase, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if let Some(first) = self.ever_launched.first() {
            return fail(Impossible::AlreadyLaunched { instance_id: first.clone() });
        }
        if !matches!(phase, Phase::Admitted | Phase::Provisioning) {
            return fail(Impossible::WrongPhase { phase, allowed: "Admitted or Provisioning" });
        }
        self.launch_requested = Some(client_token.to_string());
        self.launch_requested_unix_ms = now;
        self.launch_image.clone_from(image_id);
        Ok(Phase::Provisioning)
    }

    /// `InstanceLaunched`: the instance of the last launch request; recording the held one again
    /// with the same sizes is harmless, any other is a second instance.
    pub(super) fn instance_launched(
        &mut self,
        record: &Record,
        phase: Phase,
        instance_id: &str,
        client_token: &str,
        size: (u32, u64),
    ) -> Result<Phase, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        let (vcpus, memory_mib) = size;
        if self.launch_requested.as_deref() != Some(client_token) {
            return fail(Impossible::LaunchNotRequested {
                client_token: client_token.to_string(),
                requested: self.launch_requested.clone(),
            });
        }
        if let Some(first) = self.ever_launched.first() {
            // Recording the held instance again with the same sizes is harmless (a
            // recovery that re-discovers it); anything else is a second instance.
            let same = first == instance_id
                && self.instance.as_deref() == Some(instance_id)
                && self.launched_vcpus == vcpus
                && self.launched_memory_mib == memory_mib;
            if !same {
                return fail(Impossible::SecondInstance { first: first.clone(), found: instance_id.to_string() });
            }
            return Ok(phase);
        }
        if !matches!(phase, Phase::Provisioning | Phase::Terminating) {
            return fail(Impossible::WrongPhase { phase, allowed: "Provisioning or Terminating" });
        }
        self.instance = Some(instance_id.to_string());
        self.ever_launched.push(instance_id.to_string());
        self.launched_vcpus = vcpus;
        self.launched_memory_mib = memory_mib;
        Ok(if phase == Phase::Provisioning { Phase::Running } else { phase })
    }

    /// `LaunchAbsent`: the requested launch made no instance; the request is forgotten.
    pub(super) fn launch_absent(&mut self, record: &Record, client_token: &str) -> Result<(), ApplyError> {
        if self.launch_requested.as_deref() != Some(client_token) || !self.ever_launched.is_empty() {
            return Err(ApplyError::new(
                record,
                Impossible::LaunchNotRequested {
                    client_token: client_token.to_string(),
                    requested: self.launch_requested.clone(),
                },
            ));
        }
        self.launch_requested = None;
        self.launch_image = None;
        Ok(())
    }
}
