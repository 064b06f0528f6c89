//! The desired config of a rig, as the server sends it in `set_config`: what to mine, where, and
//! with which device settings. The local agent file never holds these.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ProtoError;
use crate::ids::DeviceId;
use crate::limits::{MAX_DEVICES_PER_RIG, MAX_NAME_LEN, MAX_POOLS, MAX_URL_LEN};
use crate::validate::check_count;

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

    /// Checks limits and fields; the error names the first problem (see
    /// [`DesiredConfig::field_errors`] for all of them, each with its path).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self.field_errors().into_iter().next() {
            Some(e) => Err(ProtoError::invalid(e.kind, e.message)),
            None => Ok(()),
        }
    }

    /// Every problem of the config, each with the path of its field (`pools[1].url`,
    /// `devices[0].threads`): what the server answers before it stores or signs anything, and
    /// what the agent checks again before it applies.
    pub fn field_errors(&self) -> Vec<ConfigFieldError> {
        let mut out = Vec::new();
        let mut push = |field: String, kind: &'static str, message: String| {
            out.push(ConfigFieldError {
                field,
                kind,
                message,
            })
        };
        let len = |s: &str, max: usize| (s.len() > max).then(|| format!("longer than {max} bytes"));
        if let Some(m) = len(&self.algorithm, MAX_NAME_LEN) {
            push("algorithm".into(), "algorithm", m);
        }
        if let Err(e) = check_count("pools", &self.pools, MAX_POOLS) {
            push("pools".into(), "pools", reason(e));
        }
        if let Err(e) = check_count("devices", &self.devices, MAX_DEVICES_PER_RIG) {
            push("devices".into(), "devices", reason(e));
        }
        for (i, p) in self.pools.iter().enumerate() {
            if let Some(m) = len(&p.url, MAX_URL_LEN) {
                push(format!("pools[{i}].url"), "pools.url", m);
            } else if p.url.is_empty() {
                push(
                    format!("pools[{i}].url"),
                    "pools",
                    "url and user are required".into(),
                );
            } else if let Err(e) = p.url.parse::<crate::pool_url::PoolUrl>() {
                push(format!("pools[{i}].url"), "pools.url", e.to_string());
            }
            if let Some(m) = len(&p.user, MAX_NAME_LEN) {
                push(format!("pools[{i}].user"), "pools.user", m);
            } else if p.user.is_empty() {
                push(
                    format!("pools[{i}].user"),
                    "pools",
                    "url and user are required".into(),
                );
            }
            if let Some(m) = len(&p.password, MAX_NAME_LEN) {
                push(format!("pools[{i}].password"), "pools.password", m);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if let Err(e) = d.device_id.validate("devices.device_id") {
                push(
                    format!("devices[{i}].device_id"),
                    "devices.device_id",
                    reason(e),
                );
            } else if !seen.insert(d.device_id.as_str()) {
                push(
                    format!("devices[{i}].device_id"),
                    "devices.device_id",
                    "listed twice".into(),
                );
            }
            let ranges: [RangeCheck; 5] = [
                (
                    "power_limit_watts",
                    "devices.power_limit_watts",
                    d.power_limit_watts,
                    POWER_LIMIT_WATTS,
                ),
                (
                    "core_clock_mhz",
                    "devices.core_clock_mhz",
                    d.core_clock_mhz,
                    CORE_CLOCK_MHZ,
                ),
                (
                    "memory_clock_mhz",
                    "devices.memory_clock_mhz",
                    d.memory_clock_mhz,
                    MEMORY_CLOCK_MHZ,
                ),
                (
                    "fan_percent",
                    "devices.fan_percent",
                    d.fan_percent.map(u32::from),
                    FAN_PERCENT,
                ),
                ("threads", "devices.threads", d.threads, THREADS),
            ];
            for (name, kind, value, range) in ranges {
                if let Some(m) = out_of(value, range) {
                    push(format!("devices[{i}].{name}"), kind, m);
                }
            }
        }
        if let Some(m) = out_of(self.telemetry_interval_secs, TELEMETRY_INTERVAL_SECS) {
            push(
                "telemetry_interval_secs".into(),
                "telemetry_interval_secs",
                m,
            );
        }
        if !self.algorithm.is_empty() && self.pools.is_empty() {
            push(
                "pools".into(),
                "pools",
                "an algorithm needs at least one pool".into(),
            );
        }
        out
    }
}

