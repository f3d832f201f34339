//! RunInstances: the checks EC2 makes of a launch (ClientToken reuse, instance type, image,
//! network, key pair, groups, user data, volume, tags, then quota, offerings and capacity), and
//! the launch itself: the new instance's ids, address, rates and timeline, drawn from the PRNG
//! in a fixed order, perhaps a spontaneous exit, and its guest when the user data is the
//! backend's.

use std::cmp::Reverse;
use std::sync::Arc;

use aws_backend::port::{
    Ec2Error, InstanceInfo, InstanceState, Operation, RunInstancesRequest, ShutdownBehavior, Tags, codes,
};
use backend_api::RegionLabel;
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};
use smol_str::SmolStr;

use super::tags::validate_tags;
use super::{About, Instance, Segment, World, draw, err, extra_codes, reasons};
use crate::audit::op_tag;
use crate::catalogue::{self, InstanceTypeSpec};
use crate::idmap::spell;
use crate::taglist::TagList;

/// A digest of every RunInstances parameter except the token, to detect reuse with other parameters.
fn run_fingerprint(req: &RunInstancesRequest) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut s = |v: &str| {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    };
    s(&req.image_id);
    s(&req.instance_type);
    s(&req.key_name);
    for g in &req.security_group_ids {
        s(g);
    }
    s("|");
    s(&req.user_data_base64);
    s(&req.root_volume_gib.to_string());
    s(&req.root_device_name);
    s(if req.imdsv2_required { "imdsv2" } else { "imdsv1" });
    s(req.subnet_id.as_deref().unwrap_or("-"));
    s(req.availability_zone.as_deref().unwrap_or("-"));
    s(&req.imds_hop_limit.to_string());
    s(match req.shutdown_behavior {
        ShutdownBehavior::Stop => "stop",
        ShutdownBehavior::Terminate => "terminate",
    });
    for (k, v) in req.instance_tags.iter().chain(std::iter::once((&String::new(), &String::new()))) {
        s(k);
        s(v);
    }
    for (k, v) in &req.volume_tags {
        s(k);
        s(v);
    }
    h.finalize().into()
}

fn public_dns(region: &RegionLabel, ip: [u8; 4]) -> String {
    let [a, b, c, d] = ip;
    if region.as_str() == "us-east-1" {
        format!("ec2-{a}-{b}-{c}-{d}.compute-1.amazonaws.com")
    } else {
        format!("ec2-{a}-{b}-{c}-{d}.{region}.compute.amazonaws.com")
    }
}

impl World {
    pub(crate) fn run_instance(
        &mut self,
        region: &RegionLabel,
        req: RunInstancesRequest,
    ) -> Result<InstanceInfo, Ec2Error> {
        let op = Operation::RunInstances;
        self.audit.begin(op_tag(op), region.as_str(), self.now_ms);
        self.audit.str(&req.client_token);
        self.audit.str(&req.instance_type);
        self.audit.str(&req.key_name);
        self.audit.strs(&req.security_group_ids);
        self.audit.tags(&req.instance_tags);
        // Decoded once: what a reader can see again, and what the launch checks.
        let user_data = base64::engine::general_purpose::STANDARD.decode(&req.user_data_base64);
        let user_data_text = user_data.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        self.expose(
            req.instance_tags
                .values()
                .chain(req.volume_tags.values())
                .map(String::as_str)
                .chain([user_data_text.as_ref()]),
        );
        // cloud-init installs a shipped host key instead of generating one.
        let shipped = if user_data_text.contains("\"ssh_keys\"") {
            crate::console::shipped_host_key(&req.user_data_base64)
        } else {
            None
        };
        // The backend's boot script reads its vars file; other user data gets no guest model.
        let guest_vars = if user_data_text.contains(aws_backend::guest::VARS_PATH) {
            crate::guest::guest_vars(&user_data_text)
        } else {
            None
        };
        let user_data_len = user_data.map(|bytes| bytes.len());
        let result = self.serve(op, region, About::Tags(&req.instance_tags), |w, r| {
            w.run_instance_in(r, &req, user_data_len, shipped, guest_vars)
        });
        self.audit.outcome(&result, |a, info| a.instance(info));
        result
    }

