//! The Origin check: a cookie rides along on cross-site requests, so a request that changes
//! state with one must come from a page of this server.

use axum::http::{header, HeaderMap};

use super::session::is_https;
use crate::app::AppState;

/// `scheme://host[:port]` of a URL.
pub fn origin_of(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..].find('/').map_or(url.len(), |i| rest_at + i);
    Some(&url[..end])
}

/// Whether the request comes from a page of this server: its `Origin` (or, where a browser
/// sends none, its `Referer`) must be the server's own origin. A request naming neither is
/// refused: browsers name one on every cross-site state-changing request, so silence is
/// suspicious rather than safe.
pub fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(origin_of)
                .map(str::to_owned)
        });
    let Some(given) = given else {
        return false;
    };
    origin_allowed(state, headers, &given)
}

fn origin_allowed(state: &AppState, headers: &HeaderMap, given: &str) -> bool {
    if origin_of(&state.public_url).is_some_and(|o| o.eq_ignore_ascii_case(given)) {
        return true;
    }
    let scheme = if is_https(state) { "https" } else { "http" };
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| given.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
}

/// For GET endpoints that browsers may call cross-site (the live feed): an `Origin`, when
/// present, must be ours.
pub fn origin_absent_or_ours(state: &AppState, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => origin_allowed(state, headers, o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(origin_of("http://a:1/x/y"), Some("http://a:1"));
        assert_eq!(origin_of("https://a"), Some("https://a"));
        assert_eq!(origin_of("no scheme"), None);
    }
}
