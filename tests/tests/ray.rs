//! The Ray backend end to end: a real `lancer serve` with `LANCER_BACKEND=ray` against the
//! real local Ray head that `tests/run` starts (`scripts/ray up`), and against stand-in
//! heads that answer badly or not at all.

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use lancer_tests::ray::{
    jobs_of_task, ray_address, ray_job, ray_job_once_ended, ray_request, ray_server,
    resources_ray_reserves_for,
};
use lancer_tests::scripts::{CONTRACT_SH, INGEST_PY, SERVE_PY, SLOW_PY, STUBBORN_PY};
use lancer_tests::server::{Server, kill_9, runner_pid, script_pid, wait_until_gone};
use serde_json::{Value, json};

#[tokio::test]
async fn python_and_executable_tasks_complete_as_ray_jobs_with_results_and_logs() {
    let server = ray_server(
        &[
            ("ingest.py", INGEST_PY, false),
            ("contract.sh", CONTRACT_SH, true),
        ],
        &ray_address(),
    )
    .await;
    let python = server
        .submit_for_id(
            &json!({"name": "ingest", "script": "ingest.py", "output": "numbers",
                        "params": {"rows": 12}, "resources": {"cpus": 0.5}}),
        )
        .await;
    let executable = server
        .submit_for_id(
            &json!({"name": "exec", "script": "contract.sh", "output": "out",
                        "params": {"k": 7}, "resources": {"cpus": 0.5}}),
        )
        .await;
    for (id, line) in [
        (&python, "wrote 12 rows"),
        (&executable, "executable got params"),
    ] {
        let done = server.wait_finished(id, Duration::from_secs(120)).await;
        assert_eq!(
            done["status"],
            "completed",
            "{done:#}\nlogs:\n{}",
            server.logs(id).await
        );
        assert_eq!(done["backend"], "ray");
        assert!(server.logs(id).await.contains(line));
        let job = ray_job_once_ended(&format!("{id}-1")).await;
        assert_eq!(job["status"], "SUCCEEDED", "{job:#}");
        assert_eq!(job["metadata"]["lancer_task_id"], id.as_str());
    }
    let python = server.task(&python).await;
    assert_eq!(python["result"]["total_records"], 12);
    let executable = server.task(&executable).await;
    assert_eq!(executable["result"]["echo"], json!({"k": 7}));
    assert_eq!(server.get_json("/datasets").await[0]["num_rows"], 12);
    server.stop().await;
}

/// A server on the real head and a task of it that is running and reporting progress.
async fn a_slow_task_running_on_ray() -> (Server, String) {
    let server = ray_server(&[("slow.py", SLOW_PY, false)], &ray_address()).await;
    let id = server
        .submit_for_id(&json!({"name": "slow", "script": "slow.py", "resources": {"cpus": 0.5}}))
        .await;
    server
        .wait_until(&id, Duration::from_secs(90), |t| t["progress"].is_object())
        .await;
    (server, id)
}

#[tokio::test]
async fn cancelling_a_running_task_stops_its_ray_job() {
    let (server, id) = a_slow_task_running_on_ray().await;
    assert_eq!(
        server.post(&format!("/tasks/{id}/cancel")).await.status(),
        200
    );
    let job = ray_job_once_ended(&format!("{id}-1")).await;
    assert_eq!(job["status"], "STOPPED", "{job:#}");
    let task = server.task(&id).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    server.stop().await;
}

#[tokio::test]
async fn a_ray_job_stopped_outside_lancer_ends_its_task_failed_with_rays_message() {
    let (server, id) = a_slow_task_running_on_ray().await;
    let stopped = ray_request(reqwest::Method::POST, &format!("/api/jobs/{id}-1/stop"))
        .send()
        .await
        .expect("stop");
    assert!(stopped.status().is_success());
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "RAY_JOB_STOPPED");
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{id}-1"))),
        "{done:#}"
    );
    server.stop().await;
}

