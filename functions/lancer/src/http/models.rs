//! `/api/v1/models/{id}/aliases`: names that point at model versions, with their history.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiJson, ErrorBody};
use super::ids::{alias_name, model_name};
use super::{AppState, Tenant};
use crate::application::{AliasHistory, AliasView};
use crate::domain::model::AliasRequest;
use crate::error::Result;

/// A model's aliases.
#[derive(Serialize, ToSchema)]
pub struct AliasList {
    /// Every alias the model has now, by name.
    pub aliases: Vec<AliasView>,
}

/// A model's aliases.
#[utoipa::path(get, path = "/api/v1/models/{id}/aliases", tag = "models",
    responses((status = 200, body = AliasList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_aliases(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<AliasList>> {
    let model = model_name(&id)?;
    let aliases = state.service.model_aliases(&tenant, &model).await?;
    Ok(Json(AliasList { aliases }))
}

/// One alias: the version it names, or its versions and their weights.
#[utoipa::path(get, path = "/api/v1/models/{id}/aliases/{alias}", tag = "models",
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alias(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path((id, alias)): Path<(String, String)>,
) -> Result<Json<AliasView>> {
    let (model, alias) = (model_name(&id)?, alias_name(&alias)?);
    Ok(Json(
        state.service.model_alias(&tenant, &model, &alias).await?,
    ))
}

/// Points an alias at one version (`{"version": 7}`) or splits its traffic by weight
/// (`{"versions": {"7": 90, "8": 10}}`); each version must exist. Setting the value it
/// has already changes nothing.
#[utoipa::path(put, path = "/api/v1/models/{id}/aliases/{alias}", tag = "models",
    request_body = AliasRequest,
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "The model has 32 aliases already")))]
pub async fn set_alias(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path((id, alias)): Path<(String, String)>,
    ApiJson(request): ApiJson<AliasRequest>,
) -> Result<Json<AliasView>> {
    let (model, alias) = (model_name(&id)?, alias_name(&alias)?);
    let set = state
        .service
        .set_model_alias(&tenant, &model, &alias, &request);
    Ok(Json(set.await?))
}

/// Removes an alias; its history is kept.
#[utoipa::path(delete, path = "/api/v1/models/{id}/aliases/{alias}", tag = "models",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_alias(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path((id, alias)): Path<(String, String)>,
) -> Result<StatusCode> {
    let (model, alias) = (model_name(&id)?, alias_name(&alias)?);
    state
        .service
        .delete_model_alias(&tenant, &model, &alias)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Undoes the alias's last change: it takes back the value it had before (a second
/// rollback undoes the first; a deleted alias comes back).
#[utoipa::path(post, path = "/api/v1/models/{id}/aliases/{alias}/rollback", tag = "models",
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "Nothing to roll back to")))]
pub async fn rollback_alias(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path((id, alias)): Path<(String, String)>,
) -> Result<Json<AliasView>> {
    let (model, alias) = (model_name(&id)?, alias_name(&alias)?);
    let rolled = state.service.rollback_model_alias(&tenant, &model, &alias);
    Ok(Json(rolled.await?))
}

/// An alias's changes, newest first: when, by which tenant, and the value before and
/// after each. A deleted alias keeps its history.
#[utoipa::path(get, path = "/api/v1/models/{id}/aliases/{alias}/history", tag = "models",
    responses((status = 200, body = AliasHistory), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn alias_history(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    Path((id, alias)): Path<(String, String)>,
) -> Result<Json<AliasHistory>> {
    let (model, alias) = (model_name(&id)?, alias_name(&alias)?);
    let history = state.service.model_alias_history(&tenant, &model, &alias);
    Ok(Json(history.await?))
}
