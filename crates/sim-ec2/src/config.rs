//! What a simulated EC2 is made of: its seed, regions, and the rates and delays of its faults.

use std::fmt;

use backend_api::RegionLabel;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How a simulated EC2 is set up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The seed of the one PRNG everything random is drawn from.
    pub seed: u64,
    /// The regions that exist; calls naming another region fail with `OptInRequired`.
    pub regions: Vec<RegionLabel>,
    /// Probabilities and delays.
    pub faults: FaultConfig,
    /// Availability zones per region (`<region>a`, `<region>b`, ...), each its own capacity pool.
    pub availability_zones_per_region: u8,
    /// Lowest synthetic network rate an instance can draw at launch, each direction, bytes/s.
    pub network_bytes_per_s_min: u64,
    /// Highest synthetic network rate an instance can draw at launch, each direction, bytes/s.
    pub network_bytes_per_s_max: u64,
    /// Whether each region has a default VPC. Without one, RunInstances without a subnet and
    /// CreateSecurityGroup without a VPC answer `VPCIdNotSpecified` (see `placement`).
    #[serde(default = "default_vpc")]
    pub default_vpc: bool,
    /// The AMIs each region knows. Empty: every well-formed id (`ami-` and 8 or 17 hex digits)
    /// is known everywhere, with a root snapshot of
    /// [`DEFAULT_ROOT_SNAPSHOT_GIB`](crate::placement::DEFAULT_ROOT_SNAPSHOT_GIB).
    #[serde(default)]
    pub images: Vec<crate::placement::SimImage>,
    /// The operator's subnets outside the default VPC (see `network`); the default VPC's
    /// subnets, one per zone, exist whenever `default_vpc` is on.
    #[serde(default)]
    pub subnets: Vec<crate::network::SimSubnet>,
    /// The public SSM parameters (AMI aliases) each region serves to GetParameter. Empty: the
    /// Amazon Linux 2023 aliases for x86_64 and arm64 in every region (see `ssm::defaults`).
    #[serde(default)]
    pub public_parameters: Vec<crate::ssm::SimParameter>,
}

fn default_vpc() -> bool {
    true
}

impl SimConfig {
    /// A simulator for `regions` with realistic delays and no random failures.
    pub fn new(seed: u64, regions: Vec<RegionLabel>) -> Self {
        Self {
            seed,
            regions,
            faults: FaultConfig::default(),
            availability_zones_per_region: 3,
            network_bytes_per_s_min: 1_000,
            network_bytes_per_s_max: 10_000_000,
            default_vpc: true,
            images: Vec::new(),
            subnets: Vec::new(),
            public_parameters: Vec::new(),
        }
    }

    /// The same configuration with `faults`.
    pub fn with_faults(mut self, faults: FaultConfig) -> Self {
        self.faults = faults;
        self
    }

    /// Checks that the configuration can run.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.regions.is_empty() {
            return Err(SimError::Config("regions is empty: list at least one region, e.g. us-east-1".into()));
        }
        if self.availability_zones_per_region == 0 || self.availability_zones_per_region > 26 {
            return Err(SimError::Config(format!(
                "availability_zones_per_region is {}: use 1 to 26, e.g. 3",
                self.availability_zones_per_region
            )));
        }
        crate::placement::validate_images(&self.images)?;
        crate::network::validate_subnets(&self.subnets, &self.regions, self.availability_zones_per_region)?;
        crate::ssm::validate_parameters(&self.public_parameters, &self.images)?;
        if self.network_bytes_per_s_min > self.network_bytes_per_s_max {
            return Err(SimError::Config(format!(
                "network_bytes_per_s_min {} exceeds network_bytes_per_s_max {}: swap them",
                self.network_bytes_per_s_min, self.network_bytes_per_s_max
            )));
        }
        self.faults.validate()
    }
}

/// A simulator set up wrongly, or a targeted fault aimed at nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The configuration cannot run.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// No region of that name is simulated.
    #[error("region {0} is not simulated: add it to SimConfig::regions")]
    UnknownRegion(String),
    /// No instance of that id was ever launched.
    #[error("instance {0} was never launched in this simulator: pass an id that RunInstances returned")]
    UnknownInstance(String),
    /// No instance type of that name is in the catalogue.
    #[error(
        "instance type {0} is not in the simulated catalogue: use one of sim_ec2::catalogue::CATALOGUE, e.g. m6i.large"
    )]
    UnknownInstanceType(String),
}

