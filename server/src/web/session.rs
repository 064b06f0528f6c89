//! The dashboard's side of sessions: the signed-in operator as an extractor ([`WebUser`]), and
//! the guard every state-changing dashboard request passes (same origin, CSRF token). The
//! checks themselves live in [`crate::auth`]; this carries headers and form fields to them.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::WebError;
use crate::app::AppState;
use crate::auth::session::{self, Session, CSRF_FIELD, LOGIN_CSRF_COOKIE};
use crate::auth::{csrf_matches, origin};
use crate::db::Role;
use crate::fleet::{Permission, Permissions};

// Old paths, kept while pages still import them from here.
pub use crate::auth::origin::origin_absent_or_ours;

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

impl From<Session> for WebUser {
    fn from(s: Session) -> Self {
        WebUser {
            user_id: s.user_id,
            username: s.username,
            role: s.role,
            csrf: s.csrf,
            session_hash: s.hash,
        }
    }
}

impl WebUser {
    /// May change the fleet (commands, renames, bulk actions): pages show the forms.
    pub fn can_write(&self) -> bool {
        Permissions::of_role(self.role).has(Permission::Operate)
    }

    /// May manage users, tokens and remove rigs: pages show the admin links.
    pub fn is_admin(&self) -> bool {
        Permissions::of_role(self.role).has(Permission::ManageUsers)
    }

    /// The fleet's view of this user.
    pub fn as_actor(&self) -> crate::fleet::Actor {
        crate::fleet::Actor::user(self.user_id, &self.username, self.role)
    }
}

/// The session named by the request's cookie, as the dashboard's user.
pub async fn load_session(state: &AppState, headers: &axum::http::HeaderMap) -> Option<WebUser> {
    session::load(state, headers).await.map(WebUser::from)
}

fn refuse(message: &str) -> Response {
    WebError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// Reads a urlencoded body's fields (repeated names kept, in order).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The guard in front of every dashboard route: state-changing requests must come from our
/// own origin and carry the CSRF token of their session (or, for the login forms, of the
/// login cookie); the checked session travels to the handler in the request's extensions.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if !origin::same_origin(&state, req.headers()) {
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
        .map_or("", |(_, v)| v.as_str());
    let path = parts.uri.path();
    if path == "/login" || path == "/login/totp" {
        let expected = session::cookie(&parts.headers, LOGIN_CSRF_COOKIE).unwrap_or("");
        if !csrf_matches(expected, given) {
            return refuse("the form expired or did not come from this site; reload the page");
        }
    } else {
        let Some(user) = load_session(&state, &parts.headers).await else {
            return refuse("not logged in");
        };
        if !csrf_matches(&user.csrf, given) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse() {
        let f = form_fields(b"csrf=x%2By&name=a+b&bad=%zz&t=%&name=c");
        assert_eq!(f[0], ("csrf".into(), "x+y".into()));
        assert_eq!(f[1], ("name".into(), "a b".into()));
        assert_eq!(f[2], ("bad".into(), "%zz".into()));
        assert_eq!(f[3], ("t".into(), "%".into()));
        assert_eq!(f[4], ("name".into(), "c".into()));
    }
}
