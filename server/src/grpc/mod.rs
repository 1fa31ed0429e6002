//! gRPC front end: the Open Inference Protocol v2 service `inference.GRPCInferenceService`
//! (KServe's `grpc_predict_v2.proto`, which Triton implements too) with the model repository and
//! statistics extensions, on its own port (`--grpc-port`, 8001 by default).
//!
//! It is a second door into the same server: every RPC runs the functions the v2 HTTP handlers
//! run (`crate::http::v2`, `crate::http::infer`) against the same `AppState`, so batchers, queue
//! and input limits, deadlines, metrics, statistics, the API key and the drain on SIGTERM are
//! shared. Messages are generated at build time from `proto/grpc_predict_v2.proto` (build.rs).

mod service;
mod tensors;

use crate::error::ApiError;
use crate::http::SharedState;
use std::future::Future;
use std::net::SocketAddr;
use tonic::{Code, Status};

/// Messages, server and client generated from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

pub use service::InferenceService;

/// Entry point for fuzzing the gRPC request decoder (as `crate::http::decode::fuzzing`): the
/// bytes are a `ModelInferRequest` message, decoded by prost (as tonic decodes it) and then by
/// the shared v2 decoder against `fuzzing::SHAPE`.
pub mod fuzzing {
    use crate::http::decode::fuzzing::{check_v2, SHAPE};

    pub fn model_infer(data: &[u8]) {
        if let Ok(r) = <super::proto::ModelInferRequest as prost::Message>::decode(data) {
            check_v2(super::tensors::decode(r, &SHAPE));
        }
    }
}

/// The gRPC status for an error of the shared pipeline. The HTTP status of the same error maps
/// as in Google's API design guide (400 INVALID_ARGUMENT, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED,
/// 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED ...); an input over a content limit (HTTP 413: pixels,
/// audio length) and an unsupported media type (415) are INVALID_ARGUMENT, since sending it
/// again cannot succeed. A message over the size limit is refused by the transport with
/// RESOURCE_EXHAUSTED before it reaches a handler.
pub fn status_from(e: &ApiError) -> Status {
    let code = match e.status.as_u16() {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        500 => Code::Internal,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    };
    let mut status = Status::new(code, e.message.clone());
    if let Some(secs) = e.retry_after_secs {
        if let Ok(v) = secs.to_string().parse() {
            status.metadata_mut().insert("retry-after", v);
        }
    }
    status
}

/// tonic answers a request over `max_decoding_message_size` with OUT_OF_RANGE; gRPC's status code
/// table (and grpc-core, so Triton and its clients) use RESOURCE_EXHAUSTED for it. No handler
/// here answers OUT_OF_RANGE itself, so every one is that refusal.
fn too_large_is_resource_exhausted(
    mut r: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    if r.headers().get("grpc-status").is_some_and(|v| v == "11") {
        r.headers_mut()
            .insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    r
}

/// Removes an `x-request-id` the HTTP server would not keep (too long, or characters outside
/// `crate::http::acceptable_request_id`), so that the next layer gives the call a new one.
fn drop_unacceptable_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    if req
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !crate::http::acceptable_request_id(v.as_bytes()))
    {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// Binds the gRPC listener (before serving, so a port in use stops the start like HTTP's).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for gRPC on {addr}: {e}"))
}

/// Serves gRPC on `listener` until `shutdown` resolves, then lets the open calls finish.
/// Messages larger than `--max-body-bytes` are refused (RESOURCE_EXHAUSTED), as HTTP bodies are.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;
    let max = state.opts.max_body_bytes;
    let service = proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        InferenceService::new(state),
    )
    .max_decoding_message_size(max)
    .max_encoding_message_size(usize::MAX);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // Request ids as on HTTP: a client's id is kept when acceptable, else replaced.
        .layer(tower::util::MapRequestLayer::new(
            drop_unacceptable_request_id,
        ))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("grpc", path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                // One line per call at DEBUG, as HTTP requests.
                .on_failure(crate::http::debug_on_failure())
                .on_response(crate::http::debug_on_response()),
        )
        // Innermost, on tonic's own answers.
        .layer(tower::util::MapResponseLayer::new(
            too_large_is_resource_exhausted,
        ))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server error: {e}"))
}
