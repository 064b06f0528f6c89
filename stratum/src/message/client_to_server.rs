//! Requests a miner sends to a pool.

use serde_json::{json, Value};

use super::{difficulty_param, hex_param, params_array, str_param, u32_hex_param};
use crate::error::MessageError;

/// BIP 310 version-rolling negotiation parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRollingRequest {
    /// Bits the miner would like to roll.
    pub mask: u32,
    /// Fewest bits the miner needs.
    pub min_bit_count: u32,
}

/// `mining.submit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// Worker name as authorized.
    pub worker: String,
    /// The job the share belongs to.
    pub job_id: String,
    /// The extranonce2 bytes used in the coinbase.
    pub extranonce2: Vec<u8>,
    /// nTime of the header.
    pub ntime: u32,
    /// The nonce.
    pub nonce: u32,
    /// With version rolling: the rolled bits (BIP 310: the header version is
    /// `(job_version & !mask) | (version_bits & mask)`).
    pub version_bits: Option<u32>,
}

/// Every request a miner sends.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientRequest {
    /// `mining.subscribe [user_agent, session_id?]`.
    Subscribe {
        /// `rigfleet/<version>`.
        user_agent: String,
        /// The extranonce1 of a previous session, to resume it.
        session_id: Option<String>,
    },
    /// `mining.authorize [user, password]`.
    Authorize {
        /// Wallet or account, usually `ACCOUNT.worker`.
        user: String,
        /// Often `x`; some pools read options from it.
        password: String,
    },
    /// `mining.configure [[extensions], {params}]` (BIP 310).
    Configure {
        /// Version rolling, when asked for.
        version_rolling: Option<VersionRollingRequest>,
    },
    /// `mining.extranonce.subscribe []`.
    ExtranonceSubscribe,
    /// `mining.suggest_difficulty [difficulty]`.
    SuggestDifficulty(f64),
    /// `mining.submit [worker, job_id, extranonce2, ntime, nonce, version_bits?]`.
    Submit(Submit),
}

