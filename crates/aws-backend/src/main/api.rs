//! The HTTP/JSON API of `serve` (docs/operations.md, "The service"): grants in
//! (`POST /v1/grants`), a grant's state (`GET /v1/grants/{id}`), an early end
//! (`DELETE /v1/grants/{id}`) and the bridge's readiness (`GET /v1/status`). Every call goes
//! through the bridge runtime, as compute-bridge's would; a grant provisioned here is watched
//! to its deadline and terminated by the service itself, so deadlines hold without the client.
//!
//! The work of a request runs in a task of its own: a client that hangs up does not cut a
//! provision or a teardown in the middle.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use aws_backend::bridge::Bridge;
use aws_backend::{AwsBackend, AwsBootConfig};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backend_api::{AlmanacTick, Backend, BackendError, Clock, GrantId, ProvisionedInstance, RegionLabel, Secret};
use serde_json::{Value, json};
use tokio::sync::watch;
use usage_ledger::{GrantState, NetworkStatus};

use crate::grants::GrantLine;
use crate::usage_json;

/// How long a client should wait before it sends a refused call again, when the refusal is
/// retryable, in seconds (`Retry-After`).
const RETRY_AFTER_S: u64 = 5;
/// The same when EC2 has no capacity: it rarely comes back within seconds.
const RETRY_AFTER_CAPACITY_S: u64 = 30;
/// How long a request whose bridge has stopped still waits for its work's answer: the steps
/// after a provision returns (arming its watch, the answer's JSON) take no time.
const FINISH_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a watch that failed retryably waits before it watches again.
const REWATCH_MS: u64 = 5_000;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Api {
    bridge: Bridge,
    almanac: backend_api::Almanac,
    clock: Arc<dyn Clock>,
    /// Grants this process watches to their deadline, so that a grant sent twice is watched
    /// once.
    watched: Arc<Mutex<BTreeSet<GrantId>>>,
    /// True once the bridge's run has ended: a request still waiting is answered then.
    stopping: watch::Receiver<bool>,
}

impl Api {
    pub(crate) fn new(
        bridge: Bridge,
        cfg: &AwsBootConfig,
        clock: Arc<dyn Clock>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { bridge, almanac: cfg.almanac, clock, watched: Arc::default(), stopping }
    }

    /// Terminates `instance` through the bridge. A DELETE racing the grant's own watch is safe:
    /// the backend tears a grant down once at a time, and the later call finds it settled.
    async fn terminate(&self, instance: &ProvisionedInstance) -> anyhow::Result<()> {
        self.bridge.terminate(instance).await
    }

    /// Waits for `work`'s answer; if the bridge stops first (a drain whose time ran out), a
    /// retryable refusal: the work dies with the process, and the next process's recovery
    /// finishes or rolls back what it started. A work whose provision returned just before the
    /// bridge stopped (every drain that did not run out) still gets [`FINISH_WITHIN`] to answer.
    async fn answer<T>(&self, mut work: tokio::task::JoinHandle<T>, what: &str) -> Result<T, Problem> {
        let failed = |err: tokio::task::JoinError| Problem::internal(format!("the {what}'s task failed: {err}"));
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            joined = &mut work => return joined.map_err(failed),
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        match tokio::time::timeout(FINISH_WITHIN, &mut work).await {
            Ok(joined) => joined.map_err(failed),
            Err(_) => Err(Problem::retryable(
                format!(
                    "this bridge stopped before the {what} finished (its drain_s ran out): send the call again, to this \
                     bridge once it is back (its recovery finishes or rolls back what was started) or to another"
                ),
                RETRY_AFTER_S,
            )),
        }
    }

    fn backend(&self) -> Result<AwsBackend, Problem> {
        self.bridge.backend().ok_or_else(|| {
            Problem::retryable(
                format!("this bridge is {} and has no backend yet; retry in a few seconds", self.bridge.phase().name()),
                RETRY_AFTER_S,
            )
        })
    }

