//! What a pool sends a miner: notifications and requests (by method), and the results of the
//! miner's requests.

use serde_json::{json, Value};

use super::{difficulty_param, hex_param, params_array, str_param, u32_hex_param};
use crate::error::MessageError;
use rigfleet_engine::hex;

/// Most merkle branch entries accepted: 2^32 transactions would need 32, so more is garbage.
pub const MAX_MERKLE_BRANCH: usize = 32;
/// Largest extranonce2 size accepted, in bytes.
pub const MAX_EXTRANONCE2_SIZE: usize = 16;
/// Largest extranonce1 accepted, in bytes.
pub const MAX_EXTRANONCE1_SIZE: usize = 32;

/// `mining.notify`: a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Pool's job id.
    pub job_id: String,
    /// Previous block hash exactly as sent: the header's 32 bytes with each 4-byte word
    /// byte-swapped (see [`crate::job::prevhash_to_header`]).
    pub prevhash: [u8; 32],
    /// Coinbase part before extranonce1.
    pub coinb1: Vec<u8>,
    /// Coinbase part after extranonce2.
    pub coinb2: Vec<u8>,
    /// Merkle branch hashes, in internal byte order.
    pub merkle_branch: Vec<[u8; 32]>,
    /// nVersion.
    pub version: u32,
    /// nBits.
    pub nbits: u32,
    /// nTime.
    pub ntime: u32,
    /// Whether earlier jobs are void.
    pub clean_jobs: bool,
}

impl Notify {
    /// Parses the nine params.
    pub fn parse(params: &Value) -> Result<Self, MessageError> {
        let m = "mining.notify";
        let p = params_array(params, m)?;
        if p.len() < 9 {
            return Err(MessageError::params(
                m,
                format!("9 params expected, got {}", p.len()),
            ));
        }
        let prevhash: [u8; 32] = hex_param(p, 1, m, "prevhash")?
            .try_into()
            .map_err(|_| MessageError::params(m, "prevhash is not 32 bytes"))?;
        let branch = p[4]
            .as_array()
            .ok_or_else(|| MessageError::params(m, "merkle branch is not an array"))?;
        if branch.len() > MAX_MERKLE_BRANCH {
            return Err(MessageError::params(m, "merkle branch too long"));
        }
        let merkle_branch = branch
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|s| hex::decode_array::<32>(s).ok())
                    .ok_or_else(|| {
                        MessageError::params(m, "merkle branch entry is not 32 hex bytes")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let clean_jobs = p[8]
            .as_bool()
            .ok_or_else(|| MessageError::params(m, "clean_jobs is not a boolean"))?;
        Ok(Notify {
            job_id: str_param(p, 0, m, "job id")?.to_string(),
            prevhash,
            coinb1: hex_param(p, 2, m, "coinb1")?,
            coinb2: hex_param(p, 3, m, "coinb2")?,
            merkle_branch,
            version: u32_hex_param(p, 5, m, "version")?,
            nbits: u32_hex_param(p, 6, m, "nbits")?,
            ntime: u32_hex_param(p, 7, m, "ntime")?,
            clean_jobs,
        })
    }

    /// The nine params as sent.
    pub fn params(&self) -> Value {
        json!([
            self.job_id,
            hex::encode(&self.prevhash),
            hex::encode(&self.coinb1),
            hex::encode(&self.coinb2),
            self.merkle_branch
                .iter()
                .map(|h| hex::encode(h))
                .collect::<Vec<_>>(),
            format!("{:08x}", self.version),
            format!("{:08x}", self.nbits),
            format!("{:08x}", self.ntime),
            self.clean_jobs,
        ])
    }
}

/// Notifications and requests from the pool.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// A new job.
    Notify(Notify),
    /// Share difficulty for the next jobs.
    SetDifficulty(f64),
    /// New extranonce1 and extranonce2 size (after `mining.extranonce.subscribe`).
    SetExtranonce {
        /// New extranonce1.
        extranonce1: Vec<u8>,
        /// New extranonce2 size.
        extranonce2_size: usize,
    },
    /// New version-rolling mask (BIP 310 `mining.set_version_mask`).
    SetVersionMask(u32),
    /// Reconnect, to another host/port if given, after `wait_secs`.
    Reconnect {
        /// New host, or the same.
        host: Option<String>,
        /// New port, or the same.
        port: Option<u16>,
        /// Seconds to wait first.
        wait_secs: u64,
    },
    /// A message for the operator.
    ShowMessage(String),
    /// The pool asks for our version (a request: it has an id and wants an answer).
    GetVersion,
}

