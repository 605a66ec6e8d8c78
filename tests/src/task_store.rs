//! The TaskStore conformance suite: one set of behaviours every adapter must show.
//! `task_store_conformance!` expands it into named tests for one adapter.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use lancer::Error;
use lancer::domain::path::{LakePath, Name};
use lancer::domain::task::{
    Change, FailureCode, Guard, Heartbeat, Progress, Task, TaskError, TaskId, TaskSpec, TaskStatus,
};
use lancer::domain::tenant::{Tenant, TenantName};
use lancer::ports::{Created, ListQuery, PageToken, TaskStore};
use serde_json::json;

/// A tenant's name, parsed.
pub fn tenant(name: &str) -> TenantName {
    TenantName::parse(name).expect("a tenant name")
}

/// A task id, parsed.
pub fn task_id(text: &str) -> TaskId {
    TaskId::parse(text).expect("a task id")
}

/// A store under test and whatever keeps it alive (a temp dir, a table).
pub struct Fixture {
    pub store: Arc<dyn TaskStore>,
    pub keep: Box<dyn Any + Send>,
}

impl<S: TaskStore + 'static> From<crate::stores::Opened<S>> for Fixture {
    fn from(opened: crate::stores::Opened<S>) -> Self {
        Self {
            store: opened.store,
            keep: opened.keep,
        }
    }
}

pub fn spec(name: &str) -> TaskSpec {
    serde_json::from_value(json!({"name": name, "script": "job.py"})).expect("a valid spec")
}

pub fn new_task(tenant: &str, spec: TaskSpec) -> Task {
    let id = TaskId::from_uuid(uuid::Uuid::now_v7());
    let tenant = Tenant {
        name: TenantName::parse(tenant).expect("a tenant name"),
        root: LakePath::root(),
    };
    Task::new(&id, &tenant, spec, None, None, chrono::Utc::now())
}

fn keyed(name: &str, key: &str) -> TaskSpec {
    TaskSpec {
        idempotency_key: Some(key.into()),
        ..spec(name)
    }
}

async fn created(store: &dyn TaskStore, task: Task) -> Task {
    match store.create(task).await.expect("create") {
        Created::New(task) => task,
        Created::Existing(task) => panic!("expected a new task, got existing {}", task.id),
    }
}

async fn started(store: &dyn TaskStore, task: &Task) -> Task {
    store
        .transition(
            &task.id,
            task.guard(),
            Change::Start {
                backend: "test".into(),
            },
        )
        .await
        .expect("start")
}

pub async fn create_then_get_returns_the_stored_task(f: Fixture) {
    let task = created(f.store.as_ref(), new_task("acme", spec("first"))).await;
    let read = f.store.get(&task.id).await.expect("get");
    assert_eq!(read, Some(task));
}

pub async fn get_of_an_unknown_id_is_none(f: Fixture) {
    assert_eq!(
        f.store.get(&task_id("no-such-task")).await.expect("get"),
        None
    );
}

pub async fn a_repeated_idempotency_key_returns_the_first_task(f: Fixture) {
    let first = created(f.store.as_ref(), new_task("acme", keyed("job", "key-1"))).await;
    match f
        .store
        .create(new_task("acme", keyed("job", "key-1")))
        .await
        .expect("repeat")
    {
        Created::Existing(task) => assert_eq!(task.id, first.id),
        Created::New(task) => panic!("duplicate task {}", task.id),
    }
    let other = f
        .store
        .create(new_task("acme", keyed("other-job", "key-1")))
        .await;
    assert!(
        matches!(other, Err(Error::Conflict(_))),
        "same key, different request: {other:?}"
    );
    let other_tenant = f
        .store
        .create(new_task("globex", keyed("job", "key-1")))
        .await
        .expect("create");
    assert!(
        matches!(other_tenant, Created::New(_)),
        "keys are per tenant"
    );
}

