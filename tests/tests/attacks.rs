//! The tenant boundary, tried as an attacker would: each test is one attack, and each
//! failed against the code before the defence it names.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use lancer::lake::lance::LanceLake;
use lancer::ports::Lake;
use lancer_tests::app::TestApp;
use lancer_tests::aws::{create_bucket, unique_name};
use lancer_tests::lake::{LanceSeeder, Seeder};
use lancer_tests::server::Server;
use serde_json::{Value, json};

const KEYS: &str = "acme-key-001=acme,other-key-001=other";
const OTHER: [(&str, &str); 1] = [("Authorization", "Bearer other-key-001")];

/// Every spelling of "up two folders, into acme's" that a URL or path decoder might
/// turn into `..`, and look-alikes of it.
const TRAVERSALS: [&str; 9] = [
    "datasets/%2e%2e/%2e%2e/acme/datasets/secret.lance",
    "datasets/%2E%2E/%2E%2E/acme/datasets/secret.lance",
    "datasets/%252e%252e/%252e%252e/acme/datasets/secret.lance",
    "datasets/..%2f..%2facme/datasets/secret.lance",
    "datasets/%2e%2e%2f%2e%2e%2facme%2fdatasets%2fsecret.lance",
    "datasets/\u{ff0e}\u{ff0e}/\u{ff0e}\u{ff0e}/acme/datasets/secret.lance",
    "datasets/\u{2024}\u{2024}/\u{2024}\u{2024}/acme/datasets/secret.lance",
    "raw/../../acme/datasets/secret.lance",
    "datasets/x%2f%2e%2e%2f%2e%2e%2facme%2fdatasets%2fsecret.lance",
];

/// Tenant `other` names acme's dataset through every traversal, as input, output, upload
/// key and dataset id: each is a 400 that names the field, and nothing is dispatched.
async fn traversals_are_refused(app: &TestApp) {
    put_secret(&app.lake).await;
    for attack in TRAVERSALS {
        for body in [
            json!({"name": "steal", "script": "jobs/noop.py", "input": attack}),
            json!({"name": "plant", "script": "jobs/noop.py", "output": attack}),
        ] {
            let answer = app.post("/api/v1/tasks", &body, &OTHER).await;
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
                "{body}: {}",
                answer.text()
            );
            let message = answer.json()["error"]["message"].to_string();
            assert!(
                message.contains("input") || message.contains("output"),
                "{message}"
            );
        }
        let encoded = attack.replace('%', "%25").replace('\u{ff0e}', "%EF%BC%8E");
        let upload = app
            .call(
                Method::PUT,
                &format!("/api/v1/uploads/{encoded}"),
                Some(b"x".to_vec()),
                &OTHER,
            )
            .await;
        assert_eq!(
            upload.status,
            StatusCode::BAD_REQUEST,
            "{attack}: {}",
            upload.text()
        );
    }
    for id in ["%2e%2e", "..%2facme", "%252e%252e", "secret%2elance"] {
        let answer = app.get(&format!("/api/v1/datasets/{id}"), &OTHER).await;
        assert!(answer.status.is_client_error(), "{id}: {}", answer.text());
        assert_ne!(answer.status, StatusCode::OK);
    }
    assert!(
        app.dispatcher.submitted().is_empty(),
        "nothing was dispatched"
    );
    // The one way in that is left, acme's dataset by its bare name, is other's own folder.
    let by_name = json!({"name": "steal", "script": "jobs/noop.py", "input": "secret"});
    let answer = app.post("/api/v1/tasks", &by_name, &OTHER).await;
    assert_eq!(answer.code(), "DATASET_NOT_FOUND");
}

/// Writes acme's secret dataset, as acme's own task would have.
async fn put_secret(lake: &Arc<dyn Lake>) {
    let seeder = LanceSeeder { lake: lake.clone() };
    seeder.dataset("tenants/acme/", "secret", 5).await;
}

#[tokio::test]
async fn encoded_traversals_to_another_tenant_are_refused_on_a_local_lake() {
    traversals_are_refused(&TestApp::new(Some(KEYS))).await;
}

#[tokio::test]
async fn encoded_traversals_to_another_tenant_are_refused_on_an_s3_lake() {
    let bucket = unique_name("lake");
    create_bucket(&bucket).await;
    let lake: Arc<dyn Lake> = Arc::new(
        LanceLake::open(&format!("s3://{bucket}/lake"), Default::default()).expect("open"),
    );
    traversals_are_refused(&TestApp::with_lake(Some(KEYS), lake)).await;
}

