//! The MNIST pipeline (`mnist/pipeline.json`) as the tests run it, on any dispatcher.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{Server, repo_root};

pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Puts the reference digits under `<lake>/raw/mnist` (`mnist/fetch-data`).
pub fn fetch_data(lake: &std::path::Path) {
    let status = std::process::Command::new(repo_root().join("mnist/fetch-data"))
        .arg("--lake")
        .arg(lake)
        .status()
        .expect("run fetch-data");
    assert!(status.success(), "fetch-data failed");
}

/// `mnist/pipeline.json`, training one epoch so the tests stay short.
pub fn quick_mnist_pipeline() -> Value {
    let text = std::fs::read_to_string(repo_root().join("mnist/pipeline.json")).expect("read");
    let mut spec: Value = serde_json::from_str(&text).expect("the pipeline is JSON");
    let train = spec["steps"]
        .as_array_mut()
        .and_then(|steps| steps.iter_mut().find(|step| step["name"] == "mnist-train"))
        .expect("a train step");
    train["params"] = json!({"epochs": 1});
    spec
}

/// The pipeline once it has stopped running.
pub async fn pipeline_when_done(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pipeline = server.get_json(&format!("/pipelines/{id}")).await;
        if pipeline["status"] != "running" {
            return pipeline;
        }
        assert!(Instant::now() < deadline, "{pipeline:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a pipeline that did not complete says, with each failed step's error and log.
async fn failed_steps(server: &Server, pipeline: &Value) -> String {
    let mut said = format!("the pipeline is {}:\n{pipeline:#}", pipeline["status"]);
    for step in pipeline["steps"].as_array().into_iter().flatten() {
        if let (Some("failed"), Some(id)) = (step["status"].as_str(), step["task_id"].as_str()) {
            let task = server.task(id).await;
            let log = server.logs(id).await;
            said += &format!("\n\nstep {}: {}\n{log}", step["name"], task["error"]);
        }
    }
    said
}

/// Waits for a run of the MNIST pipeline and checks what every step made: the cleaned
/// digits, the Daft features of each, a model good enough to read digits, and a page
/// that answers. Returns the pipeline.
pub async fn check_pipeline_run(server: &Server, id: &str) -> Value {
    let pipeline = pipeline_when_done(server, id).await;
    if pipeline["status"] != "completed" {
        panic!("{}", failed_steps(server, &pipeline).await);
    }
    let task_of = |name: &str| {
        let steps = pipeline["steps"].as_array().expect("steps");
        let step = steps
            .iter()
            .find(|step| step["name"] == name)
            .expect("step");
        step["task_id"].as_str().expect("a task").to_owned()
    };
    let features = server.task(&task_of("mnist-features")).await;
    assert_eq!(features["result"]["rows"], 10000, "{features:#}");
    let columns = &features["result"]["columns"];
    assert_eq!(
        columns,
        &json!(["label", "split", "ink_mass", "ink_pixels"])
    );
    let dataset = server.get_json("/datasets/mnist_features").await;
    assert_eq!(dataset["num_rows"], 10000);
    let train = server.task(&task_of("mnist-train")).await;
    let accuracy = train["result"]["accuracy"].as_f64().unwrap_or_default();
    assert!(accuracy > 0.9, "one epoch reads digits: {train:#}");
    let serve = server.task(&task_of("mnist-serve")).await;
    let endpoint = serve["endpoint"].as_str().expect("an endpoint");
    let health = reqwest::get(format!("{endpoint}/healthz"))
        .await
        .expect("health");
    assert!(health.status().is_success());
    pipeline
}
