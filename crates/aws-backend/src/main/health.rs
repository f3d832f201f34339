//! What operators and supervisors read of a running `serve`, beside the API: `GET /healthz`
//! (the process answers), `GET /readyz` (it takes grants now: admitting, the ledger writable,
//! the lease held in group mode, every region's catalogue loaded), `GET /metrics` (Prometheus
//! text of `aws_backend::telemetry`), and systemd's readiness protocol: `READY=1` once the
//! bridge admits, `STOPPING=1` once it drains (`Type=notify` in the unit).

use aws_backend::bridge::{Bridge, Phase};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

/// Installs the process's metrics recorder and turns the backend's metrics on. Once per
/// process, before the bridge starts.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|err| anyhow::anyhow!("installing the metrics recorder: {err}"))?;
    aws_backend::telemetry::enable();
    Ok(handle)
}

#[derive(Clone)]
struct Health {
    bridge: Bridge,
    metrics: PrometheusHandle,
}

/// The routes, to merge into the API's router.
pub(crate) fn routes(bridge: Bridge, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(Health { bridge, metrics })
}

/// 200 when the bridge takes grants now; 503 naming why not.
async fn readyz(State(health): State<Health>) -> Response {
    let phase = health.bridge.phase();
    let mut why: Vec<String> = Vec::new();
    if phase != Phase::Admitting {
        why.push(format!("the bridge is {}", phase.name()));
    }
    match health.bridge.backend() {
        Some(backend) => why.extend(backend.not_ready()),
        None => why.push("the backend is not built yet".to_string()),
    }
    let status = if why.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": why.is_empty(), "phase": phase.name(), "why": why }))).into_response()
}

/// The metrics as Prometheus text, with the state gauges set from the ledger first.
async fn render(State(health): State<Health>) -> Response {
    if let Some(backend) = health.bridge.backend() {
        backend.publish_gauges();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], health.metrics.render()).into_response()
}

/// Tells systemd (when it runs the process with `NOTIFY_SOCKET`) that the service is ready
/// once the bridge admits, and that it is stopping once it drains. Polls the phase: a second's
/// delay is nothing to a supervisor.
pub(crate) async fn notify_systemd(bridge: Bridge) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut told_ready = false;
    loop {
        let phase = bridge.phase();
        if !told_ready && phase == Phase::Admitting {
            tell(sd_notify::NotifyState::Ready);
            told_ready = true;
        }
        if matches!(phase, Phase::Draining | Phase::Stopped) {
            tell(sd_notify::NotifyState::Stopping);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn tell(state: sd_notify::NotifyState<'_>) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %err, "could not notify systemd");
    }
}
