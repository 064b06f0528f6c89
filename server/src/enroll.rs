//! `POST /api/agent/enroll`: a rig presents an enrollment token and its public key; the server
//! checks the token (its fingerprint must name this server's key, its secret must match, it must
//! have uses left and not be expired or revoked), registers the agent and its rigs, and answers
//! with their ids and the server's public key.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use rigfleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollToken};
use rigfleet_proto::{AgentId, RigId};
use sha2::Digest;

use crate::api::error::ApiFailure;
use crate::app::AppState;
use crate::db::{NewAgent, NewRig, StoreError, TokenUseError};
use crate::hub::random_hex;

/// Largest enrollment request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The handler.
pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Result<Json<EnrollResponse>, ApiFailure> {
    let hub = &state.hub;
    let refuse = |status: StatusCode, code: &'static str, message: String| {
        hub.metrics.error("enroll_refused");
        if let Some(suppressed) = hub
            .log_limiter
            .allow(&format!("enroll/{code}/{}", peer.ip()))
        {
            tracing::warn!(%peer, code, %message, suppressed, "Enrollment refused");
        }
        ApiFailure::new(status, code, message)
    };
    let req: EnrollRequest = serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON: {e}"),
        )
    })?;
    req.validate()
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let token = EnrollToken::parse(&req.token)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_token", e.to_string()))?;
    // A token made before a key rotation names the previous key: the rig pins that one and is
    // rolled over on its first connection.
    let answer_key = if token.server_key_sha256 == hub.key.fingerprint_bytes() {
        &hub.key
    } else if let Some(previous) = hub
        .previous_key
        .as_ref()
        .filter(|k| token.server_key_sha256 == k.fingerprint_bytes())
    {
        previous
    } else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "wrong_server",
            "this token was made by another server (its key fingerprint does not match)".into(),
        ));
    };
    let secret_hash = crate::keys::hex(&sha2::Sha256::digest(token.secret));
    let now = crate::now_ms();
    let row = hub
        .store
        .use_enroll_token(&token.id_hex(), &secret_hash, now)
        .await
        .map_err(|e| match e {
            TokenUseError::Store(e) => ApiFailure::from(e),
            other => {
                let code = match other {
                    TokenUseError::Expired => "token_expired",
                    TokenUseError::Exhausted => "token_exhausted",
                    TokenUseError::Revoked => "token_revoked",
                    _ => "bad_token",
                };
                refuse(StatusCode::UNAUTHORIZED, code, other.to_string())
            }
        })?;
    let agent_uid = format!("agent-{}", random_hex(8));
    let new_agent = NewAgent {
        agent_uid: agent_uid.clone(),
        public_key_hex: req.agent_public_key.to_ascii_lowercase(),
        hostname: req.hostname.clone(),
        agent_version: req.agent_version.clone(),
        enroll_token_id: Some(token.id_hex()),
        now_ms: now,
    };
    let rigs: Vec<NewRig> = req
        .rigs
        .iter()
        .map(|r| NewRig {
            rig_uid: format!("rig-{}", random_hex(8)),
            name: if r.name.trim().is_empty() {
                req.hostname.clone()
            } else {
                r.name.clone()
            },
            group: row.group.clone(),
            pending_approval: row.requires_approval,
            devices: r.devices.clone(),
        })
        .collect();
    let rows = match hub.store.register_agent(&new_agent, &rigs).await {
        Ok(rows) => rows,
        Err(StoreError::Conflict(_)) => {
            hub.event(
                None,
                "warning",
                "known_identity",
                format!(
                    "an enrollment from {peer} presented a public key that is already registered (cloned disk image?)"
                ),
            )
            .await;
            return Err(refuse(
                StatusCode::CONFLICT,
                "key_in_use",
                "this public key is already registered; a cloned rig must make its own key (enroll --force)".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    for r in &rows {
        hub.live
            .insert(crate::hub::live_entry(r, hub.telemetry_interval_secs));
    }
    let _ = hub
        .store
        .insert_audit(
            "enrollment",
            "enroll",
            &agent_uid,
            &format!(
                "token {} from {peer}, {} rig(s)",
                token.id_hex(),
                rows.len()
            ),
            now,
        )
        .await;
    tracing::info!(agent = %agent_uid, %peer, rigs = rows.len(), "Agent enrolled");
    Ok(Json(EnrollResponse {
        agent_id: AgentId(agent_uid),
        rig_ids: rows.iter().map(|r| RigId(r.rig_uid.clone())).collect(),
        server_public_key: answer_key.public_key_hex(),
        pending_approval: row.requires_approval,
    }))
}
