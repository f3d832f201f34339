//! The grant's access: its imported key pair and its SSH-only security group.

use backend_api::{BackendError, GrantId, RegionLabel};
use usage_ledger::Event;

use super::{AwsBackend, VISIBILITY_WINDOW_MS};
use crate::errors::provider;
use crate::keys::SshKeyPair;
use crate::names;
use crate::pacing::Backoff;
use crate::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Error, Filter, ImportKeyPairRequest, Operation, codes,
};

/// How long a name deleted a moment ago may still answer `InvalidGroup.Duplicate` or
/// `InvalidKeyPair.Duplicate` (a deleted resource stays listed, its name taken, for a while:
/// "Eventual consistency in the Amazon EC2 API"): creation is retried through it this long.
const DELETED_NAME_WINDOW_MS: u64 = 3 * 60_000;

impl AwsBackend {
    pub(super) async fn ensure_key_pair(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        login: &SshKeyPair,
    ) -> Result<Option<u64>, BackendError> {
        if self.grant_state(grant).is_some_and(|s| s.key_pair().is_some()) {
            return Ok(None);
        }
        let key_name = names::key_name(grant);
        let request = ImportKeyPairRequest {
            key_name: key_name.clone(),
            public_key_openssh: login.public_openssh.clone(),
            tags: names::grant_tags(&self.shared.cfg, grant),
        };
        // On a retried grant the name was deleted by the earlier attempt's rollback a moment
        // ago, and EC2 may still hold it (`InvalidKeyPair.Duplicate`) for a while: import again
        // until it is free, for up to DELETED_NAME_WINDOW_MS.
        let retried = self.grant_state(grant).is_some_and(|s| s.attempt() > 0);
        let window_ms = if retried { DELETED_NAME_WINDOW_MS } else { 0 };
        let result = self
            .ec2()
            .call_until_settled(
                region,
                Operation::ImportKeyPair,
                window_ms,
                |err| err.is(codes::KEY_PAIR_DUPLICATE),
                |port| port.import_key_pair(region, request.clone()),
            )
            .await;
        let key_pair_id = match result {
            Ok(info) => info.key_pair_id,
            // A key pair of this name can only be ours from an attempt whose record was lost;
            // its key is derived from the same seed, so it is the same key.
            Err(err) if err.is(codes::KEY_PAIR_DUPLICATE) => String::new(),
            Err(err) => return Err(provider(err)),
        };
        let created = self.now_ms();
        self.record(*grant, Event::KeyPairImported { key_name, key_pair_id }).await?;
        Ok(Some(created))
    }

    /// The grant's group with SSH ingress authorized, and when it was created if it was created
    /// now (EC2 may not show it to other calls yet).
    pub(super) async fn ensure_security_group(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        vpc_id: Option<String>,
    ) -> Result<(String, Option<u64>), BackendError> {
        let cfg = &self.shared.cfg;
        let mut created = None;
        let group_id = match self.grant_state(grant).and_then(|s| s.security_group().map(str::to_string)) {
            Some(id) => id,
            None => {
                let group_name = names::group_name(grant);
                let request = CreateSecurityGroupRequest {
                    group_name: group_name.clone(),
                    vpc_id,
                    description: format!("compute-bridge grant {}: SSH only", grant.short()),
                    tags: names::grant_tags(cfg, grant),
                };
                let started = self.now_ms();
                let mut attempt = 0;
                let group_id = loop {
                    let result = self
                        .ec2()
                        .call(region, Operation::CreateSecurityGroup, |port| {
                            port.create_security_group(region, request.clone())
                        })
                        .await;
                    match result {
                        Ok(id) => break id,
                        Err(err) if err.is(codes::GROUP_DUPLICATE) => {
                            let found = self.find_group_by_name(grant, region).await?.ok_or_else(|| {
                                BackendError::Provider {
                                    operation: "DescribeSecurityGroups".into(),
                                    code: codes::GROUP_NOT_FOUND.into(),
                                    message: format!("group {group_name} exists but stayed invisible"),
                                    retryable: true,
                                }
                            })?;
                            // A group deleted a moment ago (an earlier attempt's rollback) stays
                            // listed and keeps its name for a while, but a lookup by its id
                            // knows it is gone: then create it again once the name is free.
                            if self.group_exists(region, &found).await?
                                || self.now_ms() >= started + DELETED_NAME_WINDOW_MS
                            {
                                break found;
                            }
                            self.ec2().backoff(Backoff::Lag, attempt).await;
                            attempt += 1;
                        }
                        Err(err) => return Err(crate::refusals::security_group(region, err)),
                    }
                };
                created = Some(self.now_ms());
                self.record(*grant, Event::SecurityGroupCreated { group_id: group_id.clone(), group_name }).await?;
                group_id
            }
        };
        let request = AuthorizeIngressRequest {
            group_id: group_id.clone(),
            port: 22,
            cidrs: self.hooks().ingress_cidrs(cfg.ssh_ingress_cidrs.iter().map(ToString::to_string).collect()),
        };
        // A group just created may not be visible yet.
        let result = self
            .call_when_visible(
                region,
                Operation::AuthorizeSecurityGroupIngress,
                created,
                false,
                Ec2Error::is_not_found,
                |port| port.authorize_ingress(region, request.clone()),
            )
            .await;
        match result {
            Ok(()) => Ok((group_id, created)),
            Err(err) if err.is(codes::PERMISSION_DUPLICATE) => Ok((group_id, created)),
            Err(err) => Err(provider(err)),
        }
    }

    /// True when DescribeSecurityGroups by id shows `group_id`; false when it answers
    /// `InvalidGroup.NotFound` (deleted, though listings may still show it).
    async fn group_exists(&self, region: &RegionLabel, group_id: &str) -> Result<bool, BackendError> {
        let ids = vec![group_id.to_string()];
        match self
            .ec2()
            .pages(region, Operation::DescribeSecurityGroups, true, |port, page| {
                port.describe_security_groups_page(region, ids.clone(), Vec::new(), page)
            })
            .await
        {
            Ok(groups) => Ok(groups.iter().any(|g| g.group_id == group_id)),
            Err(err) if err.is(codes::GROUP_NOT_FOUND) => Ok(false),
            Err(err) => Err(provider(err)),
        }
    }

    /// The group named for `grant`, if Describe shows it (retrying briefly for visibility).
    pub(crate) async fn find_group_by_name(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
    ) -> Result<Option<String>, BackendError> {
        let filters = vec![Filter { name: "group-name".into(), values: vec![names::group_name(grant)] }];
        let started = self.now_ms();
        let mut attempt = 0;
        while self.now_ms() < started + VISIBILITY_WINDOW_MS {
            let groups = self
                .ec2()
                .pages(region, Operation::DescribeSecurityGroups, false, |port, page| {
                    port.describe_security_groups_page(region, Vec::new(), filters.clone(), page)
                })
                .await
                .map_err(provider)?;
            if let Some(group) = groups.into_iter().next() {
                return Ok(Some(group.group_id));
            }
            self.ec2().backoff(Backoff::Recheck, attempt).await;
            attempt += 1;
        }
        Ok(None)
    }
}