#[tokio::test]
async fn only_registered_scripts_run_and_an_unregistered_file_never_executes() {
    let app = TestApp::new(Some(KEYS));
    let scripts = app.scripts();
    let marker = app.dir.path().join("imported");
    std::fs::write(
        scripts.join("jobs/lib.py"),
        format!("open({:?}, 'w').write('ran')\n", marker.to_string_lossy()),
    )
    .expect("write lib.py");
    std::fs::create_dir_all(scripts.join(".git/hooks")).expect("mkdir");
    std::fs::write(scripts.join(".git/hooks/post.py"), "").expect("write");
    for script in [
        "jobs/lib.py",
        "./jobs/noop.py",
        "jobs//noop.py",
        "jobs/../jobs/noop.py",
        ".git/hooks/post.py",
        "lancer-scripts.json",
        "/bin/sh",
    ] {
        let body = json!({"name": "x", "script": script});
        let answer = app.post("/api/v1/tasks", &body, &OTHER).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{script}");
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("is not registered"), "{script}: {message}");
        let folder = scripts.to_string_lossy();
        assert!(
            !message.contains(folder.as_ref()),
            "no server path in {message}"
        );
    }
    assert!(!marker.exists(), "lib.py's top-level code never ran");
    assert!(app.dispatcher.submitted().is_empty());
    let registered = app
        .post(
            "/api/v1/tasks",
            &json!({"name": "ok", "script": "jobs/noop.py"}),
            &OTHER,
        )
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.text()
    );
}

/// Returns the script's whole environment.
const ENV_PY: &str = r#"
import os

def run(input_path, output_path, params):
    return {"env": dict(os.environ), "cwd": os.getcwd()}
"#;