    /// Watches `instance` to its deadline and terminates it then, in a task of its own, once
    /// per grant. A watch refused because the bridge stops leaves the grant to the next
    /// process's recovery (and, meanwhile, to the backend's own deadline task and the guest's
    /// power-off).
    fn watch(&self, instance: ProvisionedInstance, valid_to: AlmanacTick) {
        if !self.watched.lock().unwrap_or_else(PoisonError::into_inner).insert(instance.grant_id) {
            return;
        }
        let api = self.clone();
        tokio::spawn(async move {
            api.watch_to_end(&instance, valid_to).await;
            api.watched.lock().unwrap_or_else(PoisonError::into_inner).remove(&instance.grant_id);
        });
    }

    async fn watch_to_end(&self, instance: &ProvisionedInstance, valid_to: AlmanacTick) {
        let grant = instance.grant_id.short();
        loop {
            match self.bridge.watch_until_exit(instance, valid_to).await {
                Ok(_) => break,
                Err(err) => match err.downcast_ref::<BackendError>() {
                    Some(BackendError::Unavailable { .. }) => {
                        tracing::info!(%grant, "the bridge stops: the grant's deadline is the next process's");
                        return;
                    }
                    Some(e) if e.is_retryable() => {
                        tracing::warn!(%grant, error = %format!("{err:#}"), "watching the grant failed; watching again");
                        self.clock.sleep_ms(REWATCH_MS).await;
                    }
                    _ => {
                        // The backend's own deadline task still terminates it at valid_to.
                        tracing::error!(%grant, error = %format!("{err:#}"), "cannot watch the grant");
                        return;
                    }
                },
            }
        }
        match self.terminate(instance).await {
            Ok(()) => tracing::info!(%grant, "the grant ended and is torn down"),
            Err(err) => {
                tracing::warn!(%grant, error = %format!("{err:#}"), "terminating the grant failed; recovery or the reaper finishes it")
            }
        }
    }
}

/// The API's routes over `api`.
pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/grants", post(post_grant))
        .route("/v1/grants/{id}", get(get_grant).delete(delete_grant))
        .route("/v1/status", get(status))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "not_found", None, "no such endpoint: the API is POST /v1/grants, GET and DELETE /v1/grants/{id}, GET /v1/status; GET /healthz, /readyz, /metrics (docs/operations.md)")
        })
        .with_state(api)
}

