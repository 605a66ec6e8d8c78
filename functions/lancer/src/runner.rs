//! The runner: claims one task, runs its script under the run contract, streams its logs
//! and progress into the platform, and writes the outcome back with a conditional write.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::domain::task::{Change, Guard, Heartbeat, Progress, Task, TaskError, TaskStatus};
use crate::error::{Error, Result};
use crate::lake::tenant_prefix;
use crate::ports::{Lake, TaskStore};
use crate::scripts::{ScriptKind, resolve_script};

/// Imports the user's file and calls `run(input_path, output_path, params)`.
const PYTHON_SHIM: &str = r#"
import importlib.util, json, os, sys
script, input_path, output_path, params_file, result_file = sys.argv[1:6]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
spec = importlib.util.spec_from_file_location("lancer_task", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if not callable(getattr(module, "run", None)):
    sys.exit(f"{script} defines no run(input_path, output_path, params) function")
with open(params_file) as f:
    params = json.load(f)
result = module.run(input_path, output_path, params)
if result is None:
    result = {}
if not isinstance(result, dict):
    sys.exit(f"run() returned {type(result).__name__}; it must return a dict")
with open(result_file, "w") as f:
    json.dump(result, f, default=str)
"#;

/// How long a runner whose script died of a signal waits for a stop signal of its own.
const SIGNAL_SETTLE: Duration = Duration::from_millis(300);

/// Why a runner that received SIGTERM or SIGINT stops its script.
const ASKED_TO_STOP: &str = "the runner was asked to stop";

/// Lines of stderr kept to explain a failure.
const STDERR_TAIL_LINES: usize = 20;

/// The most of a task's output the lake keeps. Object stores cannot append, so the runner
/// holds the log in memory and rewrites it whole: both must stay bounded.
const MAX_STORED_LOG: usize = 32 << 20;

/// How fast a growing log is rewritten: once a second while small, less often as it grows.
const LOG_REWRITE_BYTES_PER_SEC: usize = 4 << 20;

pub struct RunnerContext {
    pub store: Arc<dyn TaskStore>,
    pub lake: Arc<dyn Lake>,
    pub scripts: PathBuf,
    pub python: String,
    pub backend: String,
    pub multi_tenant: bool,
    pub heartbeat_every: Duration,
    pub cancel_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Another runner claimed it, or it was no longer pending.
    NotClaimed(TaskStatus),
    Finished(Box<Task>),
    /// Cancelled, or the lease was lost, while it ran: nothing was written back.
    Abandoned,
}

/// What ends the wait on a script.
enum Stop {
    Exited(std::io::Result<ExitStatus>),
    Lost(String),
}

pub async fn run_task(ctx: &RunnerContext, task_id: &str) -> Result<Outcome> {
    let task = ctx
        .store
        .get(task_id)
        .await?
        .ok_or_else(|| crate::store::task_not_found(task_id))?;
    if task.status != TaskStatus::Pending {
        return Ok(Outcome::NotClaimed(task.status));
    }
    let task = match ctx
        .store
        .transition(
            task_id,
            task.guard(),
            Change::Start {
                backend: ctx.backend.clone(),
            },
        )
        .await
    {
        Ok(task) => task,
        Err(Error::Conflict(_)) => {
            let now = ctx
                .store
                .get(task_id)
                .await?
                .map_or(TaskStatus::Pending, |t| t.status);
            return Ok(Outcome::NotClaimed(now));
        }
        Err(err) => return Err(err),
    };
    info!(task = %task.id, attempt = task.attempt, script = %task.spec.script, "claimed");
    let workdir = tempfile::Builder::new()
        .prefix(&format!("lancer-{}-", task.id))
        .tempdir()
        .map_err(Error::internal)?;
    let result = supervise(ctx, &task, workdir.path()).await;
    let guard = Guard {
        status: TaskStatus::Running,
        attempt: task.attempt,
    };
    let change = match result {
        Ok(Some(change)) => change,
        Ok(None) => return Ok(Outcome::Abandoned),
        Err(err) => Change::Fail {
            error: TaskError::new("RUNNER_ERROR", err.to_string()),
        },
    };
    match ctx.store.transition(&task.id, guard, change).await {
        Ok(done) => {
            info!(task = %done.id, status = %done.status, "finished");
            Ok(Outcome::Finished(Box::new(done)))
        }
        // Cancelled (or expired) meanwhile: the newer state stands.
        Err(Error::Conflict(why)) => {
            info!(task = %task.id, %why, "result dropped");
            Ok(Outcome::Abandoned)
        }
        Err(err) => Err(err),
    }
}

/// Runs the script to its end; `None` when it was stopped because the task is no longer ours.
async fn supervise(ctx: &RunnerContext, task: &Task, workdir: &Path) -> Result<Option<Change>> {
    let script = match resolve_script(&ctx.scripts, &task.spec.script) {
        Ok(script) => script,
        Err(err) => {
            return Ok(Some(Change::Fail {
                error: TaskError::new("SCRIPT_NOT_FOUND", err.to_string()),
            }));
        }
    };
    let params_file = workdir.join("params.json");
    let result_file = workdir.join("result.json");
    let progress_file = workdir.join("progress.jsonl");
    std::fs::write(
        &params_file,
        serde_json::to_vec(&task.spec.params).map_err(Error::internal)?,
    )
    .map_err(Error::internal)?;
    std::fs::write(&progress_file, b"").map_err(Error::internal)?;

    let input = path_or_empty(ctx.lake.as_ref(), &task.input_path);
    let output = path_or_empty(ctx.lake.as_ref(), &task.output_path);
    let mut command = match script.kind {
        ScriptKind::Python => {
            let mut command = Command::new(&ctx.python);
            command
                .arg("-u")
                .arg("-c")
                .arg(PYTHON_SHIM)
                .arg(&script.path);
            command
                .arg(&input)
                .arg(&output)
                .arg(&params_file)
                .arg(&result_file);
            command
        }
        ScriptKind::Executable => {
            let mut command = Command::new(&script.path);
            command
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&output);
            command
                .arg("--params-file")
                .arg(&params_file)
                .arg("--result-file")
                .arg(&result_file);
            command
        }
    };
    let prefix = tenant_prefix(&task.tenant, ctx.multi_tenant);
    command
        .current_dir(workdir)
        .env("LANCER_TASK_ID", &task.id)
        .env("LANCER_ATTEMPT", task.attempt.to_string())
        .env("LANCER_LAKE", ctx.lake.uri_of(prefix.trim_end_matches('/')))
        .env(
            "LANCER_STORAGE_OPTIONS",
            serde_json::to_string(&ctx.lake.storage_options()).map_err(Error::internal)?,
        )
        .env("LANCER_PROGRESS_FILE", &progress_file)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return Ok(Some(Change::Fail {
                error: TaskError::new(
                    "SCRIPT_START_FAILED",
                    format!("cannot start {}: {err}", script.path.display()),
                ),
            }));
        }
    };

    let (lines_tx, mut lines_rx) = mpsc::channel::<(bool, Vec<u8>)>(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, false, lines_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, true, lines_tx.clone()));
    }
    drop(lines_tx);

    let mut log = LogBuffer::default();
    let mut progress = ProgressReader::new(progress_file);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut beat = tokio::time::interval(ctx.heartbeat_every);
    let mut terminate = signal_stream()?;
    let mut streams_open = true;
    let stop = loop {
        tokio::select! {
            status = child.wait() => break Stop::Exited(status),
            chunk = lines_rx.recv(), if streams_open => match chunk {
                Some((is_stderr, bytes)) => log.push(is_stderr, &bytes),
                None => streams_open = false,
            },
            _ = flush.tick() => {
                log.flush_when_due(ctx.lake.as_ref(), &task.logs_uri).await;
                if let Some(update) = progress.read_new() {
                    if let Err(lost) = send_heartbeat(ctx, task, update).await {
                        break Stop::Lost(lost);
                    }
                    beat.reset();
                }
            }
            _ = beat.tick() => {
                if let Err(lost) = send_heartbeat(ctx, task, Heartbeat::default()).await {
                    break Stop::Lost(lost);
                }
            }
            _ = terminate.recv() => break Stop::Lost(ASKED_TO_STOP.into()),
        }
    };
    let lost = match stop {
        Stop::Exited(status) => {
            let status = status.map_err(Error::internal)?;
            drain(&mut lines_rx, &mut log).await;
            // A backend stopping the job (Ray's stop) signals the whole process group: a
            // script killed by a signal may be reported before the runner's own signal is.
            // Then the runner was stopped, and the backend, not the script, says why.
            if std::os::unix::process::ExitStatusExt::signal(&status).is_some()
                && tokio::time::timeout(SIGNAL_SETTLE, terminate.recv())
                    .await
                    .is_ok()
            {
                ASKED_TO_STOP.to_owned()
            } else {
                // A cancel signals the script and the runner at once, so the script's exit
                // can arrive first: the last heartbeat says whether the task is still ours.
                match send_heartbeat(ctx, task, progress.read_new().unwrap_or_default()).await {
                    Ok(()) => {
                        log.flush(ctx.lake.as_ref(), &task.logs_uri).await;
                        return Ok(Some(outcome(status, &result_file, &log)));
                    }
                    Err(why) => why,
                }
            }
        }
        Stop::Lost(why) => {
            info!(task = %task.id, %why, "stopping the script");
            stop_child(&mut child, ctx.cancel_grace).await;
            drain(&mut lines_rx, &mut log).await;
            why
        }
    };
    log.push(true, format!("[lancer] task stopped: {lost}\n").as_bytes());
    log.flush(ctx.lake.as_ref(), &task.logs_uri).await;
    Ok(None)
}

