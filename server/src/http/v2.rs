//! Open Inference Protocol v2 (KServe / Triton REST), with Triton's binary tensor, classification,
//! statistics and model repository extensions.

use super::infer::{self, read_body, timing_headers, Tracker};
use super::ranking;
use super::{lookup_error, parse_version, request_id, SharedState};
use crate::error::{ApiError, ErrorBody, InferenceErrors, ModelReadErrors};
use crate::model_config::{ModelConfig, VersionPolicy, Warmup};
use crate::repository::{ControlMode, IndexEntry, LoadedVersion, LookupError};
use crate::stats::ModelStats;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use models::ModelInfo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

use super::decode::{decode_v2, ModelShape, OutputSpec};
pub use super::decode::{
    InferInput, InferRequest, RequestedOutput, INPUT_RAW, INPUT_TENSOR, OUTPUT_LOGITS, OUTPUT_PROBS,
};
pub const HEADER_LEN: &str = "inference-header-content-length";

// The response bodies below serialize exactly as the `json!` values they replaced did:
// serde_json (without `preserve_order`) wrote object keys in alphabetical order, so every
// struct declares its fields alphabetically, and FP32 data goes out as f64 (as `json!`
// converted it). `typed_bodies_match_the_json_values` checks the bytes.

/// Readiness of a model version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
    pub version: String,
}

