//! Admission: a grant's first event (`GrantAdmitted`, or `OrphanReaped` for a grant this
//! ledger never admitted), a new attempt after a retryable failure (`GrantRetried`), and the
//! attempt's billing rules (`BillingRulesAdopted`).

use backend_api::{AlmanacTick, UsageMetrics};

use super::{ApplyError, GrantState, Impossible, LiveGrant, Phase};
use crate::event::{Event, Record};

impl GrantState {
    /// The state after a grant's first event: `GrantAdmitted`, or `OrphanReaped` for a grant
    /// this ledger never admitted (recorded as settled with zero usage).
    pub fn first(record: &Record) -> Result<GrantState, ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if record.seq != 0 {
            return fail(Impossible::SequenceGap { expected: 0 });
        }
        match &record.event {
            Event::GrantAdmitted { .. } => Ok(GrantState {
                phase: Phase::Admitted,
                next_seq: 1,
                latest_unix_ms: record.at_unix_ms,
                settled_unix_ms: 0,
                settled_usage: UsageMetrics::default(),
                attempt: 0,
                retry_allowed: false,
                live: Admission::of(&record.event).map(|a| Box::new(LiveGrant::admitted(a, UsageMetrics::default()))),
                network: None,
            }),
            Event::OrphanReaped { .. } => Ok(GrantState {
                phase: Phase::Settled,
                next_seq: 1,
                latest_unix_ms: record.at_unix_ms,
                settled_unix_ms: record.at_unix_ms,
                settled_usage: UsageMetrics::default(),
                attempt: 0,
                retry_allowed: false,
                live: None,
                network: None,
            }),
            _ => fail(Impossible::UnknownGrant),
        }
    }

    /// `GrantRetried` after settlement: a new attempt, allowed only when the last one failed
    /// with a retryable error, carrying the usage settled so far.
    pub(super) fn retried(&mut self, record: &Record, attempt: u32) -> Result<(), ApplyError> {
        if !self.retry_allowed || self.phase != Phase::Settled || attempt != self.attempt + 1 {
            return Err(ApplyError::new(record, Impossible::AfterSettlement));
        }
        self.live = Admission::of(&record.event).map(|a| Box::new(LiveGrant::admitted(a, self.settled_usage)));
        self.attempt = attempt;
        self.retry_allowed = false;
        self.phase = Phase::Admitted;
        Ok(())
    }
}

impl LiveGrant {
    /// `BillingRulesAdopted`: only rules this build knows, only before any launch.
    pub(super) fn billing_rules_adopted(
        &mut self,
        record: &Record,
        phase: Phase,
        version: u32,
    ) -> Result<(), ApplyError> {
        let fail = |kind| Err(ApplyError::new(record, kind));
        if !(3..=crate::BILLING_RULES_VERSION).contains(&version) {
            return fail(Impossible::UnknownBillingRules { version });
        }
        if phase != Phase::Admitted || self.launch_requested.is_some() || !self.ever_launched.is_empty() {
            return fail(Impossible::WrongPhase { phase, allowed: "Admitted, before any launch" });
        }
        self.billing_rules = version;
        Ok(())
    }
}

/// What `GrantAdmitted` and `GrantRetried` say of an attempt.
struct Admission<'a> {
    region: &'a str,
    instance_type: &'a str,
    vcpus: u32,
    memory_mib: u64,
    storage_bytes: u64,
    valid_to: AlmanacTick,
    valid_to_unix_ms: u64,
    key_name: &'a str,
    group_name: &'a str,
}

impl<'a> Admission<'a> {
    /// What `GrantAdmitted` or `GrantRetried` admits; `None` for any other event.
    fn of(event: &'a Event) -> Option<Self> {
        match event {
            Event::GrantAdmitted {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
            }
            | Event::GrantRetried {
                region,
                instance_type,
                vcpus,
                memory_mib,
                storage_bytes,
                valid_to,
                valid_to_unix_ms,
                key_name,
                group_name,
                ..
            } => Some(Admission {
                region,
                instance_type,
                vcpus: *vcpus,
                memory_mib: *memory_mib,
                storage_bytes: *storage_bytes,
                valid_to: *valid_to,
                valid_to_unix_ms: *valid_to_unix_ms,
                key_name,
                group_name,
            }),
            _ => None,
        }
    }
}

impl LiveGrant {
    /// A newly admitted attempt, carrying the usage of earlier ones.
    fn admitted(a: Admission<'_>, carried: UsageMetrics) -> Self {
        LiveGrant {
            region: a.region.to_string(),
            instance_type: a.instance_type.to_string(),
            storage_bytes: a.storage_bytes,
            valid_to: a.valid_to,
            valid_to_unix_ms: a.valid_to_unix_ms,
            key_name: a.key_name.to_string(),
            group_name: a.group_name.to_string(),
            key_pair: None,
            security_group: None,
            launch_requested: None,
            launch_image: None,
            instance: None,
            ever_launched: Vec::new(),
            termination: None,
            last_state: None,
            // Until an instance launches nothing is metered; the admitted sizes are replaced
            // by the launched ones.
            launched_vcpus: a.vcpus,
            launched_memory_mib: a.memory_mib,
            closed_running_seconds: 0,
            running_since_unix_ms: None,
            deadline_cut: false,
            billing_rules: 0,
            launch_requested_unix_ms: 0,
            ever_running: false,
            network_bytes: 0,
            carried,
        }
    }
}
