//! The inference pipeline shared by the v1 and v2 endpoints: deadline, bounded preprocessing on
//! the blocking pool, submission to the model's batcher, waiting, accounting.

use super::{lookup_error, AppState};
use crate::batcher::{Job, JobError, Reservation, SubmitError};
use crate::error::{ApiError, Reason};
use crate::repository::LoadedVersion;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use models::MediaHint;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One input sample as the client sent it.
pub enum Sample {
    /// An encoded image or WAV file, decoded server-side.
    Encoded { data: Bytes, hint: MediaHint },
    /// An already preprocessed tensor (`info().input_shape`, row-major).
    Tensor(Vec<f32>),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub queue: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub total: Duration,
}

pub struct InferOutcome {
    pub lv: Arc<LoadedVersion>,
    /// Logits per sample.
    pub logits: Vec<Vec<f32>>,
    pub timing: Timing,
    /// Largest batch any of the samples ran in.
    pub batch_size: usize,
}

/// Tracks one accepted inference request: in-flight gauges, and its outcome in the metrics.
/// Dropped without `finish` (the client went away) it records `cancelled`.
pub struct Tracker {
    state: Arc<AppState>,
    model: String,
    version: String,
    lv: Option<Arc<LoadedVersion>>,
    pub started: Instant,
    done: bool,
    /// The place in a model's queue taken before the body was read ([`admit_early`]), grown to
    /// the request's batch by `run`; given back when the tracker is dropped unused.
    admission: Option<Reservation>,
}

impl Tracker {
    pub fn new(state: Arc<AppState>, model: &str, started: Instant) -> Tracker {
        state.inflight_inc();
        state.metrics.inflight.with_label_values(&[model]).inc();
        Tracker {
            state,
            model: model.to_string(),
            version: String::new(),
            lv: None,
            started,
            done: false,
            admission: None,
        }
    }

    /// Attributes the request to a resolved model version (metrics label, statistics).
    pub fn set_version(&mut self, lv: &Arc<LoadedVersion>) {
        self.version = lv.version_str();
        self.lv = Some(lv.clone());
    }

    pub fn fail(&mut self, err: &ApiError) {
        if self.done {
            return;
        }
        self.done = true;
        let total = self.started.elapsed();
        self.state
            .metrics
            .record_outcome(&self.model, &self.version, err.reason, total);
        if let Some(lv) = &self.lv {
            lv.stats.request_failed(total);
        }
        tracing::debug!(model = %self.model, status = %err.status, error = %err.message, "inference request failed");
    }

    pub fn succeed(&mut self, timing: &Timing, output: Duration) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.state.metrics;
        let l = [self.model.as_str(), self.version.as_str()];
        m.record_outcome(&self.model, &self.version, Reason::Ok, timing.total);
        m.queue_duration
            .with_label_values(&l)
            .observe(timing.queue.as_secs_f64());
        m.preprocess_duration
            .with_label_values(&l)
            .observe(timing.preprocess.as_secs_f64());
        m.nv_queue_us
            .with_label_values(&l)
            .inc_by(timing.queue.as_secs_f64() * 1e6);
        m.nv_input_us
            .with_label_values(&l)
            .inc_by(timing.preprocess.as_secs_f64() * 1e6);
        m.nv_output_us
            .with_label_values(&l)
            .inc_by(output.as_secs_f64() * 1e6);
        if let Some(lv) = &self.lv {
            lv.stats
                .request_ok(timing.total, timing.queue, timing.preprocess, output);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            let total = self.started.elapsed();
            self.state
                .metrics
                .record_outcome(&self.model, &self.version, Reason::Cancelled, total);
            tracing::info!(model = %self.model, "client went away before the answer");
        }
        self.state
            .metrics
            .inflight
            .with_label_values(&[&self.model])
            .dec();
        self.state.inflight_dec();
    }
}

