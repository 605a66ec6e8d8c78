//! The web console in headless Chromium (`tests/browser/console.mjs`) against a real
//! `lancer serve`. Screenshots of each view go to `<target>/tmp/console-screenshots`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use lancer_tests::scripts::{FIRST_ATTEMPT_HANGS_PY, SLOW_PY};
use lancer_tests::server::{self, Server, kill_9, runner_pid};
use serde_json::{Value, json};

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// A number the page reported; a missing one fails the test rather than comparing as less.
fn number(seen: &Value, key: &str) -> f64 {
    seen[key]
        .as_f64()
        .unwrap_or_else(|| panic!("the page reported no number {key}: {seen}"))
}

/// Runs one scenario of `console.mjs`; what it saw.
fn browse(scenario: &str, url: &str, args: &[&str]) -> Value {
    let shots = screenshots();
    let mut all: Vec<&OsStr> = vec![scenario.as_ref(), url.as_ref(), shots.as_ref()];
    all.extend(args.iter().map(OsStr::new));
    server::browse("console.mjs", &all)
}

#[tokio::test]
async fn the_console_is_served_at_the_root_with_its_own_files_only() {
    let server = Server::start(&[], &[]).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/", server.url))
        .send()
        .await
        .expect("get /");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    let html = page.text().await.expect("html");
    assert!(html.contains("/console/console.js"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for (file, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let asset = http
            .get(format!("{}/console/{file}", server.url))
            .send()
            .await
            .expect("asset");
        assert_eq!(asset.status(), 200, "{file}");
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_running_task_shows_its_progress_and_log_live_and_is_cancelled_from_its_page() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "slow-steps", "script": "slow.py"}))
        .await;
    server
        .wait_until(&id, Duration::from_secs(60), |t| t["status"] == "running")
        .await;
    let seen = browse("watch", &server.url, &[&id]);
    assert!(
        number(&seen, "second") > number(&seen, "first"),
        "progress rose on the page: {seen}"
    );
    assert!(
        number(&seen, "linesAfter") > number(&seen, "linesBefore"),
        "{seen}"
    );
    let task = server.task(&id).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    // Run again made a new task of the same spec.
    let rerun = seen["rerun"].as_str().expect("the page of a new task");
    assert_ne!(rerun, id);
    let again = server.task(rerun).await;
    assert_eq!(
        (&again["spec"]["name"], &again["spec"]["script"]),
        (&task["spec"]["name"], &task["spec"]["script"]),
        "{again:#}"
    );
    assert_eq!(
        server
            .post(&format!("/tasks/{rerun}/cancel"))
            .await
            .status(),
        200
    );
    // On a phone-sized screen nothing is wider than the screen, the facts stack and the
    // list drops its wide columns.
    for view in ["task", "list"] {
        assert_eq!(seen["phone"][view]["overflows"], false, "{view}: {seen}");
    }
    assert_eq!(seen["phone"]["task"]["factColumns"], 1, "{seen}");
    assert!(
        seen["phone"]["list"]["wideCells"].as_u64() > Some(0),
        "{seen}"
    );
    assert_eq!(seen["phone"]["list"]["wideShown"], 0, "{seen}");
    server.stop().await;
}

#[tokio::test]
async fn with_keys_the_console_asks_for_one_and_shows_only_that_tenants_tasks() {
    let keys = [("LANCER_API_KEYS", "key-for-ada=ada,key-for-bob=bob")];
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &keys).await;
    let spec = json!({"name": "quick", "script": "slow.py", "params": {"steps": 1}});
    let server = server.with_api_key("key-for-ada");
    let own = server.submit_for_id(&spec).await;
    let server = server.with_api_key("key-for-bob");
    let foreign = server.submit_for_id(&spec).await;
    let seen = browse("tenant", &server.url, &["key-for-ada", &own, &foreign]);
    assert_eq!(seen["foreignRows"], 0, "{seen}");
    assert!(
        seen["error"]
            .as_str()
            .is_some_and(|e| e.contains("NOT_FOUND")),
        "{seen}"
    );
    assert_eq!(seen["keyInSessionStorage"], true);
    let cookie = |path: &str| json!({"path": path, "httpOnly": true, "sameSite": "Strict", "session": true, "holdsKey": true});
    assert_eq!(
        seen["keyCookies"],
        json!([cookie("/api/v1/models/"), cookie("/api/v1/tasks/")]),
        "{seen}"
    );
    assert_eq!(seen["scriptsSeeIt"], false, "HttpOnly: {seen}");
    assert_eq!(seen["afterSignOut"], false, "signing out clears it: {seen}");
    server.stop().await;
}

