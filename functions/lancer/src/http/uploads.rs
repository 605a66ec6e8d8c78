//! `PUT /api/v1/uploads/{key}`: the embedded server's way in for raw data. The body lands
//! at `raw/<key>` in the caller's lake folder and the ingestion rules run on it, exactly as
//! the `ingest` function runs them on S3's upload events.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, header};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{AppState, Tenant};
use crate::domain::path::LakePath;
use crate::domain::task::Task;
use crate::error::{Error, Result};
use crate::ports::{ByteStream, Created, Stored};

#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    /// Where the object landed, lake-relative.
    #[schema(value_type = String)]
    pub path: LakePath,
    pub size: u64,
    /// The ingestion task the upload completed, if a rule matched and every file it
    /// requires is present.
    pub task: Option<Task>,
}

impl AppState {
    /// Streams an upload to `raw/<key>` in the tenant's folder, within the size of one
    /// upload and the tenant's quota; `announced` is its Content-Length, if sent, so an
    /// upload that cannot fit is refused before a byte of it is read.
    pub async fn receive_upload(
        &self,
        tenant: &Tenant,
        relative: &LakePath,
        announced: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let limits = self.upload_limits;
        let path = tenant.path(relative);
        let raw = tenant.path(&LakePath::parse("raw", "raw")?);
        let replaced = self.lake.stat(&path).await?.map_or(0, |stat| stat.size);
        let used = self.lake.usage(&raw).await?.saturating_sub(replaced);
        let room = limits.quota_bytes.saturating_sub(used);
        let over = |by_quota: bool| {
            Error::PayloadTooLarge(if by_quota {
                format!(
                    "the upload would take this tenant past its upload quota of {} bytes ({used} in use)",
                    limits.quota_bytes
                )
            } else {
                format!("an upload may be at most {} bytes", limits.max_bytes)
            })
        };
        let limit = limits.max_bytes.min(room);
        if announced.is_some_and(|size| size > limit) {
            return Err(over(room < limits.max_bytes));
        }
        match self.lake.put_stream(&path, body, limit).await? {
            Stored::Whole(size) => Ok(size),
            Stored::OverLimit => Err(over(room < limits.max_bytes)),
        }
    }

    /// Runs the ingestion rules on an object that arrived at lake-relative `key`
    /// (tenant folder excluded): creates the rule's task once its upload is complete.
    pub async fn ingest(&self, tenant: &Tenant, key: &LakePath) -> Result<Option<Created>> {
        let Some(rule) = self.ingest_rules.rule_for(key) else {
            return Ok(None);
        };
        let mut present = Vec::new();
        for required in rule.required_keys(key) {
            match self.lake.stat(&tenant.path(&required)).await? {
                Some(stat) => present.push((required, stat.version)),
                None => {
                    info!(rule = %rule.name, %key, missing = %required, "upload not complete yet");
                    return Ok(None);
                }
            }
        }
        let created = self
            .submit_task(tenant, rule.task_for(key, &present))
            .await?;
        if let Created::New(task) = &created {
            info!(rule = %rule.name, %key, task = %task.id, "ingestion task created");
        }
        Ok(Some(created))
    }
}

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
    let relative = LakePath::parse("raw", "raw")?.join(&LakePath::parse("upload key", &key)?);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let size = state
        .receive_upload(&tenant, &relative, announced, stream)
        .await?;
    let task = state
        .ingest(&tenant, &relative)
        .await?
        .map(|created| match created {
            Created::New(task) | Created::Existing(task) => task,
        });
    let path = tenant.path(&relative);
    Ok((StatusCode::CREATED, Json(Uploaded { path, size, task })))
}
