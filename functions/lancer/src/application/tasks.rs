//! Tasks: submit, read, list, cancel, and read logs.

use std::net::SocketAddr;

use super::Service;

use crate::domain::cache::CacheKey;
use crate::domain::endpoint::{Reported, Reserved, check_target};
use crate::domain::path::{LakePath, Name, printable};
use crate::domain::progress::ProgressHistory;
use crate::domain::task::{Change, Lineage, Task, TaskId, TaskSpec, TaskStatus};
use crate::domain::tenant::Tenant;
use crate::domain::validate::{
    ArtifactKind, InputRef, check_idempotency_key, check_spec, is_artifact, parse_input,
    resolve_output, split_version,
};
use crate::error::{Error, Resource, Result};
use crate::ports::{Created, ListQuery, LogChunk, PageToken, TaskPage, TaskStore};
use crate::telemetry::{self, DISPATCH};

/// The most log bytes one read returns: well inside Lambda's 6 MB response limit.
pub const MAX_LOG_CHUNK: u64 = 1 << 20;

/// Which part of which attempt's log to read; unset fields take the defaults.
/// Which piece of a task's log a client asks for.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogRequest {
    /// 1 to the task's attempts so far (default: the latest).
    pub attempt: Option<u32>,
    /// The byte offset to read from (default 0).
    pub offset: Option<u64>,
    /// 1 to [`MAX_LOG_CHUNK`] (the default).
    pub limit: Option<u64>,
}

/// Which of a tenant's tasks a listing shows, as the query string gave them.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskFilter<'a> {
    /// Only tasks in this status, as its name (`pending`, `running`, ...).
    pub status: Option<&'a str>,
    /// The start of the task's name.
    pub name: Option<&'a str>,
}

/// The most bytes of a stored progress history read back: its bounds (2,000 points of
/// 2 KiB) with room to spare.
const MAX_HISTORY_BYTES: u64 = 8 << 20;

/// An attempt's progress history.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TaskProgress {
    /// The task the history belongs to.
    pub task_id: String,
    /// The attempt whose reports these are.
    pub attempt: u32,
    /// The task's status when the history was read.
    pub status: TaskStatus,
    /// The reports, oldest first, with what was thinned out.
    #[serde(flatten)]
    pub history: ProgressHistory,
}

/// A piece of a task's log, ending at a line end unless it reaches the log's end.
#[derive(Debug)]
pub struct TaskLog {
    /// The bytes, and the offset to continue from.
    pub chunk: LogChunk,
    /// The attempt whose log it is.
    pub attempt: u32,
    /// The task's status when the log was read: a finished task's log grows no more.
    pub status: TaskStatus,
}

/// Takes the key a transport carries beside the body (`Idempotency-Key`) into the body's
/// own field; the two must agree.
pub(super) fn merge_idempotency_key(
    field: &mut Option<String>,
    header: Option<&str>,
) -> Result<()> {
    let Some(key) = header else {
        return Ok(());
    };
    check_idempotency_key(key)?;
    if field.as_ref().is_some_and(|field| field != key) {
        return Err(Error::invalid(
            "Idempotency-Key header and idempotency_key field differ",
        ));
    }
    *field = Some(key.to_owned());
    Ok(())
}

/// The attempt asked for, 1 to the task's attempts so far (default: the latest).
fn check_attempt(task: &Task, attempt: Option<u32>) -> Result<u32> {
    let latest = task.attempt.max(1);
    let attempt = attempt.unwrap_or(latest);
    if !(1..=latest).contains(&attempt) {
        return Err(Error::invalid(format!(
            "attempt must be between 1 and {latest}, the task's attempts so far"
        )));
    }
    Ok(attempt)
}

/// A listing's page size: 1-1000, 100 unless asked.
pub(super) fn page_size(limit: Option<usize>) -> Result<usize> {
    let limit = limit.unwrap_or(100);
    if !(1..=crate::ports::MAX_PAGE).contains(&limit) {
        return Err(Error::invalid("limit must be between 1 and 1000"));
    }
    Ok(limit)
}

