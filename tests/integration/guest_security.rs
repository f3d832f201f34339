//! Guest security on the simulator: the host key comes from the guest's console, no private key
//! travels in the default user data, IMDS is locked to the instance, and a guest that prints no
//! key fails the provision cleanly.

use aws_backend::AwsBootConfig;
use aws_backend::guest::HostKeys;
use backend_api::{AlmanacTick, Backend, BackendError, Clock, ComputeGrant, GrantId};
use sim_ec2::FaultConfig;

use crate::backend_sim::{Rig, manifest, us_east};

fn grant<'a>(rig: &Rig, id: u8, m: &'a backend_api::ComputeManifest) -> ComputeGrant<'a> {
    ComputeGrant {
        id: GrantId([id; 32]),
        manifest: m,
        valid_from: rig.now_tick(),
        valid_to: AlmanacTick(rig.now_tick().0 + 1_800),
    }
}

/// `ssh-ed25519 BASE64` of a key line.
fn key_only(line: &str) -> String {
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// By default provision waits for the guest's own host key on its console and returns it; the
/// user data carries no private key; the instance runs IMDSv2 with a hop limit of 1.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn provision_returns_the_key_the_guest_printed_and_ships_no_private_key() {
    let rig = Rig::new(61, FaultConfig::default());
    assert_eq!(rig.cfg.guest.host_keys, HostKeys::Guest, "the simulation runs the default");
    let backend = rig.backend().await;
    let m = manifest();
    let exposed_before = rig.sim.exposed_since(0).len();
    let instance = backend.provision(&grant(&rig, 0x61, &m), &us_east()).await.expect("provision");
    let truth = rig.sim.guest_of(&instance.instance_id).expect("the instance exists");
    assert_eq!(key_only(&instance.ssh_host_public_key), truth.host_key, "the pin is the guest's own key");
    assert_eq!(truth.imds, (true, 1), "IMDSv2 required, hop limit 1");
    let exposed = rig.sim.exposed_since(exposed_before);
    assert!(exposed.iter().any(|t| t.starts_with("#cloud-config")), "the user data was seen");
    for text in &exposed {
        assert!(!text.contains("PRIVATE KEY"), "private key material reached EC2's API: {text:.200}");
    }
    assert!(rig.sim.stats().calls.get(&aws_backend::port::Operation::GetConsoleOutput).copied().unwrap_or(0) >= 1);
    backend.terminate(&instance).await.expect("terminate");
}

/// With the documented opt-in, the backend's host key travels in the user data and cloud-init
/// installs it: the pin still matches what the guest holds, and no console is read.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_user_data_opt_in_ships_the_backends_key_and_the_guest_installs_it() {
    let mut rig = Rig::new(62, FaultConfig::default());
    rig.cfg.guest.host_keys = HostKeys::UserData;
    let backend = rig.backend().await;
    let m = manifest();
    let instance = backend.provision(&grant(&rig, 0x62, &m), &us_east()).await.expect("provision");
    let truth = rig.sim.guest_of(&instance.instance_id).expect("the instance exists");
    assert_eq!(key_only(&instance.ssh_host_public_key), truth.host_key);
    assert_eq!(rig.sim.stats().calls.get(&aws_backend::port::Operation::GetConsoleOutput), None);
    backend.terminate(&instance).await.expect("terminate");
}

/// A guest whose console shows no key within `host_key_wait_s` fails the provision with a
/// retryable error naming the setting, and the rollback leaves nothing behind.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_guest_that_prints_no_key_in_time_fails_the_provision_and_leaves_nothing() {
    let faults =
        FaultConfig { console_delay_ms_min: 3_600_000, console_delay_ms_max: 3_600_000, ..FaultConfig::default() };
    let mut rig = Rig::new(63, faults);
    rig.cfg = AwsBootConfig {
        guest: aws_backend::guest::GuestConfig { host_key_wait_s: 60, ..rig.cfg.guest.clone() },
        ..rig.cfg.clone()
    };
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(&rig, 0x63, &m);
    let err = backend.provision(&g, &us_east()).await.expect_err("no host key");
    let err = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("host_key_wait_s"), "{err}");
    // Let the rollback's teardown finish (DependencyViolation lag included).
    rig.clock.sleep_ms(300_000).await;
    assert_eq!(rig.left_of(&g.id), Vec::<String>::new());
}
