//! Pipelines: submit, read, list, cancel, retry, and the advance that reconcile runs.

use tracing::{info, warn};

use super::Service;
use super::tasks::merge_idempotency_key;
use crate::domain::cache::CacheKey;
use crate::domain::path::printable;
use crate::domain::pipeline::{
    Pipeline, PipelineId, PipelineSpec, PipelineStatus, check_interval, check_pipeline,
};
use crate::domain::task::{FailureCode, Lineage, Task, TaskError, TaskId, TaskStatus};
use crate::domain::tenant::Tenant;
use crate::error::{Error, Resource, Result};
use crate::ports::{Created, PageToken, PipelinePage};

/// Why a due schedule does not fire.
enum Refusal {
    /// For good: the schedule is cancelled.
    Stop(String),
    /// This tick only.
    HoldBack(String),
}

/// How a ready step starts.
enum Start {
    /// From the cache: the earlier task whose output it reuses, and the key that matched.
    Cached(Task, CacheKey),
    Stored(Task),
}

/// What one round over the active pipelines did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// Running pipelines and schedules looked after.
    pub pipelines: usize,
    /// Those that could not advance, each logged.
    pub errors: usize,
}

impl Service {
    /// Validates and stores a pipeline, then starts the steps that wait for nothing. A spec
    /// whose idempotency key was seen before answers the first pipeline.
    pub async fn submit_pipeline(
        &self,
        tenant: &Tenant,
        mut spec: PipelineSpec,
        idempotency_header: Option<&str>,
    ) -> Result<Created<Pipeline>> {
        merge_idempotency_key(&mut spec.idempotency_key, idempotency_header)?;
        check_pipeline(&spec)?;
        if let Some(schedule) = &spec.schedule {
            self.check_new_schedule(tenant, schedule).await?;
        }
        for step in &spec.steps {
            self.scripts
                .check(&step.task.script)
                .await
                .map_err(|err| match err {
                    Error::InvalidRequest(why) => {
                        Error::invalid(format!("step '{}': {why}", printable(&step.task.name)))
                    }
                    other => other,
                })?;
        }
        self.store_pipeline(tenant, spec, None).await
    }

    /// Stores a checked pipeline (a run of `scheduled_by`, if given) and starts the steps
    /// that wait for nothing.
    async fn store_pipeline(
        &self,
        tenant: &Tenant,
        spec: PipelineSpec,
        scheduled_by: Option<PipelineId>,
    ) -> Result<Created<Pipeline>> {
        let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
        let mut pipeline = Pipeline::new(id, tenant, spec, chrono::Utc::now());
        pipeline.scheduled_by = scheduled_by;
        Ok(match self.pipelines.create_pipeline(pipeline).await? {
            Created::New(pipeline) => {
                info!(pipeline = %pipeline.id, name = %pipeline.spec.name, "pipeline submitted");
                // Stored: if this first advance fails, reconcile makes it.
                Created::New(self.advance(pipeline.clone()).await.unwrap_or_else(|err| {
                    warn!(pipeline = %pipeline.id, %err, "first advance failed; reconcile will retry");
                    pipeline
                }))
            }
            existing => existing,
        })
    }

    /// The pipeline if it exists and belongs to the tenant.
    pub async fn pipeline(&self, tenant: &Tenant, id: &PipelineId) -> Result<Pipeline> {
        match self.pipelines.pipeline(id).await? {
            Some(pipeline) if pipeline.tenant == tenant.name => Ok(pipeline),
            _ => Err(Error::not_found(Resource::Pipeline, id.as_str())),
        }
    }

    /// The tenant's pipelines, newest first, a page of `limit` (1-1000, default 100).
    pub async fn list_pipelines(
        &self,
        tenant: &Tenant,
        limit: Option<usize>,
        page_token: Option<&str>,
    ) -> Result<PipelinePage> {
        let limit = super::tasks::page_size(limit)?;
        let page_token = page_token.map(PageToken::parse).transpose()?;
        self.pipelines
            .list_pipelines(&tenant.name, limit, page_token.as_ref())
            .await
    }