/// Allowed power limit of one device (W): a USB stick draws a few watts, a hydro-cooled ASIC
/// several kilowatts.
pub const POWER_LIMIT_WATTS: (u32, u32) = (1, 20_000);
/// Allowed core clock (MHz).
pub const CORE_CLOCK_MHZ: (u32, u32) = (1, 10_000);
/// Allowed memory clock (MHz; some tools give GDDR's effective rate, above 20,000).
pub const MEMORY_CLOCK_MHZ: (u32, u32) = (1, 40_000);
/// Allowed fan target (%).
pub const FAN_PERCENT: (u32, u32) = (0, 100);
/// Allowed CPU worker threads.
pub const THREADS: (u32, u32) = (1, 4_096);
/// Allowed telemetry interval (s), as the server's own setting.
pub const TELEMETRY_INTERVAL_SECS: (u32, u32) = (1, 3_600);

/// A device number's field, its kind, its value and its allowed range.
type RangeCheck = (&'static str, &'static str, Option<u32>, (u32, u32));

fn out_of(value: Option<u32>, (min, max): (u32, u32)) -> Option<String> {
    value
        .filter(|v| !(min..=max).contains(v))
        .map(|v| format!("{v} is out of range: must be {min} to {max}"))
}

fn reason(e: ProtoError) -> String {
    match e {
        ProtoError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// One problem of a desired config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFieldError {
    /// The field's path in the config (`pools[1].url`, `devices[0].threads`).
    pub field: String,
    /// The field without indexes (`pools.url`), as [`ProtoError::Invalid`] names it.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
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

    fn device(f: impl FnOnce(&mut DeviceSettings)) -> DeviceSettings {
        let mut d = DeviceSettings {
            device_id: "cpu".into(),
            enabled: true,
            power_limit_watts: Some(150),
            core_clock_mhz: Some(1500),
            memory_clock_mhz: Some(7000),
            fan_percent: Some(60),
            threads: Some(8),
        };
        f(&mut d);
        d
    }

    #[test]
    fn numbers_out_of_range_are_refused_with_their_field() {
        let mut c = config();
        c.devices.push(device(|_| {}));
        assert_eq!(c.field_errors(), vec![]);
        for (f, field) in [
            (
                Box::new(|d: &mut DeviceSettings| d.threads = Some(0)) as Box<dyn Fn(&mut _)>,
                "devices[1].threads",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.threads = Some(u32::MAX)),
                "devices[1].threads",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.power_limit_watts = Some(0)),
                "devices[1].power_limit_watts",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.power_limit_watts = Some(4_294_967_295)),
                "devices[1].power_limit_watts",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.core_clock_mhz = Some(0)),
                "devices[1].core_clock_mhz",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.memory_clock_mhz = Some(1_000_000)),
                "devices[1].memory_clock_mhz",
            ),
            (
                Box::new(|d: &mut DeviceSettings| d.fan_percent = Some(101)),
                "devices[1].fan_percent",
            ),
        ] {
            let mut c = config();
            c.devices.push(device(|d| d.device_id = "gpu0".into()));
            c.devices.push(device(|d| f(d)));
            let errors = c.field_errors();
            assert_eq!(errors.len(), 1, "{field}: {errors:?}");
            assert_eq!(errors[0].field, field);
            assert!(errors[0].message.contains("out of range"), "{errors:?}");
            assert!(c.validate().is_err());
        }
        for bad in [0, 3601, u32::MAX] {
            let mut c = config();
            c.telemetry_interval_secs = Some(bad);
            let errors = c.field_errors();
            assert_eq!(errors[0].field, "telemetry_interval_secs", "{bad}");
        }
        // Every problem at once, each with its own path.
        let mut c = config();
        c.pools.push(PoolSpec {
            url: "nope".into(),
            user: String::new(),
            password: String::new(),
        });
        c.devices.push(device(|d| d.threads = Some(0)));
        c.devices.push(device(|d| d.fan_percent = Some(200)));
        let fields: Vec<String> = c.field_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "pools[1].url",
                "pools[1].user",
                "devices[0].threads",
                "devices[1].device_id",
                "devices[1].fan_percent"
            ]
        );
    }
}