    /// RunInstances in region `r`; `user_data_len` is the length of the decoded user data, or
    /// the error decoding it gave.
    fn run_instance_in(
        &mut self,
        r: usize,
        req: &RunInstancesRequest,
        user_data_len: Result<usize, base64::DecodeError>,
        shipped_host_key: Option<String>,
        guest_vars: Option<crate::guest::GuestVars>,
    ) -> Result<InstanceInfo, Ec2Error> {
        let op = Operation::RunInstances;
        let now = self.now_ms;
        let invalid = |message: String| err(op, codes::INVALID_PARAMETER_VALUE, message);
        let token = &req.client_token;
        if token.len() > 64 || !token.is_ascii() {
            return Err(invalid(format!(
                "Value ({token}) for parameter clientToken is invalid: use at most 64 ASCII characters"
            )));
        }
        let fingerprint = run_fingerprint(req);
        if !token.is_empty()
            && let Some((previous, idx)) = self.regions[r].client_tokens.get(token)
        {
            if *previous != fingerprint {
                return Err(err(
                    op,
                    codes::IDEMPOTENT_PARAMETER_MISMATCH,
                    format!("The client token {token} was used before with different parameters"),
                ));
            }
            // Same token, same parameters: the same instance, as it is now; once it has
            // terminated, EC2 answers IdempotentInstanceTerminated instead (since January 2025;
            // docs/ec2-facts.md, "Idempotency").
            let region = &self.regions[r];
            let instance = &region.instances[*idx];
            if instance.state_at(now) == InstanceState::Terminated {
                return Err(err(
                    op,
                    extra_codes::IDEMPOTENT_INSTANCE_TERMINATED,
                    format!("The instance {} launched with client token {token} has terminated", instance.id),
                ));
            }
            return Ok(instance.info(now));
        }
        let Some(spec) = catalogue::lookup(&req.instance_type) else {
            return Err(invalid(format!("Invalid value '{}' for InstanceType.", req.instance_type)));
        };
        let (snapshot_gib, image_arch) = self.account.image(op, &self.regions[r].label, &req.image_id)?;
        if let Some(image_arch) = image_arch
            && image_arch != spec.architecture
        {
            return Err(crate::placement::architecture_mismatch(op, spec.architecture, image_arch));
        }
        // The network: the subnet's VPC and zone, or the default VPC and the zone Placement
        // names (or one EC2 picks below). See `network`.
        let (vpc_id, placed_az) = match &req.subnet_id {
            Some(id) => {
                let Some(subnet) = self.regions[r].networks.subnet(id) else {
                    return Err(err(op, codes::SUBNET_NOT_FOUND, format!("The subnet ID '{id}' does not exist")));
                };
                let az = self.regions[r].azs.iter().position(|z| *z == subnet.availability_zone).unwrap_or(0);
                (subnet.vpc_id.clone(), Some(az as u8))
            }
            None => {
                self.account.default_vpc(op, &self.regions[r].label)?;
                let az = match &req.availability_zone {
                    Some(zone) => match self.regions[r].azs.iter().position(|z| z == zone) {
                        Some(az) => Some(az as u8),
                        None => return Err(invalid(format!("Invalid availability zone: [{zone}]"))),
                    },
                    None => None,
                };
                (self.regions[r].networks.default_vpc_id.clone().unwrap_or_default(), az)
            }
        };
        let key_visible = self.regions[r].key_pairs.get(&req.key_name).is_some_and(|kp| now >= kp.visible_at_ms);
        if !key_visible {
            return Err(err(op, codes::KEY_PAIR_NOT_FOUND, format!("The key pair '{}' does not exist", req.key_name)));
        }
        let mut group_ids = req.security_group_ids.clone();
        if group_ids.is_empty() {
            group_ids.push(self.regions[r].default_group_id.clone());
        }
        for id in &group_ids {
            let group = self.visible_group(op, r, id)?;
            if group.vpc_id != vpc_id {
                let subnet = req.subnet_id.as_deref().unwrap_or("the default subnet");
                return Err(err(
                    op,
                    codes::INVALID_PARAMETER,
                    format!("Security group {id} and subnet {subnet} belong to different networks."),
                ));
            }
        }
        let user_data_len = user_data_len.map_err(|_| invalid("Invalid BASE64 encoding of user data.".into()))?;
        if user_data_len > 16_384 {
            return Err(invalid(format!("User data is limited to 16384 bytes; got {user_data_len} bytes")));
        }
        // RunInstances' InstanceMetadataOptionsRequest: HttpPutResponseHopLimit is 1 to 64.
        if !(1..=64).contains(&req.imds_hop_limit) {
            return Err(invalid(format!(
                "The HttpPutResponseHopLimit '{}' is not valid: use 1 to 64",
                req.imds_hop_limit
            )));
        }
        if req.root_volume_gib == 0 || req.root_volume_gib > 16_384 {
            return Err(invalid(format!("Volume of {} GiB is outside gp3's 1 to 16384 GiB", req.root_volume_gib)));
        }
        if req.root_volume_gib < snapshot_gib {
            return Err(crate::placement::root_volume_too_small(op, &req.image_id, req.root_volume_gib, snapshot_gib));
        }
        validate_tags(op, &req.instance_tags)?;
        validate_tags(op, &req.volume_tags)?;

        self.within_vcpu_quota(r, spec, &req.instance_tags)?;

        // Capacity: EC2 places the instance in one of the region's zones; that zone's pool for
        // the type may be short, for a while.
        let az = match placed_az {
            Some(az) => az,
            None => self.rng.gen_range(0..self.regions[r].azs.len()) as u8,
        };
        self.offered_in(r, spec, az, &req.instance_tags)?;
        let pool = (spec.name, az);
        let short = self.regions[r].capacity_short_until_ms.get(&pool).is_some_and(|until| *until > now);
        let starts_shortage = !short && self.chance(self.faults.insufficient_capacity_probability);
        if short || starts_shortage {
            if starts_shortage {
                let length =
                    draw(&mut self.rng, self.faults.capacity_shortage_ms_min, self.faults.capacity_shortage_ms_max);
                self.start_shortage(r, spec, az, now + length);
            }
            self.fault(codes::INSUFFICIENT_INSTANCE_CAPACITY, vec![req.instance_tags.clone()]);
            let zone = &self.regions[r].azs[usize::from(az)];
            return Err(err(
                op,
                codes::INSUFFICIENT_INSTANCE_CAPACITY,
                format!(
                    "We currently do not have sufficient {} capacity in the Availability Zone you requested ({zone}).",
                    spec.name
                ),
            ));
        }

        self.regions[r].run_instances_resource.take_token();
        let instance = self.launch(r, now, spec, az, req, group_ids, shipped_host_key, guest_vars);
        let info = instance.0;
        let idx = instance.1;
        if !token.is_empty() {
            self.regions[r].client_tokens.insert(token.clone(), (fingerprint, idx));
        }
        Ok(info)
    }

