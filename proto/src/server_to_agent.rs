//! Everything the server sends to an agent.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::RigId;
use crate::limits::MAX_TEXT_LEN;
use crate::signing::{decode_hex_array, SignedOrder};
use crate::validate::check_len;

/// A frame from the server. On the wire: `{"v":1,"type":"<snake_case name>", …fields}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`: prove you hold your key.
    Challenge(Challenge),
    /// The agent is authenticated.
    Welcome(Welcome),
    /// Telemetry of a rig is durably stored up to `seq`.
    Ack(Ack),
    /// A desired config, signed.
    SetConfig(SignedOrder),
    /// A command, signed.
    Command(SignedOrder),
    /// A new server key, signed by the current one.
    KeyRollover(SignedOrder),
    /// Something the agent sent was refused.
    Error(ErrorFrame),
}

/// The type names a server may send.
pub const SERVER_MESSAGE_TYPES: &[&str] = &[
    "challenge",
    "welcome",
    "ack",
    "set_config",
    "command",
    "key_rollover",
    "error",
];

/// `challenge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// 32 random bytes, hex; never reused.
    pub nonce: String,
    /// The server's clock.
    pub server_time_unix_ms: i64,
    /// The protocol version the server chose from the agent's range.
    pub protocol: u32,
}

/// `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// How often to send telemetry.
    pub telemetry_interval_secs: u32,
    /// Server clock minus agent clock as measured at the handshake (ms), for the agent's logs.
    /// Protocol 1 agents judged order expiry with it; it is not signed, so protocol 2 agents
    /// use the signed `server_time_unix_ms` instead.
    pub clock_offset_ms: i64,
    /// Protocol 2: the server's clock when it sent this frame…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time_unix_ms: Option<i64>,
    /// …and its Ed25519 signature (hex) over
    /// [`crate::signing::server_time_signing_bytes`] with the nonce of the agent's `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_sig: Option<String>,
}

/// `ack`: every sample of `rig_id`'s stream with seq ≤ `seq` is durably committed, or was
/// reported dropped by the agent itself (cumulative: never a mark with a hole below it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The rig.
    pub rig_id: RigId,
    /// Highest seq with nothing missing at or below it.
    pub seq: u64,
    /// Protocol 2: the stream this ack is about (the one the telemetry named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

/// Machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No protocol version in common.
    UnsupportedProtocol,
    /// Unknown agent, wrong signature, removed rig.
    AuthFailed,
    /// The frame could not be decoded or broke a limit.
    BadFrame,
    /// A message about a rig the agent does not front.
    UnknownRig,
    /// The agent sends faster than the server accepts.
    RateLimited,
    /// Something on the server failed; try again later.
    Internal,
}

/// `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFrame {
    /// What kind of error.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
}

impl ServerMessage {
    /// Checks every limit of the message.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            ServerMessage::Challenge(c) => decode_hex_array::<32>(&c.nonce)
                .map(|_| ())
                .ok_or_else(|| ProtoError::invalid("nonce", "not 32 hex bytes")),
            ServerMessage::Welcome(w) => {
                if w.telemetry_interval_secs == 0 || w.telemetry_interval_secs > 3600 {
                    return Err(ProtoError::invalid(
                        "telemetry_interval_secs",
                        "must be 1 to 3600",
                    ));
                }
                if let Some(sig) = &w.time_sig {
                    if decode_hex_array::<64>(sig).is_none() {
                        return Err(ProtoError::invalid("time_sig", "not 64 hex bytes"));
                    }
                }
                Ok(())
            }
            ServerMessage::Ack(a) => {
                a.rig_id.validate("rig_id")?;
                match &a.stream_id {
                    Some(s) => crate::agent_to_server::validate_stream_id("stream_id", s),
                    None => Ok(()),
                }
            }
            ServerMessage::SetConfig(o)
            | ServerMessage::Command(o)
            | ServerMessage::KeyRollover(o) => o.validate(),
            ServerMessage::Error(e) => check_len("message", &e.message, MAX_TEXT_LEN),
        }
    }
}
