//! The REST API through the Router: every route, every documented error code.

use axum::http::{Method, StatusCode};
use lancer::domain::path::LakePath;
use lancer_tests::app::TestApp;
use lancer_tests::lake::{LanceSeeder, Seeder};
use serde_json::{Value, json};

fn noop(name: &str) -> Value {
    json!({"name": name, "script": "jobs/noop.py"})
}

#[tokio::test]
async fn submitting_a_task_answers_201_with_a_pending_task_and_dispatches_it() {
    let app = TestApp::new(None);
    let answer = app
        .post(
            "/api/v1/tasks",
            &json!({
                "name": "ingest", "script": "jobs/noop.py", "output": "digits",
                "params": {"normalize": true}, "resources": {"cpus": 2}
            }),
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let task = answer.json();
    assert_eq!(task["status"], "pending");
    assert_eq!(task["spec"]["params"]["normalize"], true);
    assert_eq!(task["spec"]["resources"]["cpus"], 2.0);
    assert_eq!(task["output_path"], "datasets/digits.lance");
    assert_eq!(
        app.dispatcher.submitted(),
        vec![task["id"].as_str().expect("id").to_owned()]
    );
    let read = app
        .get(
            &format!("/api/v1/tasks/{}", task["id"].as_str().expect("id")),
            &[],
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), task);
}

