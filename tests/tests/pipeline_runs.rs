//! Pipelines on a real `lancer serve`: steps run as real tasks, a crash of the server in
//! the middle loses and repeats nothing, and the CLI submits, waits for and retries one.

use std::time::{Duration, Instant};

use lancer_tests::scripts::SLOW_PY;
use lancer_tests::server::{Server, bin_dir};
use serde_json::{Value, json};

/// Fails the first time it runs in a lake, then completes: a step worth retrying.
const FLAKY_PY: &str = r#"
import os

def run(input_path, output_path, params):
    marker = os.path.join(os.environ["LANCER_LAKE"], "flaky-ran-once")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("the first run fails")
    return {"second": True}
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

/// Runs the `lancer` CLI against `server`; (ok, stdout, stderr).
fn lancer_cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin_dir().join("lancer"))
        .args(args)
        .env("LANCER_URL", &server.url)
        .env_remove("LANCER_API_KEY")
        .output()
        .expect("run lancer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let (ok, stdout, stderr) =
        lancer_cli(&server, &["pipelines", "submit", &file.to_string_lossy()]);
    assert!(ok, "{stderr}");
    let id = serde_json::from_str::<Value>(&stdout).expect("the pipeline")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let (ok, _, stderr) = lancer_cli(&server, &["pipelines", "wait", &id]);
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

    let (ok, _, stderr) = lancer_cli(&server, &["pipelines", "retry", &id, "--wait"]);
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
    assert_eq!(fit["result"], json!({"second": true}));

    let (ok, stdout, _) = lancer_cli(&server, &["pipelines", "list"]);
    assert!(
        ok && stdout.contains(&id) && stdout.contains("3/3 done"),
        "{stdout}"
    );
    server.stop().await;
}
