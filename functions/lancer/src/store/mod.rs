//! TaskStore adapters: in-memory (tests, fakes), SQLite (the embedded default) and
//! DynamoDB (the AWS level).

use crate::domain::model::ModelRecord;
use crate::domain::pipeline::Pipeline;
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskId, apply, apply_heartbeat};
use crate::error::{Error, Resource, Result};
use crate::ports::{Created, MAX_PAGE, PageToken, PipelinePage};

pub mod dynamodb;
pub mod memory;
pub mod sqlite;

/// A task id read back from a store: one the store did not write is corruption, the
/// platform's fault, never the client's.
pub fn stored_task_id(text: &str) -> Result<TaskId> {
    TaskId::parse(text).map_err(Error::internal)
}

/// The id a listing continues below, from a page token.
pub fn page_start(token: Option<&PageToken>) -> Option<String> {
    token.map(|token| token.last_id().to_owned())
}

/// What `create` answers when the idempotency key is already held: the same request
/// gets the existing task back, a different request under the same key is a conflict.
pub fn existing_for_key(existing: Task, requested: &Task) -> Result<Created> {
    if existing.spec == requested.spec {
        Ok(Created::Existing(existing))
    } else {
        Err(Error::Conflict(format!(
            "idempotency key is already used by task {} with a different request",
            existing.id
        )))
    }
}

/// The CAS decision every adapter shares: the next record if `current` still matches.
pub fn next_record(current: &Task, guard: Guard, change: Change) -> Result<Task> {
    if current.guard() != guard {
        return Err(Error::Stale(format!(
            "task {} is {} (attempt {}), not {} (attempt {})",
            current.id, current.status, current.attempt, guard.status, guard.attempt
        )));
    }
    Ok(apply(current, change, chrono::Utc::now())?)
}

/// The heartbeat decision every adapter shares: the record with `beat` applied if `current`
/// is still running `attempt`, `Error::Stale` if not.
pub fn next_heartbeat(current: &Task, attempt: u32, beat: &Heartbeat) -> Result<Task> {
    if current.status != crate::domain::task::TaskStatus::Running || current.attempt != attempt {
        return Err(Error::Stale(format!(
            "task {} is {} (attempt {}), no longer running attempt {attempt}",
            current.id, current.status, current.attempt
        )));
    }
    Ok(apply_heartbeat(current, beat, chrono::Utc::now()))
}

/// The error for a task id the store does not hold.
pub fn task_not_found(id: &str) -> Error {
    Error::not_found(Resource::Task, id)
}

/// A listing's `limit`, bounded to 1-`MAX_PAGE`.
pub fn page_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

/// A page from up to `limit + 1` tasks, newest first: the extra one only says that
/// another page exists, and the token points past the last task served.
pub fn page_of(mut tasks: Vec<Task>, limit: usize) -> crate::ports::TaskPage {
    let next_page_token = cut_page(&mut tasks, limit, |task| task.id.as_str());
    crate::ports::TaskPage {
        tasks,
        next_page_token,
    }
}

/// `page_of` for pipelines.
pub fn pipeline_page_of(mut pipelines: Vec<Pipeline>, limit: usize) -> PipelinePage {
    let next_page_token = cut_page(&mut pipelines, limit, |pipeline| pipeline.id.as_str());
    PipelinePage {
        pipelines,
        next_page_token,
    }
}

fn cut_page<T, Id: AsRef<str> + ?Sized>(
    records: &mut Vec<T>,
    limit: usize,
    id: impl Fn(&T) -> &Id,
) -> Option<PageToken> {
    if records.len() <= limit {
        return None;
    }
    records.truncate(limit);
    records
        .last()
        .map(|last| PageToken::after(id(last).as_ref()))
}

/// `existing_for_key` for pipelines.
pub fn existing_pipeline_for_key(
    existing: Pipeline,
    requested: &Pipeline,
) -> Result<Created<Pipeline>> {
    if existing.spec == requested.spec {
        Ok(Created::Existing(existing))
    } else {
        Err(Error::Conflict(format!(
            "idempotency key is already used by pipeline {} with a different request",
            existing.id
        )))
    }
}

/// The compare-and-set every pipeline adapter shares: `next` with its revision bumped if
/// `current` still has the revision `next` was read at.
pub fn next_pipeline(current: &Pipeline, mut next: Pipeline) -> Result<Pipeline> {
    if current.revision != next.revision {
        return Err(Error::Stale(format!(
            "pipeline {} is at revision {}, not {}",
            current.id, current.revision, next.revision
        )));
    }
    next.revision += 1;
    Ok(next)
}

/// The error for a pipeline id the store does not hold.
pub fn pipeline_not_found(id: &str) -> Error {
    Error::not_found(Resource::Pipeline, id)
}

/// The compare-and-set every model adapter shares: `next` with its revision bumped if the
/// stored record (`None`: revision 0) still has the revision `next` was read at.
pub fn next_model(current: Option<&ModelRecord>, mut next: ModelRecord) -> Result<ModelRecord> {
    let stored = current.map_or(0, |record| record.revision);
    if stored != next.revision {
        return Err(model_stale(&next));
    }
    next.revision += 1;
    Ok(next)
}

/// The error for a model record another writer moved on first.
pub fn model_stale(next: &ModelRecord) -> Error {
    Error::Stale(format!(
        "model {} changed since revision {}",
        next.model, next.revision
    ))
}
