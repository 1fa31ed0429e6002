//! OpenAPI document (utoipa), served at `/api-doc/openapi.json` and rendered at `/docs` (web.rs).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "shiftserve", description = "CPU inference server for multiplication-free (power-of-two weight) networks: Open Inference Protocol v2 and a task API. When the server runs with an API key, every route except health, metrics and docs needs `Authorization: Bearer <key>`."),
    paths(
        super::live, super::ready, super::metrics,
        super::v1::predict, super::v1::predict_version, super::v1::list_models,
        super::v2::server_metadata, super::v2::model_metadata, super::v2::model_metadata_version,
        super::v2::model_ready, super::v2::model_ready_version, super::v2::model_config, super::v2::model_config_version,
        super::v2::all_stats, super::v2::model_stats, super::v2::model_stats_version,
        super::v2::infer, super::v2::infer_version,
        super::v2::repository_index, super::v2::repository_load, super::v2::repository_unload,
    ),
    components(schemas(
        super::v1::PredictResponse, super::v1::Prediction, super::v1::TimingMs, super::v1::IntentOut, super::v1::B64Body,
        super::v1::ModelList, super::v1::ModelSummary, super::v1::LayerKernelSummary, super::v1::TensorTrainSummary, super::v1::InputSpec,
        super::v2::ServerMetadata, super::v2::ModelMetadata, super::v2::TensorMetadata, super::v2::InferRequest,
        super::v2::InferInput, super::v2::RequestedOutput, super::v2::StatsResponse, super::v2::IndexRequest,
        super::v2::ModelReady, super::v2::ModelConfigResponse, super::v2::ConfigTensor, super::v2::DynamicBatching,
        super::v2::QueuePolicy, super::v2::InstanceGroup, super::v2::ConfigParameters, super::v2::StringValue,
        super::v2::InferResponse, super::v2::InferOutput, super::v2::OutputValues, super::v2::BinaryDataSize,
        super::v2::RepositoryActionResponse, crate::model_config::Warmup,
        crate::repository::IndexEntry, crate::stats::ModelStats, crate::stats::Percentiles, crate::error::ErrorBody,
    )),
    modifiers(&BearerAuth),
    tags((name = "task", description = "Task API for people and scripts"),
         (name = "v2", description = "Open Inference Protocol v2"),
         (name = "repository", description = "Model repository extension"),
         (name = "health"), (name = "metrics"))
)]
pub struct ApiDoc;

pub fn spec_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serializes")
}

pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        spec_json(),
    )
        .into_response()
}
