//! Who is calling the REST API: an API token (`Authorization: Bearer rft_…`, stored only as its
//! SHA-256) with scopes read ⊂ write ⊂ admin, or a dashboard session cookie (roles admin,
//! operator, viewer map to those scopes). A cookie rides along on cross-site requests, a
//! bearer token does not: so cookie-authenticated requests that change state must also carry
//! the session's CSRF token (`X-CSRF-Token`) and come from this server's own origin.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::Digest;

use super::error::ApiFailure;
use crate::app::AppState;
use crate::db::Scope;

/// Prefix of API tokens, so a leaked one is recognisable in logs and secret scanners.
pub const API_TOKEN_PREFIX: &str = "rft_";

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who, for the audit log (`token:<name>` or `user:<name>`).
    pub actor: String,
    /// The strongest scope held.
    pub level: Scope,
    /// Signed in with a dashboard session cookie rather than an API token.
    pub via_session: bool,
    /// The fleet's view of the caller.
    pub who: crate::fleet::Actor,
}

fn rank(s: Scope) -> u8 {
    match s {
        Scope::Read => 1,
        Scope::Write => 2,
        Scope::Admin => 3,
    }
}

impl Caller {
    /// Refuses session cookies for changes that redirect money (pools, wallets) and for shell
    /// commands and reboots: in the dashboard those take the user's password again, and a
    /// stolen cookie must not get around that through the API. Scripts use API tokens, which
    /// are not cookies.
    pub fn require_token(&self, what: &str) -> Result<(), ApiFailure> {
        if self.via_session {
            return Err(ApiFailure::forbidden(format!(
                "{what} through the API needs an API token; in the dashboard the rig page asks for your password"
            )));
        }
        Ok(())
    }

    /// Refuses with 403 unless the caller holds `needed` (or a stronger scope).
    pub fn require(&self, needed: Scope) -> Result<(), ApiFailure> {
        if rank(self.level) >= rank(needed) {
            Ok(())
        } else {
            Err(ApiFailure::forbidden(format!(
                "this needs the {} scope",
                needed.as_str()
            )))
        }
    }
}

/// Whether a caller with `scope` may see where rigs pay out: pool users (wallets) in configs
/// and in the rigs' telemetry, pool passwords. Operators and admins (write scope and up) may;
/// viewers and read tokens may not. The dashboard and the REST API both ask this.
pub fn may_see_wallets(scope: Scope) -> bool {
    rank(scope) >= rank(Scope::Write)
}

/// Whether a command is as dangerous as redirecting a rig's wallet, and so needs the same
/// protection: the user's password again in the dashboard, an API token (never a session
/// cookie) on the REST API. A shell command can do anything on the rig, a reboot stops it.
pub fn command_needs_reauth(command: &rigfleet_proto::command::Command) -> bool {
    use rigfleet_proto::command::Command;
    matches!(command, Command::Shell { .. } | Command::Reboot)
}

/// A new API token's text and the hash that is stored.
pub fn new_api_token() -> (String, String) {
    let secret = crate::hub::random_hex(24);
    let text = format!("{API_TOKEN_PREFIX}{secret}");
    let hash = hash_token(&text);
    (text, hash)
}

/// SHA-256 hex of a token's text.
pub fn hash_token(text: &str) -> String {
    crate::keys::hex(&sha2::Sha256::digest(text.as_bytes()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return session_caller(parts, state).await;
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| t.starts_with(API_TOKEN_PREFIX) && t.len() < 200)
            .ok_or_else(ApiFailure::unauthorized)?;
        let row = state
            .hub
            .store
            .api_token_by_hash(&hash_token(token))
            .await?
            .filter(|t| !t.revoked)
            .ok_or_else(|| {
                state.hub.metrics.error("api_auth_failed");
                ApiFailure::unauthorized()
            })?;
        let level = row
            .scopes
            .iter()
            .copied()
            .max_by_key(|s| rank(*s))
            .ok_or_else(|| ApiFailure::forbidden("this token has no scope"))?;
        Ok(Caller {
            actor: format!("token:{}", row.name),
            level,
            via_session: false,
            who: crate::fleet::Actor::token(&row.name, level),
        })
    }
}

async fn session_caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiFailure> {
    use crate::web::session;
    let user = session::load_session(state, &parts.headers)
        .await
        .ok_or_else(ApiFailure::unauthorized)?;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        if !session::same_origin(state, &parts.headers) {
            return Err(ApiFailure::forbidden("cross-origin request refused"));
        }
        let given = parts
            .headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if given.is_empty() || !crate::app::constant_time_eq(given.as_bytes(), user.csrf.as_bytes())
        {
            return Err(ApiFailure::forbidden(
                "cookie-authenticated changes need the X-CSRF-Token header",
            ));
        }
    }
    Ok(Caller {
        actor: user.actor(),
        level: user.scope(),
        via_session: true,
        who: user.as_actor(),
    })
}