/// Probabilities and delays of everything that goes wrong or takes time.
///
/// Probabilities are per call (or per instance, for `spontaneous_exit_probability`); delays are
/// drawn uniformly from `[min, max]` milliseconds of virtual time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    /// Extra `RequestLimitExceeded` on top of the token buckets (other callers share the account).
    pub throttle_probability: f64,
    /// `InternalError` before the call takes effect.
    pub internal_error_probability: f64,
    /// `Unavailable` before the call takes effect.
    pub unavailable_probability: f64,
    /// A mutating call takes effect but the caller gets `InternalError` (the lost-response case
    /// that ClientToken exists for).
    pub response_lost_probability: f64,
    /// Chance per RunInstances that its (instance type, availability zone) pool runs dry.
    pub insufficient_capacity_probability: f64,
    /// Shortest capacity shortage of a pool.
    pub capacity_shortage_ms_min: u64,
    /// Longest capacity shortage of a pool.
    pub capacity_shortage_ms_max: u64,
    /// Shortest time before a new resource is visible to other calls (eventual consistency).
    pub visibility_delay_ms_min: u64,
    /// Longest time before a new resource is visible to other calls.
    pub visibility_delay_ms_max: u64,
    /// Shortest `pending` phase.
    pub launch_delay_ms_min: u64,
    /// Longest `pending` phase.
    pub launch_delay_ms_max: u64,
    /// Shortest `shutting-down` (or `stopping`) phase.
    pub termination_delay_ms_min: u64,
    /// Longest `shutting-down` (or `stopping`) phase.
    pub termination_delay_ms_max: u64,
    /// Shortest time after termination during which the instance's security groups still
    /// count as in use (`DependencyViolation`).
    pub dependency_violation_lag_ms_min: u64,
    /// Longest such time.
    pub dependency_violation_lag_ms_max: u64,
    /// Chance per instance that it ends on its own: spot reclaim, in-guest shutdown or a failed launch.
    pub spontaneous_exit_probability: f64,
    /// A spontaneous exit after `running` happens within this long of reaching `running`.
    pub spontaneous_exit_after_ms_max: u64,
    /// How long a terminated instance stays visible to DescribeInstances.
    pub terminated_visible_ms: u64,
    /// Shortest time after its 5-minute period ends before CloudWatch publishes a `NetworkIn` /
    /// `NetworkOut` datapoint (drawn per datapoint from the seed, the instance and the period).
    pub metrics_lag_ms_min: u64,
    /// Shortest time after the guest first runs before GetConsoleOutput shows what it printed.
    pub console_delay_ms_min: u64,
    /// Longest such time.
    pub console_delay_ms_max: u64,
    /// Longest time after its period ends before CloudWatch publishes a datapoint.
    pub metrics_lag_ms_max: u64,
    /// Chance per datapoint that CloudWatch never publishes it (a gap, missing for good).
    pub metrics_gap_probability: f64,
    /// Extra `Throttling` from CloudWatch's GetMetricData on top of its own bucket (other
    /// callers share the account's quota). EC2's `throttle_probability` does not apply to it.
    pub cloudwatch_throttle_probability: f64,
    /// Longest time before tags set at creation or by CreateTags reach tag-filtered Describe
    /// answers (lookups by id show them at once); drawn per resource and change.
    pub tag_propagation_ms_max: u64,
    /// Longest time after TerminateInstances during which DescribeInstances may still show the
    /// state from before it (`running`); drawn per instance and change.
    pub stale_state_ms_max: u64,
    /// Longest time a deleted security group or key pair stays listed by Describe and keeps its
    /// name taken (`InvalidGroup.Duplicate`, `InvalidKeyPair.Duplicate`); drawn per deletion.
    pub deleted_visible_ms_max: u64,
    /// Chance per instance launched with the backend's user data that its guest cannot use the
    /// image (every fetch fails, or the bytes hash wrong) and powers off shortly after boot.
    #[serde(default)]
    pub image_fetch_failure_probability: f64,
    /// The account's On-Demand vCPU quota per region for the standard classes (A, C, D, H, I,
    /// M, R, T, Z), counting pending and running instances: a launch past it answers
    /// `VcpuLimitExceeded`.
    pub on_demand_vcpu_quota: u32,
    /// Chance per (instance type, availability zone other than the first) that the zone does
    /// not offer the type: RunInstances placed there answers `Unsupported`. Drawn from the
    /// seed and the pair, not the PRNG, so DescribeInstanceTypeOfferings and RunInstances agree.
    pub zone_offering_gap_probability: f64,
    /// Chance that a capacity shortage also drains the next smaller and next larger size of
    /// the family in the same zone.
    pub capacity_shortage_neighbours_probability: f64,
    /// Chance that a capacity shortage drains every size of the family in the same zone.
    pub capacity_shortage_family_probability: f64,
    /// Chance that a page of a paginated Describe (one that set `MaxResults`) is cut short: it
    /// holds a drawn number of items, from none to all that fit, and a `NextToken` even when
    /// nothing remains (EC2 API Reference, "Pagination"; see `pagination`).
    #[serde(default)]
    pub page_short_probability: f64,
}