/// The head `scripts/ray up` starts wants a token (Ray 2.61's default): a server given
/// `LANCER_RAY_TOKEN` runs its tasks there, one without it is refused, and the task says
/// so, while the head itself answers 401 to a request with no token.
#[tokio::test]
async fn a_head_with_token_authentication_runs_jobs_sent_with_lancer_ray_token_only() {
    let bare = reqwest::get(format!("{}/api/jobs/", ray_address()))
        .await
        .expect("Ray answers");
    assert_eq!(bare.status(), 401, "the head must want a token");
    let spec = json!({"name": "ingest", "script": "ingest.py", "output": "numbers",
        "params": {"rows": 5}, "resources": {"cpus": 0.5}});
    let server = ray_server(&[("ingest.py", INGEST_PY, false)], &ray_address()).await;
    let id = server.submit_for_id(&spec).await;
    let done = server.wait_finished(&id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(jobs_of_task(&id).await.len(), 1);
    server.stop().await;
    let tokenless = Server::start(
        &[("ingest.py", INGEST_PY, false)],
        &[
            ("LANCER_BACKEND", "ray"),
            ("RAY_ADDRESS", &ray_address()),
            ("LANCER_RAY_TOKEN", ""),
        ],
    )
    .await;
    let id = tokenless.submit_for_id(&spec).await;
    let refused = tokenless.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(refused["status"], "failed", "{refused:#}");
    assert_eq!(refused["error"]["code"], "BACKEND_REJECTED", "{refused:#}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("401"), "{refused:#}");
    assert!(
        jobs_of_task(&id).await.is_empty(),
        "no job ran without the token"
    );
    tokenless.stop().await;
}

#[tokio::test]
async fn a_serving_task_runs_as_a_ray_job_and_reports_its_endpoint() {
    let server = ray_server(&[("serve.py", SERVE_PY, false)], &ray_address()).await;
    let id = server
        .submit_for_id(&json!({"name": "hello", "script": "serve.py", "resources": {"cpus": 0.5}}))
        .await;
    let serving = server
        .wait_until(&id, Duration::from_secs(90), |t| t["endpoint"].is_string())
        .await;
    assert_eq!(serving["backend"], "ray");
    let endpoint = serving["endpoint"].as_str().expect("endpoint");
    let hello: Value = reqwest::get(endpoint)
        .await
        .expect("service answers")
        .json()
        .await
        .expect("json");
    assert_eq!(hello["hello"], "lancer");
    // The proxy confirms the node from Ray's job record, not from the script's report.
    let proxied: Value = reqwest::get(server.api(&format!("/tasks/{id}/endpoint/")))
        .await
        .expect("the proxy answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        proxied["hello"], "lancer",
        "through the task proxy: {proxied}"
    );
    assert_eq!(ray_job(&format!("{id}-1")).await["status"], "RUNNING");
    assert_eq!(
        server.post(&format!("/tasks/{id}/cancel")).await.status(),
        200
    );
    let job = ray_job_once_ended(&format!("{id}-1")).await;
    assert_eq!(job["status"], "STOPPED", "{job:#}");
    server.stop().await;
}

#[tokio::test]
async fn an_alias_on_ray_wakes_a_replica_from_zero_routes_to_it_and_scales_it_back_to_zero() {
    let server = ray_server(&[("serve.py", SERVE_PY, false)], &ray_address()).await;
    let model = server.lake().join("models/digits.lance");
    lancer_tests::lake::write_lance(
        &model.to_string_lossy(),
        lancer_tests::lake::dataset_batch(2),
        &Default::default(),
    )
    .await;
    let http = reqwest::Client::new();
    let declaration = json!({"script": "serve.py", "resources": {"cpus": 0.5},
        "replicas": {"min": 0, "max": 1}, "scale_down_after_s": 2, "start_timeout_s": 120});
    for (path, body) in [
        ("/models/digits/serving", declaration),
        ("/models/digits/aliases/production", json!({"version": 1})),
    ] {
        let answer = http
            .put(server.api(path))
            .json(&body)
            .send()
            .await
            .expect("put");
        assert_eq!(answer.status(), 200, "{path}");
    }
    let url = server.api("/models/digits@production/endpoint/hello");
    let answer = http.get(&url).send().await.expect("the first request");
    assert_eq!(answer.status(), 200, "it waits for the replica Ray starts");
    assert_eq!(answer.headers()["x-lancer-version"], "1");
    let hello: Value = answer.json().await.expect("json");
    assert_eq!(
        (&hello["hello"], &hello["path"]),
        (&json!("lancer"), &json!("/hello"))
    );
    let serving = server.get_json("/models/digits/serving").await;
    let task = serving["replicas"][0]["task_id"]
        .as_str()
        .expect("a replica")
        .to_owned();
    assert_eq!(server.task(&task).await["backend"], "ray");
    assert_eq!(ray_job(&format!("{task}-1")).await["status"], "RUNNING");
    let stopped = server.wait_finished(&task, Duration::from_secs(60)).await;
    assert_eq!(
        stopped["status"], "cancelled",
        "idle past scale_down_after_s"
    );
    let job = ray_job_once_ended(&format!("{task}-1")).await;
    assert_eq!(job["status"], "STOPPED", "{job:#}");
    let gone = http
        .delete(server.api("/models/digits/serving"))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 204);
    server.stop().await;
}

#[tokio::test]
async fn a_runner_ray_cannot_start_fails_the_task_and_its_logs_come_from_ray() {
    let server = Server::start(
        &[("ingest.py", INGEST_PY, false)],
        &[
            ("LANCER_BACKEND", "ray"),
            ("RAY_ADDRESS", &ray_address()),
            ("LANCER_RAY_RUNNER", "/nonexistent/lancer-runner"),
        ],
    )
    .await;
    let id = server
        .submit_for_id(
            &json!({"name": "ingest", "script": "ingest.py", "output": "n",
                        "params": {"rows": 1}, "resources": {"cpus": 0.5}}),
        )
        .await;
    let done = server.wait_finished(&id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "RAY_JOB_FAILED");
    let logs = server.logs(&id).await;
    assert!(logs.contains("/nonexistent/lancer-runner"), "{logs}");
    server.stop().await;
}

/// Waits on its first attempt (for the test to kill its runner: a sandboxed script cannot
/// signal it), and completes on the next.
const WAITS_ON_ITS_FIRST_ATTEMPT_PY: &str = r#"
import os, time

def run(input_path, output_path, params):
    attempt = int(os.environ["LANCER_ATTEMPT"])
    if attempt == 1:
        print("attempt 1 waiting", flush=True)
        time.sleep(300)
    return {"attempt": attempt}
"#;

#[tokio::test]
async fn a_failed_ray_job_is_retried_as_the_next_job_while_attempts_remain() {
    let server = ray_server(
        &[("flaky.py", WAITS_ON_ITS_FIRST_ATTEMPT_PY, false)],
        &ray_address(),
    )
    .await;
    let id = server
        .submit_for_id(
            &json!({"name": "flaky", "script": "flaky.py", "max_attempts": 2,
                               "resources": {"cpus": 0.5}}),
        )
        .await;
    server
        .wait_for_log(&id, "attempt 1 waiting", Duration::from_secs(90))
        .await;
    kill_9(runner_pid(&id).await.expect("the Ray job's runner"));
    let done = server.wait_finished(&id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        (done["attempt"].clone(), done["result"]["attempt"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(
        ray_job_once_ended(&format!("{id}-1")).await["status"],
        "FAILED"
    );
    assert_eq!(
        ray_job_once_ended(&format!("{id}-2")).await["status"],
        "SUCCEEDED"
    );
    server.stop().await;
}

/// A stand-in head whose Jobs API answers every submission with `status` and `body`.
async fn bad_head(status: StatusCode, body: &'static str) -> String {
    let app = Router::new().route("/api/jobs/", post(move || async move { (status, body) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn failure_of_a_task_sent_to(address: &str) -> Value {
    let server = ray_server(&[("ingest.py", INGEST_PY, false)], address).await;
    let id = server
        .submit_for_id(&json!({"name": "ingest", "script": "ingest.py", "params": {"rows": 1}}))
        .await;
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    server.stop().await;
    assert_eq!(done["status"], "failed", "{done:#}");
    done["error"].clone()
}

#[tokio::test]
async fn an_unreachable_ray_head_fails_the_task_with_a_clear_error() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let error = failure_of_a_task_sent_to(&format!("http://{closed}")).await;
    assert_eq!(error["code"], "BACKEND_UNAVAILABLE");
    let message = error["message"].as_str().expect("message");
    assert!(
        !message.contains(&closed.to_string()) && !message.contains("127.0.0.1"),
        "the head's address stays in the server log: {message}"
    );
}

#[tokio::test]
async fn a_ray_head_refusing_the_job_fails_the_task_with_its_answer() {
    let head = bad_head(StatusCode::BAD_REQUEST, "runtime_env is invalid").await;
    let error = failure_of_a_task_sent_to(&head).await;
    assert_eq!(error["code"], "BACKEND_REJECTED");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("runtime_env is invalid"))
    );
}

#[tokio::test]
async fn a_failing_ray_head_fails_the_task_with_its_answer() {
    let head = bad_head(StatusCode::SERVICE_UNAVAILABLE, "GCS is down").await;
    let error = failure_of_a_task_sent_to(&head).await;
    assert_eq!(error["code"], "BACKEND_ERROR");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("GCS is down"))
    );
}

#[tokio::test]
async fn a_ray_head_that_never_answers_fails_the_task_instead_of_hanging() {
    // Accepts connections and reads nothing: the request times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let error = failure_of_a_task_sent_to(&format!("http://{addr}")).await;
    assert_eq!(error["code"], "BACKEND_UNAVAILABLE");
}

/// What a script sees of its lake and environment.
const WHERE_AM_I_PY: &str = r#"
import os

def run(input_path, output_path, params):
    return {"lake": os.environ["LANCER_LAKE"], "names": sorted(os.environ)}
"#;

#[tokio::test]
async fn a_tenants_task_on_ray_sees_its_own_folder_and_no_keys() {
    let server = Server::start(
        &[("where.py", WHERE_AM_I_PY, false)],
        &[
            ("LANCER_BACKEND", "ray"),
            ("RAY_ADDRESS", &ray_address()),
            ("LANCER_API_KEYS", "acme-key-001=acme"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let get = |id: String| {
        let http = http.clone();
        let url = server.api(&format!("/tasks/{id}"));
        async move {
            let answer = http.get(url).bearer_auth("acme-key-001").send().await;
            answer.expect("get").json::<Value>().await.expect("json")
        }
    };
    let task: Value = http
        .post(server.api("/tasks"))
        .bearer_auth("acme-key-001")
        .json(&json!({"name": "where", "script": "where.py", "resources": {"cpus": 0.5}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let task = get(id.clone()).await;
        if task["finished_at"].is_string() {
            break task;
        }
        assert!(Instant::now() < deadline, "never finished: {task:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "completed", "{done:#}");
    let lake = std::fs::canonicalize(server.lake()).expect("lake");
    assert_eq!(
        done["result"]["lake"],
        format!("{}/tenants/acme", lake.display())
    );
    let names = done["result"]["names"].to_string();
    assert!(
        !names.contains("LANCER_API_KEYS") && !names.contains("LANCER_DB"),
        "{names}"
    );
    let job = ray_job_once_ended(&format!("{id}-1")).await;
    assert!(
        !job.to_string().contains("acme-key-001"),
        "no key in the job: {job}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_runner_killed_with_sigkill_on_ray_takes_its_script_with_it() {
    let server = ray_server(&[("stubborn.py", STUBBORN_PY, false)], &ray_address()).await;
    let id = server
        .submit_for_id(&json!({"name": "doomed", "script": "stubborn.py"}))
        .await;
    let script = script_pid(&server, &id).await;
    let runner = runner_pid(&id).await.expect("the Ray job's runner");
    kill_9(runner);
    // Nothing on Ray's side stops an orphan: the script must go with its runner.
    wait_until_gone(script, Duration::from_secs(10)).await;
    let done = server
        .wait_until(&id, Duration::from_secs(60), |t| t["status"] == "failed")
        .await;
    assert_eq!(done["attempt"], 1, "{done:#}");
    server.stop().await;
}

#[tokio::test]
async fn a_tasks_resources_and_names_reach_its_ray_job_and_a_restarted_server_submits_it_once() {
    let env = [
        ("LANCER_BACKEND", "ray"),
        ("RAY_ADDRESS", &ray_address()),
        ("LANCER_API_KEYS", "ray-key-for-acme=acme"),
        // The test waits on the restarted server's reconcile rounds, which /metrics counts.
        ("LANCER_METRICS_OPEN", "true"),
    ];
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &env)
        .await
        .with_api_key("ray-key-for-acme");
    // The head has no GPU and no "serve" resource (the serving group's in
    // infra/k8s/raycluster.yaml), so Ray holds the job back and the task stays pending.
    let resources = json!({"cpus": 0.5, "gpus": 1, "memory_mb": 64, "custom": {"serve": 1}});
    let id = server
        .submit_for_id(&json!({"name": "needs-a-gpu", "script": "slow.py", "resources": resources}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        if let [job] = &jobs_of_task(&id).await[..] {
            break job.clone();
        }
        assert!(Instant::now() < deadline, "no Ray job for {id}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(job["submission_id"], format!("{id}-1"));
    assert_eq!(job["status"], "PENDING", "{job:#}");
    assert_eq!(
        resources_ray_reserves_for(&format!("{id}-1")).await,
        json!({"CPU": 0.5, "GPU": 1.0, "memory": 67108864.0, "serve": 1.0})
    );
    assert_eq!(job["metadata"]["lancer_task_name"], "needs-a-gpu");
    assert_eq!(job["metadata"]["lancer_tenant"], "acme");

    let server = server
        .crash_and_restart()
        .await
        .with_api_key("ray-key-for-acme");
    // Two finished reconcile rounds of the new process have looked after the pending task
    // (a second submission would happen in the first).
    server
        .wait_for_reconcile_rounds(2, Duration::from_secs(30))
        .await;
    let task = server.task(&id).await;
    assert_eq!(
        (&task["status"], &task["error"]),
        (&json!("pending"), &Value::Null)
    );
    let jobs = jobs_of_task(&id).await;
    assert_eq!(jobs.len(), 1, "one job, not a second submission: {jobs:#?}");

    assert_eq!(
        server.post(&format!("/tasks/{id}/cancel")).await.status(),
        200
    );
    assert_eq!(server.task(&id).await["status"], "cancelled");
    // Ray cannot stop a job still waiting for resources (ray-project/ray#58353): it stays
    // PENDING until its start timeout. Should it start, its runner finds the task
    // cancelled and runs nothing; here it is started by hand, as Ray would.
    let env = job["runtime_env"]["env_vars"].as_object().expect("env");
    let ran = std::process::Command::new("sh")
        .arg("-c")
        .arg(job["entrypoint"].as_str().expect("entrypoint"))
        .envs(env.iter().map(|(k, v)| (k, v.as_str().unwrap_or_default())))
        .output()
        .expect("run the job's entrypoint");
    assert!(ran.status.success(), "{ran:?}");
    let task = server.task(&id).await;
    assert_eq!(
        (&task["status"], &task["attempt"]),
        (&json!("cancelled"), &json!(0))
    );
    server.stop().await;
}

#[tokio::test]
async fn lancer_ray_env_gives_the_runner_on_ray_the_nodes_own_scripts_folder() {
    let node_scripts = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        node_scripts.path().join(lancer::scripts::REGISTRY_FILE),
        r#"{"scripts": ["which.py"]}"#,
    )
    .expect("registry");
    let which = |copy: &str| format!("def run(i, o, p):\n    return {{\"copy\": \"{copy}\"}}\n");
    std::fs::write(node_scripts.path().join("which.py"), which("the node's")).expect("script");
    let ray_env = json!({"LANCER_SCRIPTS": node_scripts.path()}).to_string();
    let env = [
        ("LANCER_BACKEND", "ray"),
        ("RAY_ADDRESS", &ray_address()),
        ("LANCER_RAY_ENV", &ray_env),
    ];
    let server = Server::start(&[("which.py", &which("the server's"), false)], &env).await;
    let done = server
        .run_to_completion(
            &json!({"name": "which", "script": "which.py", "resources": {"cpus": 0.5}}),
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(done["result"], json!({"copy": "the node's"}));
    server.stop().await;
}

#[tokio::test]
async fn the_mnist_pipeline_with_its_daft_step_runs_as_ray_jobs() {
    use lancer_tests::mnist::{check_pipeline_run, fetch_data, quick_mnist_pipeline};
    use lancer_tests::server::{bin_dir, repo_root};
    let script_env = json!({ "LANCER_MNIST_BIN": bin_dir() }).to_string();
    let address = ray_address();
    let env = [
        ("LANCER_BACKEND", "ray"),
        ("RAY_ADDRESS", address.as_str()),
        ("LANCER_SCRIPT_ENV", script_env.as_str()),
    ];
    let server = Server::start_in(tempfile::tempdir().expect("tempdir"), &repo_root(), &env).await;
    fetch_data(&server.lake());
    let submitted: Value = reqwest::Client::new()
        .post(server.api("/pipelines"))
        .json(&quick_mnist_pipeline())
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = submitted["id"].as_str().expect("id").to_owned();
    let pipeline = check_pipeline_run(&server, &id).await;
    for step in pipeline["steps"].as_array().expect("steps") {
        let task = server.task(step["task_id"].as_str().expect("task")).await;
        assert_eq!(task["backend"], "ray", "{} ran on Ray", step["name"]);
    }
    server.post(&format!("/pipelines/{id}/cancel")).await;
    server.stop().await;
}
