//! A Lambda Runtime API emulator (`/2018-06-01/runtime/...`) and a function binary started
//! against it, so the real `lancer-api`, `lancer-ingest` and `lancer-sweeper` binaries run
//! under the real `lambda_runtime` client, one invocation at a time as on AWS.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

type Outcome = Result<Value, Value>;

#[derive(Default)]
struct Pending {
    /// Request id -> where its response or error goes.
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
    /// What the function reported when it could not start.
    init_error: Option<Value>,
}

struct Emulator {
    events: tokio::sync::Mutex<mpsc::Receiver<(String, Value)>>,
    pending: Mutex<Pending>,
    function: String,
}

/// A running function: its process and the Runtime API it polls.
pub struct LambdaFunction {
    invocations: mpsc::Sender<(String, Value)>,
    emulator: Arc<Emulator>,
    child: Child,
    next_id: std::sync::atomic::AtomicU64,
}

impl LambdaFunction {
    /// Starts `binary` as Lambda would: `AWS_LAMBDA_RUNTIME_API` and the function's
    /// variables set, plus `env`.
    pub async fn start(binary: &Path, name: &str, env: &[(&str, String)]) -> LambdaFunction {
        let (invocations, events) = mpsc::channel(16);
        let emulator = Arc::new(Emulator {
            events: tokio::sync::Mutex::new(events),
            pending: Mutex::new(Pending::default()),
            function: name.to_owned(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(emulator.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let child = Command::new(binary)
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the function");
        LambdaFunction {
            invocations,
            emulator,
            child,
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// One invocation: `Ok` with the function's response, `Err` with its error report.
    pub async fn invoke(&self, event: Value) -> Outcome {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", self.emulator.function);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.emulator.pending.lock().expect("pending");
            if let Some(error) = &pending.init_error {
                return Err(error.clone());
            }
            pending.waiting.insert(id.clone(), tx);
        }
        self.invocations
            .send((id, event))
            .await
            .expect("the emulator is running");
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("the function answers within a minute")
            .expect("the invocation was answered")
    }

    /// An API Gateway HTTP API (payload 2.0) request; answers (status, headers, body).
    pub async fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.http_as(None, method, path, body).await
    }

    /// As `http`, with `key` as the bearer API key when given.
    pub async fn http_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut headers = json!({"content-type": "application/json", "host": "api.local"});
        if let Some(key) = key {
            headers["authorization"] = json!(format!("Bearer {key}"));
        }
        let event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": raw_path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": "000000000000", "apiId": "local", "domainName": "api.local",
                "domainPrefix": "api", "requestId": "req", "routeKey": "$default",
                "stage": "$default", "time": "23/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
                "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "lancer-tests"}
            },
            "body": body.map(Value::to_string),
            "isBase64Encoded": false
        });
        let response = self.invoke(event).await.expect("the api function answers");
        let status = response["statusCode"].as_u64().expect("statusCode") as u16;
        let body = match response["body"].as_str() {
            Some(text) if !text.is_empty() => serde_json::from_str(text).unwrap_or(json!(text)),
            _ => Value::Null,
        };
        (status, body)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn next(State(emulator): State<Arc<Emulator>>) -> impl IntoResponse {
    let Some((id, event)) = emulator.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let mut headers = HeaderMap::new();
    let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
    let arn = format!(
        "arn:aws:lambda:us-east-1:000000000000:function:{}",
        emulator.function
    );
    for (name, value) in [
        ("lambda-runtime-aws-request-id", id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        ("lambda-runtime-invoked-function-arn", arn),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000".into(),
        ),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).expect("header"));
    }
    (StatusCode::OK, headers, event.to_string())
}

fn answer(emulator: &Emulator, id: &str, outcome: Outcome) -> StatusCode {
    match emulator.pending.lock().expect("pending").waiting.remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| json!(body))
}

async fn respond(
    State(emulator): State<Arc<Emulator>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> StatusCode {
    answer(&emulator, &id, Ok(json_of(&body)))
}

async fn fail(
    State(emulator): State<Arc<Emulator>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> StatusCode {
    answer(&emulator, &id, Err(json_of(&body)))
}

/// The function could not start: every waiting invocation gets its report.
async fn init_error(State(emulator): State<Arc<Emulator>>, body: String) -> StatusCode {
    let error = json!({"init_error": json_of(&body)});
    let mut pending = emulator.pending.lock().expect("pending");
    pending.init_error = Some(error.clone());
    for (_, tx) in pending.waiting.drain() {
        let _ = tx.send(Err(error.clone()));
    }
    StatusCode::ACCEPTED
}
