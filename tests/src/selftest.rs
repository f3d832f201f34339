//! `cargo xtask sim --self-test`: proof that every checker can fail. Each deliberate bug
//! ([`Breakage`]) is switched on for a few fixed seeds; the run must report its checker, and
//! nothing a bug of that kind could not plausibly cause. A control run of each setting, with no
//! bug, must report nothing.

use std::collections::BTreeSet;

use sim_ec2::FaultConfig;

use crate::harness;
use crate::scenario::{Breakage, FaultMode, Scenario};

/// The fixed seeds every case runs, in each of its two regimes.
pub const SEEDS: [u64; 4] = [11, 12, 13, 14];

/// The scenario a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// 60 grants arriving over half a virtual hour, default faults.
    Plain,
    /// The same with lost responses on 30 % of mutating calls, and crashes: what a fresh
    /// ClientToken per call needs to launch twice.
    Lossy,
    /// 120 grants arriving within 2 s: what skipping the buckets needs to empty EC2's.
    Burst,
    /// 60 grants, every admissible one at an edge (`Scenario::edge_share` 1): some start
    /// minutes after they arrive.
    Edges,
    /// 60 grants with crashes, and most pages of a listing cut short (some empty): what
    /// reading only the first page needs to miss resources.
    ShortPages,
    /// 60 grants on two replicas sharing the ledger, every crash a pause of the lease holder:
    /// what a replica that keeps acting after losing its lease needs to be seen.
    Replicas,
    /// 200 grants over a virtual hour with 8 to 12 crashes, and launches pending a minute or
    /// two: what recovery's bugs need to be seen (instances start running, and deadlines pass,
    /// while the bridge is down).
    Crashes,
    /// The same with every crash a drain: launches pending longer than the drain's time, so
    /// that drains cut provisions short.
    Drains,
}

impl Setting {
    /// The setting a breakage is tried in.
    pub fn for_breakage(breakage: Breakage) -> Setting {
        match breakage {
            Breakage::FreshClientToken => Setting::Lossy,
            Breakage::NoPacing => Setting::Burst,
            Breakage::EarlyStart | Breakage::IgnoreMinLifetime => Setting::Edges,
            Breakage::FirstPageOnly => Setting::ShortPages,
            Breakage::FencedReplicaActs => Setting::Replicas,
            // Bugs on the paths a restart takes need crashes to show.
            Breakage::RecoverySkipsOverdue
            | Breakage::BillDowntime
            | Breakage::IgnoreLaunchTime
            | Breakage::SnapshotLatePosition => Setting::Crashes,
            Breakage::DrainRollbackFinal => Setting::Drains,
            _ => Setting::Plain,
        }
    }

    /// The `cargo xtask sim` flags of the setting.
    pub fn flags(self) -> &'static str {
        match self {
            Setting::Plain => "--grants 60 --hours 0.5",
            Setting::Lossy => "--grants 60 --hours 0.5 --lossy --crashes",
            Setting::Burst => "--grants 120 --hours 0.0005556",
            Setting::Edges => "--grants 60 --hours 0.5 --edges 1",
            Setting::ShortPages => "--grants 60 --hours 0.5 --short-pages --crashes",
            Setting::Replicas => "--grants 60 --hours 0.5 --crashes --replicas 2 --pause-share 1",
            Setting::Crashes => "--grants 200 --hours 1 --crashes --crash-heavy",
            Setting::Drains => "--grants 200 --hours 1 --crashes --crash-heavy --drain-share 1",
        }
    }
}

