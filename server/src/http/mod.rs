//! HTTP front end: routing, middleware (auth, request ids, JSON errors, tracing), shared state.

pub mod infer;
pub mod openapi;
pub mod v1;
pub mod v2;

use crate::error::{error_body, ApiError};
use crate::metrics::Metrics;
use crate::repository::{LookupError, Repository};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use models::InputLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Server-wide options (flags, environment, config file).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// The gRPC listener's address; `None` with `--grpc-port off`.
    pub grpc_addr: Option<SocketAddr>,
    pub model_repository: PathBuf,
    pub control_mode: crate::repository::ControlMode,
    pub poll_secs: u64,
    pub load_models: Vec<String>,
    pub exit_timeout_secs: u64,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub preprocess_threads: usize,
    pub limits: InputLimits,
    /// Upper bound on a per-request `timeout_ms`.
    pub max_timeout_ms: u64,
}

pub struct AppState {
    pub repo: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub opts: ServeOptions,
    pub kernel_isa: String,
    /// Set on SIGTERM/SIGINT: readiness 503, new inference 503.
    pub draining: AtomicBool,
    /// Set once the initial models are loaded.
    pub started: AtomicBool,
    inflight: AtomicUsize,
    inflight_zero: Notify,
    /// Bounds concurrent decoding/feature extraction on the blocking pool.
    pub preprocess_permits: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        repo: Arc<Repository>,
        metrics: Arc<Metrics>,
        opts: ServeOptions,
        kernel_isa: String,
    ) -> AppState {
        AppState {
            repo,
            metrics,
            preprocess_permits: Arc::new(Semaphore::new(opts.preprocess_threads.max(1))),
            opts,
            kernel_isa,
            draining: AtomicBool::new(false),
            started: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            inflight_zero: Notify::new(),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub(crate) fn inflight_inc(&self) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn inflight_dec(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inflight_zero.notify_waiters();
        }
    }

    /// Waits until no inference request is in flight, or `timeout` passes. True if drained.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inflight_zero.notified();
            if self.inflight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inflight() == 0;
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

pub type SharedState = Arc<AppState>;

pub fn lookup_error(name: &str, version: Option<&str>, e: LookupError) -> ApiError {
    match e {
        LookupError::UnknownModel => ApiError::not_found(format!("unknown model \"{name}\"")),
        LookupError::UnknownVersion => ApiError::not_found(format!(
            "unknown version \"{}\" of model \"{name}\"",
            version.unwrap_or("")
        )),
        LookupError::NotReady(why) => ApiError::unavailable(format!("model \"{name}\": {why}")),
    }
}

/// Deserializes a JSON body that must be an object. serde also builds a struct from a JSON
/// array (its fields in order), which the OpenAPI document does not allow, so anything whose
/// first token is not `{` is refused before parsing (JSON's top-level type is its first token).
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Some(_) => Err("expected a JSON object".to_string()),
        None => Err("empty body, expected a JSON object".to_string()),
    }
}

/// Parses a version path segment; anything not a positive integer is an unknown version.
pub fn parse_version(name: &str, v: &str) -> Result<u64, ApiError> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 && !v.starts_with('+') => Ok(n),
        _ => Err(lookup_error(name, Some(v), LookupError::UnknownVersion)),
    }
}

/// True when no API key is configured, or `headers` carry `Authorization: Bearer <key>` (HTTP
/// headers, or gRPC metadata).
pub(crate) fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &st.opts.api_key else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) => {
            use subtle::ConstantTimeEq;
            bool::from(g.as_bytes().ct_eq(key.as_bytes()))
        }
        None => false,
    }
}

async fn auth(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if !authorized(&st, req.headers()) {
        return ApiError::unauthorized("missing or invalid API key (Authorization: Bearer <key>)")
            .into_response();
    }
    next.run(req).await
}

/// Turns every non-JSON error response (axum rejections, 404/405 from routing, 413 from body
/// limits) into `{"error": "..."}`.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut msg = String::from_utf8_lossy(&text).trim().to_string();
    if msg.is_empty() {
        msg = match status {
            StatusCode::NOT_FOUND => "no such route".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(error_body(&msg)))
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route (see /docs)")
}

/// `GET /v2/health/live`
#[utoipa::path(get, path = "/v2/health/live", tag = "health",
    responses((status = 200, description = "The process is alive")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 once the initial models are loaded, 503 while starting or draining.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Starting or shutting down", body = crate::error::ErrorBody)))]
pub async fn ready(State(st): State<SharedState>) -> Response {
    if st.draining.load(Ordering::SeqCst) {
        ApiError::unavailable("server is shutting down").into_response()
    } else if !st.started.load(Ordering::SeqCst) {
        ApiError::unavailable("server is starting: models are loading").into_response()
    } else {
        Json(serde_json::json!({ "ready": true })).into_response()
    }
}

/// `GET /metrics` (Prometheus text format).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(st): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn root() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "shiftserve",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/api-doc/openapi.json",
        "models": "/v1/models",
    }))
}

/// Reads a request id set by the request-id layer.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

pub fn router(state: SharedState) -> Router {
    let protected = Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/models/stats", get(v2::all_stats))
        .route("/v2/models/{m}", get(v2::model_metadata))
        .route(
            "/v2/models/{m}/versions/{v}",
            get(v2::model_metadata_version),
        )
        .route("/v2/models/{m}/ready", get(v2::model_ready))
        .route(
            "/v2/models/{m}/versions/{v}/ready",
            get(v2::model_ready_version),
        )
        .route("/v2/models/{m}/config", get(v2::model_config))
        .route(
            "/v2/models/{m}/versions/{v}/config",
            get(v2::model_config_version),
        )
        .route("/v2/models/{m}/stats", get(v2::model_stats))
        .route(
            "/v2/models/{m}/versions/{v}/stats",
            get(v2::model_stats_version),
        )
        .route("/v2/models/{m}/infer", post(v2::infer))
        .route("/v2/models/{m}/versions/{v}/infer", post(v2::infer_version))
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/v2/repository/models/{m}/load", post(v2::repository_load))
        .route(
            "/v2/repository/models/{m}/unload",
            post(v2::repository_unload),
        )
        .route("/v1/models", get(v1::list_models))
        .route("/v1/models/{m}/predict", post(v1::predict))
        .route(
            "/v1/models/{m}/versions/{v}/predict",
            post(v1::predict_version),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let public = Router::new()
        .route("/", get(root))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api-doc/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs_page));
    let body_limit = state.opts.max_body_bytes;
    public
        .merge(protected)
        .fallback(fallback)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
