//! `mnist-serve`: the design's serving step. Loads the newest model version (or
//! `params.version`) from the lake and serves `POST /predict`, `GET /healthz` and the
//! drawing page at `/`. Reports its URL to the platform and runs until stopped.
//!
//! Params: `port` (0 = any free port), `version` (a Lance version of the model).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
use mnist::contract::{Invocation, Progress, init_logging, input_version, storage_options};
use mnist::idx::PIXELS;
use mnist::model::{Net, images_tensor};
use serde_json::{Value, json};

const PAGE: &str = include_str!("../../index.html");
const MAX_IMAGES: usize = 1024;

struct Model {
    net: Net,
    device: Device,
    version: u64,
    metrics: Value,
}

struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": "INVALID_REQUEST", "message": self.0}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

fn pixels_of(value: &Value, what: &str, into: &mut Vec<f32>) -> Result<(), BadRequest> {
    let values = value
        .as_array()
        .ok_or_else(|| BadRequest(format!("{what} must be an array of 784 numbers")))?;
    if values.len() != PIXELS {
        return Err(BadRequest(format!(
            "{what} has {} values; an image has 784 (28x28, row by row)",
            values.len()
        )));
    }
    for pixel in values {
        match pixel.as_f64() {
            Some(p) if p.is_finite() => into.push(p as f32),
            _ => {
                return Err(BadRequest(format!(
                    "{what} holds a value that is not a finite number"
                )));
            }
        }
    }
    Ok(())
}

fn answer(probabilities: &[f32]) -> Value {
    let (prediction, confidence) =
        probabilities
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |best, (digit, p)| if p > best.1 { (digit, p) } else { best },
            );
    json!({"prediction": prediction, "confidence": confidence, "probabilities": probabilities})
}

async fn predict(
    State(model): State<Arc<Model>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, BadRequest> {
    let Json(body) = body.map_err(|rejection| BadRequest(rejection.body_text()))?;
    let mut pixels = Vec::new();
    let batch = match (body.get("image"), body.get("images")) {
        (Some(image), None) => {
            pixels_of(image, "image", &mut pixels)?;
            false
        }
        (None, Some(Value::Array(images))) if !images.is_empty() && images.len() <= MAX_IMAGES => {
            for (n, image) in images.iter().enumerate() {
                pixels_of(image, &format!("images[{n}]"), &mut pixels)?;
            }
            true
        }
        (None, Some(_)) => {
            return Err(BadRequest(format!(
                "images must be a list of 1 to {MAX_IMAGES} images"
            )));
        }
        _ => {
            return Err(BadRequest(
                "send {\"image\": [784 numbers]} or {\"images\": [[784 numbers], ...]}".into(),
            ));
        }
    };
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<f32>>> {
        let x = images_tensor(&pixels, &model.device)?;
        Ok(model.net.probabilities(&x)?.to_vec2::<f32>()?)
    })
    .await
    .map_err(|err| BadRequest(format!("prediction failed: {err}")))?
    .map_err(|err| BadRequest(format!("prediction failed: {err}")))?;
    let answers: Vec<Value> = rows.iter().map(|p| answer(p)).collect();
    Ok(Json(if batch {
        Value::Array(answers)
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    }))
}

async fn health(State(model): State<Arc<Model>>) -> Json<Value> {
    Json(json!({"status": "ok", "model_version": model.version, "metrics": model.metrics}))
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let task = Invocation::from_args()?;
    if task.input.is_empty() {
        bail!("mnist-serve needs a model as its input");
    }
    let port = task.u64_param("port")?.unwrap_or(0);
    let port = u16::try_from(port).context("port must be at most 65535")?;
    // Loopback unless the task says otherwise: on a KubeRay serving worker the endpoint
    // is reached through a Service, so there it binds the pod's interfaces ("0.0.0.0").
    let host: std::net::IpAddr = task
        .str_param("host")?
        .unwrap_or_else(|| "127.0.0.1".into())
        .parse()
        .context("host must be an IP address, such as 127.0.0.1 or 0.0.0.0")?;
    let device = mnist::model::device(&task.str_param("device")?.unwrap_or_else(|| "cpu".into()))?;
    let (row, version) = mnist::lake::load_model(
        &task.input,
        task.u64_param("version")?.or(input_version()),
        &storage_options(),
    )
    .await?;
    let net = Net::from_safetensors(&row.weights, &device)?;
    let model = Arc::new(Model {
        net,
        device,
        version,
        metrics: row.metrics,
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/predict", post(predict))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(model);
    let listener = tokio::net::TcpListener::bind((host, port))
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
