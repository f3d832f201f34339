//! Unit tests of the API (`api.rs`): refusals and their statuses, the router over a bridge
//! that is starting, called in process.

use axum::body::Body;
use axum::http::Request;
use backend_api::TokioClock;
use tower::ServiceExt as _;

use super::*;

/// The router over a bridge that has not started (it is `starting`, with no backend).
fn starting() -> (Router, watch::Sender<bool>) {
    let cfg = AwsBootConfig::from_toml(
        r#"
        regions = ["us-east-1"]
        instance_families = ["m6i"]
        owner = "unit"
        ami = { us-east-1 = "ami-12345678" }
        ledger_path = "/nonexistent/ledger"
        almanac = { epoch_unix_ms = 0, tick_ms = 1000 }
        guest = { content_store_url = "http://127.0.0.1:9/blobs/{hash}" }
        "#,
    )
    .expect("a valid config");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(1_800_000_000_000));
    let (stop, stopping) = watch::channel(false);
    (router(Api::new(Bridge::new(clock.clone()), &cfg, clock, stopping)), stop)
}

async fn call(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder().method(method).uri(uri).body(Body::from(body.to_string())).expect("a request");
    let response = router.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_string());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("a body");
    (status, retry_after, serde_json::from_slice(&bytes).expect("JSON"))
}

fn grant(valid_from: u64, valid_to: u64) -> String {
    format!(
        r#"{{"id":"{}","cpu_millicores":1000,"ram_mib":1024,"storage_gib":8,"tdx_required":false,"image_post_hash":"{}","valid_from":{valid_from},"valid_to":{valid_to}}}"#,
        "ab".repeat(32),
        "5a".repeat(32)
    )
}

#[tokio::test]
async fn a_bridge_not_admitting_answers_503_with_retry_after_and_bad_requests_name_the_field() {
    let (router, _stop) = starting();
    let (status, retry_after, body) = call(&router, "POST", "/v1/grants", &grant(1, 2)).await;
    assert_eq!((status, retry_after.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")), "{body}");
    assert_eq!(body["retryable"], true);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("starting")), "{body}");

    let (status, _, body) = call(&router, "POST", "/v1/grants", &grant(1, 2).replace("ram_mib", "ram")).await;
    assert_eq!(
        (status, body["error"].as_str(), body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"), Some("ram"))
    );
    let (status, _, body) = call(&router, "POST", "/v1/grants", &grant(3, 2)).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("valid_from")), "{body}");
    let (status, _, body) = call(&router, "GET", "/v1/grants/xyz", "").await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")), "{body}");
    let (status, retry_after, _) = call(&router, "GET", &format!("/v1/grants/{}", "ab".repeat(32)), "").await;
    assert_eq!((status, retry_after.is_some()), (StatusCode::SERVICE_UNAVAILABLE, true));
    let (status, _, body) = call(&router, "GET", "/v2/anything", "").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    let (status, _, body) = call(&router, "GET", "/v1/status", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["phase"].as_str(), body["admitting"].as_bool()), (Some("starting"), Some(false)), "{body}");
    assert_eq!(body["in_flight"], 0);
    assert_eq!(body["live_grants"], json!([]));
}

fn status_of(err: BackendError) -> (StatusCode, Option<String>, Option<u64>) {
    let problem = Problem::of(&anyhow::Error::new(err).context("provision"));
    (problem.status, problem.field, problem.retry_after_s)
}

#[test]
fn the_grants_fault_is_a_4xx_naming_the_field_and_a_retryable_refusal_a_503_with_retry_after() {
    let invalid = BackendError::InvalidInput { field: "grant.valid_from".into(), reason: "too far".into() };
    assert_eq!(status_of(invalid), (StatusCode::BAD_REQUEST, Some("valid_from".into()), None));
    let region = BackendError::RegionNotAllowed { region: "mars-1".into(), allowed: vec!["us-east-1".into()] };
    assert_eq!(status_of(region), (StatusCode::UNPROCESSABLE_ENTITY, Some("region".into()), None));
    let tdx = BackendError::Unsatisfiable { reason: "TDX".into() };
    assert_eq!(status_of(tdx).0, StatusCode::UNPROCESSABLE_ENTITY);
    let late = BackendError::DeadlinePassed { valid_to: AlmanacTick(1), now: AlmanacTick(2) };
    assert_eq!(status_of(late), (StatusCode::UNPROCESSABLE_ENTITY, Some("valid_to".into()), None));
    let draining = BackendError::Unavailable { reason: "draining".into() };
    assert_eq!(status_of(draining), (StatusCode::SERVICE_UNAVAILABLE, None, Some(RETRY_AFTER_S)));
    let capacity = BackendError::CapacityUnavailable { region: "r".into(), instance_types: vec![] };
    assert_eq!(status_of(capacity).2, Some(RETRY_AFTER_CAPACITY_S));
    let refused = BackendError::Provider {
        operation: "RunInstances".into(),
        code: "InvalidAMIID.NotFound".into(),
        message: "no".into(),
        retryable: false,
    };
    assert_eq!(status_of(refused).0, StatusCode::BAD_GATEWAY);
    assert_eq!(Problem::of(&anyhow::anyhow!("other")).status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_body_that_is_not_a_grant_names_the_field() {
    let problem = parse_grant(format!(r#"{{"id":"{}"}}"#, "ab".repeat(32)).as_bytes()).expect_err("not a grant");
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem.field.as_deref(), Some("cpu_millicores"), "{problem:?}");
    assert!(problem.message.contains("docs/grants-format.md"), "{problem:?}");
    let problem = parse_grant(br#"{"cpu":1}"#).expect_err("unknown field");
    assert_eq!(problem.field.as_deref(), Some("cpu"));
    let problem = parse_grant(br#"{"id":1}"#).expect_err("an id of the wrong type");
    assert_eq!(problem.field.as_deref(), Some("id"), "{problem:?}");
    let problem =
        parse_grant(format!(r#"{{"ram_mib":-1,"id":"{}"}}"#, "ab".repeat(32)).as_bytes()).expect_err("a negative size");
    assert_eq!(problem.field.as_deref(), Some("ram_mib"), "{problem:?}");
    let problem = parse_grant(br#""a grant""#).expect_err("not an object");
    assert_eq!(problem.field, None, "{problem:?}");
    let good = format!(
        r#"{{"id":"{}","cpu_millicores":1,"ram_mib":1,"storage_gib":1,"tdx_required":false,"image_post_hash":"{}","valid_from":1,"valid_to":2}}"#,
        "ab".repeat(32),
        "5a".repeat(32)
    );
    assert!(parse_grant(good.as_bytes()).is_ok());
    let problem = parse_grant(format!("{good} {{}}").as_bytes()).expect_err("trailing characters");
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
}