impl ServerMessage {
    /// Parses a notification or request by method.
    pub fn parse(method: &str, params: &Value) -> Result<Self, MessageError> {
        match method {
            "mining.notify" => Ok(ServerMessage::Notify(Notify::parse(params)?)),
            "mining.set_difficulty" => Ok(ServerMessage::SetDifficulty(difficulty_param(
                params,
                "mining.set_difficulty",
            )?)),
            "mining.set_extranonce" => {
                let m = "mining.set_extranonce";
                let p = params_array(params, m)?;
                let extranonce1 = hex_param(p, 0, m, "extranonce1")?;
                if extranonce1.len() > MAX_EXTRANONCE1_SIZE {
                    return Err(MessageError::params(m, "extranonce1 too long"));
                }
                let size = p
                    .get(1)
                    .and_then(Value::as_u64)
                    .filter(|&s| (1..=MAX_EXTRANONCE2_SIZE as u64).contains(&s))
                    .ok_or_else(|| MessageError::params(m, "extranonce2 size must be 1 to 16"))?;
                Ok(ServerMessage::SetExtranonce {
                    extranonce1,
                    extranonce2_size: size as usize,
                })
            }
            "mining.set_version_mask" => {
                let m = "mining.set_version_mask";
                let p = params_array(params, m)?;
                Ok(ServerMessage::SetVersionMask(u32_hex_param(
                    p, 0, m, "mask",
                )?))
            }
            "client.reconnect" => {
                let m = "client.reconnect";
                let p = params_array(params, m)?;
                let host = p
                    .first()
                    .and_then(Value::as_str)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string);
                let port = match p.get(1) {
                    Some(Value::Number(n)) => n.as_u64().and_then(|v| u16::try_from(v).ok()),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                let wait_secs = match p.get(2) {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                    Some(Value::String(s)) => s.parse().unwrap_or(0),
                    _ => 0,
                }
                .min(3600);
                Ok(ServerMessage::Reconnect {
                    host,
                    port,
                    wait_secs,
                })
            }
            "client.show_message" => {
                let p = params_array(params, "client.show_message")?;
                let text = p.first().and_then(Value::as_str).unwrap_or("");
                // Pool text ends up in logs and the dashboard: bound it.
                Ok(ServerMessage::ShowMessage(text.chars().take(512).collect()))
            }
            "client.get_version" => Ok(ServerMessage::GetVersion),
            other => Err(MessageError::UnknownMethod(other.to_string())),
        }
    }

    /// Method name and params, for the pool side.
    pub fn method_and_params(&self) -> (&'static str, Value) {
        match self {
            ServerMessage::Notify(n) => ("mining.notify", n.params()),
            ServerMessage::SetDifficulty(d) => ("mining.set_difficulty", json!([d])),
            ServerMessage::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => (
                "mining.set_extranonce",
                json!([hex::encode(extranonce1), extranonce2_size]),
            ),
            ServerMessage::SetVersionMask(m) => {
                ("mining.set_version_mask", json!([format!("{m:08x}")]))
            }
            ServerMessage::Reconnect {
                host,
                port,
                wait_secs,
            } => ("client.reconnect", json!([host, port, wait_secs])),
            ServerMessage::ShowMessage(s) => ("client.show_message", json!([s])),
            ServerMessage::GetVersion => ("client.get_version", json!([])),
        }
    }

    /// The message as a notification line (null id).
    pub fn to_line(&self) -> String {
        let (method, params) = self.method_and_params();
        super::Frame::request(Value::Null, method, params)
    }
}

