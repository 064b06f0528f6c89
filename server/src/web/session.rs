//! Browser sessions: a random cookie value (only its SHA-256 is stored), a per-session CSRF
//! token, the Origin check, and the guard every state-changing dashboard request passes.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::Digest;

use super::WebError;
use crate::app::{constant_time_eq, AppState};
use crate::db::{Role, Scope};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rf_session";
/// Name of the cookie that carries the login form's CSRF token (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "rf_login_csrf";
/// Name of the cookie that marks a login waiting for its second factor.
pub const MFA_COOKIE: &str = "rf_mfa";
/// How long a session lives.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The form field and header that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// The header API calls made with the session cookie carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A logged-in operator.
#[derive(Clone, Debug)]
pub struct WebUser {
    /// User id.
    pub user_id: i64,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// The session's CSRF token (put into every form).
    pub csrf: String,
    /// SHA-256 hex of the session cookie (for logout).
    pub session_hash: String,
}

impl WebUser {
    /// The API scope the role maps to.
    pub fn scope(&self) -> Scope {
        role_scope(self.role)
    }

    /// May change the fleet (commands, renames, bulk actions).
    pub fn can_write(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    /// May manage users, tokens and remove rigs.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The fleet's view of this user.
    pub fn as_actor(&self) -> crate::fleet::Actor {
        crate::fleet::Actor::user(self.user_id, &self.username, self.role)
    }

    /// For the audit log.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }

    /// Refuses unless the operator may change the fleet.
    pub fn require_write(&self) -> Result<(), WebError> {
        if self.can_write() {
            Ok(())
        } else {
            Err(WebError::forbidden(
                "your role (viewer) may not change the fleet",
            ))
        }
    }

    /// Refuses unless the operator is an admin.
    pub fn require_admin(&self) -> Result<(), WebError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(WebError::forbidden("this needs the admin role"))
        }
    }
}

/// The API scope of a role.
pub fn role_scope(role: Role) -> Scope {
    match role {
        Role::Admin => Scope::Admin,
        Role::Operator => Scope::Write,
        Role::Viewer => Scope::Read,
    }
}

/// SHA-256 hex of a secret.
pub fn sha256_hex(text: &str) -> String {
    crate::keys::hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// A cookie's value from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| v.len() <= 256)
}

/// Whether the server is reached over TLS (cookies then get `Secure`).
pub fn is_https(state: &AppState) -> bool {
    state.tls_fingerprint.is_some() || state.public_url.starts_with("https://")
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure over TLS.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if is_https(state) { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Loads the session named by the request's cookie.
pub async fn load_session(state: &AppState, headers: &HeaderMap) -> Option<WebUser> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let hash = sha256_hex(value);
    let row = match state.hub.store.session(&hash, crate::now_ms()).await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(%error, "Session lookup failed");
            return None;
        }
    };
    let user = state.hub.store.user_by_id(row.user_id).await.ok()??;
    Some(WebUser {
        user_id: user.id,
        username: user.username,
        role: user.role,
        csrf: row.csrf_token,
        session_hash: hash,
    })
}

