//! Task endpoints for people and scripts: `POST /v1/models/{m}/predict`, `GET /v1/models`.

use super::infer::{self, ms, read_body, timing_headers, top_k, Sample, Tracker};
use super::{parse_version, request_id, SharedState};
use crate::error::{ApiError, ErrorBody, InferenceErrors};
use crate::repository::LookupError;
use crate::stats::Percentiles;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use models::{MediaHint, Task};
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct B64Body {
    /// The image or WAV file, base64 (a `data:...;base64,` prefix is accepted).
    pub b64: String,
    /// Optional, same as the `top_k` query parameter (which wins when both are given).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub top_k: Option<u32>,
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
    pub timing: TimingMs,
    /// Only for `spoken_intent` models: the top-1 intent split into its slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentOut>,
}

fn hint_for(content_type: &str, filename: Option<&str>) -> Result<MediaHint, ApiError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct.starts_with("image/") {
        return Ok(MediaHint::Image);
    }
    if matches!(
        ct.as_str(),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave"
    ) {
        return Ok(MediaHint::Audio);
    }
    if ct.starts_with("audio/") {
        return Err(ApiError::unsupported_media(format!(
            "unsupported audio type {ct}: send WAV (audio/wav)"
        )));
    }
    if ct.is_empty() || ct == "application/octet-stream" {
        let ext = filename
            .and_then(|f| f.rsplit_once('.'))
            .map(|(_, e)| e.to_ascii_lowercase());
        return Ok(match ext.as_deref() {
            Some("wav" | "wave") => MediaHint::Audio,
            Some("png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif") => MediaHint::Image,
            _ => MediaHint::Unknown,
        });
    }
    Err(ApiError::unsupported_media(format!(
        "unsupported Content-Type {ct}: send image/*, audio/wav, multipart/form-data (field \"file\") or application/json {{\"b64\": ...}}"
    )))
}

fn decode_b64(s: &str) -> Result<(Bytes, MediaHint), ApiError> {
    let (hint, payload) = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::bad_request("malformed data: URL"))?;
            (hint_for(meta.trim_end_matches(";base64"), None)?, data)
        }
        None => (MediaHint::Unknown, s),
    };
    let cleaned: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cleaned.as_bytes()))
        .map_err(|e| ApiError::bad_request(format!("b64 is not valid base64: {e}")))?;
    Ok((Bytes::from(bytes), hint))
}

/// Extracts the file from any of the accepted body forms. Returns (data, hint, top_k from body).
async fn extract_file(
    state: &SharedState,
    req: Request,
) -> Result<(Bytes, MediaHint, Option<u32>), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let limit = state.opts.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit).await?;
    if base == "multipart/form-data" {
        let req = Request::from_parts(parts, axum::body::Body::from(body));
        let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        })?;
        loop {
            let field = mp.next_field().await.map_err(|e| {
                ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
            })?;
            let Some(field) = field else {
                return Err(ApiError::bad_request(
                    "multipart body has no field named \"file\"",
                ));
            };
            if field.name() != Some("file") {
                continue;
            }
            let fct = field.content_type().unwrap_or("").to_string();
            let fname = field.file_name().map(str::to_string);
            let hint = hint_for(&fct, fname.as_deref())?;
            let data = field.bytes().await.map_err(|e| {
                ApiError::bad_request(format!("cannot read multipart field: {}", e.body_text()))
            })?;
            return Ok((data, hint, None));
        }
    }
    if base == "application/json" {
        let parsed: B64Body = super::json_object(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        let (data, hint) = decode_b64(&parsed.b64)?;
        return Ok((data, hint, parsed.top_k));
    }
    let hint = hint_for(&base, None)?;
    Ok((body, hint, None))
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
    }
    let (data, hint, body_top_k) = match extract_file(&st, req).await {
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
    let probs = models::softmax(&out.logits[0]);
    let predictions: Vec<Prediction> = top_k(&probs, k_req.min(probs.len()))
        .into_iter()
        .map(|(i, s)| Prediction {
            label: info.labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
            index: i,
            score: s,
        })
        .collect();
    let intent = if info.task == Task::SpokenIntent {
        predictions
            .first()
            .and_then(|p| info.intents.get(p.index))
            .map(|it| IntentOut {
                action: it.action.clone(),
                object: it.object.clone(),
                location: it.location.clone(),
            })
    } else {
        None
    };
    let mut timing = out.timing;
    timing.total = started.elapsed();
    let resp = PredictResponse {
        model: m.clone(),
        version: out.lv.version_str(),
        predictions,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_hints() {
        assert_eq!(hint_for("image/png", None).unwrap(), MediaHint::Image);
        assert_eq!(hint_for("audio/wav", None).unwrap(), MediaHint::Audio);
        assert_eq!(
            hint_for("audio/x-wav; charset=binary", None).unwrap(),
            MediaHint::Audio
        );
        assert_eq!(hint_for("", Some("a.WAV")).unwrap(), MediaHint::Audio);
        assert_eq!(
            hint_for("application/octet-stream", Some("x.jpg")).unwrap(),
            MediaHint::Image
        );
        assert_eq!(hint_for("", None).unwrap(), MediaHint::Unknown);
        assert_eq!(hint_for("audio/mpeg", None).unwrap_err().status, 415);
        assert_eq!(hint_for("text/plain", None).unwrap_err().status, 415);
    }

    #[test]
    fn base64_forms() {
        let (b, h) = decode_b64("aGVsbG8=").unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(h, MediaHint::Unknown);
        let (b, h) = decode_b64("data:image/png;base64,aGVs\nbG8=").unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(h, MediaHint::Image);
        assert_eq!(decode_b64("%%%").unwrap_err().status, 400);
    }
}