/// `POST /v1/grants`: provisions the grant of the body (the grants-format fields); 201 with the
/// instance, its host key and the requester's private key; 200 with the same when the grant
/// was already provisioned and live (the call resumes it).
async fn post_grant(State(api): State<Api>, body: Bytes) -> Response {
    let line = match parse_grant(&body) {
        Ok(line) => line,
        Err(problem) => return problem.into_response(),
    };
    if let Err(why) = line.check() {
        return Problem::new(StatusCode::BAD_REQUEST, "invalid_input", Some("valid_from"), why).into_response();
    }
    let existed = api.bridge.backend().and_then(|b| b.grant_state(&line.id)).is_some_and(|s| !s.is_settled());
    let work = tokio::spawn({
        let api = api.clone();
        async move {
            let manifest = line.manifest();
            let provisioned = api.bridge.provision(&line.grant(&manifest), &line.envelope()).await;
            if let Ok(instance) = &provisioned {
                api.watch(instance.clone(), line.valid_to);
            }
            provisioned.map(|instance| instance_json(&instance, line.valid_to))
        }
    });
    match api.answer(work, "provision").await {
        Ok(Ok(body)) => (if existed { StatusCode::OK } else { StatusCode::CREATED }, axum::Json(body)).into_response(),
        Ok(Err(err)) => Problem::of(&err).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `GET /v1/grants/{id}`: the grant as the ledger has it.
async fn get_grant(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let (id, backend) = match (grant_id(&id), api.backend()) {
        (Ok(id), Ok(backend)) => (id, backend),
        (Err(problem), _) | (_, Err(problem)) => return problem.into_response(),
    };
    match backend.grant_state(&id) {
        Some(state) => axum::Json(grant_json(&id, &state)).into_response(),
        None => unknown(&id).into_response(),
    }
}

/// `DELETE /v1/grants/{id}`: terminates the grant now and tears it down; 200 with its state.
async fn delete_grant(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let (id, backend) = match (grant_id(&id), api.backend()) {
        (Ok(id), Ok(backend)) => (id, backend),
        (Err(problem), _) | (_, Err(problem)) => return problem.into_response(),
    };
    let Some(state) = backend.grant_state(&id) else { return unknown(&id).into_response() };
    if state.is_settled() {
        return axum::Json(grant_json(&id, &state)).into_response();
    }
    let Some(instance_id) = state.instance().map(str::to_string) else {
        return Problem::retryable(
            format!(
                "grant {id} has no instance yet (phase {:?}): send DELETE again once its POST has answered",
                state.phase()
            ),
            RETRY_AFTER_S,
        )
        .with_status(StatusCode::CONFLICT)
        .into_response();
    };
    let region = match RegionLabel::new(state.region()) {
        Ok(region) => region,
        Err(err) => return Problem::internal(format!("the ledger's region of grant {id}: {err}")).into_response(),
    };
    // Terminate needs only the grant and its instance; the keys stay with whoever asked for them.
    let instance = ProvisionedInstance {
        backend: aws_backend::BACKEND_NAME.to_string(),
        grant_id: id,
        region,
        instance_id,
        public_dns: String::new(),
        ssh_host_public_key: String::new(),
        ssh_private_key: Secret::new(""),
    };
    let work = tokio::spawn({
        let api = api.clone();
        async move { api.terminate(&instance).await }
    });
    match api.answer(work, "teardown").await {
        Ok(Ok(())) => match backend.grant_state(&id) {
            Some(state) => axum::Json(grant_json(&id, &state)).into_response(),
            None => unknown(&id).into_response(),
        },
        Ok(Err(err)) => Problem::of(&err).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `GET /v1/status`: the bridge's phase, the provisions in flight, and the live grants.
async fn status(State(api): State<Api>) -> Response {
    let backend = api.bridge.backend();
    let live: Vec<Value> = backend
        .as_ref()
        .map(|b| {
            b.with_ledger(|l| {
                l.grants()
                    .filter(|(_, s)| !s.is_settled())
                    .map(|(id, s)| {
                        json!({
                            "grant": id.to_hex(),
                            "phase": s.phase(),
                            "instance_id": s.instance(),
                            "valid_to": s.valid_to().0,
                        })
                    })
                    .collect()
            })
        })
        .unwrap_or_default();
    axum::Json(json!({
        "phase": api.bridge.phase().name(),
        "admitting": api.bridge.phase() == aws_backend::bridge::Phase::Admitting,
        "in_flight": api.bridge.in_flight(),
        "live_grants": live,
        "network_pending": backend.as_ref().map_or(0, AwsBackend::network_pending),
        "now_tick": api.almanac.unix_ms_to_tick(api.clock.now_unix_ms()).0,
    }))
    .into_response()
}

/// A provisioned instance as the API answers it: the requester's private key included, since
/// the caller is compute-bridge, which hands it to the requester.
fn instance_json(instance: &ProvisionedInstance, valid_to: AlmanacTick) -> Value {
    json!({
        "grant": instance.grant_id.to_hex(),
        "backend": instance.backend,
        "region": instance.region.as_str(),
        "instance_id": instance.instance_id,
        "public_dns": instance.public_dns,
        "ssh_host_public_key": instance.ssh_host_public_key,
        "ssh_private_key": instance.ssh_private_key.expose(),
        "valid_to": valid_to.0,
    })
}

/// A grant's state as the API answers it (the fields of `aws-backend status`, and how final
/// its network figure is).
fn grant_json(id: &GrantId, state: &GrantState) -> Value {
    let network = match state.network_status() {
        NetworkStatus::Complete => "complete",
        NetworkStatus::Provisional => "provisional",
        NetworkStatus::Unknown => "unknown",
    };
    json!({
        "grant": id.to_hex(),
        "phase": state.phase(),
        "settled": state.is_settled(),
        "region": (!state.is_settled()).then(|| state.region()),
        "instance_type": (!state.is_settled()).then(|| state.instance_type()),
        "instance_id": state.instance(),
        "last_state": state.last_state(),
        "termination": state.termination(),
        "valid_to": (!state.is_settled()).then(|| state.valid_to().0),
        "usage": usage_json(&state.usage()),
        "network": network,
        "network_pending": state.network_pending().len(),
    })
}

/// The grant of a POST body; a refusal naming the field when it is not one.
fn parse_grant(body: &[u8]) -> Result<GrantLine, Problem> {
    let mut json = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, GrantLine>(&mut json) {
        Ok(line) => json.end().map(|()| line).map_err(|err| Problem::body(".", &err)),
        Err(err) => Problem::body(&err.path().to_string(), err.inner()).into_err(),
    }
}

fn grant_id(text: &str) -> Result<GrantId, Problem> {
    serde_json::from_value(Value::String(text.to_string())).map_err(|err| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("id"),
            format!("{text:?} is not a grant id: {err}; give its 64 hex characters"),
        )
    })
}

fn unknown(id: &GrantId) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown_grant",
        Some("id"),
        format!("grant {id} is not in this bridge's ledger: POST it first, or ask the bridge that provisioned it"),
    )
}

