//! A task's changes as they happen: its record, its log as it grows, its end. The task table
//! has no change feed, so a watch reads the task and its log once a second, as a client
//! polling would, and yields only what changed. The event stream (`http/stream.rs`) encodes
//! what a watch yields; the rules of when a watch ends live here.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{LogRequest, Service, TaskLog};
use crate::domain::task::{Task, TaskId, TaskStatus};
use crate::domain::tenant::Tenant;
use crate::error::{Error, Result};

/// How often a watch looks at the task.
const POLL: Duration = Duration::from_secs(1);

/// How long one watch lasts; the client resumes from its last log position to go on. It
/// keeps a watcher from being held forever by a task that never ends (a service).
const MAX_WATCH: Duration = Duration::from_secs(15 * 60);

/// One change of a watched task.
#[derive(Debug)]
pub enum TaskChange {
    /// The record, when anything but its heartbeat time changed.
    Record(Box<Task>),
    /// New log text of `attempt` from `offset`; `next_offset` is where to resume.
    Log {
        /// The attempt whose log this is.
        attempt: u32,
        /// The byte offset of `text` in that attempt's log.
        offset: u64,
        /// The offset after `text`: a `Last-Event-ID` resumes from here.
        next_offset: u64,
        /// The new text, ending at a line end unless the log ends.
        text: String,
    },
    /// The task ended and all its log was yielded: the watch is over.
    End(TaskStatus),
    /// The task could not be read (gone, or the store failed): the watch is over.
    Failed(Error),
}

/// A watch over one task of `tenant`, through the service `owner` holds.
pub struct TaskChanges<S> {
    owner: Arc<S>,
    tenant: Tenant,
    id: TaskId,
    attempt: u32,
    offset: u64,
    /// The record last yielded, without its heartbeat time.
    shown: Option<String>,
    deadline: Instant,
    first: bool,
    done: bool,
}

impl Service {
    /// A watch over a task of `tenant`, its log from `resume` (`attempt`, `offset`) or from
    /// the start of the current attempt. A task the tenant cannot see is an error now,
    /// before any watching.
    pub async fn task_changes<S: AsRef<Service>>(
        owner: Arc<S>,
        tenant: Tenant,
        id: TaskId,
        resume: Option<(u32, u64)>,
    ) -> Result<TaskChanges<S>> {
        let task = (*owner).as_ref().task(&tenant, &id).await?;
        let (attempt, offset) = resume.unwrap_or((task.attempt.max(1), 0));
        Ok(TaskChanges {
            owner,
            tenant,
            id,
            attempt,
            offset,
            shown: None,
            deadline: Instant::now() + MAX_WATCH,
            first: true,
            done: false,
        })
    }
}

impl<S: AsRef<Service>> TaskChanges<S> {
    /// The changes of one look at the task (after a pause, but for the first); `None` once
    /// the watch is over.
    pub async fn next(&mut self) -> Option<Vec<TaskChange>> {
        if self.done || Instant::now() >= self.deadline {
            return None;
        }
        if !self.first {
            tokio::time::sleep(POLL).await;
        }
        self.first = false;
        match self.look().await {
            Ok(changes) => Some(changes),
            Err(err) => {
                self.done = true;
                Some(vec![TaskChange::Failed(err)])
            }
        }
    }

    async fn look(&mut self) -> Result<Vec<TaskChange>> {
        let owner = self.owner.clone();
        let service = (*owner).as_ref();
        let task = service.task(&self.tenant, &self.id).await?;
        let mut changes = Vec::new();
        if self.changed(&task) {
            changes.push(TaskChange::Record(Box::new(task.clone())));
        }
        if task.attempt > self.attempt {
            (self.attempt, self.offset) = (task.attempt, 0);
        }
        if task.attempt == 0 {
            return Ok(changes);
        }
        let request = LogRequest {
            attempt: Some(self.attempt),
            offset: Some(self.offset),
            limit: None,
        };
        let TaskLog { chunk, .. } = service.log_of_task(&task, request).await?;
        if !chunk.bytes.is_empty() {
            changes.push(TaskChange::Log {
                attempt: self.attempt,
                offset: self.offset,
                next_offset: chunk.next_offset,
                text: String::from_utf8_lossy(&chunk.bytes).into_owned(),
            });
            self.offset = chunk.next_offset;
        }
        if task.status.is_terminal() && chunk.next_offset >= chunk.size {
            self.done = true;
            changes.push(TaskChange::End(task.status));
        }
        Ok(changes)
    }

    /// Whether the record changed in more than its heartbeat time since last yielded.
    fn changed(&mut self, task: &Task) -> bool {
        let Ok(mut value) = serde_json::to_value(task) else {
            return false;
        };
        if let Some(fields) = value.as_object_mut() {
            fields.remove("heartbeat_at");
        }
        let text = value.to_string();
        if self.shown.as_ref() == Some(&text) {
            return false;
        }
        self.shown = Some(text);
        true
    }
}
