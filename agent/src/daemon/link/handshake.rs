//! The handshake: `hello` → `challenge` → `auth` → `welcome`, within one time limit.
//!
//! Orders carry an expiry on the server's clock, and many rigs have no reliable clock, so the
//! agent judges expiry with the offset between the two clocks. That offset must not be
//! something a TLS-terminating proxy can forge: the agent puts a fresh nonce in `hello`, and
//! the server signs its time in `welcome` together with that nonce and the agent's id. The
//! offset the agent keeps is the signed server time minus the moment `hello` left: an upper
//! bound of the true offset (the server read its clock after the hello arrived), so holding
//! frames back can only make orders look older, never younger.

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use rigfleet_proto::agent_to_server::{Auth, Hello};
use rigfleet_proto::server_to_agent::Welcome;
use rigfleet_proto::signing::{decode_hex_array, server_time_signing_bytes};
use rigfleet_proto::{AgentId, AgentMessage, ServerMessage};

use super::connect::{recv_msg, send_msg, LinkError, WsStream};
use super::now_unix_ms;
use crate::daemon::identity::Identity;

/// What the handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcomed {
    /// The server's `welcome`.
    pub welcome: Welcome,
    /// Server clock minus ours, from the server's signed time (see the module docs): what
    /// orders' expiry is judged with.
    pub clock_offset_ms: i64,
    /// Our own estimate from the challenge's server time (for logs when the two disagree).
    pub local_offset_estimate_ms: i64,
}

/// Runs the handshake on a fresh socket within `limit`.
pub async fn handshake(
    ws: &mut WsStream,
    identity: &Identity,
    hello: Hello,
    limit: Duration,
) -> Result<Welcomed, LinkError> {
    tokio::time::timeout(limit, exchange(ws, identity, hello))
        .await
        .map_err(|_| LinkError::Timeout("handshake"))?
}

async fn exchange(
    ws: &mut WsStream,
    identity: &Identity,
    mut hello: Hello,
) -> Result<Welcomed, LinkError> {
    let mut agent_nonce = [0u8; 32];
    getrandom::getrandom(&mut agent_nonce)
        .map_err(|e| LinkError::Protocol(format!("no random nonce for the handshake: {e}")))?;
    hello.nonce = Some(rigfleet_engine::hex::encode(&agent_nonce));
    let hello_sent_at = now_unix_ms();
    send_msg(ws, &AgentMessage::Hello(hello)).await?;
    let challenge = match recv_msg(ws).await? {
        ServerMessage::Challenge(c) => c,
        other => return Err(out_of_turn("challenge", &other)),
    };
    let received_at = now_unix_ms();
    if challenge.protocol != rigfleet_proto::PROTOCOL_VERSION {
        return Err(LinkError::Protocol(format!(
            "server chose protocol {}, this agent speaks {}",
            challenge.protocol,
            rigfleet_proto::PROTOCOL_VERSION
        )));
    }
    let nonce = decode_hex_array::<32>(&challenge.nonce)
        .ok_or_else(|| LinkError::Protocol("challenge nonce is not 32 hex bytes".into()))?;
    let signature = identity.sign_auth(&nonce);
    send_msg(
        ws,
        &AgentMessage::Auth(Auth {
            signature: rigfleet_engine::hex::encode(&signature),
        }),
    )
    .await?;
    let welcome = match recv_msg(ws).await? {
        ServerMessage::Welcome(w) => w,
        other => return Err(out_of_turn("welcome", &other)),
    };
    let server_time = verify_server_time(
        &welcome,
        &agent_nonce,
        &identity.agent_id,
        identity.server_key(),
    )?;
    Ok(Welcomed {
        clock_offset_ms: server_time.saturating_sub(hello_sent_at),
        local_offset_estimate_ms: challenge.server_time_unix_ms.saturating_sub(received_at),
        welcome,
    })
}

/// The server time of `welcome`, if its signature over our nonce verifies with the pinned key.
pub fn verify_server_time(
    welcome: &Welcome,
    agent_nonce: &[u8; 32],
    agent_id: &AgentId,
    server_key: &VerifyingKey,
) -> Result<i64, LinkError> {
    let (Some(time), Some(sig)) = (welcome.server_time_unix_ms, welcome.time_sig.as_deref()) else {
        return Err(LinkError::Protocol(
            "welcome carries no signed server time (a server older than this agent, or a proxy that removed it)".into(),
        ));
    };
    let sig = decode_hex_array::<64>(sig)
        .ok_or_else(|| LinkError::Protocol("welcome time signature is not 64 hex bytes".into()))?;
    let bytes = server_time_signing_bytes(agent_nonce, agent_id, time);
    server_key
        .verify_strict(&bytes, &Signature::from_bytes(&sig))
        .map_err(|_| {
            LinkError::Protocol(
                "welcome's server time is not signed by the pinned server key".into(),
            )
        })?;
    Ok(time)
}

fn out_of_turn(expected: &str, got: &ServerMessage) -> LinkError {
    let name = serde_json::to_value(got)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    LinkError::Protocol(format!("expected {expected}, got {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn welcome(time: Option<i64>, sig: Option<String>) -> Welcome {
        Welcome {
            telemetry_interval_secs: 10,
            clock_offset_ms: 0,
            server_time_unix_ms: time,
            time_sig: sig,
        }
    }

    #[test]
    fn only_a_time_signed_over_our_nonce_by_the_pinned_key_is_taken() {
        let server = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let agent: AgentId = "agent-1".into();
        let nonce = [1u8; 32];
        let sign = |k: &SigningKey, nonce: &[u8; 32], t: i64| {
            rigfleet_engine::hex::encode(
                &k.sign(&server_time_signing_bytes(nonce, &agent, t))
                    .to_bytes(),
            )
        };
        let key = server.verifying_key();
        let good = welcome(Some(5_000), Some(sign(&server, &nonce, 5_000)));
        assert_eq!(
            verify_server_time(&good, &nonce, &agent, &key).unwrap(),
            5_000
        );
        // A proxy moving the time, replaying a signature made for another connection's nonce,
        // signing with its own key, or removing the signature is refused.
        let moved = welcome(Some(4_000), Some(sign(&server, &nonce, 5_000)));
        let replayed = welcome(Some(5_000), Some(sign(&server, &[2u8; 32], 5_000)));
        let forged = welcome(Some(5_000), Some(sign(&other, &nonce, 5_000)));
        let stripped = welcome(None, None);
        for w in [moved, replayed, forged, stripped] {
            assert!(
                verify_server_time(&w, &nonce, &agent, &key).is_err(),
                "{w:?}"
            );
        }
    }
}