/// A model version's configuration: Triton's shape, plus the task and preprocessing spec.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelConfigResponse {
    pub backend: String,
    pub description: String,
    pub dynamic_batching: DynamicBatching,
    pub input: Vec<ConfigTensor>,
    pub instance_group: Vec<InstanceGroup>,
    pub max_batch_size: usize,
    pub model_warmup: Warmup,
    pub name: String,
    pub output: Vec<ConfigTensor>,
    pub parameters: ConfigParameters,
    pub platform: String,
    /// The preprocessing spec from the model file.
    #[schema(value_type = Object)]
    pub preprocess: Value,
    pub task: String,
    pub version: String,
    /// `"all"`, `{"latest": N}` or `{"specific": [versions]}`.
    #[schema(value_type = Value)]
    pub version_policy: VersionPolicy,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigTensor {
    pub data_type: String,
    pub dims: Vec<usize>,
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DynamicBatching {
    pub default_queue_policy: QueuePolicy,
    pub max_queue_delay_microseconds: u64,
    pub preferred_batch_size: Vec<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueuePolicy {
    pub default_timeout_microseconds: u64,
    pub max_queue_size: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceGroup {
    pub count: usize,
    pub kind: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigParameters {
    pub threads: StringValue,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StringValue {
    pub string_value: String,
}

/// The JSON part of an inference answer (with the binary tensor extension, the binary outputs
/// follow it in the body).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferResponse {
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub model_name: String,
    pub model_version: String,
    pub outputs: Vec<InferOutput>,
}

/// One output tensor: `data` inline, or `parameters.binary_data_size` bytes after the JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<OutputValues>,
    /// `FP32`, or `BYTES` for classification results.
    pub datatype: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryDataSize>,
    pub shape: Vec<usize>,
}

/// Output data, flattened row-major: numbers (FP32), or `score:index:label` strings (BYTES).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OutputValues {
    Fp32(Vec<f64>),
    Bytes(Vec<String>),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BinaryDataSize {
    pub binary_data_size: usize,
}

/// The answer of a repository load or unload: an empty object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RepositoryActionResponse {}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    #[schema(value_type = Object)]
    pub parameters: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "v2", responses((status = 200, body = ServerMetadata),
    (status = 401, description = "Missing or wrong API key", body = ErrorBody)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(server_metadata_value())
}

/// The server metadata (shared with the gRPC front end).
pub(crate) fn server_metadata_value() -> ServerMetadata {
    ServerMetadata {
        name: "shiftserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: [
            "classification",
            "binary_tensor_data",
            "model_repository",
            "statistics",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}

pub(crate) fn get_lv(
    st: &SharedState,
    m: &str,
    v: Option<&str>,
) -> Result<Arc<LoadedVersion>, ApiError> {
    let version = v.map(|v| parse_version(m, v)).transpose()?;
    st.repo.get(m, version).map_err(|e| lookup_error(m, v, e))
}

pub(crate) fn metadata(st: &SharedState, lv: &LoadedVersion) -> ModelMetadata {
    let info = lv.model.info();
    let mut shape: Vec<i64> = vec![-1];
    shape.extend(info.input_shape.iter().map(|&d| d as i64));
    let classes = info.labels.len() as i64;
    ModelMetadata {
        name: lv.name.clone(),
        versions: st
            .repo
            .versions(&lv.name)
            .iter()
            .map(|v| v.version_str())
            .collect(),
        platform: "shiftserve".into(),
        inputs: vec![
            TensorMetadata {
                name: INPUT_TENSOR.into(),
                datatype: "FP32".into(),
                shape,
            },
            TensorMetadata {
                name: INPUT_RAW.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
            },
        ],
        outputs: vec![
            TensorMetadata {
                name: OUTPUT_LOGITS.into(),
                datatype: "FP32".into(),
                shape: vec![-1, classes],
            },
            TensorMetadata {
                name: OUTPUT_PROBS.into(),
                datatype: "FP32".into(),
                shape: vec![-1, classes],
            },
        ],
        parameters: json!({
            "task": info.task.as_str(),
            "input_kind": info.input_kind,
            "labels": info.labels,
            "weight_bits": info.weight_bits,
        }),
    }
}

/// Model metadata (latest version).
#[utoipa::path(get, path = "/v2/models/{m}", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, body = ModelMetadata), ModelReadErrors))]
pub async fn model_metadata(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let lv = get_lv(&st, &m, None)?;
    Ok(Json(metadata(&st, &lv)))
}

/// Model metadata of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, body = ModelMetadata), ModelReadErrors))]
pub async fn model_metadata_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let lv = get_lv(&st, &m, Some(&v))?;
    Ok(Json(metadata(&st, &lv)))
}

fn ready_response(st: &SharedState, m: &str, v: Option<&str>) -> Response {
    match get_lv(st, m, v) {
        Ok(lv) if !st.draining.load(std::sync::atomic::Ordering::SeqCst) => Json(ModelReady {
            name: m.to_string(),
            ready: true,
            version: lv.version_str(),
        })
        .into_response(),
        Ok(_) => ApiError::unavailable("server is shutting down").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Model readiness: 200 when a warmed-up version serves, 503 otherwise.
#[utoipa::path(get, path = "/v2/models/{m}/ready", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, description = "Ready", body = ModelReady), ModelReadErrors))]
pub async fn model_ready(State(st): State<SharedState>, Path(m): Path<String>) -> Response {
    ready_response(&st, &m, None)
}

/// Readiness of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}/ready", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, description = "Ready", body = ModelReady), ModelReadErrors))]
pub async fn model_ready_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Response {
    ready_response(&st, &m, Some(&v))
}

fn config_response(lv: &LoadedVersion) -> ModelConfigResponse {
    config_of(&lv.name, lv.version_str(), &lv.config, lv.model.info())
}

fn config_of(
    name: &str,
    version: String,
    c: &ModelConfig,
    info: &ModelInfo,
) -> ModelConfigResponse {
    let tensor = |name: &str, data_type: &str, dims: Vec<usize>| ConfigTensor {
        data_type: data_type.into(),
        dims,
        name: name.into(),
    };
    let classes = info.labels.len();
    ModelConfigResponse {
        backend: "shiftserve".into(),
        description: c
            .description
            .clone()
            .unwrap_or_else(|| info.description.clone()),
        dynamic_batching: DynamicBatching {
            default_queue_policy: QueuePolicy {
                default_timeout_microseconds: c.timeout_ms * 1000,
                max_queue_size: c.queue_capacity,
            },
            max_queue_delay_microseconds: c.max_queue_delay_us,
            preferred_batch_size: c.preferred_batch_sizes.clone(),
        },
        input: vec![
            tensor(INPUT_TENSOR, "TYPE_FP32", info.input_shape.clone()),
            tensor(INPUT_RAW, "TYPE_STRING", vec![1]),
        ],
        instance_group: vec![InstanceGroup {
            count: c.instances,
            kind: "KIND_CPU".into(),
        }],
        max_batch_size: c.max_batch_size,
        model_warmup: c.warmup.clone(),
        name: name.into(),
        output: vec![
            tensor(OUTPUT_LOGITS, "TYPE_FP32", vec![classes]),
            tensor(OUTPUT_PROBS, "TYPE_FP32", vec![classes]),
        ],
        parameters: ConfigParameters {
            threads: StringValue {
                string_value: c.threads.to_string(),
            },
        },
        platform: "shiftserve".into(),
        preprocess: serde_json::from_str::<Value>(&info.preprocess_json).unwrap_or(Value::Null),
        task: info.task.as_str().into(),
        version,
        version_policy: c.version_policy.clone(),
    }
}

/// Model configuration (Triton's shape plus the preprocessing spec).
#[utoipa::path(get, path = "/v2/models/{m}/config", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, description = "Configuration", body = ModelConfigResponse), ModelReadErrors))]
pub async fn model_config(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<ModelConfigResponse>, ApiError> {
    let lv = get_lv(&st, &m, None)?;
    Ok(Json(config_response(&lv)))
}

/// Configuration of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}/config", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, description = "Configuration", body = ModelConfigResponse), ModelReadErrors))]
pub async fn model_config_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<ModelConfigResponse>, ApiError> {
    let lv = get_lv(&st, &m, Some(&v))?;
    Ok(Json(config_response(&lv)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsResponse {
    pub model_stats: Vec<ModelStats>,
}

/// Statistics of every loaded model version.
#[utoipa::path(get, path = "/v2/models/stats", tag = "v2", responses((status = 200, body = StatsResponse), (status = 401, description = "Missing or wrong API key", body = ErrorBody)))]
pub async fn all_stats(State(st): State<SharedState>) -> Json<StatsResponse> {
    let model_stats = st
        .repo
        .all_loaded()
        .iter()
        .map(|lv| lv.stats.snapshot(&lv.name, lv.version))
        .collect();
    Json(StatsResponse { model_stats })
}

/// Statistics of every loaded version of a model: Triton's counters plus p50/p90/p95/p99 per phase.
#[utoipa::path(get, path = "/v2/models/{m}/stats", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, body = StatsResponse), ModelReadErrors))]
pub async fn model_stats(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<StatsResponse>, ApiError> {
    let versions = st.repo.versions(&m);
    if versions.is_empty() {
        get_lv(&st, &m, None)?;
    }
    Ok(Json(StatsResponse {
        model_stats: versions
            .iter()
            .map(|lv| lv.stats.snapshot(&lv.name, lv.version))
            .collect(),
    }))
}

/// Statistics of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}/stats", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, body = StatsResponse), ModelReadErrors))]
pub async fn model_stats_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<StatsResponse>, ApiError> {
    let lv = get_lv(&st, &m, Some(&v))?;
    Ok(Json(StatsResponse {
        model_stats: vec![lv.stats.snapshot(&lv.name, lv.version)],
    }))
}

// ----- inference -----

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InferQuery {
    /// Deadline in milliseconds (overrides `x-request-timeout-ms` and the model default; capped
    /// at the server's `--max-timeout-ms`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub timeout_ms: Option<u32>,
}

/// Inference (latest version). JSON body, or Triton's binary tensor format with
/// `Inference-Header-Content-Length` (0 = the whole body is one encoded image/WAV).
#[utoipa::path(post, path = "/v2/models/{m}/infer", tag = "v2", params(("m" = String, Path), InferQuery,
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds (used when the `timeout_ms` query parameter is absent)", minimum = 1, maximum = 4294967295_u64),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor extension: length of the JSON header; 0 for a raw binary request", minimum = 0, maximum = 4294967295_u64)),
    request_body(content = InferRequest, description = "Inference request"),
    responses((status = 200, description = "Outputs (JSON, or JSON header + binary with Inference-Header-Content-Length)",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        InferenceErrors))]
pub async fn infer(
    State(st): State<SharedState>,
    Path(m): Path<String>,
    Query(q): Query<InferQuery>,
    req: Request,
) -> Response {
    infer_common(st, m, None, q, req).await
}

/// Inference on one version.
#[utoipa::path(post, path = "/v2/models/{m}/versions/{v}/infer", tag = "v2", params(("m" = String, Path), ("v" = String, Path), InferQuery,
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds (used when the `timeout_ms` query parameter is absent)", minimum = 1, maximum = 4294967295_u64),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor extension: length of the JSON header; 0 for a raw binary request", minimum = 0, maximum = 4294967295_u64)),
    request_body(content = InferRequest, description = "Inference request"),
    responses((status = 200, description = "Outputs (JSON, or JSON header + binary with Inference-Header-Content-Length)",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        InferenceErrors))]
pub async fn infer_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
    Query(q): Query<InferQuery>,
    req: Request,
) -> Response {
    infer_common(st, m, Some(v), q, req).await
}

/// A v2 inference request accepted for a model: from here on it is counted (in flight, and its
/// outcome in the metrics and statistics). Both v2 front ends (HTTP and gRPC) start here.
pub(crate) struct Accepted {
    pub tracker: Tracker,
    /// The version pinned by the request, if any.
    pub version: Option<u64>,
    lv: Option<Arc<LoadedVersion>>,
}

/// Accepts an inference request for model `m` (version `v` if pinned). An unknown model or
/// version is refused here, before it is counted; a known model without a ready version is
/// accepted (and answers 503 / UNAVAILABLE from `Accepted::resolve`).
pub(crate) async fn accept(
    st: &SharedState,
    m: &str,
    v: Option<&str>,
    started: Instant,
    timeout_ms: Option<u32>,
    headers: &HeaderMap,
) -> Result<Accepted, ApiError> {
    let version = v.map(|v| parse_version(m, v)).transpose()?;
    let lv = match st.repo.get(m, version) {
        Ok(lv) => Some(lv),
        Err(e @ (LookupError::UnknownModel | LookupError::UnknownVersion)) => {
            return Err(lookup_error(m, v, e))
        }
        Err(_) => None,
    };
    let mut tracker = Tracker::new(st.clone(), m, started);
    if let Some(lv) = &lv {
        tracker.set_version(lv);
        // A place in the queue before the inputs are decoded: waited for, or refused (and
        // counted as a refused request) undecoded.
        if let Err(e) = infer::admit_early(m, lv, &mut tracker, timeout_ms, headers).await {
            tracker.fail(&e);
            return Err(e);
        }
    }
    Ok(Accepted {
        tracker,
        version,
        lv,
    })
}

impl Accepted {
    /// The version the request's inputs are decoded against.
    pub fn resolve(
        &mut self,
        st: &SharedState,
        m: &str,
        v: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, ApiError> {
        match self.lv.take() {
            Some(lv) => Ok(lv),
            None => st
                .repo
                .get(m, self.version)
                .map_err(|e| lookup_error(m, v, e)),
        }
    }
}

/// What the decoders need to know of a model version.
pub(crate) fn model_shape(lv: &LoadedVersion) -> ModelShape<'_> {
    ModelShape {
        input_shape: &lv.model.info().input_shape,
        max_batch_size: lv.config.max_batch_size,
    }
}

async fn infer_common(
    st: SharedState,
    m: String,
    v: Option<String>,
    q: InferQuery,
    req: Request,
) -> Response {
    let started = Instant::now();
    let headers = req.headers().clone();
    let rid = request_id(&headers);
    let mut acc = match accept(&st, &m, v.as_deref(), started, q.timeout_ms, &headers).await {
        Ok(a) => a,
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            let limit = st.opts.max_body_bytes;
            return infer::refuse_unread(req.into_body(), &headers, limit, e)
                .await
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let result = async {
        let body = read_body(req.into_body(), st.opts.max_body_bytes).await?;
        let lv = acc.resolve(&st, &m, v.as_deref())?;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let decoded = decode_v2(
            body,
            headers.get(HEADER_LEN).map(|h| h.as_bytes()),
            ct,
            &model_shape(&lv),
        )?;
        let (id, specs, samples) = (decoded.id, decoded.outputs, decoded.samples);
        let target = infer::Target {
            model: &m,
            version: acc.version,
            version_str: v.as_deref(),
            timeout_ms: q.timeout_ms,
            headers: &headers,
        };
        let out = infer::run(&st, &mut acc.tracker, &target, samples).await?;
        Ok((id, specs, out))
    }
    .await;
    let mut tracker = acc.tracker;
    let (id, specs, out) = match result {
        Ok(x) => x,
        Err(e) => {
            tracker.fail(&e);
            return e.into_response();
        }
    };
    let post = Instant::now();
    let (body, binary_blobs) = infer_response(
        &m,
        out.lv.version_str(),
        id,
        &specs,
        output_tensors(&specs, &out),
    );
    let mut timing = out.timing;
    timing.total = started.elapsed();
    tracker.succeed(&timing, post.elapsed());
    let header_bytes = serde_json::to_vec(&body).expect("an inference answer serializes");
    let mut response = if binary_blobs.is_empty() {
        let mut r = Response::new(Body::from(header_bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        let hlen = header_bytes.len();
        let mut all = header_bytes;
        for b in binary_blobs {
            all.extend_from_slice(&b);
        }
        let mut r = Response::new(Body::from(all));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut().insert(HEADER_LEN, HeaderValue::from(hlen));
        r
    };
    timing_headers(response.headers_mut(), &rid, &timing, out.batch_size);
    response
}

/// The JSON part of an inference answer, and the binary outputs that follow it (in order).
fn infer_response(
    model: &str,
    version: String,
    id: Option<String>,
    specs: &[OutputSpec],
    tensors: Vec<OutputTensor>,
) -> (InferResponse, Vec<Vec<u8>>) {
    let mut outputs = Vec::with_capacity(specs.len());
    let mut binary_blobs: Vec<Vec<u8>> = Vec::new();
    for (spec, t) in specs.iter().zip(tensors) {
        let (data, parameters) = if spec.binary {
            let bin: Vec<u8> = match &t.data {
                OutputData::Fp32(flat) => flat.iter().flat_map(|x| x.to_le_bytes()).collect(),
                OutputData::Bytes(strings) => bytes_elements(strings),
            };
            let size = BinaryDataSize {
                binary_data_size: bin.len(),
            };
            binary_blobs.push(bin);
            (None, Some(size))
        } else {
            let values = match t.data {
                OutputData::Fp32(flat) => {
                    OutputValues::Fp32(flat.into_iter().map(f64::from).collect())
                }
                OutputData::Bytes(strings) => OutputValues::Bytes(strings),
            };
            (Some(values), None)
        };
        outputs.push(InferOutput {
            data,
            datatype: t.datatype.into(),
            name: spec.name.clone(),
            parameters,
            shape: t.shape,
        });
    }
    let body = InferResponse {
        id,
        model_name: model.into(),
        model_version: version,
        outputs,
    };
    (body, binary_blobs)
}

/// The data of one output tensor, flattened row-major.
pub(crate) enum OutputData {
    Fp32(Vec<f32>),
    /// Classification results, `score:index:label`.
    Bytes(Vec<String>),
}

/// One answered output (HTTP JSON or binary, gRPC raw contents).
pub(crate) struct OutputTensor {
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: OutputData,
}

/// The requested outputs of an answered request, in the order of `specs`: logits or
/// probabilities, as FP32 `[batch, classes]` or, with `classification` K, BYTES `[batch, K]`.
pub(crate) fn output_tensors(specs: &[OutputSpec], out: &infer::InferOutcome) -> Vec<OutputTensor> {
    let info = out.lv.model.info();
    let n = out.logits.len();
    let classes = info.labels.len();
    specs
        .iter()
        .map(|spec| {
            let rows: Vec<Vec<f32>> = if spec.name == OUTPUT_PROBS {
                out.logits.iter().map(|l| info.scores(l)).collect()
            } else {
                out.logits.clone()
            };
            match spec.classification {
                Some(k) => {
                    let k = k.min(classes);
                    let strings: Vec<String> = rows
                        .iter()
                        .flat_map(|r| ranking::classification(&info.labels, r, k))
                        .collect();
                    OutputTensor {
                        datatype: "BYTES",
                        shape: vec![n, k],
                        data: OutputData::Bytes(strings),
                    }
                }
                None => OutputTensor {
                    datatype: "FP32",
                    shape: vec![n, classes],
                    data: OutputData::Fp32(rows.into_iter().flatten().collect()),
                },
            }
        })
        .collect()
}

/// BYTES elements in the binary tensor format: each a 4-byte little-endian length, then the bytes.
pub(crate) fn bytes_elements<S: AsRef<[u8]>>(elements: &[S]) -> Vec<u8> {
    let mut bin = Vec::new();
    for e in elements {
        let e = e.as_ref();
        bin.extend_from_slice(&(e.len() as u32).to_le_bytes());
        bin.extend_from_slice(e);
    }
    bin
}

// ----- repository extension -----

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct IndexRequest {
    /// Only list ready models.
    #[serde(default)]
    pub ready: bool,
}

/// Every model in the repository with its state. The body is optional: no body, an empty body
/// and JSON `null` all mean `{}` (every model).
#[utoipa::path(post, path = "/v2/repository/index", tag = "repository",
    request_body(content = Option<IndexRequest>),
    responses((status = 200, body = [IndexEntry]),
        (status = 400, description = "Body is not JSON `null` or an object `{\"ready\": bool}`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn repository_index(
    State(st): State<SharedState>,
    body: Bytes,
) -> Result<Json<Vec<IndexEntry>>, ApiError> {
    let req = parse_index_request(&body)?;
    let repo = st.repo.clone();
    let idx = tokio::task::spawn_blocking(move || repo.index(req.ready))
        .await
        .map_err(|_| ApiError::internal("index failed"))?;
    Ok(Json(idx))
}

/// The index request body: absent, empty, JSON `null` or an `IndexRequest` object.
fn parse_index_request(body: &[u8]) -> Result<IndexRequest, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(IndexRequest::default());
    }
    let req: Option<IndexRequest> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    match req {
        None => Ok(IndexRequest::default()),
        // serde would also build the struct from an array such as `[]` or `[true]`.
        Some(_) if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') => {
            Err(ApiError::bad_request(
                "invalid JSON: the body must be null or an object {\"ready\": bool}",
            ))
        }
        Some(r) => Ok(r),
    }
}

/// Load and unload change which models serve, which only the `explicit` control mode allows.
/// In `none` (the repository is fixed at start) and `poll` (the directory decides) the request
/// is well formed but conflicts with the server's current configuration: 409 Conflict (not 400,
/// which would blame the request; not 5xx, which would page whoever watches error rates).
fn require_explicit(st: &SharedState) -> Result<(), ApiError> {
    if st.repo.mode() != ControlMode::Explicit {
        return Err(ApiError::conflict(format!(
            "model control mode is \"{}\": load and unload need --model-control-mode explicit",
            st.repo.mode().as_str()
        )));
    }
    Ok(())
}

/// Loads (or reloads changed versions of) a model; answers once it is warmed up (explicit mode).
#[utoipa::path(post, path = "/v2/repository/models/{m}/load", tag = "repository", params(("m" = String, Path)),
    responses((status = 200, description = "Loaded", body = RepositoryActionResponse), (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Not in the repository", body = ErrorBody),
        (status = 409, description = "The server does not run in explicit model control mode", body = ErrorBody),
        (status = 500, description = "Load failed (details in error)", body = ErrorBody)))]
pub async fn repository_load(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<RepositoryActionResponse>, ApiError> {
    load_model(&st, &m).await?;
    Ok(Json(RepositoryActionResponse {}))
}

/// Loads (or reloads) a model from the repository directory (explicit mode), shared with gRPC.
pub(crate) async fn load_model(st: &SharedState, m: &str) -> Result<(), ApiError> {
    require_explicit(st)?;
    if !crate::repository::valid_model_name(m) || !st.repo.root().join(m).is_dir() {
        return Err(ApiError::not_found(format!(
            "model \"{m}\" not found in the model repository"
        )));
    }
    let repo = st.repo.clone();
    let name = m.to_string();
    let res = tokio::task::spawn_blocking(move || repo.sync_model(&name, true))
        .await
        .map_err(|_| ApiError::internal("load panicked"))?;
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::error::Reason::Internal,
            format!("failed to load \"{m}\": {e}"),
        )),
    }
}

/// Unloads a model; queued requests still complete (explicit mode).
#[utoipa::path(post, path = "/v2/repository/models/{m}/unload", tag = "repository", params(("m" = String, Path)),
    responses((status = 200, description = "Unloaded", body = RepositoryActionResponse), (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 409, description = "The server does not run in explicit model control mode", body = ErrorBody)))]
