//! `PUT /api/v1/uploads/{key}`: the embedded server's way in for raw data. The body lands
//! at `raw/<key>` in the caller's lake folder and the ingestion rules run on it, exactly as
//! the `ingest` function runs them on S3's upload events (`application::uploads`).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, header};
use futures::{StreamExt, TryStreamExt};

use super::error::ErrorBody;
use super::{AppState, Tenant};
pub use crate::application::Uploaded;
use crate::error::Result;

/// Stores a raw file and runs the ingestion rules on it.
#[utoipa::path(
    put,
    path = "/api/v1/uploads/{key}",
    tag = "uploads",
    params(("key" = String, Path, description = "Path under raw/, e.g. mnist/train-images-idx3-ubyte.gz")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored; `task` is the ingestion task it completed", body = Uploaded),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, description = "Over the size of one upload, or the tenant's upload quota", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>)> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let uploaded = state
        .service
        .upload(&tenant, &key, announced, stream)
        .await?;
    Ok((StatusCode::CREATED, Json(uploaded)))
}
