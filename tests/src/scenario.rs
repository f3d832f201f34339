//! Workloads: grants arriving over time across regions, drawn from one seed.

use backend_api::{AlmanacTick, ComputeGrant, ComputeManifest, GrantId, ImageHash, RegionLabel};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The largest gp3 volume, GiB.
const MAX_ROOT_VOLUME_GIB: u32 = 16_384;
use sim_ec2::FaultConfig;

pub use crate::breakage::Breakage;
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

/// Records between the ledger store's snapshots in a run: often, so that most restarts open
/// from a snapshot with a short tail, and some from one taken moments before the crash.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 50;

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
    /// A deliberate bug to switch on (the self-test's runs; never in a normal run).
    pub breakage: Option<Breakage>,
    /// Checkers whose findings are ignored (to show the self-test fails without them).
    pub disabled_checkers: Vec<String>,
    /// A fault configuration that replaces the mode's (the self-test's targeted runs).
    pub faults_override: Option<FaultConfig>,
    /// How many bridge replicas share the ledger (1: one bridge with a ledger of its own, crashed
    /// and restarted in place; 2 or more: replicas under one lease, a crash killing or pausing
    /// the holder while a standby takes over).
    pub replicas: u8,
    /// With replicas, the share of crashes that pause the holder instead of killing it.
    pub pause_share: f64,
    /// Without replicas, the share of crashes that are a drain (SIGTERM) instead of a kill:
    /// the bridge stops admitting, lets provisions finish within its drain time or rolls them
    /// back as retryable, and exits; it starts again after the downtime.
    pub drain_share: f64,
    /// With crashes, draw 8 to 12 of them instead of 1 to 4, one in three down for 2 to 10
    /// minutes instead of one in ten (what the self-test's recovery cases need to meet a crash
    /// at the moments their bugs matter).
    pub crash_heavy: bool,
    /// The share of admissible grants drawn at an edge: zero CPU or RAM, storage at or past the
    /// gp3 limit, more RAM than any type, a deadline seconds away.
    pub edge_share: f64,
    /// The ledger's store asks for a snapshot every this many records (0: never), and a
    /// restarted process opens from the newest one plus the records after it.
    pub snapshot_every: u64,
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
            replicas: 1,
            pause_share: 0.5,
            drain_share: 0.3,
            crash_heavy: false,
            breakage: None,
            disabled_checkers: Vec::new(),
            faults_override: None,
            edge_share: 0.05,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

impl Scenario {
    /// The simulator's fault configuration: the override, or the mode's draw from `rng`.
    pub fn draw_faults(&self, rng: &mut ChaCha8Rng) -> FaultConfig {
        let drawn = self.faults.draw(rng);
        self.faults_override.clone().unwrap_or(drawn)
    }

    /// True unless `checker`'s findings are switched off for this run.
    pub fn checks(&self, checker: &str) -> bool {
        !self.disabled_checkers.iter().any(|c| c == checker)
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
    /// Asks for zero CPU or zero RAM, or starts later than a provision may wait: must be
    /// refused as invalid input.
    RefuseInvalid,
    /// Lives only seconds to two minutes: its deadline falls while it is provisioned or
    /// pending. May be refused (too short to launch) or fail on its deadline; nothing may
    /// outlive the deadline.
    Short,
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
    /// The first valid tick in unix ms.
    pub fn valid_from_unix_ms(&self) -> u64 {
        START_UNIX_MS + self.valid_from.0 * 1_000
    }

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
    scenario.draw_faults(&mut ChaCha8Rng::seed_from_u64(scenario.seed))
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
        let mut valid_from_unix_ms = arrival_unix_ms;
        let roll: f64 = rng.r#gen();
        let edge: f64 = rng.r#gen();
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
        } else if roll >= 0.13 + scenario.edge_share.clamp(0.0, 0.87) {
            Expect::Admit
        } else if edge < 0.25 {
            if rng.gen_bool(0.5) {
                manifest.cpu_millicores = 0;
            } else {
                manifest.ram_mib = 0;
            }
            Expect::RefuseInvalid
        } else if edge < 0.5 {
            // Past the largest gp3 volume, or more RAM than any type has.
            if rng.gen_bool(0.5) {
                manifest.storage_gib = MAX_ROOT_VOLUME_GIB + 1;
            } else {
                manifest.ram_mib = 16 * 1_024 * 1_024;
            }
            Expect::RefuseOversize
        } else if edge < 0.6 {
            manifest.storage_gib = MAX_ROOT_VOLUME_GIB;
            Expect::Admit
        } else if edge < 0.75 {
            // Starts up to 4 minutes after it arrives: provision waits for it, and the whole
            // lifetime follows the start (else less than `min_lifetime_s` could be left).
            valid_from_unix_ms = arrival_unix_ms + rng.gen_range(1_000..240_000);
            valid_to_unix_ms = valid_from_unix_ms + lifetime_ms;
            Expect::Admit
        } else if edge < 0.8 {
            // Starts two hours after it arrives: longer than a provision may wait.
            valid_from_unix_ms = arrival_unix_ms + 2 * 3_600_000;
            valid_to_unix_ms = valid_from_unix_ms + lifetime_ms;
            Expect::RefuseInvalid
        } else {
            valid_to_unix_ms = arrival_unix_ms + rng.gen_range(1_000..120_000);
            Expect::Short
        };
        let valid_to = tick_of(valid_to_unix_ms);
        plans.push(GrantPlan {
            id: GrantId(id),
            arrival_unix_ms,
            manifest,
            valid_from: tick_of(valid_from_unix_ms).min(valid_to),
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
        // Replicas crash more often: each crash of the holder is a takeover to test.
        let count = if scenario.replicas > 1 {
            rng.gen_range(3..=8)
        } else if scenario.crash_heavy {
            rng.gen_range(8..=12)
        } else {
            rng.gen_range(1..=4)
        };
        for _ in 0..count {
            let at_unix_ms = START_UNIX_MS + rng.gen_range(0..horizon);
            let mut downtime_ms = rng.gen_range(1_000..=20_000);
            // Now and then the bridge stays away for minutes (a slow deploy, a host replaced):
            // runs start and deadlines pass while nobody looks, for longer than EC2's one-minute
            // minimum. One crash in ten; one in three on a heavy schedule.
            let long_share = if scenario.crash_heavy { 1.0 / 3.0 } else { 0.1 };
            if rng.gen_bool(long_share) {
                downtime_ms = rng.gen_range(120_000..=600_000);
            }
            crashes.push(Crash { at_unix_ms, downtime_ms });
        }
        // Some crashes hit recovery itself: the backend dies again while it resumes.
        for i in 0..crashes.len() {
            if rng.gen_bool(0.3) {
                let first = crashes[i];
                crashes.push(Crash {
                    at_unix_ms: first.at_unix_ms + first.downtime_ms + rng.gen_range(0..3_000),
                    downtime_ms: rng.gen_range(1_000..=20_000),
                });
            }
        }
        crashes.sort_by_key(|c| c.at_unix_ms);
        // A crash while down is no crash: keep those that come after the previous restart.
        let mut up_at = 0;
        crashes.retain(|c| {
            let keep = c.at_unix_ms > up_at;
            if keep {
                up_at = c.at_unix_ms + c.downtime_ms;
            }
            keep
        });
    }
    (plans, crashes)
}