/// One case: a breakage (or none, the control) on one seed of one regime, and what fired.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The deliberate bug, or `None` for the control run.
    pub breakage: Option<Breakage>,
    /// The scenario it ran in.
    pub setting: Setting,
    /// Whether it ran in the regime CI sweeps (swarm faults and crashes) rather than the
    /// setting's default faults.
    pub swarm: bool,
    /// The seed.
    pub seed: u64,
    /// Every checker that reported a violation.
    pub fired: BTreeSet<&'static str>,
    /// Whether the bug's clause fired on this seed (a violation of its checker whose message
    /// names the clause).
    pub clause_fired: bool,
    /// Whether the case passed: nothing implausible fired on this seed, and the clause fired on
    /// some seed of its regime (a seed whose draw never reaches the buggy path proves nothing
    /// either way; one where it does must fire).
    pub passed: bool,
    /// Why not, when it did not; the clause, when it did.
    pub why: String,
    /// A command that repeats the run.
    pub reproduce: String,
}

/// The default faults plus lost responses on 30 % of mutating calls.
pub fn lossy_faults() -> FaultConfig {
    FaultConfig { response_lost_probability: 0.3, ..FaultConfig::default() }
}

/// The default faults with launches pending one to two minutes.
pub fn slow_launch_faults() -> FaultConfig {
    FaultConfig { launch_delay_ms_min: 60_000, launch_delay_ms_max: 120_000, ..FaultConfig::default() }
}

/// The default faults with 70 % of the pages of a listing cut short.
pub fn short_page_faults() -> FaultConfig {
    FaultConfig { page_short_probability: 0.7, ..FaultConfig::default() }
}

/// The scenario of `setting` with `breakage` on, on `seed`, with `disabled` checkers ignored.
pub fn scenario(breakage: Option<Breakage>, setting: Setting, swarm: bool, seed: u64, disabled: &[String]) -> Scenario {
    let mut scenario = Scenario::new(seed);
    scenario.grants = 60;
    scenario.arrival_window_ms = 30 * 60_000;
    scenario.faults = FaultMode::Default;
    match setting {
        Setting::Plain => {}
        Setting::Lossy => {
            scenario.faults_override = Some(lossy_faults());
            scenario.crashes = true;
        }
        Setting::Burst => {
            scenario.grants = 120;
            scenario.arrival_window_ms = 2_000;
        }
        Setting::Edges => scenario.edge_share = 1.0,
        Setting::ShortPages => {
            scenario.faults_override = Some(short_page_faults());
            scenario.crashes = true;
        }
        Setting::Replicas => {
            scenario.crashes = true;
            scenario.replicas = 2;
            scenario.pause_share = 1.0;
        }
        Setting::Crashes | Setting::Drains => {
            scenario.grants = 200;
            scenario.arrival_window_ms = 60 * 60_000;
            scenario.crashes = true;
            scenario.faults_override = Some(slow_launch_faults());
            scenario.crash_heavy = true;
            if setting == Setting::Drains {
                scenario.drain_share = 1.0;
            }
        }
    }
    if swarm {
        // The regime CI sweeps: each seed draws its own fault mix, and the bridge crashes.
        scenario.faults = FaultMode::Swarm;
        scenario.crashes = true;
    }
    scenario.breakage = breakage;
    scenario.disabled_checkers = disabled.to_vec();
    scenario
}

/// Runs one case on one seed.
pub fn run_case(
    breakage: Option<Breakage>,
    setting: Setting,
    swarm: bool,
    seed: u64,
    disabled: &[String],
) -> anyhow::Result<CaseResult> {
    let summary = harness::run(&scenario(breakage, setting, swarm, seed, disabled), &mut |_| {})?;
    let fired: BTreeSet<&'static str> = summary.violations.iter().map(|v| v.checker).collect();
    let mut clause_fired = false;
    let (passed, why) = match breakage {
        None => (fired.is_empty(), format!("the control run reported {:?}", summary.violations.first())),
        Some(b) => {
            clause_fired =
                summary.violations.iter().any(|v| v.checker == b.caught_by() && v.message.contains(b.clause()));
            let unexpected: Vec<&str> =
                fired.iter().copied().filter(|c| *c != b.caught_by() && !b.also_plausible().contains(c)).collect();
            if !unexpected.is_empty() {
                let first = summary.violations.iter().find(|v| unexpected.contains(&v.checker));
                (false, format!("implausible checkers fired too: {unexpected:?}, e.g. {first:?}"))
            } else {
                (true, format!("clause `{}: {}`", b.caught_by(), b.clause()))
            }
        }
    };
    let mut reproduce = format!("cargo xtask sim --seed {seed} {}", setting.flags());
    if swarm {
        reproduce.push_str(" --faults swarm --crashes");
    }
    if let Some(b) = breakage {
        reproduce.push_str(&format!(" --break {}", b.name()));
    }
    for d in disabled {
        reproduce.push_str(&format!(" --disable-checker {d}"));
    }
    Ok(CaseResult { breakage, setting, swarm, seed, fired, clause_fired, passed, why, reproduce })
}

