//! The in-memory TaskStore, PipelineStore and ModelStore: the fake every test of a caller
//! can use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    existing_for_key, existing_pipeline_for_key, next_heartbeat, next_model, next_pipeline,
    next_record, page_limit, page_of, page_start, pipeline_not_found, pipeline_page_of,
    task_not_found,
};
use crate::domain::cache::Digest;
use crate::domain::model::{ModelName, ModelRecord};
use crate::domain::path::Name;
use crate::domain::pipeline::{Pipeline, PipelineId};
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskId, TaskStatus};
use crate::domain::tenant::TenantName;
use crate::error::{Error, Result};
use crate::ports::{
    Created, ListQuery, ModelStore, PageToken, PipelinePage, PipelineStore, TaskPage, TaskStore,
};

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, Task>,
    keys: HashMap<(String, String), String>,
    pipelines: BTreeMap<String, Pipeline>,
    pipeline_keys: HashMap<(String, String), String>,
    cache: HashMap<(TenantName, Digest), TaskId>,
    models: HashMap<(TenantName, ModelName), ModelRecord>,
}

/// The in-memory `TaskStore`, `PipelineStore` and `ModelStore`, deciding every write by the same rules as
/// the real stores.
#[derive(Default)]
pub struct MemoryTaskStore {
    state: Mutex<State>,
}

impl MemoryTaskStore {
    /// An empty store.
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

    async fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        Ok(self.lock()?.tasks.get(id.as_str()).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage> {
        let state = self.lock()?;
        let before = page_start(query.page_token.as_ref());
        let limit = page_limit(query.limit);
        let tasks: Vec<Task> = state
            .tasks
            .values()
            .rev()
            .filter(|task| before.as_deref().is_none_or(|last| task.id.as_str() < last))
            .filter(|task| {
                query
                    .tenant
                    .as_ref()
                    .map(TenantName::as_str)
                    .is_none_or(|tenant| task.tenant == tenant)
            })
            .filter(|task| query.status.is_none_or(|status| task.status == status))
            .filter(|task| {
                query
                    .name_prefix
                    .as_ref()
                    .map(Name::as_str)
                    .is_none_or(|prefix| task.spec.name.starts_with(prefix))
            })
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(page_of(tasks, limit))
    }

    async fn transition(&self, id: &TaskId, guard: Guard, change: Change) -> Result<Task> {
        let id = id.as_str();
        let mut state = self.lock()?;
        let current = state.tasks.get_mut(id).ok_or_else(|| task_not_found(id))?;
        let next = next_record(current, guard, change)?;
        *current = next.clone();
        Ok(next)
    }

    async fn heartbeat(&self, id: &TaskId, attempt: u32, beat: Heartbeat) -> Result<Task> {
        let id = id.as_str();
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

    async fn pipeline(&self, id: &PipelineId) -> Result<Option<Pipeline>> {
        Ok(self.lock()?.pipelines.get(id.as_str()).cloned())
    }

    async fn list_pipelines(
        &self,
        tenant: &TenantName,
        limit: usize,
        page_token: Option<&PageToken>,
    ) -> Result<PipelinePage> {
        let tenant = tenant.as_str();
        let before = page_start(page_token);
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
            .ok_or_else(|| pipeline_not_found(next.id.as_str()))?;
        let next = next_pipeline(current, next)?;
        *current = next.clone();
        Ok(next)
    }

    async fn cached_task(&self, tenant: &TenantName, digest: &Digest) -> Result<Option<TaskId>> {
        let slot = (tenant.clone(), digest.clone());
        Ok(self.lock()?.cache.get(&slot).cloned())
    }

    async fn remember_task(
        &self,
        tenant: &TenantName,
        digest: &Digest,
        task: &TaskId,
    ) -> Result<()> {
        let slot = (tenant.clone(), digest.clone());
        self.lock()?.cache.insert(slot, task.clone());
        Ok(())
    }
}

#[async_trait]
impl ModelStore for MemoryTaskStore {
    async fn model_record(
        &self,
        tenant: &TenantName,
        model: &ModelName,
    ) -> Result<Option<ModelRecord>> {
        let slot = (tenant.clone(), model.clone());
        Ok(self.lock()?.models.get(&slot).cloned())
    }

    async fn update_model(&self, next: ModelRecord) -> Result<ModelRecord> {
        let mut state = self.lock()?;
        let slot = (next.tenant.clone(), next.model.clone());
        let next = next_model(state.models.get(&slot), next)?;
        state.models.insert(slot, next.clone());
        Ok(next)
    }

    async fn delete_model_record(&self, tenant: &TenantName, model: &ModelName) -> Result<()> {
        let slot = (tenant.clone(), model.clone());
        self.lock()?.models.remove(&slot);
        Ok(())
    }

    async fn serving_models(&self) -> Result<Vec<ModelRecord>> {
        Ok(self
            .lock()?
            .models
            .values()
            .filter(|record| record.is_served())
            .cloned()
            .collect())
    }
}