fn path_or_empty(lake: &dyn Lake, relative: &str) -> String {
    if relative.is_empty() {
        String::new()
    } else {
        lake.uri_of(relative)
    }
}

async fn send_heartbeat(
    ctx: &RunnerContext,
    task: &Task,
    beat: Heartbeat,
) -> std::result::Result<(), String> {
    match ctx.store.heartbeat(&task.id, task.attempt, beat).await {
        Ok(_) => Ok(()),
        Err(Error::Conflict(why)) | Err(Error::NotFound { kind: _, id: why }) => Err(why),
        // A store hiccup is not a lost lease: the next beat may get through.
        Err(err) => {
            warn!(task = %task.id, %err, "heartbeat failed");
            Ok(())
        }
    }
}

/// The change a finished script earns.
fn outcome(status: ExitStatus, result_file: &Path, log: &LogBuffer) -> Change {
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
            error: TaskError::new("SCRIPT_FAILED", message),
        };
    }
    match std::fs::read(result_file) {
        Err(_) => Change::Complete {
            result: Value::Object(Default::default()),
        },
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(result @ Value::Object(_)) => Change::Complete { result },
            Ok(_) | Err(_) => Change::Fail {
                error: TaskError::new(
                    "RESULT_INVALID",
                    "the script's result file is not a JSON object",
                ),
            },
        },
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    is_stderr: bool,
    to: mpsc::Sender<(bool, Vec<u8>)>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0 || to.send((is_stderr, buffer[..read].to_vec())).await.is_err() {
            break;
        }
    }
}