/// Result of `mining.subscribe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeResult {
    /// `(method, subscription id)` pairs; the id of `mining.notify` doubles as the session id
    /// some pools accept for resuming.
    pub subscriptions: Vec<(String, String)>,
    /// Extranonce1 assigned to this connection.
    pub extranonce1: Vec<u8>,
    /// Bytes of extranonce2 the miner fills in.
    pub extranonce2_size: usize,
}

impl SubscribeResult {
    /// Parses `[[["mining.notify","id"],…], "extranonce1", size]`; a single pair instead of a
    /// list of pairs is accepted too (some pools send it).
    pub fn parse(result: &Value) -> Result<Self, MessageError> {
        let m = "mining.subscribe";
        let a = result.as_array().filter(|a| a.len() >= 3).ok_or_else(|| {
            MessageError::result(m, "expected [subscriptions, extranonce1, size]")
        })?;
        let mut subscriptions = Vec::new();
        if let Some(list) = a[0].as_array() {
            let pairs: Vec<&Value> = if list.first().is_some_and(Value::is_string) {
                vec![&a[0]]
            } else {
                list.iter().collect()
            };
            for pair in pairs {
                if let Some([Value::String(method), Value::String(id)]) =
                    pair.as_array().map(Vec::as_slice)
                {
                    subscriptions.push((method.clone(), id.clone()));
                }
            }
        }
        let extranonce1 = a[1]
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .filter(|e| e.len() <= MAX_EXTRANONCE1_SIZE)
            .ok_or_else(|| MessageError::result(m, "extranonce1 is not hex of at most 32 bytes"))?;
        let extranonce2_size = a[2]
            .as_u64()
            .filter(|&s| (1..=MAX_EXTRANONCE2_SIZE as u64).contains(&s))
            .ok_or_else(|| MessageError::result(m, "extranonce2 size must be 1 to 16"))?
            as usize;
        Ok(Self {
            subscriptions,
            extranonce1,
            extranonce2_size,
        })
    }

    /// The result value, for the pool side.
    pub fn to_value(&self) -> Value {
        json!([
            self.subscriptions
                .iter()
                .map(|(m, i)| json!([m, i]))
                .collect::<Vec<_>>(),
            hex::encode(&self.extranonce1),
            self.extranonce2_size
        ])
    }
}

/// Result of `mining.configure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigureResult {
    /// The mask the pool granted, when it accepted version rolling.
    pub version_rolling_mask: Option<u32>,
}

impl ConfigureResult {
    /// Parses `{"version-rolling": true, "version-rolling.mask": "1fffe000"}`.
    pub fn parse(result: &Value) -> Result<Self, MessageError> {
        let m = "mining.configure";
        let obj = result
            .as_object()
            .ok_or_else(|| MessageError::result(m, "not an object"))?;
        let granted = obj
            .get("version-rolling")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mask = if granted {
            let s = obj
                .get("version-rolling.mask")
                .and_then(Value::as_str)
                .ok_or_else(|| MessageError::result(m, "version rolling granted without a mask"))?;
            Some(
                u32::from_str_radix(s, 16)
                    .map_err(|_| MessageError::result(m, "mask is not hex"))?,
            )
        } else {
            None
        };
        Ok(Self {
            version_rolling_mask: mask,
        })
    }

