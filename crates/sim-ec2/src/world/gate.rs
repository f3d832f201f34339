//! What every call goes through around its operation: the gate before it (the region, an
//! outage, `fail_next`, the region's token buckets, injected failures), a lost response after
//! it, the counts and the fault log they leave, and the pages a Describe answers with (the
//! NextTokens handed out, and those presented again).

use aws_backend::port::{Ec2Error, Operation, Page, PageRequest, Tags, ThrottleClass, codes};
use backend_api::RegionLabel;
use rand::Rng;

use super::{About, World, err, extra_codes};
use crate::pagination;
use crate::truth::FaultRecord;

fn is_mutating(op: Operation) -> bool {
    !matches!(
        op.throttle_class(),
        ThrottleClass::NonMutating | ThrottleClass::GetMetricData | ThrottleClass::GetParameter
    )
}

impl World {
    /// Records a fault of `kind` hitting the call in progress, which was about `subjects`.
    pub(super) fn fault(&mut self, kind: &str, subjects: Vec<Tags>) {
        if let Some(count) = self.stats.faults.get_mut(kind) {
            *count += 1;
        } else {
            self.stats.faults.insert(kind.to_string(), 1);
        }
        let (operation, region) = match self.current {
            Some((op, r)) => (Some(op), Some(self.regions[r].label.clone())),
            None => (None, None),
        };
        self.fault_log.push(FaultRecord {
            at_unix_ms: self.now_ms,
            region,
            operation,
            kind: kind.to_string(),
            subjects,
        });
    }

    /// Notes a call presenting `page`'s token (whatever becomes of the call: a retry of a
    /// refused page presents it again).
    pub(super) fn presented(&mut self, page: &PageRequest) {
        if let Some(token) = &page.next_token {
            self.unfollowed_tokens.remove(token);
        }
    }

    /// The tags of what a call in region `r` is about, as they are now.
    pub(super) fn subjects(&self, r: usize, about: About<'_>) -> Vec<Tags> {
        let region = &self.regions[r];
        match about {
            About::Nothing => Vec::new(),
            About::Tags(tags) => vec![tags.clone()],
            About::KeyPair(name) => region.key_pairs.get(name).map(|k| vec![k.tags.clone()]).unwrap_or_default(),
            About::Group(id) => region.groups.get(id).map(|g| vec![g.tags.clone()]).unwrap_or_default(),
            About::Instances(ids) => ids
                .iter()
                .filter_map(|id| region.instance_ids.get(id))
                .map(|&i| region.instances[i].tags.to_tags())
                .collect(),
        }
    }

    /// Records a fault of `kind` hitting a call in region `r` about `about`.
    pub(super) fn fault_about(&mut self, kind: &str, r: usize, about: About<'_>) {
        let subjects = self.subjects(r, about);
        self.fault(kind, subjects);
    }

    /// The page `window` asks for out of `answer` (sorted by key), keys dropped; see
    /// `pagination`.
    pub(super) fn page_of<T>(
        &mut self,
        window: pagination::Window,
        answer: Vec<(String, T)>,
        fingerprint: impl FnOnce() -> u64,
    ) -> Page<T> {
        let page = self.page_of_keyed(window, answer, |(key, _)| key.clone(), fingerprint);
        Page { items: page.items.into_iter().map(|(_, item)| item).collect(), next_token: page.next_token }
    }

