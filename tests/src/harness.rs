//! The run: the real backend over the simulator through a scenario, with crashes, checks after
//! every step, and a quiet phase in which everything must end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_backend::{AwsBackend, OWNER_TAG, TestSwitches};
use backend_api::{Backend, BackendError, Clock, Envelope, GrantId, TokioClock};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sim_ec2::{SimConfig, SimEc2};
use tokio::task::JoinHandle;
use usage_ledger::MemoryStore;

use crate::checkers::{self, Context, Measures, Violation};
use crate::fixture::{self, START_UNIX_MS};
use crate::scenario::{Expect, GrantPlan, Scenario, generate};
use crate::summary::{GrantCounts, Summary};

/// How often the checkers run, in virtual time.
const CHECK_EVERY_MS: u64 = 10_000;
/// How often the reaper runs during the run, in virtual time.
const REAP_EVERY_MS: u64 = 20 * 60_000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Waiting,
    Refused,
    ProvisionFailed(String),
    Completed,
    Interrupted,
    WrongfullyAdmitted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrive(usize),
    Crash(usize),
    Check,
    Reap,
}

type Outcomes = Arc<Mutex<BTreeMap<GrantId, Outcome>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn lifecycle(backend: AwsBackend, plan: Arc<GrantPlan>, outcomes: Outcomes) {
    let grant = plan.grant();
    let envelope = Envelope::for_region(plan.region.clone());
    let outcome = match backend.provision(&grant, &envelope).await {
        Err(err) => {
            let refused = matches!(
                err.downcast_ref::<BackendError>(),
                Some(
                    BackendError::Unsatisfiable { .. }
                        | BackendError::RegionNotAllowed { .. }
                        | BackendError::DeadlinePassed { .. }
                )
            ) && backend.grant_state(&plan.id).is_none();
            if refused { Outcome::Refused } else { Outcome::ProvisionFailed(format!("{err:#}")) }
        }
        Ok(_) if plan.expect != Expect::Admit => Outcome::WrongfullyAdmitted,
        Ok(instance) => {
            let watched = backend.watch_until_exit(&instance, plan.valid_to).await;
            let ended = backend.terminate(&instance).await;
            match (watched, ended) {
                (Ok(_), Ok(())) => Outcome::Completed,
                (Err(err), _) | (_, Err(err)) => Outcome::ProvisionFailed(format!("after provision: {err:#}")),
            }
        }
    };
    lock(&outcomes).insert(plan.id, outcome);
}

struct World {
    scenario: Scenario,
    cfg: aws_backend::AwsBootConfig,
    sim: Arc<SimEc2>,
    clock: Arc<TokioClock>,
    store: MemoryStore,
    plans: BTreeMap<GrantId, GrantPlan>,
    measures: Measures,
    violations: Vec<Violation>,
    downtime_ms_max: u64,
    network_bytes_per_s_max: u64,
    retries: BTreeMap<String, u64>,
}

impl World {
    fn check(&mut self, backend: &AwsBackend) {
        let ctx = Context {
            now_unix_ms: self.clock.now_unix_ms(),
            sim: &self.sim,
            backend,
            store: &self.store,
            plans: &self.plans,
            grace_ms: self.cfg.deadline_grace_ms(),
            poll_interval_ms: self.scenario.poll_interval_ms,
            downtime_ms_max: self.downtime_ms_max,
            network_bytes_per_s_max: self.network_bytes_per_s_max,
            instances: self.sim.instances(),
            live: self.sim.live_resources(),
        };
        for v in checkers::check_all(&ctx, &mut self.measures) {
            if !self.violations.contains(&v) {
                self.violations.push(v);
            }
        }
    }

    fn absorb_stats(&mut self, backend: &AwsBackend) {
        for (code, n) in backend.pacing_stats().retries_by_code {
            *self.retries.entry(code).or_default() += n;
        }
    }
}

