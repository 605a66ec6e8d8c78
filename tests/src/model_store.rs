//! The ModelStore conformance suite: one set of behaviours every adapter must show.
//! `model_store_conformance!` expands it into named tests for one adapter.

use std::any::Any;
use std::sync::Arc;

use lancer::Error;
use lancer::domain::model::{AliasName, AliasTarget, ModelName, ModelRecord};
use lancer::domain::path::LakePath;
use lancer::domain::serving::{Serving, ServingRequest};
use lancer::domain::tenant::TenantName;
use lancer::ports::ModelStore;

/// A store under test and whatever keeps it alive (a temp dir, a table).
pub struct Fixture {
    pub store: Arc<dyn ModelStore>,
    pub keep: Box<dyn Any + Send>,
}

impl<S: ModelStore + 'static> From<crate::stores::Opened<S>> for Fixture {
    fn from(opened: crate::stores::Opened<S>) -> Self {
        Self {
            store: opened.store,
            keep: opened.keep,
        }
    }
}

fn tenant(name: &str) -> TenantName {
    TenantName::parse(name).expect("a tenant name")
}

fn model(name: &str) -> ModelName {
    ModelName::parse(name).expect("a model name")
}

/// A new record of `name` in `tenant` with `production` at `version`.
fn with_alias(tenant_name: &str, name: &str, version: u64) -> ModelRecord {
    let mut record = ModelRecord::new(tenant(tenant_name), model(name));
    let alias = AliasName::parse("production").expect("an alias");
    record
        .set_alias(
            &alias,
            AliasTarget::single(version),
            &tenant(tenant_name),
            chrono::Utc::now(),
        )
        .expect("set");
    record
}

pub async fn a_stored_record_reads_back_whole_with_its_revision_bumped(f: Fixture) {
    let store = f.store.as_ref();
    assert_eq!(
        store
            .model_record(&tenant("acme"), &model("digits"))
            .await
            .expect("read"),
        None
    );
    let written = store
        .update_model(with_alias("acme", "digits", 3))
        .await
        .expect("create");
    assert_eq!(written.revision, 1);
    let read = store
        .model_record(&tenant("acme"), &model("digits"))
        .await
        .expect("read");
    assert_eq!(read, Some(written.clone()));
    let mut next = written;
    let canary = AliasName::parse("canary").expect("an alias");
    next.set_alias(
        &canary,
        AliasTarget::single(4),
        &tenant("acme"),
        chrono::Utc::now(),
    )
    .expect("set");
    let moved = store.update_model(next.clone()).await.expect("update");
    assert_eq!(moved.revision, 2);
    assert_eq!(moved.aliases, next.aliases);
}

pub async fn records_are_per_tenant_and_per_model(f: Fixture) {
    let store = f.store.as_ref();
    store
        .update_model(with_alias("acme", "digits", 3))
        .await
        .expect("acme's");
    store
        .update_model(with_alias("other", "digits", 5))
        .await
        .expect("other's");
    store
        .update_model(with_alias("acme", "faces", 7))
        .await
        .expect("faces");
    let version = |record: Option<ModelRecord>| {
        record
            .expect("a record")
            .versions_in_use()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let read = |t: &'static str, m: &'static str| async move {
        store.model_record(&tenant(t), &model(m)).await
    };
    assert_eq!(version(read("acme", "digits").await.expect("read")), [3]);
    assert_eq!(version(read("other", "digits").await.expect("read")), [5]);
    assert_eq!(version(read("acme", "faces").await.expect("read")), [7]);
    store
        .delete_model_record(&tenant("acme"), &model("digits"))
        .await
        .expect("delete");
    assert_eq!(read("acme", "digits").await.expect("read"), None);
    assert!(
        read("other", "digits").await.expect("read").is_some(),
        "other's stays"
    );
    store
        .delete_model_record(&tenant("acme"), &model("digits"))
        .await
        .expect("again: no-op");
}

pub async fn of_two_racing_writes_from_one_revision_exactly_one_wins(f: Fixture) {
    let store = f.store.clone();
    // Two creations of a record no one stored yet (revision 0), then two updates of one.
    for _ in 0..2 {
        let current = store
            .model_record(&tenant("acme"), &model("digits"))
            .await
            .expect("read")
            .unwrap_or_else(|| ModelRecord::new(tenant("acme"), model("digits")));
        let writes = (0..2u64).map(|n| {
            let store = store.clone();
            let mut next = current.clone();
            let alias = AliasName::parse("production").expect("an alias");
            next.set_alias(
                &alias,
                AliasTarget::single(10 + n),
                &tenant("acme"),
                chrono::Utc::now(),
            )
            .expect("set");
            tokio::spawn(async move { store.update_model(next).await })
        });
        let outcomes = futures::future::join_all(writes).await;
        let won = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
        let stale = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Err(Error::Stale(_)))))
            .count();
        assert_eq!((won, stale), (1, 1), "{outcomes:?}");
    }
    let last = store
        .model_record(&tenant("acme"), &model("digits"))
        .await
        .expect("read");
    assert_eq!(last.map(|r| r.revision), Some(2));
}