/// The per-request deadline: `timeout_ms` query parameter, else `x-request-timeout-ms`, else
/// the model's `timeout_ms`; capped at `max_ms`. An explicit deadline must be 1 to
/// `u32::MAX` milliseconds: 0 could never be met, and is refused rather than read as "none".
pub fn request_timeout(
    query_ms: Option<u32>,
    headers: &HeaderMap,
    model_default_ms: u64,
    max_ms: u64,
) -> Result<Duration, ApiError> {
    let header_ms = match headers.get(TIMEOUT_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{TIMEOUT_HEADER} must be an integer number of milliseconds from 1 to {}",
                        u32::MAX
                    ))
                })?,
        ),
    };
    let explicit = match (query_ms, header_ms) {
        (Some(ms), _) => Some(("timeout_ms", ms)),
        (None, Some(ms)) => Some((TIMEOUT_HEADER, ms)),
        (None, None) => None,
    };
    let ms = match explicit {
        Some((what, 0)) => {
            let msg = format!(
                "{what} must be at least 1 (milliseconds); omit it for the model's default deadline"
            );
            return Err(ApiError::bad_request(msg));
        }
        Some((_, ms)) => u64::from(ms),
        None => model_default_ms,
    };
    Ok(Duration::from_millis(ms.min(max_ms)))
}

/// Header carrying a per-request deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// Which model an inference request addresses and how long it may take.
pub struct Target<'a> {
    pub model: &'a str,
    /// A pinned version, else the highest loaded one.
    pub version: Option<u64>,
    /// The version as written in the URL (for error messages).
    pub version_str: Option<&'a str>,
    /// `timeout_ms` query parameter.
    pub timeout_ms: Option<u32>,
    /// Request headers (`x-request-timeout-ms`).
    pub headers: &'a HeaderMap,
}

/// Runs samples through the target model and waits for the logits; failures are recorded.
pub async fn run(
    state: &Arc<AppState>,
    tracker: &mut Tracker,
    target: &Target<'_>,
    samples: Vec<Sample>,
) -> Result<InferOutcome, ApiError> {
    let result = run_inner(state, tracker, target, samples).await;
    if let Err(e) = &result {
        tracker.fail(e);
    }
    result
}

