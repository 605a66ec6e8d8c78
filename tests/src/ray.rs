//! The real Ray head the Ray tests run on (`scripts/ray up`), and what its Jobs API says.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::Server;

/// The real head's dashboard URL.
pub fn ray_address() -> String {
    std::env::var("RAY_ADDRESS").unwrap_or_else(|_| {
        panic!("RAY_ADDRESS is not set: start a local head with `eval \"$(scripts/ray up)\"` (tests/run does)")
    })
}

/// The bearer token of the head (`scripts/ray up` starts it with token authentication).
pub fn ray_token() -> String {
    std::env::var("LANCER_RAY_TOKEN").unwrap_or_else(|_| {
        panic!(
            "LANCER_RAY_TOKEN is not set: `eval \"$(scripts/ray up)\"` exports it (tests/run does)"
        )
    })
}

/// A request to the head's dashboard at `path`, carrying the head's token.
pub fn ray_request(method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", ray_address()))
        .bearer_auth(ray_token())
}

/// The JSON the head's dashboard answers at `path`.
async fn ray_get(path: &str) -> Value {
    ray_request(reqwest::Method::GET, path)
        .send()
        .await
        .expect("Ray answers")
        .json()
        .await
        .unwrap_or_else(|err| panic!("Ray's answer at {path} is JSON: {err}"))
}

pub async fn ray_server(scripts: &[(&str, &str, bool)], address: &str) -> Server {
    Server::start(
        scripts,
        &[("LANCER_BACKEND", "ray"), ("RAY_ADDRESS", address)],
    )
    .await
}

/// The CPUs the head offers, as its dashboard reports them.
pub async fn head_cpus() -> usize {
    let nodes: Value = ray_get("/nodes?view=summary").await;
    let cpus: f64 = nodes["data"]["summary"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["raylet"]["resourcesTotal"]["CPU"].as_f64())
        .sum();
    assert!(cpus >= 1.0, "the head offers no CPU: {nodes}");
    cpus as usize
}

pub async fn ray_job(submission_id: &str) -> Value {
    ray_get(&format!("/api/jobs/{submission_id}")).await
}

/// The Ray job once it has ended. A runner reports its task finished just before its
/// process exits, so Ray may still say RUNNING for a moment after the task is done.
pub async fn ray_job_once_ended(submission_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = ray_job(submission_id).await;
        if !matches!(job["status"].as_str(), Some("PENDING" | "RUNNING")) {
            return job;
        }
        assert!(Instant::now() < deadline, "Ray job never ended: {job:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The jobs Ray holds for a task, by the task id in their metadata.
pub async fn jobs_of_task(task_id: &str) -> Vec<Value> {
    let jobs: Value = ray_get("/api/jobs/").await;
    jobs.as_array()
        .expect("a list of jobs")
        .iter()
        .filter(|job| job["metadata"]["lancer_task_id"] == task_id)
        .cloned()
        .collect()
}

/// Waits until no job on the head holds a CPU or waits for one (a job waiting for a GPU
/// the head lacks holds nothing), so a test can count what runs at once.
pub async fn wait_for_an_idle_head() {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: Value = ray_get("/api/cluster_status").await;
        let load = &status["data"]["clusterStatus"]["loadMetricsReport"];
        let cpus_used = load["usage"]["CPU"][0].as_f64().expect("CPU usage");
        let waiting_for_cpus = load["resourceDemand"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|demand| demand[0]["GPU"].as_f64().unwrap_or(0.0) == 0.0);
        if cpus_used == 0.0 && !waiting_for_cpus {
            return;
        }
        assert!(Instant::now() < deadline, "the head stays busy: {load:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What Ray reserves for a job: the resources its supervisor actor asks the scheduler for.
/// (The Jobs API does not echo a job's entrypoint resources back.)
pub async fn resources_ray_reserves_for(submission_id: &str) -> Value {
    let actors = ray_get("/api/v0/actors?detail=true&limit=10000").await;
    let name = format!("_ray_internal_job_actor_{submission_id}");
    actors["data"]["result"]["result"]
        .as_array()
        .expect("a list of actors")
        .iter()
        .find(|actor| actor["name"] == name.as_str())
        .map(|actor| actor["required_resources"].clone())
        .unwrap_or_else(|| panic!("Ray has no supervisor for job {submission_id}"))
}