/// Prints its params' `text` to the log and returns it as the result.
const ECHO_PY: &str = r#"
def run(input_path, output_path, params):
    print(params["text"], flush=True)
    return {"echo": params["text"]}
"#;

#[tokio::test]
async fn markup_in_a_tasks_params_log_and_result_is_shown_as_text_and_never_runs() {
    let server = Server::start(&[("echo.py", ECHO_PY, false)], &[]).await;
    let markup = r#"<img src=x onerror="window.__lancer_pwned=true"><b class="injected">bold</b>"#;
    // Task names are refused unless they are plain names; params, logs and results are free.
    let spec = json!({"name": "echo", "script": "echo.py", "params": {"text": markup}});
    let id = server
        .run_to_completion(&spec, Duration::from_secs(60))
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let seen = browse("markup", &server.url, &[&id, markup]);
    assert_eq!(seen["ran"], false, "{seen}");
    assert_eq!(seen["listRan"], false, "{seen}");
    assert_eq!(
        seen["elements"], 0,
        "no element came from the markup: {seen}"
    );
    assert_eq!(seen["listElements"], 0, "{seen}");
    assert_eq!(
        seen["logEscaped"], true,
        "the log holds the markup as text: {seen}"
    );
    assert_eq!(
        seen["params"], true,
        "the params are shown, as text: {seen}"
    );
    assert_eq!(seen["result"], true, "{seen}");
    server.stop().await;
}

/// Reports a loss per epoch, one epoch every 1.5 s, with batch losses between.
const EPOCHS_PY: &str = r#"
import json, os, time

