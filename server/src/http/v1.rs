//! Task endpoints for people and scripts: `POST /v1/models/{m}/predict`, `GET /v1/models`.

pub use super::decode::B64Body;
use super::decode::{decode_task, TaskInput};
use super::infer::{self, ms, read_body, timing_headers, Sample, Tracker};
use super::ranking;
use super::{parse_version, request_id, SharedState};
use crate::error::{ApiError, ErrorBody, InferenceErrors};
use crate::repository::LookupError;
use crate::stats::Percentiles;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PredictQuery {
    /// Number of predictions to return (default 5; values above the number of classes return
    /// every class).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub top_k: Option<u32>,
    /// Deadline in milliseconds (overrides `x-request-timeout-ms` and the model default; capped
    /// at the server's `--max-timeout-ms`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub timeout_ms: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub score: f32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimingMs {
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntentOut {
    pub action: String,
    pub object: String,
    pub location: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    pub model: String,
    pub version: String,
    pub predictions: Vec<Prediction>,
    /// False when the top-1 score is below the model's `threshold` (config.toml): the input was
    /// not understood, and `predictions` are only the scores (no intent is given). Always true
    /// for a model without a threshold.
    pub understood: bool,
    /// The model's `threshold`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    pub timing: TimingMs,
    /// Only for `spoken_intent` models, and only when understood: the top-1 intent split into
    /// its slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentOut>,
}

/// Reads the body (413 beyond the limit) and decodes it.
async fn extract_file(state: &SharedState, req: Request) -> Result<TaskInput, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = read_body(req.into_body(), state.opts.max_body_bytes).await?;
    decode_task(&ct, body).await
}

/// Classify an image or a WAV file with the latest version of a model.
#[utoipa::path(post, path = "/v1/models/{m}/predict", tag = "task",
    params(("m" = String, Path, description = "Model name"), PredictQuery,
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds (used when the `timeout_ms` query parameter is absent)", minimum = 1, maximum = 4294967295_u64)),
    request_body(description = "Raw image (image/*) or WAV (audio/wav); or multipart/form-data with field `file`; or JSON `{\"b64\": ...}`",
        content((Vec<u8> = "image/png"), (Vec<u8> = "audio/wav"), (B64Body = "application/json"))),
    responses(
        (status = 200, description = "Top-k predictions", body = PredictResponse),
        InferenceErrors))]
pub async fn predict(
    State(st): State<SharedState>,
    Path(m): Path<String>,
    Query(q): Query<PredictQuery>,
    req: Request,
) -> Response {
    predict_common(st, m, None, q, req).await
}

/// Same as `/v1/models/{m}/predict` on a given version.
#[utoipa::path(post, path = "/v1/models/{m}/versions/{v}/predict", tag = "task",
    params(("m" = String, Path, description = "Model name"), ("v" = String, Path, description = "Version (a positive integer)"), PredictQuery,
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline in milliseconds (used when the `timeout_ms` query parameter is absent)", minimum = 1, maximum = 4294967295_u64)),
    request_body(description = "As for /v1/models/{m}/predict", content((Vec<u8> = "image/png"), (Vec<u8> = "audio/wav"), (B64Body = "application/json"))),
    responses(
        (status = 200, description = "Top-k predictions", body = PredictResponse),
        InferenceErrors))]
pub async fn predict_version(
    State(st): State<SharedState>,
    Path((m, v)): Path<(String, String)>,
    Query(q): Query<PredictQuery>,
    req: Request,
) -> Response {
    predict_common(st, m, Some(v), q, req).await
}

