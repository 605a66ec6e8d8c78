//! `/api/v1/models/{id}/serving` (how a model's aliased versions are served) and
//! `/api/v1/models/{model}@{alias}/endpoint/...`: an alias's stable endpoint, behind the
//! API's keys like the task proxy. Each request goes to a ready replica of the version the
//! alias's weights pick, and the answer says which version it was (`X-Lancer-Version`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Redirect, Response};
use axum::{Extension, Json};
use tracing::warn;

use super::endpoint::{answer, forward};
use super::error::{ApiJson, ErrorBody};
use super::ids::model_name;
use super::{AppState, Tenant};
use crate::application::ServingView;
use crate::domain::model::{AliasName, ModelName};
use crate::domain::path::printable;
use crate::domain::serving::ServingRequest;
use crate::error::{Error, Resource, Result};
use crate::telemetry;

/// The header that names the model version that answered.
pub const VERSION_HEADER: &str = "x-lancer-version";
/// The header that names the replica's serving task that answered.
pub const TASK_HEADER: &str = "x-lancer-task";

/// Declares how a model's aliased versions are served: the script each replica runs, its
/// params and resources, replicas per version and how they scale. Replicas of an earlier
/// declaration are replaced.
#[utoipa::path(put, path = "/api/v1/models/{id}/serving", tag = "models",
    request_body = ServingRequest,
    responses((status = 200, body = ServingView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn declare(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ServingRequest>,
) -> Result<Json<ServingView>> {
    let model = model_name(&id)?;
    let view = state.service.declare_serving(&tenant, &model, request);
    Ok(Json(view.await?))
}

/// A model's serving declaration and its replicas, each with its version, task and state.
#[utoipa::path(get, path = "/api/v1/models/{id}/serving", tag = "models",
    responses((status = 200, body = ServingView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_serving(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<ServingView>> {
    let model = model_name(&id)?;
    Ok(Json(state.service.model_serving(&tenant, &model).await?))
}

/// Stops serving a model: its replicas stop; its aliases stay.
#[utoipa::path(delete, path = "/api/v1/models/{id}/serving", tag = "models",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stop_serving(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let model = model_name(&id)?;
    state.service.stop_serving(&tenant, &model).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `model@alias` from a path: each part by the naming rules; text without an `@` names no
/// alias.
fn alias_of(raw: &str) -> Result<(ModelName, AliasName)> {
    let (model, alias) = raw
        .split_once('@')
        .ok_or_else(|| Error::not_found(Resource::Alias, printable(raw)))?;
    Ok((model_name(model)?, AliasName::parse(alias)?))
}

/// `.../endpoint` -> `.../endpoint/`, so that a served page's relative links resolve under
/// the proxy.
pub async fn to_root(Path(id): Path<String>) -> Result<Redirect> {
    let (model, alias) = alias_of(&id)?;
    Ok(Redirect::permanent(&format!(
        "/api/v1/models/{model}@{alias}/endpoint/"
    )))
}

/// Passes a request to the root of an alias's endpoint.
#[utoipa::path(
    get, path = "/api/v1/models/{model}@{alias}/endpoint/", tag = "models",
    params(("model" = String, Path, description = "The model"), ("alias" = String, Path, description = "One of its aliases")),
    responses(
        (status = 200, description = "The answer of a replica of the version the alias's weights picked, streamed, with `X-Lancer-Version` naming that version (any method and path under this prefix is passed on)"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The model declares no serving", body = ErrorBody),
        (status = 502, description = "The replica did not answer", body = ErrorBody),
        (status = 503, description = "No replica started within the declaration's `start_timeout_s`; `Retry-After` says when to try again", body = ErrorBody),
    )
)]
pub async fn proxy_root(
    state: State<Arc<AppState>>,
    tenant: Extension<Tenant>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    pass_on(state, tenant, id, String::new(), request).await
}

/// Passes a request to a path of an alias's endpoint.
pub async fn proxy(
    state: State<Arc<AppState>>,
    tenant: Extension<Tenant>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    pass_on(state, tenant, id, path, request).await
}

/// Whether a request may be sent again to another replica after the first could not be
/// reached: an idempotent method, and no body to have been consumed.
fn replayable(method: &Method, headers: &HeaderMap) -> bool {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    let no_body = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length == "0");
    idempotent && no_body
}

async fn pass_on(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    id: String,
    path: String,
    request: Request,
) -> Result<Response> {
    let (model, alias) = alias_of(&id)?;
    let started = std::time::Instant::now();
    let answered = route_and_forward(&state, &tenant, (&model, &alias), path, request).await;
    record(&state, &tenant, (&model, &alias), &answered, started);
    answered
}

/// Counts a request through an alias, by the version that answered and its status class,
/// and how long the answer took.
fn record(
    state: &AppState,
    tenant: &Tenant,
    (model, alias): (&ModelName, &AliasName),
    answered: &Result<Response>,
    started: std::time::Instant,
) {
    let (version, status) = match answered {
        Ok(response) => (
            response
                .headers()
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned(),
            format!("{}xx", response.status().as_u16() / 100),
        ),
        Err(_) => ("none".to_owned(), "none".to_owned()),
    };
    let key = (tenant.name.clone(), model.clone());
    let (model, alias) = state.service.fleet.metric_names(&key, alias);
    let labels = [
        ("tenant", tenant.name.as_str()),
        ("model", model.as_str()),
        ("alias", alias.as_str()),
        ("version", version.as_str()),
    ];
    let metrics = telemetry::global();
    if status != "none" {
        let seconds = started.elapsed().as_secs_f64();
        metrics.observe(telemetry::ALIAS_LATENCY, &labels, seconds);
    }
    let mut with_status = labels.to_vec();
    with_status.push(("status", status.as_str()));
    metrics.add(telemetry::ALIAS_REQUESTS, &with_status, 1.0);
}

/// Routes a request to a replica of the alias and passes it on (once more, to another
/// replica, where sending it again is safe).
async fn route_and_forward(
    state: &AppState,
    tenant: &Tenant,
    (model, alias): (&ModelName, &AliasName),
    path: String,
    request: Request,
) -> Result<Response> {
    let service = &state.service;
    let (parts, body) = request.into_parts();
    let routed = service.route(tenant, model, alias, None).await?;
    let first = forward(routed.addr, &path, &parts, body).await;
    let (routed, upstream) = match first {
        Ok(upstream) => (routed, Ok(upstream)),
        // The replica is gone (killed, or stopped as this request came): once more on
        // another, where sending it again cannot do anything twice.
        Err(err) if replayable(&parts.method, &parts.headers) => {
            warn!(%model, %alias, task = %routed.task, %err, "a replica did not answer; retrying on another");
            service.fleet.evict(&routed.task);
            let again = service
                .route(tenant, model, alias, Some(&routed.task))
                .await?;
            let upstream = forward(again.addr, &path, &parts, Body::empty()).await;
            (again, upstream)
        }
        Err(err) => {
            service.fleet.evict(&routed.task);
            (routed, Err(err))
        }
    };
    let upstream = upstream.map_err(|err| {
        warn!(%model, %alias, task = %routed.task, %err, "a replica did not answer");
        Error::BadGateway(format!("{model}@{alias}'s replica did not answer"))
    })?;
    let (version, task) = (routed.version, routed.task.to_string());
    let mut response = answer(upstream, routed.hold);
    let headers = response.headers_mut();
    headers.insert(VERSION_HEADER, HeaderValue::from(version));
    if let Ok(task) = HeaderValue::from_str(&task) {
        headers.insert(TASK_HEADER, task);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bodiless_idempotent_request_is_sent_again() {
        let mut headers = HeaderMap::new();
        assert!(replayable(&Method::GET, &headers));
        assert!(!replayable(&Method::POST, &headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(12));
        assert!(!replayable(&Method::PUT, &headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        assert!(replayable(&Method::DELETE, &headers));
    }

    #[test]
    fn an_alias_endpoint_is_named_model_at_alias() {
        let (model, alias) = alias_of("digits@production").expect("parsed");
        assert_eq!((model.as_str(), alias.as_str()), ("digits", "production"));
        assert!(matches!(alias_of("digits"), Err(Error::NotFound { .. })));
        assert!(matches!(
            alias_of("digits@../x"),
            Err(Error::InvalidRequest(_))
        ));
    }
}
