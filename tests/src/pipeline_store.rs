//! The PipelineStore conformance suite: one set of behaviours every adapter must show.
//! `pipeline_store_conformance!` expands it into named tests for one adapter.

use std::any::Any;
use std::sync::Arc;

use crate::task_store::{task_id, tenant};
use lancer::Error;
use lancer::domain::cache::Digest;
use lancer::domain::path::LakePath;
use lancer::domain::pipeline::{
    Pipeline, PipelineId, PipelineSpec, PipelineStatus, check_pipeline,
};
use lancer::domain::tenant::{Tenant, TenantName};
use lancer::ports::{Created, PipelineStore};
use serde_json::json;

/// A store under test and whatever keeps it alive (a temp dir, a table).
pub struct Fixture {
    pub store: Arc<dyn PipelineStore>,
    pub keep: Box<dyn Any + Send>,
}

impl<S: PipelineStore + 'static> From<crate::stores::Opened<S>> for Fixture {
    fn from(opened: crate::stores::Opened<S>) -> Self {
        Self {
            store: opened.store,
            keep: opened.keep,
        }
    }
}

fn spec(name: &str, key: Option<&str>) -> PipelineSpec {
    let spec: PipelineSpec = serde_json::from_value(json!({
        "name": name,
        "idempotency_key": key,
        "steps": [
            {"name": "clean", "script": "c.py", "output": "digits"},
            {"name": "train", "script": "t.py", "input": "${steps.clean.output}"},
        ],
    }))
    .expect("a spec");
    check_pipeline(&spec).expect("a valid spec");
    spec
}

fn new_pipeline(tenant: &str, spec: PipelineSpec) -> Pipeline {
    let tenant = Tenant {
        name: TenantName::parse(tenant).expect("a tenant name"),
        root: LakePath::root(),
    };
    let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
    Pipeline::new(id, &tenant, spec, chrono::Utc::now())
}

async fn created(store: &dyn PipelineStore, pipeline: Pipeline) -> Pipeline {
    match store.create_pipeline(pipeline).await.expect("create") {
        Created::New(pipeline) => pipeline,
        Created::Existing(p) => panic!("expected a new pipeline, got existing {}", p.id),
    }
}

pub async fn create_then_get_returns_the_stored_pipeline(f: Fixture) {
    let pipeline = created(f.store.as_ref(), new_pipeline("acme", spec("flow", None))).await;
    let read = f.store.pipeline(&pipeline.id).await.expect("get");
    assert_eq!(read, Some(pipeline));
    let unknown = uuid::Uuid::now_v7().to_string();
    let unknown = PipelineId::parse(&unknown).expect("an id");
    assert_eq!(f.store.pipeline(&unknown).await.expect("get"), None);
}

pub async fn a_repeated_idempotency_key_returns_the_first_pipeline(f: Fixture) {
    let store = f.store.as_ref();
    let first = created(store, new_pipeline("acme", spec("flow", Some("nightly")))).await;
    match store
        .create_pipeline(new_pipeline("acme", spec("flow", Some("nightly"))))
        .await
        .expect("repeat")
    {
        Created::Existing(existing) => assert_eq!(existing.id, first.id),
        Created::New(p) => panic!("a second pipeline {} under the same key", p.id),
    }
    let other = store
        .create_pipeline(new_pipeline("acme", spec("other", Some("nightly"))))
        .await;
    assert!(
        matches!(other, Err(Error::Conflict(_))),
        "another spec under the key is a conflict: {other:?}"
    );
    let elsewhere = created(store, new_pipeline("globex", spec("flow", Some("nightly")))).await;
    assert_ne!(elsewhere.id, first.id, "keys are per tenant");
}

