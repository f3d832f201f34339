//! Ready-made pieces for running the backend on the simulator: configuration, clock, backend.

use std::sync::Arc;

use aws_backend::port::Ec2Port;
use aws_backend::standby::Tenure;
use aws_backend::{AwsBackend, AwsBootConfig, BackendLedger, BackendParts, DynStore, TestSwitches};
use backend_api::{Clock, RegionLabel, Secret};
use usage_ledger::{EventStore, Ledger, MemoryStore, Record};

/// Unix ms at which every simulation starts (2023-11-14T22:13:20Z).
pub const START_UNIX_MS: u64 = 1_700_000_000_000;

/// The regions the simulated operator allows.
pub const ALLOWED_REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
/// A well-formed region the operator does not allow.
pub const DISALLOWED_REGION: &str = "ap-south-1";

/// The smallest root volume the simulated operator provisions, GiB.
pub const MIN_ROOT_VOLUME_GIB: u32 = 8;

/// The owner tag value of simulated backends.
pub const OWNER: &str = "sim-bridge";

/// A region label from a constant known to be valid.
pub fn region(name: &str) -> RegionLabel {
    RegionLabel::new(name).unwrap_or_else(|e| panic!("fixture region: {e}"))
}

/// The one CIDR the simulated operator lets SSH in from.
const SSH_INGRESS_CIDR: &str = "203.0.113.0/24";
/// The CIDRs the simulated operator lets SSH in from (`ssh_ingress_cidrs`).
pub const SSH_INGRESS_CIDRS: [&str; 1] = [SSH_INGRESS_CIDR];

/// The configuration of a simulated operator with `poll_interval_ms`.
pub fn config(poll_interval_ms: u64) -> AwsBootConfig {
    let text = format!(
        r#"
regions = ["us-east-1", "eu-west-1"]
instance_families = ["t3", "c6i", "m6i", "r6i"]
owner = "{OWNER}"
poll_interval_ms = {poll_interval_ms}
reaper_grace_ms = 600000
min_root_volume_gib = {MIN_ROOT_VOLUME_GIB}
ledger_path = "/nonexistent/sim.ledger"
ssh_ingress_cidrs = ["{SSH_INGRESS_CIDR}"]

[ami]
us-east-1 = "ami-0123456789abcdef0"
eu-west-1 = "ami-0fedcba9876543210"

[almanac]
epoch_unix_ms = {START_UNIX_MS}
tick_ms = 1000

[tags]
team = "compute-bridge-sim"

[guest]
content_store_url = "https://content.example/blobs/{{hash}}"
login_user = "ec2-user"
container_runtime = "docker"
fetch_attempts = 3
deadline_grace_s = 60
"#
    );
    AwsBootConfig::from_toml(&text).unwrap_or_else(|e| panic!("fixture config: {e}"))
}

/// The backend's key seed in a simulation of `seed`: every per-grant key derives from it.
pub fn key_seed(seed: u64) -> Secret {
    Secret::new(format!("sim-key-seed-{seed}"))
}

/// A backend over `port` (the simulator, or a wrapper of it), with its ledger replayed from
/// `replayed` and appending to `store`. The key seed derives from `seed` (keep it across
/// restarts, as the operator keeps the key seed file next to the ledger); the jitter from
/// `seed ^ incarnation`.
#[allow(clippy::too_many_arguments)]
pub async fn backend_on(
    cfg: &AwsBootConfig,
    port: Arc<dyn Ec2Port>,
    clock: Arc<dyn Clock>,
    store: Box<dyn EventStore>,
    replayed: Vec<Record>,
    seed: u64,
    incarnation: u64,
    switches: TestSwitches,
) -> anyhow::Result<AwsBackend> {
    let ledger = Ledger::open(DynStore(store), replayed)?;
    backend_with(cfg, port, clock, ledger, seed, incarnation, switches, None).await
}

/// A backend over `port` and an opened `ledger`, acting under `tenure` when it shares the
/// ledger with other replicas.
#[allow(clippy::too_many_arguments)]
pub async fn backend_with(
    cfg: &AwsBootConfig,
    port: Arc<dyn Ec2Port>,
    clock: Arc<dyn Clock>,
    ledger: BackendLedger,
    seed: u64,
    incarnation: u64,
    switches: TestSwitches,
    tenure: Option<Arc<Tenure>>,
) -> anyhow::Result<AwsBackend> {
    AwsBackend::new(
        cfg,
        BackendParts {
            port,
            clock,
            ledger,
            key_seed: key_seed(seed),
            jitter_seed: seed ^ incarnation ^ 0x5EED,
            switches,
            tenure,
        },
    )
    .await
}

/// A backend over `port` with its ledger replayed from `store` (empty on first start).
pub async fn backend(
    cfg: &AwsBootConfig,
    port: Arc<dyn Ec2Port>,
    clock: Arc<dyn Clock>,
    store: &MemoryStore,
    seed: u64,
    switches: TestSwitches,
) -> anyhow::Result<AwsBackend> {
    backend_on(cfg, port, clock, Box::new(store.clone()), store.records(), seed, 0, switches).await
}
