//! `PUT /api/v1/uploads/{key}`: raw files land in the lake and complete uploads become
//! exactly one ingestion task, through the Router with a real Lance lake on disk.

use axum::http::{Method, StatusCode};
use lancer::domain::path::LakePath;
use lancer_tests::app::TestApp;

const MNIST_RULE: &str = r#"[{
    "name": "mnist", "prefix": "raw/mnist/", "script": "jobs/noop.py", "output": "mnist_clean",
    "params": {"normalize": true},
    "require": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
}]"#;

async fn put(app: &TestApp, key: &str, body: &[u8], headers: &[(&str, &str)]) -> serde_json::Value {
    let answer = app
        .call(
            Method::PUT,
            &format!("/api/v1/uploads/{key}"),
            Some(body.to_vec()),
            headers,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    answer.json()
}

#[tokio::test]
async fn the_last_file_of_an_upload_creates_one_ingestion_task_and_new_data_another() {
    let app = TestApp::with_ingest_rules(None, MNIST_RULE);
    let first = put(&app, "mnist/train-images-idx3-ubyte.gz", b"images", &[]).await;
    assert_eq!(first["path"], "raw/mnist/train-images-idx3-ubyte.gz");
    assert_eq!(first["size"], 6);
    assert!(first["task"].is_null(), "labels are still missing: {first}");
    assert!(app.dispatcher.submitted().is_empty());

    let second = put(&app, "mnist/train-labels-idx1-ubyte.gz", b"labels", &[]).await;
    let task = &second["task"];
    assert_eq!(task["spec"]["name"], "ingest-mnist");
    assert_eq!(task["spec"]["script"], "jobs/noop.py");
    assert_eq!(task["input_path"], "raw/mnist");
    assert_eq!(task["output_path"], "datasets/mnist_clean.lance");
    assert_eq!(task["spec"]["params"]["normalize"], true);
    assert_eq!(
        app.dispatcher.submitted(),
        [task["id"].as_str().expect("id")]
    );

    // New data is a new upload: a new task. (One upload's events arriving twice name the
    // same task: tests/tests/aws.rs delivers every S3 notification twice.)
    let newer = put(
        &app,
        "mnist/train-images-idx3-ubyte.gz",
        b"more images",
        &[],
    )
    .await;
    assert_ne!(newer["task"]["id"], task["id"]);
    assert_eq!(app.dispatcher.submitted().len(), 2);
    let stored = app
        .lake
        .read_from(
            &LakePath::parse("p", "raw/mnist/train-images-idx3-ubyte.gz").expect("path"),
            0,
            1 << 20,
        )
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.bytes, b"more images");
}

#[tokio::test]
async fn an_upload_no_rule_covers_is_stored_without_a_task() {
    let app = TestApp::with_ingest_rules(None, MNIST_RULE);
    let answer = put(&app, "notes/readme.txt", b"hello", &[]).await;
    assert!(answer["task"].is_null());
    assert!(app.dispatcher.submitted().is_empty());
    assert!(
        app.lake
            .stat(&LakePath::parse("p", "raw/notes/readme.txt").expect("path"))
            .await
            .expect("stat")
            .is_some()
    );
}

#[tokio::test]
async fn uploads_may_be_far_larger_than_api_bodies() {
    let app = TestApp::with_ingest_rules(None, MNIST_RULE);
    let big = vec![7u8; 3 << 20];
    let answer = put(&app, "blobs/big.bin", &big, &[]).await;
    assert_eq!(answer["size"], 3 << 20);
}

