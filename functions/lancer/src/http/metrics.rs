//! `GET /metrics` in Prometheus' text format, and the timing of every request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Result;
use crate::telemetry::{self, HTTP_REQUESTS};

/// Prometheus metrics: with a key, that tenant's tasks by status, queue wait and run
/// time; open (`LANCER_METRICS_OPEN`), every tenant's. The process's own series
/// (request and dispatch latency, heartbeats missed, uploads, ingestions) carry no tenant.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, body = super::error::ErrorBody),
    ))]
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    let tenant = if state.metrics_open {
        None
    } else {
        Some(state.service.tenant_of(super::auth::bearer(&headers))?)
    };
    let text = state.service.metrics_text(tenant.as_ref()).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Times each request to its answer's head, by method, route template and status.
pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = telemetry::route_of(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let labels = [
        ("method", method.as_str()),
        ("route", route),
        ("status", status.as_str()),
    ];
    telemetry::global().observe(HTTP_REQUESTS, &labels, started.elapsed().as_secs_f64());
    response
}
