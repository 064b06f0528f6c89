//! Telemetry samples: what a rig and its devices report every interval.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::DeviceId;
use crate::limits::{MAX_DEVICES_PER_RIG, MAX_NAME_LEN, MAX_URL_LEN};
use crate::validate::{check_len, check_number, check_opt_number};

/// One sample of a rig at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Per-rig sequence number, increasing by one per sample and persisted by the agent; the
    /// server deduplicates resent samples by it.
    pub seq: u64,
    /// When the sample was taken, by the agent's clock (the server corrects it with the offset
    /// seen at the handshake).
    pub time_unix_ms: i64,
    /// Whole-rig figures.
    pub rig: RigSample,
    /// Per-device figures.
    #[serde(default)]
    pub devices: Vec<DeviceSample>,
    /// The pool being mined on, if any.
    #[serde(default)]
    pub pool: Option<PoolState>,
}

/// Whole-rig figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RigSample {
    /// Seconds since the rig booted.
    pub uptime_secs: u64,
    /// 1-minute load average.
    #[serde(default)]
    pub load_1m: f64,
    /// Memory in use.
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// Memory installed.
    #[serde(default)]
    pub memory_total_bytes: u64,
}

/// One device's figures. Counters are cumulative since the agent started mining on the current
/// config, so a lost sample loses no shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSample {
    /// Stable device id.
    pub device_id: DeviceId,
    /// Algorithm id being mined (`sha256d`, `scrypt`…).
    pub algorithm: String,
    /// Whether the device is enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Hash rate averaged over 5 s.
    pub hashrate_5s_hps: f64,
    /// Hash rate averaged over 1 min.
    pub hashrate_1m_hps: f64,
    /// Accepted shares.
    #[serde(default)]
    pub accepted: u64,
    /// Rejected shares.
    #[serde(default)]
    pub rejected: u64,
    /// Stale shares.
    #[serde(default)]
    pub stale: u64,
    /// Nonces that did not verify.
    #[serde(default)]
    pub hardware_errors: u64,
    /// Hottest sensor.
    #[serde(default)]
    pub temperature_celsius: Option<f32>,
    /// Fan speed.
    #[serde(default)]
    pub fan_rpm: Option<u32>,
    /// Fan duty.
    #[serde(default)]
    pub fan_percent: Option<f32>,
    /// Power draw.
    #[serde(default)]
    pub power_watts: Option<f32>,
    /// Core clock.
    #[serde(default)]
    pub core_clock_mhz: Option<u32>,
    /// Memory clock.
    #[serde(default)]
    pub memory_clock_mhz: Option<u32>,
}

fn yes() -> bool {
    true
}

/// The pool a rig mines on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolState {
    /// Pool URL.
    pub url: String,
    /// Worker name (a wallet or account; not secret, the password is never sent).
    pub user: String,
    /// `connecting`, `subscribed`, `authorized`, `mining`, `failed`.
    pub state: String,
    /// Current share difficulty.
    #[serde(default)]
    pub difficulty: f64,
    /// Position in the config's pool list.
    #[serde(default)]
    pub priority: u32,
}

impl Sample {
    /// Checks bounds and numbers.
    pub fn validate(&self) -> Result<(), ProtoError> {
        check_number("rig.load_1m", self.rig.load_1m)?;
        if self.devices.len() > MAX_DEVICES_PER_RIG {
            return Err(ProtoError::invalid(
                "devices",
                format!("more than {MAX_DEVICES_PER_RIG}"),
            ));
        }
        for d in &self.devices {
            d.device_id.validate("device_id")?;
            check_len("algorithm", &d.algorithm, MAX_NAME_LEN)?;
            check_number("hashrate_5s_hps", d.hashrate_5s_hps)?;
            check_number("hashrate_1m_hps", d.hashrate_1m_hps)?;
            check_opt_number("temperature_celsius", d.temperature_celsius)?;
            check_opt_number("fan_percent", d.fan_percent)?;
            check_opt_number("power_watts", d.power_watts)?;
        }
        if let Some(p) = &self.pool {
            check_len("pool.url", &p.url, MAX_URL_LEN)?;
            check_len("pool.user", &p.user, MAX_NAME_LEN)?;
            check_len("pool.state", &p.state, MAX_NAME_LEN)?;
            check_number("pool.difficulty", p.difficulty)?;
        }
        Ok(())
    }
}
