//! Enrollment tokens: made by admins (API or `rigfleet-server token create`), shown once with
//! the exact command to paste on a rig.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rigfleet_proto::enroll::EnrollToken;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use super::rigs::audit;
use crate::app::AppState;
use crate::db::{EnrollTokenRow, NewEnrollToken, Scope, Store, StoreError};
use crate::keys::ServerKey;

/// What a new token should allow.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How many rigs may enroll with it (absent: unlimited until it expires).
    pub max_uses: Option<i64>,
    /// Hours until it expires (absent: 24; 0: never).
    pub expires_in_hours: Option<u64>,
    /// Group the rigs join.
    pub group: Option<String>,
    /// Rigs wait for an admin's approval before they may connect.
    #[serde(default)]
    pub requires_approval: bool,
    /// A note for the list.
    #[serde(default)]
    pub note: String,
}

/// A token as listed (never with its secret).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Uses allowed (absent: unlimited).
    pub max_uses: Option<i64>,
    /// Uses so far.
    pub uses: i64,
    /// Expiry (Unix ms).
    pub expires_at_ms: Option<i64>,
    /// Group the rigs join.
    pub group: Option<String>,
    /// Rigs need approval.
    pub requires_approval: bool,
    /// Note.
    pub note: String,
    /// Revoked.
    pub revoked: bool,
    /// Made at (Unix ms).
    pub created_at_ms: i64,
}

impl From<EnrollTokenRow> for TokenView {
    fn from(r: EnrollTokenRow) -> Self {
        TokenView {
            id: r.token_id,
            max_uses: r.max_uses,
            uses: r.uses,
            expires_at_ms: r.expires_at_ms,
            group: r.group,
            requires_approval: r.requires_approval,
            note: r.note,
            revoked: r.revoked,
            created_at_ms: r.created_at_ms,
        }
    }
}

/// A new token, with its secret (shown once).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NewTokenView {
    /// The stored part.
    pub token: TokenView,
    /// The whole token text to give to rigs.
    pub secret_token: String,
    /// The command to paste on a rig.
    pub enroll_command: String,
    /// `sha256:…` of the server's signing key (what the token pins).
    pub server_key_fingerprint: String,
    /// `sha256:…` of the server's TLS certificate, when it serves TLS.
    pub tls_fingerprint: Option<String>,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad request values.
    #[error("{0}")]
    Invalid(String),
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes a token (API and CLI share this).
pub async fn create_token(
    store: &Store,
    key: &ServerKey,
    req: &TokenRequest,
    now_ms: i64,
) -> Result<(EnrollTokenRow, String), TokenError> {
    if req.max_uses.is_some_and(|n| n < 1) {
        return Err(TokenError::Invalid("max_uses must be at least 1".into()));
    }
    if let Some(g) = &req.group {
        if g.trim().is_empty() || g.len() > 64 || g.chars().any(char::is_control) {
            return Err(TokenError::Invalid(
                "group must be 1 to 64 characters".into(),
            ));
        }
    }
    if req.note.len() > 256 {
        return Err(TokenError::Invalid("note is at most 256 characters".into()));
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| TokenError::Invalid(e.to_string()))?;
    getrandom::getrandom(&mut secret).map_err(|e| TokenError::Invalid(e.to_string()))?;
    let token = EnrollToken {
        id,
        secret,
        server_key_sha256: key.fingerprint_bytes(),
    };
    let hours = req.expires_in_hours.unwrap_or(24);
    let row = store
        .create_enroll_token(&NewEnrollToken {
            token_id: token.id_hex(),
            secret_sha256_hex: crate::keys::hex(&sha2::Sha256::digest(secret)),
            max_uses: req.max_uses,
            expires_at_ms: (hours > 0)
                .then(|| now_ms + (hours.min(24 * 365 * 10) as i64) * 3_600_000),
            group: req.group.as_ref().map(|g| g.trim().to_string()),
            requires_approval: req.requires_approval,
            note: req.note.clone(),
            now_ms,
        })
        .await?;
    Ok((row, token.to_text()))
}

/// The command a rig runs to enroll.
pub fn enroll_command(public_url: &str, token: &str, tls_fingerprint: Option<&str>) -> String {
    let mut cmd = format!("rigfleet-agent enroll --server {public_url} --token {token}");
    if let Some(fp) = tls_fingerprint {
        cmd.push_str(&format!(" --tls-fingerprint {fp}"));
    }
    cmd
}

/// Enrollment tokens.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", responses((status = 200, body = Vec<TokenView>)), tag = "enrollment")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiFailure> {
    caller.require(Scope::Admin)?;
    let rows = state.hub.store.list_enroll_tokens().await?;
    Ok(Json(rows.into_iter().map(TokenView::from).collect()))
}

/// Make an enrollment token.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", request_body = TokenRequest, responses((status = 200, body = NewTokenView)), tag = "enrollment")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<NewTokenView>, ApiFailure> {
    caller.require(Scope::Admin)?;
    let (row, text) = create_token(&state.hub.store, &state.hub.key, &req, crate::now_ms())
        .await
        .map_err(|e| match e {
            TokenError::Invalid(m) => ApiFailure::bad_request(m),
            TokenError::Store(s) => s.into(),
        })?;
    audit(&state, &caller, "token.create", &row.token_id, &req.note).await;
    let tls = state.tls_fingerprint.clone();
    Ok(Json(NewTokenView {
        enroll_command: enroll_command(&state.public_url, &text, tls.as_deref()),
        token: row.into(),
        secret_token: text,
        server_key_fingerprint: state.hub.key.fingerprint(),
        tls_fingerprint: tls,
    }))
}

/// Revoke an enrollment token (rigs already enrolled keep working).
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", params(("id" = String, Path, description = "token id")), responses((status = 204), (status = 404)), tag = "enrollment")]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Scope::Admin)?;
    if !state.hub.store.revoke_enroll_token(&id).await? {
        return Err(ApiFailure::not_found("token"));
    }
    audit(&state, &caller, "token.revoke", &id, "").await;
    Ok(StatusCode::NO_CONTENT)
}
