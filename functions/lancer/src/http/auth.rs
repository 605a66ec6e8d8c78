//! API keys and tenants: with keys configured every `/api/v1` call needs
//! `Authorization: Bearer <key>`; without them one open tenant owns everything. The
//! decision is the application's (`Service::tenant_of`); this layer carries the header in
//! and the tenant on to the handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::error::Error;

/// Middleware: the bearer key's tenant goes into the request's extensions; a missing or
/// unknown key is a 401 (a server without keys serves the one default tenant).
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let tenant = state.service.tenant_of(bearer(request.headers()))?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

/// The `Authorization` header. One that is not visible ASCII reads as empty, which is no
/// bearer token: the use case refuses it.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default())
}

/// As `authenticate`, and on the endpoint routes the key may come in the console's cookie
/// instead: a browser opening a served page sends no `Authorization` header.
pub async fn authenticate_endpoint(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let from_cookie = super::endpoint::key_from_cookie(request.headers());
    let header = match bearer(request.headers()) {
        Some(header) => Some(header.to_owned()),
        None => from_cookie.map(|key| format!("Bearer {key}")),
    };
    let tenant = state.service.tenant_of(header.as_deref())?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}
