//! Launching the grant's one instance: the tries over types and zones, each with its own
//! ClientToken, and adopting a launch whose record was lost.

use std::collections::BTreeMap;

use backend_api::{AlmanacTick, BackendError, GrantId, RegionLabel};
use usage_ledger::{Event, GrantState};

use super::{AwsBackend, VISIBILITY_WINDOW_MS};
use crate::ec2::Lookup;
use crate::errors::{self, local, provider};
use crate::names;
use crate::pacing::Backoff;
use crate::pacing::lock;
use crate::placement::{Candidate, RegionNetwork};
use crate::port::{Architecture, Ec2Error, InstanceInfo, InstanceTypeInfo, Operation, RunInstancesRequest, codes};

impl AwsBackend {
    /// The grant's instance: the one the ledger knows, or one launched now. Tries the places
    /// `placement::candidates` orders (other zones of a type before other types), each with a
    /// ClientToken of its own that names its type and zone (`placement::try_index`), so at
    /// most one instance results; a resumed launch is re-sent with its own token, type, zone and
    /// AMI first (the alias may have moved on since, and the same token with another image
    /// would be `IdempotentParameterMismatch`). Each other try launches the AMI of its type's
    /// architecture from `images`. A shortage takes its (type, zone) out of the candidates for
    /// a while, an `Unsupported` until the offerings are asked again.
    #[allow(clippy::too_many_arguments, reason = "one launch's inputs, each already resolved by the caller")]
    pub(super) async fn ensure_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        fitting: &[InstanceTypeInfo],
        images: &BTreeMap<Architecture, String>,
        network: Option<&RegionNetwork>,
        headroom: Option<u32>,
        template: RunInstancesRequest,
        valid_to: AlmanacTick,
        created: Option<u64>,
    ) -> Result<String, BackendError> {
        let state = self.grant_state(grant).ok_or_else(|| local("grant vanished from the ledger"))?;
        if let Some(id) = state.instance() {
            return Ok(id.to_string());
        }
        let resumed = state.launch_requested().and_then(names::token_try_index);
        let candidates = self
            .regions()
            .placement(region, |known| crate::placement::candidates(fitting, known, network, self.now_ms()));
        let tries = plan_tries(region, fitting, network, headroom, resumed, candidates);
        let mut tried = Vec::new();
        for (index, candidate) in tries {
            let itype = &candidate.itype;
            let token = names::client_token_for(grant, state.attempt(), index);
            let recorded = (state.launch_requested() == Some(token.as_str()))
                .then(|| state.launch_requested_image().map(str::to_string))
                .flatten();
            let image_id = match recorded.or_else(|| images.get(&itype.architecture).cloned()) {
                Some(id) => id,
                None => {
                    return Err(local(format!(
                        "no AMI was resolved for {} ({}) in {region}",
                        itype.instance_type, itype.architecture
                    )));
                }
            };
            let request = RunInstancesRequest {
                instance_type: itype.instance_type.clone(),
                client_token: token.clone(),
                image_id: image_id.clone(),
                subnet_id: candidate.subnet_id.clone(),
                availability_zone: candidate.zone.clone(),
                ..template.clone()
            };
            let launch = Event::LaunchRequested {
                client_token: token.clone(),
                instance_type: itype.instance_type.clone(),
                image_id: Some(image_id),
            };
            let record_launch = |launch: Event| {
                self.record_if(*grant, |s| {
                    (s.and_then(GrantState::launch_requested) != Some(token.as_str())).then_some(launch)
                })
            };
            if self.hooks().records_launch_first() {
                record_launch(launch.clone()).await?;
            }
            let place = match &candidate.zone {
                Some(zone) => format!("{} in {zone}", itype.instance_type),
                None => itype.instance_type.clone(),
            };
            tried.push(place.clone());
            let result = self.run_instance_when_visible(region, &request, valid_to, created).await;
            if !self.hooks().records_launch_first() {
                record_launch(launch).await?;
            }
            let now = self.now_ms();
            match result {
                Ok(info) => {
                    if self.hooks().tags_after_launch() {
                        let tags = names::grant_tags(&self.shared.cfg, grant);
                        let id = info.instance_id.to_string();
                        let tagged = self
                            .ec2()
                            .call(region, Operation::CreateTags, |port| {
                                port.create_tags(region, vec![id.clone()], tags.clone())
                            })
                            .await;
                        if let Err(err) = tagged {
                            tracing::warn!(error = %err, "CreateTags failed");
                        }
                    }
                    if !info.availability_zone.is_empty() {
                        self.regions().placement(region, |p| p.note_success(&info.availability_zone, now));
                    }
                    // The deadline is armed from EC2's answer, before the ledger is asked to
                    // record it: a ledger that fails now must not leave the instance unended.
                    lock(&self.shared.launched_unrecorded).insert(*grant, info.instance_id.to_string());
                    self.arm_deadline(*grant, region.clone(), self.shared.cfg.almanac.tick_to_unix_ms(valid_to));
                    self.record(
                        *grant,
                        Event::InstanceLaunched {
                            instance_id: info.instance_id.to_string(),
                            client_token: token,
                            instance_type: itype.instance_type.clone(),
                            vcpus: itype.vcpus,
                            memory_mib: itype.memory_mib,
                        },
                    )
                    .await?;
                    lock(&self.shared.launched_unrecorded).remove(grant);
                    return Ok(info.instance_id.into());
                }
                Err(err) if err.is(codes::INSUFFICIENT_INSTANCE_CAPACITY) => {
                    if let Some(zone) = &candidate.zone {
                        self.regions().placement(region, |p| p.note_exhausted(&itype.instance_type, zone, now));
                    }
                    tracing::info!(place, "no capacity; trying the next place");
                }
                // The zone does not offer the type after all (or EC2 picked one that does not):
                // the next place may launch.
                Err(err) if err.is(codes::UNSUPPORTED) => {
                    if let Some(zone) = &candidate.zone {
                        self.regions().placement(region, |p| p.note_unsupported(&itype.instance_type, zone));
                    }
                    tracing::info!(place, error = %err, "type not offered in the zone; trying the next place");
                }
                Err(err) if err.is(codes::VCPU_LIMIT_EXCEEDED) => {
                    let in_use = self.vcpus_in_use(region);
                    self.regions().placement(region, |p| p.note_vcpu_limit(in_use, itype.vcpus, now));
                    return Err(crate::refusals::launch(region, &request, err));
                }
                Err(err) if err.is(errors::codes::TOO_LATE_TO_LAUNCH) => {
                    return Err(self.check_time_left(valid_to).err().unwrap_or_else(|| local(err)));
                }
                Err(err) if err.is(codes::IDEMPOTENT_INSTANCE_TERMINATED) => {
                    // This attempt's instance launched and has already ended (a resume after
                    // a crash, or a retry after a lost response): record it, so that teardown
                    // and the bill account for it, and fail the attempt; a retry starts afresh.
                    self.adopt_unrecorded_instance(grant, region, &token).await?;
                    return Err(BackendError::Provider {
                        operation: Operation::RunInstances.name().into(),
                        code: err.code,
                        message: format!("the instance launched with ClientToken {token} has already terminated"),
                        retryable: true,
                    });
                }
                Err(err) => return Err(crate::refusals::launch(region, &request, err)),
            }
        }
        Err(BackendError::CapacityUnavailable { region: region.to_string(), instance_types: tried })
    }

    /// RunInstances, retried (with the same token, so at most one instance results) while the
    /// key pair or group it names is not yet visible to EC2.
    /// Each call first checks that `min_lifetime_s` is still left before `valid_to`, and
    /// answers [`errors::codes::TOO_LATE_TO_LAUNCH`] without sending anything when it is not.
    async fn run_instance_when_visible(
        &self,
        region: &RegionLabel,
        request: &RunInstancesRequest,
        valid_to: AlmanacTick,
        created: Option<u64>,
    ) -> Result<InstanceInfo, Ec2Error> {
        let invisible = |err: &Ec2Error| err.is(codes::KEY_PAIR_NOT_FOUND) || err.is(codes::GROUP_NOT_FOUND);
        self.call_when_visible(region, Operation::RunInstances, created, true, invisible, |port| {
            let too_late = self.check_time_left(valid_to).is_err();
            let mut request = request.clone();
            request.client_token = self.hooks().client_token(request.client_token);
            async move {
                if too_late {
                    return Err(Ec2Error::new(
                        Operation::RunInstances,
                        errors::codes::TOO_LATE_TO_LAUNCH,
                        "not sent: too close to valid_to",
                    ));
                }
                port.run_instance(region, request).await
            }
        })
        .await
    }

    /// Finds an instance launched with `token` whose launch was never recorded, and records it.
    pub(super) async fn adopt_unrecorded_instance(
        &self,
        grant: &GrantId,
        region: &RegionLabel,
        token: &str,
    ) -> Result<(), BackendError> {
        let mut lookup = Lookup::Grant(grant);
        let started = self.now_ms();
        let mut attempt = 0;
        loop {
            let instances = self.ec2().instances(region, lookup).await.map_err(provider)?;
            if let Some(info) = instances.iter().find(|i| i.client_token == token) {
                let catalogue = self.catalogue(region).await?;
                let (vcpus, memory_mib) = catalogue
                    .iter()
                    .find(|t| t.instance_type == info.instance_type)
                    .map_or((0, 0), |t| (t.vcpus, t.memory_mib));
                self.record(
                    *grant,
                    Event::InstanceLaunched {
                        instance_id: info.instance_id.to_string(),
                        client_token: token.to_string(),
                        instance_type: info.instance_type.to_string(),
                        vcpus,
                        memory_mib,
                    },
                )
                .await?;
                lock(&self.shared.launched_unrecorded).remove(grant);
                // What finding it showed is an observation like any other; an instance found
                // running ran while nobody recorded it, and is billed from its LaunchTime.
                self.observe(grant, info, self.now_ms(), true).await?;
                return Ok(());
            }
            if self.now_ms() > started + VISIBILITY_WINDOW_MS {
                // The tag-filtered answers may lag (tags propagate after ids): ask by token.
                // Nothing with the token after the window proves the launch never happened.
                let found = self.ec2().instances(region, Lookup::Token(token)).await.map_err(provider)?;
                if found.iter().any(|i| i.client_token == token) {
                    lookup = Lookup::Token(token);
                    continue;
                }
                tracing::info!(token, "no instance has the launch's token: it never happened");
                self.record(*grant, Event::LaunchAbsent { client_token: token.to_string() }).await?;
                return Ok(());
            }
            self.ec2().backoff(Backoff::Recheck, attempt).await;
            attempt += 1;
        }
    }
}