/// The stack of each thread running cases: the harness's futures are large in a debug build
/// (the memory is only reserved, and touched as it is used).
const CASE_STACK_BYTES: usize = 32 << 20;

/// Runs the controls and every breakage on every seed of both regimes (the setting's own
/// faults, then swarm faults with crashes), with `disabled` checkers ignored, `jobs` regimes at
/// once (each run is deterministic on its own, so the results do not depend on `jobs`), and
/// hands each result to `report` in the order above, once its regime is done.
pub fn run_all(
    disabled: &[String],
    jobs: usize,
    report: &mut dyn FnMut(&CaseResult),
) -> anyhow::Result<Vec<CaseResult>> {
    let mut cases: Vec<(Option<Breakage>, Setting)> = [
        Setting::Plain,
        Setting::Lossy,
        Setting::Burst,
        Setting::Edges,
        Setting::ShortPages,
        Setting::Replicas,
        Setting::Crashes,
        Setting::Drains,
    ]
    .map(|s| (None, s))
    .to_vec();
    cases.extend(Breakage::ALL.into_iter().map(|b| (Some(b), Setting::for_breakage(b))));
    let regimes: Vec<(Option<Breakage>, Setting, bool)> =
        cases.into_iter().flat_map(|(b, s)| [(b, s, false), (b, s, true)]).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, anyhow::Result<Vec<CaseResult>>)>();
    let mut results = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..jobs.clamp(1, regimes.len()) {
            let (tx, next, regimes) = (tx.clone(), &next, &regimes);
            std::thread::Builder::new().stack_size(CASE_STACK_BYTES).spawn_scoped(scope, move || {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&(breakage, setting, swarm)) = regimes.get(n) else { return };
                    if tx.send((n, run_regime(breakage, setting, swarm, disabled))).is_err() {
                        return;
                    }
                }
            })?;
        }
        drop(tx);
        // Reported in order: a regime that finishes early waits for the ones before it.
        let mut done = std::collections::BTreeMap::new();
        let mut reported = 0;
        for (n, regime) in rx {
            done.insert(n, regime);
            while let Some(regime) = done.remove(&reported) {
                for r in regime? {
                    report(&r);
                    results.push(r);
                }
                reported += 1;
            }
        }
        Ok(())
    })?;
    Ok(results)
}

/// One case's runs on every seed of one regime; a breakage whose clause fired on none of them
/// fails them all.
fn run_regime(
    breakage: Option<Breakage>,
    setting: Setting,
    swarm: bool,
    disabled: &[String],
) -> anyhow::Result<Vec<CaseResult>> {
    let mut regime = Vec::new();
    for seed in SEEDS {
        regime.push(run_case(breakage, setting, swarm, seed, disabled)?);
    }
    if let Some(b) = breakage
        && !regime.iter().any(|r| r.clause_fired)
    {
        for r in &mut regime {
            r.passed = false;
            r.why = format!(
                "clause `{}: {}` fired on none of the seeds {SEEDS:?} (fired: {:?})",
                b.caught_by(),
                b.clause(),
                r.fired
            );
        }
    }
    Ok(regime)
}
