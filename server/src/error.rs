//! The one error type every HTTP handler returns: a status, a metrics reason and a message,
//! rendered as `{"error": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use models::{ErrorKind, ModelError};

/// Why a request ended; the `reason` label of `shiftserve_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    BadInput,
    UnsupportedMedia,
    TooLarge,
    Overloaded,
    Timeout,
    Unavailable,
    Cancelled,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Ok,
        Reason::BadInput,
        Reason::UnsupportedMedia,
        Reason::TooLarge,
        Reason::Overloaded,
        Reason::Timeout,
        Reason::Unavailable,
        Reason::Cancelled,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::BadInput => "bad_input",
            Reason::UnsupportedMedia => "unsupported_media",
            Reason::TooLarge => "too_large",
            Reason::Overloaded => "overloaded",
            Reason::Timeout => "timeout",
            Reason::Unavailable => "unavailable",
            Reason::Cancelled => "cancelled",
            Reason::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: Reason,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason,
            message: message.into(),
            retry_after_secs: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Reason::BadInput, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Reason::BadInput, message)
    }
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::UnsupportedMedia,
            message,
        )
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, Reason::TooLarge, message)
    }
    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, Reason::Overloaded, message)
        }
    }
    /// The client did not send its request in time (`--http-body-timeout-secs`).
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, Reason::Timeout, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, Reason::Timeout, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Unavailable,
            message,
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, Reason::BadInput, message)
    }
    /// The request is valid but conflicts with how the server runs (e.g. model control mode).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, Reason::BadInput, message)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e.kind {
            ErrorKind::BadInput => ApiError::bad_request(e.message),
            ErrorKind::UnsupportedMedia => ApiError::unsupported_media(e.message),
            ErrorKind::TooLarge => ApiError::too_large(e.message),
            ErrorKind::InvalidModel | ErrorKind::Io | ErrorKind::Internal => {
                ApiError::internal(e.message)
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

/// The body of every error answer (4xx and 5xx), as documented in the OpenAPI document.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

/// OpenAPI error answers shared by the per-model read routes (metadata, readiness, config,
/// stats; with or without a version). Documentation only: never constructed.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum ModelReadErrors {
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "Unknown model, or unknown version of it")]
    NotFound(ErrorBody),
    #[response(
        status = 503,
        description = "No ready version (loading, failed or unloaded) or server shutting down"
    )]
    Unavailable(ErrorBody),
}

/// OpenAPI error answers shared by the inference routes (`/v1/.../predict`, `/v2/.../infer`,
/// with or without a version). Documentation only: never constructed.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum InferenceErrors {
    #[response(
        status = 400,
        description = "Bad input: malformed request or undecodable file, unknown input/output, wrong shape or datatype, `top_k` or deadline out of range"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "Unknown model, or unknown version of it")]
    NotFound(ErrorBody),
    #[response(
        status = 408,
        description = "The request body did not arrive within the server's body timeout"
    )]
    RequestTimeout(ErrorBody),
    #[response(status = 413, description = "Body, batch, pixels or audio too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "Unsupported or undecodable media type")]
    UnsupportedMedia(ErrorBody),
    #[response(status = 429, description = "Queue full (Retry-After)")]
    QueueFull(ErrorBody),
    #[response(status = 500, description = "Internal error")]
    Internal(ErrorBody),
    #[response(status = 503, description = "No ready version or server shutting down")]
    Unavailable(ErrorBody),
    #[response(status = 504, description = "Deadline exceeded")]
    DeadlineExceeded(ErrorBody),
}

/// Builds the JSON error body used everywhere.
pub fn error_body(message: &str) -> String {
    serde_json::to_string(&ErrorBody {
        error: message.to_string(),
    })
    .expect("a string serializes")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            error_body(&self.message),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