pub async fn of_two_racing_updates_from_one_revision_exactly_one_wins(f: Fixture) {
    let pipeline = created(f.store.as_ref(), new_pipeline("acme", spec("flow", None))).await;
    let racers = (0..6).map(|n| {
        let store = f.store.clone();
        let mut next = pipeline.clone();
        next.steps[0].round = n + 1;
        tokio::spawn(async move { store.update_pipeline(next).await })
    });
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.expect("join") {
            Ok(written) => winners.push(written),
            Err(Error::Stale(_)) => {}
            Err(err) => panic!("unexpected error: {err}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one write from revision 0 lands");
    let stored = f.store.pipeline(&pipeline.id).await.expect("get");
    assert_eq!(
        stored.as_ref(),
        Some(&winners[0]),
        "the stored record is the winner's"
    );
    assert_eq!(winners[0].revision, 1);
    let stale = f.store.update_pipeline(pipeline.clone()).await;
    assert!(matches!(stale, Err(Error::Stale(_))), "{stale:?}");
}

pub async fn an_update_of_an_unknown_pipeline_is_not_found(f: Fixture) {
    let never_stored = new_pipeline("acme", spec("flow", None));
    let answer = f.store.update_pipeline(never_stored).await;
    assert!(matches!(answer, Err(Error::NotFound { .. })), "{answer:?}");
}

pub async fn listing_pages_through_a_tenants_pipelines_newest_first(f: Fixture) {
    let store = f.store.as_ref();
    let mut ids = Vec::new();
    for n in 0..5 {
        let pipeline = created(store, new_pipeline("acme", spec(&format!("p{n}"), None))).await;
        ids.push(pipeline.id.to_string());
        created(store, new_pipeline("globex", spec("theirs", None))).await;
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list_pipelines(&tenant("acme"), 2, token.as_ref())
            .await
            .expect("list");
        assert!(page.pipelines.len() <= 2);
        seen.extend(page.pipelines.iter().map(|p| p.id.to_string()));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every pipeline of the tenant once, newest first");
}

pub async fn active_pipelines_are_the_running_ones_and_schedules_across_tenants(f: Fixture) {
    let store = f.store.as_ref();
    let first = created(store, new_pipeline("acme", spec("a", None))).await;
    let mut done = created(store, new_pipeline("acme", spec("b", None))).await;
    let mut nightly = spec("nightly", None);
    nightly.schedule = Some("0 3 * * *".into());
    let schedule = created(store, new_pipeline("globex", nightly)).await;
    assert_eq!(schedule.status, PipelineStatus::Scheduled);
    let third = created(store, new_pipeline("globex", spec("c", None))).await;
    done.status = PipelineStatus::Completed;
    store.update_pipeline(done).await.expect("complete");
    let active: Vec<String> = store
        .active_pipelines()
        .await
        .expect("active")
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    let expected = [&first, &schedule, &third].map(|p| p.id.to_string());
    assert_eq!(active, expected, "oldest first, finished ones left out");
}

pub async fn the_cache_remembers_the_newest_task_per_tenant_and_digest(f: Fixture) {
    let store = f.store.as_ref();
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let (d1, d2) = (Digest::of(b"one key"), Digest::of(b"another key"));
    assert_eq!(store.cached_task(&acme, &d1).await.expect("get"), None);
    for (who, task) in [(&acme, "task-1"), (&acme, "task-2"), (&globex, "task-3")] {
        store
            .remember_task(who, &d1, &task_id(task))
            .await
            .expect("put or replace");
    }
    assert_eq!(
        store.cached_task(&acme, &d1).await.expect("get"),
        Some(task_id("task-2"))
    );
    assert_eq!(
        store.cached_task(&globex, &d1).await.expect("get"),
        Some(task_id("task-3")),
        "each tenant has its own cache"
    );
    assert_eq!(store.cached_task(&acme, &d2).await.expect("get"), None);
}

#[macro_export]
macro_rules! pipeline_store_conformance {
    ($make:path) => {
        $crate::pipeline_store_conformance!(@tests $make;
            create_then_get_returns_the_stored_pipeline,
            a_repeated_idempotency_key_returns_the_first_pipeline,
            of_two_racing_updates_from_one_revision_exactly_one_wins,
            an_update_of_an_unknown_pipeline_is_not_found,
            listing_pages_through_a_tenants_pipelines_newest_first,
            active_pipelines_are_the_running_ones_and_schedules_across_tenants,
            the_cache_remembers_the_newest_task_per_tenant_and_digest,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::pipeline_store::$name($make().await).await;
            }
        )*
    };
}
