//! The RPCs of `inference.GRPCInferenceService`, each on the function its v2 HTTP route uses.

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use super::{status_from, tensors};
use crate::error::ApiError;
use crate::http::infer::{self, timing_headers};
use crate::http::{authorized, request_id, v2, SharedState};
use crate::stats::{CountNs, ModelStats};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub struct InferenceService {
    state: SharedState,
}

impl InferenceService {
    pub fn new(state: SharedState) -> InferenceService {
        InferenceService { state }
    }

    /// The API key check of the HTTP routes, on the `authorization` metadata.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if authorized(&self.state, req.metadata().as_ref()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or invalid API key (metadata authorization: Bearer <key>)",
            ))
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn err(e: ApiError) -> Status {
    status_from(&e)
}

/// An empty version string means "the server's choice" (the highest serving version).
fn version_arg(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn duration(c: &CountNs) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: c.count,
        ns: c.ns,
    })
}

fn statistics(s: ModelStats) -> ModelStatistics {
    let i = &s.inference_stats;
    ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(&i.success),
            fail: duration(&i.fail),
            queue: duration(&i.queue),
            compute_input: duration(&i.compute_input),
            compute_infer: duration(&i.compute_infer),
            compute_output: duration(&i.compute_output),
            cache_hit: duration(&CountNs::default()),
            cache_miss: duration(&CountNs::default()),
        }),
        batch_stats: s
            .batch_stats
            .iter()
            .map(|b| InferBatchStatistics {
                batch_size: b.batch_size as u64,
                compute_input: duration(&b.compute_input),
                compute_infer: duration(&b.compute_infer),
                compute_output: duration(&b.compute_output),
            })
            .collect(),
    }
}

/// shiftserve has one repository; a client may name it by its directory name or not at all.
fn check_repository(st: &SharedState, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Ok(());
    }
    let root = st.repo.root();
    let matches = root
        .file_name()
        .is_some_and(|n| n == std::ffi::OsStr::new(name))
        || root.as_os_str() == std::ffi::OsStr::new(name);
    if matches {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown repository \"{name}\": this server has one, {}",
            root.display()
        )))
    }
}

