//! Enrollment tokens: made by admins (REST API, the dashboard's "Add rigs" page or
//! `rigfleet-server token create`), shown once with the exact command to paste on a rig.

use rigfleet_proto::enroll::EnrollToken;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use super::actor::{Actor, Permission};
use super::audit::record as audit;
use super::error::FleetError;
use crate::app::AppState;
use crate::db::{EnrollTokenRow, NewEnrollToken, Store, StoreError};
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

impl TokenView {
    /// revoked, expired or active at `now_ms`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "active"
        }
    }
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

/// What a rig needs to know about this server to enroll (the "Add rigs" page shows it).
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    /// URL agents reach.
    pub url: String,
    /// `sha256:…` of the server's signing key.
    pub key_fingerprint: String,
    /// `sha256:…` of the TLS certificate, when serving TLS.
    pub tls_fingerprint: Option<String>,
}

/// This server's identity as tokens pin it.
pub fn server_identity(state: &AppState) -> ServerIdentity {
    ServerIdentity {
        url: state.public_url.clone(),
        key_fingerprint: state.hub.key.fingerprint(),
        tls_fingerprint: state.tls_fingerprint.clone(),
    }
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

impl From<TokenError> for FleetError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => FleetError::BadRequest(m),
            TokenError::Store(s) => s.into(),
        }
    }
}

/// Makes a token without asking anyone's permission: the CLI (run by whoever holds the data
/// folder) and [`create`] share this.
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

/// Every enrollment token, newest first ([`Permission::ManageEnrollment`]).
pub async fn list(state: &AppState, actor: &Actor) -> Result<Vec<TokenView>, FleetError> {
    actor.require(Permission::ManageEnrollment)?;
    let rows = state.hub.store.list_enroll_tokens().await?;
    Ok(rows.into_iter().map(TokenView::from).collect())
}

/// Makes a token ([`Permission::ManageEnrollment`]); its secret is in the answer and nowhere
/// else.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    req: &TokenRequest,
) -> Result<NewTokenView, FleetError> {
    actor.require(Permission::ManageEnrollment)?;
    let (row, text) = create_token(&state.hub.store, &state.hub.key, req, crate::now_ms()).await?;
    audit(
        state,
        actor,
        "token.create",
        &row.token_id,
        &format!(
            "none → max_uses {:?}, expires {:?}, group {:?}, approval {}, note {:?}",
            row.max_uses, row.expires_at_ms, row.group, row.requires_approval, row.note
        ),
    )
    .await;
    let id = server_identity(state);
    Ok(NewTokenView {
        enroll_command: enroll_command(&id.url, &text, id.tls_fingerprint.as_deref()),
        token: row.into(),
        secret_token: text,
        server_key_fingerprint: id.key_fingerprint,
        tls_fingerprint: id.tls_fingerprint,
    })
}

/// Revokes a token ([`Permission::ManageEnrollment`]); rigs already enrolled keep working.
pub async fn revoke(state: &AppState, actor: &Actor, id: &str) -> Result<(), FleetError> {
    actor.require(Permission::ManageEnrollment)?;
    if !state.hub.store.revoke_enroll_token(id).await? {
        return Err(FleetError::not_found("token"));
    }
    audit(state, actor, "token.revoke", id, "→ revoked").await;
    Ok(())
}
