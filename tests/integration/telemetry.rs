//! The backend's metrics (`aws_backend::telemetry`), recorded through the `metrics` facade and
//! rendered as Prometheus text, as `aws-backend serve` exports them: a grant provisioned and
//! ended at its deadline on the simulator leaves plausible figures behind.

use std::sync::OnceLock;

use backend_api::{Backend, Clock};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sim_ec2::FaultConfig;

use crate::backend_sim::{Rig, grant, manifest, us_east};

/// The process's recorder: one per test binary, installed by the first test that asks.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().expect("the only recorder of this test binary");
        aws_backend::telemetry::enable();
        handle
    })
}

/// The value of the first sample line of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_grant_ended_at_its_deadline_leaves_plausible_metrics() {
    let handle = recorder();
    let rig = Rig::new(51, FaultConfig::default());
    let backend = rig.backend().await;
    let m = manifest();
    let g = grant(51, &m, rig.now_tick(), 600);
    assert_eq!(backend.not_ready(), Vec::<String>::new(), "a backend over the simulator is ready");
    let instance = backend.provision(&g, &us_east()).await.expect("provisioned");
    backend.publish_gauges();
    let during = handle.render();
    backend.watch_until_exit(&instance, g.valid_to).await.expect("watched to the deadline");
    backend.terminate(&instance).await.expect("ended");
    rig.clock.sleep_ms(60_000).await;
    backend.publish_gauges();
    let text = handle.render();

    let calls = sample(&text, "bridge_ec2_calls_total", &["operation=\"RunInstances\"", "region=\"us-east-1\""]);
    assert!(calls.is_some_and(|n| n >= 1.0), "RunInstances counted: {calls:?}\n{text}");
    let ok = sample(&text, "bridge_provisions_total", &["outcome=\"ok\""]);
    assert!(ok.is_some_and(|n| n >= 1.0), "the provision counted: {ok:?}");
    let appends = sample(&text, "bridge_ledger_append_seconds_count", &[]);
    assert!(appends.is_some_and(|n| n >= 5.0), "ledger appends timed: {appends:?}");
    // EC2 accepted the deadline's TerminateInstances within a second or so of valid_to.
    let sent = sample(&text, "bridge_deadline_lateness_seconds_count", &["stage=\"terminate_sent\""]);
    assert!(sent.is_some_and(|n| n >= 1.0), "deadline lateness sampled: {sent:?}\n{text}");
    let late = sample(&text, "bridge_deadline_lateness_seconds_sum", &["stage=\"terminate_sent\""]);
    assert!(late.is_some_and(|s| s < 60.0 * sent.unwrap_or(1.0)), "lateness under a minute each: {late:?}");
    let ended = sample(&text, "bridge_deadline_lateness_seconds_count", &["stage=\"ended\""]);
    assert!(ended.is_some_and(|n| n >= 1.0), "EC2 showing the end sampled: {ended:?}\n{text}");
    let running = sample(&during, "bridge_grants", &["phase=\"running\""]);
    assert!(running.is_some_and(|n| n >= 1.0), "a running grant while it ran: {running:?}\n{during}");
    assert!(text.contains("# HELP bridge_pacer_wait_seconds"), "described:\n{text}");
    let _ = rig.clock.now_unix_ms();
}