/// The On-Demand vCPU quota [`FaultConfig::default`] gives each region: large enough that the
/// ordinary workloads never meet it. Not AWS's figure: AWS sets each account's value (Service
/// Quotas, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", L-1216C47A),
/// and new accounts can start far lower.
pub const DEFAULT_ON_DEMAND_VCPU_QUOTA: u32 = 100_000;

impl FaultConfig {
    /// Nothing goes wrong and nothing takes time: every resource is visible at once, instances
    /// run and terminate instantly. Terminated instances still vanish after an hour.
    pub fn none() -> Self {
        Self {
            throttle_probability: 0.0,
            internal_error_probability: 0.0,
            unavailable_probability: 0.0,
            response_lost_probability: 0.0,
            insufficient_capacity_probability: 0.0,
            capacity_shortage_ms_min: 0,
            capacity_shortage_ms_max: 0,
            visibility_delay_ms_min: 0,
            visibility_delay_ms_max: 0,
            launch_delay_ms_min: 0,
            launch_delay_ms_max: 0,
            termination_delay_ms_min: 0,
            termination_delay_ms_max: 0,
            dependency_violation_lag_ms_min: 0,
            dependency_violation_lag_ms_max: 0,
            spontaneous_exit_probability: 0.0,
            spontaneous_exit_after_ms_max: 0,
            terminated_visible_ms: 3_600_000,
            metrics_lag_ms_min: 0,
            console_delay_ms_min: 0,
            console_delay_ms_max: 0,
            metrics_lag_ms_max: 0,
            metrics_gap_probability: 0.0,
            cloudwatch_throttle_probability: 0.0,
            tag_propagation_ms_max: 0,
            stale_state_ms_max: 0,
            deleted_visible_ms_max: 0,
            image_fetch_failure_probability: 0.0,
            on_demand_vcpu_quota: u32::MAX,
            zone_offering_gap_probability: 0.0,
            capacity_shortage_neighbours_probability: 0.0,
            capacity_shortage_family_probability: 0.0,
            page_short_probability: 0.0,
        }
    }

