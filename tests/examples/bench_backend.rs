//! `cargo xtask bench backend`: the AWS backend on the simulator, measured.
//!
//! Prints, for the simulator's `none` faults and its `default` ones (EC2's ordinary delays:
//! visibility, pending, DependencyViolation lag, CloudWatch lag; no failures): own calls per
//! grant lifecycle (EC2's, then CloudWatch's, by operation; the shared DescribeInstances polls
//! apart; GetConsoleOutput, the host key read, among EC2's), over 50 staggered 10-minute grants
//! including each one's final network measurement, after 50 such grants taught the backend the
//! region's lags;
//! the time for a burst of 1,000 grants in one region to all be running, as a ratio to the
//! RunInstances bucket floor of 497.5 s; and DescribeInstances calls per poll per region with
//! 1,000 watched grants.

use std::sync::Arc;
use std::time::Instant;

use aws_backend::TestSwitches;
use aws_backend::port::{Ec2Port, Operation};
use backend_api::{
    AlmanacTick, Backend, Clock, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, TokioClock,
};
use sim_ec2::{FaultConfig, SimConfig, SimEc2};
use tests::fixture::{self, START_UNIX_MS};
use usage_ledger::MemoryStore;

fn manifest() -> ComputeManifest {
    ComputeManifest {
        cpu_millicores: 2_000,
        ram_mib: 4_096,
        storage_gib: 20,
        tdx_required: false,
        image_post_hash: ImageHash([7; 32]),
    }
}

fn calls(sim: &SimEc2) -> std::collections::BTreeMap<Operation, u64> {
    sim.stats().calls
}

async fn setup(
    seed: u64,
    faults: &FaultConfig,
) -> anyhow::Result<(Arc<TokioClock>, Arc<SimEc2>, aws_backend::AwsBackend)> {
    let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
    let sim = Arc::new(SimEc2::new(
        SimConfig::new(seed, vec![fixture::region("us-east-1"), fixture::region("eu-west-1")])
            .with_faults(faults.clone()),
        clock.clone(),
    )?);
    let cfg = fixture::config(5_000);
    let backend = fixture::backend(
        &cfg,
        sim.clone() as Arc<dyn Ec2Port>,
        clock.clone(),
        &MemoryStore::new(),
        seed,
        TestSwitches::default(),
    )
    .await?;
    Ok((clock, sim, backend))
}

/// Grants in the lifecycle figure: one every 20 s, each living 10 minutes.
const LIFECYCLES: u32 = 50;

