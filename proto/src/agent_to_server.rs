//! Everything an agent sends to the server.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::{AgentId, CommandId, DeviceId, RigId};
use crate::limits::{
    MAX_DEVICES_PER_RIG, MAX_NAME_LEN, MAX_RIGS_PER_AGENT, MAX_SAMPLES_PER_BATCH, MAX_TEXT_LEN,
};
use crate::signing::decode_hex_array;
use crate::telemetry::Sample;
use crate::validate::{check_count, check_len};

/// A frame from an agent. On the wire: `{"v":1,"type":"<snake_case name>", …fields}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First frame after connecting.
    Hello(Hello),
    /// Answer to the server's challenge.
    Auth(Auth),
    /// A batch of samples of one rig.
    Telemetry(Telemetry),
    /// Outcome of a `set_config`.
    ConfigApplied(ConfigApplied),
    /// Outcome of a `command`.
    CommandResult(CommandResult),
    /// Something happened on a rig (watchdog step, pool switch, refused order…).
    Event(Event),
}

/// The type names an agent may send, for telling an unknown type from a malformed frame.
pub const AGENT_MESSAGE_TYPES: &[&str] = &[
    "hello",
    "auth",
    "telemetry",
    "config_applied",
    "command_result",
    "event",
];

/// `hello`: who the agent is and what it fronts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent's id from enrollment.
    pub agent_id: AgentId,
    /// Oldest protocol version the agent speaks.
    pub protocol_min: u32,
    /// Newest protocol version the agent speaks.
    pub protocol_max: u32,
    /// Agent version (`0.1.0`).
    pub agent_version: String,
    /// Machine hostname.
    pub hostname: String,
    /// The agent's clock, so the server can measure the offset.
    pub clock_unix_ms: i64,
    /// Every rig the agent fronts (one for an ordinary rig, many for a LAN-ASIC gateway).
    pub rigs: Vec<RigHello>,
    /// Protocol 2: 32 fresh random bytes, hex, that the server signs with its time in
    /// `welcome`, so the clock offset orders are judged with cannot be forged or replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// One rig in `hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigHello {
    /// The rig.
    pub rig_id: RigId,
    /// Its devices.
    #[serde(default)]
    pub devices: Vec<DeviceDescriptor>,
    /// Version of the desired config it runs, if any.
    #[serde(default)]
    pub applied_config_version: Option<u64>,
    /// Highest telemetry seq the server acknowledged, as far as the agent knows.
    #[serde(default)]
    pub last_acked_seq: Option<u64>,
    /// Highest order counter the agent accepted (so a restored server database can catch up).
    #[serde(default)]
    pub last_order_counter: Option<u64>,
    /// Protocol 2: the telemetry stream the agent's queue belongs to (made when the queue was
    /// created; a new one after the queue was lost or reset, whose seqs start again at 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

/// A device as the agent found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDescriptor {
    /// Stable id.
    pub device_id: DeviceId,
    /// `cpu`, `gpu`, `usb_asic`, `lan_asic`.
    pub kind: String,
    /// Model name.
    pub model: String,
    /// Algorithm ids it can mine.
    #[serde(default)]
    pub algorithms: Vec<String>,
}

/// `auth`: the Ed25519 signature over [`crate::signing::auth_signing_bytes`], hex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// 64 bytes, hex.
    pub signature: String,
}

/// `telemetry`: samples of one rig, in increasing `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The rig.
    pub rig_id: RigId,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Protocol 2: the stream the seqs belong to (absent: the rig's legacy stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// Protocol 2: every seq up to this one that the server has not acknowledged was dropped
    /// by the agent (its queue overflowed) and will never be sent, so the server's
    /// acknowledgement may move past them (they are counted as lost, not as stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_through: Option<u64>,
}

/// `config_applied`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigApplied {
    /// The rig.
    pub rig_id: RigId,
    /// The config version this answers.
    pub version: u64,
    /// Its content hash as the agent computed it.
    pub content_hash: String,
    /// Whether it is now running.
    pub ok: bool,
    /// Why not, when not.
    #[serde(default)]
    pub error: Option<String>,
}

/// `command_result`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The rig.
    pub rig_id: RigId,
    /// The command answered.
    pub command_id: CommandId,
    /// Whether it succeeded.
    pub ok: bool,
    /// Output or error text (bounded).
    #[serde(default)]
    pub output: String,
}

/// How bad an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Routine.
    Info,
    /// Needs a look.
    Warning,
    /// Something failed.
    Error,
}

/// `event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The rig.
    pub rig_id: RigId,
    /// When, by the agent's clock.
    pub time_unix_ms: i64,
    /// How bad.
    pub severity: Severity,
    /// A short machine-readable kind (`pool_switch`, `device_restarted`, `order_refused`…).
    pub kind: String,
    /// Human-readable text.
    pub message: String,
}

