//! API keys and tenants: with keys configured every `/api/v1` call needs
//! `Authorization: Bearer <key>`; without them one open tenant owns everything. The
//! decision is the application's (`Service::tenant_of`); this layer carries the header in
//! and the tenant on to the handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::error::Error;

pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    // A header that is not visible ASCII is no bearer token: the use case refuses it.
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    let tenant = state.service.tenant_of(header)?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

/// As `authenticate`, and on the endpoint routes the key may come in the console's cookie
/// instead: a browser opening a served page sends no `Authorization` header.
pub async fn authenticate_endpoint(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let header = match request.headers().get(AUTHORIZATION) {
        Some(value) => Some(value.to_str().unwrap_or_default().to_owned()),
        None => {
            super::endpoint::key_from_cookie(request.headers()).map(|key| format!("Bearer {key}"))
        }
    };
    let tenant = state.service.tenant_of(header.as_deref())?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}
