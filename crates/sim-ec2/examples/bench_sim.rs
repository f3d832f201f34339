//! Simulated EC2 API calls per wall-clock second, single-threaded.
//!
//! Drives `SimEc2` through the `Ec2Port` trait with the call mix of one grant's lifetime
//! (import key, create and open a group, launch, poll, meter, terminate, clean up), grant after
//! grant, on a hand-driven clock that advances 40 ms of virtual time per call. Run with
//! `cargo run --profile sim -p sim-ec2 --example bench_sim [calls]` (or `cargo xtask bench sim`).
//! It runs three rounds on fresh simulators and prints their median.

use std::sync::Arc;
use std::time::Instant;

use aws_backend::port::{
    AuthorizeIngressRequest, CreateSecurityGroupRequest, Ec2Port, Ec2PortExt, Filter, ImportKeyPairRequest,
    PageRequest, RunInstancesRequest, ShutdownBehavior, Tags,
};
use backend_api::RegionLabel;
use sim_ec2::{FaultConfig, ManualClock, SimConfig, SimEc2};

const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f bench";
const STEP_MS: u64 = 40;
const START_UNIX_MS: u64 = 1_700_000_000_000;

struct Driver {
    sim: Arc<SimEc2>,
    clock: Arc<ManualClock>,
    region: RegionLabel,
    calls: u64,
}

impl Driver {
    /// Waits in virtual time, as a backend backing off would.
    fn wait_ms(&self, ms: u64) {
        self.clock.advance_ms(ms);
    }

    fn tick(&mut self) {
        self.calls += 1;
        self.clock.advance_ms(STEP_MS);
    }

    async fn grant(&mut self, n: u64) {
        let grant = format!("grant-{n}");
        let tags = Tags::from([("grant".to_string(), grant.clone())]);
        let (sim, region) = (self.sim.clone(), self.region.clone());
        let key_name = format!("k-{n}");
        let key = ImportKeyPairRequest {
            key_name: key_name.clone(),
            public_key_openssh: PUBLIC_KEY.into(),
            tags: tags.clone(),
        };
        let _ = sim.import_key_pair(&region, key).await;
        self.tick();
        let group = CreateSecurityGroupRequest {
            vpc_id: None,
            group_name: format!("g-{n}"),
            description: "bench".into(),
            tags: tags.clone(),
        };
        let group_id = sim.create_security_group(&region, group).await.unwrap_or_default();
        self.tick();
        // New resources take up to 2 s to become visible (eventual consistency).
        self.wait_ms(2_000);
        for _ in 0..3 {
            let ingress =
                AuthorizeIngressRequest { group_id: group_id.clone(), port: 22, cidrs: vec!["0.0.0.0/0".into()] };
            let ok = sim.authorize_ingress(&region, ingress).await.is_ok();
            self.tick();
            if ok {
                break;
            }
        }
        let run = RunInstancesRequest {
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "m6i.large".into(),
            key_name,
            security_group_ids: vec![group_id.clone()],
            user_data_base64: "IyEvYmluL3NoCmVjaG8gaGVsbG8K".into(),
            client_token: grant.clone(),
            root_volume_gib: 20,
            root_device_name: "/dev/xvda".into(),
            imdsv2_required: true,
            imds_hop_limit: 1,
            shutdown_behavior: ShutdownBehavior::Terminate,
            instance_tags: tags.clone(),
            volume_tags: tags.clone(),
            subnet_id: None,
            availability_zone: None,
        };
        let mut instance_id = String::new();
        for _ in 0..5 {
            let result = sim.run_instance(&region, run.clone()).await;
            self.tick();
            if let Ok(info) = result {
                instance_id = info.instance_id.to_string();
                break;
            }
        }
        self.wait_ms(2_000);
        // Lookups by id ask for one unpaged page, as the backend's do (EC2 refuses MaxResults
        // with ids), naming the instance from a list built once.
        let ids = [instance_id];
        for _ in 0..12 {
            let _ = sim.describe_instances_page(&region, &ids, &[], PageRequest::unpaged()).await;
            self.tick();
        }
        let _ = sim.describe_instances(&region, vec![], vec![Filter::tag("grant", [grant.as_str()])]).await;
        self.tick();
        for _ in 0..4 {
            let now = sim.now_unix_ms();
            let _ = sim.network_usage(&region, &ids, now - 60_000, now).await;
            self.tick();
        }
        let _ = sim.terminate_instances(&region, ids.to_vec()).await;
        self.tick();
        for _ in 0..3 {
            let _ = sim.describe_instances_page(&region, &ids, &[], PageRequest::unpaged()).await;
            self.tick();
        }
        // Shutting-down lasts up to 60 s and the group stays in use up to 30 s more.
        self.wait_ms(90_000);
        for _ in 0..4 {
            let ok = sim.delete_security_group(&region, &group_id).await.is_ok();
            self.tick();
            if ok {
                break;
            }
        }
        let _ = sim.delete_key_pair(&region, &format!("k-{n}")).await;
        self.tick();
    }
}

/// Rounds of the bench, each on a fresh simulator: the figure is their median, which a
/// moment's noise on a shared machine moves less than one round.
const ROUNDS: usize = 3;

fn main() -> anyhow_free::Result {
    let target_calls: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let mut rates = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let rate = round_of(target_calls)?;
        println!("round {round}: {:.2} M simulated API calls per wall second", rate / 1e6);
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("sim calls/s: {:.2} M (goal ≥ 1.5 M), the median of {ROUNDS} rounds", rates[ROUNDS / 2] / 1e6);
    Ok(())
}

/// One round of at least `target_calls` calls on a fresh simulator; returns calls per second.
fn round_of(target_calls: u64) -> Result<f64, String> {
    let region = RegionLabel::new("us-east-1").map_err(|e| e.to_string())?;
    let clock = Arc::new(ManualClock::new(START_UNIX_MS));
    let faults = FaultConfig { launch_delay_ms_min: 100, launch_delay_ms_max: 400, ..FaultConfig::default() };
    let config = SimConfig::new(1, vec![region.clone()]).with_faults(faults);
    let sim = Arc::new(SimEc2::new(config, clock.clone()).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    let mut driver = Driver { sim: sim.clone(), clock, region, calls: 0 };
    let started = Instant::now();
    runtime.block_on(async {
        let mut n = 0;
        while driver.calls < target_calls {
            driver.grant(n).await;
            n += 1;
        }
    });
    let wall_s = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    let calls = stats.total_calls();
    println!(
        "  {calls} simulated EC2 API calls, {} instances launched, {} throttled, {} errors, {:.0} virtual s, {wall_s:.3} wall s",
        stats.instances_launched,
        stats.total_throttles(),
        stats.errors.values().sum::<u64>(),
        (sim.now_unix_ms() - START_UNIX_MS) as f64 / 1_000.0
    );
    Ok(calls as f64 / wall_s)
}

/// The example's only error type: a message.
mod anyhow_free {
    /// Success, or a message saying what went wrong.
    pub type Result = std::result::Result<(), String>;
}