async fn predict_common(
    st: SharedState,
    m: String,
    v: Option<String>,
    q: PredictQuery,
    req: Request,
) -> Response {
    let started = Instant::now();
    let rid = request_id(req.headers());
    let headers = req.headers().clone();
    let version = match v.as_deref().map(|v| parse_version(&m, v)).transpose() {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    // Unknown models answer 404 before the body is read and are not counted in the metrics.
    let lv0 = match st.repo.get(&m, version) {
        Ok(lv) => Some(lv),
        Err(e @ (LookupError::UnknownModel | LookupError::UnknownVersion)) => {
            return super::lookup_error(&m, v.as_deref(), e).into_response()
        }
        Err(_) => None,
    };
    let mut tracker = Tracker::new(st.clone(), &m, started);
    if let Some(lv) = &lv0 {
        tracker.set_version(lv);
        // A place in the queue before the body is read: waited for, or refused undecoded.
        if let Err(e) = infer::admit_early(&m, lv, &mut tracker, q.timeout_ms, &headers).await {
            tracker.fail(&e);
            drop(tracker);
            let limit = st.opts.max_body_bytes;
            return infer::refuse_unread(req.into_body(), &headers, limit, e)
                .await
                .into_response();
        }
    }
    let TaskInput {
        data,
        hint,
        top_k: body_top_k,
    } = match extract_file(&st, req).await {
        Ok(x) => x,
        Err(e) => {
            tracker.fail(&e);
            return e.into_response();
        }
    };
    let k_req = q.top_k.or(body_top_k).unwrap_or(5) as usize;
    if k_req == 0 {
        let e = ApiError::bad_request("top_k must be at least 1");
        tracker.fail(&e);
        return e.into_response();
    }
    let target = infer::Target {
        model: &m,
        version,
        version_str: v.as_deref(),
        timeout_ms: q.timeout_ms,
        headers: &headers,
    };
    let out = match infer::run(
        &st,
        &mut tracker,
        &target,
        vec![Sample::Encoded { data, hint }],
    )
    .await
    {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let post = Instant::now();
    let info = out.lv.model.info();
    let threshold = out.lv.config.threshold;
    let ranked = ranking::rank(info, &out.logits[0], k_req, threshold);
    let predictions: Vec<Prediction> = ranked
        .top
        .iter()
        .map(|&(i, s)| Prediction {
            label: info.labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
            index: i,
            score: s,
        })
        .collect();
    let understood = ranked.understood;
    if !understood {
        st.metrics
            .not_understood
            .with_label_values(&[&m, &out.lv.version_str()])
            .inc();
    }
    let intent = ranked.intent.map(|it| IntentOut {
        action: it.action.clone(),
        object: it.object.clone(),
        location: it.location.clone(),
    });
    let mut timing = out.timing;
    timing.total = started.elapsed();
    let resp = PredictResponse {
        model: m.clone(),
        version: out.lv.version_str(),
        predictions,
        understood,
        threshold,
        timing: TimingMs {
            queue_ms: ms(timing.queue),
            preprocess_ms: ms(timing.preprocess),
            inference_ms: ms(timing.inference),
            total_ms: ms(timing.total),
        },
        intent,
    };
    tracker.succeed(&timing, post.elapsed());
    let mut response = Json(resp).into_response();
    timing_headers(response.headers_mut(), &rid, &timing, out.batch_size);
    response
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InputSpec {
    /// `image` or `audio`.
    pub kind: String,
    /// Per-sample tensor shape after preprocessing.
    pub shape: Vec<usize>,
    /// The preprocessing spec from the model file.
    #[schema(value_type = Object)]
    pub preprocess: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub name: String,
    /// The version served by default (highest loaded).
    pub version: String,
    /// Every loaded version.
    pub versions: Vec<String>,
    pub task: String,
    pub description: String,
    pub input: InputSpec,
    pub num_classes: usize,
    pub labels: Vec<String>,
    pub weight_bits: Vec<u8>,
    pub numeric_path: String,
    pub file_bytes: u64,
    pub fp32_bytes: u64,
    /// fp32 size / file size.
    pub compression_ratio: f64,
    pub parameters: u64,
    /// Softmax temperature fitted at export (`scores = softmax(logits / T)`); absent when the
    /// file has none (T = 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Tensor-train (MPS) LSTM matrices against the dense LSTM matrices they replace; absent
    /// when the model has no `lstm_tt` node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor_train: Option<TensorTrainSummary>,
    pub kernel_isa: String,
    /// What runs each layer: the kernel measured fastest at load for quantized convolutions
    /// (`dot-avx512vnni`, `shift-avx2`, ...), the implementation of every other layer.
    pub layers: Vec<LayerKernelSummary>,
    pub max_batch_size: usize,
    pub instances: usize,
    pub threads: usize,
    /// End-to-end request latency of the default version over the stats window.
    pub latency: Percentiles,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorTrainSummary {
    /// Parameters of the MPS cores (`W_ih` and `W_hh` of every `lstm_tt` node).
    pub params: u64,
    /// Bytes of the cores in the file.
    pub bytes: u64,
    /// Parameters of the dense matrices they replace: `4H * (I + H)` per node.
    pub dense_params: u64,
    /// The dense matrices in fp32.
    pub dense_bytes: u64,
    /// `params / dense_params`.
    pub storage_fraction: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LayerKernelSummary {
    pub node: String,
    pub kernel: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// Every loaded model with task, version, input spec, weight bits, size, kernel ISA and live latency.
#[utoipa::path(get, path = "/v1/models", tag = "task",
    responses((status = 200, description = "Loaded models", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody)))]
pub async fn list_models(State(st): State<SharedState>) -> Json<ModelList> {
    let mut by_model: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for lv in st.repo.all_loaded() {
        by_model.entry(lv.name.clone()).or_default().push(lv);
    }
    let mut models = Vec::new();
    for (name, mut versions) in by_model {
        versions.sort_by_key(|lv| lv.version);
        let lv = versions.last().expect("non-empty").clone();
        let info = lv.model.info();
        let description = lv
            .config
            .description
            .clone()
            .unwrap_or_else(|| info.description.clone());
        models.push(ModelSummary {
            name,
            version: lv.version_str(),
            versions: versions.iter().map(|v| v.version_str()).collect(),
            task: info.task.as_str().to_string(),
            description,
            input: InputSpec {
                kind: info.input_kind.to_string(),
                shape: info.input_shape.clone(),
                preprocess: serde_json::from_str(&info.preprocess_json)
                    .unwrap_or(serde_json::Value::Null),
            },
            num_classes: info.labels.len(),
            labels: info.labels.clone(),
            weight_bits: info.weight_bits.clone(),
            numeric_path: info.numeric_path.clone(),
            file_bytes: info.file_bytes,
            fp32_bytes: info.fp32_bytes,
            compression_ratio: if info.file_bytes > 0 {
                info.fp32_bytes as f64 / info.file_bytes as f64
            } else {
                0.0
            },
            parameters: info.parameters,
            temperature: info.temperature,
            tensor_train: info.tensor_train.map(|t| TensorTrainSummary {
                params: t.params,
                bytes: t.bytes,
                dense_params: t.dense_params,
                dense_bytes: t.dense_bytes,
                storage_fraction: t.fraction(),
            }),
            kernel_isa: st.kernel_isa.clone(),
            layers: lv
                .model
                .layer_kernels()
                .iter()
                .map(|l| LayerKernelSummary {
                    node: l.node.clone(),
                    kernel: l.kernel.clone(),
                })
                .collect(),
            max_batch_size: lv.config.max_batch_size,
            instances: lv.config.instances,
            threads: lv.config.threads,
            latency: lv.stats.request_percentiles(),
        });
    }
    Json(ModelList { models })
}
