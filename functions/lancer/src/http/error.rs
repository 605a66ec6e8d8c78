//! The one place errors become HTTP: status codes, the `{"error": {code, message}}` body,
//! and extractors whose rejections speak the same format.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::error::{Error, Resource, chain};

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// INVALID_REQUEST, UNAUTHORIZED, DATASET_NOT_FOUND, MODEL_NOT_FOUND, TASK_NOT_FOUND,
    /// PIPELINE_NOT_FOUND, ALIAS_NOT_FOUND, NOT_FOUND, FORBIDDEN, CONFLICT, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT, TOO_MANY_REQUESTS,
    /// ENDPOINT_UNREACHABLE, INTERNAL_ERROR.
    pub code: String,
    /// What went wrong, for a person; it names nothing internal.
    pub message: String,
}

/// The error code an answer carries for `err`, as the README's table lists them.
pub fn code_of(err: &Error) -> &'static str {
    match err {
        Error::InvalidRequest(_) => "INVALID_REQUEST",
        Error::NotFound { kind, .. } => match kind {
            Resource::Dataset => "DATASET_NOT_FOUND",
            Resource::Model => "MODEL_NOT_FOUND",
            Resource::Task => "TASK_NOT_FOUND",
            Resource::Pipeline => "PIPELINE_NOT_FOUND",
            Resource::Alias => "ALIAS_NOT_FOUND",
            Resource::Serving => "SERVING_NOT_FOUND",
            Resource::Route => "NOT_FOUND",
        },
        Error::Unauthorized(_) => "UNAUTHORIZED",
        Error::Conflict(_) | Error::Stale(_) => "CONFLICT",
        Error::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
        Error::Timeout(_) => "REQUEST_TIMEOUT",
        Error::BadGateway(_) => "ENDPOINT_UNREACHABLE",
        Error::Unavailable { .. } => "NO_REPLICA_READY",
        Error::TooManyRequests(_) => "TOO_MANY_REQUESTS",
        Error::Forbidden(_) => "FORBIDDEN",
        Error::Internal(_) => "INTERNAL_ERROR",
    }
}

/// The HTTP status an answer carries for `err`.
pub fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Conflict(_) | Error::Stale(_) => StatusCode::CONFLICT,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
        Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = match &self {
            Error::Internal(source) => {
                tracing::error!(error = %chain(source.as_ref()), "internal error");
                "internal error; the server log has the details".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code_of(&self).to_owned(),
                message,
            },
        };
        let mut response = (status_of(&self), Json(body)).into_response();
        let retry_after = match &self {
            Error::TooManyRequests(_) => Some(super::streams::RETRY_AFTER_SECS),
            Error::Unavailable { retry_after_s, .. } => Some(u64::from(*retry_after_s)),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        if matches!(self, Error::Unauthorized(_)) {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A JSON body whose rejections are lancer errors: 413 over the body limit, 400 otherwise.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A cross-site form or `text/plain` post is the one body a browser sends another
        // site without asking: a JSON body must say it is one.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|media| media.trim().to_ascii_lowercase());
        let is_json = declared
            .as_deref()
            .is_some_and(|media| media == "application/json" || media.ends_with("+json"));
        if !is_json {
            return Err(Error::invalid(
                "the request body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge(format!(
                    "request body is over the {} byte limit",
                    crate::domain::validate::MAX_BODY_BYTES
                ))
            } else {
                Error::invalid(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|err| Error::invalid(format!("invalid JSON body: {err}")))
    }
}

/// Query parameters whose rejections are 400 INVALID_REQUEST.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| Error::invalid(rejection.body_text()))
    }
}

/// The fallback handler: a path no route matches is a 404 in the API's error shape.
pub async fn route_not_found() -> Error {
    Error::not_found(Resource::Route, "this path")
}

/// A request that ran past its time limit, in the API's error format.
pub async fn timed_out(_: tower::BoxError) -> Error {
    Error::Timeout("the request took too long and was stopped".into())
}
