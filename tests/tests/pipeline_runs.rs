//! Pipelines on a real `lancer serve`: steps run as real tasks, a crash of the server in
//! the middle loses and repeats nothing, and the CLI submits, waits for and retries one.

use std::time::{Duration, Instant};

use lancer_tests::scripts::SLOW_PY;
use lancer_tests::server::Server;
use serde_json::{Value, json};

/// Saves its task id in its checkpoint folder and fails the first time, then completes
/// saying whose checkpoint it found: a step worth retrying, and one that resumes.
const FLAKY_PY: &str = r#"
import os

def run(input_path, output_path, params):
    folder = os.environ["LANCER_CHECKPOINT_DIR"]
    marker = os.path.join(folder, "saved-by")
    if not os.path.exists(marker):
        with open(marker, "w") as saved:
            saved.write(os.environ["LANCER_TASK_ID"])
        raise RuntimeError("the first run fails")
    return {"second": True, "resumed_from": open(marker).read(), "folder": folder}
"#;

async fn submit_pipeline(server: &Server, spec: &Value) -> String {
    let response = reqwest::Client::new()
        .post(server.api("/pipelines"))
        .json(spec)
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 201);
    let pipeline: Value = response.json().await.expect("json");
    pipeline["id"].as_str().expect("id").to_owned()
}

