//! The desired config of a rig, as the server sends it in `set_config`: what to mine, where, and
//! with which device settings. The local agent file never holds these.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ProtoError;
use crate::ids::DeviceId;
use crate::limits::{MAX_DEVICES_PER_RIG, MAX_NAME_LEN, MAX_POOLS, MAX_URL_LEN};
use crate::validate::{check_count, check_len};

/// What a rig should be doing.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredConfig {
    /// Server-assigned, increasing per rig.
    pub version: u64,
    /// Algorithm id (`sha256d`, `scrypt`…); empty means idle.
    pub algorithm: String,
    /// Pools in priority order (first is preferred).
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
    /// Per-device settings; devices not listed keep their defaults.
    #[serde(default)]
    pub devices: Vec<DeviceSettings>,
    /// Telemetry interval the server wants.
    #[serde(default)]
    pub telemetry_interval_secs: Option<u32>,
}

/// One pool.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// `stratum+tcp://host:port` or `stratum+ssl://host:port`.
    pub url: String,
    /// Wallet or account and worker.
    pub user: String,
    /// Pool password (often `x`; some pools read options from it).
    #[serde(default)]
    pub password: String,
}

/// Settings of one device. The agent clamps them to its local safety bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// Which device.
    pub device_id: DeviceId,
    /// Whether it mines.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Power limit.
    #[serde(default)]
    pub power_limit_watts: Option<u32>,
    /// Core clock.
    #[serde(default)]
    pub core_clock_mhz: Option<u32>,
    /// Memory clock.
    #[serde(default)]
    pub memory_clock_mhz: Option<u32>,
    /// Fan target.
    #[serde(default)]
    pub fan_percent: Option<u8>,
    /// CPU worker threads (CPU device only).
    #[serde(default)]
    pub threads: Option<u32>,
}

fn yes() -> bool {
    true
}

impl DesiredConfig {
    /// SHA-256 (hex) of everything but the version, so that the same content pushed twice has
    /// the same hash. Serialisation is deterministic: struct fields in declaration order, no maps.
    pub fn content_hash(&self) -> String {
        let content = serde_json::json!({
            "algorithm": self.algorithm,
            "pools": self.pools,
            "devices": self.devices,
            "telemetry_interval_secs": self.telemetry_interval_secs,
        });
        let bytes = serde_json::to_vec(&content).expect("BUG: config values always serialise");
        hex(&Sha256::digest(bytes))
    }

    /// Checks limits and fields.
    pub fn validate(&self) -> Result<(), ProtoError> {
        check_len("algorithm", &self.algorithm, MAX_NAME_LEN)?;
        check_count("pools", &self.pools, MAX_POOLS)?;
        check_count("devices", &self.devices, MAX_DEVICES_PER_RIG)?;
        for p in &self.pools {
            check_len("pools.url", &p.url, MAX_URL_LEN)?;
            check_len("pools.user", &p.user, MAX_NAME_LEN)?;
            check_len("pools.password", &p.password, MAX_NAME_LEN)?;
            if p.url.is_empty() || p.user.is_empty() {
                return Err(ProtoError::invalid("pools", "url and user are required"));
            }
            p.url
                .parse::<crate::pool_url::PoolUrl>()
                .map_err(|e| ProtoError::invalid("pools.url", e.to_string()))?;
        }
        for d in &self.devices {
            d.device_id.validate("devices.device_id")?;
            if d.fan_percent.is_some_and(|f| f > 100) {
                return Err(ProtoError::invalid("devices.fan_percent", "above 100"));
            }
        }
        if !self.algorithm.is_empty() && self.pools.is_empty() {
            return Err(ProtoError::invalid(
                "pools",
                "an algorithm needs at least one pool",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PoolSpec {
    /// The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSpec")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl std::fmt::Debug for DesiredConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredConfig")
            .field("version", &self.version)
            .field("algorithm", &self.algorithm)
            .field("pools", &self.pools)
            .field("devices", &self.devices)
            .field("telemetry_interval_secs", &self.telemetry_interval_secs)
            .finish()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DesiredConfig {
        DesiredConfig {
            version: 3,
            algorithm: "sha256d".into(),
            pools: vec![PoolSpec {
                url: "stratum+tcp://127.0.0.1:3333".into(),
                user: "wallet.rig1".into(),
                password: "secret".into(),
            }],
            devices: vec![],
            telemetry_interval_secs: None,
        }
    }

    #[test]
    fn content_hash_ignores_version_and_sees_every_other_change() {
        let a = config();
        let mut b = config();
        b.version = 9;
        assert_eq!(a.content_hash(), b.content_hash());
        b.pools[0].user = "wallet.rig2".into();
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 64);
    }

    #[test]
    fn debug_hides_the_pool_password() {
        let text = format!("{:?}", config());
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn validation_refuses_bad_configs() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.pools.clear();
        assert!(c.validate().is_err());
        let mut c = config();
        c.devices.push(DeviceSettings {
            device_id: "cpu".into(),
            enabled: true,
            power_limit_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
            fan_percent: Some(150),
            threads: None,
        });
        assert!(c.validate().is_err());
        // A pool URL the agent could not dial is refused with the reason, before anyone signs it.
        let mut c = config();
        c.pools[0].url = "pool.example.com:3333".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("pools.url") && err.contains("no scheme"),
            "{err}"
        );
        assert!(serde_json::from_str::<DesiredConfig>(
            r#"{"version":1,"algorithm":"","surprise":1}"#
        )
        .is_err());
    }
}
