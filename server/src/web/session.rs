//! Browser sessions: a random cookie value (only its SHA-256 is stored), a per-session CSRF
//! token, the Origin check, and the guard every state-changing dashboard request passes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Failed logins per key (user name, client address) over a sliding window.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Failures allowed per window and user name.
    pub max_failures: usize,
    /// Failures allowed per window and client address (several people may share one).
    pub max_failures_per_address: usize,
    /// The window.
    pub window: Duration,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            max_failures: 5,
            max_failures_per_address: 30,
            window: Duration::from_secs(300),
        }
    }
}

impl LoginLimiter {
    fn max_for(&self, key: &str) -> usize {
        if key.starts_with("ip:") {
            self.max_failures_per_address
        } else {
            self.max_failures
        }
    }

    /// Seconds to wait before `key` may try again, if it is locked out.
    pub fn locked_for(&self, key: &str) -> Option<u64> {
        let max = self.max_for(key);
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let q = map.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            q.pop_front();
        }
        if q.len() >= max {
            let oldest = q.front().copied()?;
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            return Some(wait.as_secs().max(1));
        }
        None
    }

    /// Counts a failure.
    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: an attacker cycling names cannot grow the map without limit.
        if map.len() > 10_000 {
            let now = Instant::now();
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let max = self.max_for(key);
        let q = map.entry(key.to_string()).or_default();
        q.push_back(Instant::now());
        while q.len() > max {
            q.pop_front();
        }
    }

    /// Forgets a key's failures (after a good login).
    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
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
    fn limiter_locks_after_failures() {
        let l = LoginLimiter::default();
        for _ in 0..4 {
            l.fail("u");
        }
        assert!(l.locked_for("u").is_none());
        l.fail("u");
        assert!(l.locked_for("u").is_some());
        l.clear("u");
        assert!(l.locked_for("u").is_none());
    }
}
