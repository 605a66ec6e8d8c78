//! The in-memory Dispatcher: it records what it was asked to do and, built with
//! `running_tasks`, plays the runner in-process, so tests of everything above the port
//! can watch tasks move without starting processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Notify;

use crate::domain::task::{Change, Task, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Dispatcher, TaskStore};

/// A task whose params hold `"hold": true` runs, under `running_tasks`, until cancelled;
/// any other completes at once with `{"ran": <attempt>}`.
pub const HOLD: &str = "hold";

/// The in-memory `Dispatcher`: it records the tasks it is asked to submit and cancel and,
/// built with `running_tasks`, runs them in-process.
pub struct RecordingDispatcher {
    store: Arc<dyn TaskStore>,
    runs_tasks: bool,
    submitted: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
    /// Wakes held tasks when something is cancelled.
    cancels: Arc<Notify>,
}

impl RecordingDispatcher {
    /// Records submissions and cancels; tasks stay as the store has them.
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        Self {
            store,
            runs_tasks: false,
            submitted: Mutex::default(),
            cancelled: Mutex::default(),
            cancels: Arc::default(),
        }
    }

    /// Also runs each submitted task in-process, the way a runner would: claims it,
    /// then completes it (or holds it until cancelled).
    pub fn running_tasks(store: Arc<dyn TaskStore>) -> Self {
        Self {
            runs_tasks: true,
            ..Self::new(store)
        }
    }

    /// The ids of the tasks submitted so far, in order, repeats included.
    pub fn submitted(&self) -> Vec<String> {
        self.submitted
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }

    /// The ids of the tasks cancelled so far, in order, repeats included.
    pub fn cancelled(&self) -> Vec<String> {
        self.cancelled
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }

    fn record(list: &Mutex<Vec<String>>, id: &str) -> Result<()> {
        list.lock()
            .map_err(|_| Error::internal("lock poisoned"))?
            .push(id.to_owned());
        Ok(())
    }
}

/// One attempt, as a runner would make it: claim by compare-and-set, then write the
/// outcome on that attempt. Losing either race means another writer owns the task.
async fn play_runner(store: Arc<dyn TaskStore>, cancels: Arc<Notify>, task: Task) -> Result<()> {
    let start = Change::Start {
        backend: "memory".into(),
    };
    let running = match store.transition(&task.id, task.guard(), start).await {
        Ok(running) => running,
        Err(Error::Stale(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    if running.spec.params.get(HOLD) == Some(&json!(true)) {
        // Held until a cancel moves the record on.
        loop {
            let wake = cancels.notified();
            match store.get(&running.id).await? {
                Some(now)
                    if now.status == TaskStatus::Running && now.attempt == running.attempt => {}
                _ => return Ok(()),
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), wake).await;
        }
    }
    let done = Change::Complete {
        result: json!({"ran": running.attempt}),
    };
    match store.transition(&running.id, running.guard(), done).await {
        Ok(_) | Err(Error::Stale(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

#[async_trait]
impl Dispatcher for RecordingDispatcher {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn submit(&self, task: &Task) -> Result<()> {
        Self::record(&self.submitted, task.id.as_str())?;
        if self.runs_tasks {
            let (store, cancels, task) = (self.store.clone(), self.cancels.clone(), task.clone());
            tokio::spawn(async move {
                if let Err(err) = play_runner(store, cancels, task).await {
                    tracing::warn!(%err, "the in-memory runner failed");
                }
            });
        }
        Ok(())
    }

    async fn cancel(&self, task: &Task) -> Result<()> {
        Self::record(&self.cancelled, task.id.as_str())?;
        self.cancels.notify_waiters();
        Ok(())
    }
}