#[tokio::test]
async fn a_repeated_idempotency_key_answers_200_with_the_first_task() {
    let app = TestApp::new(None);
    let first = app
        .post(
            "/api/v1/tasks",
            &noop("once"),
            &[("Idempotency-Key", "abc-123")],
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app
        .post(
            "/api/v1/tasks",
            &noop("once"),
            &[("Idempotency-Key", "abc-123")],
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let field = app
        .post(
            "/api/v1/tasks",
            &json!({"name": "once", "script": "jobs/noop.py", "idempotency_key": "abc-123"}),
            &[],
        )
        .await;
    assert_eq!(
        field.status,
        StatusCode::OK,
        "the body field is the same key"
    );
    assert_eq!(field.json()["id"], first.json()["id"]);
    let reused = app
        .post(
            "/api/v1/tasks",
            &noop("different"),
            &[("Idempotency-Key", "abc-123")],
        )
        .await;
    assert_eq!(
        (reused.status, reused.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
    assert_eq!(app.dispatcher.submitted().len(), 1, "dispatched once");
}

#[tokio::test]
async fn bad_requests_get_their_exact_4xx_code() {
    let app = TestApp::new(None);
    let big_params: String = "x".repeat(70 * 1024);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            b"{\"name\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "unknown field",
            br#"{"name":"a","script":"jobs/noop.py","colour":"red"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "missing script",
            br#"{"name":"a"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "params not an object",
            br#"{"name":"a","script":"jobs/noop.py","params":[1]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "bad task name",
            br#"{"name":"../a","script":"jobs/noop.py"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "script traversal",
            br#"{"name":"a","script":"../../etc/passwd"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "absolute script",
            br#"{"name":"a","script":"/bin/sh"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "missing script file",
            br#"{"name":"a","script":"jobs/none.py"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "output traversal",
            br#"{"name":"a","script":"jobs/noop.py","output":"../../x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "output in a foreign scheme",
            br#"{"name":"a","script":"jobs/noop.py","output":"s3://other/x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "output outside datasets and models",
            br#"{"name":"a","script":"jobs/noop.py","output":"logs/x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "absolute input",
            br#"{"name":"a","script":"jobs/noop.py","input":"/data/raw/mnist"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "input traversal",
            br#"{"name":"a","script":"jobs/noop.py","input":"raw/../../etc"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "unknown input dataset",
            br#"{"name":"a","script":"jobs/noop.py","input":"nothing_here"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "DATASET_NOT_FOUND",
        ),
        (
            "zero attempts",
            br#"{"name":"a","script":"jobs/noop.py","max_attempts":0}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "negative cpus",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"cpus":-1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "zero cpus",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"cpus":0}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "more gpus than any machine",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"gpus":100000}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "memory past 16 TiB",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"memory_mb":17592186044417}}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "a custom resource that is Ray's CPU",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"custom":{"CPU":4}}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "a custom resource of none",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"custom":{"serve":0}}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "an unknown resource",
            br#"{"name":"a","script":"jobs/noop.py","resources":{"tpus":1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "oversized params",
            serde_json::to_vec(
                &json!({"name":"a","script":"jobs/noop.py","params":{"blob": big_params}}),
            )
            .expect("json"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "oversized body",
            vec![b' '; 1024 * 1024 + 10],
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (what, body, status, code) in cases {
        let answer = app
            .call(Method::POST, "/api/v1/tasks", Some(body), &[])
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code.to_owned()),
            "{what}: {}",
            answer.text()
        );
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what} has a message"
        );
    }
    assert!(
        app.dispatcher.submitted().is_empty(),
        "nothing bad was dispatched"
    );
    let listed = app.get("/api/v1/tasks", &[]).await.json();
    assert_eq!(listed["tasks"], json!([]), "nothing half-written");
}

#[tokio::test]
async fn unknown_ids_and_bad_names_are_404_and_400() {
    let app = TestApp::new(None);
    let cases = [
        (
            "/api/v1/tasks/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
            "TASK_NOT_FOUND",
        ),
        (
            "/api/v1/tasks/whatever/logs",
            StatusCode::NOT_FOUND,
            "TASK_NOT_FOUND",
        ),
        (
            "/api/v1/datasets/absent",
            StatusCode::NOT_FOUND,
            "DATASET_NOT_FOUND",
        ),
        (
            "/api/v1/models/absent",
            StatusCode::NOT_FOUND,
            "MODEL_NOT_FOUND",
        ),
        (
            "/api/v1/datasets/..",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/datasets/%2E%2E%2Fsecrets",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/models/UPPER",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        ("/api/v1/nothing", StatusCode::NOT_FOUND, "NOT_FOUND"),
        (
            "/api/v1/tasks?status=done",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/tasks?name=Job%25",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/tasks?limit=0",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/tasks?limit=many",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/tasks?page_token=%21%21",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "/api/v1/tasks?colour=red",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ];
    for (path, status, code) in cases {
        let answer = app.get(path, &[]).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code.to_owned()),
            "{path}: {}",
            answer.text()
        );
    }
    let delete = app
        .call(Method::DELETE, "/api/v1/datasets/absent", None, &[])
        .await;
    assert_eq!(
        (delete.status, delete.code().as_str()),
        (StatusCode::NOT_FOUND, "DATASET_NOT_FOUND")
    );
    let cancel = app
        .call(Method::POST, "/api/v1/tasks/nope/cancel", None, &[])
        .await;
    assert_eq!(
        (cancel.status, cancel.code().as_str()),
        (StatusCode::NOT_FOUND, "TASK_NOT_FOUND")
    );
}

#[tokio::test]
async fn cancelling_a_pending_task_stops_it_and_a_second_cancel_is_409() {
    let app = TestApp::new(None);
    let task = app
        .post("/api/v1/tasks", &noop("stop-me"), &[])
        .await
        .json();
    let id = task["id"].as_str().expect("id");
    let cancelled = app.cancel(id, &[]).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert!(cancelled.json()["finished_at"].is_string());
    assert_eq!(app.dispatcher.cancelled(), vec![id.to_owned()]);
    let again = app.cancel(id, &[]).await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
}

#[tokio::test]
async fn cancelling_a_completed_or_failed_task_is_409_and_changes_nothing() {
    use lancer::domain::task::{Change, FailureCode, TaskError, TaskId};
    let app = TestApp::new(None);
    let endings = [
        Change::Complete {
            result: json!({"done": true}),
        },
        Change::Fail {
            error: TaskError::new(FailureCode::ScriptFailed, "boom"),
        },
    ];
    for ending in endings {
        let id = app.post("/api/v1/tasks", &noop("ends"), &[]).await.json()["id"]
            .as_str()
            .map(TaskId::parse)
            .expect("id")
            .expect("a task id");
        let pending = app.store.get(&id).await.expect("get").expect("stored");
        let start = Change::Start {
            backend: "test".into(),
        };
        let running = app
            .store
            .transition(&id, pending.guard(), start)
            .await
            .expect("start");
        let ended = app
            .store
            .transition(&id, running.guard(), ending)
            .await
            .expect("end");
        let cancel = app.cancel(id.as_str(), &[]).await;
        assert_eq!(
            (cancel.status, cancel.code().as_str()),
            (StatusCode::CONFLICT, "CONFLICT"),
            "{}",
            cancel.text()
        );
        assert!(
            cancel.text().contains(ended.status.as_str()),
            "the answer says why: {}",
            cancel.text()
        );
        let after = app.store.get(&id).await.expect("get").expect("stored");
        assert_eq!(after, ended, "the record is untouched");
        assert!(
            app.dispatcher.cancelled().is_empty(),
            "no runner was signalled"
        );
    }
}

#[tokio::test]
async fn listing_filters_by_status_and_pages_with_a_token() {
    let app = TestApp::new(None);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            app.post("/api/v1/tasks", &noop(&format!("job-{n}")), &[])
                .await
                .json()["id"]
                .clone(),
        );
    }
    let cancel = app.cancel(ids[0].as_str().expect("id"), &[]).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text());
    assert_eq!(
        (&cancel.json()["id"], cancel.json()["status"].as_str()),
        (&ids[0], Some("cancelled"))
    );
    let ids_of = |page: &Value| -> Vec<Value> {
        page["tasks"]
            .as_array()
            .expect("a task list")
            .iter()
            .map(|task| task["id"].clone())
            .collect()
    };
    let cancelled = app.get("/api/v1/tasks?status=cancelled", &[]).await.json();
    assert_eq!(
        ids_of(&cancelled),
        [ids[0].clone()],
        "the cancelled task only"
    );
    let pending = app.get("/api/v1/tasks?status=pending", &[]).await.json();
    assert_eq!(
        ids_of(&pending),
        [&ids[4], &ids[3], &ids[2], &ids[1]].map(Clone::clone)
    );
    let named = app.get("/api/v1/tasks?name=job-3", &[]).await.json();
    assert_eq!(ids_of(&named), [ids[3].clone()], "the name's start picks");
    let all_named = app
        .get("/api/v1/tasks?name=job&status=pending", &[])
        .await
        .json();
    assert_eq!(ids_of(&all_named).len(), 4, "with the status filter too");
    let first = app.get("/api/v1/tasks?limit=3", &[]).await.json();
    let token = first["next_page_token"].as_str().expect("a next page");
    let second = app
        .get(&format!("/api/v1/tasks?limit=3&page_token={token}"), &[])
        .await
        .json();
    assert_eq!(second["next_page_token"], Value::Null);
    // Newest first, every task once: no overlap, no gap between the pages.
    let mut paged = ids_of(&first);
    paged.extend(ids_of(&second));
    let newest_first: Vec<Value> = ids.iter().rev().cloned().collect();
    assert_eq!(paged, newest_first);
}

