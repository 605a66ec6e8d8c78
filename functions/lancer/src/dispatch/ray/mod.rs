//! The Ray dispatcher: every attempt of a task is one Ray job, submitted through the Jobs
//! REST API of a Ray head (`jobs.rs`), whose entrypoint is the same `lancer-runner` the
//! local dispatcher starts. It keeps no state: an attempt's job is named
//! `<task id>-<attempt>`, so the store and Ray together say everything, a resubmit is
//! idempotent and any `lancer serve` (or sweeper) can reconcile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::{info, warn};

use crate::domain::endpoint::Reported;
use crate::domain::task::{Change, FailureCode, Task, TaskError, TaskStatus};
use crate::error::{Error, Result, chain};
use crate::ports::{Dispatcher, TaskStore};

mod jobs;

use jobs::{JobInfo, JobRequest, JobStatus, JobsClient, RuntimeEnv};

const BACKEND: &str = "ray";

/// The `Dispatcher` that runs each attempt of a task as one Ray job, `<task id>-<attempt>`,
/// through a Ray head's Jobs API.
#[derive(Clone)]
pub struct RayDispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn TaskStore>,
    jobs: JobsClient,
    /// The runner binary as Ray's nodes see it.
    runner: String,
    /// The configuration runners rebuild theirs from.
    env: BTreeMap<String, String>,
}

impl RayDispatcher {
    /// A dispatcher over `store` that submits jobs to the Ray head at `address` (its
    /// dashboard URL), with `runner` as the entrypoint on Ray's nodes, `env` as each job's
    /// environment and `token`, if any, as a bearer token; a token that is no valid header
    /// value is refused.
    pub fn new(
        store: Arc<dyn TaskStore>,
        address: String,
        runner: String,
        env: BTreeMap<String, String>,
        token: Option<&str>,
    ) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                jobs: JobsClient::new(address, token)?,
                runner,
                env,
            }),
        })
    }
}

impl Inner {
    /// The job of the attempt the task is waiting for.
    fn job_request(&self, task: &Task) -> JobRequest {
        let resources = &task.spec.resources;
        JobRequest {
            submission_id: submission_id(task),
            entrypoint: format!("{} {}", shell_quote(&self.runner), task.id),
            entrypoint_num_cpus: resources.cpus,
            entrypoint_num_gpus: resources.gpus,
            // Validation bounds memory_mb far below overflow; a stored record is trusted
            // no further than that.
            entrypoint_memory: resources.memory_mb.checked_mul(1 << 20).filter(|&b| b > 0),
            entrypoint_resources: resources.custom.clone(),
            runtime_env: RuntimeEnv {
                env_vars: self.env.clone(),
            },
            metadata: BTreeMap::from([
                ("lancer_task_id".to_owned(), task.id.to_string()),
                ("lancer_task_name".to_owned(), task.spec.name.clone()),
                ("lancer_tenant".to_owned(), task.tenant.to_string()),
            ]),
        }
    }

    /// Submits a pending task, or fails it with Ray's answer when Ray will not take it.
    async fn dispatch(&self, task: &Task) -> Result<()> {
        match self.jobs.submit(&self.job_request(task)).await {
            Ok(()) => {
                info!(task = %task.id, submission_id = %submission_id(task), "submitted to Ray");
                Ok(())
            }
            Err(err) => {
                warn!(task = %task.id, err = %chain(&err), "Ray did not take the job");
                self.fail(task, err.task_error()).await
            }
        }
    }

    /// A task's job as Ray sees it. Ray down is an error: nothing is decided on a guess,
    /// and the next round looks again.
    async fn job_of(&self, task: &Task) -> Result<Option<JobInfo>> {
        self.jobs
            .job(&submission_id(task))
            .await
            .map_err(Error::from)
    }

    /// Ends a task Ray could not run. A pending task is claimed first, so the record goes
    /// through the one state machine (pending -> running -> failed) and counts the attempt.
    async fn fail(&self, task: &Task, error: TaskError) -> Result<()> {
        warn!(task = %task.id, code = %error.code, message = %error.message, "task failed on Ray");
        let Some(running) = self.claimed(task).await? else {
            return Ok(()); // its runner claimed it meanwhile
        };
        match self
            .store
            .transition(&task.id, running.guard(), Change::Fail { error })
            .await
        {
            Ok(_) | Err(Error::Stale(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Ends the attempt whose job ended without the runner writing the outcome back. A
    /// FAILED job is a lost runner (killed, out of memory, its node gone): like a lost
    /// runner anywhere, it is retried while attempts remain. A STOPPED one was stopped on
    /// purpose, and fails the task.
    async fn settle(&self, task: &Task, job: &JobInfo) -> Result<()> {
        let code = match job.status {
            JobStatus::Failed => FailureCode::RayJobFailed,
            JobStatus::Stopped => FailureCode::RayJobStopped,
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
        let Some(running) = self.claimed(task).await? else {
            return Ok(());
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
            Err(Error::Stale(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The task as running: a pending one is claimed for the dispatcher itself first;
    /// `None` if its runner got there first.
    async fn claimed(&self, task: &Task) -> Result<Option<Task>> {
        if task.status != TaskStatus::Pending {
            return Ok(Some(task.clone()));
        }
        let start = Change::Start {
            backend: BACKEND.into(),
        };
        match self.store.transition(&task.id, task.guard(), start).await {
            Ok(running) => Ok(Some(running)),
            Err(Error::Stale(_)) => Ok(None),
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
        for submission_id in jobs_to_stop(task) {
            self.inner.jobs.stop(&submission_id).await?;
        }
        Ok(())
    }

    /// A pending task's job: submitted if Ray has none, settled if it ended.
    async fn look_after_pending(&self, task: &Task) -> Result<()> {
        match self.inner.job_of(task).await? {
            None => self.inner.dispatch(task).await,
            Some(job) => self.inner.settle(task, &job).await,
        }
    }

    /// A running task's job, settled if it ended. A job Ray forgot is left to the lease:
    /// its runner may still be heartbeating.
    async fn look_after_running(&self, task: &Task) -> Result<()> {
        match self.inner.job_of(task).await? {
            Some(job) => self.inner.settle(task, &job).await,
            None => Ok(()),
        }
    }

    fn watches_running(&self) -> bool {
        true
    }

    /// The node is Ray's record of where the job's runner runs (its script runs beside
    /// it); only the port is the script's.
    async fn endpoint_of(&self, task: &Task, reported: Reported) -> Result<Option<SocketAddr>> {
        let node = self
            .inner
            .job_of(task)
            .await?
            .and_then(|job| job.driver_node_ip());
        Ok(node.map(|ip| SocketAddr::new(ip, reported.0.port())))
    }

    async fn logs(&self, task: &Task) -> Result<Option<String>> {
        let submission_id = submission_id(task);
        Ok(self.inner.jobs.logs(&submission_id).await?)
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

/// Single-quotes a path for the shell Ray runs the entrypoint with.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_cancel_reaches_the_job_a_requeued_task_waits_for() {
        let spec: crate::domain::task::TaskSpec =
            serde_json::from_value(json!({"name": "t", "script": "s.py", "max_attempts": 3}))
                .expect("spec");
        let id = crate::domain::task::TaskId::parse("t1").expect("an id");
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
}
