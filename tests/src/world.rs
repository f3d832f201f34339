//! What a run knows and checks: the plans, the grants' facts, the checkers' state and their
//! findings, and how a run's tasks are joined (see `harness`).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_backend::AwsBackend;
use backend_api::{Clock, GrantId, TokioClock};
use sim_ec2::{InstanceTruths, LiveResources, SimEc2};
use tokio::task::JoinHandle;

use crate::checkers::fence::{FenceChecker, FenceLog};
use crate::checkers::{
    self, Context, Downtime, FaultIndex, GrantTags, InstanceNote, LiveNote, Measures, Outcome, Replay, Violation, names,
};
use crate::fixture::START_UNIX_MS;
use crate::framestore::FrameStore;
use crate::harness::{Facts, Findings, Spawned, Task, VIOLATIONS_PER_CHECKER_MAX, lock};
use crate::processes::{Active, Common, Replicas};
use crate::scenario::{GrantPlan, Scenario};

pub(crate) struct World {
    pub(crate) scenario: Scenario,
    pub(crate) cfg: aws_backend::AwsBootConfig,
    pub(crate) sim: Arc<SimEc2>,
    pub(crate) clock: Arc<TokioClock>,
    pub(crate) store: FrameStore,
    pub(crate) plans: BTreeMap<GrantId, GrantPlan>,
    pub(crate) facts: Facts,
    pub(crate) findings: Findings,
    pub(crate) measures: Measures,
    pub(crate) violations: Vec<Violation>,
    pub(crate) suppressed: BTreeMap<&'static str, u64>,
    pub(crate) downtimes: Vec<Downtime>,
    pub(crate) faults: FaultIndex,
    pub(crate) replay: Replay,
    /// The simulator's ground truth of every instance, with the checkers' note of each,
    /// refreshed (at the cost of what changed) before each check.
    pub(crate) instances: InstanceTruths<InstanceNote>,
    /// The simulator's live resources, with the checkers' note of each, refreshed likewise.
    pub(crate) live: LiveResources<LiveNote>,
    /// The workload's grants by their tag value.
    pub(crate) grant_tags: GrantTags,
    pub(crate) secrets: checkers::secrets::Secrets,
    /// The replicas' lease acquisitions and calls, and the `fence` checker reading them.
    pub(crate) fence_log: FenceLog,
    pub(crate) fence: FenceChecker,
    pub(crate) retries: BTreeMap<String, u64>,
}

impl World {
    /// Keeps `v` unless its checker is disabled, it is already known, or its checker has
    /// reported enough.
    pub(crate) fn report(&mut self, v: Violation) {
        if !self.scenario.checks(v.checker) || self.violations.contains(&v) {
            return;
        }
        if self.violations.iter().filter(|k| k.checker == v.checker).count() >= VIOLATIONS_PER_CHECKER_MAX {
            *self.suppressed.entry(v.checker).or_default() += 1;
            return;
        }
        self.violations.push(v);
    }

