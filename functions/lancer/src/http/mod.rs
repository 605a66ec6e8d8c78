//! The REST API: one function builds the axum `Router` that the local server and the
//! Lambda entrypoint both serve.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use utoipa::OpenApi;

use crate::application::Service;
use crate::config::Timeouts;
use crate::domain::validate::MAX_BODY_BYTES;

pub mod auth;
mod console;
pub mod endpoint;
pub mod error;
mod ids;
mod lake;
mod metrics;
mod models;
pub mod origin;
mod pipelines;
pub mod serve;
pub mod serving;
mod stream;
pub mod streams;
mod tasks;
pub mod uploads;

use crate::domain::endpoint::Reserved;
pub use crate::domain::tenant::Tenant;

/// Everything a request handler needs: the use cases, and how long a request may take.
pub struct AppState {
    /// The use cases.
    pub service: Service,
    /// How long a request, and an upload, may take.
    pub timeouts: Timeouts,
    /// `/metrics` without a key, over every tenant (`LANCER_METRICS_OPEN`).
    pub metrics_open: bool,
    /// Ports the endpoint proxy never reaches: the API's own and the control planes'.
    pub reserved: Reserved,
    /// The event streams open now, within their limits.
    pub streams: Arc<streams::OpenStreams>,
    /// Which `Host` headers it answers (loopback only in open mode).
    pub hosts: origin::Hosts,
}

impl AsRef<Service> for AppState {
    fn as_ref(&self) -> &Service {
        &self.service
    }
}

/// The OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "lancer", description = "ML tasks on a Lance data lake: ingest, train, serve."),
    paths(
        tasks::submit, tasks::list, tasks::get_task, tasks::cancel, tasks::logs,
        tasks::progress, stream::task_events, endpoint::proxy_root,
        endpoint::set_key_cookie, endpoint::clear_key_cookie,
        pipelines::submit, pipelines::list, pipelines::get_pipeline, pipelines::cancel,
        pipelines::retry,
        lake::list_datasets, lake::get_dataset, lake::delete_dataset,
        lake::dataset_rows, lake::list_models, lake::get_model, lake::delete_model,
        lake::model_rows, models::list_aliases, models::get_alias, models::set_alias,
        models::delete_alias, models::rollback_alias, models::alias_history,
        serving::declare, serving::get_serving, serving::stop_serving, serving::proxy_root,
        uploads::upload, health, metrics::metrics,
    ),
    components(schemas(error::ErrorBody, tasks::TaskList, pipelines::PipelineList)),
    modifiers(&BearerAuth),
    tags((name = "tasks"), (name = "pipelines"), (name = "datasets"), (name = "models"), (name = "uploads"), (name = "metrics"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                let operations = [
                    &mut item.get,
                    &mut item.post,
                    &mut item.put,
                    &mut item.delete,
                ];
                for operation in operations.into_iter().flatten() {
                    add_shared_responses(operation);
                }
            }
        }
    }
}

/// Answers every authenticated route can give, documented once: a missing or unknown key,
/// a request past its time limit, a request the API cannot read.
fn add_shared_responses(operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let shared = [
        ("400", "The request is not valid"),
        ("401", "A missing or unknown API key"),
        ("408", "The request ran past its time limit"),
    ];
    for (status, description) in shared {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(response.into());
    }
}

/// Stops a request after a limit, answering 408 REQUEST_TIMEOUT in the API's format.
macro_rules! time_limit {
    ($limit:expr) => {
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                error::timed_out,
            ))
            .timeout($limit)
    };
}

/// The API over `state`, owned or shared (`lancer serve` shares it with reconcile).
pub fn router(state: impl Into<Arc<AppState>>) -> Router {
    let state = state.into();
    let Timeouts { request, upload } = state.timeouts;
    let api = Router::new()
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get_task))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/logs", get(tasks::logs))
        .route("/tasks/{id}/progress", get(tasks::progress))
        .route("/tasks/{id}/events", get(stream::task_events))
        .route("/pipelines", post(pipelines::submit).get(pipelines::list))
        .route("/pipelines/{id}", get(pipelines::get_pipeline))
        .route("/pipelines/{id}/cancel", post(pipelines::cancel))
        .route("/pipelines/{id}/retry", post(pipelines::retry))
        .route("/datasets", get(lake::list_datasets))
        .route(
            "/datasets/{id}",
            get(lake::get_dataset).delete(lake::delete_dataset),
        )
        .route("/datasets/{id}/rows", get(lake::dataset_rows))
        .route("/models", get(lake::list_models))
        .route("/models/{id}/rows", get(lake::model_rows))
        .route("/models/{id}/aliases", get(models::list_aliases))
        .route(
            "/models/{id}/aliases/{alias}",
            get(models::get_alias)
                .put(models::set_alias)
                .delete(models::delete_alias),
        )
        .route(
            "/models/{id}/aliases/{alias}/rollback",
            post(models::rollback_alias),
        )
        .route(
            "/models/{id}/aliases/{alias}/history",
            get(models::alias_history),
        )
        .route(
            "/models/{id}/serving",
            get(serving::get_serving)
                .put(serving::declare)
                .delete(serving::stop_serving),
        )
        .route(
            "/endpoint-key",
            put(endpoint::set_key_cookie).delete(endpoint::clear_key_cookie),
        )
        .route(
            "/models/{id}",
            get(lake::get_model).delete(lake::delete_model),
        )
        .layer(time_limit!(request))
        // Added after the limit above: an upload's body may take longer to arrive.
        .route(
            "/uploads/{*key}",
            put(uploads::upload).layer::<_, Infallible>(time_limit!(upload)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .merge(endpoints(&state))
        .route("/openapi.json", get(openapi_json));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health))
        .route("/metrics", get(metrics::metrics))
        .merge(console::routes())
        .fallback(error::route_not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::same_site,
        ))
        .layer(axum::middleware::from_fn(metrics::record_request))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The serving tasks' endpoints, behind the API's auth (or the console's key cookie), with
/// the upload's time limit since a request may carry a body.
fn endpoints(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/tasks/{id}/endpoint", any(endpoint::to_root))
        .route("/tasks/{id}/endpoint/", any(endpoint::proxy_root))
        .route("/tasks/{id}/endpoint/{*path}", any(endpoint::proxy))
        .route("/models/{id}/endpoint", any(serving::to_root))
        .route("/models/{id}/endpoint/", any(serving::proxy_root))
        .route("/models/{id}/endpoint/{*path}", any(serving::proxy))
        .layer(time_limit!(state.timeouts.upload))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            endpoint::MAX_PROXIED_BODY,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_endpoint,
        ))
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up")))]
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}