async fn run_inner(
    state: &Arc<AppState>,
    tracker: &mut Tracker,
    target: &Target<'_>,
    samples: Vec<Sample>,
) -> Result<InferOutcome, ApiError> {
    let (model, version, version_str) = (target.model, target.version, target.version_str);
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("server is shutting down"));
    }
    let mut lv = state
        .repo
        .get(model, version)
        .map_err(|e| lookup_error(model, version_str, e))?;
    tracker.set_version(&lv);
    let timeout = request_timeout(
        target.timeout_ms,
        target.headers,
        lv.config.timeout_ms,
        state.opts.max_timeout_ms,
    )?;
    let deadline = tracker.started + timeout;
    let tokio_deadline = tokio::time::Instant::from_std(deadline);
    if samples.is_empty() {
        return Err(ApiError::bad_request("no input given"));
    }
    if samples.len() > lv.config.max_batch_size {
        return Err(ApiError::bad_request(format!(
            "batch of {} exceeds the model's max_batch_size {}",
            samples.len(),
            lv.config.max_batch_size
        )));
    }

    for sample in &samples {
        if let Sample::Encoded { hint, .. } = sample {
            check_media_kind(&lv, *hint)?;
        }
    }

    // Admission: the request takes its places in the model's queue (bounded by
    // `queue_capacity`; the place taken before the body was read grows to the request's batch)
    // before it waits for a preprocessing slot, so the queue depth counts every admitted,
    // unanswered sample. Without room it waits in arrival order up to the model's
    // `max_queue_wait_ms` (within the deadline), then refuses. The reservation is given back
    // when dropped on any early return (error, timeout, cancelled client).
    let n = samples.len();
    let mut attempt = 0;
    let mut early = tracker.admission.take().filter(|r| r.is_for(&lv.batcher));
    if early.as_mut().is_some_and(|r| !r.try_grow(n)) {
        // No room for the rest of the batch now: give the place back and wait for all of it.
        early = None;
    }
    let mut reservation = match early {
        Some(r) => r,
        None => admit(state, target, &mut lv, tracker, n, deadline, &mut attempt).await?,
    };

    // Preprocessing, on the bounded blocking pool; the samples of one request in parallel.
    let pre_start = Instant::now();
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sample) in samples.into_iter().enumerate() {
        match sample {
            Sample::Tensor(t) => {
                if t.len() != lv.input_len {
                    return Err(ApiError::bad_request(format!(
                        "input tensor has {} values, the model takes {:?} = {} per sample",
                        t.len(),
                        lv.model.info().input_shape,
                        lv.input_len
                    )));
                }
                if t.iter().any(|x| !x.is_finite()) {
                    return Err(ApiError::bad_request(
                        "input tensor contains NaN or infinite values",
                    ));
                }
                slots[i] = Some(t);
            }
            Sample::Encoded { data, hint } if n == 1 && lv.model.preprocess_is_small(&data) => {
                // A small image of a one-sample request (header read: a few thousand pixels):
                // decoding it here costs less than handing it to the blocking pool and back.
                slots[i] = Some(preprocess_checked(
                    &lv.model,
                    &data,
                    hint,
                    &state.opts.limits,
                    lv.input_len,
                )?);
            }
            Sample::Encoded { data, hint } => {
                let permit = match tokio::time::timeout_at(
                    tokio_deadline,
                    state.preprocess_permits.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(ApiError::unavailable("server is shutting down")),
                    Err(_) => {
                        return Err(ApiError::timeout(
                            "deadline exceeded while waiting to preprocess",
                        ))
                    }
                };
                let m = lv.model.clone();
                let limits = state.opts.limits;
                let input_len = lv.input_len;
                tasks.spawn_blocking(move || {
                    let _permit = permit;
                    (i, preprocess_checked(&m, &data, hint, &limits, input_len))
                });
            }
        }
    }
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let (i, result) =
                joined.map_err(|_| ApiError::internal("preprocessing task was cancelled"))?;
            slots[i] = Some(result?);
        }
        Ok::<(), ApiError>(())
    };
    match tokio::time::timeout_at(tokio_deadline, collect).await {
        Ok(r) => r?,
        Err(_) => return Err(ApiError::timeout("deadline exceeded during preprocessing")),
    }
    let mut inputs: Vec<Vec<f32>> = slots
        .into_iter()
        .map(|s| s.expect("every sample preprocessed"))
        .collect();
    let preprocess = pre_start.elapsed();
    if Instant::now() >= deadline {
        return Err(ApiError::timeout("deadline exceeded during preprocessing"));
    }

    // Submission into the reserved places. A version retired between admission and submit
    // (poll swap, unload) is retried on the current version when the client did not pin one.
    let mut receivers = Vec::with_capacity(inputs.len());
    loop {
        let mut jobs = Vec::with_capacity(inputs.len());
        receivers.clear();
        for t in inputs.drain(..) {
            let (job, rx) = Job::new(t, deadline);
            jobs.push(job);
            receivers.push(rx);
        }
        match lv.batcher.submit_reserved(reservation, jobs) {
            Ok(()) => break,
            Err((e, jobs)) => {
                inputs = jobs.into_iter().map(|j| j.input).collect();
                let expected_len = lv.input_len;
                lv = retry_target(state, target, &lv, e, &mut attempt, expected_len)?;
                tracker.set_version(&lv);
                reservation =
                    admit(state, target, &mut lv, tracker, n, deadline, &mut attempt).await?;
            }
        }
    }

    // Waiting, bounded by the deadline.
    let wait = async {
        let mut outs = Vec::with_capacity(receivers.len());
        for rx in receivers.drain(..) {
            outs.push(rx.await);
        }
        outs
    };
    let results = match tokio::time::timeout_at(tokio_deadline, wait).await {
        Ok(r) => r,
        Err(_) => {
            return Err(ApiError::timeout(format!(
                "deadline of {} ms exceeded",
                timeout.as_millis()
            )))
        }
    };
    let mut timing = Timing {
        preprocess,
        ..Default::default()
    };
    let mut logits = Vec::with_capacity(results.len());
    let mut batch_size = 0;
    for r in results {
        match r {
            Err(_) => return Err(ApiError::unavailable("inference worker stopped")),
            Ok(Err(JobError::Expired)) => {
                return Err(ApiError::timeout(format!(
                    "deadline of {} ms exceeded while queued",
                    timeout.as_millis()
                )))
            }
            Ok(Err(JobError::Failed(e))) => return Err(e.into()),
            Ok(Ok(out)) => {
                timing.queue = timing.queue.max(out.queue_time);
                timing.inference = timing.inference.max(out.infer_time);
                batch_size = batch_size.max(out.batch_size);
                logits.push(out.output);
            }
        }
    }
    timing.total = tracker.started.elapsed();
    Ok(InferOutcome {
        lv,
        logits,
        timing,
        batch_size,
    })
}