/// The highest telemetry seq (the databases store seqs as signed 64-bit integers).
pub const MAX_SEQ: u64 = i64::MAX as u64;
/// Longest telemetry stream id.
pub const MAX_STREAM_ID_LEN: usize = 64;

/// A stream id is 1 to 64 characters of `[A-Za-z0-9_-]` (agents make 32 hex digits).
pub fn validate_stream_id(field: &'static str, id: &str) -> Result<(), ProtoError> {
    if id.is_empty()
        || id.len() > MAX_STREAM_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProtoError::invalid(
            field,
            "1 to 64 characters of A-Z, a-z, 0-9, - and _",
        ));
    }
    Ok(())
}

impl AgentMessage {
    /// Checks every limit of the message.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            AgentMessage::Hello(h) => {
                h.agent_id.validate("agent_id")?;
                check_len("agent_version", &h.agent_version, MAX_NAME_LEN)?;
                check_len("hostname", &h.hostname, MAX_NAME_LEN)?;
                if h.protocol_min > h.protocol_max {
                    return Err(ProtoError::invalid("protocol_min", "above protocol_max"));
                }
                if h.rigs.is_empty() {
                    return Err(ProtoError::invalid(
                        "rigs",
                        "an agent fronts at least one rig",
                    ));
                }
                check_count("rigs", &h.rigs, MAX_RIGS_PER_AGENT)?;
                if let Some(n) = &h.nonce {
                    if decode_hex_array::<32>(n).is_none() {
                        return Err(ProtoError::invalid("nonce", "not 32 hex bytes"));
                    }
                }
                for r in &h.rigs {
                    r.rig_id.validate("rigs.rig_id")?;
                    if let Some(stream) = &r.stream_id {
                        validate_stream_id("rigs.stream_id", stream)?;
                    }
                    check_count("rigs.devices", &r.devices, MAX_DEVICES_PER_RIG)?;
                    for d in &r.devices {
                        d.device_id.validate("devices.device_id")?;
                        check_len("devices.kind", &d.kind, MAX_NAME_LEN)?;
                        check_len("devices.model", &d.model, MAX_NAME_LEN)?;
                        check_count("devices.algorithms", &d.algorithms, 64)?;
                        for a in &d.algorithms {
                            check_len("devices.algorithms", a, MAX_NAME_LEN)?;
                        }
                    }
                }
                Ok(())
            }
            AgentMessage::Auth(a) => decode_hex_array::<64>(&a.signature)
                .map(|_| ())
                .ok_or_else(|| ProtoError::invalid("signature", "not 64 hex bytes")),
            AgentMessage::Telemetry(t) => {
                t.rig_id.validate("rig_id")?;
                if t.samples.is_empty() {
                    return Err(ProtoError::invalid("samples", "empty batch"));
                }
                check_count("samples", &t.samples, MAX_SAMPLES_PER_BATCH)?;
                for pair in t.samples.windows(2) {
                    if pair[1].seq <= pair[0].seq {
                        return Err(ProtoError::invalid("samples", "seq must increase"));
                    }
                }
                // Seqs start at 1 (0 is "nothing yet" in acks) and fit the databases' BIGINT.
                if t.samples.iter().any(|s| s.seq == 0 || s.seq > MAX_SEQ) {
                    return Err(ProtoError::invalid("samples.seq", "must be 1 to 2^63-1"));
                }
                if t.dropped_through.is_some_and(|d| d > MAX_SEQ) {
                    return Err(ProtoError::invalid("dropped_through", "above 2^63-1"));
                }
                if let Some(stream) = &t.stream_id {
                    validate_stream_id("stream_id", stream)?;
                }
                t.samples.iter().try_for_each(Sample::validate)
            }
            AgentMessage::ConfigApplied(c) => {
                c.rig_id.validate("rig_id")?;
                check_len("content_hash", &c.content_hash, 64)?;
                check_len("error", c.error.as_deref().unwrap_or(""), MAX_TEXT_LEN)
            }
            AgentMessage::CommandResult(c) => {
                c.rig_id.validate("rig_id")?;
                c.command_id.validate("command_id")?;
                check_len("output", &c.output, MAX_TEXT_LEN)
            }
            AgentMessage::Event(e) => {
                e.rig_id.validate("rig_id")?;
                check_len("kind", &e.kind, MAX_NAME_LEN)?;
                check_len("message", &e.message, MAX_TEXT_LEN)
            }
        }
    }

    /// The rig a message concerns, for messages about one rig.
    pub fn rig_id(&self) -> Option<&RigId> {
        match self {
            AgentMessage::Hello(_) | AgentMessage::Auth(_) => None,
            AgentMessage::Telemetry(t) => Some(&t.rig_id),
            AgentMessage::ConfigApplied(c) => Some(&c.rig_id),
            AgentMessage::CommandResult(c) => Some(&c.rig_id),
            AgentMessage::Event(e) => Some(&e.rig_id),
        }
    }
}
