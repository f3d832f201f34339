//! The lease of a bridge group: who may write the ledger, with which epoch, and until when a
//! standby must wait before it may take over.
//!
//! Safety rests on the epoch alone: [`DynamoTable::acquire`] raises it, and every write is
//! conditional on the lease item still holding the writer's epoch, so once another holder has
//! acquired the lease the earlier one cannot write, whatever the clocks say. The expiry only
//! decides when a standby may take over (see `docs/ARCHITECTURE.md`).

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use backend_api::Clock;
use usage_ledger::{Lease, LeaseError, LeaseInfo, StoreError, check_lease_name};

use crate::table::{DynamoTable, PK, SK};

const LEASE_PREFIX: &str = "lease#";
/// The lease item's attribute naming the epoch of the last acquisition by a build that keeps
/// the position log (every build since snapshots).
pub(crate) const LOG_EPOCH: &str = "log_epoch";
/// The lease item's attribute naming the first epoch from which every holder kept the log.
pub(crate) const LOG_SINCE: &str = "log_since";

pub(crate) fn lease_key(group: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_string(), AttributeValue::S(format!("{LEASE_PREFIX}{group}"))),
        (SK.to_string(), AttributeValue::N("0".to_string())),
    ])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

impl DynamoTable {
    /// Acquires the lease of `group` for `holder` until `duration_ms` from now (by `clock`):
    /// when nobody holds it, when its expiry has passed, or when `holder` itself holds it (a
    /// restarted process, or a retried call). Each acquisition raises the epoch, so whatever
    /// wrote with an earlier epoch (an earlier process of the same holder included) is fenced
    /// from now on.
    ///
    /// It also keeps the lease item's record of which holders kept the position log
    /// (`LOG_EPOCH`, `LOG_SINCE`): a build from before the log raises the epoch without
    /// setting them, and a takeover then trusts no snapshot older than that holder.
    pub async fn acquire(
        &self,
        group: &str,
        holder: &str,
        duration_ms: u64,
        clock: &dyn Clock,
    ) -> Result<Lease, LeaseError> {
        check_lease_name("group", group)?;
        check_lease_name("holder", holder)?;
        let now_unix_ms = clock.now_unix_ms();
        let expires_unix_ms = now_unix_ms.saturating_add(duration_ms);
        // The lease item is read first so that the update can say whether the previous holder
        // kept the log; the update is conditional on the epoch read, so nothing comes between.
        // A lost race is tried again, a few times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.lease_item(group).await?;
            let mut update = self
                .client()
                .update_item()
                .table_name(self.name())
                .set_key(Some(lease_key(group)))
                .update_expression(
                    "SET holder = :holder, expires_unix_ms = :expires, log_epoch = :new, log_since = :since ADD epoch :one",
                )
                .expression_attribute_values(":holder", AttributeValue::S(holder.to_string()))
                .expression_attribute_values(":expires", AttributeValue::N(expires_unix_ms.to_string()))
                .expression_attribute_values(":one", AttributeValue::N("1".to_string()))
                .return_values(ReturnValue::AllNew);
            let epoch_before = before.as_ref().and_then(|item| number(item, "epoch")).unwrap_or(0);
            let new_epoch = epoch_before + 1;
            let since = match &before {
                Some(item) if number(item, LOG_EPOCH) == Some(epoch_before) => {
                    number(item, LOG_SINCE).unwrap_or(new_epoch)
                }
                _ => new_epoch,
            };
            update = update
                .expression_attribute_values(":new", AttributeValue::N(new_epoch.to_string()))
                .expression_attribute_values(":since", AttributeValue::N(since.to_string()));
            update = match &before {
                None => update.condition_expression("attribute_not_exists(pk)"),
                Some(_) => update
                    .condition_expression("(expires_unix_ms <= :now OR holder = :holder) AND epoch = :before")
                    .expression_attribute_values(":now", AttributeValue::N(now_unix_ms.to_string()))
                    .expression_attribute_values(":before", AttributeValue::N(epoch_before.to_string())),
            };
            match update.send().await {
                Ok(out) => {
                    let epoch =
                        out.attributes().and_then(|a| number(a, "epoch")).ok_or_else(|| StoreError::Remote {
                            store: self.label(),
                            op: "UpdateItem (acquire the lease)",
                            reason: "the answer carries no epoch".to_string(),
                        })?;
                    return Ok(Lease { group: group.to_string(), holder: holder.to_string(), epoch, expires_unix_ms });
                }
                Err(err)
                    if matches!(err.as_service_error(), Some(UpdateItemError::ConditionalCheckFailedException(_))) =>
                {
                    let held = self.lease_holder(group).await?;
                    let acquirable =
                        held.as_ref().is_none_or(|h| h.expires_unix_ms <= now_unix_ms || h.holder == holder);
                    if acquirable && attempts < 4 {
                        continue;
                    }
                    let held = held.unwrap_or(LeaseInfo {
                        holder: "(unknown: the lease item vanished)".to_string(),
                        epoch: 0,
                        expires_unix_ms: 0,
                    });
                    return Err(LeaseError::Held { group: group.to_string(), held, now_unix_ms });
                }
                Err(err) => return Err(self.remote("UpdateItem (acquire the lease)", &err).into()),
            }
        }
    }

    /// The first epoch from which every holder of `group`'s lease kept the position log (a
    /// strongly consistent read), or `None` when the lease was never acquired by a build that
    /// keeps it. A snapshot written at an earlier epoch may miss records a holder wrote without
    /// a log item, so a takeover does not use it.
    pub async fn log_since(&self, group: &str) -> Result<Option<u64>, StoreError> {
        let item = self.lease_item(group).await?;
        Ok(item.as_ref().filter(|i| number(i, LOG_EPOCH) == number(i, "epoch")).and_then(|i| number(i, LOG_SINCE)))
    }

    async fn lease_item(&self, group: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.name())
            .set_key(Some(lease_key(group)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.remote("GetItem (read the lease)", &e))?;
        Ok(out.item)
    }

    /// Extends `lease` to `duration_ms` from now, if it is still this holder's at this epoch;
    /// [`StoreError::Fenced`] when another holder has acquired it.
    pub async fn renew(&self, lease: &mut Lease, duration_ms: u64, clock: &dyn Clock) -> Result<(), StoreError> {
        let expires_unix_ms = clock.now_unix_ms().saturating_add(duration_ms);
        self.set_expiry(lease, expires_unix_ms, "UpdateItem (renew the lease)").await?;
        lease.expires_unix_ms = expires_unix_ms;
        Ok(())
    }

    /// Gives `lease` up (its expiry becomes 0), so a standby may take over at once. The epoch
    /// stays: the next holder raises it.
    pub async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        self.set_expiry(&lease, 0, "UpdateItem (release the lease)").await
    }

    async fn set_expiry(&self, lease: &Lease, expires_unix_ms: u64, op: &'static str) -> Result<(), StoreError> {
        let answer = self
            .client()
            .update_item()
            .table_name(self.name())
            .set_key(Some(lease_key(&lease.group)))
            .update_expression("SET expires_unix_ms = :expires")
            .condition_expression("holder = :holder AND epoch = :epoch")
            .expression_attribute_values(":holder", AttributeValue::S(lease.holder.clone()))
            .expression_attribute_values(":epoch", AttributeValue::N(lease.epoch.to_string()))
            .expression_attribute_values(":expires", AttributeValue::N(expires_unix_ms.to_string()))
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.as_service_error(), Some(UpdateItemError::ConditionalCheckFailedException(_))) => {
                Err(self.fenced(lease).await)
            }
            Err(err) => Err(self.remote(op, &err)),
        }
    }

    /// Who holds the lease of `group` now (a strongly consistent read), or `None` when it has
    /// never been acquired.
    pub async fn lease_holder(&self, group: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let Some(item) = self.lease_item(group).await? else { return Ok(None) };
        let holder = item.get("holder").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        let item = &item;
        Ok(Some(LeaseInfo {
            holder,
            epoch: number(item, "epoch").unwrap_or(0),
            expires_unix_ms: number(item, "expires_unix_ms").unwrap_or(0),
        }))
    }
}
