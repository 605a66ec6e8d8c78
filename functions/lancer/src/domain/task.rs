//! The task record and its state machine. Pure data and pure functions: no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::cache::CacheKey;
use super::id::PipelineId;
pub use super::id::TaskId;
use super::path::{LakePath, Name};
use super::tenant::{Tenant, TenantName};

/// Lifecycle of a task. Terminal states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Stored, waiting for a runner to claim it (again, after a requeue).
    Pending,
    /// A runner claimed it and keeps its lease with heartbeats.
    Running,
    /// The script finished and its result is recorded.
    Completed,
    /// It ended with an error (`error` says why): its script failed, it could not run, or
    /// its runner was lost with no attempt left.
    Failed,
    /// Cancelled, by its client or its pipeline, before it ended.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in the order of the lifecycle.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Whether the status is final: completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The edges of the state machine. `running -> pending` is the single recovery edge:
    /// a runner whose heartbeat lease expired is retried while attempts remain.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, Pending)
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status '{s}': expected pending, running, completed, failed or cancelled")
            })
    }
}

/// What a task may use while it runs. Dispatchers that schedule (Ray) honour all of it;
/// the local dispatcher runs one batch task per concurrency slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// CPUs the task reserves, fractions allowed: more than 0 and at most 1024; 1 by default.
    pub cpus: f64,
    /// GPUs the task reserves, from 0 (the default) to 64.
    pub gpus: f64,
    /// Memory the task reserves, in MiB (at most 16 TiB); 0, the default, reserves none.
    pub memory_mb: u64,
    /// Ray custom resources the task's node must offer, such as `{"serve": 1}` for the
    /// KubeRay worker group behind the serving Service (`infra/k8s/`). At most 16 names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, f64>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            gpus: 0.0,
            memory_mb: 0,
            custom: BTreeMap::new(),
        }
    }
}

/// What a client submits: the design's task fields plus scheduling knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Names the task for people, following the name rule; a pipeline step's task has the
    /// step's name.
    pub name: String,
    /// A Python file with `run()` or an executable, relative to the scripts root.
    pub script: String,
    /// A dataset or model name, or a lake-relative path (`datasets/..`, `models/..`, `raw/..`).
    #[serde(default)]
    pub input: String,
    /// A dataset name, or a lake-relative `datasets/..` or `models/..` path; empty for services.
    #[serde(default)]
    pub output: String,
    /// Any JSON the script gets as its params (`run()`'s `params`, or `--params-file`); at
    /// most 64 KiB.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// What the task may use while it runs.
    #[serde(default)]
    pub resources: Resources,
    /// How many attempts the task may have, 1 to 10 (default 1): an attempt whose runner was
    /// lost (its lease expired, or its Ray job failed) is retried while fewer have run.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// A key of the tenant's choosing, 1-255 printable ASCII: submitting it again answers the
    /// task first submitted with it. The `Idempotency-Key` header sets it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn default_max_attempts() -> u32 {
    1
}

/// Why a task ended failed (or its attempt was retried): every code a task can carry,
/// listed once here and, through the schema, in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureCode {
    /// The script exited non-zero, was killed, or raised.
    ScriptFailed,
    /// The task names a script the registry no longer holds or cannot run.
    ScriptNotFound,
    /// The script's process could not be started.
    ScriptStartFailed,
    /// `LANCER_SANDBOX=required` on a kernel that cannot confine scripts.
    SandboxUnavailable,
    /// The pinned input version is not in the lake.
    InputVersionNotFound,
    /// The script's result is over the size a task record holds.
    ResultTooLarge,
    /// The script's result is not a JSON object.
    ResultInvalid,
    /// The runner itself failed (the server log says why).
    RunnerError,
    /// The attempt's runner stopped sending heartbeats.
    LeaseExpired,
    /// The backend (Ray) cannot be reached.
    BackendUnavailable,
    /// The backend refused the job (a 4xx).
    BackendRejected,
    /// The backend failed to take the job (a 5xx or an unreadable answer).
    BackendError,
    /// Ray reports the job failed before its runner settled the task.
    RayJobFailed,
    /// Ray reports the job stopped before its runner settled the task.
    RayJobStopped,
    /// A pipeline step the platform refused to start (its spec or quota).
    StepNotStarted,
}

