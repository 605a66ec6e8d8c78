//! `/api/v1/tasks/{id}/endpoint/...`: a serving task's endpoint behind the API's auth.
//! Serving scripts bind loopback (`LANCER_SERVE_HOST`), so this is the way in from the
//! network. Bodies stream both ways; hop-by-hop headers and the caller's credentials stay
//! here.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use futures::TryStreamExt;
use tracing::warn;

use super::{AppState, Tenant};
use crate::error::{Error, Result};

/// The cookie that carries an API key to the endpoint routes, where a browser navigating
/// to a served page cannot send an `Authorization` header. The console sets it.
pub const KEY_COOKIE: &str = "lancer_key";

/// Where the key cookie goes: to the task routes and the model routes only (of which only
/// the task and alias endpoint routes read it), one cookie for each.
const KEY_COOKIE_PATHS: [&str; 2] = ["/api/v1/tasks/", "/api/v1/models/"];

/// How the key cookie goes: out of reach of any script on a page (`HttpOnly`), never sent
/// by another site's page (`SameSite=Strict`), and gone with the browser session (no
/// expiry).
const KEY_COOKIE_SCOPE: &str = "HttpOnly; SameSite=Strict";

/// Sets the caller's key as the endpoint routes' cookie: the console calls it once the user
/// gives a key, since a cookie the server sets can be kept from the page's scripts and one
/// the page sets cannot.
#[utoipa::path(
    put, path = "/api/v1/endpoint-key", tag = "tasks",
    responses((status = 204, description = "The key is set as the `lancer_key` cookie for the endpoint routes (none without a key)"))
)]
pub async fn set_key_cookie(headers: HeaderMap) -> Response {
    let key = super::auth::bearer(&headers)
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|key| !key.is_empty());
    match key {
        Some(key) => key_cookies(|path| {
            format!(
                "{KEY_COOKIE}={}; Path={path}; {KEY_COOKIE_SCOPE}",
                urlencoding_segment(key)
            )
        }),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Clears the endpoint routes' key cookie (signing out of the console).
#[utoipa::path(
    delete, path = "/api/v1/endpoint-key", tag = "tasks",
    responses((status = 204, description = "The `lancer_key` cookie is cleared"))
)]
pub async fn clear_key_cookie() -> Response {
    key_cookies(|path| format!("{KEY_COOKIE}=; Max-Age=0; Path={path}; {KEY_COOKIE_SCOPE}"))
}

fn key_cookies(cookie: impl Fn(&str) -> String) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    for path in KEY_COOKIE_PATHS {
        if let Ok(value) = header::HeaderValue::from_str(&cookie(path)) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The most bytes of a request passed on to an endpoint.
pub const MAX_PROXIED_BODY: usize = 64 << 20;

/// Headers that belong to one connection, and the caller's credentials: never passed on.
const NOT_PASSED_ON: [HeaderName; 8] = [
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::AUTHORIZATION,
    header::COOKIE,
];

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client")
    })
}

/// `.../endpoint` -> `.../endpoint/`, so that a served page's relative links resolve
/// under the proxy.
pub async fn to_root(Path(id): Path<String>) -> Redirect {
    Redirect::permanent(&format!(
        "/api/v1/tasks/{}/endpoint/",
        urlencoding_segment(&id)
    ))
}

/// Passes a request to the root of a serving task's endpoint.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/endpoint/", tag = "tasks",
    responses(
        (status = 200, description = "The endpoint's own answer, streamed (any method and path under this prefix is passed on)"),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "The task is not running or has no endpoint", body = super::error::ErrorBody),
        (status = 502, description = "The endpoint did not answer", body = super::error::ErrorBody),
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

/// Passes a request to a path of a serving task's endpoint.
pub async fn proxy(
    state: State<Arc<AppState>>,
    tenant: Extension<Tenant>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    pass_on(state, tenant, id, path, request).await
}

async fn pass_on(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Tenant>,
    id: String,
    path: String,
    request: Request,
) -> Result<Response> {
    let address = state
        .service
        .serving_endpoint(&tenant, &super::ids::task_id(&id)?, &state.reserved)
        .await?;
    let (parts, body) = request.into_parts();
    let upstream = forward(address, &path, &parts, body).await.map_err(|err| {
        warn!(task = %id, %err, "the endpoint did not answer");
        Error::BadGateway(format!("task {id}'s endpoint did not answer"))
    })?;
    Ok(answer(upstream, ()))
}

/// Sends a request to `path` on the server at `address`, as the client sent it to the
/// proxy, less the headers that stay on this hop.
pub(super) async fn forward(
    address: std::net::SocketAddr,
    path: &str,
    parts: &axum::http::request::Parts,
    body: Body,
) -> std::result::Result<reqwest::Response, reqwest::Error> {
    // The path is the tenant's, but it only ever names something on the replica's own
    // server: the URL is built from the confirmed address and the path set on it.
    let mut target = url::Url::parse(&format!("http://{address}/")).expect("an address is a URL");
    target.set_path(&format!("/{path}"));
    target.set_query(parts.uri.query());
    client()
        .request(parts.method.clone(), target)
        .headers(passed_on(&parts.headers))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await
}

/// The upstream's answer as the proxy's, its body streamed; `hold` lives until the body
/// has been sent (or dropped).
pub(super) fn answer<H: Send + Sync + 'static>(upstream: reqwest::Response, hold: H) -> Response {
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = passed_on(upstream.headers());
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    let body = Body::from_stream(stream.inspect_ok(move |_| {
        let _ = &hold;
    }));
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response
}

/// The headers of one side without those that stay on this hop.
fn passed_on(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in &NOT_PASSED_ON {
        kept.remove(name);
    }
    kept.remove("keep-alive");
    kept.remove("proxy-connection");
    kept
}

/// The API key in the `lancer_key` cookie, as the console set it (URI-encoded).
pub fn key_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == KEY_COOKIE)
        .and_then(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()
                .map(|key| key.into_owned())
        })
}

/// A task id as a path segment: ids are plain names, anything else is escaped.
fn urlencoding_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_its_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; lancer_key=key%2Dfor%20ada; b=2"
                .parse()
                .expect("ascii"),
        );
        assert_eq!(key_from_cookie(&headers).as_deref(), Some("key-for ada"));
        headers.insert(header::COOKIE, "lancer_keyx=nope".parse().expect("ascii"));
        assert_eq!(key_from_cookie(&headers), None);
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_are_not_passed_on() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer secret"),
            ("cookie", "lancer_key=secret"),
            ("connection", "keep-alive"),
            ("host", "example"),
            ("content-type", "application/json"),
        ] {
            headers.insert(HeaderName::from_static(name), value.parse().expect("ascii"));
        }
        let kept = passed_on(&headers);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[header::CONTENT_TYPE], "application/json");
    }
}
