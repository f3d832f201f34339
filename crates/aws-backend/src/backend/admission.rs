//! Admission: the checks a grant passes before anything is created, and the admission record.

use backend_api::{AlmanacTick, BackendError, ComputeGrant, Envelope, GrantId, RegionLabel};
use usage_ledger::Event;

use super::AwsBackend;
use crate::sizing;

impl AwsBackend {
    pub(super) fn region_for(&self, envelope: &Envelope) -> Result<RegionLabel, BackendError> {
        let cfg = &self.shared.cfg;
        match envelope.region.as_ref() {
            None => Ok(cfg.default_region().clone()),
            Some(region) if cfg.allows(region.as_str()) => Ok(region.clone()),
            Some(region) => Err(BackendError::RegionNotAllowed {
                region: region.to_string(),
                allowed: cfg.regions.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    pub(super) fn now_tick(&self) -> AlmanacTick {
        self.shared.cfg.almanac.unix_ms_to_tick(self.now_ms())
    }

    /// Checks a grant without touching the cloud: TDX, deadline, manifest ranges.
    pub(super) fn check_grant(&self, grant: &ComputeGrant<'_>) -> Result<(), BackendError> {
        let manifest = grant.manifest;
        if manifest.tdx_required && self.hooks().refuses_tdx() {
            return Err(BackendError::Unsatisfiable {
                reason:
                    "the grant requires Intel TDX and AWS offers no TDX instances: route it to a TDX-capable backend"
                        .into(),
            });
        }
        let now = self.now_tick();
        if grant.valid_to <= now {
            return Err(BackendError::DeadlinePassed { valid_to: grant.valid_to, now });
        }
        self.check_time_left(grant.valid_to)?;
        let wait_ms = self.shared.cfg.almanac.tick_to_unix_ms(grant.valid_from).saturating_sub(self.now_ms());
        if wait_ms > self.shared.cfg.max_start_wait_ms() {
            return Err(BackendError::InvalidInput {
                field: "grant.valid_from".into(),
                reason: format!(
                    "{} is {} s away, more than max_start_wait_s ({} s) to hold a provision open: send the grant closer to its start",
                    grant.valid_from,
                    wait_ms / 1_000,
                    self.shared.cfg.max_start_wait_s
                ),
            });
        }
        if grant.valid_from > grant.valid_to {
            return Err(BackendError::InvalidInput {
                field: "grant.valid_from".into(),
                reason: format!("{} is after valid_to {}", grant.valid_from, grant.valid_to),
            });
        }
        if manifest.cpu_millicores == 0 || manifest.ram_mib == 0 {
            return Err(BackendError::InvalidInput {
                field: "manifest".into(),
                reason: format!(
                    "cpu_millicores {} and ram_mib {} must both be above 0",
                    manifest.cpu_millicores, manifest.ram_mib
                ),
            });
        }
        if manifest.storage_gib > sizing::MAX_ROOT_VOLUME_GIB {
            return Err(BackendError::Unsatisfiable {
                reason: format!(
                    "storage_gib {} exceeds the largest gp3 volume, {} GiB",
                    manifest.storage_gib,
                    sizing::MAX_ROOT_VOLUME_GIB
                ),
            });
        }
        Ok(())
    }

    /// Refuses when less than `min_lifetime_s` is left until `valid_to`: too late to launch.
    pub(super) fn check_time_left(&self, valid_to: AlmanacTick) -> Result<(), BackendError> {
        let cfg = &self.shared.cfg;
        let left_ms = cfg.almanac.tick_to_unix_ms(valid_to).saturating_sub(self.now_ms());
        if left_ms < cfg.min_lifetime_ms() && !self.hooks().launches_late(left_ms) {
            return Err(BackendError::Unsatisfiable {
                reason: format!(
                    "valid_to {valid_to} is {} s away, less than min_lifetime_s ({} s): too late to launch an instance; send the grant with more time left",
                    left_ms / 1_000,
                    cfg.min_lifetime_s
                ),
            });
        }
        Ok(())
    }

    /// Appends an attempt's admission (`GrantAdmitted` or `GrantRetried`) with the billing rules
    /// it is billed by, in one write.
    pub(super) async fn admit(&self, grant: GrantId, admission: Event) -> Result<(), BackendError> {
        let now = self.now_ms();
        let mut events = vec![(grant, now, admission)];
        if self.hooks().bills_by_rules() {
            events.push((grant, now, Event::BillingRulesAdopted { version: usage_ledger::BILLING_RULES_VERSION }));
        }
        self.record_with(|_| (events, ())).await
    }
}
