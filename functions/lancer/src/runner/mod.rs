//! The runner: claims one task, runs its script under the run contract, streams its logs
//! and progress into the platform, and writes the outcome back with a conditional write.
//!
//! - `contract`: how a script is started and the environment it gets;
//! - `watch`: the loop around the running script;
//! - `log` and `progress`: what the script writes, bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use crate::domain::task::{
    Change, FailureCode, Guard, Heartbeat, SandboxLevel, Task, TaskError, TaskId, TaskStatus,
};
use crate::domain::validate::is_artifact;
use crate::error::{Error, Resource, Result};
use crate::ports::{Lake, TaskStore};
use crate::sandbox::SandboxMode;
use crate::scripts::ScriptRegistry;

mod contract;
pub use contract::own_folder;
mod log;
mod progress;
mod watch;

pub use contract::script_env;
use contract::{Files, command};
use log::LogBuffer;
use progress::ProgressReader;
use watch::{Ended, watch};

/// The largest result a task may return. A task record holds its result, and DynamoDB
/// items are at most 400 KB; a bigger result belongs in the lake, as a dataset.
pub const MAX_RESULT_BYTES: u64 = 256 * 1024;

/// What a runner needs to run a task: its adapters, the scripts folder, and the sandbox and
/// timing it runs scripts under.
pub struct RunnerContext {
    /// Where the runner claims the task and writes its heartbeats and outcome.
    pub store: Arc<dyn TaskStore>,
    /// The lake the script reads and writes; the task's log and progress go there too.
    pub lake: Arc<dyn Lake>,
    /// The scripts folder, whose registry says which script a task may run.
    pub scripts: PathBuf,
    /// The interpreter that runs `*.py` scripts: a path, or a name looked up on `PATH`.
    pub python: String,
    /// The backend name recorded on the task as the runner claims it.
    pub backend: String,
    /// The operator's extra variables for every script (`LANCER_SCRIPT_ENV`).
    pub script_env: BTreeMap<String, String>,
    /// Whether scripts run confined by Landlock (`LANCER_SANDBOX`).
    pub sandbox: SandboxMode,
    /// How often the runner heartbeats while the script runs (a progress update beats too).
    pub heartbeat_every: Duration,
    /// How long a running task keeps its runner without a heartbeat.
    pub lease: Duration,
    /// How long a script being stopped (cancelled, or its lease lost) has after SIGTERM
    /// before it is killed.
    pub cancel_grace: Duration,
}

/// What became of the task the runner was started for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Another runner claimed it, or it was no longer pending.
    NotClaimed(TaskStatus),
    /// The runner claimed the task, ran it, and wrote the outcome back: the task as
    /// written, completed or failed.
    Finished(Box<Task>),
    /// Cancelled, or the lease was lost, while it ran: nothing was written back.
    Abandoned,
}

/// What the runner does once the script is done with.
enum Verdict {
    /// Write this change back.
    Report(Change),
    /// The task is no longer this attempt's: write nothing.
    Abandon,
}

/// Runs one attempt of `task_id`: claims it (pending -> running), runs its script under the
/// run contract, and writes the outcome back on that attempt. `Error::NotFound` if the
/// store has no such task; an error too when the store fails the claim, or fails the
/// write-back until the lease runs out.
pub async fn run_task(ctx: &RunnerContext, task_id: &TaskId) -> Result<Outcome> {
    let task = match claim(ctx, task_id).await? {
        Ok(task) => task,
        Err(status) => return Ok(Outcome::NotClaimed(status)),
    };
    info!(task = %task.id, attempt = task.attempt, script = %task.spec.script, "claimed");
    let workdir = tempfile::Builder::new()
        .prefix(&format!("lancer-{}-", task.id))
        .tempdir()?;
    let change = match supervise(ctx, &task, &Files::create(workdir.path(), &task)?).await {
        Ok(Verdict::Report(change)) => change,
        Ok(Verdict::Abandon) => return Ok(Outcome::Abandoned),
        Err(err) => {
            warn!(task = %task.id, %err, "the runner failed");
            Change::Fail {
                error: TaskError::new(
                    FailureCode::RunnerError,
                    "the runner failed; the server log says why",
                ),
            }
        }
    };
    write_back(ctx, &task, change).await
}

/// Moves the task from pending to running; the status it had if another got there first.
async fn claim(ctx: &RunnerContext, task_id: &TaskId) -> Result<Result<Task, TaskStatus>> {
    let task = ctx
        .store
        .get(task_id)
        .await?
        .ok_or_else(|| Error::not_found(Resource::Task, task_id.as_str()))?;
    if task.status != TaskStatus::Pending {
        return Ok(Err(task.status));
    }
    let start = Change::Start {
        backend: ctx.backend.clone(),
    };
    match ctx.store.transition(task_id, task.guard(), start).await {
        Ok(task) => Ok(Ok(task)),
        Err(Error::Stale(_)) => {
            let now = ctx.store.get(task_id).await?;
            Ok(Err(now.map_or(TaskStatus::Pending, |t| t.status)))
        }
        Err(err) => Err(err),
    }
}

