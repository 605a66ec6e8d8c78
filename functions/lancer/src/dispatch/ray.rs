//! The Ray dispatcher: every attempt of a task is one Ray job, submitted through the Jobs
//! REST API of a Ray head, whose entrypoint is the same `lancer-runner` the local
//! dispatcher starts. It keeps no state: an attempt's job is named `<task id>-<attempt>`,
//! so the store and Ray together say everything, a resubmit is idempotent and any
//! `lancer serve` (or sweeper) can reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{sweep_expired, tasks_with_status};
use crate::domain::task::{Change, Task, TaskError, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Dispatcher, TaskStore};

/// Ray's Jobs API answers in milliseconds; anything slower is a head in trouble.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const BACKEND: &str = "ray";

/// Ray's error bodies are Python tracebacks; the end of one is enough for a task's error.
const MAX_BODY_SHOWN: usize = 2_000;

/// A Ray job's lifecycle, as `GET /api/jobs/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

#[derive(Debug, Deserialize)]
struct JobInfo {
    status: JobStatus,
    #[serde(default)]
    message: Option<String>,
}

/// Why Ray did not take or answer a request; becomes the task's error.
#[derive(Debug)]
enum RayError {
    Unreachable(String),
    Rejected(StatusCode, String),
    Broken(StatusCode, String),
}

impl RayError {
    /// The task's error: what Ray said, and nothing of where the head is (the server log
    /// has that), since a task's error is shown to its tenant.
    fn task_error(&self) -> TaskError {
        match self {
            RayError::Unreachable(_) => TaskError::new(
                "BACKEND_UNAVAILABLE",
                "the Ray cluster cannot be reached; the server log says why",
            ),
            RayError::Rejected(status, body) => TaskError::new(
                "BACKEND_REJECTED",
                format!(
                    "Ray refused the job ({status}): {}",
                    truncate(body, MAX_BODY_SHOWN)
                ),
            ),
            RayError::Broken(status, body) => TaskError::new(
                "BACKEND_ERROR",
                format!(
                    "Ray failed to take the job ({status}): {}",
                    truncate(body, MAX_BODY_SHOWN)
                ),
            ),
        }
    }
}

impl std::fmt::Display for RayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RayError::Unreachable(why) => write!(f, "unreachable: {why}"),
            RayError::Rejected(status, body) | RayError::Broken(status, body) => {
                write!(f, "{status}: {}", truncate(body, MAX_BODY_SHOWN))
            }
        }
    }
}

#[derive(Clone)]
pub struct RayDispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn TaskStore>,
    http: reqwest::Client,
    /// The head's dashboard URL, without a trailing slash.
    address: String,
    /// The runner binary as Ray's nodes see it.
    runner: String,
    /// The configuration runners rebuild theirs from.
    env: BTreeMap<String, String>,
    lease: Duration,
}

impl RayDispatcher {
    pub fn new(
        store: Arc<dyn TaskStore>,
        address: String,
        runner: String,
        env: BTreeMap<String, String>,
        lease: Duration,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(Error::internal)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                http,
                address,
                runner,
                env,
                lease,
            }),
        })
    }
}

