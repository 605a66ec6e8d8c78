//! `/api/v1/tasks`: submit, list, get, cancel, logs, progress.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiJson, ApiQuery, ErrorBody};
use super::ids::task_id;
use super::{AppState, Tenant};
use crate::application::{LogRequest, TaskFilter, TaskLog, TaskProgress};
use crate::domain::task::{Task, TaskSpec};
use crate::error::Result;
use crate::ports::Created;

/// Submit a task. A repeat with the same `Idempotency-Key` returns the first task (200).
#[utoipa::path(
    post, path = "/api/v1/tasks", tag = "tasks",
    request_body = TaskSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 201, description = "Created", body = Task),
        (status = 200, description = "The task already submitted with this idempotency key", body = Task),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "The input dataset or model does not exist", body = ErrorBody),
        (status = 409, description = "Idempotency key reused for another request", body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<Response> {
    let key = idempotency_key(&headers);
    Ok(match state.service.submit_task(&tenant, spec, key).await? {
        Created::New(task) => (StatusCode::CREATED, Json(task)).into_response(),
        Created::Existing(task) => (StatusCode::OK, Json(task)).into_response(),
    })
}

/// The `Idempotency-Key` header. One that is not visible ASCII reads as empty, which is no
/// valid key: the use case says so.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .map(|value| value.to_str().unwrap_or_default())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tasks in this status.
    status: Option<String>,
    /// Only tasks whose name starts with this.
    name: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<usize>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    /// Newest first.
    tasks: Vec<Task>,
    next_page_token: Option<String>,
}

/// List the caller's tasks, newest first.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "tasks", params(ListParams),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<TaskList>> {
    let page = state
        .service
        .list_tasks(
            &tenant,
            TaskFilter {
                status: params.status.as_deref(),
                name: params.name.as_deref(),
            },
            params.limit,
            params.page_token,
        )
        .await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_page_token: page.next_page_token.as_ref().map(ToString::to_string),
    }))
}

/// A task's status, progress, result or error.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "tasks",
    responses((status = 200, body = Task), (status = 404, body = ErrorBody))
)]
pub async fn get_task(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Task>> {
    Ok(Json(state.service.task(&tenant, &task_id(&id)?).await?))
}

/// Cancel a pending or running task.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    responses(
        (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 409, description = "The task already finished", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Task>> {
    Ok(Json(
        state.service.cancel_task(&tenant, &task_id(&id)?).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Which attempt's log, 1 to the task's `attempt` (default: the latest).
    attempt: Option<u32>,
    /// Byte offset to read from (the `X-Next-Offset` of the previous call).
    offset: Option<u64>,
    /// Most bytes to return, 1 to 1048576 (the default). A chunk that stops short of the
    /// log's end ends at a line end.
    limit: Option<u64>,
}

/// A task's stdout and stderr, from `offset`: the latest attempt's, or `attempt`'s.
/// `X-Next-Offset` says where to continue, `X-Attempt` whose log it is.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/logs", tag = "tasks", params(LogParams),
    responses((status = 200, description = "Log text", body = String, content_type = "text/plain"), (status = 404, body = ErrorBody))
)]
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response> {
    let request = LogRequest {
        attempt: params.attempt,
        offset: params.offset,
        limit: params.limit,
    };
    let TaskLog {
        chunk,
        attempt,
        status,
    } = state
        .service
        .task_log(&tenant, &task_id(&id)?, request)
        .await?;
    let mut response = chunk.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-next-offset", HeaderValue::from(chunk.next_offset));
    headers.insert("x-task-status", HeaderValue::from_static(status.as_str()));
    headers.insert("x-attempt", HeaderValue::from(attempt));
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProgressParams {
    /// Which attempt's history, 1 to the task's `attempt` (default: the latest).
    attempt: Option<u32>,
}

/// Every progress report of a task's attempt with the time it was read, oldest first: the
/// points of a loss curve. Kept in the lake beside the log, so it outlives the runner.
/// Bounded at 2,000 points of at most 2 KiB each: past that, the most frequent series of
/// reports (those with the same metric names) is thinned evenly, and `dropped` counts
/// what was left out.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/progress", tag = "tasks", params(ProgressParams),
    responses((status = 200, body = TaskProgress), (status = 404, body = ErrorBody))
)]
pub async fn progress(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ProgressParams>,
) -> Result<Json<TaskProgress>> {
    let history = state
        .service
        .task_progress(&tenant, &task_id(&id)?, params.attempt)
        .await?;
    Ok(Json(history))
}