def run(input_path, output_path, params):
    epochs = params.get("epochs", 5)
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        def report(line):
            progress.write(json.dumps(line) + "\n")
            progress.flush()
        for epoch in range(1, epochs + 1):
            for batch in range(5):
                time.sleep(0.3)
                report({"fraction": (epoch - 1 + batch / 5) / epochs, "metrics": {"epoch": epoch, "batch_loss": 2.0 / (epoch + batch / 5)}})
            report({"fraction": epoch / epochs, "message": f"epoch {epoch}", "metrics": {"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 1 - 0.5 / epoch}})
            print(f"epoch {epoch}", flush=True)
    return {"epochs": epochs}
"#;

#[tokio::test]
async fn a_training_tasks_loss_chart_gains_a_point_per_epoch_while_it_runs() {
    let server = Server::start(&[("epochs.py", EPOCHS_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "epochs", "script": "epochs.py", "params": {"epochs": 6}}))
        .await;
    server
        .wait_until(&id, Duration::from_secs(60), |t| t["status"] == "running")
        .await;
    let seen = browse("chart", &server.url, &[&id, "6"]);
    assert!(number(&seen, "second") > number(&seen, "first"), "{seen}");
    let history = server.get_json(&format!("/tasks/{id}/progress")).await;
    let losses = history["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["metrics"]["loss"].is_number())
        .count();
    assert_eq!(losses, 6, "one loss per epoch: {history}");
    assert_eq!(seen["last"], 6, "the chart shows every epoch: {seen}");
    assert_eq!(seen["circles"], 6, "{seen}");
    server.stop().await;
}

/// Gives the name and text of the file it was given.
const READ_PY: &str = r#"
import os

def run(input_path, output_path, params):
    return {os.path.basename(input_path): open(input_path).read()}
"#;

#[tokio::test]
async fn a_file_uploaded_from_the_console_starts_its_ingestion_task() {
    let rules =
        json!([{"name": "drop", "prefix": "raw/drop/", "script": "read.py", "output": "dropped"}]);
    let server = Server::start(
        &[("read.py", READ_PY, false)],
        &[("LANCER_INGEST_RULES", &rules.to_string())],
    )
    .await;
    let seen = browse("upload", &server.url, &["drop"]);
    assert_eq!(seen["stored"], "raw/drop/notes.txt", "{seen}");
    let id = seen["href"]
        .as_str()
        .and_then(|href| href.strip_prefix("#/tasks/"))
        .expect("a link to the task");
    let task = server.task(id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], json!({"notes.txt": "seven\n"}));
    server.stop().await;
}

/// Writes one row whose cells the rows table cannot show whole: a list past 16,384 items
/// and a 5,000-byte value, beside a short list it shows as it is.
const CELLS_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    row = pa.table({
        "long": pa.array([list(range(20000))], pa.list_(pa.int64())),
        "blob": pa.array([b"\x07" * 5000], pa.binary()),
        "short": pa.array([[1, 2, 3]], pa.list_(pa.int64())),
    })
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    lance.write_dataset(row, output_path, storage_options=options)
    return {"rows": 1}
"#;

#[tokio::test]
async fn a_datasets_long_lists_and_binary_values_are_shown_as_their_length_and_size() {
    let server = Server::start(&[("cells.py", CELLS_PY, false)], &[]).await;
    let spec = json!({"name": "cells", "script": "cells.py", "output": "datasets/cells"});
    server
        .run_to_completion(&spec, Duration::from_secs(60))
        .await;
    let rows = server.get_json("/datasets/cells/rows").await;
    assert_eq!(rows["rows"][0]["long"], json!({"items": 20000}), "{rows:#}");
    assert_eq!(rows["rows"][0]["blob"], json!({"bytes": 5000}), "{rows:#}");
    let seen = browse("cells", &server.url, &["cells"]);
    assert_eq!(seen["long"], "20000 items", "{seen}");
    assert_eq!(seen["short"], "[1,2,3]", "{seen}");
    assert_eq!(seen["blob"], "5.00 KB", "the size, not the bytes: {seen}");
    server.stop().await;
}

/// Saves a model version: one row with its weights, metrics and params, appended.
const SAVE_MODEL_PY: &str = r#"
import json, os, datetime
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    row = pa.table({
        "weights": pa.array([b"\x00" * 1024], pa.binary()),
        "metrics": [json.dumps({"accuracy": params["accuracy"], "loss": 1 - params["accuracy"]})],
        "params": [json.dumps(params)],
        "created_at": [datetime.datetime.now(datetime.timezone.utc).isoformat()],
    })
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    mode = "append" if os.path.exists(output_path) else "create"
    lance.write_dataset(row, output_path, mode=mode, storage_options=options)
    return {"accuracy": params["accuracy"]}
"#;

#[tokio::test]
async fn a_models_saved_versions_are_compared_in_a_table_and_a_chart() {
    let server = Server::start(&[("save.py", SAVE_MODEL_PY, false)], &[]).await;
    for accuracy in [0.91, 0.97] {
        let spec = json!({"name": "save", "script": "save.py", "output": "models/toy",
                          "params": {"accuracy": accuracy}});
        server
            .run_to_completion(&spec, Duration::from_secs(60))
            .await;
    }
    let seen = browse("model", &server.url, &["toy"]);
    assert_eq!(seen["savedVersions"], 2, "{seen}");
    assert_eq!(seen["chartPoints"], 2, "{seen}");
    assert_eq!(seen["newest"], "0.97", "the newest version on top: {seen}");
    server.stop().await;
}

#[tokio::test]
async fn a_pipelines_steps_are_drawn_in_columns_by_what_they_wait_for() {
    let server = Server::start(&[("echo.py", ECHO_PY, false)], &[]).await;
    let step = |name: &str, after: &[&str]| json!({"name": name, "script": "echo.py", "params": {"text": name}, "after": after});
    let spec = json!({"name": "fan-out", "steps": [
        step("first", &[]), step("left", &["first"]), step("right", &["first"]), step("last", &["left", "right"]),
    ]});
    let response = reqwest::Client::new()
        .post(server.api("/pipelines"))
        .json(&spec)
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 201);
    let pipeline: Value = response.json().await.expect("json");
    let id = pipeline["id"].as_str().expect("id");
    let seen = browse("pipeline", &server.url, &[id]);
    assert_eq!(
        seen["columns"],
        json!([["first"], ["left", "right"], ["last"]]),
        "{seen}"
    );
    assert_eq!(seen["completed"], 4, "{seen}");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_tasks_page_shows_each_attempts_own_log() {
    let server = Server::start(&[("retry.py", FIRST_ATTEMPT_HANGS_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "retry", "script": "retry.py", "max_attempts": 2}))
        .await;
    server
        .wait_for_log(&id, "attempt 1 starting", Duration::from_secs(30))
        .await;
    kill_9(runner_pid(&id).await.expect("runner pid"));
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(
        (&done["status"], &done["attempt"]),
        (&json!("completed"), &json!(2))
    );
    let seen = browse("attempts", &server.url, &[&id]);
    assert_eq!(seen["buttons"], 2, "{seen}");
    assert!(
        seen["latest"]
            .as_str()
            .is_some_and(|l| l.contains("attempt 2 starting") && !l.contains("attempt 1")),
        "{seen}"
    );
    assert!(
        seen["first"]
            .as_str()
            .is_some_and(|l| l.contains("attempt 1 starting") && !l.contains("attempt 2")),
        "{seen}"
    );
    server.stop().await;
}