impl std::fmt::Display for FailureCode {
    /// The code as the API spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(Value::String(code)) => f.write_str(&code),
            _ => Err(std::fmt::Error),
        }
    }
}

/// How an attempt's script is confined: Landlock, its own namespaces (PID, IPC, mount),
/// and no capability. The API spells it as its parts joined by `+`
/// (`landlock+namespaces+nocaps`), or `none`; records written before a part existed
/// still read, without it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxLevel {
    /// Landlock limits the files the script may read and write.
    pub landlock: bool,
    /// The script runs in its own PID, IPC and mount namespaces.
    pub namespaces: bool,
    /// The script holds no capability.
    pub no_capabilities: bool,
}

/// The parts of a `SandboxLevel`, in the order it is written.
const SANDBOX_PARTS: [&str; 3] = ["landlock", "namespaces", "nocaps"];

impl SandboxLevel {
    fn parts(self) -> [bool; 3] {
        [self.landlock, self.namespaces, self.no_capabilities]
    }
}

impl std::fmt::Display for SandboxLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = SANDBOX_PARTS
            .iter()
            .zip(self.parts())
            .filter_map(|(name, on)| on.then_some(*name))
            .collect();
        match parts.as_slice() {
            [] => f.write_str("none"),
            parts => f.write_str(&parts.join("+")),
        }
    }
}

impl std::str::FromStr for SandboxLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut level = Self::default();
        if text == "none" {
            return Ok(level);
        }
        for part in text.split('+') {
            let flag = match part {
                "landlock" => &mut level.landlock,
                "namespaces" => &mut level.namespaces,
                "nocaps" => &mut level.no_capabilities,
                other => return Err(format!("unknown sandbox part '{other}'")),
            };
            *flag = true;
        }
        Ok(level)
    }
}

impl Serialize for SandboxLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SandboxLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a task failed: a code from the closed list, and a message for its tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    /// Which failure it was, from the closed list.
    pub code: FailureCode,
    /// What went wrong, shown to the task's tenant: never the server's paths or secrets.
    pub message: String,
}

impl TaskError {
    /// An error of `code`, with `message` for the task's tenant.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The last progress line a script wrote to `LANCER_PROGRESS_FILE`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// How far along the script says it is, from 0 to 1 (as reported: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// A line for people, such as `epoch 2/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Any JSON the script adds, usually named numbers such as `{"loss": 0.31}`: the
    /// progress history groups reports into series by their names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub metrics: Option<Value>,
}

/// A task's record: its spec, where it stands in the state machine, and what its attempts
/// recorded. Every state change is a compare-and-set on its `guard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// The task's id, a UUIDv7.
    #[schema(value_type = String)]
    pub id: TaskId,
    /// The tenant that owns it; no other tenant's request finds it.
    #[schema(value_type = String)]
    pub tenant: TenantName,
    /// The tenant's folder in the lake: what the script gets as `LANCER_LAKE`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub tenant_root: LakePath,
    /// What the client submitted (for a pipeline step, the step's spec with its input and
    /// idempotency key filled in).
    pub spec: TaskSpec,
    /// Where it stands in the state machine.
    pub status: TaskStatus,
    /// How many times a runner has claimed this task.
    pub attempt: u32,
    /// `input` resolved to a lake-relative path (tenant folder included); empty when none.
    #[serde(with = "super::path::optional")]
    #[schema(value_type = String)]
    pub input_path: Option<LakePath>,
    /// `output` resolved to a lake-relative path (tenant folder included); empty when none.
    #[serde(with = "super::path::optional")]
    #[schema(value_type = String)]
    pub output_path: Option<LakePath>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When a runner last claimed it: the start of the latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached completed, failed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The current attempt's latest heartbeat; once it is older than the lease, the attempt
    /// is requeued or failed. Cleared by a requeue.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The script's result, a JSON object, once it completed.
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    /// Why it failed, or why its last attempt was requeued; cleared when an attempt starts.
    pub error: Option<TaskError>,
    /// The last progress line the script reported.
    pub progress: Option<Progress>,
    /// The backend whose runner claimed the latest attempt (`local`, `ray`); unset until one
    /// has.
    pub backend: Option<String>,
    /// URL of a serving task once its script reported one.
    pub endpoint: Option<String>,
    /// How the current attempt's script is confined, its parts joined by `+`: `landlock`,
    /// `namespaces` (its own PID, IPC and mount namespaces) and `nocaps` (no capability),
    /// or `none` with the sandbox off; unset until a runner started it.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "landlock+namespaces+nocaps")]
    pub sandbox: Option<SandboxLevel>,
    /// Lake-relative path of the current attempt's log (`logs/<id>/<attempt>.log`): each
    /// attempt writes its own, so a retry never erases or mixes with an earlier one.
    #[serde(alias = "logs_uri")]
    #[schema(value_type = String)]
    pub log_path: LakePath,
    /// Which versions it read and wrote, and the pipeline step that started it.
    #[serde(default)]
    pub lineage: Lineage,
    /// What its result depends on: a pipeline step with `cache: true` whose key matches
    /// an earlier completed task reuses that task's output instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<CacheKey>,
}

