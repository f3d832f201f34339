//! `cargo xtask bench backend`: the AWS backend on the simulator, measured.
//!
//! Prints: EC2 calls per grant lifecycle without faults; DescribeInstances calls per poll per
//! region with 1,000 watched grants; and the time for a burst of 1,000 grants in one region to
//! all be running, as a ratio to the RunInstances bucket floor of 497.5 s.

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

async fn setup(seed: u64) -> anyhow::Result<(Arc<TokioClock>, Arc<SimEc2>, aws_backend::AwsBackend)> {
    let clock = Arc::new(TokioClock::starting_at(START_UNIX_MS));
    let sim = Arc::new(SimEc2::new(
        SimConfig::new(seed, vec![fixture::region("us-east-1"), fixture::region("eu-west-1")])
            .with_faults(FaultConfig::none()),
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

async fn one_lifecycle() -> anyhow::Result<()> {
    let (clock, sim, backend) = setup(1).await?;
    let before = calls(&sim);
    let m = manifest();
    let now = AlmanacTick((clock.now_unix_ms() - START_UNIX_MS) / 1_000);
    let grant =
        ComputeGrant { id: GrantId([1; 32]), manifest: &m, valid_from: now, valid_to: AlmanacTick(now.0 + 600) };
    let instance = backend.provision(&grant, &Envelope::for_region(fixture::region("us-east-1"))).await?;
    backend.watch_until_exit(&instance, grant.valid_to).await?;
    backend.terminate(&instance).await?;
    let after = calls(&sim);
    let mut own = 0;
    let mut polls = 0;
    for (op, n) in &after {
        let delta = n - before.get(op).copied().unwrap_or(0);
        if *op == Operation::DescribeInstances {
            polls += delta;
        } else {
            own += delta;
            println!("    {:<32} {delta}", op.name());
        }
    }
    println!("EC2 calls per grant lifecycle, own calls (target <= 10): {own}");
    println!(
        "shared DescribeInstances polls during one 10-minute grant: {polls} (one per 5 s poll, shared by every grant of the region)"
    );
    println!(
        "EC2 calls per grant lifecycle with 1,000 grants sharing the polls: {:.2}",
        own as f64 + polls as f64 / 1_000.0
    );
    Ok(())
}

async fn burst() -> anyhow::Result<()> {
    let (clock, sim, backend) = setup(2).await?;
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
    println!(
        "burst of 1,000 grants in one region all running after {took_s:.1} virtual s: {:.3} x the 497.5 s RunInstances floor (target <= 1.05)",
        took_s / 497.5
    );
    println!("throttled calls during the burst: {}", sim.stats().total_throttles());

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
        "DescribeInstances calls per poll per region with 1,000 watched grants (target 1): {:.2}",
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
    runtime.block_on(one_lifecycle())?;
    runtime.block_on(burst())?;
    println!("wall time: {:.2} s", wall.elapsed().as_secs_f64());
    Ok(())
}
