//! Dispatcher adapters (local subprocesses, an in-memory fake) and the lease sweep
//! every backend shares.

use std::time::Duration;

use tracing::{info, warn};

use crate::domain::task::{Change, Task, TaskStatus, expire};
use crate::error::{Error, Result};
use crate::ports::{ListQuery, TaskStore};

pub mod local;
pub mod memory;

/// Ends the running tasks whose runner stopped heartbeating for longer than `lease`:
/// requeued while attempts remain (returned, to be dispatched again), else failed.
pub async fn sweep_expired(store: &dyn TaskStore, lease: Duration) -> Result<Vec<Task>> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(lease).map_err(Error::internal)?;
    let mut requeued = Vec::new();
    for task in store.stale_running(cutoff).await? {
        let change = expire(&task);
        match store.transition(&task.id, task.guard(), change).await {
            Ok(next) if next.status == TaskStatus::Pending => {
                info!(task = %task.id, attempt = task.attempt, "lease expired; retrying");
                requeued.push(next);
            }
            Ok(_) => warn!(task = %task.id, attempt = task.attempt, "lease expired; task failed"),
            // Another writer (the runner itself, a cancel, a second sweeper) won the race.
            Err(Error::Conflict(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(requeued)
}

/// Every pending task across tenants, oldest first, for a dispatcher to pick up again.
pub async fn all_pending(store: &dyn TaskStore) -> Result<Vec<Task>> {
    let mut query = ListQuery {
        status: Some(TaskStatus::Pending),
        limit: 500,
        ..Default::default()
    };
    let mut pending = Vec::new();
    loop {
        let page = store.list(&query).await?;
        pending.extend(page.tasks);
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => break,
        }
    }
    pending.reverse();
    Ok(pending)
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
