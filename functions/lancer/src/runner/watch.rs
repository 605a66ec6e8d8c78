//! Watches a running script: streams its output into the log, its progress into
//! heartbeats, and stops it when the task is no longer this runner's.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::RunnerContext;
use super::log::LogBuffer;
use super::progress::ProgressReader;
use crate::domain::task::{Heartbeat, Task};
use crate::error::{Error, Result};

/// Why a runner that received SIGTERM or SIGINT stops its script.
pub const ASKED_TO_STOP: &str = "the runner was asked to stop";

/// How long a runner whose script died of a signal waits for a stop signal of its own.
const SIGNAL_SETTLE: Duration = Duration::from_millis(300);

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A chunk of the script's output.
struct Chunk {
    stream: Stream,
    bytes: Vec<u8>,
}

/// How the watch ended.
pub enum Ended {
    /// The script exited while the task was still this runner's.
    Exited(ExitStatus),
    /// The task is no longer this runner's (cancelled, expired, or the runner was told to
    /// stop): the script was stopped, and why.
    Stopped(String),
}

/// The task is no longer this attempt's: why, as the store said it.
pub struct Lost(pub String);

/// Sends a heartbeat; `Err(Lost)` once the task is no longer this attempt's.
pub async fn heartbeat(ctx: &RunnerContext, task: &Task, beat: Heartbeat) -> Result<(), Lost> {
    match ctx.store.heartbeat(&task.id, task.attempt, beat).await {
        Ok(_) => Ok(()),
        Err(Error::Stale(why)) | Err(Error::NotFound { kind: _, id: why }) => Err(Lost(why)),
        // A store hiccup is not a lost lease: the next beat may get through.
        Err(err) => {
            warn!(task = %task.id, %err, "heartbeat failed");
            Ok(())
        }
    }
}

/// Runs until the script exits or the task is lost; the log holds all output read.
pub async fn watch(
    ctx: &RunnerContext,
    task: &Task,
    child: &mut Child,
    log: &mut LogBuffer,
    progress: &mut ProgressReader,
) -> Result<Ended> {
    let mut output = output_channel(child);
    let mut terminate = signal_stream()?;
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut beat = tokio::time::interval(ctx.heartbeat_every);
    let mut streams_open = true;
    let lost = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                drain(&mut output, log).await;
                return exited(ctx, task, status, &mut terminate, progress).await;
            }
            chunk = output.recv(), if streams_open => match chunk {
                Some(chunk) => log.push(chunk.stream == Stream::Stderr, &chunk.bytes),
                None => streams_open = false,
            },
            _ = flush.tick() => {
                log.flush_when_due(ctx.lake.as_ref(), &task.log_path).await;
                if let Some(update) = progress.read_new() {
                    if let Err(Lost(why)) = heartbeat(ctx, task, update).await {
                        break why;
                    }
                    beat.reset();
                }
                progress.flush_when_due(ctx.lake.as_ref(), &task.progress_of(task.attempt)).await;
            }
            _ = beat.tick() => {
                if let Err(Lost(why)) = heartbeat(ctx, task, Heartbeat::default()).await {
                    break why;
                }
            }
            _ = terminate.recv() => break ASKED_TO_STOP.to_owned(),
        }
    };
    info!(task = %task.id, why = %lost, "stopping the script");
    stop_child(child, ctx.cancel_grace).await;
    drain(&mut output, log).await;
    Ok(Ended::Stopped(lost))
}

/// Decides whether a script's exit is its own outcome, or the end of a stop.
async fn exited(
    ctx: &RunnerContext,
    task: &Task,
    status: ExitStatus,
    terminate: &mut mpsc::Receiver<()>,
    progress: &mut ProgressReader,
) -> Result<Ended> {
    // A backend stopping the job (Ray's stop) signals the whole process group: a script
    // killed by a signal may be reported before the runner's own signal is. Then the
    // runner was stopped, and the backend, not the script, says why.
    if std::os::unix::process::ExitStatusExt::signal(&status).is_some()
        && tokio::time::timeout(SIGNAL_SETTLE, terminate.recv())
            .await
            .is_ok()
    {
        return Ok(Ended::Stopped(ASKED_TO_STOP.to_owned()));
    }
    // A cancel signals the script and the runner at once, so the script's exit can arrive
    // first: the last heartbeat says whether the task is still ours.
    match heartbeat(ctx, task, progress.read_new().unwrap_or_default()).await {
        Ok(()) => Ok(Ended::Exited(status)),
        Err(Lost(why)) => Ok(Ended::Stopped(why)),
    }
}

/// Both pipes of the script, as one channel of chunks.
fn output_channel(child: &mut Child) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, Stream::Stdout, tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, Stream::Stderr, tx));
    }
    rx
}

async fn pump(mut from: impl AsyncRead + Unpin, stream: Stream, to: mpsc::Sender<Chunk>) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        let chunk = Chunk {
            stream,
            bytes: buffer[..read].to_vec(),
        };
        if read == 0 || to.send(chunk).await.is_err() {
            break;
        }
    }
}

async fn drain(rx: &mut mpsc::Receiver<Chunk>, log: &mut LogBuffer) {
    // The pipes close once the script (and anything holding them) is gone.
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(chunk) => log.push(chunk.stream == Stream::Stderr, &chunk.bytes),
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
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
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