    /// Cancels the pipeline: waiting steps never start, and running or pending step tasks
    /// (a completed pipeline's service too) are cancelled.
    pub async fn cancel_pipeline(&self, tenant: &Tenant, id: &PipelineId) -> Result<Pipeline> {
        let (mut pipeline, live) = self
            .modify_pipeline(tenant, id, |pipeline| {
                if !pipeline.can_cancel() {
                    return Err(Error::Conflict(format!(
                        "pipeline {} is already {}",
                        pipeline.id, pipeline.status
                    )));
                }
                Ok(pipeline.cancel(chrono::Utc::now()))
            })
            .await?;
        info!(pipeline = %pipeline.id, tasks = live.len(), "pipeline cancelled");
        for task in self.cancel_step_tasks(&live).await? {
            pipeline.observe(&task);
        }
        // The steps' own statuses are a mirror: losing this write to another only delays it.
        Ok(
            match self.pipelines.update_pipeline(pipeline.clone()).await {
                Ok(mirrored) => mirrored,
                Err(Error::Stale(_)) => pipeline,
                Err(err) => return Err(err),
            },
        )
    }

    /// Resumes a failed or cancelled pipeline from its first step that did not complete.
    pub async fn retry_pipeline(&self, tenant: &Tenant, id: &PipelineId) -> Result<Pipeline> {
        let (pipeline, ()) = self
            .modify_pipeline(tenant, id, |pipeline| {
                pipeline
                    .retry()
                    .map_err(|err| Error::Conflict(err.to_string()))?;
                pipeline.updated_at = chrono::Utc::now();
                Ok(())
            })
            .await?;
        info!(pipeline = %pipeline.id, "pipeline retried");
        self.advance(pipeline).await
    }

