//! Stratum V1 messages: the JSON-RPC envelope, and typed messages split by direction.
//!
//! Stratum is JSON-RPC 1.0-ish over newline-delimited JSON: requests carry `id`, `method` and
//! `params`; responses carry `id`, `result` and `error`; notifications are requests with a null
//! id. Pools differ in small ways (error as an array `[code, message, traceback]` or an object,
//! missing `params`), and every variant seen in the wild is accepted here.

pub mod client_to_server;
pub mod server_to_client;

use serde_json::{json, Value};

use crate::error::MessageError;

pub use client_to_server::{ClientRequest, Submit, VersionRollingRequest};
pub use server_to_client::{ConfigureResult, Notify, ServerMessage, SubscribeResult};

/// One decoded line.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A request or notification (`id` is null for notifications).
    Request {
        /// Request id as sent (number, string or null).
        id: Value,
        /// Method name.
        method: String,
        /// Parameters (an empty array when absent).
        params: Value,
    },
    /// A response to one of our requests.
    Response {
        /// The id of the request it answers.
        id: Value,
        /// The result (null on error).
        result: Value,
        /// The error, if any.
        error: Option<StratumError>,
    },
}

impl Frame {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Frame, MessageError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| MessageError::NotJson(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(MessageError::NotJsonRpc);
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(MessageError::NotJsonRpc);
            };
            let params = match obj.remove("params") {
                None | Some(Value::Null) => Value::Array(Vec::new()),
                Some(p) => p,
            };
            return Ok(Frame::Request { id, method, params });
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            let result = obj.remove("result").unwrap_or(Value::Null);
            let error = match obj.remove("error") {
                None | Some(Value::Null) => None,
                Some(e) => Some(StratumError::from_value(&e)),
            };
            return Ok(Frame::Response { id, result, error });
        }
        Err(MessageError::NotJsonRpc)
    }

    /// A request line (without the newline).
    pub fn request(id: Value, method: &str, params: Value) -> String {
        json!({"id": id, "method": method, "params": params}).to_string()
    }

    /// A success response line.
    pub fn ok(id: Value, result: Value) -> String {
        json!({"id": id, "result": result, "error": null}).to_string()
    }

    /// An error response line, in the `[code, message, null]` form most pools and miners use.
    pub fn err(id: Value, error: &StratumError) -> String {
        json!({"id": id, "result": null, "error": [error.code, error.message, null]}).to_string()
    }
}

/// An error a pool returns, with the codes of the Stratum V1 convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StratumError {
    /// Numeric code (20–25 are the conventional share errors).
    pub code: i64,
    /// Human-readable reason.
    pub message: String,
}

impl StratumError {
    /// 20: any other reason.
    pub const OTHER: i64 = 20;
    /// 21: job not found (stale).
    pub const JOB_NOT_FOUND: i64 = 21;
    /// 22: duplicate share.
    pub const DUPLICATE: i64 = 22;
    /// 23: share above target.
    pub const LOW_DIFFICULTY: i64 = 23;
    /// 24: unauthorized worker.
    pub const UNAUTHORIZED: i64 = 24;
    /// 25: not subscribed.
    pub const NOT_SUBSCRIBED: i64 = 25;

    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Reads `[code, message, traceback]`, `{"code":…, "message":…}` or a bare string.
    pub fn from_value(v: &Value) -> Self {
        match v {
            Value::Array(a) => Self {
                code: a.first().and_then(Value::as_i64).unwrap_or(Self::OTHER),
                message: a
                    .get(1)
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string(),
            },
            Value::Object(o) => Self {
                code: o.get("code").and_then(Value::as_i64).unwrap_or(Self::OTHER),
                message: o
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string(),
            },
            Value::String(s) => Self::new(Self::OTHER, s.clone()),
            other => Self::new(Self::OTHER, other.to_string()),
        }
    }
}

impl std::fmt::Display for StratumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Parses a hex string of any even length from a params array element.
pub(crate) fn hex_param(
    params: &[Value],
    index: usize,
    method: &'static str,
    what: &str,
) -> Result<Vec<u8>, MessageError> {
    let s = str_param(params, index, method, what)?;
    rigfleet_engine::hex::decode(s)
        .map_err(|_| MessageError::params(method, format!("{what} is not hex")))
}

