//! Open Inference Protocol v2 (KServe / Triton REST), with Triton's binary tensor, classification,
//! statistics and model repository extensions.

use super::infer::{self, read_body, timing_headers, top_k, Sample, Tracker};
use super::{lookup_error, parse_version, request_id, SharedState};
use crate::error::{ApiError, ErrorBody, InferenceErrors, ModelReadErrors};
use crate::repository::{ControlMode, IndexEntry, LoadedVersion, LookupError};
use crate::stats::ModelStats;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use models::MediaHint;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

pub const INPUT_TENSOR: &str = "input";
pub const INPUT_RAW: &str = "raw";
pub const OUTPUT_LOGITS: &str = "logits";
pub const OUTPUT_PROBS: &str = "probabilities";
pub const HEADER_LEN: &str = "inference-header-content-length";

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
        Ok(lv) if !st.draining.load(std::sync::atomic::Ordering::SeqCst) => {
            Json(json!({"name": m, "version": lv.version_str(), "ready": true})).into_response()
        }
        Ok(_) => ApiError::unavailable("server is shutting down").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Model readiness: 200 when a warmed-up version serves, 503 otherwise.
#[utoipa::path(get, path = "/v2/models/{m}/ready", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, description = "Ready"), ModelReadErrors))]
pub async fn model_ready(State(st): State<SharedState>, Path(m): Path<String>) -> Response {
    ready_response(&st, &m, None)
}

/// Readiness of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}/ready", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, description = "Ready"), ModelReadErrors))]
pub async fn model_ready_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Response {
    ready_response(&st, &m, Some(&v))
}

fn config_json(lv: &LoadedVersion) -> Value {
    let info = lv.model.info();
    let c = &lv.config;
    json!({
        "name": lv.name,
        "version": lv.version_str(),
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

/// Model configuration (Triton's shape plus the preprocessing spec).
#[utoipa::path(get, path = "/v2/models/{m}/config", tag = "v2", params(("m" = String, Path)),
    responses((status = 200, description = "Configuration"), ModelReadErrors))]
pub async fn model_config(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lv = get_lv(&st, &m, None)?;
    Ok(Json(config_json(&lv)))
}

/// Configuration of one version.
#[utoipa::path(get, path = "/v2/models/{m}/versions/{v}/config", tag = "v2", params(("m" = String, Path), ("v" = String, Path)),
    responses((status = 200, description = "Configuration"), ModelReadErrors))]
pub async fn model_config_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let lv = get_lv(&st, &m, Some(&v))?;
    Ok(Json(config_json(&lv)))
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferInput {
    /// `input` (a preprocessed numeric tensor) or `raw` (BYTES: encoded image/WAV files).
    #[schema(pattern = "^(input|raw)$")]
    pub name: String,
    pub shape: Vec<i64>,
    /// `FP32` (other numeric types are converted) for `input`; `BYTES` for `raw`.
    #[schema(
        pattern = "^(FP16|FP32|FP64|INT8|INT16|INT32|INT64|UINT8|UINT16|UINT32|UINT64|BYTES)$"
    )]
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Row-major data (nested arrays accepted); BYTES elements are base64 strings.
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    /// `logits` or `probabilities`.
    #[schema(pattern = "^(logits|probabilities)$")]
    pub name: String,
    /// `classification` (int K) and `binary_data` (bool).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Exactly one input: `input` or `raw`.
    #[schema(min_items = 1, max_items = 1)]
    pub inputs: Vec<InferInput>,
    /// The outputs to return (default: both); if present, not empty.
    #[schema(min_items = 1)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InferQuery {
    /// Deadline in milliseconds (overrides `x-request-timeout-ms` and the model default; capped
    /// at the server's `--max-timeout-ms`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub timeout_ms: Option<u32>,
}

fn flatten_json(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten_json(x, out)),
        other => out.push(other.clone()),
    }
}

fn shape_elems(shape: &[i64]) -> Result<usize, ApiError> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(ApiError::bad_request(
                "input shape has a negative dimension",
            ));
        }
        n = n
            .checked_mul(d as usize)
            .ok_or_else(|| ApiError::bad_request("input shape overflows"))?;
    }
    Ok(n)
}

/// A request's declared batch must fit the model before anything is sized from it.
fn check_batch(lv: &LoadedVersion, batch: usize) -> Result<(), ApiError> {
    let max = lv.config.max_batch_size;
    if batch == 0 || batch > max {
        return Err(ApiError::bad_request(format!(
            "batch of {batch} is outside 1..={max} (the model's max_batch_size)"
        )));
    }
    Ok(())
}

