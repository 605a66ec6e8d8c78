//! The local dispatcher of the embedded default: one runner subprocess per task.
//! Batch tasks share `concurrency` slots, tenants taking turns and each within its share
//! (`domain::fair`); a task that reports an endpoint is a service and gives its slot back,
//! within its tenant's service limit, so services run beside the batch queue.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tracing::{error, info, warn};

use super::listeners;
use crate::config::ConfigError;
use crate::domain::endpoint::Reported;
use crate::domain::fair::{FairLimits, FairQueue, Held};
use crate::domain::task::{Task, TaskId, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Dispatcher, TaskStore};
use std::net::SocketAddr;

/// How to start a runner: its binary and the environment that carries the configuration.
#[derive(Debug, Clone)]
pub struct RunnerCommand {
    /// The runner binary, started as `<program> <task id>`.
    pub program: PathBuf,
    /// The variables that carry the runner's configuration; the server's own `LANCER_*`
    /// variables are not passed on.
    pub env: Vec<(String, String)>,
}

impl RunnerCommand {
    /// `lancer-runner` beside the running binary, unless configured.
    pub fn locate(
        configured: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Result<Self, ConfigError> {
        let program = match configured {
            Some(path) => path,
            None => std::env::current_exe()
                .map_err(|err| ConfigError(format!("cannot tell where this binary is: {err}")))?
                .with_file_name("lancer-runner"),
        };
        if !program.exists() {
            return Err(ConfigError(format!(
                "runner binary {} not found: build it (cargo build) or set LANCER_RUNNER",
                program.display()
            )));
        }
        Ok(Self { program, env })
    }
}

struct Inner {
    store: Arc<dyn TaskStore>,
    runner: RunnerCommand,
    queue: Mutex<FairQueue<TaskId>>,
    grace: Duration,
    /// Tasks this dispatcher has taken and whose runner has not exited yet.
    active: Mutex<HashSet<String>>,
    /// Runner process ids, which are also their process-group ids.
    runners: Mutex<HashMap<String, u32>>,
}

/// The `Dispatcher` that runs each task as a local runner subprocess in a process group of
/// its own, started as the fair queue frees a slot.
#[derive(Clone)]
pub struct LocalDispatcher {
    inner: Arc<Inner>,
}

impl LocalDispatcher {
    /// A dispatcher over `store` that starts `runner` within `limits`, and kills a
    /// cancelled task's runner once `grace` (and a little more) has passed after SIGTERM.
    pub fn new(
        store: Arc<dyn TaskStore>,
        runner: RunnerCommand,
        limits: FairLimits,
        grace: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                runner,
                queue: Mutex::new(FairQueue::new(limits)),
                grace,
                active: Mutex::new(HashSet::new()),
                runners: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    /// Queues the task once; true if it was not already being handled.
    fn take(&self, id: &str) -> bool {
        self.active
            .lock()
            .map(|mut active| active.insert(id.to_owned()))
            .unwrap_or(false)
    }

    fn release(&self, id: &str) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(id);
        }
        if let Ok(mut runners) = self.runners.lock() {
            runners.remove(id);
        }
    }

    fn runner_pid(&self, id: &str) -> Option<u32> {
        self.runners.lock().ok()?.get(id).copied()
    }

    /// Whether process group `group` is the runner of task `id`: one this dispatcher
    /// started, or (a runner a previous server started) the runner binary with that task.
    fn is_runner_of(&self, group: i32, id: &str) -> bool {
        if self.runner_pid(id).is_some_and(|pid| pid as i32 == group) {
            return true;
        }
        let program = self.runner.program.file_name();
        listeners::command_line(group).is_some_and(|args| {
            args.len() == 2
                && std::path::Path::new(&args[0]).file_name() == program
                && args[1] == id
        })
    }

    /// Starts every task the fair queue lets start now.
    fn pump(self: &Arc<Self>) {
        loop {
            let next = match self.queue.lock() {
                Ok(mut queue) => queue.start_next(),
                Err(_) => return,
            };
            let Some((tenant, id)) = next else { return };
            tokio::spawn(self.clone().run(tenant, id));
        }
    }