    /// The result value, for the pool side.
    pub fn to_value(&self) -> Value {
        match self.version_rolling_mask {
            Some(mask) => {
                json!({"version-rolling": true, "version-rolling.mask": format!("{mask:08x}")})
            }
            None => json!({"version-rolling": false}),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The `mining.notify` example of the Stratum V1 documentation (slush pool's
    /// "Stratum mining protocol" page).
    pub(crate) fn slush_doc_notify() -> Value {
        json!([
            "bf",
            "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
            "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008",
            "072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000",
            [],
            "00000002",
            "1c2ac4af",
            "504e86b9",
            false
        ])
    }

    #[test]
    fn notify_parses_and_round_trips() {
        let n = Notify::parse(&slush_doc_notify()).unwrap();
        assert_eq!(n.job_id, "bf");
        assert_eq!(n.version, 2);
        assert_eq!(n.nbits, 0x1c2ac4af);
        assert_eq!(n.ntime, 0x504e86b9);
        assert!(!n.clean_jobs);
        assert_eq!(Notify::parse(&n.params()).unwrap(), n);
    }

    #[test]
    fn malformed_notifies_are_errors() {
        let mut short = slush_doc_notify();
        short.as_array_mut().unwrap().pop();
        assert!(Notify::parse(&short).is_err());
        let mut bad_prev = slush_doc_notify();
        bad_prev[1] = json!("00");
        assert!(Notify::parse(&bad_prev).is_err());
        let mut bad_branch = slush_doc_notify();
        bad_branch[4] = json!(["abcd"]);
        assert!(Notify::parse(&bad_branch).is_err());
        let mut bad_clean = slush_doc_notify();
        bad_clean[8] = json!("yes");
        assert!(Notify::parse(&bad_clean).is_err());
    }

    #[test]
    fn subscribe_results_of_several_shapes_parse() {
        // The documentation's example.
        let r = SubscribeResult::parse(&json!([
            [
                ["mining.set_difficulty", "b4b6693b72a50c7116db18d6497cac52"],
                ["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f"]
            ],
            "08000002",
            4
        ]))
        .unwrap();
        assert_eq!(r.extranonce1, vec![8, 0, 0, 2]);
        assert_eq!(r.extranonce2_size, 4);
        assert_eq!(r.subscriptions.len(), 2);
        assert_eq!(SubscribeResult::parse(&r.to_value()).unwrap(), r);
        // A single pair.
        let r = SubscribeResult::parse(&json!([["mining.notify", "1"], "ab", 8])).unwrap();
        assert_eq!(
            r.subscriptions,
            vec![("mining.notify".to_string(), "1".to_string())]
        );
        assert!(SubscribeResult::parse(&json!([[], "ab", 0])).is_err());
        assert!(SubscribeResult::parse(&json!([[], "xyz", 4])).is_err());
        assert!(SubscribeResult::parse(&json!(true)).is_err());
    }

    #[test]
    fn configure_results_parse() {
        let r = ConfigureResult::parse(
            &json!({"version-rolling": true, "version-rolling.mask": "1fffe000"}),
        )
        .unwrap();
        assert_eq!(r.version_rolling_mask, Some(0x1fffe000));
        assert_eq!(ConfigureResult::parse(&r.to_value()).unwrap(), r);
        let r = ConfigureResult::parse(&json!({"version-rolling": false})).unwrap();
        assert_eq!(r.version_rolling_mask, None);
        assert!(ConfigureResult::parse(&json!({"version-rolling": true})).is_err());
    }

    #[test]
    fn notifications_parse_and_reject_garbage() {
        assert_eq!(
            ServerMessage::parse("mining.set_difficulty", &json!([0.001])).unwrap(),
            ServerMessage::SetDifficulty(0.001)
        );
        assert!(ServerMessage::parse("mining.set_difficulty", &json!([-1])).is_err());
        assert!(ServerMessage::parse("mining.set_difficulty", &json!(["x"])).is_err());
        assert_eq!(
            ServerMessage::parse("client.reconnect", &json!(["pool.example", "3334", 5])).unwrap(),
            ServerMessage::Reconnect {
                host: Some("pool.example".into()),
                port: Some(3334),
                wait_secs: 5
            }
        );
        assert_eq!(
            ServerMessage::parse("client.reconnect", &json!([])).unwrap(),
            ServerMessage::Reconnect {
                host: None,
                port: None,
                wait_secs: 0
            }
        );
        assert!(ServerMessage::parse("mining.set_extranonce", &json!(["00", 99])).is_err());
        for msg in [
            ServerMessage::SetDifficulty(2.5),
            ServerMessage::SetExtranonce {
                extranonce1: vec![1, 2],
                extranonce2_size: 4,
            },
            ServerMessage::SetVersionMask(0x1fffe000),
            ServerMessage::ShowMessage("hello".into()),
            ServerMessage::GetVersion,
        ] {
            let (m, p) = msg.method_and_params();
            assert_eq!(ServerMessage::parse(m, &p).unwrap(), msg);
        }
    }
}