fn param_u64(p: &Map<String, Value>, key: &str) -> Option<u64> {
    p.get(key).and_then(|v| v.as_u64())
}

fn param_bool(p: &Map<String, Value>, key: &str) -> bool {
    p.get(key).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// Splits BYTES binary data: each element is a 4-byte little-endian length then the bytes.
fn split_bytes_elements(mut data: &[u8]) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(ApiError::bad_request("truncated BYTES element length"));
        }
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        data = &data[4..];
        if data.len() < n {
            return Err(ApiError::bad_request(
                "BYTES element longer than the binary data",
            ));
        }
        out.push(Bytes::copy_from_slice(&data[..n]));
        data = &data[n..];
    }
    Ok(out)
}

/// Turns the request's inputs into samples. `binary` holds the binary data of the inputs that
/// declare a `binary_data_size` parameter, in order (the gRPC front end passes its raw contents
/// this way).
pub(crate) fn samples_from_inputs(
    lv: &LoadedVersion,
    inputs: Vec<InferInput>,
    mut binary: Bytes,
) -> Result<Vec<Sample>, ApiError> {
    if inputs.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "expected exactly one input, \"{INPUT_TENSOR}\" (FP32 tensor) or \"{INPUT_RAW}\" (BYTES, encoded image/WAV); got {}",
            inputs.len()
        )));
    }
    let input = inputs.into_iter().next().expect("one input");
    let bin: Option<Bytes> = match param_u64(&input.parameters, "binary_data_size") {
        Some(n) => {
            let n = n as usize;
            if n > binary.len() {
                return Err(ApiError::bad_request(format!(
                    "input \"{}\" declares binary_data_size {n} but only {} binary bytes follow the header",
                    input.name,
                    binary.len()
                )));
            }
            Some(binary.split_to(n))
        }
        None => None,
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} unclaimed bytes of binary data after the header",
            binary.len()
        )));
    }
    let info = lv.model.info();
    match (input.name.as_str(), input.datatype.as_str()) {
        (INPUT_TENSOR, dt) => {
            let per = lv.input_len;
            let total = shape_elems(&input.shape)?;
            let dims: Vec<usize> = input.shape.iter().map(|&d| d as usize).collect();
            let batch = if dims == info.input_shape {
                1
            } else if dims.len() == info.input_shape.len() + 1 && dims[1..] == info.input_shape[..] {
                dims[0]
            } else {
                return Err(ApiError::bad_request(format!(
                    "input \"{INPUT_TENSOR}\" shape {:?} does not match [-1, {}]",
                    input.shape,
                    info.input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                )));
            };
            // Every size derived from the request is checked before anything is allocated: the
            // declared batch against the model's limit, the element count against the shape.
            check_batch(lv, batch)?;
            let expected = batch.checked_mul(per).filter(|&e| e == total).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input \"{INPUT_TENSOR}\" shape {:?} is too large ({total} elements)",
                    input.shape
                ))
            })?;
            let values: Vec<f32> = match bin {
                Some(b) => {
                    if dt != "FP32" {
                        return Err(ApiError::bad_request(format!("binary input \"{INPUT_TENSOR}\" must be FP32, got {dt}")));
                    }
                    if b.len() / 4 != expected || b.len() % 4 != 0 {
                        return Err(ApiError::bad_request(format!(
                            "binary data of \"{INPUT_TENSOR}\" has {} bytes, shape needs {}",
                            b.len(),
                            expected.saturating_mul(4)
                        )));
                    }
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                None => {
                    if !matches!(
                        dt,
                        "FP32" | "FP64" | "FP16" | "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64"
                    ) {
                        return Err(ApiError::bad_request(format!("input \"{INPUT_TENSOR}\" must be numeric (FP32), got {dt}")));
                    }
                    let data = input.data.ok_or_else(|| ApiError::bad_request(format!("input \"{INPUT_TENSOR}\" has no data")))?;
                    // Capacity from the declared shape only once the data is known to match it.
                    let mut flat = Vec::new();
                    flatten_json(&data, &mut flat);
                    if flat.len() != expected {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_TENSOR}\" has {} values, shape {:?} needs {expected}",
                            flat.len(),
                            input.shape
                        )));
                    }
                    flat.iter()
                        .map(|v| v.as_f64().map(|x| x as f32))
                        .collect::<Option<Vec<f32>>>()
                        .ok_or_else(|| ApiError::bad_request(format!("input \"{INPUT_TENSOR}\" data must be numbers")))?
                }
            };
            if values.len() != total || total != batch * per {
                return Err(ApiError::bad_request(format!(
                    "input \"{INPUT_TENSOR}\" has {} values, shape {:?} needs {}",
                    values.len(),
                    input.shape,
                    batch * per
                )));
            }
            Ok(values.chunks(per).map(|c| Sample::Tensor(c.to_vec())).collect())
        }
        (INPUT_RAW, "BYTES") => {
            let total = shape_elems(&input.shape)?;
            check_batch(lv, total)?;
            let elems: Vec<Bytes> = match bin {
                Some(b) => split_bytes_elements(&b)?,
                None => {
                    let data = input.data.ok_or_else(|| ApiError::bad_request(format!("input \"{INPUT_RAW}\" has no data")))?;
                    let mut flat = Vec::new();
                    flatten_json(&data, &mut flat);
                    flat.iter()
                        .map(|v| {
                            let s = v.as_str().ok_or_else(|| {
                                ApiError::bad_request(format!("input \"{INPUT_RAW}\" elements must be base64 strings"))
                            })?;
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map(Bytes::from)
                                .map_err(|e| ApiError::bad_request(format!("input \"{INPUT_RAW}\" is not valid base64: {e}")))
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            if elems.len() != total {
                return Err(ApiError::bad_request(format!(
                    "input \"{INPUT_RAW}\" has {} elements, shape {:?} needs {total}",
                    elems.len(),
                    input.shape
                )));
            }
            Ok(elems.into_iter().map(|data| Sample::Encoded { data, hint: MediaHint::Unknown }).collect())
        }
        (INPUT_RAW, dt) => Err(ApiError::bad_request(format!("input \"{INPUT_RAW}\" must be BYTES, got {dt}"))),
        (other, _) => Err(ApiError::bad_request(format!(
            "unknown input \"{other}\": expected \"{INPUT_TENSOR}\" (FP32 tensor) or \"{INPUT_RAW}\" (BYTES, encoded image/WAV)"
        ))),
    }
}

pub(crate) struct OutputSpec {
    pub name: String,
    pub classification: Option<usize>,
    pub binary: bool,
}

pub(crate) fn output_specs(
    req_params: &Map<String, Value>,
    outputs: Option<Vec<RequestedOutput>>,
) -> Result<Vec<OutputSpec>, ApiError> {
    let all_binary = param_bool(req_params, "binary_data_output");
    let requested = match outputs {
        None => vec![
            RequestedOutput {
                name: OUTPUT_LOGITS.into(),
                parameters: Map::new(),
            },
            RequestedOutput {
                name: OUTPUT_PROBS.into(),
                parameters: Map::new(),
            },
        ],
        Some(o) if o.is_empty() => {
            return Err(ApiError::bad_request("\"outputs\" is empty"));
        }
        Some(o) => o,
    };
    requested
        .into_iter()
        .map(|o| {
            if o.name != OUTPUT_LOGITS && o.name != OUTPUT_PROBS {
                return Err(ApiError::bad_request(format!(
                    "unknown output \"{}\": expected \"{OUTPUT_LOGITS}\" or \"{OUTPUT_PROBS}\"",
                    o.name
                )));
            }
            let classification = match o.parameters.get("classification") {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(k) if k > 0 => Some(k as usize),
                    _ => {
                        return Err(ApiError::bad_request(
                            "classification must be a positive integer",
                        ))
                    }
                },
            };
            let binary = o
                .parameters
                .get("binary_data")
                .and_then(|v| v.as_bool())
                .unwrap_or(all_binary);
            Ok(OutputSpec {
                name: o.name,
                classification,
                binary,
            })
        })
        .collect()
}

/// Inference (latest version). JSON body, or Triton's binary tensor format with
/// `Inference-Header-Content-Length` (0 = the whole body is one encoded image/WAV).
#[utoipa::path(post, path = "/v2/models/{m}/infer", tag = "v2", params(("m" = String, Path), InferQuery,
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds (used when the `timeout_ms` query parameter is absent)", minimum = 1, maximum = 4294967295_u64),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor extension: length of the JSON header; 0 for a raw binary request", minimum = 0, maximum = 4294967295_u64)),
    request_body(content = InferRequest, description = "Inference request"),
    responses((status = 200, description = "Outputs (JSON, or JSON header + binary with Inference-Header-Content-Length)"),
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
    responses((status = 200, description = "Outputs (JSON, or JSON header + binary with Inference-Header-Content-Length)"),
        InferenceErrors))]
