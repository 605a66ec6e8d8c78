//! `GET /api/v1/tasks/{id}/events`: a task's status, progress and log lines as
//! server-sent events, until it ends. The task table has no change feed, so the stream
//! reads the task and its log once a second, as a client polling would, and sends only
//! what changed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::streams::StreamSlot;
use super::{AppState, Tenant};
use crate::application::{LogRequest, TaskLog};
use crate::domain::task::Task;
use crate::error::Result;

/// How often the stream looks at the task.
const POLL: Duration = Duration::from_secs(1);

/// How long one stream lasts; the client reconnects with `Last-Event-ID` to go on. It
/// keeps a connection from being held forever by a task that never ends (a service).
const MAX_STREAM: Duration = Duration::from_secs(15 * 60);

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
    let task = state.service.task(&tenant, &id).await?;
    let slot = state.streams.admit(tenant.name.as_str())?;
    let (attempt, offset) = resume_from(&headers).unwrap_or((task.attempt.max(1), 0));
    let watch = Watch {
        state,
        tenant,
        id,
        attempt,
        offset,
        shown: None,
        deadline: Instant::now() + MAX_STREAM,
        first: true,
        done: false,
        _slot: slot,
    };
    let events = stream::unfold(watch, |mut watch| async move {
        let batch = watch.next().await?;
        Some((stream::iter(batch.into_iter().map(Ok)), watch))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `Last-Event-ID: <attempt>:<offset>`.
fn resume_from(headers: &HeaderMap) -> Option<(u32, u64)> {
    let id = headers.get("last-event-id")?.to_str().ok()?;
    let (attempt, offset) = id.split_once(':')?;
    Some((attempt.parse().ok()?, offset.parse().ok()?))
}

struct Watch {
    state: Arc<AppState>,
    tenant: Tenant,
    id: String,
    attempt: u32,
    offset: u64,
    /// The record last sent, without its heartbeat time.
    shown: Option<String>,
    deadline: Instant,
    first: bool,
    done: bool,
    /// Its place among the open streams, given back when the stream ends or drops.
    _slot: StreamSlot,
}

impl Watch {
    /// The events of one look at the task; `None` once the stream is over.
    async fn next(&mut self) -> Option<Vec<Event>> {
        if self.done || Instant::now() >= self.deadline {
            return None;
        }
        if !self.first {
            tokio::time::sleep(POLL).await;
        }
        self.first = false;
        match self.look().await {
            Ok(events) => Some(events),
            Err(err) => {
                self.done = true;
                let (code, message) = (super::error::code_of(&err), err.to_string());
                let error = json!({"error": {"code": code, "message": message}});
                Some(vec![
                    Event::default().event("error").data(error.to_string()),
                ])
            }
        }
    }

    async fn look(&mut self) -> Result<Vec<Event>> {
        let state = self.state.clone();
        let service = &state.service;
        let task = service.task(&self.tenant, &self.id).await?;
        let mut events = Vec::new();
        if let Some(event) = self.changed(&task) {
            events.push(event);
        }
        if task.attempt > self.attempt {
            (self.attempt, self.offset) = (task.attempt, 0);
        }
        if task.attempt == 0 {
            return Ok(events);
        }
        let request = LogRequest {
            attempt: Some(self.attempt),
            offset: Some(self.offset),
            limit: None,
        };
        let TaskLog { chunk, .. } = service.log_of_task(&task, request).await?;
        if !chunk.bytes.is_empty() {
            let text = String::from_utf8_lossy(&chunk.bytes);
            let data = json!({"attempt": self.attempt, "offset": self.offset, "text": text});
            events.push(
                Event::default()
                    .event("log")
                    .id(format!("{}:{}", self.attempt, chunk.next_offset))
                    .data(data.to_string()),
            );
            self.offset = chunk.next_offset;
        }
        if task.status.is_terminal() && chunk.next_offset >= chunk.size {
            self.done = true;
            events.push(Event::default().event("end").data(task.status.as_str()));
        }
        Ok(events)
    }

    /// A `task` event if the record changed in more than its heartbeat time.
    fn changed(&mut self, task: &Task) -> Option<Event> {
        let mut value = serde_json::to_value(task).ok()?;
        value.as_object_mut()?.remove("heartbeat_at");
        let text = value.to_string();
        if self.shown.as_ref() == Some(&text) {
            return None;
        }
        let event = Event::default()
            .event("task")
            .data(serde_json::to_string(task).ok()?);
        self.shown = Some(text);
        Some(event)
    }
}
