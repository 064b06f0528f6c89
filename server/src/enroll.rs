//! `POST /api/agent/enroll`: a rig presents an enrollment token and its public key; the server
//! checks the token (its fingerprint must name this server's key, its secret must match, it must
//! have uses left and not be expired or revoked), registers the agent and its rigs, and answers
//! with their ids and the server's public key.
//!
//! A token's `max_uses` counts rigs (a request for more rigs than it has uses left is refused
//! whole), weak Ed25519 public keys (small-order points such as all zeros, which any signature
//! could match) are refused, and each address gets a bucket of attempts
//! ([`EnrollLimiter`](crate::auth::limits::EnrollLimiter)):
//! refusals cost far more than enrollments, so guessing is slow while a farm behind one NAT
//! still rolls out quickly.

use std::net::SocketAddr;
use std::time::Instant;

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

/// A public key an agent may register: a valid Ed25519 point that is not of small order (such
/// a key verifies forged signatures).
pub fn check_agent_key(hex_key: &str) -> Result<(), String> {
    let bytes: [u8; 32] = rigfleet_proto::signing::decode_hex_array(hex_key)
        .ok_or_else(|| "agent_public_key must be 32 bytes of hex".to_string())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "agent_public_key is not an Ed25519 public key".to_string())?;
    if key.is_weak() {
        return Err(
            "agent_public_key is a weak Ed25519 key (a small-order point): make a real key pair"
                .into(),
        );
    }
    Ok(())
}

/// The handler.
pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Result<Json<EnrollResponse>, ApiFailure> {
    let hub = &state.hub;
    if let Err(wait) = state.enroll_limiter.take(peer.ip(), Instant::now()) {
        hub.metrics.error("enroll_rate_limited");
        return Err(ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many enrollment attempts from this address; retry in {wait} s"),
        ));
    }
    let refuse = |status: StatusCode, code: &'static str, message: String| {
        state.enroll_limiter.refused(peer.ip());
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
    check_agent_key(&req.agent_public_key)
        .map_err(|m| refuse(StatusCode::BAD_REQUEST, "weak_key", m))?;
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
    let rig_count = i64::try_from(req.rigs.len()).unwrap_or(i64::MAX);
    let row = hub
        .store
        .use_enroll_token(&token.id_hex(), &secret_hash, now, rig_count)
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
                let message = match other {
                    TokenUseError::Exhausted => format!(
                        "enrollment token used up: it has fewer uses left than the {rig_count} rig(s) of this request (uses count rigs)"
                    ),
                    other => other.to_string(),
                };
                refuse(StatusCode::UNAUTHORIZED, code, message)
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
    let registered = hub.store.register_agent(&new_agent, &rigs).await;
    if registered.is_err() {
        // No rig was enrolled: the uses go back to the token.
        if let Err(error) = hub
            .store
            .refund_enroll_token(&token.id_hex(), rig_count)
            .await
        {
            tracing::warn!(%error, "Could not give an enrollment token its uses back");
        }
    }
    let rows = match registered {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        assert!(check_agent_key(&"00".repeat(32))
            .unwrap_err()
            .contains("weak"));
        // The identity point (1, 0) encoded: small order too.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let hex: String = identity.iter().map(|b| format!("{b:02x}")).collect();
        assert!(check_agent_key(&hex).unwrap_err().contains("weak"));
        assert!(check_agent_key("zz").is_err());
        let good = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let hex: String = good
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(check_agent_key(&hex), Ok(()));
    }
}