/// The pipeline's deadline from `grpc-timeout` (the client's deadline), in whole milliseconds,
/// shortened by a tenth (at most 10 ms) so that the server's DEADLINE_EXCEEDED answer is sent
/// before the call's deadline ends it (tonic then answers CANCELLED); `None` if absent.
fn grpc_timeout_ms(metadata: &MetadataMap) -> Result<Option<u32>, Status> {
    let Some(v) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument("malformed grpc-timeout metadata");
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ns_per_unit: u128 = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => return Err(bad()),
    };
    let ms = u128::from(n) * ns_per_unit / 1_000_000;
    let ms = ms - (ms / 10).min(10);
    Ok(Some(ms.clamp(1, u128::from(u32::MAX)) as u32))
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _req: Request<ServerLiveRequest>) -> Reply<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    /// As `GET /v2/health/ready`: starting, draining, or (with `--strict-readiness`) a model that
    /// should be served and is not, is "not ready". The reason goes to the log at DEBUG.
    async fn server_ready(&self, _req: Request<ServerReadyRequest>) -> Reply<ServerReadyResponse> {
        let state = self.state.clone();
        let why = tokio::task::spawn_blocking(move || state.not_ready())
            .await
            .unwrap_or_else(|_| Some("readiness check failed".into()));
        if let Some(why) = &why {
            tracing::debug!(reason = %why, "gRPC ServerReady: not ready");
        }
        Ok(Response::new(ServerReadyResponse {
            ready: why.is_none(),
        }))
    }

    /// Ready when a warmed-up version serves and the server is not draining; an unknown model
    /// or version is "not ready" (as Triton answers), not an error.
    async fn model_ready(&self, req: Request<ModelReadyRequest>) -> Reply<ModelReadyResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let ready = match v2::get_lv(&self.state, &r.name, version_arg(&r.version)) {
            Ok(_) => !self.state.draining.load(Ordering::SeqCst),
            Err(_) => false,
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        req: Request<ServerMetadataRequest>,
    ) -> Reply<ServerMetadataResponse> {
        self.authorize(&req)?;
        let m = v2::server_metadata_value();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Reply<ModelMetadataResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let lv = v2::get_lv(&self.state, &r.name, version_arg(&r.version)).map_err(err)?;
        let m = v2::metadata(&self.state, &lv);
        let tensor = |t: v2::TensorMetadata| model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: m.inputs.into_iter().map(tensor).collect(),
            outputs: m.outputs.into_iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Reply<ModelInferResponse> {
        self.authorize(&req)?;
        let started = Instant::now();
        let st = &self.state;
        let timeout_ms = grpc_timeout_ms(req.metadata())?;
        let (metadata, _, r) = req.into_parts();
        let headers = metadata.into_headers();
        let rid = request_id(&headers);
        let m = r.model_name.clone();
        let v = version_arg(&r.model_version).map(str::to_string);
        if m.is_empty() {
            return Err(Status::invalid_argument("model_name is empty"));
        }
        // The HTTP route's pipeline: accepted (and counted) once the model is known, decoded
        // against its shape by the shared decoder, run through the shared batchers.
        let mut acc = v2::accept(st, &m, v.as_deref(), started, timeout_ms, &headers)
            .await
            .map_err(err)?;
        let result = async {
            let lv = acc.resolve(st, &m, v.as_deref())?;
            let decoded = tensors::decode(r, &v2::model_shape(&lv))?;
            let target = infer::Target {
                model: &m,
                version: acc.version,
                version_str: v.as_deref(),
                timeout_ms,
                headers: &headers,
            };
            let out = infer::run(st, &mut acc.tracker, &target, decoded.samples).await?;
            Ok::<_, ApiError>((decoded.id, decoded.outputs, out))
        }
        .await;
        let mut tracker = acc.tracker;
        let (id, specs, out) = match result {
            Ok(x) => x,
            Err(e) => {
                tracker.fail(&e);
                return Err(err(e));
            }
        };
        let post = Instant::now();
        let outputs = v2::output_tensors(&specs, &out);
        let body = tensors::response(&m, &out.lv.version_str(), id, &specs, outputs);
        let mut timing = out.timing;
        timing.total = started.elapsed();
        tracker.succeed(&timing, post.elapsed());
        let mut response = Response::new(body);
        let mut timing_md = axum::http::HeaderMap::new();
        timing_headers(&mut timing_md, &rid, &timing, out.batch_size);
        for (k, val) in timing_md.iter() {
            if let (Ok(k), Ok(val)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(k.as_str().as_bytes()),
                tonic::metadata::AsciiMetadataValue::try_from(val.as_bytes()),
            ) {
                response.metadata_mut().insert(k, val);
            }
        }
        Ok(response)
    }

    async fn model_statistics(
        &self,
        req: Request<ModelStatisticsRequest>,
    ) -> Reply<ModelStatisticsResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let st = &self.state;
        let versions = if r.name.is_empty() {
            if !r.version.is_empty() {
                return Err(Status::invalid_argument(
                    "a version was given without a model name",
                ));
            }
            st.repo.all_loaded()
        } else if let Some(v) = version_arg(&r.version) {
            vec![v2::get_lv(st, &r.name, Some(v)).map_err(err)?]
        } else {
            let all = st.repo.versions(&r.name);
            if all.is_empty() {
                // Unknown (404) or without a ready version (503), as GET /v2/models/{m}/stats.
                v2::get_lv(st, &r.name, None).map_err(err)?;
            }
            all
        };
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: versions
                .iter()
                .map(|lv| statistics(lv.stats.snapshot(&lv.name, lv.version)))
                .collect(),
        }))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Reply<RepositoryIndexResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        check_repository(&self.state, &r.repository_name)?;
        let repo = self.state.repo.clone();
        let index = tokio::task::spawn_blocking(move || repo.index(r.ready))
            .await
            .map_err(|_| Status::internal("index failed"))?;
        Ok(Response::new(RepositoryIndexResponse {
            models: index
                .into_iter()
                .map(|e| repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state,
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        req: Request<RepositoryModelLoadRequest>,
    ) -> Reply<RepositoryModelLoadResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        check_repository(&self.state, &r.repository_name)?;
        if let Some(k) = r.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "load parameter \"{k}\" is not supported: models load from the repository directory as they are"
            )));
        }
        v2::load_model(&self.state, &r.model_name)
            .await
            .map_err(err)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<RepositoryModelUnloadRequest>,
    ) -> Reply<RepositoryModelUnloadResponse> {
        self.authorize(&req)?;
        let r = req.into_inner();
        check_repository(&self.state, &r.repository_name)?;
        if let Some(k) = r.parameters.keys().find(|k| *k != "unload_dependents") {
            return Err(Status::invalid_argument(format!(
                "unload parameter \"{k}\" is not supported (only unload_dependents)"
            )));
        }
        v2::unload_model(&self.state, &r.model_name)
            .await
            .map_err(err)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout_ms(&MetadataMap::new()).unwrap(), None);
        assert_eq!(grpc_timeout_ms(&md("250m")).unwrap(), Some(240));
        assert_eq!(grpc_timeout_ms(&md("2S")).unwrap(), Some(1990));
        assert_eq!(grpc_timeout_ms(&md("1500u")).unwrap(), Some(1));
        assert_eq!(grpc_timeout_ms(&md("1n")).unwrap(), Some(1));
        assert_eq!(grpc_timeout_ms(&md("99999999H")).unwrap(), Some(u32::MAX));
        for bad in ["", "m", "12", "123456789S", "-1S", "1x"] {
            assert!(grpc_timeout_ms(&md(bad)).is_err(), "{bad:?}");
        }
    }
}