async fn drain(rx: &mut mpsc::Receiver<(bool, Vec<u8>)>, log: &mut LogBuffer) {
    // The pipes close once the script (and anything holding them) is gone.
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some((is_stderr, bytes)) => log.push(is_stderr, &bytes),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
}

/// SIGTERM, then SIGKILL once the grace period is over.
async fn stop_child(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn signal_stream() -> Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::internal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::internal)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(()).await;
    });
    Ok(rx)
}

/// The task's log as it grows: rewritten whole to the lake when it changed, up to
/// `MAX_STORED_LOG` bytes.
#[derive(Default)]
struct LogBuffer {
    bytes: Vec<u8>,
    /// Output past `MAX_STORED_LOG`, counted but not kept.
    dropped: u64,
    flushed: usize,
    next_rewrite: Option<tokio::time::Instant>,
    stderr_tail: VecDeque<String>,
    stderr_partial: Vec<u8>,
}

/// How long after a rewrite of `len` bytes the log is rewritten again.
fn rewrite_interval(len: usize) -> Duration {
    Duration::from_secs(1).max(Duration::from_secs_f64(
        len as f64 / LOG_REWRITE_BYTES_PER_SEC as f64,
    ))
}

impl LogBuffer {
    fn push(&mut self, is_stderr: bool, chunk: &[u8]) {
        let room = MAX_STORED_LOG.saturating_sub(self.bytes.len());
        if chunk.len() <= room {
            self.bytes.extend_from_slice(chunk);
        } else {
            self.bytes.extend_from_slice(&chunk[..room]);
            if self.dropped == 0 {
                warn!(
                    limit = MAX_STORED_LOG,
                    "the task's output reached the log limit; the rest is not kept"
                );
                self.bytes.extend_from_slice(
                    format!(
                        "\n[lancer] the log reached {} MiB: the rest of the output is not kept\n",
                        MAX_STORED_LOG >> 20
                    )
                    .as_bytes(),
                );
            }
            self.dropped += (chunk.len() - room) as u64;
        }
        // The tail is kept whatever the size, so a failure is still explained.
        if is_stderr {
            self.stderr_partial.extend_from_slice(chunk);
            while let Some(end) = self.stderr_partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.stderr_partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if !line.is_empty() {
                    if self.stderr_tail.len() == STDERR_TAIL_LINES {
                        self.stderr_tail.pop_front();
                    }
                    self.stderr_tail.push_back(line);
                }
            }
        }
    }

    fn last_error_line(&self) -> Option<String> {
        let partial = String::from_utf8_lossy(&self.stderr_partial)
            .trim()
            .to_owned();
        let line = if partial.is_empty() {
            self.stderr_tail.back().cloned()?
        } else {
            partial
        };
        Some(line.chars().take(500).collect())
    }

    /// Rewrites the log if it changed and its last rewrite was long enough ago.
    async fn flush_when_due(&mut self, lake: &dyn Lake, path: &str) {
        if self
            .next_rewrite
            .is_none_or(|due| tokio::time::Instant::now() >= due)
        {
            self.flush(lake, path).await;
        }
    }

    /// Rewrites the log if it changed.
    async fn flush(&mut self, lake: &dyn Lake, path: &str) {
        if self.flushed == self.bytes.len() && self.flushed != 0 {
            return;
        }
        match lake.put(path, self.bytes.clone()).await {
            Ok(()) => {
                self.flushed = self.bytes.len();
                self.next_rewrite =
                    Some(tokio::time::Instant::now() + rewrite_interval(self.flushed));
            }
            Err(err) => warn!(%err, "cannot write the task log to the lake"),
        }
    }
}

