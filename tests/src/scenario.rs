//! Workloads: grants arriving over time across regions, drawn from one seed.

use backend_api::{AlmanacTick, ComputeGrant, ComputeManifest, GrantId, ImageHash, RegionLabel};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sim_ec2::FaultConfig;

use crate::fixture::{ALLOWED_REGIONS, DISALLOWED_REGION, START_UNIX_MS, region};

/// Which faults the simulated EC2 injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FaultMode {
    /// Nothing fails and nothing lags.
    None,
    /// Realistic delays, no random failures.
    Default,
    /// Each seed draws its own mix of every fault (swarm testing).
    Swarm,
}

impl FaultMode {
    /// The simulator's fault configuration for this mode, drawn from `rng` for swarm.
    pub fn draw(self, rng: &mut ChaCha8Rng) -> FaultConfig {
        match self {
            FaultMode::None => FaultConfig::none(),
            FaultMode::Default => FaultConfig::default(),
            FaultMode::Swarm => FaultConfig::swarm(rng),
        }
    }

    /// The flag value that selects this mode.
    pub fn flag(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Default => "default",
            FaultMode::Swarm => "swarm",
        }
    }
}

/// Everything that defines a run besides the code: same scenario, same run.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// How many grants arrive.
    pub grants: u32,
    /// Which faults the simulated EC2 injects.
    pub faults: FaultMode,
    /// Whether the backend crashes (is dropped mid-flight and reopened on its ledger).
    pub crashes: bool,
    /// Grants arrive uniformly over this window of virtual time.
    pub arrival_window_ms: u64,
    /// The shortest grant lifetime.
    pub lifetime_ms_min: u64,
    /// The longest grant lifetime.
    pub lifetime_ms_max: u64,
    /// The backend's poll interval.
    pub poll_interval_ms: u64,
    /// Test-only breakage: skip DeleteSecurityGroup (the teardown checker must catch it).
    pub break_teardown: bool,
}

impl Scenario {
    /// The default run of `cargo xtask sim`: 200 grants over one virtual hour.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            grants: 200,
            faults: FaultMode::Default,
            crashes: false,
            arrival_window_ms: 3_600_000,
            lifetime_ms_min: 5 * 60_000,
            lifetime_ms_max: 45 * 60_000,
            poll_interval_ms: 5_000,
            break_teardown: false,
        }
    }
}

/// What the backend must do with a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Expect {
    /// Admissible: provision may still fail under faults, but must not be refused up front.
    Admit,
    /// Requires TDX: must be refused.
    RefuseTdx,
    /// Bigger than every instance type: must be refused.
    RefuseOversize,
    /// Deadline already passed on arrival: must be refused.
    RefuseExpired,
    /// Names a region outside the allowlist: must be refused.
    RefuseRegion,
}

/// One grant of the workload.
#[derive(Clone, Debug)]
pub struct GrantPlan {
    /// The grant's id.
    pub id: GrantId,
    /// When it reaches the backend, unix ms.
    pub arrival_unix_ms: u64,
    /// What it asks for.
    pub manifest: ComputeManifest,
    /// First valid tick.
    pub valid_from: AlmanacTick,
    /// The deadline.
    pub valid_to: AlmanacTick,
    /// The deadline in unix ms.
    pub valid_to_unix_ms: u64,
    /// The region it asks for.
    pub region: RegionLabel,
    /// What the backend must do with it.
    pub expect: Expect,
}

impl GrantPlan {
    /// The grant as the backend receives it.
    pub fn grant(&self) -> ComputeGrant<'_> {
        ComputeGrant { id: self.id, manifest: &self.manifest, valid_from: self.valid_from, valid_to: self.valid_to }
    }
}

fn tick_of(unix_ms: u64) -> AlmanacTick {
    AlmanacTick(unix_ms.saturating_sub(START_UNIX_MS) / 1_000)
}

/// A crash of the backend at `at_unix_ms`, down for `downtime_ms`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Crash {
    /// When it dies.
    pub at_unix_ms: u64,
    /// How long until it is back.
    pub downtime_ms: u64,
}

/// The fault rates a run of `scenario` draws (the first thing drawn from its seed), so they can
/// be printed before the run starts.
pub fn drawn_faults(scenario: &Scenario) -> FaultConfig {
    use rand_chacha::rand_core::SeedableRng;
    scenario.faults.draw(&mut ChaCha8Rng::seed_from_u64(scenario.seed))
}

/// Draws the workload and the crash schedule of `scenario` from `rng`.
pub fn generate(scenario: &Scenario, rng: &mut ChaCha8Rng) -> (Vec<GrantPlan>, Vec<Crash>) {
    const CPU: [u32; 9] = [250, 500, 1_000, 1_500, 2_000, 4_000, 8_000, 16_000, 32_000];
    const RAM: [u32; 8] = [512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536];
    let mut plans = Vec::with_capacity(scenario.grants as usize);
    for _ in 0..scenario.grants {
        let mut id = [0u8; 32];
        rng.fill(&mut id);
        let arrival_unix_ms = START_UNIX_MS + rng.gen_range(0..scenario.arrival_window_ms.max(1));
        let lifetime_ms = rng.gen_range(scenario.lifetime_ms_min..=scenario.lifetime_ms_max);
        let mut image = [0u8; 32];
        rng.fill(&mut image);
        let mut manifest = ComputeManifest {
            cpu_millicores: *CPU.choose(rng).unwrap_or(&1_000),
            ram_mib: *RAM.choose(rng).unwrap_or(&1_024),
            storage_gib: rng.gen_range(1..=100),
            tdx_required: false,
            image_post_hash: ImageHash(image),
        };
        let mut region = region(ALLOWED_REGIONS[rng.gen_range(0..ALLOWED_REGIONS.len())]);
        let mut valid_to_unix_ms = arrival_unix_ms + lifetime_ms;
        let roll: f64 = rng.r#gen();
        let expect = if roll < 0.04 {
            manifest.tdx_required = true;
            Expect::RefuseTdx
        } else if roll < 0.07 {
            manifest.cpu_millicores = 1_000_000;
            Expect::RefuseOversize
        } else if roll < 0.10 {
            valid_to_unix_ms = arrival_unix_ms.saturating_sub(rng.gen_range(1_000..600_000)).max(START_UNIX_MS);
            Expect::RefuseExpired
        } else if roll < 0.13 {
            region = crate::fixture::region(DISALLOWED_REGION);
            Expect::RefuseRegion
        } else {
            Expect::Admit
        };
        let valid_to = tick_of(valid_to_unix_ms);
        plans.push(GrantPlan {
            id: GrantId(id),
            arrival_unix_ms,
            manifest,
            valid_from: tick_of(arrival_unix_ms).min(valid_to),
            valid_to,
            valid_to_unix_ms: START_UNIX_MS + valid_to.0 * 1_000,
            region,
            expect,
        });
    }
    plans.sort_by_key(|p| (p.arrival_unix_ms, p.id));
    let mut crashes = Vec::new();
    if scenario.crashes {
        let horizon = scenario.arrival_window_ms + scenario.lifetime_ms_max;
        for _ in 0..rng.gen_range(1..=4) {
            crashes.push(Crash {
                at_unix_ms: START_UNIX_MS + rng.gen_range(0..horizon),
                downtime_ms: rng.gen_range(1_000..=20_000),
            });
        }
        crashes.sort_by_key(|c| c.at_unix_ms);
    }
    (plans, crashes)
}
