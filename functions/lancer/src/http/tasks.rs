//! `/api/v1/tasks`: submit, list, get, cancel, logs.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiJson, ApiQuery, ErrorBody};
use super::{AppState, Tenant};
use crate::dispatch::cancel_in_store;
use crate::domain::path::{LakePath, Name};
use crate::domain::task::{Task, TaskSpec, TaskStatus};
use crate::domain::validate::{
    ArtifactKind, InputRef, check_idempotency_key, check_spec, parse_input, resolve_output,
};
use crate::error::{Error, Resource, Result};
use crate::ports::{Created, ListQuery, LogChunk};
use crate::scripts::ScriptRegistry;

impl AppState {
    /// Validates, resolves and stores a task, then hands it to the dispatcher.
    pub async fn submit_task(&self, tenant: &Tenant, spec: TaskSpec) -> Result<Created> {
        check_spec(&spec)?;
        ScriptRegistry::load(&self.scripts)?.resolve(&spec.script)?;
        let input_path = match parse_input(&spec.input)? {
            InputRef::None => None,
            InputRef::Path(path) => Some(tenant.path(&path)),
            InputRef::Name(name) => Some(self.resolve_input_name(tenant, &name).await?),
        };
        let output_path = resolve_output(&spec.output)?.map(|path| tenant.path(&path));
        let id = Name::parse("task id", &uuid::Uuid::now_v7().to_string())?;
        let task = Task::new(
            &id,
            tenant,
            spec,
            input_path,
            output_path,
            chrono::Utc::now(),
        );
        let created = self.store.create(task).await?;
        if let Created::New(task) = &created {
            // The task is safely stored; a dispatcher hiccup is healed by reconcile.
            if let Err(err) = self.dispatcher.submit(task).await {
                tracing::error!(task = %task.id, %err, "dispatch failed; reconcile will retry");
            }
        }
        Ok(created)
    }

    async fn resolve_input_name(&self, tenant: &Tenant, name: &Name) -> Result<LakePath> {
        for kind in [ArtifactKind::Dataset, ArtifactKind::Model] {
            if self
                .lake
                .describe(&tenant.root, kind, name)
                .await?
                .is_some()
            {
                return Ok(tenant.path(&kind.path_of(name)));
            }
        }
        Err(Error::not_found(Resource::Dataset, name.as_str()))
    }

    /// The task if it exists and belongs to the tenant; another tenant's task is not found.
    async fn owned_task(&self, tenant: &Tenant, id: &str) -> Result<Task> {
        match self.store.get(id).await? {
            Some(task) if task.tenant == tenant.name.as_str() => Ok(task),
            _ => Err(Error::not_found(Resource::Task, id)),
        }
    }
}

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
    ApiJson(mut spec): ApiJson<TaskSpec>,
) -> Result<Response> {
    if let Some(header) = headers.get("idempotency-key") {
        let key = header
            .to_str()
            .map_err(|_| Error::invalid("Idempotency-Key must be printable ASCII"))?
            .to_owned();
        check_idempotency_key(&key)?;
        if spec
            .idempotency_key
            .as_ref()
            .is_some_and(|field| *field != key)
        {
            return Err(Error::invalid(
                "Idempotency-Key header and idempotency_key field differ",
            ));
        }
        spec.idempotency_key = Some(key);
    }
    Ok(match state.submit_task(&tenant, spec).await? {
        Created::New(task) => (StatusCode::CREATED, Json(task)).into_response(),
        Created::Existing(task) => (StatusCode::OK, Json(task)).into_response(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tasks in this status.
    status: Option<String>,
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
    let status = params
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(Error::InvalidRequest)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=crate::store::MAX_PAGE).contains(&limit) {
        return Err(Error::invalid("limit must be between 1 and 1000"));
    }
    let page = state
        .store
        .list(&ListQuery {
            tenant: Some(tenant.name.to_string()),
            status,
            limit,
            page_token: params.page_token,
        })
        .await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_page_token: page.next_page_token,
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
    Ok(Json(state.owned_task(&tenant, &id).await?))
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
    let mut task = state.owned_task(&tenant, &id).await?;
    // A runner may move it (pending -> running) between our read and our write: read again.
    let cancelled = loop {
        match cancel_in_store(state.store.as_ref(), &task).await {
            Err(Error::Conflict(_)) if !task.status.is_terminal() => {
                task = state.owned_task(&tenant, &id).await?;
            }
            other => break other?,
        }
    };
    state.dispatcher.cancel(&cancelled).await?;
    Ok(Json(cancelled))
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

/// The most log bytes one call returns: well inside Lambda's 6 MB response limit.
const MAX_LOG_CHUNK: u64 = 1 << 20;

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
    let task = state.owned_task(&tenant, &id).await?;
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(MAX_LOG_CHUNK);
    if !(1..=MAX_LOG_CHUNK).contains(&limit) {
        return Err(Error::invalid(format!(
            "limit must be between 1 and {MAX_LOG_CHUNK}"
        )));
    }
    let latest = task.attempt.max(1);
    let attempt = params.attempt.unwrap_or(latest);
    if !(1..=latest).contains(&attempt) {
        return Err(Error::invalid(format!(
            "attempt must be between 1 and {latest}, the task's attempts so far"
        )));
    }
    let chunk = match state
        .lake
        .read_from(&task.log_of(attempt), offset, limit)
        .await?
    {
        Some(chunk) => chunk,
        None => match state.dispatcher.logs(&task).await? {
            Some(text) => LogChunk::slice(text.as_bytes(), offset, limit),
            None => LogChunk::slice(&[], 0, limit),
        },
    }
    .at_a_line_end();
    let next_offset = chunk.next_offset;
    let mut response = chunk.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-next-offset", HeaderValue::from(next_offset));
    headers.insert(
        "x-task-status",
        HeaderValue::from_static(task.status.as_str()),
    );
    headers.insert("x-attempt", HeaderValue::from(attempt));
    Ok(response)
}