/// Runs `scenario` to the end on a fresh single-threaded runtime with virtual time, and
/// returns its summary. `progress` receives a line now and then.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Summary> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    let wall = Instant::now();
    let mut summary = runtime.block_on(run_async(scenario, progress))?;
    summary.wall_ms = u64::try_from(wall.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

async fn run_async(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Summary> {
    let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
    let faults = scenario.faults.draw(&mut rng);
    let (plans, crashes) = generate(scenario, &mut rng);
    let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
    let regions = fixture::ALLOWED_REGIONS.iter().map(|r| fixture::region(r)).collect();
    let sim_config = SimConfig::new(scenario.seed, regions).with_faults(faults.clone());
    let network_bytes_per_s_max = sim_config.network_bytes_per_s_max;
    let sim = Arc::new(SimEc2::new(sim_config, clock.clone())?);
    let cfg = fixture::config(scenario.poll_interval_ms);
    let store = MemoryStore::new();
    let switches = TestSwitches { skip_security_group_delete: scenario.break_teardown };
    let mut world = World {
        scenario: scenario.clone(),
        cfg: cfg.clone(),
        sim: sim.clone(),
        clock: clock.clone(),
        store: store.clone(),
        plans: plans.iter().map(|p| (p.id, p.clone())).collect(),
        measures: Measures::default(),
        violations: Vec::new(),
        downtime_ms_max: crashes.iter().map(|c| c.downtime_ms).max().unwrap_or(0),
        network_bytes_per_s_max,
        retries: BTreeMap::new(),
    };
    let mut backend = fixture::backend(
        &cfg,
        sim.clone() as Arc<dyn aws_backend::port::Ec2Port>,
        clock.clone(),
        &store,
        scenario.seed,
        switches,
    )
    .await?;
    let outcomes: Outcomes = Arc::new(Mutex::new(plans.iter().map(|p| (p.id, Outcome::Waiting)).collect()));

    // The schedule: arrivals, crashes, checks and reaper passes, in time order.
    let mut steps: Vec<(u64, Step)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        steps.push((plan.arrival_unix_ms, Step::Arrive(i)));
    }
    for (i, crash) in crashes.iter().enumerate() {
        steps.push((crash.at_unix_ms, Step::Crash(i)));
    }
    let last_deadline = plans.iter().map(|p| p.valid_to_unix_ms).max().unwrap_or(START_UNIX_MS);
    let busy_until = last_deadline.max(crashes.last().map_or(0, |c| c.at_unix_ms)) + cfg.deadline_grace_ms();
    let mut t = START_UNIX_MS;
    while t <= busy_until {
        steps.push((t, Step::Check));
        t += CHECK_EVERY_MS;
    }
    let mut t = START_UNIX_MS + REAP_EVERY_MS;
    while t <= busy_until {
        steps.push((t, Step::Reap));
        t += REAP_EVERY_MS;
    }
    steps.sort();

    let mut tasks: Vec<(Option<GrantId>, JoinHandle<()>)> = Vec::new();
    let mut crash_count = 0u64;
    let mut next_progress = START_UNIX_MS + 15 * 60_000;
    for (at, step) in steps {
        clock.sleep_until_unix_ms(at).await;
        match step {
            Step::Arrive(i) => {
                let plan = Arc::new(plans[i].clone());
                let handle = tokio::spawn(lifecycle(backend.clone(), plan.clone(), outcomes.clone()));
                tasks.push((Some(plan.id), handle));
            }
            Step::Crash(i) => {
                crash_count += 1;
                for (grant, handle) in tasks.drain(..) {
                    handle.abort();
                    let _ = handle.await;
                    if let Some(grant) = grant {
                        let mut outcomes = lock(&outcomes);
                        if outcomes.get(&grant) == Some(&Outcome::Waiting) {
                            outcomes.insert(grant, Outcome::Interrupted);
                        }
                    }
                }
                world.absorb_stats(&backend);
                drop(backend);
                clock.sleep_ms(crashes[i].downtime_ms).await;
                backend = fixture::backend(
                    &cfg,
                    sim.clone() as Arc<dyn aws_backend::port::Ec2Port>,
                    clock.clone(),
                    &store,
                    scenario.seed ^ at,
                    switches,
                )
                .await?;
                let recovering = backend.clone();
                tasks.push((
                    None,
                    tokio::spawn(async move {
                        let report = recovering.recover().await;
                        if !report.failed.is_empty() {
                            tracing::warn!(?report, "recovery left grants unfinished");
                        }
                    }),
                ));
            }
            Step::Check => world.check(&backend),
            Step::Reap => {
                let reaping = backend.clone();
                tasks.push((
                    None,
                    tokio::spawn(async move {
                        reaping.reap(false).await;
                    }),
                ));
            }
        }
        if at >= next_progress {
            next_progress += 15 * 60_000;
            let done = lock(&outcomes).values().filter(|o| **o != Outcome::Waiting).count();
            progress(&format!(
                "  t+{:>4} min: {done}/{} grants done, {} EC2 calls, {} violations",
                (at - START_UNIX_MS) / 60_000,
                plans.len(),
                sim.stats().total_calls(),
                world.violations.len()
            ));
        }
    }

    // Quiet phase: no new work; everything in flight must end.
    let quiet_deadline = clock.now_unix_ms() + 2 * 3_600_000;
    loop {
        tasks.retain(|(_, h)| !h.is_finished());
        if tasks.is_empty() || clock.now_unix_ms() >= quiet_deadline {
            break;
        }
        clock.sleep_ms(10_000).await;
        world.check(&backend);
    }
    for (grant, handle) in tasks.drain(..) {
        world.violations.push(Violation::liveness(
            "quiet-phase",
            format!(
                "a task ({}) was still running two virtual hours after the last deadline",
                grant.map_or("recovery or reaper".into(), |g| format!("grant {g}"))
            ),
        ));
        handle.abort();
    }
    // One reaper pass once the orphan grace has passed: nothing of ours may remain.
    clock.sleep_ms(cfg.reaper_grace_ms + 60_000).await;
    let report = backend.reap(false).await;
    for error in report.errors {
        world.violations.push(Violation::liveness("reaper", error));
    }
    world.check(&backend);
    world.absorb_stats(&backend);

    let leaked = sim.live_resources_tagged(OWNER_TAG, fixture::OWNER);
    for resource in &leaked {
        world.violations.push(Violation::liveness(
            "quiet-phase",
            format!(
                "{:?} {} in {} still exists after the quiet phase and a reaper pass",
                resource.kind, resource.id, resource.region
            ),
        ));
    }
    let outcomes = lock(&outcomes).clone();
    let mut provision_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut counts = GrantCounts { total: plans.len() as u64, ..GrantCounts::default() };
    for plan in &plans {
        let settled = backend.grant_state(&plan.id).map(|s| s.is_settled());
        match settled {
            Some(true) => counts.settled += 1,
            Some(false) => world.violations.push(Violation::liveness(
                "quiet-phase",
                format!("grant {} is not settled after the quiet phase", plan.id),
            )),
            None => {}
        }
        if settled.is_some() {
            counts.admitted += 1;
        }
        match outcomes.get(&plan.id) {
            Some(Outcome::Refused) => {
                counts.refused += 1;
                if plan.expect == Expect::Admit && scenario.faults == crate::scenario::FaultMode::None {
                    world
                        .violations
                        .push(Violation::liveness("admission", format!("admissible grant {} was refused", plan.id)));
                }
            }
            Some(Outcome::Completed) => counts.completed += 1,
            Some(Outcome::ProvisionFailed(err)) => {
                counts.provision_failed += 1;
                *provision_errors.entry(strip_ids(err)).or_default() += 1;
                if scenario.faults == crate::scenario::FaultMode::None {
                    world.violations.push(Violation::liveness(
                        "admission",
                        format!("grant {} failed without faults: {err}", plan.id),
                    ));
                }
            }
            Some(Outcome::Interrupted) => counts.interrupted += 1,
            Some(Outcome::WrongfullyAdmitted) => world.violations.push(Violation::safety(
                "admission",
                format!("grant {} ({:?}) was provisioned but must be refused", plan.id, plan.expect),
            )),
            Some(Outcome::Waiting) | None => {}
        }
        if plan.expect != Expect::Admit && backend.can_satisfy(&plan.grant()) {
            world.violations.push(Violation::safety(
                "admission",
                format!("can_satisfy accepted grant {} ({:?})", plan.id, plan.expect),
            ));
        }
    }

    let stats = sim.stats();
    let ledger_hash = backend.with_ledger(|l| hex_of(&l.records_hash()));
    Ok(Summary {
        seed: scenario.seed,
        faults_mode: scenario.faults.flag(),
        faults,
        grants: counts,
        ec2_calls: stats.calls.iter().map(|(op, n)| (op.name().to_string(), *n)).collect(),
        ec2_calls_total: stats.total_calls(),
        throttles: stats.total_throttles(),
        retries: world.retries.clone(),
        faults_injected: stats.faults.clone(),
        crashes: crash_count,
        leaked_resources: leaked.len() as u64,
        measures: world.measures.clone(),
        virtual_ms: clock.now_unix_ms() - START_UNIX_MS,
        wall_ms: 0,
        ledger_hash,
        audit_hash: sim.audit_hash(),
        provision_errors,
        violations: world.violations,
    })
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The message with ids and numbers replaced, so equal causes count together.
fn strip_ids(message: &str) -> String {
    message
        .split(' ')
        .map(|word| if word.chars().filter(char::is_ascii_digit).count() >= 3 { "#" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}
