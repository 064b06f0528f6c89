//! `POST /api/agent/enroll`: a rig presents an enrollment token and its public key; the server
//! checks the token (its fingerprint must name this server's key, its secret must match, it must
//! have uses left and not be expired or revoked), registers the agent and its rigs, and answers
//! with their ids and the server's public key.
//!
//! A token's `max_uses` counts rigs (a request for more rigs than it has uses left is refused
//! whole), weak Ed25519 public keys (small-order points such as all zeros, which any signature
//! could match) are refused, and each address gets a bucket of attempts ([`EnrollLimiter`]):
//! refusals cost far more than enrollments, so guessing is slow while a farm behind one NAT
//! still rolls out quickly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
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

/// Attempts an address may make at once.
pub const LIMIT_BURST: f64 = 60.0;
/// Attempts per second an address gets back.
pub const LIMIT_PER_SEC: f64 = 10.0;
/// Refused attempts (bad token, wrong secret, bad request…) an address may make at once.
pub const FAILURE_BURST: f64 = 10.0;
/// Refused attempts per second an address gets back (one per 5 s).
pub const FAILURES_PER_SEC: f64 = 0.2;
/// Addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Bucket {
    attempts: f64,
    failures: f64,
    at: Instant,
}

/// Per-address limits for `/api/agent/enroll` (IPv6 addresses by their /64, which one host
/// usually holds whole): a bucket of attempts, so a farm behind one NAT rolls out quickly, and
/// a much smaller one of refusals, so guessing tokens or flooding with garbage is slow.
pub struct EnrollLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    limits: [(f64, f64); 2],
}

impl Default for EnrollLimiter {
    fn default() -> Self {
        Self::new(
            (LIMIT_BURST, LIMIT_PER_SEC),
            (FAILURE_BURST, FAILURES_PER_SEC),
        )
    }
}

impl EnrollLimiter {
    /// A limiter with `(burst, per second)` of attempts and of refusals.
    pub fn new(attempts: (f64, f64), failures: (f64, f64)) -> Self {
        EnrollLimiter {
            buckets: Mutex::new(HashMap::new()),
            limits: [attempts, failures],
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// `ip`'s bucket refilled to `now`.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        let [(a_burst, a_rate), (f_burst, f_rate)] = self.limits;
        b.attempts = (b.attempts + secs * a_rate).min(a_burst);
        b.failures = (b.failures + secs * f_rate).min(f_burst);
        b.at = now;
    }

    /// Takes one attempt for `ip` at `now`; `Err(seconds to wait)` when either bucket is empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            let [(a_burst, _), (f_burst, _)] = self.limits;
            map.retain(|_, b| {
                let mut b = *b;
                self.refill(&mut b, now);
                b.attempts < a_burst || b.failures < f_burst
            });
        }
        let [(a_burst, a_rate), (f_burst, f_rate)] = self.limits;
        let b = map.entry(Self::key(ip)).or_insert(Bucket {
            attempts: a_burst,
            failures: f_burst,
            at: now,
        });
        self.refill(b, now);
        let wait = |have: f64, rate: f64| ((1.0 - have) / rate).ceil().max(1.0) as u64;
        if b.failures < 1.0 {
            return Err(wait(b.failures, f_rate));
        }
        if b.attempts < 1.0 {
            return Err(wait(b.attempts, a_rate));
        }
        b.attempts -= 1.0;
        Ok(())
    }

    /// Counts a refused attempt of `ip`.
    pub fn refused(&self, ip: IpAddr) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get_mut(&Self::key(ip)) {
            b.failures -= 1.0;
        }
    }
}

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
    use std::time::Duration;

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

    #[test]
    fn the_limiter_slows_one_address_and_not_another() {
        let l = EnrollLimiter::new((5.0, 1.0), (2.0, 0.1));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert!(l.take(a, t0).is_ok());
        }
        assert_eq!(l.take(a, t0), Err(1));
        assert!(l.take(b, t0).is_ok(), "another address has its own bucket");
        assert!(l.take(a, t0 + Duration::from_secs(1)).is_ok());
        // Refusals have a bucket of their own, much slower to refill.
        l.refused(b);
        l.refused(b);
        assert_eq!(l.take(b, t0), Err(10));
        assert!(l.take(b, t0 + Duration::from_secs(10)).is_ok());
        // IPv6 addresses of one /64 share a bucket.
        let l = EnrollLimiter::new((1.0, 1.0), (1.0, 1.0));
        assert!(l.take("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(l.take("2001:db8::2".parse().unwrap(), t0).is_err());
    }
}
