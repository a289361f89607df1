//! Reading a request: its path parameters and body as JSON errors name
//! them, and the bounds of what one request may hold.

use super::error::AppError;
use super::server;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;

/// Largest request body: a batch of jobs; each payload is also held to
/// the dispatcher's per-job limit.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// Largest page of `GET /jobs`.
pub const MAX_PAGE: usize = 1000;
/// Stored bytes (payloads, results, errors) a page of `GET /jobs` holds
/// before it ends early, whatever its `limit`.
pub const MAX_PAGE_BYTES: u64 = crate::queue::DEFAULT_PAGE_BYTES;

/// A path's parameters, or a JSON error saying why they could not be read
/// (axum's own rejection is plain text, which no client of this API expects).
pub(super) fn path_of<T>(path: Result<Path<T>, axum::extract::rejection::PathRejection>) -> Result<T, AppError> {
    path.map(|Path(p)| p).map_err(|e| AppError::BadRequest(e.body_text()))
}

/// A request body, or the error that says why it could not be read.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AppError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(format!("request body is over the limit of {MAX_BODY_BYTES} bytes")),
        _ => match server::body_timed_out(&e) {
            Some(timed_out) => AppError::RequestTimeout(timed_out),
            None => AppError::BadRequest(format!("cannot read the request body: {}", e.body_text())),
        },
    })
}