    /// Gives back what a task held and lets the next ones start.
    fn done(self: &Arc<Self>, tenant: &str, id: &str, held: Held) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.finished(tenant, held);
        }
        self.release(id);
        self.pump();
    }

    async fn run(self: Arc<Self>, tenant: String, task_id: TaskId) {
        // It may have been cancelled while it waited for a slot.
        match self.store.get(&task_id).await {
            Ok(Some(task)) if task.status == TaskStatus::Pending => {}
            Ok(_) => return self.done(&tenant, task_id.as_str(), Held::Slot),
            Err(err) => {
                error!(task = %task_id, %err, "cannot read task before starting it");
                return self.done(&tenant, task_id.as_str(), Held::Slot);
            }
        }
        let mut command = Command::new(&self.runner.program);
        // The runner's configuration is `runner.env` alone: no API keys, and none of the
        // server's own variables, which flags may have overridden (a runner that read a
        // bad LANCER_HOST the server ignored would never start).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LANCER_") {
                command.env_remove(name);
            }
        }
        let spawned = command
            .arg(task_id.as_str())
            .envs(self.runner.env.iter().cloned())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                error!(task = %task_id, %err, "cannot start the runner");
                return self.done(&tenant, task_id.as_str(), Held::Slot);
            }
        };
        let pid = child.id().unwrap_or_default();
        if let Ok(mut runners) = self.runners.lock() {
            runners.insert(task_id.to_string(), pid);
        }
        info!(task = %task_id, pid, "runner started");
        let (status, held) = self.watch_runner(&mut child, &tenant, &task_id).await;
        match status {
            Ok(status) if status.success() => info!(task = %task_id, "runner exited"),
            Ok(status) => warn!(task = %task_id, %status, "runner ended abnormally"),
            Err(err) => warn!(task = %task_id, %err, "lost track of the runner"),
        }
        // Whatever the runner left behind (its script, after a kill -9) goes with it.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        self.done(&tenant, task_id.as_str(), held);
    }

    /// Waits for the runner; a task that starts serving becomes a service, giving its batch
    /// slot back if its tenant may run another service.
    async fn watch_runner(
        self: &Arc<Self>,
        child: &mut tokio::process::Child,
        tenant: &str,
        task_id: &TaskId,
    ) -> (std::io::Result<std::process::ExitStatus>, Held) {
        let mut held = Held::Slot;
        let mut serving = false;
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                status = child.wait() => return (status, held),
                _ = poll.tick(), if !serving => {
                    if let Ok(Some(task)) = self.store.get(task_id).await
                        && task.endpoint.is_some()
                    {
                        serving = true;
                        held = match self.queue.lock() {
                            Ok(mut queue) => queue.became_service(tenant),
                            Err(_) => Held::Slot,
                        };
                        if held == Held::Service {
                            info!(task = %task_id, "task serves an endpoint; its batch slot is free");
                            self.pump();
                        } else {
                            warn!(task = %task_id, %tenant, "the tenant runs its most services; this one keeps its batch slot");
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Dispatcher for LocalDispatcher {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn submit(&self, task: &Task) -> Result<()> {
        if self.inner.take(task.id.as_str()) {
            if let Ok(mut queue) = self.inner.queue.lock() {
                queue.push(task.tenant.as_str(), task.id.clone());
            }
            self.inner.pump();
        }
        Ok(())
    }

    /// A loopback port is the task's when a process of its runner's group listens on it:
    /// the script runs in the runner's process group, and no other task's process or
    /// service on the machine can join that group.
    async fn endpoint_of(&self, task: &Task, reported: Reported) -> Result<Option<SocketAddr>> {
        let target = reported.0;
        if !target.ip().is_loopback() {
            return Ok(None);
        }
        let inner = self.inner.clone();
        let id = task.id.to_string();
        let owned = tokio::task::spawn_blocking(move || {
            let groups = listeners::owners_of(target)?;
            Ok::<_, std::io::Error>(
                groups
                    .into_iter()
                    .any(|group| inner.is_runner_of(group, &id)),
            )
        })
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)?;
        Ok(owned.then_some(target))
    }

    async fn cancel(&self, task: &Task) -> Result<()> {
        let Some(pid) = self.inner.runner_pid(task.id.as_str()) else {
            return Ok(()); // queued only: the runner will find it cancelled and not start it
        };
        let group = Pid::from_raw(pid as i32);
        // SIGTERM reaches the runner and its script; the runner forwards the grace period.
        let _ = killpg(group, Signal::SIGTERM);
        let inner = self.inner.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.grace + Duration::from_secs(2)).await;
            if inner.runner_pid(id.as_str()) == Some(pid) {
                warn!(task = %id, "runner outlived the grace period; killing it");
                let _ = killpg(group, Signal::SIGKILL);
            }
        });
        Ok(())
    }
}