#[tokio::test]
async fn upload_keys_that_leave_raw_are_refused() {
    let app = TestApp::with_ingest_rules(None, MNIST_RULE);
    for key in ["a/../../datasets/x.lance", "a//b", "s3:x"] {
        let answer = app
            .call(
                Method::PUT,
                &format!("/api/v1/uploads/{key}"),
                Some(b"x".to_vec()),
                &[],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{key}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn a_tenants_upload_lands_in_its_folder_and_its_task_is_the_tenants() {
    let app = TestApp::with_ingest_rules(Some("key-for-acme-1=acme"), MNIST_RULE);
    let auth = [("authorization", "Bearer key-for-acme-1")];
    put(&app, "mnist/train-images-idx3-ubyte.gz", b"i", &auth).await;
    let done = put(&app, "mnist/train-labels-idx1-ubyte.gz", b"l", &auth).await;
    assert_eq!(
        done["path"],
        "tenants/acme/raw/mnist/train-labels-idx1-ubyte.gz"
    );
    assert_eq!(done["task"]["tenant"], "acme");
    assert_eq!(done["task"]["input_path"], "tenants/acme/raw/mnist");
    let anonymous = app
        .call(
            Method::PUT,
            "/api/v1/uploads/x.csv",
            Some(b"x".to_vec()),
            &[],
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

fn limits(max_bytes: u64, quota_bytes: u64) -> lancer::config::UploadLimits {
    lancer::config::UploadLimits {
        max_bytes,
        quota_bytes,
    }
}

async fn put_answer(
    app: &TestApp,
    key: &str,
    size: usize,
    headers: &[(&str, &str)],
) -> lancer_tests::app::Answer {
    app.call(
        Method::PUT,
        &format!("/api/v1/uploads/{key}"),
        Some(vec![b'x'; size]),
        headers,
    )
    .await
}

async fn stored(app: &TestApp, path: &str) -> Option<u64> {
    let path = LakePath::parse("p", path).expect("path");
    app.lake
        .stat(&path)
        .await
        .expect("stat")
        .map(|stat| stat.size)
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_a_413_and_leaves_nothing_behind() {
    let app = TestApp::with_upload_limits(None, limits(1000, 1 << 20));
    assert_eq!(
        put_answer(&app, "a.bin", 1000, &[]).await.status,
        StatusCode::CREATED
    );
    for headers in [&[][..], &[("Content-Length", "5000")][..]] {
        let answer = put_answer(&app, "b.bin", 5000, headers).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            "{headers:?}"
        );
        assert!(
            answer.text().contains("at most 1000 bytes"),
            "{}",
            answer.text()
        );
        assert_eq!(
            stored(&app, "raw/b.bin").await,
            None,
            "nothing half-written"
        );
    }
    // A refused replacement keeps the object it would have replaced.
    let answer = put_answer(&app, "a.bin", 5000, &[]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(stored(&app, "raw/a.bin").await, Some(1000));
}

#[tokio::test]
async fn a_tenant_past_its_upload_quota_gets_a_413_and_other_tenants_do_not() {
    let keys = "acme-key-001=acme,other-key-001=other";
    let app = TestApp::with_upload_limits(Some(keys), limits(600, 1000));
    let acme = [("Authorization", "Bearer acme-key-001")];
    let other = [("Authorization", "Bearer other-key-001")];
    assert_eq!(
        put_answer(&app, "one.bin", 500, &acme).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        put_answer(&app, "two.bin", 400, &acme).await.status,
        StatusCode::CREATED
    );
    let over = put_answer(&app, "three.bin", 200, &acme).await;
    assert_eq!(
        over.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        over.text()
    );
    assert!(
        over.text().contains("quota of 1000 bytes (900 in use)"),
        "{}",
        over.text()
    );
    assert_eq!(stored(&app, "tenants/acme/raw/three.bin").await, None);
    // Replacing an object counts its new size only.
    assert_eq!(
        put_answer(&app, "two.bin", 450, &acme).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        put_answer(&app, "three.bin", 200, &other).await.status,
        StatusCode::CREATED
    );
}

/// An S3 notification for `keys` in bucket `lake`, as SQS delivers it to the ingest function.
fn s3_event(keys: &[&str]) -> serde_json::Value {
    let records: Vec<_> = keys
        .iter()
        .map(|key| {
            serde_json::json!({"eventVersion": "2.1", "eventSource": "aws:s3",
                "awsRegion": "us-east-1", "eventTime": "2026-12-01T10:00:00.000Z",
                "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "AWS:EXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"}, "responseElements": {},
                "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "lake"},
                       "object": {"key": key, "size": 4}}})
        })
        .collect();
    serde_json::json!({"Records": records})
}

#[tokio::test]
async fn the_ingest_function_files_each_upload_under_its_tenant_and_skips_a_bad_key() {
    use std::sync::Arc;

    use lancer::application::Service;
    use lancer::domain::ingest::IngestRules;
    use lancer::lake::memory::MemoryLake;
    use lancer::ports::Lake;

    let app = TestApp::new(None);
    let lake = Arc::new(MemoryLake::new());
    for key in ["tenants/acme/raw/a.csv", "raw/b.csv"] {
        let path = LakePath::parse("p", key).expect("path");
        lake.put(&path, b"x,y\n".to_vec()).await.expect("put");
    }
    let service = Service {
        lake,
        ingest_rules: IngestRules::parse(
            r#"[{"name": "csv", "prefix": "raw/", "script": "jobs/noop.py", "output": "rows"}]"#,
        )
        .expect("rules"),
        ..app.service(None)
    };
    // `%2E%2E` is how S3 writes `..` in an event: decoded, it is not a lake path.
    let event = s3_event(&[
        "tenants/acme/raw/a.csv",
        "raw/%2E%2E/escape.csv",
        "raw/b.csv",
    ]);
    let answer = lancer::events::ingest_event(
        &service,
        &lancer::lake::LakeRoot::parse("s3://lake"),
        &event,
    )
    .await
    .expect("one bad key does not fail the batch");
    assert_eq!(
        answer["created"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    assert_eq!(
        answer["ignored"],
        serde_json::json!(["s3://lake/raw/../escape.csv"])
    );
    let mut tasks = Vec::new();
    for id in answer["created"].as_array().expect("ids") {
        let id = lancer::domain::task::TaskId::parse(id.as_str().expect("id")).expect("a task id");
        tasks.push(app.store.get(&id).await.expect("get").expect("stored"));
    }
    tasks.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    assert_eq!(tasks[0].tenant, "acme");
    assert_eq!(
        tasks[0].input_path.as_ref().map(LakePath::as_str),
        Some("tenants/acme/raw/a.csv")
    );
    assert_eq!(
        tasks[0].output_path.as_ref().map(LakePath::as_str),
        Some("tenants/acme/datasets/rows.lance")
    );
    assert_eq!(tasks[1].tenant, "default");
    assert_eq!(
        tasks[1].input_path.as_ref().map(LakePath::as_str),
        Some("raw/b.csv")
    );
}

#[tokio::test]
async fn a_rule_naming_a_pipeline_file_starts_that_pipeline_once_per_upload() {
    let rules = r#"[{"name": "flow", "prefix": "raw/flow/", "require": ["a.csv", "b.csv"],
                    "pipeline": "pipelines/flow.json"}]"#;
    let app = TestApp::with_ingest_rules(None, rules);
    std::fs::create_dir_all(app.scripts().join("pipelines")).expect("mkdir");
    let flow = serde_json::json!({"name": "flow", "steps": [
        {"name": "load", "script": "jobs/noop.py", "input": "raw/flow/", "output": "rows"},
        {"name": "fit", "script": "jobs/noop.py", "input": "${steps.load.output}"},
    ]});
    std::fs::write(app.scripts().join("pipelines/flow.json"), flow.to_string()).expect("write");
    let half = put(&app, "flow/a.csv", b"a", &[]).await;
    assert!(
        half["pipeline"].is_null() && half["task"].is_null(),
        "{half}"
    );
    let whole = put(&app, "flow/b.csv", b"b", &[]).await;
    let pipeline = &whole["pipeline"];
    assert_eq!(pipeline["spec"]["name"], "flow", "{whole}");
    assert_eq!(pipeline["steps"][0]["status"], "pending");
    let key = pipeline["spec"]["idempotency_key"]
        .as_str()
        .unwrap_or_default();
    assert!(key.starts_with("ingest:flow:"), "the upload's key: {key}");
    assert_eq!(
        app.dispatcher.submitted().len(),
        1,
        "its first step started"
    );
    // Writing a file again is new data, so a new upload: a new pipeline, as for tasks.
    let again = put(&app, "flow/b.csv", b"b2", &[]).await;
    assert_ne!(again["pipeline"]["id"], pipeline["id"]);
    assert_ne!(
        again["pipeline"]["spec"]["idempotency_key"],
        pipeline["spec"]["idempotency_key"]
    );
}
