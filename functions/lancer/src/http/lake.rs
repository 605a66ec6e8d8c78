//! `/api/v1/datasets` and `/api/v1/models`: what the lake holds.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiQuery, ErrorBody};
use super::ids::artifact_name;
use super::{AppState, Tenant};
use crate::application::{Rows, RowsRequest};
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
            .describe_artifact(&tenant, ArtifactKind::Dataset, &artifact_name(&id)?)
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
        .delete_artifact(&tenant, ArtifactKind::Dataset, &artifact_name(&id)?)
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
            .describe_artifact(&tenant, ArtifactKind::Model, &artifact_name(&id)?)
            .await?,
    ))
}

/// Delete a model and all its versions, and its aliases' histories; a model an alias still
/// names is a 409.
#[utoipa::path(delete, path = "/api/v1/models/{id}", tag = "models",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "An alias names the model")))]
pub async fn delete_model(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state
        .service
        .delete_artifact(&tenant, ArtifactKind::Model, &artifact_name(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RowsParams {
    /// The first row, from 0.
    offset: Option<u64>,
    /// Rows in the page, 1 to 100 (default 20). A page also stops before 4 MiB of JSON.
    limit: Option<u64>,
    /// Comma-separated columns to return (default: all), at most 64.
    columns: Option<String>,
    /// The version to read (default: the latest).
    version: Option<u64>,
}

impl From<RowsParams> for RowsRequest {
    fn from(params: RowsParams) -> Self {
        Self {
            offset: params.offset,
            limit: params.limit,
            columns: params.columns,
            version: params.version,
        }
    }
}

/// A page of a dataset's rows, at its latest version or `version`. Binary cells are given
/// as their size; a column whose field metadata has `lancer:image` carries its picture
/// shape in `fields`.
#[utoipa::path(get, path = "/api/v1/datasets/{id}/rows", tag = "datasets", params(RowsParams),
    responses((status = 200, body = Rows), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn dataset_rows(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<RowsParams>,
) -> Result<Json<Rows>> {
    let rows = state
        .service
        .artifact_rows(
            &tenant,
            ArtifactKind::Dataset,
            &artifact_name(&id)?,
            params.into(),
        )
        .await?;
    Ok(Json(rows))
}

/// A page of a model's rows: one row per saved version (its metrics, params and the
/// size of its weights), at its latest version or `version`.
#[utoipa::path(get, path = "/api/v1/models/{id}/rows", tag = "models", params(RowsParams),
    responses((status = 200, body = Rows), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn model_rows(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<RowsParams>,
) -> Result<Json<Rows>> {
    let rows = state
        .service
        .artifact_rows(
            &tenant,
            ArtifactKind::Model,
            &artifact_name(&id)?,
            params.into(),
        )
        .await?;
    Ok(Json(rows))
}
