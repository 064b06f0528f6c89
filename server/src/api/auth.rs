//! Who is calling the REST API, as an extractor: [`crate::auth::resolve`] turns the bearer
//! token or the session cookie into a fleet actor; this maps its refusals to API errors.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiFailure;
use crate::app::AppState;
use crate::auth::resolve::{self, AuthError};
use crate::auth::token::rank;
use crate::db::Scope;

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

impl From<AuthError> for ApiFailure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated => ApiFailure::unauthorized(),
            AuthError::Refused(message) => ApiFailure::forbidden(message),
            AuthError::Failed(e) => e.into(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let r = resolve::api_request(state, &parts.method, &parts.headers).await?;
        Ok(Caller {
            actor: r.actor.audit_name(),
            level: r.level,
            via_session: r.session.is_some(),
            who: r.actor,
        })
    }
}
