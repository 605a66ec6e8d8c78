//! `PUT /api/v1/uploads/{key}`: the embedded server's way in for raw data. The body lands
//! at `raw/<key>` in the caller's lake folder and the ingestion rules run on it, exactly as
//! the `ingest` function runs them on S3's upload events.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{AppState, Tenant};
use crate::domain::path::LakePath;
use crate::domain::task::Task;
use crate::error::Result;
use crate::ports::Created;

/// Uploads are raw data files, far beyond the API's 1 MiB bodies.
pub const MAX_UPLOAD_BYTES: usize = 1 << 30;

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
    )
)]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Uploaded>)> {
    let relative = LakePath::parse("raw", "raw")?.join(&LakePath::parse("upload key", &key)?);
    let path = tenant.path(&relative);
    let size = body.len() as u64;
    state.lake.put(&path, body.to_vec()).await?;
    let task = state
        .ingest(&tenant, &relative)
        .await?
        .map(|created| match created {
            Created::New(task) | Created::Existing(task) => task,
        });
    Ok((StatusCode::CREATED, Json(Uploaded { path, size, task })))
}