impl Service {
    /// Validates, resolves and stores a task, then hands it to the dispatcher. A spec whose
    /// idempotency key was seen before answers the first task. `idempotency_header` is the
    /// key a transport carries beside the body (`Idempotency-Key`); it must agree with the
    /// spec's own field.
    pub async fn submit_task(
        &self,
        tenant: &Tenant,
        mut spec: TaskSpec,
        idempotency_header: Option<&str>,
    ) -> Result<Created> {
        merge_idempotency_key(&mut spec.idempotency_key, idempotency_header)?;
        self.create_task(tenant, spec, Lineage::default()).await
    }

    /// Validates, resolves and stores a task whose lineage starts as `lineage` (the
    /// pipeline step it runs), then hands it to the dispatcher.
    pub(super) async fn create_task(
        &self,
        tenant: &Tenant,
        spec: TaskSpec,
        lineage: Lineage,
    ) -> Result<Created> {
        let task = self.prepare_task(tenant, spec, lineage).await?;
        self.store_task(task).await
    }

    /// A new task from a spec, not yet stored: validated, its input and output resolved in
    /// the tenant's folder, its input pinned to a version, and its cache key computed.
    pub(super) async fn prepare_task(
        &self,
        tenant: &Tenant,
        spec: TaskSpec,
        lineage: Lineage,
    ) -> Result<Task> {
        let id = TaskId::from_uuid(uuid::Uuid::now_v7());
        self.prepare_task_as(&id, tenant, spec, lineage).await
    }

    /// `prepare_task` with the id the caller chose (a replica's, written in its model's
    /// record before its task is created).
    pub(super) async fn prepare_task_as(
        &self,
        id: &TaskId,
        tenant: &Tenant,
        spec: TaskSpec,
        mut lineage: Lineage,
    ) -> Result<Task> {
        check_spec(&spec)?;
        let content = self.scripts.content(&spec.script).await?;
        let (input, pinned) = split_version(&spec.input)?;
        let input_path = match parse_input(input)? {
            InputRef::None => None,
            InputRef::Path(path) if pinned.is_some() && !is_artifact(&path) => {
                return Err(Error::invalid(format!(
                    "input '{}': only a dataset or a model has versions",
                    printable(&spec.input)
                )));
            }
            InputRef::Path(path) => Some(tenant.path(&path)),
            InputRef::Name(name) => Some(self.resolve_input_name(tenant, &name).await?),
        };
        // A Lance input is read at the version current now, unless pinned.
        let lance_input = input_path.as_ref().filter(|path| is_artifact(path));
        lineage.input_version = match (lance_input, pinned) {
            (Some(_), Some(pinned)) => Some(pinned),
            (Some(path), None) => self.lake.latest_version(path).await?,
            (None, _) => None,
        };
        // The cache key holds that version, or for other inputs (`raw/`) a fingerprint of
        // their objects.
        let input_version = match (&input_path, lance_input) {
            (Some(_), Some(_)) => lineage.input_version.map(|version| version.to_string()),
            (Some(path), None) => self.lake.fingerprint(path).await?,
            (None, _) => None,
        };
        let output_path = resolve_output(&spec.output)?.map(|path| tenant.path(&path));
        let cache_key = CacheKey::new(
            &spec.script,
            &content,
            &spec.params,
            input_path
                .as_ref()
                .map(|path| (path.to_string(), input_version)),
            output_path.as_ref().map(LakePath::to_string),
        );
        let mut task = Task::new(
            id,
            tenant,
            spec,
            input_path,
            output_path,
            chrono::Utc::now(),
        );
        task.lineage = lineage;
        task.cache_key = Some(cache_key);
        Ok(task)
    }