/// Creates a session for `user_id`; returns the cookie value.
pub async fn create_session(state: &AppState, user_id: i64) -> Result<String, WebError> {
    let value = crate::hub::random_hex(32);
    let csrf = crate::hub::random_hex(24);
    let now = crate::now_ms();
    state
        .hub
        .store
        .create_session(
            &sha256_hex(&value),
            user_id,
            &csrf,
            now,
            now + SESSION_LIFETIME.as_millis() as i64,
        )
        .await?;
    // Old sessions go now and then; a failure only leaves rows that are refused anyway.
    let _ = state.hub.store.delete_expired_sessions(now).await;
    Ok(value)
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<&str> {
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

fn refuse(message: &str) -> Response {
    WebError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// Reads a urlencoded body's fields (repeated names kept, in order).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The guard in front of every dashboard route: state-changing requests must come from our
/// own origin and carry the CSRF token of their session (or, for the login forms, of the
/// login cookie); the checked session travels to the handler in the request's extensions.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if !same_origin(&state, req.headers()) {
        return refuse("cross-origin request refused");
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, super::MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return WebError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response()
        }
    };
    let fields = form_fields(&bytes);
    let given = fields
        .iter()
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let path = parts.uri.path();
    if path == "/login" || path == "/login/totp" {
        let expected = cookie(&parts.headers, LOGIN_CSRF_COOKIE).unwrap_or("");
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return refuse("the form expired or did not come from this site; reload the page");
        }
    } else {
        let Some(user) = load_session(&state, &parts.headers).await else {
            return refuse("not logged in");
        };
        if given.is_empty() || !constant_time_eq(user.csrf.as_bytes(), given.as_bytes()) {
            return refuse("missing or wrong CSRF token; reload the page");
        }
        parts.extensions.insert(user);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

impl FromRequestParts<AppState> for WebUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(u) = parts.extensions.get::<WebUser>() {
            return Ok(u.clone());
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Err(refuse("not logged in"));
        }
        match load_session(state, &parts.headers).await {
            Some(u) => Ok(u),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// Failed logins allowed per (user name, address) before that pair waits.
pub const FREE_FAILURES_PER_NAME: i64 = 4;
/// Failed logins allowed per address, every name together (several people may share one).
pub const FREE_FAILURES_PER_ADDRESS: i64 = 30;
/// The first wait after the free failures; each further failure doubles it.
pub const FIRST_WAIT_MS: i64 = 30_000;
/// The longest wait.
pub const MAX_WAIT_MS: i64 = 15 * 60_000;
/// Failures older than this are forgotten.
pub const FORGET_AFTER_MS: i64 = 3_600_000;
/// The name under which failures of every name from one address are counted.
const ANY_NAME: &str = "any";

/// How long after its last failure a key with `failures` failures waits (0: not at all).
pub fn backoff_ms(failures: i64, free: i64) -> i64 {
    if failures <= free {
        return 0;
    }
    let doublings = u32::try_from((failures - free - 1).min(16)).unwrap_or(16);
    FIRST_WAIT_MS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_WAIT_MS)
}

/// The address failed logins are counted under: an IPv4 address, or the /64 of an IPv6 one
/// (one host usually holds a whole /64).
pub fn client_address(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The key a login name's failures are counted under (names as typed, known or not, so the
/// answer never tells which names exist).
pub fn login_name_key(username: &str) -> String {
    let name: String = username.chars().take(64).collect();
    format!("user:{name}")
}

/// Failed logins, kept in the database so replicas share them. Failures slow only the
/// (name, address) pair they came from, and an address that fails with many names: nobody
/// can lock a user out from elsewhere. Returns the seconds to wait, if any.
pub async fn login_wait(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
    now_ms: i64,
) -> Result<Option<u64>, crate::db::StoreError> {
    let mut wait_ms = 0;
    for (key, free) in [
        (name_key, FREE_FAILURES_PER_NAME),
        (ANY_NAME, FREE_FAILURES_PER_ADDRESS),
    ] {
        if let Some((failures, last_ms)) = store.login_failures(key, address).await? {
            if last_ms >= now_ms - FORGET_AFTER_MS {
                let until = last_ms.saturating_add(backoff_ms(failures, free));
                wait_ms = wait_ms.max(until - now_ms);
            }
        }
    }
    Ok((wait_ms > 0).then(|| u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1)))
}

/// Counts a failed login of `name_key` from `address`.
pub async fn login_failed(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
    now_ms: i64,
) -> Result<(), crate::db::StoreError> {
    let forget = now_ms - FORGET_AFTER_MS;
    store
        .record_login_failure(name_key, address, now_ms, forget)
        .await?;
    store
        .record_login_failure(ANY_NAME, address, now_ms, forget)
        .await?;
    Ok(())
}

/// Forgets the failures of `name_key` from `address` after a good password.
pub async fn login_succeeded(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
) -> Result<(), crate::db::StoreError> {
    store.clear_login_failures(name_key, address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_forms_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; rf_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "rf_session"), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
        let f = form_fields(b"csrf=x%2By&name=a+b&bad=%zz&t=%");
        assert_eq!(f[0], ("csrf".into(), "x+y".into()));
        assert_eq!(f[1], ("name".into(), "a b".into()));
        assert_eq!(f[2], ("bad".into(), "%zz".into()));
        assert_eq!(f[3], ("t".into(), "%".into()));
        assert_eq!(origin_of("http://a:1/x/y"), Some("http://a:1"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(4, 4), 0);
        assert_eq!(backoff_ms(5, 4), 30_000);
        assert_eq!(backoff_ms(6, 4), 60_000);
        assert_eq!(backoff_ms(1000, 4), MAX_WAIT_MS);
        assert_eq!(backoff_ms(i64::MAX, 4), MAX_WAIT_MS);
        let v6: std::net::IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(client_address(v6), "2001:db8:1:2::/64");
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_address(mapped), "10.1.2.3");
        assert_eq!(login_name_key(&"x".repeat(100)).len(), 5 + 64);
    }

    /// Failures slow the (name, address) they came from: the same name from another address
    /// is not slowed (nobody can lock the admin out), and a good login clears the pair.
    #[tokio::test]
    async fn login_backoff_is_per_name_and_address() {
        for db in crate::db::test_db::test_backends().await {
            let s = &db.store;
            let admin = login_name_key("admin");
            let now = 1_000_000_000;
            for i in 0..FREE_FAILURES_PER_NAME {
                assert_eq!(
                    login_wait(s, &admin, "10.0.0.9", now + i).await.unwrap(),
                    None
                );
                login_failed(s, &admin, "10.0.0.9", now + i).await.unwrap();
            }
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10).await.unwrap(),
                None
            );
            login_failed(s, &admin, "10.0.0.9", now + 10).await.unwrap();
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10).await.unwrap(),
                Some(30)
            );
            assert_eq!(
                login_wait(s, &admin, "10.0.0.1", now + 10).await.unwrap(),
                None
            );
            assert_eq!(
                login_wait(s, &login_name_key("bob"), "10.0.0.9", now + 10)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10 + 30_000)
                    .await
                    .unwrap(),
                None
            );
            login_succeeded(s, &admin, "10.0.0.9").await.unwrap();
            login_failed(s, &admin, "10.0.0.9", now + 40_000)
                .await
                .unwrap();
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 40_000)
                    .await
                    .unwrap(),
                None
            );
            // An address that fails with many names waits for all of them.
            for i in 0..=FREE_FAILURES_PER_ADDRESS {
                login_failed(s, &login_name_key(&format!("u{i}")), "10.0.0.7", now + i)
                    .await
                    .unwrap();
            }
            assert!(login_wait(s, &login_name_key("new"), "10.0.0.7", now + 100)
                .await
                .unwrap()
                .is_some());
            db.cleanup().await;
        }
    }
}
