//! A request's credentials, resolved into a fleet [`Actor`]: an API token
//! (`Authorization: Bearer rft_…`) or a dashboard session cookie. A cookie rides along on
//! cross-site requests, a bearer token does not: so a cookie-authenticated request that changes
//! state must also come from this server's own origin and carry the session's CSRF token.

use axum::http::{header, HeaderMap, Method};

use super::session::{self, Session, CSRF_HEADER};
use super::token::{bearer_token, hash_token, role_scope, strongest};
use crate::app::AppState;
use crate::db::Scope;
use crate::fleet::{Actor, FleetError};

/// Who a request comes from.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The fleet's view of the caller.
    pub actor: Actor,
    /// The strongest API scope held (a session's role maps to one).
    pub level: Scope,
    /// The session, when the request was authenticated with the session cookie.
    pub session: Option<Session>,
}

/// Why a request's credentials were not accepted.
#[derive(Debug)]
pub enum AuthError {
    /// No credentials, or unknown ones (401).
    Unauthenticated,
    /// Known credentials, used where they may not be (403; the message is for people).
    Refused(String),
    /// The lookup itself failed.
    Failed(FleetError),
}

impl From<FleetError> for AuthError {
    fn from(e: FleetError) -> Self {
        AuthError::Failed(e)
    }
}

/// Whether a method only reads.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Resolves a REST API request: its bearer token when it has an `Authorization` header,
/// otherwise its session cookie (then changes need the same origin and `X-CSRF-Token`).
pub async fn api_request(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Resolved, AuthError> {
    match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(authorization) => bearer(state, authorization).await,
        None => api_session(state, method, headers).await,
    }
}

/// Resolves an `Authorization` header value holding an API token.
pub async fn bearer(state: &AppState, authorization: &str) -> Result<Resolved, AuthError> {
    let token = bearer_token(authorization).ok_or(AuthError::Unauthenticated)?;
    let row = state
        .hub
        .store
        .api_token_by_hash(&hash_token(token))
        .await
        .map_err(FleetError::from)?
        .filter(|t| !t.revoked)
        .ok_or_else(|| {
            state.hub.metrics.error("api_auth_failed");
            AuthError::Unauthenticated
        })?;
    let level = strongest(&row.scopes)
        .ok_or_else(|| AuthError::Refused("this token has no scope".into()))?;
    Ok(Resolved {
        actor: Actor::token(&row.name, level),
        level,
        session: None,
    })
}

async fn api_session(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Resolved, AuthError> {
    let s = session::load(state, headers)
        .await
        .ok_or(AuthError::Unauthenticated)?;
    if !is_safe(method) {
        if !super::origin::same_origin(state, headers) {
            return Err(AuthError::Refused("cross-origin request refused".into()));
        }
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !super::csrf_matches(&s.csrf, given) {
            return Err(AuthError::Refused(
                "cookie-authenticated changes need the X-CSRF-Token header".into(),
            ));
        }
    }
    Ok(Resolved {
        actor: s.actor(),
        level: role_scope(s.role),
        session: Some(s),
    })
}
