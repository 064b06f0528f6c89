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
    /// Server clock minus agent clock as measured at the handshake (ms); the agent adds it to
    /// its clock when judging order expiry.
    pub clock_offset_ms: i64,
}

/// `ack`: every sample of `rig_id` with seq ≤ `seq` is durably committed (cumulative).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The rig.
    pub rig_id: RigId,
    /// Highest committed seq.
    pub seq: u64,
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
                Ok(())
            }
            ServerMessage::Ack(a) => a.rig_id.validate("rig_id"),
            ServerMessage::SetConfig(o)
            | ServerMessage::Command(o)
            | ServerMessage::KeyRollover(o) => o.validate(),
            ServerMessage::Error(e) => check_len("message", &e.message, MAX_TEXT_LEN),
        }
    }
}