    /// Applies `change` to the tenant's pipeline as it is stored now and writes it back,
    /// reading it again whenever another writer came first. Answers the written record and
    /// what `change` returned.
    async fn modify_pipeline<T>(
        &self,
        tenant: &Tenant,
        id: &PipelineId,
        mut change: impl FnMut(&mut Pipeline) -> Result<T>,
    ) -> Result<(Pipeline, T)> {
        loop {
            let mut pipeline = self.pipeline(tenant, id).await?;
            let answer = change(&mut pipeline)?;
            match self.pipelines.update_pipeline(pipeline).await {
                Ok(written) => return Ok((written, answer)),
                Err(Error::Stale(_)) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// One round of every running pipeline and schedule: what `lancer serve` and the AWS
    /// sweeper run. A pipeline that fails to advance is logged and tried again next round.
    pub async fn advance_pipelines(&self) -> Result<Advanced> {
        let mut round = Advanced::default();
        for pipeline in self.pipelines.active_pipelines().await? {
            round.pipelines += 1;
            let id = pipeline.id.clone();
            let advanced = match pipeline.status {
                PipelineStatus::Scheduled => self.fire(pipeline).await,
                _ => self.advance(pipeline).await.map(drop),
            };
            if let Err(err) = advanced {
                warn!(pipeline = %id, %err, "pipeline could not advance");
                round.errors += 1;
            }
        }
        Ok(round)
    }

    /// A new schedule keeps the operator's minimum interval, and its tenant stays within
    /// its number of schedules. (Two submitted at the same instant may both pass the count:
    /// the cap is a bound on a tenant's schedules, not a lock.)
    async fn check_new_schedule(&self, tenant: &Tenant, schedule: &str) -> Result<()> {
        let limits = self.schedule_limits;
        check_interval(schedule, chrono::Utc::now(), limits.min_interval)?;
        let active = self
            .pipelines
            .active_pipelines()
            .await?
            .into_iter()
            .filter(|p| p.status == PipelineStatus::Scheduled && p.tenant == tenant.name)
            .count();
        if active >= limits.per_tenant {
            return Err(Error::Conflict(format!(
                "this tenant has {active} schedules, the most it may (LANCER_TENANT_SCHEDULES); cancel one first"
            )));
        }
        Ok(())
    }

    /// Whether a schedule may fire now: its tenant still has a key, and its schedules
    /// started fewer runs in the last minute than the operator allows; else why not.
    async fn refusal_to_fire(&self, schedule: &Pipeline) -> Result<Option<Refusal>> {
        if let Some(keys) = &self.api_keys
            && !keys.has_tenant(&schedule.tenant)
        {
            return Ok(Some(Refusal::Stop(format!(
                "stopped: tenant '{}' has no API key any more",
                schedule.tenant
            ))));
        }
        let minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
        let allowed = self.schedule_limits.runs_per_minute;
        // The newest pipelines hold the last minute's runs, beside some started by hand.
        let newest = allowed
            .saturating_mul(4)
            .saturating_add(16)
            .min(crate::ports::MAX_PAGE);
        let recent = self
            .pipelines
            .list_pipelines(&schedule.tenant, newest, None)
            .await?
            .pipelines
            .into_iter()
            .filter(|p| p.scheduled_by.is_some() && p.created_at > minute_ago)
            .count();
        if recent >= allowed {
            return Ok(Some(Refusal::HoldBack(format!(
                "a tick was let pass: the tenant's schedules started {recent} runs in the last minute, the most they may (LANCER_TENANT_RUNS_PER_MINUTE)"
            ))));
        }
        Ok(None)
    }

    /// Starts the run a schedule's tick is due for. The run's idempotency key names the
    /// schedule and the tick, so two reconcilers firing the same tick start one run.
    async fn fire(&self, mut schedule: Pipeline) -> Result<()> {
        let Some(tick) = schedule.due_tick(chrono::Utc::now()) else {
            return Ok(());
        };
        if let Some(refusal) = self.refusal_to_fire(&schedule).await? {
            match refusal {
                Refusal::Stop(why) => {
                    warn!(schedule = %schedule.id, %why, "schedule stopped");
                    schedule.stop_schedule(chrono::Utc::now(), why);
                }
                Refusal::HoldBack(why) => {
                    warn!(schedule = %schedule.id, %tick, %why, "tick let pass");
                    schedule.record_held_back(tick, why);
                }
            }
            return match self.pipelines.update_pipeline(schedule).await {
                Ok(_) | Err(Error::Stale(_)) => Ok(()),
                Err(err) => Err(err),
            };
        }
        let mut spec = schedule.run_spec();
        spec.idempotency_key = Some(format!("schedule/{}/{}", schedule.id, tick.to_rfc3339()));
        let run = self
            .store_pipeline(&schedule.tenant(), spec, Some(schedule.id.clone()))
            .await?
            .into_inner();
        info!(schedule = %schedule.id, run = %run.id, %tick, "schedule fired");
        schedule.record_fired(tick, run.id);
        match self.pipelines.update_pipeline(schedule).await {
            // Another reconciler recorded this tick (and found the same run by its key).
            Ok(_) | Err(Error::Stale(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Mirrors the steps' tasks, starts the steps that may start (or completes them from
    /// the cache), and stores the result under the revision it read. Step tasks carry an
    /// idempotency key of the pipeline, the step and its round, so a second process
    /// advancing the same revision submits the same tasks, and only one of the two writes
    /// lands.
    async fn advance(&self, read: Pipeline) -> Result<Pipeline> {
        let mut next = read.clone();
        self.observe_steps(&mut next).await?;
        let now = chrono::Utc::now();
        next.settle(now);
        let started = self.start_ready_steps(&mut next).await?;
        next.settle(now);
        if next == read {
            return Ok(read);
        }
        next.updated_at = now;
        match self.pipelines.update_pipeline(next).await {
            Err(Error::Stale(_)) => self.lost_advance(&read.id, &started).await,
            written => written,
        }
    }

    /// Mirrors each live step's task into the pipeline; a task that completed is
    /// remembered in the tenant's cache under its key.
    async fn observe_steps(&self, pipeline: &mut Pipeline) -> Result<()> {
        let live: Vec<TaskId> = pipeline
            .steps
            .iter()
            .filter(|step| step.status.is_live())
            .filter_map(|step| step.task_id.clone())
            .collect();
        for id in live {
            let Some(task) = self.store.get(&id).await? else {
                continue;
            };
            pipeline.observe(&task);
            if let (TaskStatus::Completed, Some(key)) = (task.status, &task.cache_key) {
                self.pipelines
                    .remember_task(&task.tenant, &key.digest, &task.id)
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts the steps whose upstream steps are done; a step that caches and whose key
    /// matches an earlier completed task completes with that task's output instead.
    async fn start_ready_steps(&self, next: &mut Pipeline) -> Result<Vec<Task>> {
        let tenant = next.tenant();
        let mut started = Vec::new();
        for step in next.ready() {
            let origin = Lineage {
                pipeline: Some(next.id.clone()),
                step: Some(next.steps[step].name.clone()),
                ..Lineage::default()
            };
            let prepared = match self
                .prepare_task(&tenant, next.task_spec(step), origin)
                .await
            {
                Ok(task) => self.reuse_or_store(next.caches(step), task).await,
                Err(err) => Err(err),
            };
            match prepared {
                Ok(Start::Cached(earlier, key)) => next.cached(step, &earlier, key),
                Ok(Start::Stored(task)) => {
                    next.started(step, &task);
                    started.push(task);
                }
                Err(Error::Internal(source)) => return Err(Error::Internal(source)),
                Err(refused) => next.could_not_start(
                    step,
                    TaskError::new(FailureCode::StepNotStarted, refused.to_string()),
                ),
            }
        }
        Ok(started)
    }

    /// The earlier task to reuse when `caches` and the cache holds one for the task's key,
    /// else the task, stored.
    async fn reuse_or_store(&self, caches: bool, task: Task) -> Result<Start> {
        let key = task.cache_key.clone().filter(|_| caches);
        if let Some(key) = key
            && let Some(earlier) = self.cache_hit(&task, &key).await?
        {
            info!(task = %earlier.id, digest = %key.digest, "cache hit");
            return Ok(Start::Cached(earlier, key));
        }
        Ok(Start::Stored(self.store_task(task).await?.into_inner()))
    }

    /// The completed task the tenant's cache holds for `key`, if its output version is
    /// still in the lake.
    async fn cache_hit(&self, task: &Task, key: &CacheKey) -> Result<Option<Task>> {
        let Some(id) = self
            .pipelines
            .cached_task(&task.tenant, &key.digest)
            .await?
        else {
            return Ok(None);
        };
        let Some(earlier) = self.store.get(&id).await? else {
            return Ok(None);
        };
        let usable = earlier.status == TaskStatus::Completed && earlier.tenant == task.tenant;
        let output_kept = match (&earlier.output_path, earlier.lineage.output_version) {
            (None, _) => true,
            (Some(path), Some(version)) => self
                .lake
                .latest_version(path)
                .await?
                .is_some_and(|latest| latest >= version),
            (Some(_), None) => false,
        };
        Ok((usable && output_kept).then_some(earlier))
    }

    /// Another write came first. If it was a cancel, the tasks this round started are
    /// unknown to it, so they are cancelled here.
    async fn lost_advance(&self, id: &PipelineId, started: &[Task]) -> Result<Pipeline> {
        let fresh = self
            .pipelines
            .pipeline(id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Pipeline, id.as_str()))?;
        if fresh.status == PipelineStatus::Cancelled {
            let ids: Vec<TaskId> = started.iter().map(|task| task.id.clone()).collect();
            self.cancel_step_tasks(&ids).await?;
        }
        Ok(fresh)
    }

    /// Cancels the tasks that have not finished; each as it is now.
    async fn cancel_step_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for id in ids {
            let Some(task) = self.store.get(id).await? else {
                continue;
            };
            let now = match self.cancel_current(task).await {
                Ok(cancelled) => Some(cancelled),
                // It finished first: as it finished.
                Err(Error::Conflict(_)) => self.store.get(id).await?,
                Err(err) => return Err(err),
            };
            tasks.extend(now);
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::task::Change;
    use crate::scripts::MemoryScripts;

    fn service() -> Service {
        Service::in_memory(
            MemoryScripts::default().with_script("job.py", b"def run(i, o, p):\n    return {}\n"),
        )
    }

    /// Two processes that read the same revision both submit the next step: the step's
    /// idempotency key makes that one task, and only one of their writes lands.
    #[tokio::test]
    async fn two_advances_from_the_same_revision_start_the_next_step_once() {
        let service = service();
        let spec = serde_json::from_value(json!({"name": "flow", "steps": [
            {"name": "clean", "script": "job.py", "output": "digits"},
            {"name": "train", "script": "job.py", "input": "${steps.clean.output}"},
        ]}))
        .expect("spec");
        let tenant = Tenant::single();
        let pipeline = service
            .submit_pipeline(&tenant, spec, None)
            .await
            .expect("submit")
            .into_inner();
        let clean = pipeline.steps[0].task_id.clone().expect("clean started");
        let task = service.store.get(&clean).await.expect("get").expect("task");
        let start = Change::Start {
            backend: "test".into(),
        };
        let running = service
            .store
            .transition(&clean, task.guard(), start)
            .await
            .expect("start");
        let done = Change::Complete { result: json!({}) };
        service
            .store
            .transition(&clean, running.guard(), done)
            .await
            .expect("complete");
        let read = service.pipeline(&tenant, &pipeline.id).await.expect("read");
        let first = service.advance(read.clone()).await.expect("first");
        let second = service.advance(read).await.expect("second");
        assert_eq!(first.revision, second.revision, "the second write lost");
        assert_eq!(first.steps[1].task_id, second.steps[1].task_id);
        let page = service
            .list_tasks(&tenant, Default::default(), None, None)
            .await
            .expect("list");
        assert_eq!(page.tasks.len(), 2, "clean and one train");
    }

    /// Two reconcilers that read a schedule at the same revision both fire its tick: the
    /// run's idempotency key (the schedule and the tick) makes that one run.
    #[tokio::test]
    async fn two_reconcilers_firing_the_same_tick_start_one_run() {
        let service = service();
        let spec: PipelineSpec = serde_json::from_value(json!({"name": "nightly",
            "schedule": "* * * * *", "steps": [{"name": "clean", "script": "job.py"}]}))
        .expect("spec");
        let tenant = Tenant::single();
        let two_minutes_ago = chrono::Utc::now() - chrono::Duration::minutes(2);
        let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
        let schedule = Pipeline::new(id, &tenant, spec, two_minutes_ago);
        let read = service
            .pipelines
            .create_pipeline(schedule)
            .await
            .expect("create")
            .into_inner();
        service.fire(read.clone()).await.expect("first");
        service.fire(read).await.expect("second");
        let page = service
            .list_pipelines(&tenant, None, None)
            .await
            .expect("list");
        let runs: Vec<_> = page
            .pipelines
            .iter()
            .filter(|p| p.scheduled_by.is_some())
            .collect();
        assert_eq!(runs.len(), 1, "one run for the tick");
        let stored = service
            .pipeline(&tenant, &id_of(&page))
            .await
            .expect("schedule");
        assert_eq!(stored.fired.map(|f| f.runs), Some(vec![runs[0].id.clone()]));
    }

    fn id_of(page: &PipelinePage) -> PipelineId {
        page.pipelines
            .iter()
            .find(|p| p.status == PipelineStatus::Scheduled)
            .map(|p| p.id.clone())
            .expect("the schedule")
    }
}