/// Reads the JSON lines a script appends to `LANCER_PROGRESS_FILE`.
struct ProgressReader {
    path: PathBuf,
    offset: usize,
}

#[derive(serde::Deserialize)]
struct ProgressLine {
    #[serde(flatten)]
    progress: Progress,
    endpoint: Option<String>,
}

impl ProgressReader {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0 }
    }

    /// The newest complete progress line (and the newest endpoint) since the last read.
    fn read_new(&mut self) -> Option<Heartbeat> {
        let bytes = std::fs::read(&self.path).ok()?;
        let fresh = bytes.get(self.offset..)?;
        let complete = fresh.iter().rposition(|&b| b == b'\n')? + 1;
        self.offset += complete;
        let mut beat = Heartbeat::default();
        for line in fresh[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<ProgressLine>(line) {
                Ok(parsed) => {
                    let ProgressLine { progress, endpoint } = parsed;
                    if progress != Progress::default() {
                        beat.progress = Some(progress);
                    }
                    if endpoint.is_some() {
                        beat.endpoint = endpoint;
                    }
                }
                Err(err) => warn!(%err, "ignoring a progress line that is not valid JSON"),
            }
        }
        (beat != Heartbeat::default()).then_some(beat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_read_once_and_partial_lines_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.jsonl");
        std::fs::write(
            &path,
            "{\"fraction\":0.5}\n{\"fraction\":0.7,\"message\":\"m\"}\n{\"fra",
        )
        .expect("write");
        let mut reader = ProgressReader::new(path.clone());
        let beat = reader.read_new().expect("a complete line");
        assert_eq!(beat.progress.and_then(|p| p.fraction), Some(0.7));
        assert!(reader.read_new().is_none(), "nothing new");
        std::fs::write(&path, "{\"fraction\":0.5}\n{\"fraction\":0.7,\"message\":\"m\"}\n{\"fraction\":1.0}\n{\"endpoint\":\"http://127.0.0.1:1\"}\n")
            .expect("write");
        let beat = reader.read_new().expect("the completed line");
        assert_eq!(beat.progress.and_then(|p| p.fraction), Some(1.0));
        assert_eq!(beat.endpoint.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn output_past_the_log_limit_is_dropped_with_a_note_but_still_explains_a_failure() {
        let mut log = LogBuffer::default();
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..(MAX_STORED_LOG / line.len() + 100) {
            log.push(false, &line);
        }
        log.push(true, b"RuntimeError: out of patience\n");
        let note = "[lancer] the log reached 32 MiB: the rest of the output is not kept\n";
        assert_eq!(log.bytes.len(), MAX_STORED_LOG + 1 + note.len());
        assert!(log.bytes.ends_with(note.as_bytes()));
        assert_eq!(log.dropped, 100 * 1024 + 30);
        assert_eq!(
            log.last_error_line().as_deref(),
            Some("RuntimeError: out of patience")
        );
    }

    #[test]
    fn a_big_log_is_rewritten_less_often_than_a_small_one() {
        assert_eq!(rewrite_interval(0), Duration::from_secs(1));
        assert_eq!(
            rewrite_interval(LOG_REWRITE_BYTES_PER_SEC),
            Duration::from_secs(1)
        );
        assert_eq!(rewrite_interval(MAX_STORED_LOG), Duration::from_secs(8));
    }

    #[test]
    fn a_failure_is_explained_by_the_last_stderr_line() {
        let mut log = LogBuffer::default();
        log.push(false, b"working\n");
        log.push(
            true,
            b"Traceback (most recent call last):\n  File x\nValueError: bad params\n",
        );
        assert_eq!(
            log.last_error_line().as_deref(),
            Some("ValueError: bad params")
        );
    }
}
