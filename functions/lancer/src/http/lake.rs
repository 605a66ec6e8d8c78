//! `/api/v1/datasets` and `/api/v1/models`: what the lake holds.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::ErrorBody;
use super::{AppState, Tenant};
use crate::domain::validate::ArtifactKind;
use crate::error::Result;
use crate::ports::{ArtifactDetail, ArtifactSummary};

/// Datasets in the lake, with schema and row count.
#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets",
    responses((status = 200, body = Vec<ArtifactSummary>), (status = 401, body = ErrorBody)))]
pub async fn list_datasets(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Json<Vec<ArtifactSummary>>> {
    Ok(Json(
        state
            .service
            .list_artifacts(&tenant, ArtifactKind::Dataset)
            .await?,
    ))
}

/// A dataset's schema, row count, versions and size.
#[utoipa::path(get, path = "/api/v1/datasets/{id}", tag = "datasets",
    responses((status = 200, body = ArtifactDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactDetail>> {
    Ok(Json(
        state
            .service
            .describe_artifact(&tenant, ArtifactKind::Dataset, &id)
            .await?,
    ))
}

/// Delete a dataset and all its versions.
#[utoipa::path(delete, path = "/api/v1/datasets/{id}", tag = "datasets",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_dataset(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state
        .service
        .delete_artifact(&tenant, ArtifactKind::Dataset, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Models in the lake.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, body = Vec<ArtifactSummary>), (status = 401, body = ErrorBody)))]
pub async fn list_models(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Json<Vec<ArtifactSummary>>> {
    Ok(Json(
        state
            .service
            .list_artifacts(&tenant, ArtifactKind::Model)
            .await?,
    ))
}

/// A model's schema and versions, with the newest version's metrics and params.
#[utoipa::path(get, path = "/api/v1/models/{id}", tag = "models",
    responses((status = 200, body = ArtifactDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactDetail>> {
    Ok(Json(
        state
            .service
            .describe_artifact(&tenant, ArtifactKind::Model, &id)
            .await?,
    ))
}

/// Delete a model and all its versions.
#[utoipa::path(delete, path = "/api/v1/models/{id}", tag = "models",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_model(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state
        .service
        .delete_artifact(&tenant, ArtifactKind::Model, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
