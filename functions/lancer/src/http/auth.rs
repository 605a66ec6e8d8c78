//! API keys and tenants: with keys configured every `/api/v1` call needs
//! `Authorization: Bearer <key>`; without them one open tenant owns everything.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::config::DEFAULT_TENANT;
use crate::error::Error;
use crate::lake::tenant_prefix;

/// The caller, as the auth layer established it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    /// The tenant's folder in the lake.
    pub prefix: String,
}

pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let name = match &state.api_keys {
        None => DEFAULT_TENANT.to_owned(),
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
            keys.tenant_of(key)
                .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?
                .to_owned()
        }
    };
    let prefix = tenant_prefix(&name, state.api_keys.is_some());
    request.extensions_mut().insert(Tenant { name, prefix });
    Ok(next.run(request).await)
}
