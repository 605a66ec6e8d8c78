//! API keys and tenants: with keys configured every `/api/v1` call needs
//! `Authorization: Bearer <key>`; without them one open tenant owns everything.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::domain::tenant::Tenant;
use crate::error::Error;

pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let tenant = match &state.api_keys {
        None => Tenant::single(),
        Some(keys) => {
            let header = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .ok_or_else(|| {
                    Error::Unauthorized("missing Authorization: Bearer <api key>".into())
                })?;
            let key = header
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Error::Unauthorized("Authorization must be 'Bearer <api key>'".into())
                })?;
            let name = keys
                .tenant_of(key)
                .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?;
            Tenant::keyed(name.clone())
        }
    };
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}
