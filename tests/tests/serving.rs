//! Serving a model through its aliases on a real `lancer serve`: the declaration, the
//! alias's stable endpoint routing by weight to replicas that are serving tasks, scale to
//! zero and back, a replica killed under load, and a server killed and restarted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lancer_tests::lake::{dataset_batch, write_lance};
use lancer_tests::server::{Server, kill_9, script_pid};
use serde_json::{Value, json};

/// A replica: says its pid, reports its endpoint, and answers every GET with the model
/// version it was given (`LANCER_INPUT_VERSION`) and the path it was asked for.
const REPLICA_PY: &str = r#"
import http.server, json, os, time

VERSION = int(os.environ.get("LANCER_INPUT_VERSION", "0"))

class Replica(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"version": VERSION, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def run(input_path, output_path, params):
    print(f"script pid {os.getpid()}", flush=True)
    time.sleep(params.get("start_after_s", 0))
    host = os.environ["LANCER_SERVE_HOST"]
    server = http.server.ThreadingHTTPServer((host, 0), Replica)
    url = f"http://{host}:{server.server_address[1]}"
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        progress.write(json.dumps({"endpoint": url}) + "\n")
    server.serve_forever()
"#;

/// Never reports an endpoint: a replica that never becomes ready.
const SILENT_PY: &str = r#"
import time

def run(input_path, output_path, params):
    time.sleep(600)
"#;

const MODEL: &str = "digits";

async fn server() -> (Server, reqwest::Client) {
    let server = Server::start(
        &[
            ("replica.py", REPLICA_PY, false),
            ("silent.py", SILENT_PY, false),
        ],
        &[("LANCER_CONCURRENCY", "8"), ("LANCER_TENANT_SERVICES", "8")],
    )
    .await;
    let lake = server.lake().join(format!("models/{MODEL}.lance"));
    for _ in 0..2 {
        write_lance(
            &lake.to_string_lossy(),
            dataset_batch(2),
            &Default::default(),
        )
        .await;
    }
    (server, reqwest::Client::new())
}

async fn put(http: &reqwest::Client, server: &Server, path: &str, body: Value) -> (u16, Value) {
    let answer = http
        .put(server.api(path))
        .json(&body)
        .send()
        .await
        .expect("put");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn endpoint(server: &Server, alias: &str, path: &str) -> String {
    server.api(&format!("/models/{MODEL}@{alias}/endpoint/{path}"))
}

/// Declares `declaration` for the model and points `production` at `target`.
async fn serve(http: &reqwest::Client, server: &Server, declaration: Value, target: Value) {
    let (status, view) = put(http, server, "/models/digits/serving", declaration).await;
    assert_eq!(status, 200, "{view}");
    let (status, alias) = put(http, server, "/models/digits/aliases/production", target).await;
    assert_eq!(status, 200, "{alias}");
}

/// A GET through the alias: (status, the `X-Lancer-Version` header, the body).
async fn ask(http: &reqwest::Client, url: &str) -> (u16, Option<u64>, Value) {
    let answer = http.get(url).send().await.expect("get");
    let status = answer.status().as_u16();
    let version = answer
        .headers()
        .get("x-lancer-version")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, version, answer.json().await.unwrap_or(Value::Null))
}

/// The model's serving view once `ready` replicas are ready (and none starting).
async fn wait_ready(server: &Server, ready: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let view = server.get_json(&format!("/models/{MODEL}/serving")).await;
        let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
        let count = |state: &str| replicas.iter().filter(|r| r["state"] == state).count();
        if count("ready") == ready && replicas.len() == ready {
            return view;
        }
        assert!(Instant::now() < deadline, "never {ready} ready: {view:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops serving and waits until no task runs: a replica's runner left behind would hold
/// the test run's output open. Then stops the server.
async fn finish(server: Server, http: &reqwest::Client) {
    let stopped = http
        .delete(server.api("/models/digits/serving"))
        .send()
        .await
        .expect("delete");
    assert!(
        [204, 404].contains(&stopped.status().as_u16()),
        "{stopped:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for status in ["pending", "running"] {
        loop {
            let page = server.get_json(&format!("/tasks?status={status}")).await;
            if page["tasks"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            assert!(Instant::now() < deadline, "replicas still {status}: {page}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    server.stop().await;
}

fn serving(min: u32, max: u32) -> Value {
    json!({"script": "replica.py", "replicas": {"min": min, "max": max}, "scale_down_after_s": 2})
}

#[tokio::test]
async fn an_alias_endpoint_answers_from_the_version_it_names_and_moves_with_it() {
    let (server, http) = server().await;
    let (status, view) = put(&http, &server, "/models/digits/serving", serving(1, 1)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["declaration"]["replicas"], json!({"min": 1, "max": 1}));
    let (status, _) = put(
        &http,
        &server,
        "/models/digits/aliases/production",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, 200);

    let (status, version, body) = ask(&http, &endpoint(&server, "production", "predict?x=1")).await;
    assert_eq!((status, version), (200, Some(1)), "{body}");
    assert_eq!(
        body,
        json!({"version": 1, "path": "/predict?x=1"}),
        "the replica got version 1"
    );
    let view = wait_ready(&server, 1, Duration::from_secs(30)).await;
    let first = view["replicas"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_owned();
    let task = server.task(&first).await;
    assert_eq!(
        (task["status"].as_str(), task["spec"]["input"].as_str()),
        (Some("running"), Some("models/digits.lance@1"))
    );

    put(
        &http,
        &server,
        "/models/digits/aliases/production",
        json!({"version": 2}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, version, body) = ask(&http, &endpoint(&server, "production", "")).await;
        if version == Some(2) {
            assert_eq!((status, &body["version"]), (200, &json!(2)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never moved to version 2: {body}"
        );
    }
    let old = server.wait_finished(&first, Duration::from_secs(30)).await;
    assert_eq!(
        old["status"], "cancelled",
        "version 1's replica stops once no alias names it"
    );
    let view = wait_ready(&server, 1, Duration::from_secs(30)).await;
    assert_eq!(view["replicas"][0]["version"], 2);
    finish(server, &http).await;
}

#[tokio::test]
async fn a_canary_split_sends_each_version_its_share_of_requests() {
    let (server, http) = server().await;
    put(&http, &server, "/models/digits/serving", serving(1, 1)).await;
    let split = json!({"versions": {"1": 90, "2": 10}});
    let (status, _) = put(&http, &server, "/models/digits/aliases/production", split).await;
    assert_eq!(status, 200);
    wait_ready(&server, 2, Duration::from_secs(30)).await;
    let mut answered: BTreeMap<u64, usize> = BTreeMap::new();
    for _ in 0..500 {
        let (status, version, body) = ask(&http, &endpoint(&server, "production", "")).await;
        assert_eq!(status, 200);
        let version = version.expect("the version header");
        assert_eq!(
            body["version"], version,
            "the header names the version that answered"
        );
        *answered.entry(version).or_default() += 1;
    }
    assert_eq!(
        answered,
        BTreeMap::from([(1, 450), (2, 50)]),
        "90/10 over 500 requests"
    );
    let metrics = server.metrics().await;
    for (version, count) in [(1, 450), (2, 50)] {
        let series = format!(
            "lancer_alias_requests_total{{tenant=\"default\",model=\"digits\",alias=\"production\",version=\"{version}\",status=\"2xx\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == series), "{series}: {metrics}");
    }
    let ready =
        "lancer_replicas{tenant=\"default\",model=\"digits\",version=\"2\",state=\"ready\"} 1";
    assert!(metrics.contains(ready), "{metrics}");
    assert!(
        metrics.contains("lancer_alias_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    finish(server, &http).await;
}

#[tokio::test]
async fn with_min_zero_a_request_starts_a_replica_and_an_idle_one_stops() {
    let (server, http) = server().await;
    serve(&http, &server, serving(0, 1), json!({"version": 1})).await;
    let view = server.get_json("/models/digits/serving").await;
    assert_eq!(
        view["replicas"],
        json!([]),
        "nothing runs before a request: {view}"
    );

    let (status, version, _) = ask(&http, &endpoint(&server, "production", "")).await;
    assert_eq!(
        (status, version),
        (200, Some(1)),
        "the first request waits for its replica"
    );
    let cold = "lancer_alias_cold_start_seconds_count{tenant=\"default\",model=\"digits\",alias=\"production\",outcome=\"started\"} 1";
    assert!(
        server.metrics().await.contains(cold),
        "one cold start counted"
    );
    let view = wait_ready(&server, 1, Duration::from_secs(10)).await;
    let task = view["replicas"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_owned();
    let stopped = server.wait_finished(&task, Duration::from_secs(30)).await;
    assert_eq!(
        stopped["status"], "cancelled",
        "idle past scale_down_after_s: stopped"
    );
    wait_ready(&server, 0, Duration::from_secs(10)).await;
    let (status, version, _) = ask(&http, &endpoint(&server, "production", "")).await;
    assert_eq!(
        (status, version),
        (200, Some(1)),
        "and a request wakes it again"
    );
    finish(server, &http).await;
}

#[tokio::test]
async fn a_request_waits_for_a_replica_that_starts_slower_than_the_idle_period() {
    let (server, http) = server().await;
    let slow = json!({"script": "replica.py", "params": {"start_after_s": 3},
        "replicas": {"min": 0, "max": 1}, "scale_down_after_s": 1, "start_timeout_s": 20});
    serve(&http, &server, slow, json!({"version": 1})).await;
    let (status, version, body) = ask(&http, &endpoint(&server, "production", "")).await;
    assert_eq!(
        (status, version),
        (200, Some(1)),
        "the waiting request holds its replica up: {body}"
    );
    finish(server, &http).await;
}

#[tokio::test]
async fn a_replica_that_never_starts_answers_503_with_retry_after_past_the_start_timeout() {
    let (server, http) = server().await;
    let declaration =
        json!({"script": "silent.py", "replicas": {"min": 0, "max": 1}, "start_timeout_s": 1});
    serve(&http, &server, declaration, json!({"version": 1})).await;
    let started = Instant::now();
    let answer = http
        .get(endpoint(&server, "production", ""))
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status().as_u16(), 503);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited the start timeout"
    );
    assert_eq!(answer.headers()["retry-after"], "2");
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "NO_REPLICA_READY");
    finish(server, &http).await;
}

#[tokio::test]
async fn a_replica_killed_under_load_loses_no_request_and_is_replaced() {
    let (server, http) = server().await;
    serve(&http, &server, serving(2, 2), json!({"version": 1})).await;
    let view = wait_ready(&server, 2, Duration::from_secs(30)).await;
    let victim = view["replicas"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_owned();
    let pid = script_pid(&server, &victim).await;
    let url = endpoint(&server, "production", "");
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..40 {
                    statuses.push(ask(&http, &url).await.0);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill_9(pid);
    for client in load {
        let statuses = client.await.expect("a client");
        assert!(
            statuses.iter().all(|s| *s == 200),
            "every GET answered: {statuses:?}"
        );
    }
    let ended = server.wait_finished(&victim, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "failed");
    let view = wait_ready(&server, 2, Duration::from_secs(30)).await;
    let tasks: Vec<&str> = view["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|r| r["task_id"].as_str())
        .collect();
    assert!(
        !tasks.contains(&victim.as_str()),
        "replaced by a new task: {view}"
    );
    finish(server, &http).await;
}

#[tokio::test]
async fn a_server_killed_and_restarted_serves_the_alias_again_with_one_replica_not_two() {
    let (server, http) = server().await;
    let declare = [
        "models",
        "serving",
        "declare",
        MODEL,
        "--script",
        "replica.py",
        "--min",
        "1",
        "--max",
        "1",
    ];
    let (ok, out, err) = server.cli(None, &declare);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = server.cli(None, &["models", "alias", "set", MODEL, "production", "1"]);
    assert!(ok, "{out}{err}");
    let before = wait_ready(&server, 1, Duration::from_secs(30)).await;
    let (ok, out, _) = server.cli(None, &["models", "serving", "get", MODEL]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert!(ok && shown["replicas"][0]["state"] == "ready", "{out}");
    let server = server.crash_and_restart().await;
    let (status, version, _) = ask(&http, &endpoint(&server, "production", "")).await;
    assert_eq!((status, version), (200, Some(1)));
    let after = wait_ready(&server, 1, Duration::from_secs(30)).await;
    assert_eq!(
        after["replicas"][0]["task_id"], before["replicas"][0]["task_id"],
        "the same replica"
    );
    finish(server, &http).await;
}

#[tokio::test]
async fn a_bad_declaration_is_a_400_naming_its_field_and_an_unserved_alias_a_409() {
    let (server, http) = server().await;
    for (body, field) in [
        (
            json!({"script": "replica.py", "replicas": {"min": 2, "max": 1}}),
            "replicas.min",
        ),
        (
            json!({"script": "replica.py", "replicas": {"max": 17}}),
            "replicas.max",
        ),
        (
            json!({"script": "replica.py", "max_concurrency": 0}),
            "max_concurrency",
        ),
        (
            json!({"script": "replica.py", "scale_down_after_s": 0}),
            "scale_down_after_s",
        ),
        (
            json!({"script": "replica.py", "resources": {"cpus": -1}}),
            "cpus",
        ),
        (json!({"script": "nope.py"}), "nope.py"),
        (json!({"script": "replica.py", "replica": {}}), "replica"),
    ] {
        let (status, answer) = put(&http, &server, "/models/digits/serving", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (status, _) = put(&http, &server, "/models/absent/serving", serving(1, 1)).await;
    assert_eq!(status, 404);
    put(
        &http,
        &server,
        "/models/digits/aliases/production",
        json!({"version": 1}),
    )
    .await;
    let (status, _, body) = ask(&http, &endpoint(&server, "production", "")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT")),
        "no serving declared"
    );
    let (status, _, _) = ask(&http, &endpoint(&server, "staging", "")).await;
    assert_eq!(status, 404, "no such alias");
    let missing = http
        .get(server.api("/models/digits/serving"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status().as_u16(), 404);
    finish(server, &http).await;
}