/// Where a task's data came from and went: Lance versions, so a model names the exact
/// dataset it was trained on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lineage {
    /// The version of `input_path` the script was given (`LANCER_INPUT_VERSION`): pinned by
    /// an input of `name@N`, else the latest when the task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_version: Option<u64>,
    /// The version of `output_path` once the task completed; that version of the dataset
    /// carries the tag `lancer-task-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_version: Option<u64>,
    /// The pipeline whose step this task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pipeline: Option<PipelineId>,
    /// The name of the pipeline step this task runs, beside `pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl Task {
    /// A new pending task of `tenant`, its log at `logs/<id>.log` in the tenant's folder.
    pub fn new(
        id: &TaskId,
        tenant: &Tenant,
        spec: TaskSpec,
        input_path: Option<LakePath>,
        output_path: Option<LakePath>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: id.clone(),
            tenant: tenant.name.clone(),
            tenant_root: tenant.root.clone(),
            spec,
            status: TaskStatus::Pending,
            attempt: 0,
            input_path,
            output_path,
            created_at: now,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            result: None,
            error: None,
            progress: None,
            backend: None,
            endpoint: None,
            sandbox: None,
            log_path: log_of(&tenant.root, id.as_name(), 1, ".log"),
            lineage: Lineage::default(),
            cache_key: None,
        }
    }

    /// The lake path of one attempt's log.
    pub fn log_of(&self, attempt: u32) -> LakePath {
        log_of(&self.tenant_root, self.id.as_name(), attempt, ".log")
    }

    /// The lake path of one attempt's progress history, beside its log.
    pub fn progress_of(&self, attempt: u32) -> LakePath {
        log_of(
            &self.tenant_root,
            self.id.as_name(),
            attempt,
            ".progress.json",
        )
    }

    /// The lake folder kept for the task's checkpoints (`LANCER_CHECKPOINT_DIR`): the same
    /// for every attempt, and for a pipeline step the same across the pipeline's retries.
    pub fn checkpoint_dir(&self) -> LakePath {
        let step = match (&self.lineage.pipeline, &self.lineage.step) {
            (Some(pipeline), Some(step)) => LakePath::parse(
                "checkpoint",
                &format!("checkpoints/pipelines/{pipeline}/{step}"),
            )
            .ok(),
            _ => None,
        };
        let folder = step.unwrap_or_else(|| {
            let tasks = LakePath::parse("checkpoint", "checkpoints/tasks").expect("a valid folder");
            tasks.child(self.id.as_name())
        });
        self.tenant_root.join(&folder)
    }

    /// The precondition of a compare-and-set write against this record as it is now.
    pub fn guard(&self) -> Guard {
        Guard {
            status: self.status,
            attempt: self.attempt,
        }
    }
}

/// `logs/<id>/<attempt><suffix>` in the tenant's folder.
fn log_of(tenant_root: &LakePath, id: &Name, attempt: u32, suffix: &'static str) -> LakePath {
    let logs = LakePath::parse("logs", "logs").expect("a valid folder");
    let attempt = Name::parse("attempt", &attempt.to_string()).expect("digits are a name");
    tenant_root
        .join(&logs)
        .child(id)
        .child_with_suffix(&attempt, suffix)
}

