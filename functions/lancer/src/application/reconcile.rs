//! Reconciliation: bringing the backend in line with the task table, after a restart or a
//! lost runner. Running tasks whose lease expired are requeued (or failed once out of
//! attempts), every pending task is handed to the dispatcher (submitting is idempotent),
//! and where the backend has state of its own (a Ray job) its running tasks are looked at.
//! Nothing is kept in memory between rounds, so any process (a server, the AWS sweeper)
//! runs it, and each round says what it did.

use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::Service;
use crate::domain::task::{Task, TaskStatus, expire};
use crate::error::{Error, Result};
use crate::ports::{Dispatcher, ListQuery, TaskStore};

/// What one round did: the sweeper answers it, the server logs it, tests assert it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// Running tasks whose lease expired, back to pending for another attempt.
    pub requeued: usize,
    /// Running tasks whose lease expired on their last attempt, now failed.
    pub failed: usize,
    /// Pending tasks handed to the dispatcher (requeued ones among them).
    pub pending: usize,
    /// Running tasks the dispatcher looked at (a backend with jobs of its own).
    pub running: usize,
    /// Pipelines and schedules looked after (`Service::advance_pipelines`).
    pub pipelines: usize,
    /// What failed, each logged; the round went on past each.
    pub errors: usize,
}

impl Service {
    /// One round over the tasks (`reconcile`) with this service's ports and lease.
    pub async fn reconcile(&self) -> RoundReport {
        reconcile(self.store.as_ref(), self.dispatcher.as_ref(), self.lease).await
    }
}

/// One round over the tasks: expired leases first, then every pending task, then (where the
/// backend watches them) the running tasks it started.
pub async fn reconcile(
    store: &dyn TaskStore,
    dispatcher: &dyn Dispatcher,
    lease: Duration,
) -> RoundReport {
    let mut report = RoundReport::default();
    if let Err(err) = sweep_expired(store, lease, &mut report).await {
        note(&mut report, "sweeping expired leases", &err);
    }
    match tasks_with_status(store, TaskStatus::Pending).await {
        Ok(pending) => {
            for task in pending {
                report.pending += 1;
                if let Err(err) = dispatcher.look_after_pending(&task).await {
                    note(&mut report, &format!("handing over task {}", task.id), &err);
                }
            }
        }
        Err(err) => note(&mut report, "listing pending tasks", &err),
    }
    if dispatcher.watches_running() {
        look_after_running(store, dispatcher, &mut report).await;
    }
    report
}

async fn look_after_running(
    store: &dyn TaskStore,
    dispatcher: &dyn Dispatcher,
    report: &mut RoundReport,
) {
    let running = match tasks_with_status(store, TaskStatus::Running).await {
        Ok(running) => running,
        Err(err) => return note(report, "listing running tasks", &err),
    };
    for task in running
        .iter()
        .filter(|t| t.backend.as_deref() == Some(dispatcher.backend()))
    {
        report.running += 1;
        if let Err(err) = dispatcher.look_after_running(task).await {
            note(report, &format!("looking after task {}", task.id), &err);
        }
    }
}

fn note(report: &mut RoundReport, doing: &str, err: &Error) {
    warn!(%err, "reconcile: {doing} failed");
    report.errors += 1;
}

/// Ends the running tasks whose runner stopped heartbeating for longer than `lease`:
/// requeued while attempts remain (dispatched again with the pending ones), else failed.
async fn sweep_expired(
    store: &dyn TaskStore,
    lease: Duration,
    report: &mut RoundReport,
) -> Result<()> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(lease)?;
    for task in store.stale_running(cutoff).await? {
        match store
            .transition(&task.id, task.guard(), expire(&task))
            .await
        {
            Ok(next) if next.status == TaskStatus::Pending => {
                info!(task = %task.id, attempt = task.attempt, "lease expired; retrying");
                missed("requeued");
                report.requeued += 1;
            }
            Ok(_) => {
                warn!(task = %task.id, attempt = task.attempt, "lease expired; task failed");
                missed("failed");
                report.failed += 1;
            }
            // Another writer (the runner itself, a cancel, a second sweeper) won the race.
            Err(Error::Stale(_)) => {}
            Err(err) => note(report, &format!("expiring task {}", task.id), &err),
        }
    }
    Ok(())
}

fn missed(outcome: &str) {
    crate::telemetry::global().add(
        crate::telemetry::HEARTBEATS_MISSED,
        &[("outcome", outcome)],
        1.0,
    );
}

/// Every task in `status` across tenants, oldest first.
async fn tasks_with_status(store: &dyn TaskStore, status: TaskStatus) -> Result<Vec<Task>> {
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