pub async fn concurrent_submissions_with_keys_lose_and_duplicate_nothing(f: Fixture) {
    let mut handles = Vec::new();
    for round in 0..4 {
        for n in 0..25 {
            let store = f.store.clone();
            handles.push(tokio::spawn(async move {
                let _ = round;
                store
                    .create(new_task("acme", keyed("job", &format!("key-{n}"))))
                    .await
            }));
        }
    }
    let mut ids_by_key = std::collections::HashMap::new();
    for handle in handles {
        let task = match handle.await.expect("join").expect("create") {
            Created::New(task) | Created::Existing(task) => task,
        };
        let key = task.spec.idempotency_key.clone().expect("key");
        let id = ids_by_key.entry(key).or_insert_with(|| task.id.clone());
        assert_eq!(*id, task.id, "one task per key");
    }
    assert_eq!(ids_by_key.len(), 25);
    let page = f
        .store
        .list(&ListQuery {
            tenant: Some(tenant("acme")),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.tasks.len(), 25, "nothing lost, nothing duplicated");
}

pub async fn of_two_racing_transitions_exactly_one_wins(f: Fixture) {
    let task = created(f.store.as_ref(), new_task("acme", spec("race"))).await;
    let attempts = (0..8).map(|n| {
        let store = f.store.clone();
        let task = task.clone();
        tokio::spawn(async move {
            let change = if n % 2 == 0 {
                Change::Start {
                    backend: "a".into(),
                }
            } else {
                Change::Cancel
            };
            store.transition(&task.id, task.guard(), change).await
        })
    });
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("join") {
            Ok(won) => winners.push(won),
            Err(Error::Stale(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:#?}");
    let stored = f.store.get(&task.id).await.expect("get").expect("exists");
    assert_eq!(
        stored, winners[0],
        "the stored record is the winner's write"
    );
    assert!(
        matches!(stored.status, TaskStatus::Running | TaskStatus::Cancelled),
        "{stored:#?}"
    );
}

pub async fn a_stale_guard_is_a_conflict_and_an_unknown_id_not_found(f: Fixture) {
    let task = created(f.store.as_ref(), new_task("acme", spec("guarded"))).await;
    let running = started(f.store.as_ref(), &task).await;
    let stale = f
        .store
        .transition(&task.id, task.guard(), Change::Cancel)
        .await;
    assert!(matches!(stale, Err(Error::Stale(_))), "{stale:?}");
    let wrong_attempt = Guard {
        status: TaskStatus::Running,
        attempt: running.attempt + 1,
    };
    let result = f
        .store
        .transition(
            &task.id,
            wrong_attempt,
            Change::Complete { result: json!({}) },
        )
        .await;
    assert!(matches!(result, Err(Error::Stale(_))), "{result:?}");
    let missing = f
        .store
        .transition(&task_id("no-such-task"), task.guard(), Change::Cancel)
        .await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    assert_eq!(
        f.store.get(&task.id).await.expect("get"),
        Some(running),
        "nothing half-written"
    );
}

pub async fn terminal_states_refuse_every_change(f: Fixture) {
    let task = created(f.store.as_ref(), new_task("acme", spec("done"))).await;
    let running = started(f.store.as_ref(), &task).await;
    let done = f
        .store
        .transition(
            &task.id,
            running.guard(),
            Change::Complete {
                result: json!({"ok": true}),
            },
        )
        .await
        .expect("complete");
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!({"ok": true})));
    for change in [
        Change::Cancel,
        Change::Start {
            backend: "x".into(),
        },
        Change::Fail {
            error: TaskError::new(FailureCode::ScriptFailed, "e"),
        },
    ] {
        let refused = f.store.transition(&task.id, done.guard(), change).await;
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    }
    assert_eq!(f.store.get(&task.id).await.expect("get"), Some(done));
}

pub async fn heartbeats_record_progress_only_for_the_running_attempt(f: Fixture) {
    let task = created(f.store.as_ref(), new_task("acme", spec("beat"))).await;
    let refused = f.store.heartbeat(&task.id, 1, Heartbeat::default()).await;
    assert!(
        matches!(refused, Err(Error::Stale(_))),
        "pending tasks take no heartbeat"
    );
    let running = started(f.store.as_ref(), &task).await;
    let beat = Heartbeat {
        progress: Some(Progress {
            fraction: Some(0.25),
            message: Some("epoch 1".into()),
            metrics: Some(json!({"loss": 0.5})),
        }),
        endpoint: Some("http://127.0.0.1:9999".into()),
        sandbox: Some("landlock+namespaces+nocaps".parse().expect("a level")),
        input_version: Some(3),
        output_version: Some(7),
    };
    let updated = f
        .store
        .heartbeat(&task.id, running.attempt, beat)
        .await
        .expect("heartbeat");
    assert_eq!(
        updated.progress.as_ref().and_then(|p| p.fraction),
        Some(0.25)
    );
    assert_eq!(updated.endpoint.as_deref(), Some("http://127.0.0.1:9999"));
    assert_eq!(
        (
            updated.lineage.input_version,
            updated.lineage.output_version
        ),
        (Some(3), Some(7)),
        "the versions it read and wrote"
    );
    assert!(updated.heartbeat_at >= running.heartbeat_at);
    assert_eq!(
        f.store.get(&task.id).await.expect("get"),
        Some(updated.clone())
    );
    let wrong = f
        .store
        .heartbeat(&task.id, running.attempt + 1, Heartbeat::default())
        .await;
    assert!(
        matches!(wrong, Err(Error::Stale(_))),
        "another attempt's heartbeat"
    );
    f.store
        .transition(&task.id, updated.guard(), Change::Cancel)
        .await
        .expect("cancel");
    let late = f
        .store
        .heartbeat(&task.id, running.attempt, Heartbeat::default())
        .await;
    assert!(
        matches!(late, Err(Error::Stale(_))),
        "a cancelled task takes no heartbeat"
    );
}

pub async fn a_requeued_task_waits_again_and_its_old_attempt_can_no_longer_write(f: Fixture) {
    let task = created(
        f.store.as_ref(),
        new_task("acme", keyed("again", "k-requeue")),
    )
    .await;
    let first = started(f.store.as_ref(), &task).await;
    let beat = Heartbeat {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Heartbeat::default()
    };
    let first = f
        .store
        .heartbeat(&task.id, first.attempt, beat)
        .await
        .expect("heartbeat");
    let lost = TaskError::new(
        FailureCode::LeaseExpired,
        "the runner of attempt 1 went silent",
    );
    let requeued = f
        .store
        .transition(
            &task.id,
            first.guard(),
            Change::Requeue {
                error: lost.clone(),
            },
        )
        .await
        .expect("requeue");
    assert_eq!(requeued.status, TaskStatus::Pending);
    assert_eq!(
        requeued.attempt, 1,
        "the next start counts the next attempt"
    );
    assert_eq!(requeued.error, Some(lost));
    assert_eq!((requeued.endpoint, requeued.heartbeat_at), (None, None));
    assert_eq!(
        f.store
            .get(&task.id)
            .await
            .expect("get")
            .as_ref()
            .map(|t| t.status),
        Some(TaskStatus::Pending)
    );
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    let stale = f.store.stale_running(far_future).await.expect("stale");
    assert!(stale.iter().all(|t| t.id != task.id), "no longer running");

    let old = f.store.heartbeat(&task.id, 1, Heartbeat::default()).await;
    assert!(
        matches!(old, Err(Error::Stale(_))),
        "the old attempt's heartbeat: {old:?}"
    );
    let done = Change::Complete {
        result: json!({"late": true}),
    };
    let old = f.store.transition(&task.id, first.guard(), done).await;
    assert!(
        matches!(old, Err(Error::Stale(_))),
        "the old attempt's result: {old:?}"
    );

    let second = started(
        f.store.as_ref(),
        &f.store.get(&task.id).await.expect("get").expect("task"),
    )
    .await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.error, None);
    assert!(
        second.log_path.as_str().ends_with("/2.log"),
        "{}",
        second.log_path
    );
    let again = f
        .store
        .create(new_task("acme", keyed("again", "k-requeue")))
        .await
        .expect("create");
    assert!(
        matches!(again, Created::Existing(t) if t.id == task.id),
        "the key still names it"
    );
}

pub async fn listing_pages_through_a_tenants_tasks_newest_first(f: Fixture) {
    let mut ids = Vec::new();
    for n in 0..23 {
        ids.push(
            created(
                f.store.as_ref(),
                new_task("acme", spec(&format!("job-{n}"))),
            )
            .await
            .id,
        );
    }
    created(f.store.as_ref(), new_task("globex", spec("theirs"))).await;
    ids.reverse();
    let mut seen = Vec::new();
    let mut query = ListQuery {
        tenant: Some(tenant("acme")),
        limit: 5,
        ..Default::default()
    };
    loop {
        let page = f.store.list(&query).await.expect("list");
        assert!(page.tasks.len() <= 5);
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => break,
        }
    }
    assert_eq!(
        seen, ids,
        "every task once, newest first, only the tenant's"
    );
    // A token past every id (a forged one parses: it only names where to continue) lists
    // what lies below it, and nothing of another tenant.
    let past_all = f
        .store
        .list(&ListQuery {
            tenant: Some(tenant("acme")),
            page_token: Some(PageToken::after("~")),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        past_all.tasks.len(),
        ids.len(),
        "every acme task lies below '~'"
    );
}

pub async fn listing_filters_by_status(f: Fixture) {
    let a = created(f.store.as_ref(), new_task("acme", spec("a"))).await;
    let b = created(f.store.as_ref(), new_task("acme", spec("b"))).await;
    started(f.store.as_ref(), &b).await;
    let running = f
        .store
        .list(&ListQuery {
            tenant: Some(tenant("acme")),
            status: Some(TaskStatus::Running),
            limit: 10,
            page_token: None,
            name_prefix: None,
        })
        .await
        .expect("list");
    assert_eq!(
        running
            .tasks
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>(),
        vec![b.id]
    );
    let pending = f
        .store
        .list(&ListQuery {
            tenant: None,
            status: Some(TaskStatus::Pending),
            limit: 10,
            page_token: None,
            name_prefix: None,
        })
        .await
        .expect("list");
    assert_eq!(
        pending
            .tasks
            .iter()
            .map(|t| t.id.clone())
            .collect::<HashSet<_>>(),
        HashSet::from([a.id])
    );
}

pub async fn listing_filters_by_the_start_of_the_name(f: Fixture) {
    let store = f.store.as_ref();
    let train = created(store, new_task("acme", spec("mnist-train"))).await;
    created(store, new_task("acme", spec("mnist-clean"))).await;
    created(store, new_task("acme", spec("other-mnist"))).await;
    created(store, new_task("globex", spec("mnist-theirs"))).await;
    started(store, &train).await;
    let names = |tenant: Option<&str>, status: Option<TaskStatus>, prefix: &str| {
        let query = ListQuery {
            tenant: tenant.map(self::tenant),
            status,
            name_prefix: Some(Name::parse("name", prefix).expect("a name")),
            limit: 10,
            page_token: None,
        };
        async move {
            let page = store.list(&query).await.expect("list");
            page.tasks
                .into_iter()
                .map(|t| t.spec.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names(Some("acme"), None, "mnist").await,
        ["mnist-clean", "mnist-train"]
    );
    assert_eq!(names(Some("acme"), None, "mnist-t").await, ["mnist-train"]);
    assert_eq!(
        names(Some("acme"), Some(TaskStatus::Pending), "mnist").await,
        ["mnist-clean"]
    );
    assert_eq!(
        names(Some("acme"), None, "nothing").await,
        Vec::<String>::new()
    );
    let mut everywhere = names(None, None, "mnist-").await;
    everywhere.sort();
    assert_eq!(everywhere, ["mnist-clean", "mnist-theirs", "mnist-train"]);
}

pub async fn stale_running_finds_only_tasks_with_old_heartbeats(f: Fixture) {
    let old = created(f.store.as_ref(), new_task("acme", spec("old"))).await;
    let old = started(f.store.as_ref(), &old).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let fresh = created(f.store.as_ref(), new_task("acme", spec("fresh"))).await;
    started(f.store.as_ref(), &fresh).await;
    created(f.store.as_ref(), new_task("acme", spec("pending"))).await;
    let stale = f.store.stale_running(cutoff).await.expect("stale");
    assert_eq!(
        stale.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![old.id]
    );
}

/// Expands the suite into `#[tokio::test]`s for one adapter; `$make` is an async fn -> Fixture.
#[macro_export]
macro_rules! task_store_conformance {
    ($make:path) => {
        $crate::task_store_conformance!(@tests $make;
            create_then_get_returns_the_stored_task,
            get_of_an_unknown_id_is_none,
            a_repeated_idempotency_key_returns_the_first_task,
            concurrent_submissions_with_keys_lose_and_duplicate_nothing,
            of_two_racing_transitions_exactly_one_wins,
            a_stale_guard_is_a_conflict_and_an_unknown_id_not_found,
            terminal_states_refuse_every_change,
            heartbeats_record_progress_only_for_the_running_attempt,
            a_requeued_task_waits_again_and_its_old_attempt_can_no_longer_write,
            listing_pages_through_a_tenants_tasks_newest_first,
            listing_filters_by_status,
            listing_filters_by_the_start_of_the_name,
            stale_running_finds_only_tasks_with_old_heartbeats,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::task_store::$name($make().await).await;
            }
        )*
    };
}