/// Writes the outcome with a conditional write on this attempt, retried with backoff
/// while the lease lasts: a store hiccup must not turn a finished task into a rerun.
async fn write_back(ctx: &RunnerContext, task: &Task, change: Change) -> Result<Outcome> {
    let guard = Guard {
        status: TaskStatus::Running,
        attempt: task.attempt,
    };
    let deadline = tokio::time::Instant::now() + ctx.lease;
    let mut pause = Duration::from_millis(100);
    loop {
        match ctx.store.transition(&task.id, guard, change.clone()).await {
            Ok(done) => {
                info!(task = %done.id, status = %done.status, "finished");
                return Ok(Outcome::Finished(Box::new(done)));
            }
            // Cancelled (or expired) meanwhile: the newer state stands.
            Err(Error::Stale(why)) => {
                info!(task = %task.id, %why, "result dropped");
                return Ok(Outcome::Abandoned);
            }
            Err(err) if tokio::time::Instant::now() + pause < deadline => {
                warn!(task = %task.id, %err, retry_in = ?pause, "cannot write the outcome yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Runs the script to its end, and says what to write back.
async fn supervise(ctx: &RunnerContext, task: &Task, files: &Files) -> Result<Verdict> {
    let script = match ScriptRegistry::load(&ctx.scripts).and_then(|r| r.resolve(&task.spec.script))
    {
        Ok(script) => script,
        Err(err) => return Ok(fail(FailureCode::ScriptNotFound, err.to_string())),
    };
    if let Err(verdict) = record_sandbox(ctx, task).await {
        return Ok(verdict);
    }
    let task = &match pin_input(ctx, task).await? {
        Ok(task) => task,
        Err(verdict) => return Ok(verdict),
    };
    let mut child = match command(ctx, task, &script, files)?.spawn() {
        Ok(child) => child,
        Err(err) => {
            warn!(task = %task.id, %err, path = %script.path.display(), "cannot start the script");
            let message = format!("cannot start script '{}': {}", script.name, err.kind());
            return Ok(fail(FailureCode::ScriptStartFailed, message));
        }
    };
    let mut log = LogBuffer::default();
    let mut progress = ProgressReader::new(files.progress.clone());
    let history = task.progress_of(task.attempt);
    let why = match watch(ctx, task, &mut child, &mut log, &mut progress).await? {
        Ended::Exited(status) => {
            log.flush(ctx.lake.as_ref(), &task.log_path).await;
            progress.flush(ctx.lake.as_ref(), &history).await;
            let change = outcome(status, files, &log);
            if matches!(change, Change::Complete { .. }) {
                record_output(ctx, task).await?;
            }
            return Ok(Verdict::Report(change));
        }
        Ended::Stopped(why) => why,
    };
    // A runner whose attempt was superseded writes nothing more, not even its log: the
    // live attempt's runner owns the task now. A cancelled attempt closes its own log.
    if still_this_attempt(ctx, task).await {
        log.note(&format!("task stopped: {why}"));
        log.flush(ctx.lake.as_ref(), &task.log_path).await;
        progress.flush(ctx.lake.as_ref(), &history).await;
    }
    Ok(Verdict::Abandon)
}

/// What confines a script, as its task records it: Landlock and its own namespaces where
/// the kernel allows, and no capability whenever the sandbox is on (`+nocaps`).
fn sandbox_level(mode: SandboxMode, landlock: bool) -> SandboxLevel {
    if mode == SandboxMode::Off {
        return SandboxLevel::default();
    }
    SandboxLevel {
        landlock,
        namespaces: crate::sandbox::namespaces::available(),
        no_capabilities: true,
    }
}

/// Records how the script will be confined; refuses to run it when the sandbox is
/// required and this kernel cannot provide it.
async fn record_sandbox(ctx: &RunnerContext, task: &Task) -> Result<(), Verdict> {
    let enforced = ctx.sandbox != SandboxMode::Off && crate::sandbox::enforceable();
    if ctx.sandbox == SandboxMode::Required && !enforced {
        return Err(fail(
            FailureCode::SandboxUnavailable,
            "LANCER_SANDBOX=required, and this kernel cannot sandbox scripts (Landlock ABI 3 or newer is needed)".into(),
        ));
    }
    let beat = Heartbeat {
        sandbox: Some(sandbox_level(ctx.sandbox, enforced)),
        ..Heartbeat::default()
    };
    watch::heartbeat(ctx, task, beat)
        .await
        .map_err(|_| Verdict::Abandon)
}

/// Settles which version of its input the task reads (the pinned one, else the latest),
/// records it on the task, and returns the task with it: the script gets it as
/// `LANCER_INPUT_VERSION`.
async fn pin_input(ctx: &RunnerContext, task: &Task) -> Result<Result<Task, Verdict>> {
    let Some(input) = task.input_path.as_ref().filter(|path| is_artifact(path)) else {
        return Ok(Ok(task.clone()));
    };
    let latest = ctx.lake.latest_version(input).await?;
    let version = match (task.lineage.input_version, latest) {
        (Some(pinned), Some(latest)) if pinned <= latest => pinned,
        (Some(pinned), _) => {
            let message = format!("input {input} has no version {pinned}");
            return Ok(Err(fail(FailureCode::InputVersionNotFound, message)));
        }
        (None, Some(latest)) => latest,
        // Not written yet: the script decides what a missing input means.
        (None, None) => return Ok(Ok(task.clone())),
    };
    let beat = Heartbeat {
        input_version: Some(version),
        ..Heartbeat::default()
    };
    match ctx.store.heartbeat(&task.id, task.attempt, beat).await {
        Ok(task) => Ok(Ok(task)),
        Err(Error::Stale(_)) => Ok(Err(Verdict::Abandon)),
        Err(err) => Err(err),
    }
}

/// Records the version a completed task's output became, and tags it with the task.
async fn record_output(ctx: &RunnerContext, task: &Task) -> Result<()> {
    let Some(output) = &task.output_path else {
        return Ok(());
    };
    let Some(version) = ctx.lake.latest_version(output).await? else {
        return Ok(());
    };
    ctx.lake.tag_writer(output, version, &task.id).await?;
    let beat = Heartbeat {
        output_version: Some(version),
        ..Heartbeat::default()
    };
    // A lost lease shows in the write-back that follows.
    let _ = watch::heartbeat(ctx, task, beat).await;
    Ok(())
}

async fn still_this_attempt(ctx: &RunnerContext, task: &Task) -> bool {
    matches!(ctx.store.get(&task.id).await, Ok(Some(now)) if now.attempt == task.attempt)
}

fn fail(code: FailureCode, message: String) -> Verdict {
    Verdict::Report(Change::Fail {
        error: TaskError::new(code, message),
    })
}

/// The change a finished script earns.
fn outcome(status: ExitStatus, files: &Files, log: &LogBuffer) -> Change {
    if !status.success() {
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("script exited with status {code}"),
            (None, Some(signal)) => format!("script was killed by signal {signal}"),
            (None, None) => "script ended abnormally".to_owned(),
        };
        let message = match log.last_error_line() {
            Some(line) => format!("{how}: {line}"),
            None => how,
        };
        return Change::Fail {
            error: TaskError::new(FailureCode::ScriptFailed, message),
        };
    }
    match read_result(&files.result) {
        Ok(result) => Change::Complete { result },
        Err(error) => Change::Fail { error },
    }
}

/// The script's result: `{}` without a result file, else a JSON object within the limit.
fn read_result(path: &std::path::Path) -> Result<Value, TaskError> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(_) => return Ok(Value::Object(Default::default())),
    };
    if size > MAX_RESULT_BYTES {
        return Err(TaskError::new(
            FailureCode::ResultTooLarge,
            format!(
                "the result is {size} bytes; the limit is {MAX_RESULT_BYTES}: write large outputs to the lake and return a summary"
            ),
        ));
    }
    let invalid = || {
        TaskError::new(
            FailureCode::ResultInvalid,
            "the script's result file is not a JSON object",
        )
    };
    let bytes = std::fs::read(path).map_err(|_| invalid())?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(result @ Value::Object(_)) => Ok(result),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_over_the_limit_is_refused_with_the_limit_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("result.json");
        assert_eq!(read_result(&path).ok(), Some(serde_json::json!({})));
        std::fs::write(&path, br#"{"a": 1}"#).expect("write");
        assert_eq!(read_result(&path).ok(), Some(serde_json::json!({"a": 1})));
        std::fs::write(&path, b"[1]").expect("write");
        assert_eq!(
            read_result(&path).map_err(|e| e.code),
            Err(FailureCode::ResultInvalid)
        );
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_RESULT_BYTES as usize));
        std::fs::write(&path, big).expect("write");
        let err = read_result(&path).expect_err("too large");
        assert_eq!(err.code, FailureCode::ResultTooLarge);
        assert!(err.message.contains("262144"), "{}", err.message);
    }
}