#[tokio::test]
async fn api_keys_are_required_and_tenants_are_isolated() {
    let app = TestApp::new(Some("acme-secret-key=acme,globex-secret-key=globex"));
    let acme = [("Authorization", "Bearer acme-secret-key")];
    let globex = [("Authorization", "Bearer globex-secret-key")];
    for headers in [
        &[][..],
        &[("Authorization", "Bearer wrong-key-123")][..],
        &[("Authorization", "Basic abc")][..],
    ] {
        let answer = app.get("/api/v1/tasks", headers).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            "{headers:?}"
        );
        let submit = app.post("/api/v1/tasks", &noop("x"), headers).await;
        assert_eq!(submit.status, StatusCode::UNAUTHORIZED);
    }
    let task = app
        .post(
            "/api/v1/tasks",
            &json!({"name": "mine", "script": "jobs/noop.py", "output": "d"}),
            &acme,
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED);
    let task = task.json();
    assert_eq!(task["tenant"], "acme");
    assert_eq!(
        task["output_path"], "tenants/acme/datasets/d.lance",
        "outputs land in the tenant's lake"
    );
    let id = task["id"].as_str().expect("id");
    for path in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/logs"),
        format!("/api/v1/tasks/{id}/progress"),
        format!("/api/v1/tasks/{id}/events"),
    ] {
        let answer = app.get(&path, &globex).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::NOT_FOUND, "TASK_NOT_FOUND"),
            "{path}"
        );
    }
    let progress = app
        .get(&format!("/api/v1/tasks/{id}/progress"), &acme)
        .await;
    assert_eq!(progress.status, StatusCode::OK, "the owner reads it");
    let cancel = app.cancel(id, &globex).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/api/v1/tasks", &globex).await.json()["tasks"],
        json!([])
    );
    assert_eq!(
        app.get("/api/v1/tasks", &acme).await.json()["tasks"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        app.get("/healthz", &[]).await.status,
        StatusCode::OK,
        "health needs no key"
    );
}