/// The 429 answered when model `model`'s queue has no room for a request (after waiting
/// `waited` for it, if the model lets requests wait).
fn queue_full(model: &str, lv: &LoadedVersion, waited: Duration) -> ApiError {
    let cap = lv.config.queue_capacity;
    let msg = if lv.config.max_queue_wait_ms == 0 {
        format!("model \"{model}\" queue is full ({cap} requests)")
    } else {
        format!(
            "model \"{model}\" queue is full ({cap} requests) and had no room within {} ms",
            waited.as_millis()
        )
    };
    ApiError::overloaded(msg, 1)
}

/// Until when a request may wait for room in `lv`'s queue: the model's `max_queue_wait_ms`
/// from now, and never past the request's deadline.
fn room_wait_until(lv: &LoadedVersion, deadline: Instant) -> Instant {
    let wait = Duration::from_millis(lv.config.max_queue_wait_ms);
    (Instant::now() + wait).min(deadline)
}

/// Takes `n` places in `lv`'s queue, waiting for room up to `room_wait_until`. A full queue
/// answers 429; a version retired meanwhile is retried on the current one (`retry_target`).
async fn admit(
    state: &Arc<AppState>,
    target: &Target<'_>,
    lv: &mut Arc<LoadedVersion>,
    tracker: &mut Tracker,
    n: usize,
    deadline: Instant,
    attempt: &mut u32,
) -> Result<Reservation, ApiError> {
    loop {
        let asked = Instant::now();
        let until = room_wait_until(lv, deadline);
        match lv.batcher.reserve_within(n, until.into()).await {
            Ok(r) => return Ok(r),
            Err(SubmitError::Full) => return Err(queue_full(target.model, lv, asked.elapsed())),
            Err(e) => {
                let expected_len = lv.input_len;
                *lv = retry_target(state, target, lv, e, attempt, expected_len)?;
                tracker.set_version(lv);
            }
        }
    }
}

/// Early admission, before a request's body is read or decoded: one place in `lv`'s queue,
/// waited for in arrival order (up to the model's `max_queue_wait_ms`, within the request's
/// deadline) and held by `tracker` until `run` grows it to the request's batch. A request that
/// waits holds its connection but neither its body nor CPU; one that gets no place is refused
/// with 429 without its body being decoded (the work a 429 is meant to save). A version being
/// retired takes no place here: `run` resolves the current one.
pub async fn admit_early(
    model: &str,
    lv: &LoadedVersion,
    tracker: &mut Tracker,
    timeout_ms: Option<u32>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let max_ms = tracker.state.opts.max_timeout_ms;
    let default_ms = lv.config.timeout_ms;
    // An invalid deadline is reported by `run`, with the model's default meanwhile.
    let timeout = request_timeout(timeout_ms, headers, default_ms, max_ms)
        .unwrap_or_else(|_| Duration::from_millis(default_ms.min(max_ms)));
    let until = room_wait_until(lv, tracker.started + timeout);
    let asked = Instant::now();
    match lv.batcher.reserve_within(1, until.into()).await {
        Ok(r) => {
            tracker.admission = Some(r);
            Ok(())
        }
        Err(SubmitError::Full) => Err(queue_full(model, lv, asked.elapsed())),
        Err(SubmitError::Closed) => Ok(()),
    }
}

