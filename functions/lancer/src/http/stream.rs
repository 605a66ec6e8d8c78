//! `GET /api/v1/tasks/{id}/events`: a task's status, progress and log lines as
//! server-sent events, until it ends. What changed, and when the stream is over, is the
//! use case's (`application::TaskChanges`); this handler encodes it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::stream::{self, StreamExt};
use serde_json::json;

use super::{AppState, Tenant};
use crate::application::{Service, TaskChange};
use crate::error::Result;

/// A task's changes as server-sent events: `task` (the record, when anything but its
/// heartbeat changed), `log` (`{attempt, offset, text}`, with the id `attempt:next_offset`)
/// and, once it has ended and its log is read, `end`. `Last-Event-ID` resumes the log.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/events", tag = "tasks",
    params(("Last-Event-ID" = Option<String>, Header, description = "`attempt:offset` of the last log event read")),
    responses(
        (status = 200, description = "An event stream: `task`, `log` and `end` events", body = String, content_type = "text/event-stream"),
        (status = 404, body = super::error::ErrorBody),
        (status = 429, description = "The tenant, or the server, has its most event streams open", body = super::error::ErrorBody),
    )
)]
pub async fn task_events(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let name = tenant.name.clone();
    let changes = Service::task_changes(
        state.clone(),
        tenant,
        super::ids::task_id(&id)?,
        resume_from(&headers),
    )
    .await?;
    let slot = state.streams.admit(name.as_str())?;
    // The slot rides with the stream: given back when it ends or the client goes.
    let events = stream::unfold((changes, slot), |(mut changes, slot)| async move {
        let batch = changes.next().await?;
        let events = batch.into_iter().map(|change| Ok(event_of(change)));
        Some((stream::iter(events), (changes, slot)))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// One change as its event.
fn event_of(change: TaskChange) -> Event {
    match change {
        TaskChange::Record(task) => Event::default()
            .event("task")
            .data(serde_json::to_string(&task).unwrap_or_default()),
        TaskChange::Log {
            attempt,
            offset,
            next_offset,
            text,
        } => Event::default()
            .event("log")
            .id(format!("{attempt}:{next_offset}"))
            .data(json!({"attempt": attempt, "offset": offset, "text": text}).to_string()),
        TaskChange::End(status) => Event::default().event("end").data(status.as_str()),
        TaskChange::Failed(err) => {
            let error =
                json!({"error": {"code": super::error::code_of(&err), "message": err.to_string()}});
            Event::default().event("error").data(error.to_string())
        }
    }
}

/// `Last-Event-ID: <attempt>:<offset>`.
fn resume_from(headers: &HeaderMap) -> Option<(u32, u64)> {
    let id = headers.get("last-event-id")?.to_str().ok()?;
    let (attempt, offset) = id.split_once(':')?;
    Some((attempt.parse().ok()?, offset.parse().ok()?))
}
