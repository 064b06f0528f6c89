//! "Add rigs" (admins): enrollment tokens, a form for a new one, and the command to paste on
//! rigs. Thin over [`crate::fleet::enrollment`].

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::common::WebForm;
use super::session::WebUser;
use super::{fmt, render, Nav, WebError};
use crate::app::AppState;
use crate::fleet::enrollment::{self, NewTokenView, TokenRequest};
use crate::fleet::FleetError;

struct TokenRowView {
    id: String,
    uses: String,
    expires: String,
    group: String,
    note: String,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "add_rigs.html")]
struct AddRigsPage {
    nav: Option<Nav>,
    csrf: String,
    server_url: String,
    server_key_fingerprint: String,
    tls_fingerprint: Option<String>,
    command: Option<String>,
    token: Option<String>,
    error: Option<String>,
    tokens: Vec<TokenRowView>,
}

/// The page, with a token just made or with why it was not.
async fn add_rigs_view(
    state: &AppState,
    user: &WebUser,
    created: Option<NewTokenView>,
    error: Option<String>,
) -> Result<Response, WebError> {
    let now = crate::now_ms();
    let tokens = enrollment::list(state, &user.as_actor())
        .await?
        .into_iter()
        .map(|t| TokenRowView {
            uses: match t.max_uses {
                Some(m) => format!("{} of {m}", t.uses),
                None => format!("{} (no limit)", t.uses),
            },
            expires: t.expires_at_ms.map_or_else(|| "never".into(), fmt::utc),
            state: t.state(now),
            group: t.group.unwrap_or_default(),
            note: t.note,
            id: t.id,
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let id = enrollment::server_identity(state);
    let (command, token) = created.map_or((None, None), |c| {
        (Some(c.enroll_command), Some(c.secret_token))
    });
    let page = AddRigsPage {
        nav: Some(Nav::new(user, "add")),
        csrf: user.csrf.clone(),
        server_url: id.url,
        server_key_fingerprint: id.key_fingerprint,
        tls_fingerprint: id.tls_fingerprint,
        command,
        token,
        error,
        tokens,
    };
    let mut res = render(&page)?;
    *res.status_mut() = status;
    Ok(res)
}

/// `GET /add-rigs` (admins).
pub async fn add_rigs_page(
    State(state): State<AppState>,
    user: WebUser,
) -> Result<Response, WebError> {
    add_rigs_view(&state, &user, None, None).await
}

/// The new-token form: numbers arrive as text, empty meaning "not set".
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenForm {
    /// Rigs that may use it (empty: no limit).
    pub max_uses: String,
    /// Hours until it expires (empty: 24; 0: never).
    pub expires_in_hours: String,
    /// Group the rigs join.
    pub group: String,
    /// `1` when rigs wait for approval.
    pub requires_approval: String,
    /// Note.
    pub note: String,
}

fn whole_number(name: &str, v: &str) -> Result<Option<u64>, WebError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>()
        .map(Some)
        .map_err(|_| WebError::bad_request(format!("{name} must be a whole number")))
}

impl TokenForm {
    fn request(&self) -> Result<TokenRequest, WebError> {
        let group = self.group.trim();
        Ok(TokenRequest {
            max_uses: whole_number("max_uses", &self.max_uses)?.map(|n| n.min(1_000_000) as i64),
            expires_in_hours: whole_number("expires_in_hours", &self.expires_in_hours)?,
            group: (!group.is_empty()).then(|| group.to_string()),
            requires_approval: self.requires_approval == "1",
            note: self.note.trim().to_string(),
        })
    }
}

/// `POST /add-rigs`: a new enrollment token and the command to paste on rigs.
pub async fn add_rigs_create(
    State(state): State<AppState>,
    user: WebUser,
    WebForm(f): WebForm<TokenForm>,
) -> Result<Response, WebError> {
    let actor = user.as_actor();
    // Only admins learn that their input was wrong.
    actor.require(crate::fleet::Permission::ManageEnrollment)?;
    let req = f.request()?;
    match enrollment::create(&state, &actor, &req).await {
        Ok(created) => add_rigs_view(&state, &user, Some(created), None).await,
        Err(FleetError::BadRequest(m)) => add_rigs_view(&state, &user, None, Some(m)).await,
        Err(e) => Err(e.into()),
    }
}