#[tokio::test]
async fn datasets_and_models_are_listed_described_and_deleted() {
    let app = TestApp::new(None);
    let seed = LanceSeeder {
        lake: app.lake.clone(),
    };
    seed.dataset("", "digits", 12).await;
    seed.model("", "cnn", &[0.97]).await;
    let listed = app.get("/api/v1/datasets", &[]).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json()[0]["id"], "digits");
    assert_eq!(listed.json()[0]["num_rows"], 12);
    assert_eq!(listed.json()[0]["schema"]["label"], "Int64");
    let detail = app.get("/api/v1/datasets/digits", &[]).await.json();
    assert_eq!(detail["fields"][0]["name"], "index");
    assert!(detail["size_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(detail["versions"][0]["timestamp"].is_string());
    let model = app.get("/api/v1/models/cnn", &[]).await.json();
    assert_eq!(model["model"]["metrics"]["accuracy"], 0.97);
    // A task may name the dataset as its input now that it exists.
    let task = app.post("/api/v1/tasks", &json!({"name": "train", "script": "jobs/noop.py", "input": "digits", "output": "models/cnn2"}), &[]).await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.text());
    assert_eq!(task.json()["input_path"], "datasets/digits.lance");
    assert_eq!(task.json()["output_path"], "models/cnn2.lance");
    let model_input = app
        .post(
            "/api/v1/tasks",
            &json!({"name": "serve", "script": "jobs/noop.py", "input": "cnn"}),
            &[],
        )
        .await;
    assert_eq!(
        model_input.json()["input_path"],
        "models/cnn.lance",
        "a bare name falls back to a model"
    );
    let deleted = app
        .call(Method::DELETE, "/api/v1/datasets/digits", None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/datasets", &[]).await.json(), json!([]));
}

#[tokio::test]
async fn datasets_and_models_are_isolated_between_tenants_and_models_list_and_delete() {
    let app = TestApp::new(Some("acme-secret-key=acme,globex-secret-key=globex"));
    let seed = LanceSeeder {
        lake: app.lake.clone(),
    };
    seed.dataset("tenants/acme/", "digits", 12).await;
    seed.model("tenants/acme/", "cnn", &[0.97]).await;
    let acme = [("Authorization", "Bearer acme-secret-key")];
    let globex = [("Authorization", "Bearer globex-secret-key")];
    let ids = |answer: Value| -> Vec<Value> {
        answer
            .as_array()
            .expect("a list")
            .iter()
            .map(|item| item["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(app.get("/api/v1/datasets", &acme).await.json()),
        [json!("digits")]
    );
    assert_eq!(
        ids(app.get("/api/v1/models", &acme).await.json()),
        [json!("cnn")]
    );
    assert_eq!(app.get("/api/v1/datasets", &globex).await.json(), json!([]));
    assert_eq!(app.get("/api/v1/models", &globex).await.json(), json!([]));
    for (path, code) in [
        ("/api/v1/datasets/digits", "DATASET_NOT_FOUND"),
        ("/api/v1/models/cnn", "MODEL_NOT_FOUND"),
    ] {
        let read = app.get(path, &globex).await;
        assert_eq!(
            (read.status, read.code()),
            (StatusCode::NOT_FOUND, code.to_owned())
        );
        let rows = format!("{path}/rows");
        let theirs = app.get(&rows, &globex).await;
        assert_eq!(
            (theirs.status, theirs.code()),
            (StatusCode::NOT_FOUND, code.to_owned()),
            "{rows}"
        );
        assert_eq!(app.get(&rows, &acme).await.status, StatusCode::OK, "{rows}");
        let delete = app.call(Method::DELETE, path, None, &globex).await;
        assert_eq!(delete.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            app.get(path, &acme).await.status,
            StatusCode::OK,
            "acme's is untouched"
        );
    }
    let borrowed = app
        .post(
            "/api/v1/tasks",
            &json!({"name": "steal", "script": "jobs/noop.py", "input": "digits"}),
            &globex,
        )
        .await;
    assert_eq!(
        borrowed.status,
        StatusCode::NOT_FOUND,
        "{}",
        borrowed.text()
    );
    let deleted = app
        .call(Method::DELETE, "/api/v1/models/cnn", None, &acme)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/models", &acme).await.json(), json!([]));
    assert_eq!(
        app.get("/api/v1/models/cnn", &acme).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn logs_are_served_from_an_offset_with_the_next_offset() {
    let app = TestApp::new(None);
    let task = app.post("/api/v1/tasks", &noop("chatty"), &[]).await.json();
    let id = task["id"].as_str().expect("id");
    let empty = app.get(&format!("/api/v1/tasks/{id}/logs"), &[]).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.body.is_empty());
    app.lake
        .put(
            &LakePath::parse("log", task["log_path"].as_str().expect("log path")).expect("path"),
            b"line one\nline two\n".to_vec(),
        )
        .await
        .expect("put");
    let all = app.get(&format!("/api/v1/tasks/{id}/logs"), &[]).await;
    assert_eq!(all.text(), "line one\nline two\n");
    assert_eq!(all.headers["x-next-offset"], "18");
    assert_eq!(all.headers["x-task-status"], "pending");
    let rest = app
        .get(&format!("/api/v1/tasks/{id}/logs?offset=9"), &[])
        .await;
    assert_eq!(rest.text(), "line two\n");
}

#[tokio::test]
async fn a_long_log_is_read_in_limited_chunks_that_end_at_line_ends() {
    let app = TestApp::new(None);
    let task = app.post("/api/v1/tasks", &noop("chatty"), &[]).await.json();
    let id = task["id"].as_str().expect("id");
    let log: String = (0..200).map(|n| format!("line {n}\n")).collect();
    app.lake
        .put(
            &LakePath::parse("log", task["log_path"].as_str().expect("log path")).expect("path"),
            log.clone().into_bytes(),
        )
        .await
        .expect("put");
    let (mut read, mut offset, mut chunks) = (String::new(), 0, Vec::new());
    loop {
        let chunk = app
            .get(
                &format!("/api/v1/tasks/{id}/logs?offset={offset}&limit=100"),
                &[],
            )
            .await;
        assert_eq!(chunk.status, StatusCode::OK);
        let text = chunk.text();
        if text.is_empty() {
            break;
        }
        assert!(text.len() <= 100 && text.ends_with('\n'), "{text:?}");
        offset = chunk.headers["x-next-offset"]
            .to_str()
            .expect("header")
            .parse::<u64>()
            .expect("offset");
        read.push_str(&text);
        chunks.push(text.len());
    }
    assert_eq!(read, log);
    // Each chunk but the last holds as many whole lines as fit: the next line (at most
    // 9 bytes) would have passed the limit.
    let (_last, full) = chunks.split_last().expect("chunks");
    assert!(full.iter().all(|len| *len > 100 - 9), "{chunks:?}");
    for bad in ["0", "1048577", "-1", "lots"] {
        let answer = app
            .get(&format!("/api/v1/tasks/{id}/logs?limit={bad}"), &[])
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert_eq!(answer.json()["error"]["code"], "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served() {
    let app = TestApp::new(Some("acme-secret-key=acme"));
    let spec = app.get("/api/v1/openapi.json", &[]).await;
    assert_eq!(spec.status, StatusCode::OK);
    let spec = spec.json();
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/tasks/{id}/logs",
        "/api/v1/datasets/{id}",
        "/api/v1/models",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    assert!(spec["components"]["schemas"]["TaskSpec"].is_object());
    // The docs are the console's API page, which draws this document offline.
    let docs = app.get("/docs", &[]).await;
    assert!(docs.status.is_redirection(), "{}", docs.status);
    assert_eq!(docs.headers["location"], "/#/api");
    let console = app.get("/", &[]).await;
    assert_eq!(console.status, StatusCode::OK);
    assert!(console.text().contains("/console/console.js"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_keyed_submissions_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        lancer::store::sqlite::SqliteTaskStore::open(dir.path().join("tasks.db")).expect("sqlite");
    let app = std::sync::Arc::new(TestApp::with_store(None, std::sync::Arc::new(store)));
    // 100 keys, each sent twice at once: 200 requests, 100 tasks.
    let requests = (0..200).map(|n| {
        let app = app.clone();
        tokio::spawn(async move {
            let key = format!("key-{}", n % 100);
            let answer = app
                .post(
                    "/api/v1/tasks",
                    &noop(&format!("job-{}", n % 100)),
                    &[("Idempotency-Key", &key)],
                )
                .await;
            (
                key,
                answer.status,
                answer.json()["id"].as_str().map(str::to_owned),
            )
        })
    });
    let mut ids = std::collections::HashMap::new();
    let mut created = 0;
    for request in requests {
        let (key, status, id) = request.await.expect("join");
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        created += usize::from(status == StatusCode::CREATED);
        let id = id.expect("a task id");
        assert_eq!(
            ids.entry(key).or_insert_with(|| id.clone()),
            &id,
            "one task per key"
        );
    }
    assert_eq!((ids.len(), created), (100, 100));
    let listed = app.get("/api/v1/tasks?limit=1000", &[]).await.json();
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(100),
        "no task lost, none duplicated"
    );
    assert_eq!(
        app.dispatcher.submitted().len(),
        100,
        "each dispatched once"
    );
}

#[tokio::test]
async fn a_failing_task_table_answers_500_and_keeps_the_details_out_of_the_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tasks.db");
    let store = lancer::store::sqlite::SqliteTaskStore::open(&db).expect("open");
    let app = TestApp::with_store(None, std::sync::Arc::new(store));
    let before = app.post("/api/v1/tasks", &noop("before"), &[]).await.json();
    let id = before["id"].as_str().expect("id");
    // The table disappears under the server, as with a replaced or damaged database file.
    rusqlite::Connection::open(&db)
        .and_then(|db| db.execute_batch("DROP TABLE tasks"))
        .expect("drop the table");
    let calls = [
        (Method::GET, "/api/v1/tasks".to_owned(), None),
        (Method::GET, format!("/api/v1/tasks/{id}"), None),
        (Method::POST, format!("/api/v1/tasks/{id}/cancel"), None),
        (
            Method::POST,
            "/api/v1/tasks".to_owned(),
            Some(noop("after").to_string().into_bytes()),
        ),
    ];
    let dir_text = dir.path().to_string_lossy().to_lowercase();
    for (method, path, body) in calls {
        let answer = app.call(method.clone(), &path, body, &[]).await;
        assert_eq!(
            (answer.status, answer.code()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR".to_owned()
            ),
            "{method} {path}: {}",
            answer.text()
        );
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!message.is_empty(), "{method} {path} says something");
        let body = answer.text().to_lowercase();
        for detail in ["no such table", "sqlite", "tasks.db", "drop", &dir_text] {
            assert!(
                !body.contains(detail),
                "{method} {path} leaks {detail:?}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn the_endpoint_key_cookie_is_set_by_the_server_httponly_for_the_task_and_model_routes_only()
{
    let app = TestApp::new(Some("key-for-acme-1=acme"));
    let auth = [("authorization", "Bearer key-for-acme-1")];
    let set = app
        .call(Method::PUT, "/api/v1/endpoint-key", None, &auth)
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT, "{}", set.text());
    let cookies: Vec<&str> = set
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("ascii"))
        .collect();
    assert_eq!(
        cookies,
        [
            "lancer_key=key%2Dfor%2Dacme%2D1; Path=/api/v1/tasks/; HttpOnly; SameSite=Strict",
            "lancer_key=key%2Dfor%2Dacme%2D1; Path=/api/v1/models/; HttpOnly; SameSite=Strict"
        ]
    );
    let anonymous = app
        .call(Method::PUT, "/api/v1/endpoint-key", None, &[])
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers.get("set-cookie").is_none());
    let cleared = app
        .call(Method::DELETE, "/api/v1/endpoint-key", None, &auth)
        .await;
    let cleared: Vec<&str> = cleared
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("ascii"))
        .collect();
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(
        cleared[0].starts_with("lancer_key=; Max-Age=0; Path=/api/v1/tasks/")
            && cleared[1].starts_with("lancer_key=; Max-Age=0; Path=/api/v1/models/"),
        "{cleared:?}"
    );
}
