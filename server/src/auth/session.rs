//! Browser sessions: a random cookie value of which only the SHA-256 is stored, a CSRF token per
//! session, and the cookies themselves (HttpOnly, SameSite=Strict, Secure over TLS).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};

use super::sha256_hex;
use crate::app::AppState;
use crate::db::Role;
use crate::fleet::{Actor, FleetError};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rf_session";
/// Name of the cookie that carries the login form's CSRF token (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "rf_login_csrf";
/// Name of the cookie that marks a login waiting for its second factor.
pub const MFA_COOKIE: &str = "rf_mfa";
/// How long a session lives.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// The header API calls made with the session cookie carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A signed-in user's session, as the request's cookie named it.
#[derive(Clone, Debug)]
pub struct Session {
    /// User id.
    pub user_id: i64,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// SHA-256 hex of the cookie value (what the database knows the session by).
    pub hash: String,
}

impl Session {
    /// The fleet's view of the session's user.
    pub fn actor(&self) -> Actor {
        Actor::user(self.user_id, &self.username, self.role)
    }
}

/// A cookie's value from the request headers (overlong values are ignored: ours are short).
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

/// Loads the session named by the request's cookie. A database that does not answer counts as
/// no session (logged, so an outage is not mistaken for logouts).
pub async fn load(state: &AppState, headers: &HeaderMap) -> Option<Session> {
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
    Some(Session {
        user_id: user.id,
        username: user.username,
        role: user.role,
        csrf: row.csrf_token,
        hash,
    })
}

/// Starts a session for a user who proved who they are (password, and the second factor when
/// they have one), records the login, and returns the cookie value.
pub async fn start(state: &AppState, user_id: i64, username: &str) -> Result<String, FleetError> {
    let value = crate::hub::random_hex(32);
    let csrf = crate::hub::random_hex(24);
    let now = crate::now_ms();
    let store = &state.hub.store;
    store
        .create_session(
            &sha256_hex(&value),
            user_id,
            &csrf,
            now,
            now + SESSION_LIFETIME.as_millis() as i64,
        )
        .await?;
    // Old sessions go now and then; a failure only leaves rows that are refused anyway.
    let _ = store.delete_expired_sessions(now).await;
    store
        .audit(&format!("user:{username}"), "user.login", username, "")
        .await;
    Ok(value)
}

/// Ends a session (logout). A failure is logged: the cookie is cleared either way.
pub async fn end(state: &AppState, session_hash: &str) {
    if let Err(error) = state.hub.store.delete_session(session_hash).await {
        tracing::warn!(%error, "Could not delete a session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; rf_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "rf_session"), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