    /// [`World::page_of`] for items whose key `key` spells out (see `pagination::cut_keyed`).
    pub(super) fn page_of_keyed<T>(
        &mut self,
        window: pagination::Window,
        answer: Vec<T>,
        key: impl Fn(&T) -> String,
        fingerprint: impl FnOnce() -> u64,
    ) -> Page<T> {
        let short = self.faults.page_short_probability;
        let page = pagination::cut_keyed(window, answer, key, fingerprint, short, &mut self.rng);
        if let (Some(token), Some((op, r))) = (&page.next_token, self.current) {
            let region = self.regions[r].label.clone();
            self.unfollowed_tokens.insert(token.clone(), (self.now_ms, region, op));
        }
        page
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.rng.gen_bool(p))
    }

    /// What every service's gate does first: the region (`OptInRequired` when it is not
    /// simulated), an outage (answered with the service's own `unavailable` code), and a
    /// targeted `fail_next`. Returns the region's index.
    pub(super) fn gate_common(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
        unavailable: &str,
    ) -> Result<usize, Ec2Error> {
        let Some(r) = self.region_index(region) else {
            return Err(err(
                op,
                extra_codes::OPT_IN_REQUIRED,
                format!("region {region} is not simulated: add it to SimConfig::regions"),
            ));
        };
        self.current = Some((op, r));
        if self.regions[r].outage_until_ms > self.now_ms {
            self.fault_about("RegionOutage", r, about);
            return Err(err(op, unavailable, format!("The service is unavailable in {region}")));
        }
        if let Some(queue) = self.fail_next.get_mut(&op)
            && let Some(code) = queue.pop_front()
        {
            self.fault_about(&format!("fail_next:{code}"), r, about);
            return Err(err(op, &code, "injected by fail_next"));
        }
        Ok(r)
    }

    /// Everything that happens before a call reaches its operation: region, outage, targeted
    /// faults, throttling (a throttled call takes no token), random failures.
    fn gate(&mut self, op: Operation, region: &RegionLabel, about: About<'_>) -> Result<usize, Ec2Error> {
        if op.throttle_class() == ThrottleClass::GetMetricData {
            return self.cloudwatch_gate(op, region, about);
        }
        if op.throttle_class() == ThrottleClass::GetParameter {
            return self.ssm_gate(op, region, about);
        }
        let now = self.now_ms;
        let r = self.gate_common(op, region, about, codes::UNAVAILABLE)?;
        if self.chance(self.faults.throttle_probability) {
            self.fault_about(codes::REQUEST_LIMIT_EXCEEDED, r, about);
            return Err(err(op, codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded."));
        }
        // TerminateInstances also needs one token per instance of its resource bucket (taken
        // when the call succeeds, as RunInstances' is).
        let terminating = match about {
            About::Instances(ids) if op == Operation::TerminateInstances => ids.len() as u64,
            _ => 0,
        };
        let reg = &mut self.regions[r];
        let bucket = op.index();
        let allowed = reg.buckets[bucket].has_token(now)
            && (op != Operation::RunInstances || reg.run_instances_resource.has_token(now))
            && reg.terminate_instances_resource.has_tokens(now, terminating);
        if !allowed {
            self.bucket_throttles.push((now, region.clone(), op));
            return Err(err(op, codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded."));
        }
        reg.buckets[bucket].take_token();
        if self.chance(self.faults.internal_error_probability) {
            self.fault_about(codes::INTERNAL_ERROR, r, about);
            return Err(err(op, codes::INTERNAL_ERROR, "An internal error has occurred"));
        }
        if self.chance(self.faults.unavailable_probability) {
            self.fault_about(codes::UNAVAILABLE, r, about);
            return Err(err(op, codes::UNAVAILABLE, "The service is unavailable. Please try again shortly."));
        }
        Ok(r)
    }

    /// Serves one call of `op` about `about`: the gate, then `exec` in the region, then a lost
    /// response perhaps, counting it all.
    pub(super) fn serve<T>(
        &mut self,
        op: Operation,
        region: &RegionLabel,
        about: About<'_>,
        exec: impl FnOnce(&mut Self, usize) -> Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        *self.stats.calls.entry(op).or_default() += 1;
        let result = match self.gate(op, region, about) {
            Ok(r) => {
                // A lost response is attributed to what the call was about before it ran (a
                // deleted key pair has no tags afterwards), so that is read now whenever one
                // may be drawn.
                let lost_response_may_be_drawn = is_mutating(op) && self.faults.response_lost_probability > 0.0;
                let before = lost_response_may_be_drawn.then(|| self.subjects(r, about));
                let result = exec(self, r);
                if result.is_ok() && is_mutating(op) && self.chance(self.faults.response_lost_probability) {
                    self.fault("ResponseLost", before.unwrap_or_default());
                    Err(err(op, codes::INTERNAL_ERROR, "An internal error has occurred"))
                } else {
                    result
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_throttle() {
                *self.stats.throttles.entry(op).or_default() += 1;
            }
            if let Some(count) = self.stats.errors.get_mut(&e.code) {
                *count += 1;
            } else {
                self.stats.errors.insert(e.code.clone(), 1);
            }
        }
        self.current = None;
        result
    }
}
