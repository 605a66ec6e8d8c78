//! The in-memory TaskStore and PipelineStore: the fake every test of a caller can use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    decode_page_token, existing_for_key, existing_pipeline_for_key, next_heartbeat, next_pipeline,
    next_record, page_limit, page_of, page_start, pipeline_not_found, pipeline_page_of,
    task_not_found,
};
use crate::domain::pipeline::Pipeline;
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Created, ListQuery, PipelinePage, PipelineStore, TaskPage, TaskStore};

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, Task>,
    keys: HashMap<(String, String), String>,
    pipelines: BTreeMap<String, Pipeline>,
    pipeline_keys: HashMap<(String, String), String>,
    cache: HashMap<(String, String), String>,
}

#[derive(Default)]
pub struct MemoryTaskStore {
    state: Mutex<State>,
}

impl MemoryTaskStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::internal("memory task store lock poisoned"))
    }
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn create(&self, task: Task) -> Result<Created> {
        let mut state = self.lock()?;
        if let Some(key) = &task.spec.idempotency_key {
            let slot = (task.tenant.to_string(), key.clone());
            if let Some(existing) = state.keys.get(&slot).and_then(|id| state.tasks.get(id)) {
                return existing_for_key(existing.clone(), &task);
            }
            state.keys.insert(slot, task.id.to_string());
        }
        if state.tasks.contains_key(task.id.as_str()) {
            return Err(Error::Conflict(format!("task {} already exists", task.id)));
        }
        state.tasks.insert(task.id.to_string(), task.clone());
        Ok(Created::New(task))
    }

    async fn get(&self, id: &str) -> Result<Option<Task>> {
        Ok(self.lock()?.tasks.get(id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage> {
        let state = self.lock()?;
        let before = page_start(query)?;
        let limit = page_limit(query.limit);
        let tasks: Vec<Task> = state
            .tasks
            .values()
            .rev()
            .filter(|task| before.as_deref().is_none_or(|last| task.id.as_str() < last))
            .filter(|task| {
                query
                    .tenant
                    .as_deref()
                    .is_none_or(|tenant| task.tenant == tenant)
            })
            .filter(|task| query.status.is_none_or(|status| task.status == status))
            .filter(|task| {
                query
                    .name_prefix
                    .as_deref()
                    .is_none_or(|prefix| task.spec.name.starts_with(prefix))
            })
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(page_of(tasks, limit))
    }

    async fn transition(&self, id: &str, guard: Guard, change: Change) -> Result<Task> {
        let mut state = self.lock()?;
        let current = state.tasks.get_mut(id).ok_or_else(|| task_not_found(id))?;
        let next = next_record(current, guard, change)?;
        *current = next.clone();
        Ok(next)
    }

    async fn heartbeat(&self, id: &str, attempt: u32, beat: Heartbeat) -> Result<Task> {
        let mut state = self.lock()?;
        let current = state.tasks.get_mut(id).ok_or_else(|| task_not_found(id))?;
        let next = next_heartbeat(current, attempt, &beat)?;
        *current = next.clone();
        Ok(next)
    }

    async fn stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<Task>> {
        Ok(self
            .lock()?
            .tasks
            .values()
            .filter(|task| task.status == TaskStatus::Running)
            .filter(|task| task.heartbeat_at.is_none_or(|beat| beat < cutoff))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl PipelineStore for MemoryTaskStore {
    async fn create_pipeline(&self, pipeline: Pipeline) -> Result<Created<Pipeline>> {
        let mut state = self.lock()?;
        if let Some(key) = &pipeline.spec.idempotency_key {
            let slot = (pipeline.tenant.to_string(), key.clone());
            if let Some(existing) = state
                .pipeline_keys
                .get(&slot)
                .and_then(|id| state.pipelines.get(id))
            {
                return existing_pipeline_for_key(existing.clone(), &pipeline);
            }
            state.pipeline_keys.insert(slot, pipeline.id.to_string());
        }
        state
            .pipelines
            .insert(pipeline.id.to_string(), pipeline.clone());
        Ok(Created::New(pipeline))
    }

    async fn pipeline(&self, id: &str) -> Result<Option<Pipeline>> {
        Ok(self.lock()?.pipelines.get(id).cloned())
    }

    async fn list_pipelines(
        &self,
        tenant: &str,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<PipelinePage> {
        let before = page_token.map(decode_page_token).transpose()?;
        let limit = page_limit(limit);
        let pipelines = self
            .lock()?
            .pipelines
            .values()
            .rev()
            .filter(|p| before.as_deref().is_none_or(|last| p.id.as_str() < last))
            .filter(|p| p.tenant == tenant)
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(pipeline_page_of(pipelines, limit))
    }

    async fn active_pipelines(&self) -> Result<Vec<Pipeline>> {
        Ok(self
            .lock()?
            .pipelines
            .values()
            .filter(|p| p.status.is_active())
            .cloned()
            .collect())
    }

    async fn update_pipeline(&self, next: Pipeline) -> Result<Pipeline> {
        let mut state = self.lock()?;
        let current = state
            .pipelines
            .get_mut(next.id.as_str())
            .ok_or_else(|| pipeline_not_found(&next.id))?;
        let next = next_pipeline(current, next)?;
        *current = next.clone();
        Ok(next)
    }

    async fn cached_task(&self, tenant: &str, digest: &str) -> Result<Option<String>> {
        let slot = (tenant.to_owned(), digest.to_owned());
        Ok(self.lock()?.cache.get(&slot).cloned())
    }

    async fn remember_task(&self, tenant: &str, digest: &str, task: &str) -> Result<()> {
        let slot = (tenant.to_owned(), digest.to_owned());
        self.lock()?.cache.insert(slot, task.to_owned());
        Ok(())
    }
}