impl ClientRequest {
    /// The method name.
    pub fn method(&self) -> &'static str {
        match self {
            ClientRequest::Subscribe { .. } => "mining.subscribe",
            ClientRequest::Authorize { .. } => "mining.authorize",
            ClientRequest::Configure { .. } => "mining.configure",
            ClientRequest::ExtranonceSubscribe => "mining.extranonce.subscribe",
            ClientRequest::SuggestDifficulty(_) => "mining.suggest_difficulty",
            ClientRequest::Submit(_) => "mining.submit",
        }
    }

    /// The params array as sent.
    pub fn params(&self) -> Value {
        match self {
            ClientRequest::Subscribe {
                user_agent,
                session_id,
            } => match session_id {
                Some(s) => json!([user_agent, s]),
                None => json!([user_agent]),
            },
            ClientRequest::Authorize { user, password } => json!([user, password]),
            ClientRequest::Configure { version_rolling } => match version_rolling {
                Some(v) => json!([
                    ["version-rolling"],
                    {
                        "version-rolling.mask": format!("{:08x}", v.mask),
                        "version-rolling.min-bit-count": v.min_bit_count
                    }
                ]),
                None => json!([[], {}]),
            },
            ClientRequest::ExtranonceSubscribe => json!([]),
            ClientRequest::SuggestDifficulty(d) => json!([d]),
            ClientRequest::Submit(s) => {
                let mut p = vec![
                    json!(s.worker),
                    json!(s.job_id),
                    json!(rigfleet_engine::hex::encode(&s.extranonce2)),
                    json!(format!("{:08x}", s.ntime)),
                    json!(format!("{:08x}", s.nonce)),
                ];
                if let Some(v) = s.version_bits {
                    p.push(json!(format!("{v:08x}")));
                }
                Value::Array(p)
            }
        }
    }

    /// The request as one line (no newline).
    pub fn to_line(&self, id: u64) -> String {
        super::Frame::request(json!(id), self.method(), self.params())
    }

    /// Parses a request received by a pool.
    pub fn parse(method: &str, params: &Value) -> Result<Self, MessageError> {
        match method {
            "mining.subscribe" => {
                let m = "mining.subscribe";
                let p = params_array(params, m)?;
                Ok(ClientRequest::Subscribe {
                    user_agent: p.first().and_then(Value::as_str).unwrap_or("").to_string(),
                    session_id: p.get(1).and_then(Value::as_str).map(str::to_string),
                })
            }
            "mining.authorize" => {
                let m = "mining.authorize";
                let p = params_array(params, m)?;
                Ok(ClientRequest::Authorize {
                    user: str_param(p, 0, m, "user")?.to_string(),
                    password: p.get(1).and_then(Value::as_str).unwrap_or("").to_string(),
                })
            }
            "mining.configure" => {
                let m = "mining.configure";
                let p = params_array(params, m)?;
                let names = p
                    .first()
                    .and_then(Value::as_array)
                    .ok_or_else(|| MessageError::params(m, "extension list missing"))?;
                let wants_rolling = names.iter().any(|n| n.as_str() == Some("version-rolling"));
                let version_rolling = if wants_rolling {
                    let opts = p.get(1).and_then(Value::as_object);
                    let mask = opts
                        .and_then(|o| o.get("version-rolling.mask"))
                        .and_then(Value::as_str)
                        .map(|s| u32::from_str_radix(s, 16))
                        .transpose()
                        .map_err(|_| MessageError::params(m, "version-rolling.mask is not hex"))?
                        .unwrap_or(u32::MAX);
                    let min_bit_count = opts
                        .and_then(|o| o.get("version-rolling.min-bit-count"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .min(32) as u32;
                    Some(VersionRollingRequest {
                        mask,
                        min_bit_count,
                    })
                } else {
                    None
                };
                Ok(ClientRequest::Configure { version_rolling })
            }
            "mining.extranonce.subscribe" => Ok(ClientRequest::ExtranonceSubscribe),
            "mining.suggest_difficulty" => Ok(ClientRequest::SuggestDifficulty(difficulty_param(
                params,
                "mining.suggest_difficulty",
            )?)),
            "mining.submit" => {
                let m = "mining.submit";
                let p = params_array(params, m)?;
                let version_bits = match p.get(5) {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(u32_hex_param(p, 5, m, "version bits")?),
                };
                Ok(ClientRequest::Submit(Submit {
                    worker: str_param(p, 0, m, "worker")?.to_string(),
                    job_id: str_param(p, 1, m, "job id")?.to_string(),
                    extranonce2: hex_param(p, 2, m, "extranonce2")?,
                    ntime: u32_hex_param(p, 3, m, "ntime")?,
                    nonce: u32_hex_param(p, 4, m, "nonce")?,
                    version_bits,
                }))
            }
            other => Err(MessageError::UnknownMethod(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Frame;

    fn round_trip(req: ClientRequest) {
        let line = req.to_line(7);
        let Frame::Request { method, params, .. } = Frame::parse(&line).unwrap() else {
            panic!("not a request: {line}");
        };
        assert_eq!(
            ClientRequest::parse(&method, &params).unwrap(),
            req,
            "{line}"
        );
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(ClientRequest::Subscribe {
            user_agent: "rigfleet/0.1.0".into(),
            session_id: Some("deadbeef".into()),
        });
        round_trip(ClientRequest::Authorize {
            user: "wallet.rig1".into(),
            password: "x".into(),
        });
        round_trip(ClientRequest::Configure {
            version_rolling: Some(VersionRollingRequest {
                mask: 0x1fffe000,
                min_bit_count: 2,
            }),
        });
        round_trip(ClientRequest::ExtranonceSubscribe);
        round_trip(ClientRequest::SuggestDifficulty(0.5));
        round_trip(ClientRequest::Submit(Submit {
            worker: "w".into(),
            job_id: "1a".into(),
            extranonce2: vec![0, 0, 0, 1],
            ntime: 0x504e86ed,
            nonce: 0xb2957c02,
            version_bits: Some(0x00004000),
        }));
    }

    #[test]
    fn submit_params_have_the_wire_format_pools_expect() {
        let req = ClientRequest::Submit(Submit {
            worker: "slush.miner1".into(),
            job_id: "bf".into(),
            extranonce2: vec![0, 0, 0, 1],
            ntime: 0x504e86ed,
            nonce: 0xb2957c02,
            version_bits: None,
        });
        // The submit example of the Stratum V1 documentation (slush pool, "mining.submit").
        assert_eq!(
            req.params(),
            json!(["slush.miner1", "bf", "00000001", "504e86ed", "b2957c02"])
        );
    }

    #[test]
    fn malformed_submits_are_errors_not_panics() {
        for params in [
            json!([]),
            json!(["w", "j", "zz", "504e86ed", "b2957c02"]),
            json!(["w", "j", "00", "504e86ed1", "b2957c02"]),
            json!(["w", "j", "00", "504e86ed", 5]),
            json!(["w", "j", "00", "504e86ed", "b2957c02", "nothex"]),
            json!({"a": 1}),
        ] {
            assert!(
                ClientRequest::parse("mining.submit", &params).is_err(),
                "{params}"
            );
        }
        assert!(matches!(
            ClientRequest::parse("mining.bogus", &json!([])),
            Err(MessageError::UnknownMethod(_))
        ));
    }
}