    #[allow(clippy::too_many_arguments, reason = "one launch's inputs, each already checked by the caller")]
    fn launch(
        &mut self,
        r: usize,
        now: u64,
        spec: &'static InstanceTypeSpec,
        az: u8,
        req: &RunInstancesRequest,
        group_ids: Vec<String>,
        shipped_host_key: Option<String>,
        guest_vars: Option<crate::guest::GuestVars>,
    ) -> (InstanceInfo, usize) {
        let f = &self.faults;
        let rng = &mut self.rng;
        // As `new_id` draws them, kept as numbers for the id maps (see `idmap`).
        let mut number = rng.r#gen::<u64>();
        while self.regions[r].instance_ids.contains_number(number) {
            number = rng.r#gen::<u64>();
        }
        let id = spell("i", number);
        let volume_number = rng.r#gen::<u64>();
        let volume_id = spell("vol", volume_number);
        let ip: [u8; 4] = [rng.gen_range(3..=54), rng.r#gen(), rng.r#gen(), rng.gen_range(1..=254)];
        let bytes_in_per_s = draw(rng, self.network_bytes_per_s_min, self.network_bytes_per_s_max);
        let bytes_out_per_s = draw(rng, self.network_bytes_per_s_min, self.network_bytes_per_s_max);
        let visible_at_ms = now + draw(rng, f.visibility_delay_ms_min, f.visibility_delay_ms_max);
        let running_at = now + draw(rng, f.launch_delay_ms_min, f.launch_delay_ms_max);
        let dependency_lag_ms = draw(rng, f.dependency_violation_lag_ms_min, f.dependency_violation_lag_ms_max);
        let mut instance = Instance {
            id: id.into(),
            volume_id,
            spec,
            az,
            az_name: SmolStr::new(&self.regions[r].azs[usize::from(az)]),
            client_token: req.client_token.as_str().into(),
            key_name: req.key_name.clone(),
            group_ids,
            shutdown_behavior: req.shutdown_behavior,
            tags: TagList::from_tags(&req.instance_tags),
            shown_tags: Arc::new(req.instance_tags.clone()),
            volume_tags: TagList::from_tags(&req.volume_tags),
            launched_ms: now,
            visible_at_ms,
            dependency_lag_ms,
            public_dns: public_dns(&self.regions[r].label, ip).into(),
            bytes_in_per_s,
            bytes_out_per_s,
            timeline: vec![
                Segment { state: InstanceState::Pending, from_ms: now, reason: Some(reasons::PENDING) },
                Segment { state: InstanceState::Running, from_ms: running_at, reason: None },
            ],
            shown: Vec::new(),
            root_volume_gib: req.root_volume_gib,
            hidden_from_tag_filters_until_ms: 0,
            changed_seq: 0,
            shipped_host_key,
            imds: (req.imdsv2_required, req.imds_hop_limit),
            tag_view: None,
            stale: None,
            guest: None,
            cloudwatch_key: std::cell::OnceCell::new(),
            generated_host_key: std::cell::OnceCell::new(),
        };
        instance.tag_view = self.new_tag_view(&instance.id, &TagList::default());
        let mut exit_kind = None;
        let mut terminated_at = None;
        if self.chance(self.faults.spontaneous_exit_probability) {
            let f = &self.faults;
            let rng = &mut self.rng;
            let delay = draw(rng, f.termination_delay_ms_min, f.termination_delay_ms_max);
            let roll = rng.gen_range(0..10u8);
            let (at, reason, stop) = if roll < 2 {
                // A failed launch: the instance never reaches running.
                (rng.gen_range(now..=running_at), reasons::INTERNAL_ERROR, false)
            } else {
                let at = running_at + 1 + draw(rng, 0, f.spontaneous_exit_after_ms_max);
                if roll < 6 {
                    // A retirement: EC2 stops an EBS-backed On-Demand instance whose host is
                    // degraded, whatever its shutdown behaviour ("Instance retirement", Amazon
                    // EC2 User Guide). Spot reclaims are for Spot instances, which the port
                    // does not launch.
                    (at, reasons::SCHEDULED_STOP, true)
                } else {
                    let stop = instance.shutdown_behavior == ShutdownBehavior::Stop;
                    (at, reasons::INSTANCE_INITIATED_SHUTDOWN, stop)
                }
            };
            terminated_at = instance.plan_exit(at, reason, stop, delay);
            exit_kind = Some(reason);
        }
        if let Some(reason) = exit_kind {
            self.fault(&format!("exit:{reason}"), vec![req.instance_tags.clone()]);
        }
        if let Some(vars) = guest_vars
            && let Some(t) = self.plan_guest(&mut instance, vars, running_at, &req.instance_tags)
        {
            terminated_at = t;
        }
        let info = instance.info(now);
        let region = &mut self.regions[r];
        let idx = region.instances.len();
        for g in &instance.group_ids {
            if let Some(group) = region.groups.get_mut(g) {
                group.users.push(idx);
            }
        }
        if let Some(t) = terminated_at {
            region.expiry.push(Reverse((t.saturating_add(self.faults.terminated_visible_ms), idx)));
        }
        region.instance_ids.insert(number, idx);
        region.volume_ids.insert(volume_number, idx);
        region.listed.insert(idx);
        region.instances.push(instance);
        self.stats.instances_launched += 1;
        (info, idx)
    }

    /// Gives `instance`, about to be launched with the backend's user data and running from
    /// `running_at`, its guest (see `guest`): the guest powers off at its power-off time, or
    /// earlier when it refuses the image, unless something ends the instance first. Returns when
    /// the instance will be terminated, when the guest's power-off is what ends it.
    fn plan_guest(
        &mut self,
        instance: &mut Instance,
        vars: crate::guest::GuestVars,
        running_at: u64,
        tags: &Tags,
    ) -> Option<Option<u64>> {
        let f = &self.faults;
        let plan = crate::guest::plan(vars, running_at, self.seed, &instance.id, f.image_fetch_failure_probability);
        let at = plan.powers_off_at_ms;
        let ended_before = instance.exit_from().is_some_and(|t| t <= at);
        let mut terminated_at = None;
        if !ended_before {
            let delay = crate::guest::draw_ms(
                self.seed,
                &instance.id,
                "termination",
                f.termination_delay_ms_min,
                f.termination_delay_ms_max,
            );
            let stop = instance.shutdown_behavior == ShutdownBehavior::Stop;
            terminated_at = Some(instance.plan_exit(at, reasons::INSTANCE_INITIATED_SHUTDOWN, stop, delay));
            if let Some(kind) = plan.fault_kind() {
                self.fault(kind, vec![tags.clone()]);
            }
        }
        instance.guest = Some(plan);
        terminated_at
    }
}