    /// A random mix for swarm testing: each knob is off or on with its own rate, drawn from `rng`.
    pub fn swarm(rng: &mut impl Rng) -> Self {
        fn maybe(rng: &mut impl Rng, max: f64) -> f64 {
            if rng.gen_bool(0.5) { round4(rng.gen_range(0.0..max)) } else { 0.0 }
        }
        fn range(rng: &mut impl Rng, min_lo: u64, min_hi: u64, spread_max: u64) -> (u64, u64) {
            let min = rng.gen_range(min_lo..=min_hi);
            (min, min + rng.gen_range(0..=spread_max))
        }
        let throttle_probability = maybe(rng, 0.05);
        let internal_error_probability = maybe(rng, 0.03);
        let unavailable_probability = maybe(rng, 0.02);
        let response_lost_probability = maybe(rng, 0.02);
        let insufficient_capacity_probability = maybe(rng, 0.10);
        let (capacity_shortage_ms_min, capacity_shortage_ms_max) = range(rng, 10_000, 60_000, 600_000);
        let (visibility_delay_ms_min, visibility_delay_ms_max) = range(rng, 0, 500, 10_000);
        let (launch_delay_ms_min, launch_delay_ms_max) = range(rng, 1_000, 10_000, 120_000);
        let (termination_delay_ms_min, termination_delay_ms_max) = range(rng, 1_000, 10_000, 120_000);
        let (dependency_violation_lag_ms_min, dependency_violation_lag_ms_max) = range(rng, 0, 5_000, 60_000);
        let spontaneous_exit_probability = maybe(rng, 0.3);
        let spontaneous_exit_after_ms_max = rng.gen_range(60_000..=7_200_000);
        let terminated_visible_ms = rng.gen_range(3_000_000..=4_200_000);
        // Where `metrics_delay_ms` was drawn: a draw of the same kind, so later knobs keep theirs.
        let metrics_lag_ms_min = rng.gen_range(0..=4 * 60_000);
        // Drawn last, so that every knob drawn before keeps its value for a seed.
        let (console_delay_ms_min, console_delay_ms_max) = range(rng, 0, 30_000, 270_000);
        // CloudWatch (drawn after the console's, for the same reason): a lag of up to 12
        // minutes after the period ends, gaps and extra throttles as faults.
        let metrics_lag_ms_max = metrics_lag_ms_min + rng.gen_range(0..=8 * 60_000);
        let metrics_gap_probability = maybe(rng, 0.02);
        let cloudwatch_throttle_probability = maybe(rng, 0.05);
        // Issue 14's eventual consistency, drawn after every older knob.
        let tag_propagation_ms_max = rng.gen_range(0..=30_000);
        let stale_state_ms_max = rng.gen_range(0..=15_000);
        let deleted_visible_ms_max = rng.gen_range(0..=60_000);
        // Drawn after the console's delays, for the same reason.
        let image_fetch_failure_probability = maybe(rng, 0.1);
        // Quotas, offerings and correlated shortages (issue 14), drawn after everything older.
        // A low quota bites one seed in three: from 16 vCPUs (a handful of instances) to 512.
        let on_demand_vcpu_quota =
            if rng.gen_bool(1.0 / 3.0) { rng.gen_range(16..=512) } else { DEFAULT_ON_DEMAND_VCPU_QUOTA };
        let zone_offering_gap_probability = maybe(rng, 0.3);
        let capacity_shortage_neighbours_probability = round4(rng.gen_range(0.5..=1.0));
        let capacity_shortage_family_probability = maybe(rng, 0.3);
        let page_short_probability = round4(rng.gen_range(0.0..0.6));
        Self {
            throttle_probability,
            internal_error_probability,
            unavailable_probability,
            response_lost_probability,
            insufficient_capacity_probability,
            capacity_shortage_ms_min,
            capacity_shortage_ms_max,
            visibility_delay_ms_min,
            visibility_delay_ms_max,
            launch_delay_ms_min,
            launch_delay_ms_max,
            termination_delay_ms_min,
            termination_delay_ms_max,
            dependency_violation_lag_ms_min,
            dependency_violation_lag_ms_max,
            spontaneous_exit_probability,
            spontaneous_exit_after_ms_max,
            terminated_visible_ms,
            metrics_lag_ms_min,
            console_delay_ms_min,
            console_delay_ms_max,
            metrics_lag_ms_max,
            metrics_gap_probability,
            cloudwatch_throttle_probability,
            tag_propagation_ms_max,
            stale_state_ms_max,
            deleted_visible_ms_max,
            image_fetch_failure_probability,
            on_demand_vcpu_quota,
            zone_offering_gap_probability,
            capacity_shortage_neighbours_probability,
            capacity_shortage_family_probability,
            page_short_probability,
        }
    }

    /// Checks probabilities are in `[0, 1]` and every `min` is at most its `max`.
    pub fn validate(&self) -> Result<(), SimError> {
        let probabilities = [
            ("throttle_probability", self.throttle_probability),
            ("internal_error_probability", self.internal_error_probability),
            ("unavailable_probability", self.unavailable_probability),
            ("response_lost_probability", self.response_lost_probability),
            ("insufficient_capacity_probability", self.insufficient_capacity_probability),
            ("spontaneous_exit_probability", self.spontaneous_exit_probability),
            ("metrics_gap_probability", self.metrics_gap_probability),
            ("cloudwatch_throttle_probability", self.cloudwatch_throttle_probability),
            ("image_fetch_failure_probability", self.image_fetch_failure_probability),
            ("zone_offering_gap_probability", self.zone_offering_gap_probability),
            ("capacity_shortage_neighbours_probability", self.capacity_shortage_neighbours_probability),
            ("capacity_shortage_family_probability", self.capacity_shortage_family_probability),
            ("page_short_probability", self.page_short_probability),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!("{name} is {p}: use a probability from 0.0 to 1.0")));
            }
        }
        let ranges = [
            ("capacity_shortage_ms", self.capacity_shortage_ms_min, self.capacity_shortage_ms_max),
            ("visibility_delay_ms", self.visibility_delay_ms_min, self.visibility_delay_ms_max),
            ("launch_delay_ms", self.launch_delay_ms_min, self.launch_delay_ms_max),
            ("termination_delay_ms", self.termination_delay_ms_min, self.termination_delay_ms_max),
            ("dependency_violation_lag_ms", self.dependency_violation_lag_ms_min, self.dependency_violation_lag_ms_max),
            ("console_delay_ms", self.console_delay_ms_min, self.console_delay_ms_max),
            ("metrics_lag_ms", self.metrics_lag_ms_min, self.metrics_lag_ms_max),
        ];
        for (name, min, max) in ranges {
            if min > max {
                return Err(SimError::Config(format!("{name}_min {min} exceeds {name}_max {max}: swap them")));
            }
        }
        Ok(())
    }
}

