//! Requests a browser made on another site's behalf. A page the operator visits can make
//! the browser send a simple cross-site `POST` (a form, or `text/plain`), and a
//! DNS-rebinding page can read answers from a server on loopback under its own name.
//! Against the first, no route that changes state takes a cross-site request
//! (`Sec-Fetch-Site`, else `Origin` against `Host`) and bodies must be JSON
//! (`error::ApiJson`); against the second, a server without keys answers only requests
//! addressed to a loopback name or the address it listens on.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::error::Error;

/// Which `Host` headers the server answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hosts {
    /// Any: requests carry keys, which a rebinding page does not have.
    #[default]
    Any,
    /// Open mode: loopback names and addresses, and the address the server listens on.
    Loopback {
        /// The address the server listens on, which a request may also name.
        listen: IpAddr,
    },
}

/// Middleware: refuses (403) a request addressed to a name that is not the server's in
/// open mode, and a cross-site request that could change state.
pub async fn same_site(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let headers = request.headers();
    if let Hosts::Loopback { listen } = state.hosts
        && !host_is_ours(headers, listen)
    {
        return Err(Error::Forbidden(
            "this server answers only requests addressed to its own address".into(),
        ));
    }
    if !is_safe(request.method()) && is_cross_site(headers) {
        return Err(Error::Forbidden(
            "a request from another site cannot change anything here".into(),
        ));
    }
    Ok(next.run(request).await)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The host part of a `Host` header: `name`, `name:port`, `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn host_is_ours(headers: &HeaderMap, listen: IpAddr) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/2 carries `:authority` instead, which hyper puts in the URI; no header at
        // all is a client on the socket itself, as curl --http2-prior-knowledge is.
        return true;
    };
    let name = host_name(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == listen)
}

/// `Sec-Fetch-Site` where the browser sends it; else an `Origin` whose host and port are
/// not the `Host` the request went to.
fn is_cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin == "null" || origin_host != host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("ascii"));
        }
        map
    }

    #[test]
    fn only_loopback_names_and_the_listen_address_are_our_hosts() {
        let listen: IpAddr = "127.0.0.1".parse().expect("ip");
        for ours in [
            "127.0.0.1:8000",
            "localhost:8000",
            "[::1]:8000",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(host_is_ours(&headers(&[("host", ours)]), listen), "{ours}");
        }
        for theirs in [
            "attacker.example:8000",
            "attacker.example",
            "10.0.0.1:8000",
            "localhost.attacker.example",
        ] {
            assert!(
                !host_is_ours(&headers(&[("host", theirs)]), listen),
                "{theirs}"
            );
        }
    }

    #[test]
    fn another_sites_origin_or_fetch_site_is_cross_site() {
        let same = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://127.0.0.1:8000"),
        ]);
        assert!(!is_cross_site(&same));
        let other = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "https://evil.example"),
        ]);
        assert!(is_cross_site(&other));
        assert!(is_cross_site(&headers(&[("origin", "null")])));
        assert!(is_cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(is_cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!is_cross_site(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        assert!(
            !is_cross_site(&headers(&[])),
            "curl and the CLI send neither"
        );
    }
}
