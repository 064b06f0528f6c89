//! Enrollment: the token an operator pastes on a rig and the `POST /api/agent/enroll` exchange.
//!
//! A token is `rf1.<id>.<secret>.<fingerprint>`: `id` (16 hex digits) names the token row,
//! `secret` (32 hex digits, 128 bits) proves the holder may use it (the server stores only its
//! SHA-256), and `fingerprint` (64 hex digits) is the SHA-256 of the server's Ed25519 public key,
//! so the agent can tell the real server from whoever answers first, as kubeadm join tokens carry
//! the CA hash.

use serde::{Deserialize, Serialize};

use crate::agent_to_server::DeviceDescriptor;
use crate::error::ProtoError;
use crate::ids::{AgentId, RigId};
use crate::limits::{MAX_DEVICES_PER_RIG, MAX_NAME_LEN, MAX_RIGS_PER_AGENT};
use crate::signing::decode_hex_array;
use crate::validate::{check_count, check_len};

/// The path agents post enrollment requests to.
pub const ENROLL_PATH: &str = "/api/agent/enroll";
/// The WebSocket path of the agent link.
pub const AGENT_WS_PATH: &str = "/api/agent/ws";

const TOKEN_PREFIX: &str = "rf1";

/// A parsed enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    /// 8 bytes naming the token row.
    pub id: [u8; 8],
    /// 16 secret bytes.
    pub secret: [u8; 16],
    /// SHA-256 of the server's public key.
    pub server_key_sha256: [u8; 32],
}

impl std::fmt::Debug for EnrollToken {
    /// The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollToken")
            .field("id", &self.id_hex())
            .field("server_key", &self.server_key_fingerprint())
            .finish_non_exhaustive()
    }
}

impl EnrollToken {
    /// Parses `rf1.<id>.<secret>.<fingerprint>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<EnrollToken, ProtoError> {
        let bad = |why: &str| ProtoError::invalid("token", why);
        let mut parts = text.trim().split('.');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(bad("not a rigfleet enrollment token (expected rf1.…)"));
        }
        let (Some(id), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected four dot-separated parts"));
        };
        Ok(EnrollToken {
            id: decode_hex_array(id).ok_or_else(|| bad("id is not 16 hex digits"))?,
            secret: decode_hex_array(secret).ok_or_else(|| bad("secret is not 32 hex digits"))?,
            server_key_sha256: decode_hex_array(fp)
                .ok_or_else(|| bad("fingerprint is not 64 hex digits"))?,
        })
    }

    /// The token id as hex (what the server stores and lists).
    pub fn id_hex(&self) -> String {
        crate::config::hex(&self.id)
    }

    /// The server key fingerprint in the `sha256:<hex>` form of [`crate::signing::key_fingerprint`].
    pub fn server_key_fingerprint(&self) -> String {
        format!("sha256:{}", crate::config::hex(&self.server_key_sha256))
    }

    /// The token as text, secret included: show it to the operator once.
    pub fn to_text(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id_hex(),
            crate::config::hex(&self.secret),
            crate::config::hex(&self.server_key_sha256)
        )
    }
}

/// `POST /api/agent/enroll` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The whole token text.
    pub token: String,
    /// The agent's Ed25519 public key, 64 hex digits.
    pub agent_public_key: String,
    /// The rig's host name (the default rig name).
    pub hostname: String,
    /// The agent's version.
    pub agent_version: String,
    /// One entry per rig the agent fronts (one for a plain rig).
    pub rigs: Vec<EnrollRig>,
}

/// A rig in an enrollment request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRig {
    /// The name the agent proposes (host name for a plain rig).
    pub name: String,
    /// Devices found on the rig.
    #[serde(default)]
    pub devices: Vec<DeviceDescriptor>,
}

/// The answer to a successful enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The agent's id, used in `hello` and the auth signature.
    pub agent_id: AgentId,
    /// Server-assigned rig ids, in the order of the request's `rigs`.
    pub rig_ids: Vec<RigId>,
    /// The server's Ed25519 public key, 64 hex digits; the agent checks it against the token's
    /// fingerprint before trusting it.
    pub server_public_key: String,
    /// Whether an operator must approve the rig before it may connect.
    pub pending_approval: bool,
}

/// An error body of the enrollment endpoint (and of the REST API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable code (`bad_token`, `token_exhausted`, `token_expired`, `key_in_use`…).
    pub code: String,
    /// A message for people.
    pub message: String,
}

impl EnrollRequest {
    /// Checks sizes and formats before the server touches its database.
    pub fn validate(&self) -> Result<(), ProtoError> {
        check_len("token", &self.token, 256)?;
        decode_hex_array::<32>(&self.agent_public_key)
            .ok_or_else(|| ProtoError::invalid("agent_public_key", "not 64 hex digits"))?;
        check_len("hostname", &self.hostname, MAX_NAME_LEN)?;
        check_len("agent_version", &self.agent_version, MAX_NAME_LEN)?;
        if self.rigs.is_empty() {
            return Err(ProtoError::invalid(
                "rigs",
                "an agent fronts at least one rig",
            ));
        }
        check_count("rigs", &self.rigs, MAX_RIGS_PER_AGENT)?;
        for r in &self.rigs {
            check_len("rigs.name", &r.name, MAX_NAME_LEN)?;
            check_count("rigs.devices", &r.devices, MAX_DEVICES_PER_RIG)?;
            for d in &r.devices {
                d.device_id.validate("devices.device_id")?;
                check_len("devices.kind", &d.kind, MAX_NAME_LEN)?;
                check_len("devices.model", &d.model, MAX_NAME_LEN)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_hides_its_secret() {
        let t = EnrollToken {
            id: [1; 8],
            secret: [0xab; 16],
            server_key_sha256: [0xcd; 32],
        };
        let text = t.to_text();
        assert_eq!(
            EnrollToken::parse(&format!("  {text}\n")).ok(),
            Some(t.clone())
        );
        assert!(!format!("{t:?}").contains("abab"));
        assert!(t.server_key_fingerprint().starts_with("sha256:cdcd"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let good = EnrollToken {
            id: [1; 8],
            secret: [2; 16],
            server_key_sha256: [3; 32],
        }
        .to_text();
        let mut cases = vec![
            String::new(),
            "rf2".to_string() + &good[3..],
            good.replace('.', ":"),
            format!("{good}.x"),
            good[..good.len() - 1].to_string(),
        ];
        cases.push(good.replacen("0101", "zz01", 1));
        for c in cases {
            assert!(EnrollToken::parse(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn requests_are_validated() {
        let ok = EnrollRequest {
            token: "rf1.x".into(),
            agent_public_key: "00".repeat(32),
            hostname: "rig-a".into(),
            agent_version: "0.1.0".into(),
            rigs: vec![EnrollRig {
                name: "rig-a".into(),
                devices: vec![],
            }],
        };
        assert!(ok.validate().is_ok());
        let mut bad_key = ok.clone();
        bad_key.agent_public_key = "00".into();
        let mut no_rigs = ok.clone();
        no_rigs.rigs.clear();
        let mut long_name = ok.clone();
        long_name.hostname = "x".repeat(MAX_NAME_LEN + 1);
        for b in [bad_key, no_rigs, long_name] {
            assert!(b.validate().is_err());
        }
    }
}
