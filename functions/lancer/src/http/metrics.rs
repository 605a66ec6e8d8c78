//! `GET /metrics` in Prometheus' text format, and the timing of every request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Result;
use crate::telemetry::{self, HTTP_REQUESTS};

/// Prometheus metrics: with a key, that tenant's tasks by status, queue wait and run
/// time; open (`LANCER_METRICS_OPEN`), every tenant's, and the process's own series
/// (request and dispatch latency, heartbeats missed, uploads, ingestions), which count
/// every tenant's traffic and so are not shown to one tenant's key.
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

/// Times each request to its answer's head, by method, route template and status class.
/// Every label comes from a closed set, whatever the peer sends: a method outside the
/// standard ones is `other`, the route is the template the router matched (`other` for a
/// path it has none for), a status is its class (`2xx`), since a served endpoint's answer
/// can carry any code.
pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route.as_ref().map_or("other", MatchedPath::as_str)),
        ("status", status_class(response.status())),
    ];
    telemetry::global().observe(HTTP_REQUESTS, &labels, started.elapsed().as_secs_f64());
    response
}

/// The method as a label: one of HTTP's nine standard methods, or `other`.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|standard| *standard == method)
        .map_or("other", Method::as_str)
}

/// `1xx` to `5xx`; anything else (a code past 599) is `other`.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_closed_sets_whatever_the_peer_sends() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for junk in ["XGET", "get", "PROPFIND", "A1B2C3"] {
            let method = Method::from_bytes(junk.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{junk}");
        }
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        let odd = StatusCode::from_u16(799).expect("a code");
        assert_eq!(status_class(odd), "other");
    }

    /// Requests through a router that records them: the label is the template the router
    /// matched, with the nest's prefix, and a path it has no route for is `other`.
    #[tokio::test]
    async fn a_route_is_labelled_by_its_matched_template() {
        use axum::body::Body;
        use tower::ServiceExt;
        let probe = format!("/probe-{}", uuid::Uuid::now_v7().simple());
        let api =
            axum::Router::new().route("/tasks/{id}/logs", axum::routing::get(|| async { "" }));
        let app = axum::Router::new()
            .nest(&probe, api)
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn(record_request));
        for path in [
            format!("{probe}/tasks/0192abc/logs"),
            format!("{probe}/wp-login.php"),
        ] {
            let request = axum::http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(request).await.expect("answered");
        }
        let mut text = String::new();
        telemetry::global().render(&mut text);
        let matched = format!("route=\"{probe}/tasks/{{id}}/logs\",status=\"2xx\"");
        assert!(text.contains(&matched), "{text}");
        assert!(!text.contains("wp-login"), "{text}");
    }
}