impl Inner {
    fn jobs_url(&self, rest: &str) -> String {
        format!("{}/api/jobs/{rest}", self.address)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, RayError> {
        let response = request
            .send()
            .await
            .map_err(|err| RayError::Unreachable(error_chain(&err)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|err| RayError::Unreachable(error_chain(&err)))?;
        if status.is_success() {
            return serde_json::from_str(&body).map_err(|err| {
                RayError::Broken(status, format!("unreadable answer ({err}): {body}"))
            });
        }
        if status.is_client_error() {
            Err(RayError::Rejected(status, body))
        } else {
            Err(RayError::Broken(status, body))
        }
    }

    /// A request about one job; `None` when Ray has no such job.
    async fn about_job(&self, request: reqwest::RequestBuilder) -> Result<Option<Value>, RayError> {
        match self.send(request).await {
            Ok(body) => Ok(Some(body)),
            Err(RayError::Rejected(StatusCode::NOT_FOUND, _)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The job's state; `None` if Ray has no such job.
    async fn job(&self, submission_id: &str) -> Result<Option<JobInfo>, RayError> {
        let Some(info) = self
            .about_job(self.http.get(self.jobs_url(submission_id)))
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_value(info.clone())
            .map(Some)
            .map_err(|err| {
                RayError::Broken(
                    StatusCode::OK,
                    format!("unexpected job info ({err}): {info}"),
                )
            })
    }

    async fn submit_job(&self, task: &Task) -> Result<(), RayError> {
        let submission_id = submission_id(task);
        let resources = &task.spec.resources;
        let mut body = json!({
            "submission_id": submission_id,
            "entrypoint": format!("{} {}", shell_quote(&self.runner), task.id),
            "entrypoint_num_cpus": resources.cpus,
            "entrypoint_num_gpus": resources.gpus,
            "runtime_env": { "env_vars": self.env },
            "metadata": {
                "lancer_task_id": task.id,
                "lancer_task_name": task.spec.name,
                "lancer_tenant": task.tenant,
            },
        });
        // Validation bounds memory_mb far below overflow; a stored record is trusted no
        // further than that.
        if let Some(bytes) = resources.memory_mb.checked_mul(1 << 20).filter(|&b| b > 0) {
            body["entrypoint_memory"] = json!(bytes);
        }
        match self
            .send(self.http.post(self.jobs_url("")).json(&body))
            .await
        {
            Ok(_) => {
                info!(task = %task.id, %submission_id, "submitted to Ray");
                Ok(())
            }
            // Ray answers a duplicate submission id with a 500: the job is already there.
            Err(RayError::Broken(_, body)) if body.contains("already exists") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Ends a task Ray could not run. A pending task is claimed first, so the record goes
    /// through the one state machine (pending -> running -> failed) and counts the attempt.
    async fn fail(&self, task: &Task, error: TaskError) -> Result<()> {
        warn!(task = %task.id, code = %error.code, message = %error.message, "task failed on Ray");
        let running = match task.status {
            TaskStatus::Pending => match self.claim(task).await? {
                Some(running) => running,
                None => return Ok(()), // its runner claimed it meanwhile
            },
            _ => task.clone(),
        };
        match self
            .store
            .transition(&task.id, running.guard(), Change::Fail { error })
            .await
        {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Submits a pending task, or fails it with Ray's answer when Ray will not take it.
    async fn dispatch(&self, task: &Task) -> Result<()> {
        match self.submit_job(task).await {
            Ok(()) => Ok(()),
            Err(err) => {
                warn!(task = %task.id, address = %self.address, %err, "Ray did not take the job");
                self.fail(task, err.task_error()).await
            }
        }
    }

    /// Ends the attempt whose job ended without the runner writing the outcome back. A
    /// FAILED job is a lost runner (killed, out of memory, its node gone): like a lost
    /// runner anywhere, it is retried while attempts remain. A STOPPED one was stopped on
    /// purpose, and fails the task.
    async fn settle(&self, task: &Task, job: &JobInfo) -> Result<()> {
        let code = match job.status {
            JobStatus::Failed => "RAY_JOB_FAILED",
            JobStatus::Stopped => "RAY_JOB_STOPPED",
            // Still going; or done, when the runner's own write-back is what counts.
            JobStatus::Pending | JobStatus::Running | JobStatus::Succeeded => return Ok(()),
        };
        let message = format!(
            "Ray job {} ended {:?} before its runner reported: {}",
            submission_id(task),
            job.status,
            job.message.as_deref().unwrap_or("no message")
        );
        let error = TaskError::new(code, message);
        if job.status == JobStatus::Failed {
            return self.retry_or_fail(task, error).await;
        }
        self.fail(task, error).await
    }

    /// Requeues the attempt and submits the next one while attempts remain, else fails.
    async fn retry_or_fail(&self, task: &Task, error: TaskError) -> Result<()> {
        let running = match task.status {
            TaskStatus::Pending => match self.claim(task).await? {
                Some(running) => running,
                None => return Ok(()),
            },
            _ => task.clone(),
        };
        if running.attempt >= running.spec.max_attempts {
            return self.fail(&running, error).await;
        }
        warn!(task = %task.id, attempt = running.attempt, code = %error.code, "Ray job failed; retrying");
        let requeue = Change::Requeue { error };
        match self
            .store
            .transition(&task.id, running.guard(), requeue)
            .await
        {
            Ok(pending) => self.dispatch(&pending).await,
            Err(Error::Conflict(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Claims a pending task for the dispatcher itself; `None` if its runner got there first.
    async fn claim(&self, task: &Task) -> Result<Option<Task>> {
        let start = Change::Start {
            backend: BACKEND.into(),
        };
        match self.store.transition(&task.id, task.guard(), start).await {
            Ok(running) => Ok(Some(running)),
            Err(Error::Conflict(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl Dispatcher for RayDispatcher {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Hands the task to Ray in the background, so a slow or dead head never holds up the
    /// API; a job Ray refuses fails its task.
    async fn submit(&self, task: &Task) -> Result<()> {
        let inner = self.inner.clone();
        let task = task.clone();
        tokio::spawn(async move {
            if let Err(err) = inner.dispatch(&task).await {
                warn!(task = %task.id, %err, "dispatch to Ray failed; reconcile will retry");
            }
        });
        Ok(())
    }

    /// Stops the job of the last claimed attempt and the one a requeued task waits for:
    /// a cancel must reach whichever of them exists.
    async fn cancel(&self, task: &Task) -> Result<()> {
        let inner = &self.inner;
        for submission_id in jobs_to_stop(task) {
            let stop = inner
                .http
                .post(inner.jobs_url(&format!("{submission_id}/stop")));
            inner.about_job(stop).await.map_err(|err| {
                Error::internal(format!("cannot stop Ray job {submission_id}: {err}"))
            })?;
        }
        Ok(())
    }

    async fn reconcile(&self) -> Result<()> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        let unreachable =
            |err: RayError| Error::internal(format!("Ray head at {}: {err}", inner.address));
        for task in sweep_expired(store, inner.lease).await? {
            inner.dispatch(&task).await?;
        }
        for task in tasks_with_status(store, TaskStatus::Pending).await? {
            match inner.job(&submission_id(&task)).await {
                Ok(None) => inner.dispatch(&task).await?,
                Ok(Some(job)) => inner.settle(&task, &job).await?,
                // Ray is down: nothing is decided on a guess; the next round looks again.
                Err(err) => return Err(unreachable(err)),
            }
        }
        for task in tasks_with_status(store, TaskStatus::Running).await? {
            if task.backend.as_deref() != Some(BACKEND) {
                continue;
            }
            match inner.job(&submission_id(&task)).await {
                Ok(Some(job)) => inner.settle(&task, &job).await?,
                // A job Ray forgot is left to the lease: its runner may still be heartbeating.
                Ok(None) => {}
                Err(err) => return Err(unreachable(err)),
            }
        }
        Ok(())
    }

    async fn logs(&self, task: &Task) -> Result<Option<String>> {
        let inner = &self.inner;
        let submission_id = submission_id(task);
        let logs = inner
            .http
            .get(inner.jobs_url(&format!("{submission_id}/logs")));
        match inner.about_job(logs).await {
            Ok(body) => Ok(body.and_then(|body| body["logs"].as_str().map(str::to_owned))),
            Err(err) => Err(Error::internal(format!(
                "cannot read the logs of Ray job {submission_id}: {err}"
            ))),
        }
    }
}

/// The jobs a cancel stops: the last claimed attempt's, and the next one, which a task
/// requeued after a failed job is waiting for (Ray answers 404 for whichever is absent).
fn jobs_to_stop(task: &Task) -> [String; 2] {
    [task.attempt + 1, task.attempt.max(1)].map(|attempt| format!("{}-{attempt}", task.id))
}

/// The Ray job of the attempt a task is waiting for (pending) or running.
pub fn submission_id(task: &Task) -> String {
    let attempt = match task.status {
        TaskStatus::Pending => task.attempt + 1,
        _ => task.attempt.max(1),
    };
    format!("{}-{attempt}", task.id)
}

/// An error with its causes, which is where reqwest says "connection refused".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The last `max` characters: a traceback's last lines say what went wrong.
fn truncate(text: &str, max: usize) -> String {
    let text = text.trim_end();
    match text.char_indices().rev().nth(max.saturating_sub(1)) {
        Some((cut, _)) if cut > 0 => format!("...{}", &text[cut..]),
        _ => text.to_owned(),
    }
}

/// Single-quotes a path for the shell Ray runs the entrypoint with.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_the_job_a_requeued_task_waits_for() {
        let spec: crate::domain::task::TaskSpec =
            serde_json::from_value(json!({"name": "t", "script": "s.py", "max_attempts": 3}))
                .expect("spec");
        let id = crate::domain::path::Name::parse("id", "t1").expect("name");
        let tenant = crate::domain::tenant::Tenant::single();
        let mut task = Task::new(&id, &tenant, spec, None, None, chrono::Utc::now());
        // Attempt 1's job failed, the task was requeued and job t1-2 submitted; then cancelled.
        task.attempt = 1;
        task.status = TaskStatus::Cancelled;
        assert_eq!(jobs_to_stop(&task), ["t1-2", "t1-1"]);
        // Cancelled before any attempt started: job t1-1 is the one that may be waiting.
        task.attempt = 0;
        assert!(jobs_to_stop(&task).contains(&"t1-1".to_owned()));
    }

    #[test]
    fn paths_are_quoted_for_the_entrypoint_shell() {
        assert_eq!(shell_quote("/opt/lancer runner"), "'/opt/lancer runner'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn long_error_bodies_keep_their_end() {
        assert_eq!(truncate("abcdef\n", 3), "...def");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ab", 3), "ab");
    }
}