/// What a conditional write expects to find: the status and the attempt it read.
/// Including the attempt stops a runner of an expired attempt from finishing a retried one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The status the writer read.
    pub status: TaskStatus,
    /// The attempt the writer read.
    pub attempt: u32,
}

/// A state change. `apply` turns one into the next record; stores write it under a `Guard`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// pending -> running: a runner claimed the task.
    Start {
        /// The backend whose runner claimed it, recorded as the task's `backend`.
        backend: String,
    },
    /// running -> completed with the script's result.
    Complete {
        /// The script's result, a JSON object.
        result: Value,
    },
    /// running -> failed.
    Fail {
        /// Why it failed.
        error: TaskError,
    },
    /// pending | running -> cancelled.
    Cancel,
    /// running -> pending: the lease expired and attempts remain.
    Requeue {
        /// Why the attempt ended, kept on the task while it waits for the next.
        error: TaskError,
    },
}

impl Change {
    /// The status the change leads to.
    pub fn target(&self) -> TaskStatus {
        match self {
            Change::Start { .. } => TaskStatus::Running,
            Change::Complete { .. } => TaskStatus::Completed,
            Change::Fail { .. } => TaskStatus::Failed,
            Change::Cancel => TaskStatus::Cancelled,
            Change::Requeue { .. } => TaskStatus::Pending,
        }
    }
}

/// A change the state machine forbids from the task's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The status the task is in.
    pub from: TaskStatus,
    /// The status the change leads to.
    pub to: TaskStatus,
}

/// The record after `change`, or why the state machine forbids it.
pub fn apply(task: &Task, change: Change, now: DateTime<Utc>) -> Result<Task, IllegalTransition> {
    let to = change.target();
    if !task.status.can_become(to) {
        return Err(IllegalTransition {
            from: task.status,
            to,
        });
    }
    let mut next = task.clone();
    next.status = to;
    match change {
        Change::Start { backend } => {
            next.attempt += 1;
            next.log_path = next.log_of(next.attempt);
            next.backend = Some(backend);
            next.started_at = Some(now);
            next.heartbeat_at = Some(now);
            next.error = None;
        }
        Change::Complete { result } => next.result = Some(result),
        Change::Fail { error } => next.error = Some(error),
        Change::Cancel => {}
        Change::Requeue { error } => {
            next.error = Some(error);
            next.heartbeat_at = None;
            next.endpoint = None;
        }
    }
    if to.is_terminal() {
        next.finished_at = Some(now);
        next.endpoint = None;
    }
    Ok(next)
}

/// A live update from a running task: heartbeat, progress, endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// The newest progress line the script reported since the last beat.
    pub progress: Option<Progress>,
    /// The endpoint URL a serving script reported, as written: the proxy checks it before use.
    pub endpoint: Option<String>,
    /// How the attempt's script is confined, recorded before it starts.
    pub sandbox: Option<SandboxLevel>,
    /// The version of the input the attempt reads, once the runner has settled it.
    pub input_version: Option<u64>,
    /// The version the output became, once the script completed.
    pub output_version: Option<u64>,
}

/// The record after a heartbeat at `now`: `heartbeat_at` moves, and each field the beat
/// carries replaces the record's; the fields it leaves out stay as they were.
pub fn apply_heartbeat(task: &Task, beat: &Heartbeat, now: DateTime<Utc>) -> Task {
    let mut next = task.clone();
    next.heartbeat_at = Some(now);
    if let Some(progress) = &beat.progress {
        next.progress = Some(progress.clone());
    }
    if let Some(endpoint) = &beat.endpoint {
        next.endpoint = Some(endpoint.clone());
    }
    if let Some(sandbox) = beat.sandbox {
        next.sandbox = Some(sandbox);
    }
    if beat.input_version.is_some() {
        next.lineage.input_version = beat.input_version;
    }
    if beat.output_version.is_some() {
        next.lineage.output_version = beat.output_version;
    }
    next
}