pub async fn a_write_over_a_revision_that_moved_on_is_stale(f: Fixture) {
    let store = f.store.as_ref();
    let first = store
        .update_model(with_alias("acme", "digits", 1))
        .await
        .expect("create");
    store.update_model(first.clone()).await.expect("update");
    match store.update_model(first).await {
        Err(Error::Stale(_)) => {}
        other => panic!("a write from revision 1 after revision 2: {other:?}"),
    }
    match store.update_model(with_alias("acme", "digits", 9)).await {
        Err(Error::Stale(_)) => {}
        other => panic!("a second creation of the same record: {other:?}"),
    }
}

/// `record` with serving declared (a minimal declaration).
fn declare(record: &mut ModelRecord) {
    let request: ServingRequest =
        serde_json::from_value(serde_json::json!({"script": "serve.py"})).expect("a request");
    record.serving = Some(Serving {
        spec: request.parse().expect("valid"),
        tenant_root: LakePath::root(),
        updated_at: chrono::Utc::now(),
        updated_by: record.tenant.clone(),
    });
}

/// The names of the served records of `tenant_name` (other tests' records may share a
/// table).
async fn served(store: &dyn ModelStore, tenant_name: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .serving_models()
        .await
        .expect("served")
        .into_iter()
        .filter(|record| record.tenant == tenant(tenant_name))
        .map(|record| record.model.to_string())
        .collect();
    names.sort();
    names
}

pub async fn only_records_that_serve_or_still_hold_replicas_are_listed_as_served(f: Fixture) {
    let store = f.store.as_ref();
    let tenant_name = format!("t{}", uuid::Uuid::new_v4().simple());
    store
        .update_model(with_alias(&tenant_name, "plain", 1))
        .await
        .expect("a record with an alias only");
    let mut record = with_alias(&tenant_name, "served", 1);
    declare(&mut record);
    let record = store.update_model(record).await.expect("a served record");
    assert_eq!(served(store, &tenant_name).await, ["served"]);

    let mut stopping = record;
    stopping.serving = None;
    let task = lancer::domain::task::TaskId::parse("replica-1").expect("an id");
    stopping.started(0, 1, task, chrono::Utc::now());
    assert!(
        stopping.replicas.is_empty(),
        "no replica starts without a declaration"
    );
    declare(&mut stopping);
    let task = lancer::domain::task::TaskId::parse("replica-1").expect("an id");
    stopping.started(0, 1, task, chrono::Utc::now());
    stopping.serving = None;
    let stopping = store
        .update_model(stopping)
        .await
        .expect("undeclared, one replica left");
    assert_eq!(
        served(store, &tenant_name).await,
        ["served"],
        "its replica is still to stop"
    );
    let mut stopped = stopping;
    stopped.replicas.clear();
    store
        .update_model(stopped)
        .await
        .expect("the last replica gone");
    assert!(served(store, &tenant_name).await.is_empty());
}

#[macro_export]
macro_rules! model_store_conformance {
    ($make:path) => {
        $crate::model_store_conformance!(@tests $make;
            a_stored_record_reads_back_whole_with_its_revision_bumped,
            records_are_per_tenant_and_per_model,
            of_two_racing_writes_from_one_revision_exactly_one_wins,
            a_write_over_a_revision_that_moved_on_is_stale,
            only_records_that_serve_or_still_hold_replicas_are_listed_as_served,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::model_store::$name($make().await).await;
            }
        )*
    };
}