/// The launch tries, in order, each with its try index (`placement::try_index`): a launch
/// requested before a crash (`resumed`, its try index) first, exactly as it was sent; then the
/// `candidates` in their order, without the types before the resumed one (tried before the
/// crash), the types the vCPU `headroom` cannot hold, and the places already planned.
fn plan_tries(
    region: &RegionLabel,
    fitting: &[InstanceTypeInfo],
    network: Option<&RegionNetwork>,
    headroom: Option<u32>,
    resumed: Option<usize>,
    candidates: Vec<Candidate>,
) -> Vec<(usize, Candidate)> {
    let position = |name: &str| fitting.iter().position(|t| t.instance_type == name);
    let mut tries: Vec<(usize, Candidate)> = Vec::new();
    let mut resumed_type = None;
    if let Some(index) = resumed {
        let (type_pos, zone) = crate::placement::from_try_index(index, region);
        resumed_type = Some(type_pos);
        if let Some(itype) = fitting.get(type_pos) {
            let subnet_id = zone.as_ref().and_then(|z| network?.subnets_by_zone.get(z)?.first().cloned());
            tries.push((index, Candidate { itype: itype.clone(), zone, subnet_id }));
        }
    }
    for candidate in candidates {
        let Some(type_pos) = position(&candidate.itype.instance_type) else { continue };
        if resumed_type.is_some_and(|r| type_pos < r) || headroom.is_some_and(|room| candidate.itype.vcpus > room) {
            continue;
        }
        let index = crate::placement::try_index(type_pos, candidate.zone.as_deref());
        if !tries.iter().any(|(i, _)| *i == index) {
            tries.push((index, candidate));
        }
    }
    tries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::try_index;

    fn itype(name: &str, vcpus: u32) -> InstanceTypeInfo {
        InstanceTypeInfo {
            instance_type: name.into(),
            vcpus,
            memory_mib: u64::from(vcpus) * 4_096,
            architecture: Architecture::X86_64,
        }
    }

    fn place(itype: &InstanceTypeInfo, zone: &str) -> Candidate {
        Candidate { itype: itype.clone(), zone: Some(zone.into()), subnet_id: None }
    }

    fn planned(tries: &[(usize, Candidate)]) -> Vec<(String, Option<String>)> {
        tries.iter().map(|(_, c)| (c.itype.instance_type.clone(), c.zone.clone())).collect()
    }

    #[test]
    fn given_no_resumed_launch_when_planned_then_every_candidate_in_order_with_its_own_index() {
        let region = RegionLabel::new("eu-west-1").expect("region");
        let (small, large) = (itype("m7i.large", 2), itype("m7i.xlarge", 4));
        let candidates = vec![place(&small, "eu-west-1a"), place(&small, "eu-west-1b"), place(&large, "eu-west-1a")];
        let tries = plan_tries(&region, &[small.clone(), large.clone()], None, None, None, candidates);
        assert_eq!(
            planned(&tries),
            [
                ("m7i.large".into(), Some("eu-west-1a".into())),
                ("m7i.large".into(), Some("eu-west-1b".into())),
                ("m7i.xlarge".into(), Some("eu-west-1a".into()))
            ]
        );
        let indices: Vec<usize> = tries.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            indices,
            [try_index(0, Some("eu-west-1a")), try_index(0, Some("eu-west-1b")), try_index(1, Some("eu-west-1a"))]
        );
    }

    #[test]
    fn given_a_resumed_launch_when_planned_then_it_goes_first_once_and_earlier_types_are_skipped() {
        let region = RegionLabel::new("eu-west-1").expect("region");
        let (small, large) = (itype("m7i.large", 2), itype("m7i.xlarge", 4));
        let resumed = try_index(1, Some("eu-west-1b"));
        let candidates = vec![place(&small, "eu-west-1a"), place(&large, "eu-west-1a"), place(&large, "eu-west-1b")];
        let tries = plan_tries(&region, &[small, large], None, None, Some(resumed), candidates);
        assert_eq!(
            planned(&tries),
            [("m7i.xlarge".into(), Some("eu-west-1b".into())), ("m7i.xlarge".into(), Some("eu-west-1a".into()))]
        );
        assert_eq!(tries[0].0, resumed);
    }

    #[test]
    fn given_a_vcpu_headroom_when_planned_then_types_it_cannot_hold_are_not_tried() {
        let region = RegionLabel::new("eu-west-1").expect("region");
        let (small, large) = (itype("m7i.large", 2), itype("m7i.xlarge", 4));
        let candidates = vec![place(&small, "eu-west-1a"), place(&large, "eu-west-1a")];
        let tries = plan_tries(&region, &[small, large], None, Some(3), None, candidates);
        assert_eq!(planned(&tries), [("m7i.large".into(), Some("eu-west-1a".into()))]);
    }
}