#[tokio::test]
async fn a_script_sees_an_allow_listed_environment_without_keys_or_the_task_table() {
    let server = Server::start(
        &[("env.py", ENV_PY, false)],
        &[
            ("LANCER_API_KEYS", KEYS),
            ("AWS_SECRET_ACCESS_KEY", "server-secret-not-for-scripts"),
            ("LANCER_SCRIPT_ENV", r#"{"MY_SETTING": "42"}"#),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let spec = json!({"name": "env", "script": "env.py"});
    let id = submit_as(&http, &server, "other-key-001", &spec).await;
    let done = wait_finished(&http, &server, &id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let env = done["result"]["env"].as_object().expect("env").clone();
    let text = Value::Object(env.clone()).to_string();
    for secret in [
        "acme-key-001",
        "other-key-001",
        "server-secret-not-for-scripts",
        "lancer.db",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
    let allowed = [
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "RUST_LOG",
        "CUDA_VISIBLE_DEVICES",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "MY_SETTING",
        "LANCER_TASK_ID",
        "LANCER_ATTEMPT",
        "LANCER_LAKE",
        "LANCER_STORAGE_OPTIONS",
        "LANCER_PROGRESS_FILE",
        "LANCER_INPUT_VERSION",
        "LANCER_CHECKPOINT_DIR",
        "LANCER_SERVE_HOST",
        "LANCER_BIN_DIR",
        "HOME",
        "TMPDIR",
        "PYTHONUNBUFFERED",
        // Set by the interpreter itself at start-up.
        "LC_CTYPE",
    ];
    for name in env.keys() {
        assert!(
            allowed.contains(&name.as_str()),
            "{name} is not on the allow-list"
        );
    }
    assert_eq!(
        env["MY_SETTING"], "42",
        "the operator's LANCER_SCRIPT_ENV arrives"
    );
    assert_eq!(
        env["LANCER_SERVE_HOST"], "127.0.0.1",
        "services listen on loopback"
    );
    let lake = std::fs::canonicalize(server.lake()).expect("lake");
    assert_eq!(
        env["LANCER_LAKE"],
        format!("{}/tenants/other", lake.display()),
        "the script's lake is its tenant's folder"
    );
    assert_eq!(
        env["LANCER_CHECKPOINT_DIR"],
        format!("{}/tenants/other/checkpoints/tasks/{id}", lake.display()),
        "its checkpoints live in its tenant's folder too"
    );
    assert_eq!(
        env["HOME"], done["result"]["cwd"],
        "HOME is the task's own folder"
    );
    server.stop().await;
}

async fn wait_finished(http: &reqwest::Client, server: &Server, id: &str) -> Value {
    wait_finished_as(http, server, "other-key-001", id).await
}

/// `lancer serve` with this environment; its exit status and stderr, once it stops.
async fn serve_refused(env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = tokio::process::Command::new(lancer_tests::server::bin_dir().join("lancer"));
    command
        .arg("serve")
        .args(["--port", "0", "--scripts"])
        .arg(dir.path())
        .args(args)
        .current_dir(dir.path())
        .env_remove("LANCER_API_KEYS")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("lancer serve stops at once")
        .expect("run lancer serve");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn auth_fails_closed_on_an_empty_key_set_and_an_open_server_beyond_loopback() {
    let (ok, stderr) = serve_refused(&[("LANCER_API_KEYS", "")], &["--host", "127.0.0.1"]).await;
    assert!(!ok && stderr.contains("none was given"), "{stderr}");
    // Refused before it binds anything.
    let (ok, stderr) = serve_refused(&[], &["--host", "0.0.0.0"]).await;
    assert!(!ok && stderr.contains("LANCER_ALLOW_OPEN"), "{stderr}");
    for host in ["0.0.0.0", "::", "10.1.2.3"] {
        let (ok, stderr) = serve_refused(&[("LANCER_HOST", host)], &[]).await;
        assert!(
            !ok && stderr.contains("LANCER_ALLOW_OPEN"),
            "{host}: {stderr}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty-keys");
    std::fs::write(&empty, "\n\n").expect("write");
    let empty = empty.to_str().expect("utf-8");
    let (ok, stderr) = serve_refused(&[("LANCER_API_KEYS_FILE", empty)], &[]).await;
    assert!(!ok && stderr.contains("none was given"), "{stderr}");
    let missing = dir.path().join("no-such-file");
    let missing = missing.to_str().expect("utf-8");
    let (ok, stderr) = serve_refused(&[("LANCER_API_KEYS_FILE", missing)], &[]).await;
    assert!(!ok && stderr.contains("LANCER_API_KEYS_FILE"), "{stderr}");
}

/// `count` connections that each start a request and never finish its headers.
async fn stalled_connections(server: &Server, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..count {
        let mut socket = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .expect("write");
        stalled.push(socket);
    }
    stalled
}

#[tokio::test]
async fn a_slow_loris_client_is_cut_off_and_never_stalls_other_clients() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(&[], &[]).await;
    let stalled = stalled_connections(&server, 20).await;
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("another client is served meanwhile");
    assert_eq!(health.status(), 200);
    let started = std::time::Instant::now();
    for mut socket in stalled {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buffer))
            .await
            .expect("the server hangs up on a client that never ends its headers");
        // A 408 or a plain close: either way the connection is over.
        let answer = String::from_utf8_lossy(&buffer[..read.unwrap_or(0)]).into_owned();
        assert!(answer.is_empty() || answer.contains("408"), "{answer}");
    }
    let waited = started.elapsed();
    assert!(
        waited <= lancer::http::serve::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        "cut off after {waited:?}"
    );
    server.stop().await;
}

/// A Python script's source with `attempt(action)` defined first: "allowed", "denied" for a
/// permission error, or the name of any other OS error.
macro_rules! with_attempt {
    ($body:literal) => {
        concat!(
            r#"
def attempt(action):
    try:
        action()
        return "allowed"
    except PermissionError:
        return "denied"
    except OSError as err:
        return type(err).__name__
"#,
            $body
        )
    };
}

/// Tries to read each path in `params["read"]` and to write each in `params["write"]`.
const PROBE_PY: &str = with_attempt!(
    r#"
import os

def run(input_path, output_path, params):
    read = {p: attempt(lambda p=p: open(p, "rb").read(1)) for p in params["read"]}
    def write(p):
        with open(p, "w") as f:
            f.write("x")
    written = {p: attempt(lambda p=p: write(p)) for p in params["write"]}
    return {"read": read, "write": written}
"#
);

#[tokio::test]
async fn a_sandboxed_script_cannot_read_the_task_table_or_another_tenants_data() {
    let server = Server::start(
        &[("probe.py", PROBE_PY, false)],
        &[("LANCER_API_KEYS", KEYS), ("LANCER_SANDBOX", "required")],
    )
    .await;
    let lake = std::fs::canonicalize(server.lake()).expect("lake");
    let theirs = lake.join("tenants/acme/datasets/secret.lance");
    std::fs::create_dir_all(&theirs).expect("mkdir");
    std::fs::write(theirs.join("data.bin"), "acme's rows").expect("write");
    let db = std::fs::canonicalize(server.dir.path().join("lancer.db")).expect("db");
    let own = lake.join("tenants/other/mine.txt");
    let params = json!({
        "read": [db, theirs.join("data.bin"), "/etc/hostname"],
        "write": [db.with_extension("evil"), lake.join("tenants/acme/planted"), own],
    });
    let http = reqwest::Client::new();
    let spec = json!({"name": "probe", "script": "probe.py", "params": params});
    let id = submit_as(&http, &server, "other-key-001", &spec).await;
    let done = wait_finished(&http, &server, &id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        done["sandbox"], "landlock+namespaces+nocaps",
        "the record says how it ran"
    );
    let result = &done["result"];
    let read = |p: &std::path::Path| result["read"][p.to_string_lossy().as_ref()].clone();
    let wrote = |p: &std::path::Path| result["write"][p.to_string_lossy().as_ref()].clone();
    assert_eq!(read(&db), "denied", "{result:#}");
    assert_eq!(read(&theirs.join("data.bin")), "denied", "{result:#}");
    assert_eq!(
        read(std::path::Path::new("/etc/hostname")),
        "allowed",
        "{result:#}"
    );
    assert_eq!(wrote(&db.with_extension("evil")), "denied", "{result:#}");
    assert_eq!(
        wrote(&lake.join("tenants/acme/planted")),
        "denied",
        "{result:#}"
    );
    assert_eq!(
        wrote(&own),
        "allowed",
        "its own lake folder stays writable: {result:#}"
    );
    server.stop().await;
}

/// Sleeps a second and a half.
const NAP_PY: &str = r#"
import time

def run(input_path, output_path, params):
    time.sleep(1.5)
    return {}
"#;

async fn submit_as(http: &reqwest::Client, server: &Server, key: &str, spec: &Value) -> String {
    let task: Value = http
        .post(server.api("/tasks"))
        .bearer_auth(key)
        .json(spec)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("task");
    task["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn one_tenants_long_queue_does_not_hold_back_another_tenants_first_task() {
    let server = Server::start(
        &[("nap.py", NAP_PY, false)],
        &[("LANCER_API_KEYS", KEYS), ("LANCER_CONCURRENCY", "1")],
    )
    .await;
    let http = reqwest::Client::new();
    let nap = json!({"name": "nap", "script": "nap.py"});
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(submit_as(&http, &server, "acme-key-001", &nap).await);
    }
    let theirs = submit_as(&http, &server, "other-key-001", &nap).await;
    let started = |task: &Value| task["started_at"].as_str().unwrap_or_default().to_owned();
    let theirs_done = wait_finished_as(&http, &server, "other-key-001", &theirs).await;
    let mut acme_started = Vec::new();
    for id in &flood {
        acme_started.push(started(
            &wait_finished_as(&http, &server, "acme-key-001", id).await,
        ));
    }
    let before = acme_started
        .iter()
        .filter(|at| **at < started(&theirs_done))
        .count();
    assert_eq!(
        before,
        1,
        "only acme's first task ran before other's: {acme_started:?} vs {}",
        started(&theirs_done)
    );
    server.stop().await;
}

async fn wait_finished_as(http: &reqwest::Client, server: &Server, key: &str, id: &str) -> Value {
    for _ in 0..300 {
        let task: Value = http
            .get(server.api(&format!("/tasks/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if task["finished_at"].is_string() {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("task {id} never finished");
}

/// Sends `head` and the start of a body that never ends; the answer and when it came.
async fn stalled(server: &Server, head: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let sent = std::time::Instant::now();
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server answers instead of waiting for the body"
    );
    (
        String::from_utf8_lossy(&answer).into_owned(),
        sent.elapsed(),
    )
}

#[tokio::test]
async fn a_request_whose_body_never_ends_is_answered_408_in_the_error_format() {
    let server = Server::start(&[], &[("LANCER_REQUEST_TIMEOUT_SECS", "1")]).await;
    let (answer, _) = stalled(&server, "POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn an_upload_has_its_own_longer_timeout_and_one_that_stalls_past_it_leaves_nothing() {
    let env = [
        ("LANCER_REQUEST_TIMEOUT_SECS", "1"),
        ("LANCER_UPLOAD_TIMEOUT_SECS", "3"),
    ];
    let server = Server::start(&[], &env).await;
    let head = format!(
        "PUT /api/v1/uploads/stalled/data.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n{}",
        "x".repeat(70_000)
    );
    let (answer, took) = stalled(&server, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");
    assert!(
        took >= Duration::from_millis(2900),
        "an upload is given its own 3 s, not a request's 1 s: answered after {took:?}"
    );
    let folder = server.lake().join("raw/stalled");
    let left: Vec<_> = std::fs::read_dir(&folder)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a broken upload left {left:?}");
    server.stop().await;
}

/// Plants links in its tenant's lake folder, as a hostile script would: its own log
/// becomes a link to acme's upload, `datasets/x.lance` a link to acme's uploads folder,
/// the data files of `y` symbolic and of `z` hard links to acme's data, and a FIFO where
/// a reader would block. Reports what the kernel let it do.
const PLANT_PY: &str = with_attempt!(
    r#"
import os, shutil

def replace(link, target, hard):
    def act():
        if os.path.isdir(link) and not os.path.islink(link):
            shutil.rmtree(link)
        elif os.path.lexists(link):
            os.remove(link)
        (os.link if hard else os.symlink)(target, link)
    return act

def run(input_path, output_path, params):
    lake = os.environ["LANCER_LAKE"]
    logs = os.path.join(lake, "logs", os.environ["LANCER_TASK_ID"])
    os.makedirs(logs, exist_ok=True)
    plants = [
        (os.path.join(logs, os.environ["LANCER_ATTEMPT"] + ".log"), params["upload"], False),
        (os.path.join(lake, "datasets", "x.lance"), params["uploads"], False),
    ]
    for name, hard in (("y", False), ("z", True)):
        data = os.path.join(lake, "datasets", name + ".lance", "data")
        plants += [(os.path.join(data, f), params["data"], hard) for f in os.listdir(data)]
    done = {f"{link} -> {target}": attempt(replace(link, target, hard)) for link, target, hard in plants}
    fifo = os.path.join(lake, "datasets", "fifo")
    done[fifo] = attempt(lambda: os.mkfifo(fifo))
    return done
"#
);

/// A server with acme's upload and dataset, and other's datasets `y` and `z`, on which
/// other's script has planted its links; the finished task and acme's files.
struct Planted {
    server: Server,
    task: Value,
    upload: std::path::PathBuf,
    data: std::path::PathBuf,
}

async fn plant_links(sandbox: &str) -> Planted {
    let server = Server::start(
        &[("plant.py", PLANT_PY, false)],
        &[("LANCER_API_KEYS", KEYS), ("LANCER_SANDBOX", sandbox)],
    )
    .await;
    let lake = std::fs::canonicalize(server.lake()).expect("lake");
    let uploads = lake.join("tenants/acme/raw");
    std::fs::create_dir_all(&uploads).expect("mkdir");
    let upload = uploads.join("secret.txt");
    std::fs::write(&upload, "acme's secret upload").expect("write");
    let none = Default::default();
    let at = |tenant: &str, name: &str| {
        format!("{}/tenants/{tenant}/datasets/{name}.lance", lake.display())
    };
    use lancer_tests::lake::{dataset_batch, write_lance};
    write_lance(&at("acme", "secret"), dataset_batch(7), &none).await;
    for name in ["y", "z"] {
        write_lance(&at("other", name), dataset_batch(3), &none).await;
    }
    let data = std::fs::read_dir(lake.join("tenants/acme/datasets/secret.lance/data"))
        .expect("acme's data")
        .next()
        .expect("a data file")
        .expect("entry")
        .path();
    let http = reqwest::Client::new();
    let params = json!({"upload": upload, "uploads": uploads, "data": data});
    let spec = json!({"name": "plant", "script": "plant.py", "params": params});
    let id = submit_as(&http, &server, "other-key-001", &spec).await;
    let task = wait_finished(&http, &server, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    Planted {
        server,
        task,
        upload,
        data,
    }
}

async fn get_as(server: &Server, key: &str, path: &str) -> (u16, String) {
    let answer = reqwest::Client::new()
        .get(server.api(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    (answer.status().as_u16(), answer.text().await.expect("body"))
}

#[tokio::test]
async fn the_server_follows_no_link_a_script_planted_in_its_lake_folder() {
    let Planted {
        server,
        task,
        upload,
        data,
    } = plant_links("off").await;
    let planted = task["result"].as_object().expect("what it planted");
    assert!(
        planted.values().all(|done| done == "allowed"),
        "unsandboxed, the kernel lets it: {planted:#?}"
    );
    let id = task["id"].as_str().expect("id");
    let other = "other-key-001";
    let (status, log) = get_as(&server, other, &format!("/tasks/{id}/logs")).await;
    assert_eq!(status, 409, "{log}");
    assert!(!log.contains("acme's secret"), "{log}");
    for dataset in ["y", "z"] {
        let (status, rows) = get_as(&server, other, &format!("/datasets/{dataset}/rows")).await;
        assert_eq!(status, 409, "{dataset}: {rows}");
        let (status, _) = get_as(&server, other, &format!("/datasets/{dataset}")).await;
        assert_eq!(status, 409, "{dataset}");
    }
    let (status, listed) = get_as(&server, other, "/datasets").await;
    assert_eq!(status, 200, "a link does not break the listing: {listed}");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let http = reqwest::Client::new();
    for dataset in ["x", "z"] {
        let deleted = http
            .delete(server.api(&format!("/datasets/{dataset}")))
            .bearer_auth(other)
            .send()
            .await
            .expect("delete");
        println!("DELETE {dataset}: {}", deleted.status());
    }
    assert_eq!(
        std::fs::read_to_string(&upload).expect("acme's upload is still there"),
        "acme's secret upload"
    );
    assert!(data.exists(), "acme's data file is still there");
    let (status, rows) = get_as(&server, "acme-key-001", "/datasets/secret/rows").await;
    assert_eq!(status, 200, "{rows}");
    let rows: Value = serde_json::from_str(&rows).expect("json");
    assert_eq!(rows["total_rows"], 7, "acme's dataset is whole: {rows}");
    server.stop().await;
}

#[tokio::test]
async fn a_sandboxed_script_can_make_no_link_or_special_file_in_the_lake() {
    let Planted {
        server,
        task,
        upload,
        data,
    } = plant_links("required").await;
    assert_eq!(task["sandbox"], "landlock+namespaces+nocaps");
    let planted = task["result"].as_object().expect("what it tried");
    assert!(planted.len() >= 5, "{planted:#?}");
    for (what, done) in planted {
        assert_ne!(done, "allowed", "{what}: {planted:#?}");
    }
    assert!(upload.exists() && data.exists());
    server.stop().await;
}

/// A serving task that reports whatever endpoint its params name, and stays up.
const CLAIM_PY: &str = r#"
import json, os, time

def run(input_path, output_path, params):
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        progress.write(json.dumps({"endpoint": params["claim"], "message": "serving"}) + "\n")
    time.sleep(600)
"#;

/// A private service on loopback that counts the connections it is sent.
async fn private_service() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, reached)
}

#[tokio::test]
async fn the_endpoint_proxy_never_forwards_to_an_address_the_task_does_not_own() {
    let server = Server::start(
        &[("claim.py", CLAIM_PY, false)],
        &[("LANCER_API_KEYS", KEYS)],
    )
    .await;
    let (private, reached) = private_service().await;
    let api_port = url::Url::parse(&server.url)
        .expect("url")
        .port()
        .expect("port");
    let http = reqwest::Client::new();
    let claims = [
        format!("http://127.0.0.1:{private}"),
        format!("http://127.0.0.1:{api_port}"),
        "http://169.254.169.254:8080".to_owned(),
        format!("http://localhost:{private}"),
        "http://127.0.0.1:80".to_owned(),
    ];
    for claim in claims {
        let spec = json!({"name": "claim", "script": "claim.py", "params": {"claim": claim}});
        let id = submit_as(&http, &server, "other-key-001", &spec).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let task: Value = http
                .get(server.api(&format!("/tasks/{id}")))
                .bearer_auth("other-key-001")
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            if task["endpoint"].is_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = http
            .get(server.api(&format!("/tasks/{id}/endpoint/secret")))
            .bearer_auth("other-key-001")
            .send()
            .await
            .expect("proxy");
        let status = answer.status();
        let body = answer.text().await.expect("body");
        assert_eq!(status, 502, "{claim}: {body}");
        assert!(body.contains("ENDPOINT_UNREACHABLE"), "{claim}: {body}");
        let cancel = http
            .post(server.api(&format!("/tasks/{id}/cancel")))
            .bearer_auth("other-key-001")
            .send()
            .await
            .expect("cancel");
        assert_eq!(cancel.status(), 200);
    }
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the private service was never reached"
    );
    server.stop().await;
}

/// Sleeps for ten minutes: a task whose event stream stays open.
const LONG_PY: &str = r#"
import time

def run(input_path, output_path, params):
    time.sleep(600)
"#;

#[tokio::test]
async fn one_tenants_event_streams_cannot_lock_out_another_tenant() {
    let server = Server::start(
        &[("long.py", LONG_PY, false)],
        &[
            ("LANCER_API_KEYS", KEYS),
            ("LANCER_TENANT_STREAMS", "4"),
            ("LANCER_MAX_STREAMS", "6"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let spec = json!({"name": "long", "script": "long.py"});
    let theirs = submit_as(&http, &server, "acme-key-001", &spec).await;
    let events = |key: &'static str, id: String| {
        let request = http
            .get(server.api(&format!("/tasks/{id}/events")))
            .bearer_auth(key);
        async move { request.send().await.expect("events") }
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let stream = events("acme-key-001", theirs.clone()).await;
        assert_eq!(stream.status(), 200);
        held.push(stream);
    }
    let refused = events("acme-key-001", theirs.clone()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body = refused.text().await.expect("body");
    assert!(body.contains("TOO_MANY_REQUESTS"), "{body}");
    // The other tenant is served meanwhile, its own stream included.
    let mine = submit_as(&http, &server, "other-key-001", &spec).await;
    let started = std::time::Instant::now();
    let listed = http
        .get(server.api("/tasks"))
        .bearer_auth("other-key-001")
        .send()
        .await
        .expect("list");
    assert_eq!(listed.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let own = events("other-key-001", mine.clone()).await;
    assert_eq!(own.status(), 200, "its share is its own");
    // A closed stream gives its place back.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = events("acme-key-001", theirs.clone()).await;
        if again.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Streams still open at the end would keep the server's drain waiting.
    drop((held, own));
    for (key, id) in [("acme-key-001", &theirs), ("other-key-001", &mine)] {
        http.post(server.api(&format!("/tasks/{id}/cancel")))
            .bearer_auth(key)
            .send()
            .await
            .expect("cancel");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_open_server_refuses_other_hosts_cross_site_posts_and_bodies_that_are_not_json() {
    let server = Server::start(&[("nap.py", NAP_PY, false)], &[]).await;
    let http = reqwest::Client::new();
    let spec = json!({"name": "nap", "script": "nap.py"}).to_string();
    let post = || {
        http.post(server.api("/tasks"))
            .header("content-type", "application/json")
            .body(spec.clone())
    };
    let rebound = http
        .get(server.api("/tasks"))
        .header("host", "attacker.example:8000")
        .send()
        .await
        .expect("get");
    assert_eq!(rebound.status(), 403, "a DNS-rebinding page's Host");
    let as_text = http
        .post(server.api("/tasks"))
        .header("content-type", "text/plain")
        .body(spec.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(as_text.status(), 400, "a text/plain body a form could send");
    let from_origin = post()
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(from_origin.status(), 403);
    let fetched = post()
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("post");
    assert_eq!(fetched.status(), 403);
    let listed: Value = http
        .get(server.api("/tasks"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(0),
        "nothing was submitted: {listed}"
    );
    let own = post().send().await.expect("post");
    assert_eq!(
        own.status(),
        201,
        "a client on loopback is served as before"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_layout_that_lets_scripts_read_the_task_table_or_write_their_scripts_is_refused_when_the_sandbox_is_required()
 {
    let required = [("LANCER_SANDBOX", "required")];
    // serve_refused runs in its scripts folder: these paths are inside it.
    let (ok, stderr) = serve_refused(&required, &["--db", "lancer.db"]).await;
    assert!(!ok && stderr.contains("the task table"), "{stderr}");
    let (ok, stderr) = serve_refused(&required, &["--lake", "lake"]).await;
    assert!(!ok && stderr.contains("the lake"), "{stderr}");
    let (ok, stderr) = serve_refused(&required, &["--lake", ".."]).await;
    assert!(
        !ok && stderr.contains("the scripts folder"),
        "scripts inside the lake are tenants' to rewrite: {stderr}"
    );
}

/// The peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// A dataset of `rows` rows, each holding one binary cell of `bytes` bytes.
async fn write_big_cells(uri: &str, rows: usize, bytes: usize) {
    use arrow_array::{BinaryArray, Int64Array, RecordBatch, RecordBatchIterator};
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("blob", DataType::Binary, false),
    ]));
    let cell = vec![7u8; bytes];
    // One row a batch: the writer never holds more than one cell.
    let batches: Vec<_> = (0..rows as i64)
        .map(|i| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(vec![i])),
                    Arc::new(BinaryArray::from_vec(vec![&cell[..]])),
                ],
            )
        })
        .collect();
    let reader = RecordBatchIterator::new(batches, schema.clone());
    lance::Dataset::write(reader, uri, None)
        .await
        .expect("write the dataset");
}

#[tokio::test]
async fn a_page_of_ten_megabyte_cells_is_answered_in_bounded_memory() {
    let server = Server::start(&[], &[]).await;
    let lake = std::fs::canonicalize(server.lake()).expect("lake");
    let uri = format!("{}/datasets/big.lance", lake.display());
    write_big_cells(&uri, 20, 10 << 20).await;
    // One small page first, so the server's own start-up is in the peak already.
    let http = reqwest::Client::new();
    let warm = http
        .get(server.api("/datasets/big/rows?limit=1&columns=id"))
        .send()
        .await
        .expect("rows");
    assert_eq!(warm.status(), 200);
    let before = peak_rss(server.pid());
    let page: Value = http
        .get(server.api("/datasets/big/rows?limit=20"))
        .send()
        .await
        .expect("rows")
        .json()
        .await
        .expect("json");
    let grew = peak_rss(server.pid()).saturating_sub(before);
    println!(
        "rows of 20 x 10 MB cells: peak RSS grew by {} MB",
        grew >> 20
    );
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(20), "{page}");
    assert_eq!(page["rows"][19]["blob"], json!({"bytes": 10 << 20}));
    assert!(grew < 64 << 20, "peak RSS grew by {} MB", grew >> 20);
    server.stop().await;
}

/// Looks at the server and another process from inside the sandbox, as a hostile script
/// would: the server's environment (its keys) and command line, a signal to each, another
/// tenant's `/dev/shm` file, and how many processes `/proc` shows. Then what root could do
/// with its capabilities: sniff the keys off the loopback with a packet socket, open a raw
/// IP socket, set the clock; and the capability sets it holds.
const PEEK_PY: &str = with_attempt!(
    r#"
import os, socket, time

def run(input_path, output_path, params):
    server, other = params["server"], params["other"]
    done = {
        "environ": attempt(lambda: open(f"/proc/{server}/environ", "rb").read(1)),
        "cmdline": attempt(lambda: open(f"/proc/{server}/cmdline", "rb").read(1)),
        "signal the server": attempt(lambda: os.kill(server, 0)),
        "signal another process": attempt(lambda: os.kill(other, 0)),
        "shm": attempt(lambda: open(params["shm"], "rb").read(1)),
        "sniff the loopback": attempt(
            lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))),
        "raw socket": attempt(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
        "set the clock": attempt(
            lambda: time.clock_settime(time.CLOCK_REALTIME, time.time())),
    }
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
                  if line.startswith("Cap"))
    return {
        "done": done,
        "processes": sum(1 for p in os.listdir("/proc") if p.isdigit()),
        "uid": os.getuid(),
        "capabilities": {name: status[name].strip() for name in ("CapEff", "CapPrm", "CapBnd")},
    }
"#
);

#[tokio::test]
async fn a_sandboxed_script_sees_no_other_process_or_shared_memory_and_holds_no_capability() {
    let server = Server::start(
        &[("peek.py", PEEK_PY, false)],
        &[("LANCER_API_KEYS", KEYS), ("LANCER_SANDBOX", "required")],
    )
    .await;
    let shm = format!("/dev/shm/lancer-acme-{}", uuid::Uuid::now_v7());
    std::fs::write(&shm, "acme's shared memory").expect("write /dev/shm");
    let params = json!({"server": server.pid(), "other": std::process::id(), "shm": shm});
    let http = reqwest::Client::new();
    let spec = json!({"name": "peek", "script": "peek.py", "params": params});
    let id = submit_as(&http, &server, "other-key-001", &spec).await;
    let task = wait_finished(&http, &server, &id).await;
    let _ = std::fs::remove_file(&shm);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["sandbox"], "landlock+namespaces+nocaps");
    let done = task["result"]["done"].as_object().expect("what it tried");
    for (what, outcome) in done {
        assert_ne!(outcome, "allowed", "{what}: {done:#?}");
    }
    let processes = task["result"]["processes"].as_u64().expect("a count");
    assert!(processes <= 3, "its /proc shows {processes} processes");
    let held = task["result"]["capabilities"]
        .as_object()
        .expect("capability sets");
    assert_eq!(held.len(), 3, "{held:?}");
    for (set, mask) in held {
        assert_eq!(
            mask, "0000000000000000",
            "{set}, as uid {}",
            task["result"]["uid"]
        );
    }
    server.stop().await;
}

/// Leaves a mark at `params["mark"]`, so a task refused before its script shows nothing ran.
const MARK_PY: &str = r#"
def run(input_path, output_path, params):
    with open(params["mark"], "w") as f:
        f.write("ran")
    return {"ran": True}
"#;

/// A `lancer serve` under `LANCER_SANDBOX=sandbox` on a kernel that has no Landlock for it
/// or its runners (tests/tools/no_landlock.py answers the syscall ENOSYS, as such a kernel
/// does); the task `mark.py` finished with, and whether its mark was left.
async fn run_without_landlock(sandbox: &str) -> (Value, bool) {
    let python = lancer_tests::server::python();
    let filter = lancer_tests::server::repo_root().join("tests/tools/no_landlock.py");
    let server = Server::start_under(
        &[python.as_ref(), filter.as_os_str()],
        &[("mark.py", MARK_PY, false)],
        &[("LANCER_API_KEYS", KEYS), ("LANCER_SANDBOX", sandbox)],
    )
    .await;
    let mark = server.dir.path().join("mark");
    let http = reqwest::Client::new();
    let spec = json!({"name": "mark", "script": "mark.py", "params": {"mark": mark}});
    let id = submit_as(&http, &server, "other-key-001", &spec).await;
    let task = wait_finished(&http, &server, &id).await;
    let marked = mark.exists();
    server.stop().await;
    (task, marked)
}

#[tokio::test]
async fn where_the_kernel_has_no_landlock_a_required_sandbox_fails_the_task_sandbox_unavailable_and_runs_nothing()
 {
    let (task, marked) = run_without_landlock("required").await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "SANDBOX_UNAVAILABLE", "{task:#}");
    assert_eq!(
        task["attempt"], 1,
        "the kernel will not change on a retry: {task:#}"
    );
    assert!(!marked, "the script ran unconfined: {task:#}");
}

#[tokio::test]
async fn where_the_kernel_has_no_landlock_a_best_effort_sandbox_runs_the_script_and_records_it_without_landlock()
 {
    let (task, marked) = run_without_landlock("best-effort").await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["sandbox"], "namespaces+nocaps", "{task:#}");
    assert!(marked, "{task:#}");
}
