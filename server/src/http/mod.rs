//! HTTP front end: routing, middleware (auth, request ids, JSON errors, tracing), shared state.

pub mod conn;
pub mod decode;
pub mod infer;
pub mod openapi;
pub mod ranking;
pub mod v1;
pub mod v2;
pub mod web;

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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
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
    /// Ready only when every model that should be served is ready.
    pub strict_readiness: bool,
    /// Exit non-zero when a model fails to load at start.
    pub exit_on_error: bool,
    /// Connection timeouts and limit.
    pub conn: conn::ConnLimits,
    /// Seconds between request summary lines (0: none).
    pub log_summary_secs: u64,
}

/// Requests answered since the last summary line.
#[derive(Default)]
pub struct RequestSummary {
    count: AtomicU64,
    by_class: [AtomicU64; 5],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl RequestSummary {
    pub fn record(&self, status: StatusCode, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Logs one INFO line with what was answered since the last call (nothing if no request).
    pub fn log_and_reset(&self, secs: u64) {
        let count = self.count.swap(0, Ordering::Relaxed);
        let c: Vec<u64> = self
            .by_class
            .iter()
            .map(|a| a.swap(0, Ordering::Relaxed))
            .collect();
        let sum = self.sum_us.swap(0, Ordering::Relaxed);
        let max = self.max_us.swap(0, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        tracing::info!(
            seconds = secs,
            requests = count,
            status_2xx = c[1],
            status_4xx = c[3],
            status_5xx = c[4],
            mean_ms = (sum as f64 / count as f64 / 1e3 * 1e3).round() / 1e3,
            max_ms = max as f64 / 1e3,
            "requests answered"
        );
    }
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
    /// Requests answered since the last summary line.
    pub summary: RequestSummary,
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
            summary: RequestSummary::default(),
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

    /// Why the server is not ready (draining, starting, or with strict readiness a model that
    /// should be served and is not); `None` when ready.
    pub fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::SeqCst) {
            return Some("server is shutting down".into());
        }
        if !self.started.load(Ordering::SeqCst) {
            return Some("server is starting: models are loading".into());
        }
        if self.opts.strict_readiness {
            let why = self.repo.not_ready();
            if !why.is_empty() {
                return Some(format!("not every model is ready: {}", why.join("; ")));
            }
        }
        None
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
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

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, RFC 9110).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
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
        .and_then(bearer_token);
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

/// `GET /v2/health/ready`: 200 once every model that should be served is ready (with
/// `--strict-readiness=false`: once the initial load finished); 503 while starting or draining,
/// and while a model that should be served has no ready version or the repository is unreadable.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Starting, shutting down, or a model that should be served is not ready (the reason is in `error`)", body = crate::error::ErrorBody)))]
pub async fn ready(State(st): State<SharedState>) -> Response {
    let state = st.clone();
    let why = tokio::task::spawn_blocking(move || state.not_ready())
        .await
        .unwrap_or_else(|_| Some("readiness check failed".into()));
    match why {
        Some(why) => ApiError::unavailable(why).into_response(),
        None => Json(serde_json::json!({ "ready": true })).into_response(),
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

/// Longest request id kept from a client; longer or unsafe ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A client's request id is kept if it is 1 to 128 characters from `A-Z a-z 0-9 - _ . : / + = @`
/// (UUIDs, W3C trace ids, most tracing systems' ids); otherwise the server makes one.
pub fn acceptable_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Gives every request an `x-request-id` (the client's if acceptable, else a new UUID) and
/// echoes it on the answer.
async fn request_ids(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get("x-request-id") {
        Some(v) if acceptable_request_id(v.as_bytes()) => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is ASCII"),
    };
    req.headers_mut().insert("x-request-id", id.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// Refuses a declared body over the limit at once (413, before any `100 Continue`), closes the
/// connection after answers whose body was not read (408, 413) and every answer while draining,
/// and counts answers for the summary line.
async fn connection_policy(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut resp = match declared {
        Some(n) if n > st.opts.max_body_bytes as u64 => {
            // A client waiting for `100 Continue` gets the 413 instead and never sends the body.
            // One that sends it anyway gets the 413 once a bounded part of it was read and
            // discarded (never buffered), so that it sees the answer rather than a reset.
            let expects_continue = req
                .headers()
                .get(header::EXPECT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
            if !expects_continue {
                infer::discard_body(req.into_body(), st.opts.max_body_bytes).await;
            }
            ApiError::too_large(format!(
                "request body of {n} bytes exceeds {} bytes",
                st.opts.max_body_bytes
            ))
            .into_response()
        }
        _ => next.run(req).await,
    };
    let status = resp.status();
    if st.draining.load(Ordering::SeqCst)
        || status == StatusCode::PAYLOAD_TOO_LARGE
        || status == StatusCode::REQUEST_TIMEOUT
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    st.summary.record(status, started.elapsed());
    resp
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
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api-doc/openapi.json", get(openapi::openapi_json))
        .merge(web::routes());
    let body_limit = state.opts.max_body_bytes;
    public
        .merge(protected)
        .fallback(fallback)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state, connection_policy))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                // One line per request at DEBUG; INFO gets the periodic summary line.
                .on_failure(debug_on_failure())
                .on_response(debug_on_response()),
        )
        .layer(middleware::from_fn(request_ids))
}

/// Request traces of both protocols: failures logged at DEBUG (the answer carries the error).
pub(crate) fn debug_on_failure() -> tower_http::trace::DefaultOnFailure {
    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)
}

/// Request traces of both protocols: one line per request at DEBUG, latency in microseconds.
pub(crate) fn debug_on_response() -> tower_http::trace::DefaultOnResponse {
    tower_http::trace::DefaultOnResponse::new()
        .level(tracing::Level::DEBUG)
        .latency_unit(tower_http::LatencyUnit::Micros)
}
