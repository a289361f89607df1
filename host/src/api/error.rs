//! `AppError`: the one error type every API handler returns, rendered as
//! `{"error": "..."}` with a status that says whose fault it was.

use crate::queue::StoreError;
use crate::worker::EnqueueError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Over a quota: the message names it.
    #[error("{0}")]
    TooManyRequests(String),
}

impl AppError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(%status, "request failed: {self}");
        }
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => AppError::NotFound(e.to_string()),
            StoreError::InvalidState { .. } | StoreError::UniqueConflict { .. } | StoreError::StaleLease { .. } | StoreError::Kept { .. } => {
                AppError::Conflict(e.to_string())
            }
            StoreError::Unavailable(_) => AppError::Unavailable(e.to_string()),
            _ => AppError::Internal(e.to_string()),
        }
    }
}

impl From<EnqueueError> for AppError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::PayloadTooLarge { .. } => AppError::PayloadTooLarge(e.to_string()),
            EnqueueError::ShuttingDown => AppError::Unavailable(e.to_string()),
            EnqueueError::OverQuota { .. } => AppError::TooManyRequests(e.to_string()),
            EnqueueError::Store(store) => store.into(),
            _ => AppError::BadRequest(e.to_string()),
        }
    }
}

impl From<crate::worker::ServiceError> for AppError {
    fn from(e: crate::worker::ServiceError) -> Self {
        use crate::worker::ServiceError;
        match e {
            ServiceError::BadRequest(m) => AppError::BadRequest(m),
            ServiceError::NotFound(m) => AppError::NotFound(m),
            ServiceError::OtherTenants { .. } => AppError::NotFound(e.to_string()),
            ServiceError::Forbidden(m) => AppError::Forbidden(m),
            ServiceError::TooLarge(m) => AppError::PayloadTooLarge(m),
            ServiceError::Enqueue(e) => e.into(),
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl From<crate::plugin::DeployError> for AppError {
    fn from(e: crate::plugin::DeployError) -> Self {
        use crate::plugin::DeployError;
        match e {
            DeployError::Upload { busy: true, .. } => AppError::Unavailable(e.to_string()),
            DeployError::Invalid(_)
            | DeployError::Upload { .. }
            | DeployError::NameMismatch { .. }
            | DeployError::BadName(_)
            | DeployError::TenantName(_) => {
                AppError::BadRequest(e.to_string())
            }
            DeployError::NotLoaded(_) | DeployError::NoSuchVersion { .. } => AppError::NotFound(e.to_string()),
            DeployError::NoEarlierVersion { .. } | DeployError::VersionServing { .. } => AppError::Conflict(e.to_string()),
            DeployError::OverQuota { .. } => AppError::TooManyRequests(e.to_string()),
            // The server's own paths stay in its log.
            DeployError::Io { path, source } => {
                tracing::error!(%path, "deploy failed: cannot write {path}: {source}");
                AppError::Internal(format!("the host could not write the plugin's files ({source}); its log names the path"))
            }
        }
    }
}