impl Default for FaultConfig {
    /// Realistic, mild EC2: eventual consistency of up to 2 s, 5–40 s in `pending`, 5–60 s in
    /// `shutting-down`, groups held up to 30 s after termination, CloudWatch's 5-minute
    /// datapoints published 1 to 5 minutes after their period; no random failures.
    fn default() -> Self {
        Self {
            visibility_delay_ms_min: 0,
            visibility_delay_ms_max: 2_000,
            launch_delay_ms_min: 5_000,
            launch_delay_ms_max: 40_000,
            termination_delay_ms_min: 5_000,
            termination_delay_ms_max: 60_000,
            dependency_violation_lag_ms_min: 1_000,
            dependency_violation_lag_ms_max: 30_000,
            capacity_shortage_ms_min: 60_000,
            capacity_shortage_ms_max: 300_000,
            spontaneous_exit_after_ms_max: 3_600_000,
            // EC2's basic monitoring: 5-minute datapoints, published minutes late
            // (docs/ec2-facts.md, "Billing and CloudWatch"); see `world::cloudwatch`.
            metrics_lag_ms_min: 60_000,
            metrics_lag_ms_max: 5 * 60_000,
            // Console output is captured shortly after boot and published with a lag ("Get the
            // console output", Amazon EC2 User Guide).
            console_delay_ms_min: 10_000,
            console_delay_ms_max: 120_000,
            // Eventual consistency beyond existence ("Eventual consistency in the Amazon EC2
            // API"): seconds, as ordinary EC2 shows.
            tag_propagation_ms_max: 5_000,
            stale_state_ms_max: 3_000,
            deleted_visible_ms_max: 10_000,
            on_demand_vcpu_quota: DEFAULT_ON_DEMAND_VCPU_QUOTA,
            // A shortage in a zone usually reaches the neighbouring sizes of the family, and
            // sometimes the whole family (they share hosts): "try the next size" is no sure escape.
            capacity_shortage_neighbours_probability: 0.75,
            capacity_shortage_family_probability: 0.1,
            // Pages shorter than MaxResults, now and then empty, are ordinary EC2 answers.
            page_short_probability: 0.05,
            ..Self::none()
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

impl fmt::Display for FaultConfig {
    /// One line, `name=value` pairs, ranges as `min..max`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throttle_probability={} internal_error_probability={} unavailable_probability={} \
             response_lost_probability={} insufficient_capacity_probability={} capacity_shortage_ms={}..{} \
             visibility_delay_ms={}..{} launch_delay_ms={}..{} termination_delay_ms={}..{} \
             dependency_violation_lag_ms={}..{} spontaneous_exit_probability={} spontaneous_exit_after_ms_max={} \
             terminated_visible_ms={} metrics_lag_ms={}..{} console_delay_ms={}..{} \
             metrics_gap_probability={} cloudwatch_throttle_probability={} tag_propagation_ms_max={} \
             stale_state_ms_max={} deleted_visible_ms_max={} \
             image_fetch_failure_probability={} on_demand_vcpu_quota={} \
             zone_offering_gap_probability={} capacity_shortage_neighbours_probability={} \
             capacity_shortage_family_probability={} page_short_probability={}",
            self.throttle_probability,
            self.internal_error_probability,
            self.unavailable_probability,
            self.response_lost_probability,
            self.insufficient_capacity_probability,
            self.capacity_shortage_ms_min,
            self.capacity_shortage_ms_max,
            self.visibility_delay_ms_min,
            self.visibility_delay_ms_max,
            self.launch_delay_ms_min,
            self.launch_delay_ms_max,
            self.termination_delay_ms_min,
            self.termination_delay_ms_max,
            self.dependency_violation_lag_ms_min,
            self.dependency_violation_lag_ms_max,
            self.spontaneous_exit_probability,
            self.spontaneous_exit_after_ms_max,
            self.terminated_visible_ms,
            self.metrics_lag_ms_min,
            self.metrics_lag_ms_max,
            self.console_delay_ms_min,
            self.console_delay_ms_max,
            self.metrics_gap_probability,
            self.cloudwatch_throttle_probability,
            self.tag_propagation_ms_max,
            self.stale_state_ms_max,
            self.deleted_visible_ms_max,
            self.image_fetch_failure_probability,
            self.on_demand_vcpu_quota,
            self.zone_offering_gap_probability,
            self.capacity_shortage_neighbours_probability,
            self.capacity_shortage_family_probability,
            self.page_short_probability,
        )
    }
}
