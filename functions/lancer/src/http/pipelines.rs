//! `/api/v1/pipelines`: submit, list, get, cancel, retry.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiJson, ApiQuery, ErrorBody};
use super::ids::pipeline_id;
use super::{AppState, Tenant};
use crate::domain::pipeline::{Pipeline, PipelineSpec};
use crate::error::Result;
use crate::ports::Created;

/// Submit a pipeline: a DAG of steps, each a task spec with `after`. The steps that wait
/// for nothing start at once. A repeat with the same `Idempotency-Key` returns the first
/// pipeline (200).
#[utoipa::path(
    post, path = "/api/v1/pipelines", tag = "pipelines",
    request_body = PipelineSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 201, description = "Created", body = Pipeline),
        (status = 200, description = "The pipeline already submitted with this idempotency key", body = Pipeline),
        (status = 400, description = "A cycle, an unknown or duplicate step, too many steps, or a step that is no valid task; the message names the step", body = ErrorBody),
        (status = 409, description = "Idempotency key reused for another request", body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<PipelineSpec>,
) -> Result<Response> {
    let key = super::tasks::idempotency_key(&headers);
    Ok(
        match state.service.submit_pipeline(&tenant, spec, key).await? {
            Created::New(pipeline) => (StatusCode::CREATED, Json(pipeline)).into_response(),
            Created::Existing(pipeline) => (StatusCode::OK, Json(pipeline)).into_response(),
        },
    )
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1-1000 (default 100).
    limit: Option<usize>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PipelineList {
    /// Newest first.
    pipelines: Vec<Pipeline>,
    next_page_token: Option<String>,
}

/// List the caller's pipelines, newest first.
#[utoipa::path(
    get, path = "/api/v1/pipelines", tag = "pipelines", params(ListParams),
    responses((status = 200, body = PipelineList))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<PipelineList>> {
    let page = state
        .service
        .list_pipelines(&tenant, params.limit, params.page_token.as_deref())
        .await?;
    Ok(Json(PipelineList {
        pipelines: page.pipelines,
        next_page_token: page.next_page_token.as_ref().map(ToString::to_string),
    }))
}

/// A pipeline: its status, and each step's status and tasks.
#[utoipa::path(
    get, path = "/api/v1/pipelines/{id}", tag = "pipelines",
    responses((status = 200, body = Pipeline), (status = 404, body = ErrorBody))
)]
pub async fn get_pipeline(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Pipeline>> {
    Ok(Json(
        state.service.pipeline(&tenant, &pipeline_id(&id)?).await?,
    ))
}

/// Cancel a pipeline: waiting steps never start, pending and running ones are cancelled
/// (a completed pipeline's serving step too).
#[utoipa::path(
    post, path = "/api/v1/pipelines/{id}/cancel", tag = "pipelines",
    responses(
        (status = 200, body = Pipeline), (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing of the pipeline runs any more", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Pipeline>> {
    Ok(Json(
        state
            .service
            .cancel_pipeline(&tenant, &pipeline_id(&id)?)
            .await?,
    ))
}

/// Resume a failed or cancelled pipeline: its failed, cancelled and skipped steps run
/// again with everything downstream of them; completed steps are kept.
#[utoipa::path(
    post, path = "/api/v1/pipelines/{id}/retry", tag = "pipelines",
    responses(
        (status = 200, body = Pipeline), (status = 404, body = ErrorBody),
        (status = 409, description = "The pipeline is running or completed", body = ErrorBody),
    )
)]
pub async fn retry(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Pipeline>> {
    Ok(Json(
        state
            .service
            .retry_pipeline(&tenant, &pipeline_id(&id)?)
            .await?,
    ))
}
