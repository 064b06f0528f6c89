//! Every message between a rigfleet agent and the server: types, protocol version, size limits,
//! the codec, and the exact bytes that get signed. No I/O: only `agent/link.rs` and the server's
//! hub touch a socket. `PROTOCOL.md` beside this crate describes the wire format with examples.
//!
//! - [`agent_to_server`] / [`server_to_agent`]: one tagged enum per direction.
//! - [`telemetry`], [`config`], [`command`]: the payloads.
//! - [`signing`]: signed orders and the bytes signatures cover.
//! - [`limits`]: every bound, checked by [`decode_agent`] and [`decode_server`].
//! - [`ids`]: rig, agent, device and command ids.

pub mod agent_to_server;
pub mod command;
pub mod config;
pub mod enroll;
pub mod error;
pub mod ids;
pub mod limits;
pub mod pool_url;
pub mod server_to_agent;
pub mod signing;
pub mod telemetry;
mod validate;

pub use agent_to_server::AgentMessage;
pub use error::ProtoError;
pub use ids::{AgentId, CommandId, DeviceId, RigId};
pub use server_to_agent::ServerMessage;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The newest protocol version this build speaks (negotiated in `hello`/`challenge`). Version 2
/// adds telemetry streams (`stream_id`, `dropped_through`, per-stream acks) and the signed server
/// time in `welcome`; a server sends those fields only on links that negotiated 2, so agents of
/// version 1 (whose frames deny unknown fields) keep working.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The envelope version every frame carries as `"v"`. It changes only if the envelope itself
/// changes, never for new message fields (those are negotiated as the protocol version).
pub const FRAME_VERSION: u32 = 1;

/// Encodes an agent message as one text frame.
pub fn encode_agent(msg: &AgentMessage) -> Result<String, ProtoError> {
    encode(msg)
}

/// Encodes a server message as one text frame.
pub fn encode_server(msg: &ServerMessage) -> Result<String, ProtoError> {
    encode(msg)
}

/// Decodes and validates a frame an agent sent.
pub fn decode_agent(frame: &str) -> Result<AgentMessage, ProtoError> {
    let msg: AgentMessage = decode(frame, agent_to_server::AGENT_MESSAGE_TYPES)?;
    msg.validate()?;
    Ok(msg)
}

/// Decodes and validates a frame the server sent.
pub fn decode_server(frame: &str) -> Result<ServerMessage, ProtoError> {
    let msg: ServerMessage = decode(frame, server_to_agent::SERVER_MESSAGE_TYPES)?;
    msg.validate()?;
    Ok(msg)
}

/// The highest version both sides speak, if any.
pub fn negotiate(agent_min: u32, agent_max: u32) -> Option<u32> {
    let high = agent_max.min(PROTOCOL_VERSION);
    (high >= agent_min.max(MIN_PROTOCOL_VERSION)).then_some(high)
}

fn encode<T: Serialize>(msg: &T) -> Result<String, ProtoError> {
    let mut value = serde_json::to_value(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let Value::Object(obj) = &mut value else {
        return Err(ProtoError::Malformed("message is not an object".into()));
    };
    obj.insert("v".into(), Value::from(FRAME_VERSION));
    let text = value.to_string();
    if text.len() > limits::MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooLarge {
            size: text.len(),
            limit: limits::MAX_FRAME_BYTES,
        });
    }
    Ok(text)
}

fn decode<T: DeserializeOwned>(frame: &str, known_types: &[&str]) -> Result<T, ProtoError> {
    // The bound comes first: nothing is parsed from an oversized frame.
    if frame.len() > limits::MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooLarge {
            size: frame.len(),
            limit: limits::MAX_FRAME_BYTES,
        });
    }
    let mut value: Value =
        serde_json::from_str(frame).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let Value::Object(obj) = &mut value else {
        return Err(ProtoError::Malformed("frame is not a JSON object".into()));
    };
    let version = obj
        .remove("v")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ProtoError::Malformed("missing or non-numeric \"v\"".into()))?;
    if version != u64::from(FRAME_VERSION) {
        return Err(ProtoError::UnsupportedVersion {
            found: u32::try_from(version).unwrap_or(u32::MAX),
            min: FRAME_VERSION,
            max: FRAME_VERSION,
        });
    }
    match obj.get("type").and_then(Value::as_str) {
        None => return Err(ProtoError::Malformed("missing \"type\"".into())),
        Some(t) if !known_types.contains(&t) => {
            return Err(ProtoError::UnknownType(t.chars().take(64).collect()))
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| ProtoError::Malformed(e.to_string()))
}