async fn wait_for_pipeline(server: &Server, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pipeline = server.get_json(&format!("/pipelines/{id}")).await;
        if pipeline["status"] == status {
            return pipeline;
        }
        assert!(Instant::now() < deadline, "never {status}: {pipeline:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn step_tasks(pipeline: &Value) -> Vec<usize> {
    let steps = pipeline["steps"].as_array().expect("steps");
    steps
        .iter()
        .map(|step| step["tasks"].as_array().map_or(0, Vec::len))
        .collect()
}

#[tokio::test]
async fn a_crash_of_lancer_serve_mid_pipeline_loses_nothing_and_starts_nothing_twice() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let step = |name: &str, steps: u32, after: &[&str]| json!({"name": name, "script": "slow.py", "params": {"steps": steps}, "after": after});
    let spec = json!({"name": "three", "steps": [
        step("first", 30, &[]), step("second", 3, &["first"]), step("third", 3, &["second"]),
    ]});
    let id = submit_pipeline(&server, &spec).await;
    let pipeline = wait_for_pipeline(&server, &id, "running").await;
    let first = pipeline["steps"][0]["task_id"]
        .as_str()
        .expect("first task")
        .to_owned();
    server.wait_for_status(&first, "running").await;

    let server = server.crash_and_restart().await;
    let done = wait_for_pipeline(&server, &id, "completed").await;
    assert_eq!(
        step_tasks(&done),
        [1, 1, 1],
        "each step ran as one task: {done:#}"
    );
    for step in done["steps"].as_array().expect("steps") {
        let task = server.task(step["task_id"].as_str().expect("task")).await;
        assert_eq!(
            (task["status"].as_str(), task["attempt"].as_u64()),
            (Some("completed"), Some(1))
        );
    }
    let tasks = server.get_json("/tasks").await;
    assert_eq!(
        tasks["tasks"].as_array().map(Vec::len),
        Some(3),
        "no task was started twice"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_cli_waits_for_a_pipeline_step_by_step_and_retry_resumes_it_after_a_failed_step() {
    let server = Server::start(
        &[("slow.py", SLOW_PY, false), ("flaky.py", FLAKY_PY, false)],
        &[],
    )
    .await;
    let file = server.dir.path().join("pipeline.json");
    let spec = json!({"name": "flaky", "steps": [
        {"name": "prepare", "script": "slow.py", "params": {"steps": 2}},
        {"name": "fit", "script": "flaky.py", "after": ["prepare"]},
        {"name": "report", "script": "slow.py", "params": {"steps": 1}, "after": ["fit"]},
    ]});
    std::fs::write(&file, spec.to_string()).expect("write the pipeline file");
    let (ok, stdout, stderr) = server.cli(None, &["pipelines", "submit", &file.to_string_lossy()]);
    assert!(ok, "{stderr}");
    let id = serde_json::from_str::<Value>(&stdout).expect("the pipeline")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let (ok, _, stderr) = server.cli(None, &["pipelines", "wait", &id]);
    assert!(!ok, "a failed pipeline fails the wait");
    assert!(stderr.contains("failed steps: fit"), "{stderr}");
    for line in [
        "prepare          completed",
        "fit              failed",
        "report           skipped",
    ] {
        assert!(stderr.contains(line), "a line per step: {line}\n{stderr}");
    }
    let failed = server.get_json(&format!("/pipelines/{id}")).await;
    let prepare = failed["steps"][0]["task_id"].clone();
    let first_fit = failed["steps"][1]["task_id"].clone();

    let (ok, _, stderr) = server.cli(None, &["pipelines", "retry", &id, "--wait"]);
    assert!(ok, "{stderr}");
    let done = server.get_json(&format!("/pipelines/{id}")).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["steps"][0]["task_id"], prepare,
        "the completed step was kept"
    );
    assert_eq!(
        step_tasks(&done),
        [1, 2, 1],
        "fit ran again, and report after it"
    );
    let fit = server
        .task(done["steps"][1]["task_id"].as_str().expect("fit"))
        .await;
    assert_eq!(fit["result"]["second"], true);
    // The retried step's new task found what the failed one saved: the step's checkpoint
    // folder is the pipeline's, kept across its retries.
    assert_ne!(fit["id"], first_fit);
    assert_eq!(fit["result"]["resumed_from"], first_fit);
    let folder = fit["result"]["folder"].as_str().expect("folder");
    assert!(
        folder.ends_with(&format!("checkpoints/pipelines/{id}/fit")),
        "{folder}"
    );

    let (ok, stdout, _) = server.cli(None, &["pipelines", "list"]);
    assert!(
        ok && stdout.contains(&id) && stdout.contains("3/3 done"),
        "{stdout}"
    );
    server.stop().await;
}

/// Appends `rows` rows to its output dataset.
const APPEND_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    table = pa.table({"index": list(range(params["rows"]))})
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    lance.write_dataset(table, output_path, mode="append", storage_options=options)
    return {}
"#;

/// Reads its input at the version the platform gives it, and, with an output, writes a
/// one-row model saying what it read.
const READ_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    version = int(os.environ["LANCER_INPUT_VERSION"])
    rows = lance.dataset(input_path, version=version, storage_options=options).count_rows()
    if output_path:
        table = pa.table({"metrics": [json.dumps({"rows": rows})]})
        lance.write_dataset(table, output_path, mode="append", storage_options=options)
    return {"rows": rows, "version": version}
"#;

#[tokio::test]
async fn versions_name_their_writers_and_a_model_names_the_dataset_version_it_read() {
    let scripts = [("append.py", APPEND_PY, false), ("read.py", READ_PY, false)];
    let server = Server::start(&scripts, &[]).await;
    let within = Duration::from_secs(90);
    let append = |rows: u32| json!({"name": "ingest", "script": "append.py", "output": "digits", "params": {"rows": rows}});
    let first = server.run_to_completion(&append(10), within).await;
    let second = server.run_to_completion(&append(5), within).await;
    assert_eq!(second["lineage"]["output_version"], 2);

    let digits = server.get_json("/datasets/digits").await;
    let writers: Vec<(u64, String)> = digits["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                v["task_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let ids = [&first["id"], &second["id"]].map(|id| id.as_str().unwrap_or("").to_owned());
    assert_eq!(writers, [(1, ids[0].clone()), (2, ids[1].clone())]);

    let read = |input: &str| json!({"name": "fit", "script": "read.py", "input": input, "output": "models/fit"});
    let latest = server.run_to_completion(&read("digits"), within).await;
    assert_eq!(latest["result"], json!({"rows": 15, "version": 2}));
    assert_eq!(latest["lineage"]["input_version"], 2);
    let pinned = server.run_to_completion(&read("digits@1"), within).await;
    assert_eq!(
        pinned["result"],
        json!({"rows": 10, "version": 1}),
        "the pinned version was read"
    );

    let model = server.get_json("/models/fit").await;
    let first_version = &model["versions"][0];
    assert_eq!(first_version["task_id"], latest["id"]);
    assert_eq!(
        (
            &first_version["input_path"],
            &first_version["input_version"]
        ),
        (&json!("digits"), &json!(2)),
        "the model's first version was trained on version 2 of digits: {model:#}"
    );
    assert_eq!(model["versions"][1]["input_version"], 1);

    let missing = server.submit_for_id(&read("digits@9")).await;
    let failed = server.wait_finished(&missing, within).await;
    assert_eq!(
        failed["error"]["code"], "INPUT_VERSION_NOT_FOUND",
        "{failed:#}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_same_pipeline_submitted_again_with_caching_on_finishes_from_the_cache() {
    let scripts = [("append.py", APPEND_PY, false), ("read.py", READ_PY, false)];
    let server = Server::start(&scripts, &[]).await;
    let spec = json!({"name": "cached", "cache": true, "steps": [
        {"name": "ingest", "script": "append.py", "output": "digits", "params": {"rows": 10}},
        {"name": "fit", "script": "read.py", "input": "${steps.ingest.output}", "output": "models/fit"},
    ]});
    let first = submit_pipeline(&server, &spec).await;
    let first = wait_for_pipeline(&server, &first, "completed").await;
    let started = Instant::now();
    let again = submit_pipeline(&server, &spec).await;
    let again = wait_for_pipeline(&server, &again, "completed").await;
    let took = started.elapsed();
    for step in 0..2 {
        assert_eq!(
            again["steps"][step]["cached_from"], first["steps"][step]["task_id"],
            "{again:#}"
        );
        assert_eq!(again["steps"][step]["tasks"], json!([]), "nothing ran");
    }
    let tasks = server.get_json("/tasks").await;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(2));
    let digits = server.get_json("/datasets/digits").await;
    assert_eq!(digits["version"], 1, "the cached step wrote nothing");
    let written = &digits["versions"][0];
    assert_eq!(
        (&written["pipeline_id"], &written["step"]),
        (&first["id"], &json!("ingest")),
        "the version names the pipeline step that wrote it: {digits:#}"
    );
    // The writer is a Lance tag on the dataset itself, readable without lancer.
    let uri = server.lake().join("datasets/digits.lance");
    let dataset = lance::Dataset::open(&uri.to_string_lossy())
        .await
        .expect("open digits");
    let tags = dataset.tags().list().await.expect("tags");
    let writer = format!(
        "lancer-task-{}",
        first["steps"][0]["task_id"].as_str().expect("id")
    );
    assert_eq!(
        tags.get(&writer).map(|tag| tag.version),
        Some(1),
        "{tags:?}"
    );
    eprintln!("the cached pipeline completed in {took:?}");
    server.stop().await;
}

/// The schedule once its record says it fired a tick later than `after` (any tick when
/// `None`), within two minutes: cron ticks are whole minutes.
async fn fired_after(server: &Server, id: &str, after: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let schedule = server.get_json(&format!("/pipelines/{id}")).await;
        let tick = schedule["fired"]["tick"].as_str();
        let later = match (tick, after) {
            (Some(tick), Some(after)) => time(tick) > time(after),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if later {
            return schedule;
        }
        assert!(Instant::now() < deadline, "never fired: {schedule:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn time(text: &str) -> chrono::DateTime<chrono::Utc> {
    text.parse().expect("an RFC 3339 time")
}

#[tokio::test]
async fn lancer_serve_fires_a_schedule_at_each_tick_and_a_cancelled_one_fires_no_more() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let every_minute = |name: &str| {
        json!({"name": name, "schedule": "* * * * *", "steps": [
            {"name": "one", "script": "slow.py", "params": {"steps": 1}}]})
    };
    let stopped = submit_pipeline(&server, &every_minute("stopped")).await;
    let running = submit_pipeline(&server, &every_minute("running")).await;
    let fired = fired_after(&server, &stopped, None).await;
    assert_eq!(
        fired["status"], "scheduled",
        "a schedule runs nothing itself"
    );
    let tick = fired["fired"]["tick"]
        .as_str()
        .expect("the last tick")
        .to_owned();
    assert_eq!(time(&tick).timestamp() % 60, 0, "a whole minute: {tick}");
    let runs = fired["fired"]["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 1, "{fired:#}");
    let run = wait_for_pipeline(&server, runs[0].as_str().expect("id"), "completed").await;
    assert_eq!(run["scheduled_by"], json!(stopped));
    let cancelled = server.post(&format!("/pipelines/{stopped}/cancel")).await;
    assert_eq!(cancelled.status(), 200);

    // The other schedule firing a later tick shows the server went past one; a round
    // after that, the cancelled schedule has started nothing more.
    let later = fired_after(&server, &running, Some(&tick)).await;
    assert!(
        later["fired"]["runs"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    server
        .wait_for_reconcile_rounds(1, Duration::from_secs(30))
        .await;
    let after = server.get_json(&format!("/pipelines/{stopped}")).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(
        after["fired"], fired["fired"],
        "no tick fired after the cancel"
    );
    let pipelines = server.get_json("/pipelines").await;
    let of_stopped = pipelines["pipelines"]
        .as_array()
        .expect("pipelines")
        .iter()
        .filter(|p| p["scheduled_by"] == json!(stopped))
        .count();
    assert_eq!(of_stopped, 1, "one run of the cancelled schedule");
    server.post(&format!("/pipelines/{running}/cancel")).await;
    server.stop().await;
}