/// A refusal, as JSON: `{"error": kind, "field": ..., "message": ..., "retryable": ...}`, with
/// `Retry-After` when it is retryable.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    kind: &'static str,
    field: Option<String>,
    message: String,
    retry_after_s: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, field: Option<&str>, message: impl Into<String>) -> Self {
        Self { status, kind, field: field.map(str::to_string), message: message.into(), retry_after_s: None }
    }

    fn retryable(message: impl Into<String>, after_s: u64) -> Self {
        Self {
            retry_after_s: Some(after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, message)
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", None, message)
    }

    fn into_err<T>(self) -> Result<T, Self> {
        Err(self)
    }

    fn with_status(self, status: StatusCode) -> Self {
        Self { status, ..self }
    }

    /// A body that is not a grant: the field at `path` has the wrong type or value, or, at the
    /// top (`.`), serde's message names a missing or unknown field.
    fn body(path: &str, err: &serde_json::Error) -> Self {
        let message = err.to_string();
        let field = if path == "." {
            let named = message.starts_with("missing field") || message.starts_with("unknown field");
            named.then(|| message.split('`').nth(1).map(str::to_string)).flatten()
        } else {
            Some(path.to_string())
        };
        Self {
            field,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                None,
                format!(
                    "the body is not a grant: {message}; send the grants-format fields as one JSON object (docs/grants-format.md)"
                ),
            )
        }
    }

    /// The answer to a backend's refusal: the grant's fault is a 4xx naming the field, a
    /// retryable refusal a 503 with `Retry-After`.
    fn of(err: &anyhow::Error) -> Self {
        let message = format!("{err:#}");
        let Some(backend) = err.downcast_ref::<BackendError>() else { return Self::internal(message) };
        match backend {
            BackendError::InvalidInput { field, .. } => {
                let field = field.strip_prefix("grant.").unwrap_or(field);
                Self::new(StatusCode::BAD_REQUEST, "invalid_input", Some(field), message)
            }
            BackendError::RegionNotAllowed { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "region_not_allowed", Some("region"), message)
            }
            BackendError::Unsatisfiable { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unsatisfiable", None, message)
            }
            BackendError::DeadlinePassed { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "deadline_passed", Some("valid_to"), message)
            }
            BackendError::UnknownInstance { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_grant", Some("id"), message)
            }
            BackendError::CapacityUnavailable { .. } => Self::retryable(message, RETRY_AFTER_CAPACITY_S),
            e if e.is_retryable() => Self::retryable(message, RETRY_AFTER_S),
            BackendError::Provider { .. } => Self::new(StatusCode::BAD_GATEWAY, "provider", None, message),
            _ => Self::internal(message),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.kind,
            "field": self.field,
            "message": self.message,
            "retryable": self.retry_after_s.is_some(),
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after_s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after_s));
        }
        response
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