/// Runs `LIFECYCLES` staggered grant lifecycles numbered from `first`, and waits for their final
/// network measurements.
async fn run_lifecycles(
    clock: &Arc<TokioClock>,
    backend: &aws_backend::AwsBackend,
    m: &Arc<ComputeManifest>,
    first: u32,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..LIFECYCLES {
        let (backend, m, clock) = (backend.clone(), m.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            clock.sleep_ms(u64::from(i) * 20_000).await;
            let now = AlmanacTick((clock.now_unix_ms() - START_UNIX_MS) / 1_000);
            let mut id = [1u8; 32];
            id[..4].copy_from_slice(&(first + i).to_be_bytes());
            let grant =
                ComputeGrant { id: GrantId(id), manifest: &m, valid_from: now, valid_to: AlmanacTick(now.0 + 600) };
            let instance = backend.provision(&grant, &Envelope::for_region(fixture::region("us-east-1"))).await?;
            backend.watch_until_exit(&instance, grant.valid_to).await?;
            backend.terminate(&instance).await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // The final network measurements, after CloudWatch's lag.
    while backend.network_pending() > 0 {
        clock.sleep_ms(60_000).await;
    }
    Ok(())
}

async fn lifecycles(faults: &FaultConfig) -> anyhow::Result<()> {
    let (clock, sim, backend) = setup(1, faults).await?;
    let m = Arc::new(manifest());
    // A bridge in service has learned its region's lags: the first lifecycles teach them, the
    // next ones are measured.
    run_lifecycles(&clock, &backend, &m, 0).await?;
    let before = calls(&sim);
    run_lifecycles(&clock, &backend, &m, LIFECYCLES).await?;
    let after = calls(&sim);
    let (mut ec2, mut cloudwatch, mut polls) = (0, 0, 0);
    let per = f64::from(LIFECYCLES);
    for (op, n) in &after {
        let delta = n - before.get(op).copied().unwrap_or(0);
        match op {
            Operation::DescribeInstances => polls += delta,
            Operation::GetNetworkUsage => cloudwatch += delta,
            _ => ec2 += delta,
        }
        if *op != Operation::DescribeInstances {
            println!("    {:<32} {:.2}", op.name(), delta as f64 / per);
        }
    }
    println!("  own EC2 calls per grant lifecycle (target <= 9): {:.2}", ec2 as f64 / per);
    println!("  CloudWatch calls per grant lifecycle (provisional and final network): {:.2}", cloudwatch as f64 / per);
    println!("  EC2 errors by code: {:?}", sim.stats().errors);
    println!(
        "  shared DescribeInstances polls over the {LIFECYCLES} grants: {polls} (one per 5 s poll and region, shared by every grant)"
    );
    Ok(())
}

async fn burst(faults: &FaultConfig) -> anyhow::Result<()> {
    let (clock, sim, backend) = setup(2, faults).await?;
    let m = Arc::new(manifest());
    let start = clock.now_unix_ms();
    let now = AlmanacTick((start - START_UNIX_MS) / 1_000);
    let mut tasks = Vec::new();
    for i in 0..1_000u32 {
        let backend = backend.clone();
        let m = m.clone();
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let grant = ComputeGrant {
                id: GrantId(id),
                manifest: &m,
                valid_from: now,
                valid_to: AlmanacTick(now.0 + 4 * 3_600),
            };
            let instance = backend.provision(&grant, &Envelope::for_region(fixture::region("us-east-1"))).await?;
            let running_at = clock.now_unix_ms();
            Ok::<_, anyhow::Error>((instance, running_at))
        }));
    }
    let mut last_running = start;
    let mut instances = Vec::new();
    for task in tasks {
        let (instance, at) = task.await??;
        last_running = last_running.max(at);
        instances.push(instance);
    }
    let took_s = (last_running - start) as f64 / 1_000.0;
    // What the backend's pacing controls: when EC2 accepted the last RunInstances. All running
    // adds the last instances' time in pending, which is EC2's (up to 40 s with default faults).
    let last_launch = sim.instances().iter().map(|i| i.launch_time_unix_ms).max().unwrap_or(start);
    let launched_s = (last_launch - start) as f64 / 1_000.0;
    println!(
        "  burst of 1,000 grants in one region all launched after {launched_s:.1} virtual s: {:.3} x the 497.5 s RunInstances floor (target <= 1.02)",
        launched_s / 497.5
    );
    println!(
        "  ... and all running after {took_s:.1} virtual s ({:.3} x the floor, EC2's pending time included)",
        took_s / 497.5
    );
    let stats = sim.stats();
    println!(
        "  burst calls: RunInstances {}, throttled {}, errors {:?}",
        stats.calls.get(&Operation::RunInstances).copied().unwrap_or(0),
        stats.total_throttles(),
        stats.errors
    );

    // All 1,000 are watched now; count DescribeInstances over 60 polls.
    let watchers: Vec<_> = instances
        .iter()
        .map(|instance| {
            let backend = backend.clone();
            let instance = instance.clone();
            tokio::spawn(async move { backend.watch_until_exit(&instance, AlmanacTick(now.0 + 4 * 3_600)).await })
        })
        .collect();
    clock.sleep_ms(10_000).await;
    let before = calls(&sim).get(&Operation::DescribeInstances).copied().unwrap_or(0);
    clock.sleep_ms(60 * 5_000).await;
    let after = calls(&sim).get(&Operation::DescribeInstances).copied().unwrap_or(0);
    println!(
        "  DescribeInstances calls per poll per region with 1,000 watched grants (target 1): {:.2}",
        (after - before) as f64 / 60.0
    );
    for w in watchers {
        w.abort();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let wall = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    for (name, faults) in [("none", FaultConfig::none()), ("default", FaultConfig::default())] {
        println!("faults {name}:");
        runtime.block_on(lifecycles(&faults))?;
        runtime.block_on(burst(&faults))?;
    }
    println!("wall time: {:.2} s", wall.elapsed().as_secs_f64());
    Ok(())
}