/// A string element of a params array.
pub(crate) fn str_param<'a>(
    params: &'a [Value],
    index: usize,
    method: &'static str,
    what: &str,
) -> Result<&'a str, MessageError> {
    params.get(index).and_then(Value::as_str).ok_or_else(|| {
        MessageError::params(
            method,
            format!("{what} (param {index}) missing or not a string"),
        )
    })
}

/// A big-endian 32-bit number sent as 8 hex digits (version, nbits, ntime, nonce).
pub(crate) fn u32_hex_param(
    params: &[Value],
    index: usize,
    method: &'static str,
    what: &str,
) -> Result<u32, MessageError> {
    let s = str_param(params, index, method, what)?;
    if s.is_empty() || s.len() > 8 {
        return Err(MessageError::params(
            method,
            format!("{what} is not 1 to 8 hex digits"),
        ));
    }
    u32::from_str_radix(s, 16)
        .map_err(|_| MessageError::params(method, format!("{what} is not hex")))
}

/// The first param as a finite, positive difficulty.
pub(crate) fn difficulty_param(params: &Value, method: &'static str) -> Result<f64, MessageError> {
    params_array(params, method)?
        .first()
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| MessageError::params(method, "difficulty must be a positive number"))
}

/// The params as an array (a missing or null params is an empty array).
pub(crate) fn params_array<'a>(
    params: &'a Value,
    method: &'static str,
) -> Result<&'a [Value], MessageError> {
    params
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| MessageError::params(method, "params is not an array"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_responses_and_notifications() {
        let f = Frame::parse(r#"{"id":1,"method":"mining.subscribe","params":["x"]}"#).unwrap();
        assert_eq!(
            f,
            Frame::Request {
                id: json!(1),
                method: "mining.subscribe".into(),
                params: json!(["x"])
            }
        );
        let f = Frame::parse(r#"{"id":null,"method":"mining.set_difficulty"}"#).unwrap();
        assert!(matches!(f, Frame::Request { params, .. } if params == json!([])));
        let f = Frame::parse(r#"{"id":4,"result":null,"error":[23,"Low difficulty share",null]}"#)
            .unwrap();
        assert_eq!(
            f,
            Frame::Response {
                id: json!(4),
                result: Value::Null,
                error: Some(StratumError::new(23, "Low difficulty share"))
            }
        );
        let f = Frame::parse(r#"{"id":"a","result":true}"#).unwrap();
        assert!(matches!(f, Frame::Response { error: None, .. }));
        let f = Frame::parse(r#"{"id":5,"result":false,"error":{"code":21,"message":"Stale"}}"#)
            .unwrap();
        assert!(matches!(f, Frame::Response { error: Some(e), .. } if e.code == 21));
    }

    #[test]
    fn rejects_non_json_rpc() {
        assert!(matches!(
            Frame::parse("nope"),
            Err(MessageError::NotJson(_))
        ));
        assert_eq!(Frame::parse("[1,2]"), Err(MessageError::NotJsonRpc));
        assert_eq!(Frame::parse(r#"{"id":1}"#), Err(MessageError::NotJsonRpc));
        assert_eq!(
            Frame::parse(r#"{"id":1,"method":7}"#),
            Err(MessageError::NotJsonRpc)
        );
    }

    #[test]
    fn error_lines_round_trip() {
        let line = Frame::err(json!(9), &StratumError::new(22, "Duplicate share"));
        assert_eq!(
            Frame::parse(&line).unwrap(),
            Frame::Response {
                id: json!(9),
                result: Value::Null,
                error: Some(StratumError::new(22, "Duplicate share"))
            }
        );
    }

    /// Replays the shared fuzz corpus (`fuzz/corpus/decode_frames`): parsing any of it as a
    /// Stratum line must give a value or an error, never a panic.
    #[test]
    fn fuzz_corpus_replays_without_panics() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode_frames");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            count += 1;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Ok(Frame::Request { method, params, .. }) = Frame::parse(text) {
                let _ = ClientRequest::parse(&method, &params);
                let _ = ServerMessage::parse(&method, &params);
            }
        }
        assert!(count > 0);
    }
}
