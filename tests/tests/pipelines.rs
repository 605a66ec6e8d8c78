//! Pipelines through the REST API: submitted, advanced by reconcile rounds, cancelled and
//! retried, over the in-memory stores and a dispatcher that records what it was asked.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use lancer::application::Service;
use lancer::config::ScheduleLimits;
use lancer::domain::path::LakePath;
use lancer::domain::pipeline::{Pipeline, PipelineId, PipelineSpec};
use lancer::domain::task::{Change, FailureCode, Heartbeat, TaskError, TaskId};
use lancer::domain::tenant::Tenant;
use lancer_tests::app::TestApp;
use serde_json::{Value, json};

fn flow() -> Value {
    json!({
        "name": "flow",
        "steps": [
            {"name": "clean", "script": "jobs/noop.py", "output": "digits"},
            {"name": "train", "script": "jobs/noop.py", "input": "${steps.clean.output}", "output": "models/cnn"},
            {"name": "report", "script": "jobs/noop.py", "after": ["train"]},
        ],
    })
}

async fn submit(app: &TestApp, body: &Value) -> Value {
    let answer = app.post("/api/v1/pipelines", body, &[]).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    answer.json()
}

async fn read(app: &TestApp, id: &str) -> Value {
    let answer = app.get(&format!("/api/v1/pipelines/{id}"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

fn statuses(pipeline: &Value) -> Vec<String> {
    pipeline["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn task_of(pipeline: &Value, step: usize) -> String {
    pipeline["steps"][step]["task_id"]
        .as_str()
        .expect("the step has a task")
        .to_owned()
}

fn completed() -> Change {
    Change::Complete {
        result: json!({"ok": true}),
    }
}

#[tokio::test]
async fn a_pipeline_runs_its_steps_in_order_feeding_each_the_output_it_names() {
    let app = TestApp::new(None);
    let pipeline = submit(&app, &flow()).await;
    let id = pipeline["id"].as_str().expect("id").to_owned();
    assert_eq!(statuses(&pipeline), ["pending", "waiting", "waiting"]);
    assert_eq!(pipeline["status"], "running");
    app.finish(&task_of(&pipeline, 0), completed()).await;
    app.advance_pipelines().await;
    let pipeline = read(&app, &id).await;
    assert_eq!(statuses(&pipeline), ["completed", "pending", "waiting"]);
    let train = app
        .get(&format!("/api/v1/tasks/{}", task_of(&pipeline, 1)), &[])
        .await
        .json();
    assert_eq!(train["spec"]["input"], "datasets/digits.lance");
    assert_eq!(train["input_path"], "datasets/digits.lance");
    assert_eq!(train["spec"]["name"], "train");
    assert_eq!(
        train["lineage"]["pipeline"],
        json!(id),
        "the task names its pipeline"
    );
    assert_eq!(train["lineage"]["step"], "train");
    app.finish(&task_of(&pipeline, 1), completed()).await;
    app.advance_pipelines().await;
    let pipeline = read(&app, &id).await;
    app.finish(&task_of(&pipeline, 2), completed()).await;
    app.advance_pipelines().await;
    let pipeline = read(&app, &id).await;
    assert_eq!(statuses(&pipeline), ["completed", "completed", "completed"]);
    assert_eq!(pipeline["status"], "completed");
    assert!(pipeline["finished_at"].is_string());
    assert_eq!(app.dispatcher.submitted().len(), 3, "one task per step");
}

#[tokio::test]
async fn a_failed_step_skips_what_follows_and_retry_resumes_from_it_keeping_completed_steps() {
    let app = TestApp::new(None);
    let pipeline = submit(&app, &flow()).await;
    let id = pipeline["id"].as_str().expect("id").to_owned();
    let clean = task_of(&pipeline, 0);
    app.finish(&clean, completed()).await;
    app.advance_pipelines().await;
    let first_train = task_of(&read(&app, &id).await, 1);
    let fail = Change::Fail {
        error: TaskError::new(FailureCode::ScriptFailed, "out of memory"),
    };
    app.finish(&first_train, fail).await;
    app.advance_pipelines().await;
    let failed = read(&app, &id).await;
    assert_eq!(statuses(&failed), ["completed", "failed", "skipped"]);
    assert_eq!(failed["status"], "failed");
    let running = app
        .post(&format!("/api/v1/pipelines/{id}/retry"), &json!({}), &[])
        .await;
    assert_eq!(running.status, StatusCode::OK, "{}", running.text());
    let resumed = running.json();
    assert_eq!(statuses(&resumed), ["completed", "pending", "waiting"]);
    assert_eq!(task_of(&resumed, 0), clean, "the completed step is kept");
    let second_train = task_of(&resumed, 1);
    assert_ne!(
        second_train, first_train,
        "the failed step runs as a new task"
    );
    assert_eq!(
        resumed["steps"][1]["tasks"],
        json!([first_train, second_train])
    );
    assert_eq!(resumed["steps"][1]["round"], 1);
    let again = app
        .post(&format!("/api/v1/pipelines/{id}/retry"), &json!({}), &[])
        .await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
}

#[tokio::test]
async fn cancelling_a_pipeline_cancels_its_live_step_and_starts_nothing_after() {
    let app = TestApp::new(None);
    let pipeline = submit(&app, &flow()).await;
    let id = pipeline["id"].as_str().expect("id").to_owned();
    let clean = task_of(&pipeline, 0);
    let answer = app
        .post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let cancelled = answer.json();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        statuses(&cancelled),
        ["cancelled", "cancelled", "cancelled"]
    );
    let task = app.get(&format!("/api/v1/tasks/{clean}"), &[]).await.json();
    assert_eq!(task["status"], "cancelled");
    assert_eq!(app.dispatcher.cancelled(), vec![clean]);
    app.advance_pipelines().await;
    assert_eq!(
        app.dispatcher.submitted().len(),
        1,
        "nothing started after the cancel"
    );
    let again = app
        .post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
    let retried = app
        .post(&format!("/api/v1/pipelines/{id}/retry"), &json!({}), &[])
        .await;
    assert_eq!(statuses(&retried.json()), ["pending", "waiting", "waiting"]);
}

#[tokio::test]
async fn a_step_whose_input_cannot_be_found_fails_with_the_reason_and_stops_the_pipeline() {
    let app = TestApp::new(None);
    let body = json!({"name": "lost", "steps": [
        {"name": "train", "script": "jobs/noop.py", "input": "no_such_data"},
        {"name": "serve", "script": "jobs/noop.py", "after": ["train"]},
    ]});
    let pipeline = submit(&app, &body).await;
    assert_eq!(pipeline["status"], "failed");
    assert_eq!(statuses(&pipeline), ["failed", "skipped"]);
    let error = &pipeline["steps"][0]["error"];
    assert_eq!(error["code"], "STEP_NOT_STARTED");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_data"),
        "{error}"
    );
}

#[tokio::test]
async fn pipelines_that_could_never_run_are_refused_with_400_naming_the_step() {
    let app = TestApp::new(None);
    let step = |name: &str, extra: Value| {
        let mut step = json!({"name": name, "script": "jobs/noop.py", "output": name});
        step.as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        step
    };
    let too_many: Vec<Value> = (0..33).map(|n| step(&format!("s{n}"), json!({}))).collect();
    let cases = [
        (
            json!([
                step("a", json!({"after": ["b"]})),
                step("b", json!({"input": "${steps.a.output}"}))
            ]),
            "cycle",
        ),
        (json!([step("a", json!({"after": ["ghost"]}))]), "ghost"),
        (
            json!([step("a", json!({})), step("a", json!({}))]),
            "same name",
        ),
        (json!(too_many), "33"),
        (
            json!([step("a", json!({"max_attempts": 0}))]),
            "step 'a': max_attempts",
        ),
        (
            json!([step("a", json!({"script": "jobs/unregistered.py"}))]),
            "step 'a'",
        ),
        (json!([step("a", json!({"aftr": ["b"]}))]), "aftr"),
    ];
    for (steps, expected) in cases {
        let answer = app
            .post(
                "/api/v1/pipelines",
                &json!({"name": "bad", "steps": steps}),
                &[],
            )
            .await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{}",
            answer.text()
        );
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert!(app.dispatcher.submitted().is_empty(), "nothing ran");
    let list = app.get("/api/v1/pipelines", &[]).await.json();
    assert_eq!(list["pipelines"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_spec_over_128_kib_is_refused_with_413_and_one_under_it_is_taken() {
    let app = TestApp::new(None);
    // Each step's params are within their own 64 KiB; three of them are not within 128.
    let padded = |steps: usize| {
        let steps: Vec<Value> = (0..steps)
            .map(|n| {
                json!({"name": format!("s{n}"), "script": "jobs/noop.py",
                "params": {"pad": "x".repeat(50 * 1024)}})
            })
            .collect();
        json!({"name": "padded", "steps": steps})
    };
    let answer = app.post("/api/v1/pipelines", &padded(3), &[]).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        "{}",
        answer.text()
    );
    let message = answer.json()["error"]["message"].to_string();
    assert!(message.contains("the limit is 131072"), "{message}");
    let list = app.get("/api/v1/pipelines", &[]).await.json();
    assert_eq!(list["pipelines"], json!([]), "nothing was stored");
    assert!(app.dispatcher.submitted().is_empty(), "nothing ran");
    let taken = submit(&app, &padded(2)).await;
    assert_eq!(taken["status"], "running");
}

/// A service step followed by a smoke test of it.
fn served_flow() -> Value {
    json!({"name": "served", "steps": [
        {"name": "serve", "script": "jobs/noop.py"},
        {"name": "smoke", "script": "jobs/noop.py", "after": ["serve"]},
    ]})
}

#[tokio::test]
async fn a_step_after_a_service_starts_once_it_serves_and_cancelling_the_completed_pipeline_stops_the_service()
 {
    let app = TestApp::new(None);
    let pipeline = submit(&app, &served_flow()).await;
    let id = pipeline["id"].as_str().expect("id").to_owned();
    let serve = task_of(&pipeline, 0);
    let serve_id = TaskId::parse(&serve).expect("a task id");
    let pending = app
        .store
        .get(&serve_id)
        .await
        .expect("get")
        .expect("stored");
    let start = Change::Start {
        backend: "test".into(),
    };
    let running = app
        .store
        .transition(&serve_id, pending.guard(), start)
        .await
        .expect("start");
    app.advance_pipelines().await;
    assert_eq!(
        statuses(&read(&app, &id).await),
        ["running", "waiting"],
        "a service that is not up yet holds back what follows"
    );
    let up = Heartbeat {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Heartbeat::default()
    };
    app.store
        .heartbeat(&serve_id, running.attempt, up)
        .await
        .expect("heartbeat");
    app.advance_pipelines().await;
    let pipeline = read(&app, &id).await;
    assert_eq!(statuses(&pipeline), ["serving", "pending"]);
    app.finish(&task_of(&pipeline, 1), completed()).await;
    app.advance_pipelines().await;
    let pipeline = read(&app, &id).await;
    assert_eq!(pipeline["status"], "completed");
    assert_eq!(statuses(&pipeline), ["serving", "completed"]);

    let answer = app
        .post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["status"], "cancelled");
    let task = app.get(&format!("/api/v1/tasks/{serve}"), &[]).await.json();
    assert_eq!(task["status"], "cancelled", "the service is stopped");
    assert_eq!(
        app.dispatcher.cancelled(),
        vec![serve],
        "its runner told to stop"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_answers_the_first_pipeline_and_another_spec_conflicts() {
    let app = TestApp::new(None);
    let key = [("Idempotency-Key", "nightly-2026-12-01")];
    let first = app.post("/api/v1/pipelines", &flow(), &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.post("/api/v1/pipelines", &flow(), &key).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let mut other = flow();
    other["name"] = json!("other");
    let conflict = app.post("/api/v1/pipelines", &other, &key).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.text());
    assert_eq!(
        app.dispatcher.submitted().len(),
        1,
        "the repeat started nothing"
    );
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_pipelines() {
    let app = TestApp::new(Some("acme-secret-key=acme,globex-secret-key=globex"));
    let acme = [("Authorization", "Bearer acme-secret-key")];
    let globex = [("Authorization", "Bearer globex-secret-key")];
    let created = app.post("/api/v1/pipelines", &flow(), &acme).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    for path in [format!("/api/v1/pipelines/{id}")] {
        let theirs = app.get(&path, &globex).await;
        assert_eq!(
            (theirs.status, theirs.code().as_str()),
            (StatusCode::NOT_FOUND, "PIPELINE_NOT_FOUND")
        );
    }
    let cancel = app
        .post(
            &format!("/api/v1/pipelines/{id}/cancel"),
            &json!({}),
            &globex,
        )
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let list = app.get("/api/v1/pipelines", &globex).await.json();
    assert_eq!(list["pipelines"], json!([]));
    let mine = app.get("/api/v1/pipelines", &acme).await.json();
    assert_eq!(mine["pipelines"][0]["id"], json!(id));
    let bogus = app.get("/api/v1/pipelines/..%2Fescape", &acme).await;
    assert_eq!(bogus.status, StatusCode::NOT_FOUND);
}

fn cached_flow(clean_caches: bool) -> Value {
    json!({
        "name": "cached",
        "cache": true,
        "steps": [
            {"name": "clean", "script": "jobs/noop.py", "output": "digits", "cache": clean_caches},
            {"name": "train", "script": "jobs/noop.py", "input": "${steps.clean.output}",
             "output": "models/cnn", "params": {"epochs": 2}},
        ],
    })
}

/// One cached step that reads `input` and writes `digits`.
fn one_cached_step(input: &str) -> Value {
    json!({"name": "once", "cache": true, "steps": [
        {"name": "clean", "script": "jobs/noop.py", "input": input, "output": "digits"},
    ]})
}

/// Submits `spec` and says whether its one step came from the cache (it is then done);
/// a step that runs is completed, writing a version.
async fn cached(app: &TestApp, spec: &Value) -> bool {
    let pipeline = submit(app, spec).await;
    let hit = pipeline["steps"][0]["cached_from"].is_string();
    if !hit {
        app.finish_writing(&task_of(&pipeline, 0), 3).await;
        app.advance_pipelines().await;
    }
    hit
}

#[tokio::test]
async fn a_cache_hit_needs_its_output_version_still_in_the_lake_and_a_rewritten_raw_file_misses() {
    let app = TestApp::new(None);
    let raw = LakePath::parse("input", "raw/data.csv").expect("a path");
    app.lake.put(&raw, b"a\n1\n".to_vec()).await.expect("put");
    let spec = one_cached_step("raw/data.csv");
    assert!(!cached(&app, &spec).await, "the first run runs");
    assert!(cached(&app, &spec).await, "the same input again is a hit");

    let deleted = app
        .call(Method::DELETE, "/api/v1/datasets/digits", None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(
        !cached(&app, &spec).await,
        "the output it would reuse is gone"
    );
    assert!(
        cached(&app, &spec).await,
        "and the new run is reused in turn"
    );

    // Same name, same size, new content: the file's version (its ETag) changed.
    app.lake
        .put(&raw, b"b\n2\n".to_vec())
        .await
        .expect("rewrite");
    assert!(!cached(&app, &spec).await, "a rewritten raw file misses");
    assert_eq!(app.dispatcher.submitted().len(), 3, "three runs, two hits");
}

#[tokio::test]
async fn a_cached_step_reuses_an_earlier_output_and_a_new_input_version_or_cache_false_runs_it() {
    let app = TestApp::new(None);
    let first = submit(&app, &cached_flow(true)).await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    app.finish_writing(&task_of(&first, 0), 10).await;
    app.advance_pipelines().await;
    let first = read(&app, &first_id).await;
    let train = app
        .get(&format!("/api/v1/tasks/{}", task_of(&first, 1)), &[])
        .await
        .json();
    assert_eq!(
        train["spec"]["input"], "datasets/digits.lance@1",
        "pinned to what clean wrote"
    );
    let key = &train["cache_key"];
    for part in ["script_sha256", "params_sha256", "digest"] {
        assert_eq!(
            key[part].as_str().map(str::len),
            Some(64),
            "{part} in {key}"
        );
    }
    assert_eq!(
        (&key["input"], &key["input_version"]),
        (&json!("datasets/digits.lance"), &json!("1"))
    );
    app.finish_writing(&task_of(&first, 1), 1).await;
    app.advance_pipelines().await;
    assert_eq!(read(&app, &first_id).await["status"], "completed");
    assert_eq!(app.dispatcher.submitted().len(), 2);

    let again = submit(&app, &cached_flow(true)).await;
    let again_id = again["id"].as_str().expect("id").to_owned();
    app.advance_pipelines().await;
    let again = read(&app, &again_id).await;
    assert_eq!(again["status"], "completed", "{again:#}");
    let first = read(&app, &first_id).await;
    for step in 0..2 {
        assert_eq!(
            again["steps"][step]["cached_from"],
            first["steps"][step]["task_id"]
        );
        assert_eq!(
            again["steps"][step]["cache_key"]["digest"],
            first["steps"][step]["cache_key"]["digest"]
        );
    }
    assert_eq!(app.dispatcher.submitted().len(), 2, "nothing ran");

    let forced = submit(&app, &cached_flow(false)).await;
    let forced_id = forced["id"].as_str().expect("id").to_owned();
    assert_eq!(
        forced["steps"][0]["status"], "pending",
        "cache: false runs the step"
    );
    app.finish_writing(&task_of(&forced, 0), 20).await;
    app.advance_pipelines().await;
    let forced = read(&app, &forced_id).await;
    assert_eq!(
        forced["steps"][1]["status"], "pending",
        "a new input version misses"
    );
    let (old, new) = (
        &first["steps"][1]["cache_key"],
        &forced["steps"][1]["cache_key"],
    );
    let differing: Vec<&str> = [
        "script_sha256",
        "params_sha256",
        "input",
        "input_version",
        "output",
    ]
    .into_iter()
    .filter(|part| old[part] != new[part])
    .collect();
    assert_eq!(
        differing,
        ["input_version"],
        "the keys' parts say why it missed"
    );
    assert_eq!(new["input_version"], "2");
}

#[tokio::test]
async fn a_schedule_starts_one_run_per_tick_however_many_reconcilers_fire_it() {
    let app = TestApp::new(None);
    let mut every_minute = flow();
    every_minute["schedule"] = json!("* * * * *");
    let schedule = submit(&app, &every_minute).await;
    let id = schedule["id"].as_str().expect("id").to_owned();
    assert_eq!(schedule["status"], "scheduled");
    assert!(
        app.dispatcher.submitted().is_empty(),
        "a schedule runs nothing itself"
    );
    // The first tick after its creation is at most a minute away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(65);
    let fired = loop {
        tokio::join!(app.advance_pipelines(), app.advance_pipelines());
        let schedule = read(&app, &id).await;
        if !schedule["fired"].is_null() {
            break schedule;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never fired: {schedule:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let runs = fired["fired"]["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 1, "one run for the tick: {fired:#}");
    let run = read(&app, runs[0].as_str().expect("run id")).await;
    assert_eq!(
        (&run["status"], &run["scheduled_by"]),
        (&json!("running"), &json!(id))
    );
    assert_eq!(run["spec"]["schedule"], Value::Null);
    app.advance_pipelines().await;
    let list = app.get("/api/v1/pipelines", &[]).await.json();
    assert_eq!(
        list["pipelines"].as_array().map(Vec::len),
        Some(2),
        "the schedule and one run"
    );
    assert_eq!(
        app.dispatcher.submitted().len(),
        1,
        "the run's first step, once"
    );
    let cancelled = app
        .post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!(
        cancelled.json()["status"],
        "cancelled",
        "cancelling stops the schedule"
    );
    let bad = app
        .post("/api/v1/pipelines", &json!({"name": "x", "schedule": "every day", "steps": [{"name": "a", "script": "jobs/noop.py"}]}), &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

/// The DAG advances the same on every store: SQLite and DynamoDB hold both the tasks and
/// the pipelines, as `lancer serve` and the AWS level use them.
mod on_every_store {
    use std::sync::Arc;

    use super::*;

    async fn runs_in_order_cancels_and_retries(app: TestApp) {
        let pipeline = submit(&app, &flow()).await;
        let id = pipeline["id"].as_str().expect("id").to_owned();
        app.finish(&task_of(&pipeline, 0), completed()).await;
        app.advance_pipelines().await;
        let pipeline = read(&app, &id).await;
        assert_eq!(statuses(&pipeline), ["completed", "pending", "waiting"]);
        let cancel = app
            .post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}), &[])
            .await;
        assert_eq!(
            statuses(&cancel.json()),
            ["completed", "cancelled", "cancelled"]
        );
        let retried = app
            .post(&format!("/api/v1/pipelines/{id}/retry"), &json!({}), &[])
            .await;
        let retried = retried.json();
        assert_eq!(statuses(&retried), ["completed", "pending", "waiting"]);
        app.finish(&task_of(&retried, 1), completed()).await;
        app.advance_pipelines().await;
        app.finish(&task_of(&read(&app, &id).await, 2), completed())
            .await;
        app.advance_pipelines().await;
        let done = read(&app, &id).await;
        assert_eq!(
            (done["status"].as_str(), statuses(&done)),
            (Some("completed"), vec!["completed".to_owned(); 3])
        );
    }

    #[tokio::test]
    async fn on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = lancer::store::sqlite::SqliteTaskStore::open(dir.path().join("tasks.db"))
            .expect("sqlite");
        let store = Arc::new(store);
        runs_in_order_cancels_and_retries(TestApp::with_stores(store.clone(), store)).await;
    }

    #[tokio::test]
    async fn on_dynamodb() {
        use lancer::store::dynamodb::DynamoTaskStore;
        use lancer_tests::aws::{dynamodb_client, unique_name};
        let client = dynamodb_client().await;
        let table = unique_name("tasks");
        DynamoTaskStore::create_table(&client, &table)
            .await
            .expect("create table");
        let store = Arc::new(DynamoTaskStore::new(client, table));
        runs_in_order_cancels_and_retries(TestApp::with_stores(store.clone(), store)).await;
    }
}

/// The use cases over `app`'s adapters with `keys` and schedule `limits`.
fn service_with(app: &TestApp, keys: &str, limits: ScheduleLimits) -> Service {
    Service {
        schedule_limits: limits,
        ..app.service(Some(keys))
    }
}

fn schedule_spec(cron: &str) -> PipelineSpec {
    let mut spec = flow();
    spec["schedule"] = json!(cron);
    serde_json::from_value(spec).expect("a spec")
}

#[tokio::test]
async fn a_tenants_schedules_are_capped_in_number_and_frequency() {
    let app = TestApp::new(None);
    let limits = ScheduleLimits {
        per_tenant: 2,
        runs_per_minute: 1,
        min_interval: Duration::from_secs(300),
    };
    let service = service_with(&app, "key-for-acme-1=acme", limits);
    let acme = service
        .tenant_of(Some("Bearer key-for-acme-1"))
        .expect("acme");
    let every_minute = service
        .submit_pipeline(&acme, schedule_spec("* * * * *"), None)
        .await
        .expect_err("more often than the minimum interval");
    assert!(
        matches!(&every_minute, lancer::Error::InvalidRequest(m) if m.contains("300 s")),
        "{every_minute}"
    );
    for _ in 0..2 {
        service
            .submit_pipeline(&acme, schedule_spec("*/5 * * * *"), None)
            .await
            .expect("within the cap");
    }
    let third = service
        .submit_pipeline(&acme, schedule_spec("*/5 * * * *"), None)
        .await
        .expect_err("past the cap");
    assert!(
        matches!(&third, lancer::Error::Conflict(m) if m.contains("LANCER_TENANT_SCHEDULES")),
        "{third}"
    );
}

/// A pipeline record as the store holds it, whoever's it is.
async fn stored(app: &TestApp, id: &str) -> Value {
    let id = PipelineId::parse(id).expect("an id");
    let pipeline = app
        .pipelines
        .pipeline(&id)
        .await
        .expect("read")
        .expect("stored");
    serde_json::to_value(pipeline).expect("json")
}

/// Stores a schedule of `tenant` created ten minutes ago, so a tick is due now.
async fn due_schedule(app: &TestApp, tenant: &Tenant) -> String {
    let created = chrono::Utc::now() - chrono::Duration::minutes(10);
    let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
    let schedule = Pipeline::new(id, tenant, schedule_spec("*/5 * * * *"), created);
    let stored = app
        .pipelines
        .create_pipeline(schedule)
        .await
        .expect("stored")
        .into_inner();
    stored.id.to_string()
}

#[tokio::test]
async fn ticks_past_the_runs_per_minute_are_let_pass_and_a_tenant_without_a_key_stops_its_schedules()
 {
    let app = TestApp::new(None);
    let limits = ScheduleLimits {
        runs_per_minute: 1,
        ..ScheduleLimits::default()
    };
    let service = service_with(&app, "key-for-bob-001=bob", limits);
    let bob = service
        .tenant_of(Some("Bearer key-for-bob-001"))
        .expect("bob");
    let ids = [
        due_schedule(&app, &bob).await,
        due_schedule(&app, &bob).await,
    ];
    service.advance_pipelines().await.expect("advance");
    let mut records = Vec::new();
    for id in &ids {
        records.push(stored(&app, id).await);
    }
    let fired: Vec<&Value> = records
        .iter()
        .filter(|s| s["fired"]["runs"].as_array().is_some_and(|r| r.len() == 1))
        .collect();
    let held: Vec<&Value> = records
        .iter()
        .filter(|s| {
            s["note"]
                .as_str()
                .is_some_and(|n| n.contains("LANCER_TENANT_RUNS_PER_MINUTE"))
        })
        .collect();
    assert_eq!((fired.len(), held.len()), (1, 1), "{records:#?}");
    assert_eq!(
        held[0]["status"], "scheduled",
        "a held tick does not stop it"
    );
    // The operator removes bob's key: bob's schedules stop at their next look.
    let without_bob = service_with(&app, "key-for-acme-1=acme", ScheduleLimits::default());
    let later = due_schedule(&app, &bob).await;
    without_bob.advance_pipelines().await.expect("advance");
    let stopped = stored(&app, &later).await;
    assert_eq!(stopped["status"], "cancelled", "{stopped:#}");
    assert!(
        stopped["note"]
            .as_str()
            .is_some_and(|n| n.contains("no API key")),
        "{stopped:#}"
    );
    assert!(
        stopped["fired"].is_null(),
        "it started nothing: {stopped:#}"
    );
}
