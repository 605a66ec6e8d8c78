//! Dispatcher adapters (local subprocesses, Ray jobs, an in-memory fake) and what every
//! backend shares: the lease sweep and the reconcile loop.

use std::time::Duration;

use tracing::{info, warn};

use crate::domain::task::{Change, Task, TaskStatus, expire};
use crate::error::{Error, Result};
use crate::ports::{ListQuery, TaskStore};

pub mod listeners;
pub mod local;
pub mod memory;
pub mod ray;

/// Ends the running tasks whose runner stopped heartbeating for longer than `lease`:
/// requeued while attempts remain (returned, to be dispatched again), else failed.
pub async fn sweep_expired(store: &dyn TaskStore, lease: Duration) -> Result<Vec<Task>> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(lease)?;
    let mut requeued = Vec::new();
    for task in store.stale_running(cutoff).await? {
        let change = expire(&task);
        match store.transition(&task.id, task.guard(), change).await {
            Ok(next) if next.status == TaskStatus::Pending => {
                info!(task = %task.id, attempt = task.attempt, "lease expired; retrying");
                missed("requeued");
                requeued.push(next);
            }
            Ok(_) => {
                warn!(task = %task.id, attempt = task.attempt, "lease expired; task failed");
                missed("failed");
            }
            // Another writer (the runner itself, a cancel, a second sweeper) won the race.
            Err(Error::Stale(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(requeued)
}

fn missed(outcome: &str) {
    crate::telemetry::global().add(
        crate::telemetry::HEARTBEATS_MISSED,
        &[("outcome", outcome)],
        1.0,
    );
}

/// Every task in `status` across tenants, oldest first, for a dispatcher to look after.
pub async fn tasks_with_status(store: &dyn TaskStore, status: TaskStatus) -> Result<Vec<Task>> {
    let mut query = ListQuery {
        status: Some(status),
        limit: 500,
        ..Default::default()
    };
    let mut tasks = Vec::new();
    loop {
        let page = store.list(&query).await?;
        tasks.extend(page.tasks);
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => break,
        }
    }
    tasks.reverse();
    Ok(tasks)
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