pub async fn infer_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
    Query(q): Query<InferQuery>,
    req: Request,
) -> Response {
    infer_common(st, m, Some(v), q, req).await
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
    let version = match v.as_deref().map(|v| parse_version(&m, v)).transpose() {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let lv0 = match st.repo.get(&m, version) {
        Ok(lv) => Some(lv),
        Err(e @ (LookupError::UnknownModel | LookupError::UnknownVersion)) => {
            return lookup_error(&m, v.as_deref(), e).into_response()
        }
        Err(_) => None,
    };
    let mut tracker = Tracker::new(st.clone(), &m, started);
    if let Some(lv) = &lv0 {
        tracker.set_version(lv);
    }
    let result = async {
        let body = read_body(req.into_body(), st.opts.max_body_bytes).await?;
        let lv = match lv0 {
            Some(lv) => lv,
            None => st
                .repo
                .get(&m, version)
                .map_err(|e| lookup_error(&m, v.as_deref(), e))?,
        };
        let header_len = match headers.get(HEADER_LEN) {
            None => None,
            Some(h) => Some(
                h.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("Inference-Header-Content-Length must be an integer")
                    })?,
            ),
        };
        let (request, samples) = match header_len {
            Some(0) => {
                // Raw binary request: the body is one encoded image or WAV.
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let hint = if ct.starts_with("image/") {
                    MediaHint::Image
                } else if ct.starts_with("audio/") {
                    MediaHint::Audio
                } else {
                    MediaHint::Unknown
                };
                (None, vec![Sample::Encoded { data: body, hint }])
            }
            Some(n) if n > body.len() => {
                return Err(ApiError::bad_request(format!(
                    "Inference-Header-Content-Length {n} exceeds the body ({} bytes)",
                    body.len()
                )))
            }
            other => {
                let n = other.unwrap_or(body.len());
                let request: InferRequest = super::json_object(&body[..n]).map_err(|e| {
                    ApiError::bad_request(format!("invalid inference request JSON: {e}"))
                })?;
                let binary = body.slice(n..);
                let InferRequest {
                    id,
                    parameters,
                    inputs,
                    outputs,
                } = request;
                let samples = samples_from_inputs(&lv, inputs, binary)?;
                (Some((id, parameters, outputs)), samples)
            }
        };
        let (id, params, outputs) = request.unwrap_or((None, Map::new(), None));
        let specs = output_specs(&params, outputs)?;
        let target = infer::Target {
            model: &m,
            version,
            version_str: v.as_deref(),
            timeout_ms: q.timeout_ms,
            headers: &headers,
        };
        let out = infer::run(&st, &mut tracker, &target, samples).await?;
        Ok((id, specs, out))
    }
    .await;
    let (id, specs, out) = match result {
        Ok(x) => x,
        Err(e) => {
            tracker.fail(&e);
            return e.into_response();
        }
    };
    let post = Instant::now();
    let mut json_outputs = Vec::new();
    let mut binary_blobs: Vec<Vec<u8>> = Vec::new();
    for (spec, t) in specs.iter().zip(output_tensors(&specs, &out)) {
        let (data_json, data_bin) = match &t.data {
            OutputData::Fp32(flat) => (
                json!(flat),
                flat.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            OutputData::Bytes(strings) => (json!(strings), bytes_elements(strings)),
        };
        let (datatype, shape) = (t.datatype, t.shape);
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
        "model_version": out.lv.version_str(),
        "outputs": json_outputs,
    });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let mut timing = out.timing;
    timing.total = started.elapsed();
    tracker.succeed(&timing, post.elapsed());
    let header_bytes = body.to_string().into_bytes();
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