    /// Stores a prepared task and hands it to the dispatcher; a task holding the same
    /// idempotency key is answered instead.
    pub(super) async fn store_task(&self, task: Task) -> Result<Created> {
        let created = self.store.create(task).await?;
        if let Created::New(task) = &created {
            // The task is safely stored; a dispatcher hiccup is healed by reconcile.
            let started = std::time::Instant::now();
            let outcome = self.dispatcher.submit(task).await;
            let labels = [
                ("backend", self.dispatcher.backend()),
                ("outcome", if outcome.is_ok() { "ok" } else { "error" }),
            ];
            telemetry::global().observe(DISPATCH, &labels, started.elapsed().as_secs_f64());
            if let Err(err) = outcome {
                tracing::error!(task = %task.id, %err, "dispatch failed; reconcile will retry");
            }
        }
        Ok(created)
    }

    /// A bare name as input: the tenant's dataset of that name, else its model.
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

    /// The task if it exists and belongs to the tenant; another tenant's task, and an id
    /// that is no task id at all, are not found.
    pub async fn task(&self, tenant: &Tenant, id: &TaskId) -> Result<Task> {
        match self.store.get(id).await? {
            Some(task) if task.tenant == tenant.name.as_str() => Ok(task),
            _ => Err(Error::not_found(Resource::Task, id.as_str())),
        }
    }

    /// The tenant's tasks, newest first, a page of `limit` (1-1000, default 100) at a time,
    /// only those in `status` and whose name starts with `name` when given.
    pub async fn list_tasks(
        &self,
        tenant: &Tenant,
        filter: TaskFilter<'_>,
        limit: Option<usize>,
        page_token: Option<String>,
    ) -> Result<TaskPage> {
        let status = filter
            .status
            .map(str::parse::<TaskStatus>)
            .transpose()
            .map_err(Error::InvalidRequest)?;
        // A start of a name is itself a name: the same characters, the same first one.
        let name_prefix = filter
            .name
            .map(|name| Name::parse("name", name))
            .transpose()?;
        let page_token = page_token.as_deref().map(PageToken::parse).transpose()?;
        let limit = page_size(limit)?;
        self.store
            .list(&ListQuery {
                tenant: Some(tenant.name.clone()),
                status,
                name_prefix,
                limit,
                page_token,
            })
            .await
    }

    /// Cancels a pending or running task and stops its runner; a finished one is a conflict.
    pub async fn cancel_task(&self, tenant: &Tenant, id: &TaskId) -> Result<Task> {
        let task = self.task(tenant, id).await?;
        self.cancel_current(task).await
    }

    /// Cancels a task from the state read, reading it again while a runner moves it on
    /// (pending -> running), and stops its runner; a finished task is a conflict.
    pub(super) async fn cancel_current(&self, mut task: Task) -> Result<Task> {
        let cancelled = loop {
            match cancel_in_store(self.store.as_ref(), &task).await {
                // A finished task answers Conflict before any write, so this ends.
                Err(Error::Stale(_)) => {
                    task = self
                        .store
                        .get(&task.id)
                        .await?
                        .ok_or_else(|| Error::not_found(Resource::Task, task.id.as_str()))?;
                }
                other => break other?,
            }
        };
        self.dispatcher.cancel(&cancelled).await?;
        Ok(cancelled)
    }

    /// A piece of an attempt's log: from the lake, where runners flush it, or from the
    /// dispatcher while a runner has not flushed yet.
    pub async fn task_log(
        &self,
        tenant: &Tenant,
        id: &TaskId,
        request: LogRequest,
    ) -> Result<TaskLog> {
        let task = self.task(tenant, id).await?;
        self.log_of_task(&task, request).await
    }