/// Answers `err` without decoding the request's body. The body is read and dropped (bounded,
/// never buffered, as for a 413) so that a client that sends it before reading sees the
/// answer rather than a reset connection; a client waiting for `100 Continue` never sends it.
pub async fn refuse_unread(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    err: ApiError,
) -> ApiError {
    let expects_continue = headers
        .get(axum::http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        discard_body(body, limit).await;
    }
    err
}

/// After a refused admission or submission: 429 when the queue is full; when the version is
/// being retired and the client did not pin one, the current version of the model (at most
/// three times, and only if it takes inputs of `expected_len` values); 503 otherwise.
fn retry_target(
    state: &Arc<AppState>,
    target: &Target<'_>,
    lv: &Arc<LoadedVersion>,
    err: SubmitError,
    attempt: &mut u32,
    expected_len: usize,
) -> Result<Arc<LoadedVersion>, ApiError> {
    let model = target.model;
    match err {
        SubmitError::Full => Err(queue_full(model, lv, Duration::ZERO)),
        SubmitError::Closed => {
            *attempt += 1;
            if target.version.is_some()
                || *attempt > 3
                || state.draining.load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(ApiError::unavailable(format!(
                    "model \"{model}\" version {} is being unloaded",
                    lv.version
                )));
            }
            let next = state
                .repo
                .get(model, None)
                .map_err(|e| lookup_error(model, None, e))?;
            if next.input_len != expected_len {
                return Err(ApiError::unavailable(
                    "model was replaced while the request was preprocessed; retry",
                ));
            }
            Ok(next)
        }
    }
}

/// Preprocesses one sample wherever it runs (the HTTP worker or the blocking pool): a decoder
/// error as the client sees it ([`preprocess_error`]), a panic in the decoder or a tensor of the
/// wrong length as a 500, never a dropped connection.
fn preprocess_checked(
    model: &models::Model,
    data: &[u8],
    hint: MediaHint,
    limits: &models::InputLimits,
    input_len: usize,
) -> Result<Vec<f32>, ApiError> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.preprocess(data, hint, limits)
    }));
    let t = run
        .map_err(|_| ApiError::internal("preprocessing panicked"))?
        .map_err(|e| preprocess_error(e, hint))?;
    if t.len() != input_len {
        return Err(ApiError::internal(format!(
            "preprocessing produced {} values, expected {}",
            t.len(),
            input_len
        )));
    }
    Ok(t)
}

/// A preprocessing failure as the client sees it. The declared media type was already checked
/// against the model (`check_media_kind`), so content that does not decode as the declared kind
/// is a malformed body (400), not an unsupported media type (415).
fn preprocess_error(e: models::ModelError, hint: MediaHint) -> ApiError {
    let declared = match hint {
        MediaHint::Image => "an image",
        MediaHint::Audio => "a WAV file",
        MediaHint::Unknown => return e.into(),
    };
    if e.kind == models::ErrorKind::UnsupportedMedia {
        return ApiError::bad_request(format!(
            "the body is declared as {declared} but its content is not a valid one ({})",
            e.message
        ));
    }
    e.into()
}

fn check_media_kind(lv: &LoadedVersion, hint: MediaHint) -> Result<(), ApiError> {
    let kind = lv.model.info().input_kind;
    let mismatch = match hint {
        MediaHint::Image => kind != "image",
        MediaHint::Audio => kind != "audio",
        MediaHint::Unknown => false,
    };
    if mismatch {
        return Err(ApiError::unsupported_media(format!(
            "model \"{}\" takes {kind} input, not {}",
            lv.name,
            if hint == MediaHint::Image {
                "an image"
            } else {
                "audio"
            }
        )));
    }
    Ok(())
}

/// Milliseconds with microsecond resolution.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Timing headers carried by every inference answer.
pub fn timing_headers(
    headers: &mut HeaderMap,
    request_id: &str,
    timing: &Timing,
    batch_size: usize,
) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    if !request_id.is_empty() {
        put("x-request-id", request_id.to_string());
    }
    put("x-queue-time", format!("{:.3}", ms(timing.queue)));
    put("x-inference-time", format!("{:.3}", ms(timing.inference)));
    put("x-total-time", format!("{:.3}", ms(timing.total)));
    put("x-batch-size", batch_size.to_string());
}