pub async fn repository_unload(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<RepositoryActionResponse>, ApiError> {
    unload_model(&st, &m).await?;
    Ok(Json(RepositoryActionResponse {}))
}

/// Unloads a model (explicit mode), shared with gRPC.
pub(crate) async fn unload_model(st: &SharedState, m: &str) -> Result<(), ApiError> {
    require_explicit(st)?;
    let repo = st.repo.clone();
    let name = m.to_string();
    let known = tokio::task::spawn_blocking(move || repo.unload(&name))
        .await
        .map_err(|_| ApiError::internal("unload panicked"))?;
    if !known {
        return Err(ApiError::not_found(format!("unknown model \"{m}\"")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            task: models::Task::SpokenIntent,
            labels: vec!["a".into(), "b".into(), "c".into()],
            intents: Vec::new(),
            input_shape: vec![1, 40, 101],
            preprocess_json: r#"{"z": 1, "kind": "mfcc", "mean": [0.1, 0.25]}"#.into(),
            input_kind: "audio",
            weight_bits: vec![3],
            file_bytes: 10,
            fp32_bytes: 40,
            parameters: 10,
            numeric_path: "int8".into(),
            description: "from the file".into(),
            temperature: None,
            tensor_train: None,
        }
    }

    /// The `json!` configuration the typed body replaced, verbatim.
    fn config_json_before(name: &str, version: String, c: &ModelConfig, info: &ModelInfo) -> Value {
        json!({
            "name": name,
            "version": version,
            "platform": "shiftserve",
            "backend": "shiftserve",
            "max_batch_size": c.max_batch_size,
            "input": [
                {"name": INPUT_TENSOR, "data_type": "TYPE_FP32", "dims": info.input_shape},
                {"name": INPUT_RAW, "data_type": "TYPE_STRING", "dims": [1]},
            ],
            "output": [
                {"name": OUTPUT_LOGITS, "data_type": "TYPE_FP32", "dims": [info.labels.len()]},
                {"name": OUTPUT_PROBS, "data_type": "TYPE_FP32", "dims": [info.labels.len()]},
            ],
            "dynamic_batching": {
                "preferred_batch_size": c.preferred_batch_sizes,
                "max_queue_delay_microseconds": c.max_queue_delay_us,
                "default_queue_policy": {
                    "max_queue_size": c.queue_capacity,
                    "default_timeout_microseconds": c.timeout_ms * 1000,
                },
            },
            "instance_group": [{"count": c.instances, "kind": "KIND_CPU"}],
            "version_policy": c.version_policy,
            "parameters": {"threads": {"string_value": c.threads.to_string()}},
            "model_warmup": c.warmup,
            "description": c.description.clone().unwrap_or_else(|| info.description.clone()),
            "task": info.task.as_str(),
            "preprocess": serde_json::from_str::<Value>(&info.preprocess_json).unwrap_or(Value::Null),
        })
    }

    /// The `json!` inference answer the typed body replaced, verbatim.
    fn infer_json_before(
        m: &str,
        version: String,
        id: Option<String>,
        specs: &[OutputSpec],
        tensors: Vec<OutputTensor>,
    ) -> (String, Vec<Vec<u8>>) {
        let mut json_outputs = Vec::new();
        let mut binary_blobs: Vec<Vec<u8>> = Vec::new();
        for (spec, t) in specs.iter().zip(tensors) {
            let (datatype, shape) = (t.datatype, t.shape);
            let (data_json, data_bin): (Value, Vec<u8>) = match &t.data {
                OutputData::Fp32(flat) => (
                    json!(flat),
                    flat.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                OutputData::Bytes(strings) => (json!(strings), bytes_elements(strings)),
            };
            if spec.binary {
                json_outputs.push(
                    json!({"name": spec.name, "datatype": datatype, "shape": shape,
                    "parameters": {"binary_data_size": data_bin.len()}}),
                );
                binary_blobs.push(data_bin);
            } else {
                json_outputs.push(
                    json!({"name": spec.name, "datatype": datatype, "shape": shape, "data": data_json}),
                );
            }
        }
        let mut body = json!({
            "model_name": m,
            "model_version": version,
            "outputs": json_outputs,
        });
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        (body.to_string(), binary_blobs)
    }

    fn tensors() -> Vec<OutputTensor> {
        let fp32 = || OutputData::Fp32(vec![0.1, -3.25, f32::NAN, 1e-8, 123456.79, f32::INFINITY]);
        let bytes = || OutputData::Bytes(vec!["0.7:2:c".into(), "0.2:0:a\"x".into()]);
        [fp32(), bytes(), fp32(), bytes()]
            .into_iter()
            .map(|data| OutputTensor {
                datatype: if matches!(data, OutputData::Fp32(_)) {
                    "FP32"
                } else {
                    "BYTES"
                },
                shape: vec![2, 3],
                data,
            })
            .collect()
    }

    #[test]
    fn typed_bodies_match_the_json_values() {
        let info = info();
        for policy in [
            VersionPolicy::Latest(2),
            VersionPolicy::All,
            VersionPolicy::Specific(vec![1, 3]),
        ] {
            for description in [None, Some("from config".to_string())] {
                let c = ModelConfig {
                    description,
                    preferred_batch_sizes: vec![2, 4],
                    version_policy: policy.clone(),
                    warmup: Warmup {
                        batch_sizes: vec![1, 8],
                        iterations: 3,
                    },
                    ..Default::default()
                };
                let typed = serde_json::to_string(&config_of("m", "3".into(), &c, &info)).unwrap();
                let before = config_json_before("m", "3".into(), &c, &info).to_string();
                assert_eq!(typed, before);
            }
        }

        let ready = ModelReady {
            name: "m".into(),
            ready: true,
            version: "3".into(),
        };
        assert_eq!(
            serde_json::to_string(&ready).unwrap(),
            json!({"name": "m", "version": "3", "ready": true}).to_string()
        );
        assert_eq!(
            serde_json::to_string(&RepositoryActionResponse {}).unwrap(),
            json!({}).to_string()
        );

        let spec = |name: &str, classification: Option<usize>, binary: bool| OutputSpec {
            name: name.into(),
            classification,
            binary,
        };
        let specs = [
            spec(OUTPUT_LOGITS, None, false),
            spec(OUTPUT_PROBS, Some(2), false),
            spec(OUTPUT_LOGITS, None, true),
            spec(OUTPUT_PROBS, Some(2), true),
        ];
        for id in [None, Some("42".to_string())] {
            for n in [0, 1, 2, 4] {
                let (typed, typed_bin) =
                    infer_response("m", "1".into(), id.clone(), &specs[..n], tensors());
                let (before, before_bin) =
                    infer_json_before("m", "1".into(), id.clone(), &specs[..n], tensors());
                assert_eq!(serde_json::to_string(&typed).unwrap(), before);
                assert_eq!(typed_bin, before_bin);
            }
        }
    }
}
