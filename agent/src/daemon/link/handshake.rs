//! The handshake: `hello` → `challenge` → `auth` → `welcome`, within one time limit.

use std::time::Duration;

use rigfleet_proto::agent_to_server::{Auth, Hello};
use rigfleet_proto::server_to_agent::Welcome;
use rigfleet_proto::signing::decode_hex_array;
use rigfleet_proto::{AgentMessage, ServerMessage};

use super::connect::{recv_msg, send_msg, LinkError, WsStream};
use super::now_unix_ms;
use crate::daemon::identity::Identity;

/// What the handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcomed {
    /// The server's `welcome`.
    pub welcome: Welcome,
    /// Server clock minus ours: the welcome's figure (the server measured it), which orders'
    /// expiry is judged with.
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
    hello: Hello,
) -> Result<Welcomed, LinkError> {
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
    Ok(Welcomed {
        clock_offset_ms: welcome.clock_offset_ms,
        local_offset_estimate_ms: challenge.server_time_unix_ms.saturating_sub(received_at),
        welcome,
    })
}

fn out_of_turn(expected: &str, got: &ServerMessage) -> LinkError {
    let name = serde_json::to_value(got)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    LinkError::Protocol(format!("expected {expected}, got {name}"))
}