pub fn timing_json(t: &Timing) -> serde_json::Value {
    serde_json::json!({
        "queue_ms": ms(t.queue),
        "preprocess_ms": ms(t.preprocess),
        "inference_ms": ms(t.inference),
        "total_ms": ms(t.total),
    })
}

/// Reads a body up to `limit` bytes: 413 beyond. An oversized body is still read and discarded
/// for a bounded amount (at most 64 MiB more, 2 s) so that clients that send the whole body
/// before reading the answer see the 413 instead of a reset connection.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(buf.freeze()),
            Some(Err(e)) => {
                if super::conn::is_body_timeout(&e) {
                    return Err(ApiError::request_timeout(
                        "the request body did not arrive within the server's body timeout",
                    ));
                }
                return Err(ApiError::bad_request(format!(
                    "cannot read request body: {e}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    discard_body(body, limit).await;
    Err(ApiError::too_large(format!(
        "request body exceeds {limit} bytes"
    )))
}

/// Reads and discards the rest of an oversized body, for at most 4x `limit` (64 MiB at most)
/// and 2 s, so that clients that send the whole body before reading see the 413.
pub async fn discard_body(mut body: Body, limit: usize) {
    use http_body_util::BodyExt;
    let drain_max = limit.saturating_mul(4).min(64 << 20);
    let drain = async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                drained += d.len();
                if drained > drain_max {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_precedence() {
        let mut h = HeaderMap::new();
        assert_eq!(
            request_timeout(None, &h, 100, 1000).unwrap(),
            Duration::from_millis(100)
        );
        h.insert("x-request-timeout-ms", HeaderValue::from_static("50"));
        assert_eq!(
            request_timeout(None, &h, 100, 1000).unwrap(),
            Duration::from_millis(50)
        );
        assert_eq!(
            request_timeout(Some(7), &h, 100, 1000).unwrap(),
            Duration::from_millis(7)
        );
        assert_eq!(
            request_timeout(Some(70_000), &h, 100, 1000).unwrap(),
            Duration::from_millis(1000)
        );
        h.insert("x-request-timeout-ms", HeaderValue::from_static("soon"));
        assert_eq!(
            request_timeout(None, &h, 100, 1000).unwrap_err().status,
            400
        );
    }

    #[test]
    fn timeout_bounds() {
        let mut h = HeaderMap::new();
        // 0 is refused from either source, with a message naming the source.
        let e = request_timeout(Some(0), &h, 100, 1000).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.starts_with("timeout_ms must be at least 1"),
            "{}",
            e.message
        );
        h.insert("x-request-timeout-ms", HeaderValue::from_static("0"));
        let e = request_timeout(None, &h, 100, 1000).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .starts_with("x-request-timeout-ms must be at least 1"),
            "{}",
            e.message
        );
        // A valid query parameter overrides a 0 header only if the header parses; it does.
        assert_eq!(
            request_timeout(Some(5), &h, 100, 1000).unwrap(),
            Duration::from_millis(5)
        );
        // The documented maximum is accepted (and capped); one more, or a negative, is not.
        h.insert(
            "x-request-timeout-ms",
            HeaderValue::from_static("4294967295"),
        );
        assert_eq!(
            request_timeout(None, &h, 100, 1000).unwrap(),
            Duration::from_millis(1000)
        );
        for bad in ["4294967296", "-1", ""] {
            h.insert("x-request-timeout-ms", HeaderValue::from_static(bad));
            let e = request_timeout(None, &h, 100, 1000).unwrap_err();
            assert_eq!(e.status, 400, "{bad:?}");
            assert!(e.message.contains("1 to 4294967295"), "{}", e.message);
        }
        assert_eq!(
            request_timeout(Some(u32::MAX), &HeaderMap::new(), 100, u64::MAX).unwrap(),
            Duration::from_millis(u64::from(u32::MAX))
        );
    }
}