    pub(crate) fn with_context<T>(
        &mut self,
        backend: &AwsBackend,
        f: impl FnOnce(&Context<'_>, &mut Measures) -> T,
    ) -> T {
        self.faults.absorb(&self.sim);
        self.replay.absorb(&self.store);
        let (plans, grant_tags) = (&self.plans, &self.grant_tags);
        self.sim.refresh_instances(&mut self.instances, |truth| InstanceNote::of(truth, plans, grant_tags));
        self.sim.refresh_live(&mut self.live, |resource| LiveNote::of(resource, plans, grant_tags));
        let facts = lock(&self.facts);
        let ctx = Context {
            now_unix_ms: self.clock.now_unix_ms(),
            backend,
            sim: &self.sim,
            sim_faults: self.sim.faults(),
            plans: &self.plans,
            plan_of: checkers::plan_index(&self.plans),
            facts: &facts,
            grace_ms: self.cfg.deadline_grace_ms(),
            min_lifetime_ms: self.cfg.min_lifetime_ms(),
            poll_interval_ms: self.scenario.poll_interval_ms,
            downtimes: &self.downtimes,
            faults: &self.faults,
            replay: &self.replay,
            instances: &self.instances,
            by_grant: checkers::by_grant(&self.instances),
            grant_tags: &self.grant_tags,
            live: &self.live,
        };
        f(&ctx, &mut self.measures)
    }

    pub(crate) fn check(&mut self, backend: &AwsBackend) {
        let mut found = self.with_context(backend, checkers::check_all);
        found.extend(self.secrets.check(&self.sim));
        found.extend(self.fence.check());
        found.extend(checkers::snapshot::check(&self.store));
        let reported: Vec<Violation> = lock(&self.findings).drain(..).collect();
        for v in found.into_iter().chain(reported) {
            self.report(v);
        }
    }

    /// Takes over the tasks the processes started, ends those of processes that exited, and
    /// follows the process acting.
    pub(crate) async fn absorb(
        &mut self,
        common: &Common,
        replicas: Option<&Replicas>,
        tasks: &mut Vec<Spawned>,
        active: &mut Active,
    ) {
        tasks.append(&mut lock(&common.spawned));
        if let Some(replicas) = replicas {
            let exited = replicas.exited();
            if !exited.is_empty() {
                self.join_where(tasks, |_, incarnation, _| exited.contains(&incarnation)).await;
            }
        }
        if let Some(now) = common.active() {
            *active = now;
        }
    }

    pub(crate) fn absorb_stats(&mut self, backend: &AwsBackend) {
        for (code, n) in backend.pacing_stats().retries_by_code {
            *self.retries.entry(code).or_default() += n;
        }
    }

    /// Awaits the finished tasks (all of them with `all`), reporting panics and marking grants
    /// whose lifecycle was cut short.
    pub(crate) async fn join(&mut self, tasks: &mut Vec<Spawned>, all: bool) {
        self.join_where(tasks, |_, _, handle| all || handle.is_finished()).await;
    }

    /// Awaits the tasks `pick` picks (aborting those still running), reporting panics and
    /// marking grants whose lifecycle was cut short.
    pub(crate) async fn join_where(
        &mut self,
        tasks: &mut Vec<Spawned>,
        pick: impl Fn(&Task, u64, &JoinHandle<()>) -> bool,
    ) {
        let mut kept = Vec::new();
        for (task, handle, incarnation) in tasks.drain(..) {
            if !pick(&task, incarnation, &handle) {
                kept.push((task, handle, incarnation));
                continue;
            }
            handle.abort();
            let panicked = handle.await.err().is_some_and(|e| e.is_panic());
            if panicked {
                self.report(Violation::safety(names::PANIC, format!("the {task:?} task panicked")));
            }
            if let Task::Grant(grant) = task {
                let mut facts = lock(&self.facts);
                let entry = facts.entry(grant).or_default();
                if entry.outcome == Outcome::Waiting {
                    entry.outcome = if panicked { Outcome::Panicked } else { Outcome::Interrupted };
                    entry.outcome_at_unix_ms = self.clock.now_unix_ms();
                }
            }
        }
        *tasks = kept;
    }
}

/// Prints, on stderr, what the run knows of the grants whose hex starts with `prefix`: EC2's
/// truth of their instances, the downtimes, the faults on them, and their ledger records
/// (`SIM_TRACE_GRANT=36e883 cargo xtask sim --seed ...`: for reading a failure, not for checks).
pub(crate) fn trace_grant(world: &World, prefix: &str) {
    let ms = |t: u64| format!("t+{:.3}s", t.saturating_sub(START_UNIX_MS) as f64 / 1_000.0);
    eprintln!(
        "downtimes: {:?}",
        world.downtimes.iter().map(|d| (ms(d.from_unix_ms), ms(d.to_unix_ms))).collect::<Vec<_>>()
    );
    for (grant, plan) in world.plans.iter().filter(|(g, _)| g.to_hex().starts_with(prefix)) {
        eprintln!(
            "grant {grant}: arrives {} valid {}..{}",
            ms(plan.arrival_unix_ms),
            ms(plan.valid_from_unix_ms()),
            ms(plan.valid_to_unix_ms)
        );
        for (truth, _) in
            world.instances.iter().filter(|(t, _)| t.tags.get(aws_backend::GRANT_TAG) == Some(&grant.to_hex()))
        {
            eprintln!("  instance {} launched {}", truth.instance_id, ms(truth.launch_time_unix_ms));
            for i in &truth.intervals {
                eprintln!(
                    "    {} from {} to {:?} ({:?})",
                    i.state.name(),
                    ms(i.from_ms),
                    i.to_ms.map(ms),
                    i.reason_code
                );
            }
        }
        for f in world.faults.on_grant(grant, 0, u64::MAX, None) {
            eprintln!("  fault {} {:?} {}", ms(f.at_unix_ms), f.operation, f.kind);
        }
        if let Ok(records) = world.store.records() {
            for r in records.iter().filter(|r| r.grant == *grant) {
                eprintln!("  record {} #{} {:?}", ms(r.at_unix_ms), r.seq, r.event);
            }
        }
    }
}

pub(crate) fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The message with ids and numbers replaced, so equal causes count together.
pub(crate) fn strip_ids(message: &str) -> String {
    message
        .split(' ')
        .map(|word| if word.chars().filter(char::is_ascii_digit).count() >= 3 { "#" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}
