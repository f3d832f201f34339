//! The run: the real backend over the simulator through a scenario, with crashes, checks every
//! few virtual seconds, and a quiet phase in which everything must end.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use aws_backend::OWNER_TAG;
use aws_backend::port::Ec2Port;
use aws_backend::standby::LeaseTimes;
use backend_api::{Backend, Clock, GrantId, TokioClock};
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sim_ec2::{InstanceTruths, LiveResources, SimConfig, SimEc2};
use tokio::task::JoinHandle;

use crate::checkers::fence::{FenceChecker, FenceLog};
use crate::checkers::{
    self, Downtime, FaultIndex, GrantFacts, GrantTags, Measures, Outcome, Replay, Violation, admission, names,
};
use crate::fixture::{self, START_UNIX_MS};
use crate::framestore::FrameStore;
use crate::gated::GatedPort;
use crate::lifecycle::lifecycle;
use crate::processes::{Active, Common, REPLICA_LEASE_MS, ReplicaShared, Replicas, Single, TAKEOVER_WITHIN_MS};
use crate::replicas::ReplicaClock;
use crate::scenario::{Expect, Scenario, generate};
use crate::summary::{GrantCounts, Summary};
use crate::witness::Witness;
use crate::world::{World, hex_of, strip_ids, trace_grant};

/// How often the checkers run, in virtual time.
const CHECK_EVERY_MS: u64 = 10_000;
/// Time left until `valid_to` under which a grant that reached the bridge late (it arrived
/// while the bridge was down) counts as short: `min_lifetime_s` (60 s here) plus two minutes to
/// create its key pair and group and launch.
const LATE_ARRIVAL_SHORT_MS: u64 = 180_000;
/// How long the final reaper pass may take, in virtual time: one Describe per kind and region
/// and a delete per orphan, paced, with retries; far less than this.
const FINAL_REAP_MS_MAX: u64 = 30 * 60_000;
/// At most this many violations are kept per checker (the rest are counted).
pub(crate) const VIOLATIONS_PER_CHECKER_MAX: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrive(usize),
    Crash(usize),
    Check,
}

/// What a spawned task is doing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Task {
    /// A grant's life (see `lifecycle`).
    Grant(GrantId),
    /// A process's recovery: a marker that ends when the recovery reports.
    Recovery,
}

/// A spawned task, with the incarnation of the bridge process it belongs to (0 for a bridge
/// with a ledger of its own): killing a process ends its tasks.
pub(crate) type Spawned = (Task, JoinHandle<()>, u64);

pub(crate) type Facts = Arc<Mutex<BTreeMap<GrantId, GrantFacts>>>;
pub(crate) type Findings = Arc<Mutex<Vec<Violation>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