/// The data of one output tensor, flattened row-major.
pub(crate) enum OutputData {
    Fp32(Vec<f32>),
    /// Classification results, `score:index:label`.
    Bytes(Vec<String>),
}

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
                out.logits.iter().map(|l| models::softmax(l)).collect()
            } else {
                out.logits.clone()
            };
            match spec.classification {
                Some(k) => {
                    let k = k.min(classes);
                    let strings: Vec<String> = rows
                        .iter()
                        .flat_map(|r| {
                            top_k(r, k).into_iter().map(|(i, s)| {
                                format!(
                                    "{s}:{i}:{}",
                                    info.labels.get(i).map(String::as_str).unwrap_or("")
                                )
                            })
                        })
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
    responses((status = 200, description = "Loaded"), (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Not in the repository", body = ErrorBody),
        (status = 409, description = "The server does not run in explicit model control mode", body = ErrorBody),
        (status = 500, description = "Load failed (details in error)", body = ErrorBody)))]
pub async fn repository_load(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_model(&st, &m).await?;
    Ok(Json(json!({})))
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
    responses((status = 200, description = "Unloaded"), (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 409, description = "The server does not run in explicit model control mode", body = ErrorBody)))]
pub async fn repository_unload(
    State(st): State<SharedState>,
    Path(m): Path<String>,
) -> Result<Json<Value>, ApiError> {
    unload_model(&st, &m).await?;
    Ok(Json(json!({})))
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
