//! The Dispatcher conformance suite: what every backend must do with the tasks it is
//! given, seen only through the store. `dispatcher_conformance!` expands it into named
//! tests for one backend.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lancer::application::{RoundReport, cancel_in_store, reconcile};
use lancer::domain::path::LakePath;
use lancer::domain::task::{Change, Task, TaskId, TaskSpec, TaskStatus};
use lancer::domain::tenant::{Tenant, TenantName};
use lancer::ports::{Created, Dispatcher, TaskStore};
use serde_json::json;

/// A dispatcher under test, the store it serves, and how to ask it for work.
pub struct Fixture {
    pub dispatcher: Arc<dyn Dispatcher>,
    pub store: Arc<dyn TaskStore>,
    /// What reconcile sweeps running tasks by.
    pub lease: Duration,
    /// A spec that completes within seconds.
    pub quick: TaskSpec,
    /// A spec that runs until it is stopped.
    pub slow: TaskSpec,
    /// How long a task may take on this backend (a real runner starts in a second or two).
    pub patience: Duration,
    /// Whether the backend runs each task as a `lancer-runner <id>` process on this host
    /// (the local runners, and Ray jobs on the head the suite starts here).
    pub runner_processes: bool,
    pub keep: Box<dyn Any + Send>,
}

/// A spec for a script `name` (registered by the fixture) with `params`.
pub fn spec(script: &str, params: serde_json::Value) -> TaskSpec {
    serde_json::from_value(json!({"name": "conformance", "script": script, "params": params}))
        .expect("a valid spec")
}

async fn stored(f: &Fixture, spec: &TaskSpec) -> Task {
    let id = TaskId::from_uuid(uuid::Uuid::now_v7());
    let tenant = Tenant {
        name: TenantName::parse("acme").expect("a tenant name"),
        root: LakePath::root(),
    };
    let task = Task::new(&id, &tenant, spec.clone(), None, None, chrono::Utc::now());
    match f.store.create(task).await.expect("create") {
        Created::New(task) => task,
        Created::Existing(task) => panic!("a fresh id was taken by {}", task.id),
    }
}

/// The task once `done` holds of it, within the fixture's patience.
async fn until(f: &Fixture, id: &TaskId, what: &str, done: impl Fn(&Task) -> bool) -> Task {
    let deadline = Instant::now() + f.patience;
    loop {
        let task = f
            .store
            .get(id)
            .await
            .expect("get")
            .expect("the task exists");
        if done(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "task never {what}: {task:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn a_task_submitted_twice_runs_once_to_completion(f: Fixture) {
    let task = stored(&f, &f.quick).await;
    f.dispatcher.submit(&task).await.expect("submit");
    f.dispatcher.submit(&task).await.expect("submit again");
    let done = until(&f, &task.id, "ended", |t| t.status.is_terminal()).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:#?}");
    assert_eq!(done.attempt, 1, "one run, however often it was submitted");
    assert_eq!(done.backend.as_deref(), Some(f.dispatcher.backend()));
}

pub async fn reconcile_runs_a_pending_task_it_was_never_given(f: Fixture) {
    // What a restart finds: a task stored, but never handed to this dispatcher.
    let task = stored(&f, &f.quick).await;
    let round = reconcile(f.store.as_ref(), f.dispatcher.as_ref(), f.lease).await;
    assert_eq!(
        round,
        RoundReport {
            pending: 1,
            ..Default::default()
        },
        "the round handed over the one pending task"
    );
    let done = until(&f, &task.id, "ended", |t| t.status.is_terminal()).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:#?}");
}

pub async fn a_cancelled_task_stops_and_stays_cancelled(f: Fixture) {
    let task = stored(&f, &f.slow).await;
    f.dispatcher.submit(&task).await.expect("submit");
    let running = until(&f, &task.id, "ran", |t| t.status == TaskStatus::Running).await;
    let cancelled = cancel_in_store(f.store.as_ref(), &running)
        .await
        .expect("cancel in the store");
    f.dispatcher.cancel(&cancelled).await.expect("cancel");
    if f.runner_processes {
        assert!(runners_of(&task.id) > 0, "a runner process ran the task");
    }
    // A runner that kept going would heartbeat or write its outcome: once it is gone,
    // nothing can, and nothing may have.
    let deadline = Instant::now() + f.patience;
    while runners_of(&task.id) > 0 {
        assert!(Instant::now() < deadline, "the runner outlived the cancel");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = f.store.get(&task.id).await.expect("get").expect("exists");
    assert_eq!(after.status, TaskStatus::Cancelled, "{after:#?}");
    assert_eq!(
        after.finished_at, cancelled.finished_at,
        "nothing wrote after the cancel"
    );
}

/// Live processes on this host whose command line is `lancer-runner <id>` (a zombie's
/// command line is empty, so a runner that exited and awaits reaping is not counted).
fn runners_of(id: &TaskId) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = raw.split(|byte| *byte == 0).collect();
            args.first()
                .is_some_and(|program| program.ends_with(b"lancer-runner"))
                && args.contains(&id.as_str().as_bytes())
        })
        .count()
}

pub async fn reconcile_retries_a_task_whose_runner_went_silent(f: Fixture) {
    let retried = TaskSpec {
        max_attempts: 2,
        ..f.quick.clone()
    };
    let task = stored(&f, &retried).await;
    // Attempt 1 claimed by a runner that then died without a word.
    let start = Change::Start {
        backend: f.dispatcher.backend().into(),
    };
    let lost = f
        .store
        .transition(&task.id, task.guard(), start)
        .await
        .expect("claim");
    tokio::time::sleep(f.lease + Duration::from_millis(500)).await;
    let round = reconcile(f.store.as_ref(), f.dispatcher.as_ref(), f.lease).await;
    assert_eq!(
        (round.requeued, round.failed, round.pending, round.errors),
        (1, 0, 1, 0),
        "the lost attempt was requeued and handed over again: {round:?}"
    );
    let done = until(&f, &task.id, "ended", |t| t.status.is_terminal()).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:#?}");
    assert_eq!(
        done.attempt,
        lost.attempt + 1,
        "the retry is the next attempt"
    );
}

#[macro_export]
macro_rules! dispatcher_conformance {
    ($make:path) => {
        $crate::dispatcher_conformance!(@tests $make;
            a_task_submitted_twice_runs_once_to_completion,
            reconcile_runs_a_pending_task_it_was_never_given,
            a_cancelled_task_stops_and_stays_cancelled,
            reconcile_retries_a_task_whose_runner_went_silent,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::dispatcher::$name($make().await).await;
            }
        )*
    };
}
