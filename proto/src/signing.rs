//! The exact bytes that get signed, so the server (signer) and the agent (verifier) can never
//! disagree on them. This crate does no cryptography itself: the agent and the server sign and
//! verify these bytes with Ed25519.
//!
//! Every signed message starts with a domain tag naming its purpose and version, so a signature
//! made for one purpose can never be replayed as another; variable-length fields are prefixed
//! with their length (u32, big-endian) so no two different field sets give the same bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ProtoError;
use crate::ids::{AgentId, RigId};
use crate::limits::MAX_PAYLOAD_BYTES;

/// Domain tag of the agent's handshake answer.
pub const AUTH_DOMAIN: &[u8] = b"rigfleet/v1/agent-auth";
/// Domain tag of the server time signed in `welcome` (protocol 2).
pub const SERVER_TIME_DOMAIN: &[u8] = b"rigfleet/v2/server-time";

/// What an order asks for; each has its own domain tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    /// A desired config (`set_config`).
    SetConfig,
    /// A command (`command`).
    Command,
    /// A new server key (`key_rollover`).
    KeyRollover,
}

impl OrderKind {
    /// The domain tag signed for this kind.
    pub fn domain(self) -> &'static [u8] {
        match self {
            OrderKind::SetConfig => b"rigfleet/v1/order/set_config",
            OrderKind::Command => b"rigfleet/v1/order/command",
            OrderKind::KeyRollover => b"rigfleet/v1/order/key_rollover",
        }
    }
}

/// A server order as it travels: the payload is JSON text kept exactly as signed (never
/// re-serialised), with the rig, counter and expiry the signature also covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOrder {
    /// The rig the order is for; an agent refuses orders for rigs it does not front.
    pub rig_id: RigId,
    /// Per-rig counter kept by the server's database; the agent accepts only increasing values.
    pub counter: u64,
    /// After this instant (server clock) the order is void; the agent judges it with the clock
    /// offset measured at the handshake.
    pub expires_unix_ms: i64,
    /// The order's JSON text (a desired config, a command, or a new key).
    pub payload: String,
    /// Ed25519 signature over [`order_signing_bytes`], hex.
    pub sig: String,
}

impl SignedOrder {
    /// The bytes the signature covers for this order.
    pub fn signing_bytes(&self, kind: OrderKind) -> Vec<u8> {
        order_signing_bytes(
            kind,
            &self.rig_id,
            self.counter,
            self.expires_unix_ms,
            self.payload.as_bytes(),
        )
    }

    /// The signature as 64 bytes.
    pub fn signature(&self) -> Result<[u8; 64], ProtoError> {
        decode_hex_array::<64>(&self.sig)
            .ok_or_else(|| ProtoError::invalid("sig", "not 64 hex bytes"))
    }

    /// Checks bounds (not the signature: that needs the pinned key).
    pub fn validate(&self) -> Result<(), ProtoError> {
        self.rig_id.validate("rig_id")?;
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtoError::invalid(
                "payload",
                format!("larger than {MAX_PAYLOAD_BYTES} bytes"),
            ));
        }
        self.signature().map(|_| ())
    }
}

/// `domain ‖ len(rig) ‖ rig ‖ counter (u64 BE) ‖ expires (i64 BE) ‖ len(payload) ‖ payload`.
pub fn order_signing_bytes(
    kind: OrderKind,
    rig_id: &RigId,
    counter: u64,
    expires_unix_ms: i64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + rig_id.0.len() + payload.len());
    out.extend_from_slice(kind.domain());
    push_field(&mut out, rig_id.0.as_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&expires_unix_ms.to_be_bytes());
    push_field(&mut out, payload);
    out
}

/// `AUTH_DOMAIN ‖ nonce (32) ‖ len(agent) ‖ agent ‖ server public key (32)`: binding the
/// server's key means an answer relayed to another server is useless there.
pub fn auth_signing_bytes(nonce: &[u8; 32], agent_id: &AgentId, server_key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_DOMAIN.len() + 100);
    out.extend_from_slice(AUTH_DOMAIN);
    out.extend_from_slice(nonce);
    push_field(&mut out, agent_id.0.as_bytes());
    out.extend_from_slice(server_key);
    out
}

/// `SERVER_TIME_DOMAIN ‖ agent nonce (32) ‖ len(agent) ‖ agent ‖ server time (i64 BE)`: the
/// agent's fresh nonce from `hello` means a signed time cannot be replayed on a later
/// connection, so a proxy that holds an order back cannot also move the agent's idea of the
/// server's clock.
pub fn server_time_signing_bytes(
    agent_nonce: &[u8; 32],
    agent_id: &AgentId,
    server_time_unix_ms: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SERVER_TIME_DOMAIN.len() + 80);
    out.extend_from_slice(SERVER_TIME_DOMAIN);
    out.extend_from_slice(agent_nonce);
    push_field(&mut out, agent_id.0.as_bytes());
    out.extend_from_slice(&server_time_unix_ms.to_be_bytes());
    out
}

/// The fingerprint of an Ed25519 public key carried in enrollment tokens: `sha256:` and the hex
/// SHA-256 of the 32 key bytes.
pub fn key_fingerprint(public_key: &[u8; 32]) -> String {
    format!("sha256:{}", crate::config::hex(&Sha256::digest(public_key)))
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// Decodes hex of exactly `N` bytes.
pub fn decode_hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_signed_bytes() {
        let base = order_signing_bytes(OrderKind::SetConfig, &"rig-1".into(), 7, 1000, b"{}");
        let variants = [
            order_signing_bytes(OrderKind::Command, &"rig-1".into(), 7, 1000, b"{}"),
            order_signing_bytes(OrderKind::SetConfig, &"rig-2".into(), 7, 1000, b"{}"),
            order_signing_bytes(OrderKind::SetConfig, &"rig-1".into(), 8, 1000, b"{}"),
            order_signing_bytes(OrderKind::SetConfig, &"rig-1".into(), 7, 1001, b"{}"),
            order_signing_bytes(OrderKind::SetConfig, &"rig-1".into(), 7, 1000, b"{ }"),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        // Moving a byte from the rig id into the payload must not give the same bytes.
        let a = order_signing_bytes(OrderKind::Command, &"ab".into(), 1, 1, b"c");
        let b = order_signing_bytes(OrderKind::Command, &"a".into(), 1, 1, b"bc");
        assert_ne!(a, b);
    }

    #[test]
    fn fingerprint_and_hex() {
        let fp = key_fingerprint(&[0u8; 32]);
        assert!(
            fp.starts_with(
                "sha256:66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
            ),
            "{fp}"
        );
        assert_eq!(decode_hex_array::<2>("0aff"), Some([10, 255]));
        assert_eq!(decode_hex_array::<2>("0af"), None);
        assert_eq!(decode_hex_array::<2>("0afg"), None);
        assert_eq!(decode_hex_array::<1>("é1"), None);
    }
}
