//! `mnist-serve`: the pipeline's serving step. Loads the newest model version (or
//! `params.version`) from the lake and serves `POST /predict`, `GET /healthz` and the
//! drawing page at `/`. Reports its URL to the platform and runs until stopped.
//!
//! It binds the address the platform gives in `LANCER_SERVE_HOST` (loopback unless the
//! operator says otherwise), never one a task asks for: the endpoint is reached through
//! lancer's API (`/api/v1/tasks/{id}/endpoint/`), behind its keys.
//!
//! Params: `port` (0 = any free port), `version` (a Lance version of the model),
//! `device`, `max_batch` (images per forward pass, default 64) and `batch_wait_us` (how
//! long a batch waits for more requests, default 0: it takes what is queued). Any other
//! param is refused, naming it.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mnist::contract::{Invocation, Progress, init_logging, input_version, storage_options};
use mnist::infer::Predictor;
use mnist::model::Net;
use mnist::serve::{Batcher, ServeParams, parse, respond};
use serde_json::{Value, json};

const PAGE: &str = include_str!("../../index.html");

struct Model {
    batcher: Batcher,
    version: u64,
    metrics: Value,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

async fn predict(State(model): State<Arc<Model>>, body: Bytes) -> Response {
    let images = match parse(&body) {
        Ok(images) => images,
        Err(message) => return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message),
    };
    match model.batcher.predict(images.pixels).await {
        Ok(probabilities) => (
            [(header::CONTENT_TYPE, "application/json")],
            respond(&probabilities, images.batch),
        )
            .into_response(),
        Err(message) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PREDICTION_FAILED",
            message,
        ),
    }
}

async fn health(State(model): State<Arc<Model>>) -> Json<Value> {
    Json(json!({"status": "ok", "model_version": model.version, "metrics": model.metrics}))
}

fn main() -> Result<()> {
    mnist::set_thread_count();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    init_logging();
    let task = Invocation::from_args()?;
    if task.input.is_empty() {
        bail!("mnist-serve needs a model as its input");
    }
    if task.params.contains_key("host") {
        bail!("the address to bind is the operator's (LANCER_SERVE_HOST), not a param");
    }
    let params: ServeParams = task.params()?;
    // Loopback unless the operator says otherwise: on a KubeRay serving worker the endpoint
    // is reached through a Service, so there it binds the pod's interfaces ("0.0.0.0").
    let host: std::net::IpAddr = std::env::var("LANCER_SERVE_HOST")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()
        .context("LANCER_SERVE_HOST must be an IP address, such as 127.0.0.1 or 0.0.0.0")?;
    let device = params.device.device()?;
    let options = params.batch_options()?;
    let (row, version) = mnist::lake::load_model(
        &task.input,
        params.version.or(input_version()),
        &storage_options(),
    )
    .await?;
    let net = Net::from_safetensors(&row.weights, &device)?;
    let model = Arc::new(Model {
        batcher: Batcher::start(Predictor::new(&net, &device)?, options),
        version,
        metrics: row.metrics,
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/predict", post(predict))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(model);
    let listener = tokio::net::TcpListener::bind((host, params.port))
        .await
        .context("binding the port")?;
    let url = format!("http://{}", listener.local_addr()?);
    Progress::from_env()
        .report(json!({"endpoint": url, "message": format!("serving model version {version}")}));
    println!("mnist-serve: model version {version} at {url}");
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
