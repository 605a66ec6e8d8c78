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