thread_local! {
    /// Panics on this thread while a run captures them.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that hands panics on a capturing thread to its
/// run, and leaves every other thread's panics to the previous hook.
fn capture_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANICS.with(|p| match p.try_borrow_mut() {
                Ok(mut slot) => slot.as_mut().map(|panics| panics.push(info.to_string().replace('\n', " "))).is_some(),
                Err(_) => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

fn captured_panics() -> Vec<String> {
    PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default()
}

/// What a crash does to the replica acting, with replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// Its process ends at once; it comes back as a standby after the downtime.
    Kill,
    /// Its process stops for the downtime (its sleeps are held), then carries on.
    Pause,
    /// It cannot reach the lease table and the ledger for the downtime, but reaches EC2.
    Partition,
}

/// Runs `scenario` to the end on a fresh single-threaded runtime with virtual time, and
/// returns its summary. `progress` receives a line now and then.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Summary> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    let wall = Instant::now();
    capture_panics();
    let result = runtime.block_on(run_async(scenario, progress));
    let panics = captured_panics();
    let mut summary = result?;
    for panic in panics {
        let v = Violation::safety(names::PANIC, panic);
        if scenario.checks(v.checker) && !summary.violations.contains(&v) {
            summary.violations.push(v);
        }
    }
    summary.wall_ms = u64::try_from(wall.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

async fn run_async(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Summary> {
    let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
    let faults = scenario.draw_faults(&mut rng);
    let (plans, crashes) = generate(scenario, &mut rng);
    let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
    let regions = fixture::ALLOWED_REGIONS.iter().map(|r| fixture::region(r)).collect();
    let sim_config = SimConfig::new(scenario.seed, regions).with_faults(faults.clone());
    let sim = Arc::new(SimEc2::new(sim_config, clock.clone())?);
    let cfg = fixture::config(scenario.poll_interval_ms);
    let breakage = scenario.breakage;
    let store = FrameStore::new(breakage.and_then(|b| b.store_fault())).snapshot_every(scenario.snapshot_every);
    let switches = breakage.map(|b| b.switches()).unwrap_or_default();
    let findings: Findings = Arc::new(Mutex::new(Vec::new()));
    // Every process's calls reach the simulator through the witness (see `witness`).
    let witness = Witness::new(store.clone(), &plans, clock.clone(), scenario.poll_interval_ms, findings.clone());
    let port = Arc::new(GatedPort::with_gate(sim.clone() as Arc<dyn Ec2Port>, witness)) as Arc<dyn Ec2Port>;
    let fence_log = FenceLog::default();
    let mut world = World {
        scenario: scenario.clone(),
        cfg: cfg.clone(),
        sim: sim.clone(),
        clock: clock.clone(),
        store: store.clone(),
        plans: plans.iter().map(|p| (p.id, p.clone())).collect(),
        facts: Arc::new(Mutex::new(plans.iter().map(|p| (p.id, GrantFacts::default())).collect())),
        findings,
        measures: Measures::default(),
        violations: Vec::new(),
        suppressed: BTreeMap::new(),
        downtimes: Vec::new(),
        faults: FaultIndex::default(),
        replay: Replay::default(),
        instances: InstanceTruths::new(),
        live: LiveResources::new(),
        grant_tags: GrantTags::new(plans.iter().map(|p| &p.id)),
        secrets: checkers::secrets::Secrets::new(plans.iter().map(|p| &p.id), &fixture::key_seed(scenario.seed)),
        fence_log: fence_log.clone(),
        fence: FenceChecker::new(fence_log),
        retries: BTreeMap::new(),
    };
    let common = Arc::new(Common {
        cfg: cfg.clone(),
        sim: sim.clone(),
        port: port.clone(),
        store: store.clone(),
        seed: scenario.seed,
        switches,
        findings: world.findings.clone(),
        active: Mutex::new(None),
        spawned: Mutex::new(Vec::new()),
    });
    let mut single = Single::new(common.clone(), clock.clone());
    let (mut replicas, mut active) = if scenario.replicas > 1 {
        let count = usize::from(scenario.replicas);
        let shared = ReplicaShared {
            common: common.clone(),
            clocks: (0..count).map(|_| ReplicaClock::new(clock.clone())).collect(),
            cut_off: (0..count).map(|_| Arc::new(AtomicBool::new(false))).collect(),
            log: world.fence_log.clone(),
            times: LeaseTimes::for_duration(REPLICA_LEASE_MS),
            incarnations: AtomicU64::new(0),
            exited: Mutex::new(Vec::new()),
        };
        let (replicas, first) = Replicas::start(shared, count, &clock).await?;
        (Some(replicas), first)
    } else {
        let first = single.start(0).await.map_err(|e| anyhow::anyhow!("the bridge did not start: {e}"))?;
        (None, first)
    };

    // The schedule: arrivals, crashes and checks, in time order. The reaper is the bridge's own.
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
    steps.sort();

    let mut tasks: Vec<Spawned> = Vec::new();
    let mut crash_count = 0u64;
    let mut halted = false;
    let mut next_progress = START_UNIX_MS + 15 * 60_000;
    for (at, step) in steps {
        clock.sleep_until_unix_ms(at).await;
        world.join(&mut tasks, false).await;
        world.absorb(&common, replicas.as_ref(), &mut tasks, &mut active).await;
        match step {
            Step::Crash(i) if replicas.is_some() => {
                let Some(replicas) = replicas.as_mut() else { unreachable!("checked by the guard") };
                let Some(victim) = common.active() else { continue };
                crash_count += 1;
                let downtime_ms = crashes[i].downtime_ms;
                let how = if rng.gen_bool(scenario.pause_share) {
                    Outage::Pause
                } else if rng.gen_bool(0.5) {
                    Outage::Kill
                } else {
                    Outage::Partition
                };
                match how {
                    Outage::Pause => replicas.shared.clocks[victim.replica].pause_until(at + downtime_ms),
                    Outage::Kill => {
                        replicas.kill(&victim).await;
                        world.join_where(&mut tasks, |_, incarnation, _| incarnation == victim.incarnation).await;
                        world.absorb_stats(&victim.backend);
                    }
                    Outage::Partition => replicas.shared.cut_off[victim.replica].store(true, Ordering::SeqCst),
                }
                // Down until the downtime has passed and a replica acts: the holder woken from
                // its pause or reconnected, or the standby that took over.
                let mut restarted = how != Outage::Kill;
                loop {
                    clock.sleep_ms(500).await;
                    world.absorb(&common, Some(&*replicas), &mut tasks, &mut active).await;
                    world.join(&mut tasks, false).await;
                    let now = clock.now_unix_ms();
                    if now >= at + downtime_ms {
                        replicas.shared.cut_off[victim.replica].store(false, Ordering::SeqCst);
                        if !restarted {
                            replicas.serve(victim.replica);
                            restarted = true;
                        }
                    }
                    // Back once a replica acts under a lease secured after the outage ended (a
                    // holder whose renewals failed may still lose it).
                    let back = common.active().is_some_and(|a| {
                        a.backend.acting() && a.backend.lease_secured_unix_ms().is_some_and(|t| t >= at + downtime_ms)
                    });
                    if restarted && back {
                        break;
                    }
                    if now >= at + downtime_ms + TAKEOVER_WITHIN_MS {
                        world.report(Violation::liveness(
                            names::LIVENESS,
                            format!(
                                "no replica acted within {TAKEOVER_WITHIN_MS} ms of the end of a downtime of replica {}",
                                victim.replica
                            ),
                        ));
                        break;
                    }
                }
                let resumed = how != Outage::Kill;
                world.downtimes.push(Downtime { from_unix_ms: at, to_unix_ms: clock.now_unix_ms(), resumed });
                active = common.active().unwrap_or(active);
            }
            Step::Arrive(i) => {
                let mut plan = plans[i].clone();
                // A grant that arrived while the bridge was down reaches it only now: with
                // little time left it is short, and may go either way (see `admission`).
                let left_ms = plan.valid_to_unix_ms.saturating_sub(clock.now_unix_ms());
                if plan.expect == Expect::Admit
                    && clock.now_unix_ms() > plan.arrival_unix_ms
                    && left_ms < LATE_ARRIVAL_SHORT_MS
                {
                    plan.expect = Expect::Short;
                    world.plans.insert(plan.id, plan.clone());
                }
                let plan = Arc::new(plan);
                let accepted = active.bridge.can_satisfy(&plan.grant());
                lock(&world.facts).entry(plan.id).or_default().can_satisfy = Some(accepted);
                if let Some(v) = admission::check_arrival(&plan, accepted) {
                    world.report(v);
                }
                let handle = tokio::spawn(lifecycle(
                    active.clone(),
                    common.clone(),
                    plan.clone(),
                    world.facts.clone(),
                    clock.clone(),
                    world.sim.clone(),
                ));
                tasks.push((Task::Grant(plan.id), handle, active.incarnation));
            }
            Step::Crash(i) => {
                crash_count += 1;
                let drained = rng.gen_bool(scenario.drain_share);
                if drained {
                    // A drain (SIGTERM) instead of a kill: the bridge ends by itself.
                    let in_flight = active.backend.with_ledger(|l| checkers::drain::mid_provision(l.live_grants()));
                    let took_ms = single.drain(checkers::bounds::DRAIN_ENDS_WITHIN_MS).await;
                    world.join(&mut tasks, false).await;
                    let ledger = active.backend.with_ledger(|l| {
                        in_flight.iter().filter_map(|g| l.grant(g).map(|s| (*g, s.clone()))).collect()
                    });
                    let facts = lock(&world.facts).clone();
                    for v in checkers::drain::check(&in_flight, took_ms, &ledger, &facts) {
                        world.report(v);
                    }
                    // The grants the drain rolled back are sent again once the bridge is back.
                    let resending: Vec<GrantId> =
                        facts.iter().filter(|(_, f)| f.resending).map(|(grant, _)| *grant).collect();
                    world
                        .join_where(&mut tasks, |task, _, _| !matches!(task, Task::Grant(g) if resending.contains(g)))
                        .await;
                } else {
                    world.join(&mut tasks, true).await;
                }
                world.absorb_stats(&active.backend);
                single.kill().await;
                let downtime_ms = crashes[i].downtime_ms;
                world.downtimes.push(Downtime {
                    from_unix_ms: at,
                    to_unix_ms: clock.now_unix_ms() + downtime_ms,
                    resumed: false,
                });
                clock.sleep_ms(downtime_ms).await;
                let restarted = single.start(at).await;
                active = match restarted {
                    Ok(active) => active,
                    Err(e) => {
                        world.report(Violation::safety(
                            names::LEDGER,
                            format!("after a crash the bridge cannot start on its ledger: {e}"),
                        ));
                        // The run cannot go on; a backend on an empty ledger lets it report.
                        halted = true;
                        let empty = Box::new(usage_ledger::MemoryStore::new());
                        let backend = fixture::backend_on(
                            &cfg,
                            port.clone(),
                            clock.clone(),
                            empty,
                            Vec::new(),
                            scenario.seed,
                            at,
                            switches,
                        )
                        .await?;
                        let bridge = aws_backend::bridge::Bridge::new(clock.clone());
                        Active { replica: 0, incarnation: at, bridge, backend }
                    }
                };
                if halted {
                    break;
                }
            }
            Step::Check => world.check(&active.backend),
        }
        if at >= next_progress {
            next_progress += 15 * 60_000;
            let done = lock(&world.facts).values().filter(|f| f.outcome != Outcome::Waiting).count();
            progress(&format!(
                "  t+{:>4} min: {done}/{} grants done, {} EC2 calls, {} violations",
                (at - START_UNIX_MS) / 60_000,
                plans.len(),
                sim.stats().total_calls(),
                world.violations.len()
            ));
        }
    }

    if !halted {
        // Quiet phase: no new work; everything in flight must end.
        let quiet_deadline = clock.now_unix_ms() + 2 * 3_600_000;
        loop {
            world.join(&mut tasks, false).await;
            world.absorb(&common, replicas.as_ref(), &mut tasks, &mut active).await;
            if tasks.is_empty() || clock.now_unix_ms() >= quiet_deadline {
                break;
            }
            clock.sleep_ms(10_000).await;
            world.check(&active.backend);
        }
        for (task, _, _) in &tasks {
            world.report(Violation::liveness(
                names::LIVENESS,
                format!("a task ({task:?}) was still running two virtual hours after the last deadline"),
            ));
        }
        world.join(&mut tasks, true).await;
        let backend = active.backend.clone();
        // Network figures are measured again after CloudWatch's publication lag.
        while backend.network_pending() > 0 && clock.now_unix_ms() < quiet_deadline {
            clock.sleep_ms(60_000).await;
            world.check(&backend);
        }
        // One reaper pass once the orphan grace has passed: nothing of ours may remain.
        clock.sleep_ms(cfg.reaper_grace_ms + 60_000).await;
        let faults_before = sim.faults_injected();
        match tokio::time::timeout(std::time::Duration::from_millis(FINAL_REAP_MS_MAX), backend.reap(false)).await {
            Ok(report) if !report.errors.is_empty() && sim.faults_injected() == faults_before => {
                world.report(Violation::liveness(
                    names::LIVENESS,
                    format!("the final reaper pass failed with no fault injected: {:?}", report.errors),
                ));
            }
            Ok(_) => {}
            Err(_) => world.report(Violation::liveness(
                names::LIVENESS,
                format!("the final reaper pass did not finish within {FINAL_REAP_MS_MAX} virtual ms"),
            )),
        }
        world.check(&backend);
        for resource in sim.live_resources_tagged(OWNER_TAG, fixture::OWNER) {
            world.report(Violation::liveness(
                names::LIVENESS,
                format!(
                    "{:?} {} in {} still exists after the quiet phase and a reaper pass",
                    resource.kind, resource.id, resource.region
                ),
            ));
        }
        for plan in &plans {
            if backend.grant_state(&plan.id).is_some_and(|s| !s.is_settled()) {
                world.report(Violation::liveness(
                    names::LIVENESS,
                    format!("grant {} is not settled after the quiet phase", plan.id),
                ));
            }
        }
    }
    if let Some(replicas) = &mut replicas {
        replicas.stop();
    }
    single.kill().await;
    let backend = active.backend.clone();
    world.absorb_stats(&backend);
    if !halted {
        for v in world.with_context(&backend, |ctx, _| checkers::metering::check_final(ctx)) {
            world.report(v);
        }
    }
    for v in world.with_context(&backend, |ctx, _| admission::check_outcomes(ctx)) {
        world.report(v);
    }
    for (checker, n) in world.suppressed.clone() {
        world.violations.push(Violation {
            checker,
            severity: world
                .violations
                .iter()
                .find(|v| v.checker == checker)
                .map_or(checkers::Severity::Safety, |v| v.severity),
            message: format!("... and {n} more"),
        });
    }

    if let Ok(prefix) = std::env::var("SIM_TRACE_GRANT") {
        trace_grant(&world, &prefix);
    }
    let facts = lock(&world.facts).clone();
    let leaked = sim.live_resources_tagged(OWNER_TAG, fixture::OWNER);
    let mut provision_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut counts = GrantCounts { total: plans.len() as u64, ..GrantCounts::default() };
    for plan in &plans {
        if let Some(settled) = backend.grant_state(&plan.id).map(|s| s.is_settled()) {
            counts.admitted += 1;
            counts.settled += u64::from(settled);
        }
        match facts.get(&plan.id).map(|f| &f.outcome) {
            Some(Outcome::Refused(_)) => counts.refused += 1,
            Some(Outcome::Completed) => counts.completed += 1,
            Some(Outcome::ProvisionFailed(err) | Outcome::AfterProvisionFailed(err)) => {
                counts.provision_failed += 1;
                *provision_errors.entry(strip_ids(err)).or_default() += 1;
            }
            Some(Outcome::Interrupted | Outcome::Panicked) => counts.interrupted += 1,
            Some(Outcome::Waiting) | None => {}
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
        ec2_errors: stats.errors.clone(),
        ec2_calls_total: stats.total_calls(),
        throttles: stats.total_throttles(),
        retries: world.retries.clone(),
        faults_injected: stats.faults.clone(),
        crashes: crash_count,
        takeovers: (world.fence_log.acquisitions() as u64).saturating_sub(1),
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