    /// As `task_log`, for a task already read (and checked to be the tenant's).
    pub async fn log_of_task(&self, task: &Task, request: LogRequest) -> Result<TaskLog> {
        let offset = request.offset.unwrap_or(0);
        let limit = request.limit.unwrap_or(MAX_LOG_CHUNK);
        if !(1..=MAX_LOG_CHUNK).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_LOG_CHUNK}"
            )));
        }
        let attempt = check_attempt(task, request.attempt)?;
        let chunk = match self
            .lake
            .read_from(&task.log_of(attempt), offset, limit)
            .await?
        {
            Some(chunk) => chunk,
            None => match self.dispatcher.logs(task).await? {
                Some(text) => LogChunk::slice(text.as_bytes(), offset, limit),
                None => LogChunk::slice(&[], 0, limit),
            },
        };
        Ok(TaskLog {
            chunk: chunk.at_a_line_end(),
            attempt,
            status: task.status,
        })
    }

    /// Every progress report of an attempt (default: the latest) with its time, as the
    /// runner keeps it in the lake; empty before the script's first report.
    pub async fn task_progress(
        &self,
        tenant: &Tenant,
        id: &TaskId,
        attempt: Option<u32>,
    ) -> Result<TaskProgress> {
        let task = self.task(tenant, id).await?;
        let attempt = check_attempt(&task, attempt)?;
        let history = match self
            .lake
            .read_from(&task.progress_of(attempt), 0, MAX_HISTORY_BYTES)
            .await?
        {
            Some(chunk) => serde_json::from_slice(&chunk.bytes).map_err(Error::internal)?,
            None => ProgressHistory::default(),
        };
        Ok(TaskProgress {
            task_id: task.id.to_string(),
            attempt,
            status: task.status,
            history,
        })
    }

    /// Where a tenant's running serving task answers. The script's report is a claim: the
    /// proxy goes to the address its dispatcher confirms, and never to a reserved port or
    /// a link-local or metadata address (`domain::endpoint`).
    pub async fn serving_endpoint(
        &self,
        tenant: &Tenant,
        id: &TaskId,
        reserved: &Reserved,
    ) -> Result<SocketAddr> {
        let task = self.task(tenant, id).await?;
        if task.status != TaskStatus::Running {
            return Err(Error::Conflict(format!(
                "task {} is {}, not serving",
                task.id,
                task.status.as_str()
            )));
        }
        let reported = task.endpoint.as_deref().ok_or_else(|| {
            Error::Conflict(format!("task {} has not reported an endpoint yet", task.id))
        })?;
        self.confirm_endpoint(&task, reported, reserved)
            .await?
            .map_err(|why| {
                tracing::warn!(task = %task.id, reported, %why, "a reported endpoint is refused");
                Error::BadGateway(format!("task {}'s endpoint is refused: {why}", task.id))
            })
    }

    /// Where `task`'s `reported` endpoint may be reached: the address its dispatcher
    /// confirms, unless the rules refuse it (the inner `Err` says why). The one check
    /// behind the task proxy and the alias's replicas.
    pub(super) async fn confirm_endpoint(
        &self,
        task: &Task,
        reported: &str,
        reserved: &Reserved,
    ) -> Result<Result<SocketAddr, String>> {
        let reported = match Reported::parse(reported) {
            Ok(reported) => reported,
            Err(err) => return Ok(Err(err.to_string())),
        };
        let Some(confirmed) = self.dispatcher.endpoint_of(task, reported).await? else {
            return Ok(Err("no process of the task listens there".into()));
        };
        Ok(check_target(confirmed, reserved)
            .map(|()| confirmed)
            .map_err(|err| err.to_string()))
    }
}

/// Cancels a task the way every entry point does: CAS to cancelled from the state read.
pub async fn cancel_in_store(store: &dyn TaskStore, task: &Task) -> Result<Task> {
    if task.status.is_terminal() {
        return Err(Error::Conflict(format!(
            "task {} is already {}",
            task.id, task.status
        )));
    }
    store
        .transition(&task.id, task.guard(), Change::Cancel)
        .await
}