/// What the lease sweep does with a running task whose heartbeat is older than the lease.
pub fn expire(task: &Task) -> Change {
    let error = TaskError::new(
        FailureCode::LeaseExpired,
        format!(
            "the runner of attempt {} stopped sending heartbeats (it crashed or was killed)",
            task.attempt
        ),
    );
    if task.attempt < task.spec.max_attempts {
        Change::Requeue { error }
    } else {
        Change::Fail { error }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_sandbox_level_reads_back_as_it_is_written_and_older_records_still_read() {
        for text in [
            "none",
            "nocaps",
            "landlock+namespaces+nocaps",
            "landlock+nocaps",
        ] {
            let level: SandboxLevel = serde_json::from_value(json!(text)).expect(text);
            assert_eq!(serde_json::to_value(level).expect("json"), json!(text));
        }
        let before_nocaps: SandboxLevel = "landlock+namespaces".parse().expect("old level");
        assert!(
            before_nocaps.landlock && before_nocaps.namespaces && !before_nocaps.no_capabilities
        );
        assert!("landlock+root".parse::<SandboxLevel>().is_err());
    }

    #[test]
    fn failure_codes_are_spelled_as_the_api_spells_them() {
        assert_eq!(FailureCode::LeaseExpired.to_string(), "LEASE_EXPIRED");
        assert_eq!(
            serde_json::from_value::<FailureCode>(json!("RESULT_TOO_LARGE")).expect("code"),
            FailureCode::ResultTooLarge
        );
        assert!(serde_json::from_value::<FailureCode>(json!("SOMETHING_ELSE")).is_err());
    }

    fn task_in(status: TaskStatus) -> Task {
        let spec = TaskSpec {
            name: "t".into(),
            script: "s.py".into(),
            input: String::new(),
            output: String::new(),
            params: Map::new(),
            resources: Resources::default(),
            max_attempts: 2,
            idempotency_key: None,
        };
        let id = TaskId::parse("id").expect("an id");
        let mut task = Task::new(&id, &Tenant::single(), spec, None, None, Utc::now());
        task.status = status;
        task
    }

    fn change_to(status: TaskStatus) -> Change {
        match status {
            TaskStatus::Pending => Change::Requeue {
                error: TaskError::new(FailureCode::ScriptFailed, "e"),
            },
            TaskStatus::Running => Change::Start {
                backend: "local".into(),
            },
            TaskStatus::Completed => Change::Complete {
                result: Value::Null,
            },
            TaskStatus::Failed => Change::Fail {
                error: TaskError::new(FailureCode::ScriptFailed, "e"),
            },
            TaskStatus::Cancelled => Change::Cancel,
        }
    }

    #[test]
    fn every_pair_of_states_follows_the_state_machine() {
        use TaskStatus::*;
        let allowed = [
            (Pending, Running),
            (Pending, Cancelled),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Pending),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let expected = allowed.contains(&(from, to));
                let outcome = apply(&task_in(from), change_to(to), Utc::now());
                assert_eq!(outcome.is_ok(), expected, "{from} -> {to}");
                if let Ok(next) = outcome {
                    assert_eq!(next.status, to);
                }
            }
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for from in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn starting_counts_an_attempt_and_finishing_stamps_the_time() {
        let started = apply(
            &task_in(TaskStatus::Pending),
            change_to(TaskStatus::Running),
            Utc::now(),
        )
        .expect("pending -> running");
        assert_eq!(started.attempt, 1);
        assert_eq!(started.log_path.as_str(), "logs/id/1.log");
        let mut again = started.clone();
        again.status = TaskStatus::Pending;
        let second = apply(&again, change_to(TaskStatus::Running), Utc::now()).expect("retry");
        assert_eq!(
            second.log_path.as_str(),
            "logs/id/2.log",
            "each attempt its own log"
        );
        assert!(started.started_at.is_some() && started.finished_at.is_none());
        let done = apply(
            &started,
            Change::Complete {
                result: serde_json::json!({"a": 1}),
            },
            Utc::now(),
        )
        .expect("running -> completed");
        assert!(done.finished_at.is_some());
        assert_eq!(done.result, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn an_expired_lease_is_retried_while_attempts_remain_then_failed() {
        let mut task = task_in(TaskStatus::Running);
        task.attempt = 1;
        assert!(matches!(expire(&task), Change::Requeue { .. }));
        task.attempt = 2;
        assert!(matches!(expire(&task), Change::Fail { .. }));
    }

    #[test]
    fn status_names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }
}
