//! How a rig's desired config is built: its profile (the rig's own, else its group's), then its
//! group's overrides, then its own overrides. Each is a [`ConfigLayer`] in which every field is
//! optional; a later layer's field replaces an earlier one's (device settings per device id,
//! with `*` standing for every device that has no entry of its own). Pool users may hold
//! `{rig}` and `{group}` so one profile serves many rigs. The built config remembers where each
//! field came from, for the rig page.

use std::collections::BTreeMap;

use rigfleet_proto::config::{DesiredConfig, DeviceSettings, PoolSpec};
use rigfleet_proto::ids::DeviceId;
use serde::{Deserialize, Serialize};

use super::error::{FieldErrors, FleetError};

/// The device id that stands for every device of the rig without an entry of its own.
pub const ALL_DEVICES: &str = "*";

/// One layer of a rig's config. Stored as JSON in profiles, groups and rigs; the shape is a
/// desired config's with every field optional, so a desired config from before layers reads as
/// a complete layer.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigLayer {
    /// What to mine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Pools in priority order (a layer replaces the whole list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<PoolSpec>>,
    /// Device settings by device id (`*` for every device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceSettings>>,
    /// Telemetry interval told to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_interval_secs: Option<u32>,
}

impl std::fmt::Debug for ConfigLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pool passwords stay out of logs.
        f.debug_struct("ConfigLayer")
            .field("algorithm", &self.algorithm)
            .field(
                "pools",
                &self
                    .pools
                    .as_ref()
                    .map(|p| p.iter().map(|p| (&p.url, &p.user)).collect::<Vec<_>>()),
            )
            .field("devices", &self.devices)
            .field("telemetry_interval_secs", &self.telemetry_interval_secs)
            .finish()
    }
}

impl ConfigLayer {
    /// Whether the layer sets nothing.
    pub fn is_empty(&self) -> bool {
        self.algorithm.is_none()
            && self.pools.is_none()
            && self.devices.is_none()
            && self.telemetry_interval_secs.is_none()
    }

    /// The layer that sets everything `config` holds (how a config from before layers, or one
    /// written through `PUT /rigs/{rig}/config`, becomes a rig's overrides).
    pub fn from_config(config: &DesiredConfig) -> ConfigLayer {
        ConfigLayer {
            algorithm: Some(config.algorithm.clone()),
            pools: Some(config.pools.clone()),
            devices: Some(config.devices.clone()),
            telemetry_interval_secs: config.telemetry_interval_secs,
        }
    }

    /// `self` with the fields `over` sets replaced (device entries merged by id).
    pub fn merged(&self, over: &ConfigLayer) -> ConfigLayer {
        let devices = match (&self.devices, &over.devices) {
            (Some(a), Some(b)) => Some(merge_devices(a, b)),
            (a, b) => b.clone().or_else(|| a.clone()),
        };
        ConfigLayer {
            algorithm: over.algorithm.clone().or_else(|| self.algorithm.clone()),
            pools: over.pools.clone().or_else(|| self.pools.clone()),
            devices,
            telemetry_interval_secs: over
                .telemetry_interval_secs
                .or(self.telemetry_interval_secs),
        }
    }

    /// Parses stored JSON (`{}` or empty text is an empty layer).
    pub fn parse(json: &str) -> Result<ConfigLayer, serde_json::Error> {
        if json.trim().is_empty() {
            return Ok(ConfigLayer::default());
        }
        serde_json::from_str(json)
    }
}

fn merge_devices(base: &[DeviceSettings], over: &[DeviceSettings]) -> Vec<DeviceSettings> {
    let mut out: Vec<DeviceSettings> = base.to_vec();
    for d in over {
        match out.iter_mut().find(|x| x.device_id == d.device_id) {
            Some(slot) => *slot = d.clone(),
            None => out.push(d.clone()),
        }
    }
    out
}

/// Where a layer comes from, as the rig page names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Source {
    /// A profile (by name).
    Profile(String),
    /// A group's overrides (by group name).
    Group(String),
    /// The rig's own overrides.
    Rig,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Profile(n) => write!(f, "profile {n}"),
            Source::Group(n) => write!(f, "group {n}"),
            Source::Rig => write!(f, "rig overrides"),
        }
    }
}

/// What a config is built for.
#[derive(Clone, Debug, Default)]
pub struct RigFacts {
    /// The rig's display name (for `{rig}`).
    pub name: String,
    /// Its group (for `{group}`).
    pub group: Option<String>,
    /// Its devices' ids, in the order the agent lists them.
    pub device_ids: Vec<String>,
}

/// A built config and where each of its fields came from.
#[derive(Clone, Debug)]
pub struct Built {
    /// The config (version 0: the store assigns it).
    pub config: DesiredConfig,
    /// Field (`algorithm`, `pools`, `telemetry_interval_secs`, `devices.<id>`) → its source.
    pub sources: BTreeMap<String, Source>,
}

/// The text `{rig}` becomes: the name with every character outside `[A-Za-z0-9._-]` turned
/// into `_` (pools take worker names of that alphabet).
pub fn placeholder_text(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Expands `{rig}` and `{group}` in a pool user.
pub fn expand_user(user: &str, rig: &RigFacts) -> String {
    user.replace("{rig}", &placeholder_text(&rig.name)).replace(
        "{group}",
        &placeholder_text(rig.group.as_deref().unwrap_or("")),
    )
}

/// Builds the rig's config from its layers, lowest first. `Ok(None)` when no layer names an
/// algorithm (the rig has nothing to mine and stays idle). Fails, naming the fields, when a
/// placeholder leaves a pool user empty.
pub fn build(
    layers: &[(Source, &ConfigLayer)],
    rig: &RigFacts,
) -> Result<Option<Built>, FleetError> {
    let mut sources = BTreeMap::new();
    let mut algorithm = None;
    let mut pools: Option<Vec<PoolSpec>> = None;
    let mut interval = None;
    // Explicit entries in first-seen order (so a config that was one layer comes back in its
    // own order, with the same content hash), and the last `*` entry.
    let mut devices: Vec<DeviceSettings> = Vec::new();
    let mut all: Option<(DeviceSettings, Source)> = None;
    for (source, layer) in layers {
        if let Some(a) = &layer.algorithm {
            algorithm = Some(a.clone());
            sources.insert("algorithm".to_string(), source.clone());
        }
        if let Some(p) = &layer.pools {
            pools = Some(p.clone());
            sources.insert("pools".to_string(), source.clone());
        }
        if let Some(t) = layer.telemetry_interval_secs {
            interval = Some(t);
            sources.insert("telemetry_interval_secs".to_string(), source.clone());
        }
        for d in layer.devices.iter().flatten() {
            if d.device_id.as_str() == ALL_DEVICES {
                all = Some((d.clone(), source.clone()));
                continue;
            }
            match devices.iter_mut().find(|x| x.device_id == d.device_id) {
                Some(slot) => *slot = d.clone(),
                None => devices.push(d.clone()),
            }
            sources.insert(format!("devices.{}", d.device_id.as_str()), source.clone());
        }
    }
    let Some(algorithm) = algorithm else {
        return Ok(None);
    };
    if let Some((template, source)) = all {
        for id in &rig.device_ids {
            if devices.iter().any(|d| d.device_id.as_str() == id) {
                continue;
            }
            let mut d = template.clone();
            d.device_id = DeviceId(id.clone());
            devices.push(d);
            sources.insert(format!("devices.{id}"), source.clone());
        }
    }
    let mut problems = FieldErrors::new();
    let pools: Vec<PoolSpec> = pools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            let had_placeholder = p.user.contains("{rig}") || p.user.contains("{group}");
            p.user = expand_user(&p.user, rig);
            if had_placeholder && p.user.trim().is_empty() {
                problems.insert(
                    format!("pools[{i}].user"),
                    format!("expands to an empty wallet/worker for rig {}", rig.name),
                );
            }
            p
        })
        .collect();
    FleetError::check("invalid_config", problems)?;
    Ok(Some(Built {
        config: DesiredConfig {
            version: 0,
            algorithm,
            pools,
            devices,
            telemetry_interval_secs: interval,
        },
        sources,
    }))
}

/// The layers of one rig, lowest first: its profile (its own, else its group's), its group's
/// overrides, its own overrides.
pub fn layers_of<'a>(
    snap: &'a crate::db::LayerSnapshot,
    rig: &'a crate::db::RigLayers,
) -> Vec<(Source, &'a ConfigLayer)> {
    let group = rig.group.as_ref().and_then(|g| snap.groups.get(g));
    let profile = rig
        .profile_id
        .or_else(|| group.and_then(|g| g.profile_id))
        .and_then(|id| snap.profiles.get(&id));
    let mut out = Vec::with_capacity(3);
    if let Some(p) = profile {
        out.push((Source::Profile(p.name.clone()), &p.layer));
    }
    if let Some(g) = group {
        out.push((Source::Group(g.name.clone()), &g.overrides));
    }
    out.push((Source::Rig, &rig.overrides));
    out
}

/// Builds one rig's config from a snapshot.
pub fn build_rig(
    snap: &crate::db::LayerSnapshot,
    rig: &crate::db::RigLayers,
) -> Result<Option<Built>, FleetError> {
    let facts = RigFacts {
        name: rig.name.clone(),
        group: rig.group.clone(),
        device_ids: rig.device_ids.clone(),
    };
    build(&layers_of(snap, rig), &facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(url: &str, user: &str) -> PoolSpec {
        PoolSpec {
            url: url.into(),
            user: user.into(),
            password: "x".into(),
        }
    }

    fn dev(id: &str, threads: Option<u32>) -> DeviceSettings {
        DeviceSettings {
            device_id: DeviceId(id.into()),
            enabled: true,
            power_limit_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
            fan_percent: None,
            threads,
        }
    }

    fn facts() -> RigFacts {
        RigFacts {
            name: "hall b/rig 7".into(),
            group: Some("hall-b".into()),
            device_ids: vec!["cpu".into(), "gpu0".into()],
        }
    }

    #[test]
    fn a_config_from_before_layers_builds_back_to_the_same_hash() {
        let old = DesiredConfig {
            version: 9,
            algorithm: "sha256d".into(),
            pools: vec![
                pool("stratum+tcp://a:1", "w.1"),
                pool("stratum+tcp://b:2", "w.2"),
            ],
            devices: vec![dev("gpu0", None), dev("cpu", Some(3))],
            telemetry_interval_secs: Some(5),
        };
        let json = serde_json::to_string(&old).unwrap();
        let layer = ConfigLayer::parse(&json).unwrap();
        assert_eq!(layer, ConfigLayer::from_config(&old));
        let built = build(&[(Source::Rig, &layer)], &facts()).unwrap().unwrap();
        assert_eq!(built.config.content_hash(), old.content_hash());
    }

    #[test]
    fn later_layers_win_field_by_field_and_say_so() {
        let profile = ConfigLayer {
            algorithm: Some("scrypt".into()),
            pools: Some(vec![pool("stratum+tcp://p:1", "wallet.{rig}")]),
            devices: Some(vec![dev(ALL_DEVICES, Some(2))]),
            telemetry_interval_secs: Some(10),
        };
        let group = ConfigLayer {
            telemetry_interval_secs: Some(30),
            ..Default::default()
        };
        let rig = ConfigLayer {
            devices: Some(vec![dev("gpu0", None)]),
            ..Default::default()
        };
        let built = build(
            &[
                (Source::Profile("ltc".into()), &profile),
                (Source::Group("hall-b".into()), &group),
                (Source::Rig, &rig),
            ],
            &facts(),
        )
        .unwrap()
        .unwrap();
        let c = &built.config;
        assert_eq!(c.algorithm, "scrypt");
        assert_eq!(c.pools[0].user, "wallet.hall_b_rig_7");
        assert_eq!(c.telemetry_interval_secs, Some(30));
        let ids: Vec<_> = c.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["gpu0", "cpu"]);
        assert_eq!(c.devices[1].threads, Some(2), "cpu from the profile's *");
        assert_eq!(c.devices[0].threads, None, "gpu0 from the rig");
        assert_eq!(built.sources["algorithm"], Source::Profile("ltc".into()));
        assert_eq!(
            built.sources["telemetry_interval_secs"],
            Source::Group("hall-b".into())
        );
        assert_eq!(built.sources["devices.gpu0"], Source::Rig);
        assert_eq!(built.sources["devices.cpu"], Source::Profile("ltc".into()));
    }

    #[test]
    fn nothing_to_mine_without_an_algorithm_and_empty_wallets_are_refused() {
        let empty = ConfigLayer::default();
        assert!(build(&[(Source::Rig, &empty)], &facts()).unwrap().is_none());
        let bad = ConfigLayer {
            algorithm: Some("sha256d".into()),
            pools: Some(vec![pool("stratum+tcp://p:1", "{group}")]),
            ..Default::default()
        };
        let mut lone = facts();
        lone.group = None;
        match build(&[(Source::Rig, &bad)], &lone) {
            Err(FleetError::Invalid { fields, .. }) => {
                assert!(fields.contains_key("pools[0].user"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn merged_layers_replace_whole_pool_lists_and_merge_devices_by_id() {
        let a = ConfigLayer {
            pools: Some(vec![
                pool("stratum+tcp://a:1", "u"),
                pool("stratum+tcp://b:1", "u"),
            ]),
            devices: Some(vec![dev("cpu", Some(1)), dev("gpu0", None)]),
            ..Default::default()
        };
        let b = ConfigLayer {
            pools: Some(vec![pool("stratum+tcp://c:1", "u")]),
            devices: Some(vec![dev("cpu", Some(4))]),
            ..Default::default()
        };
        let m = a.merged(&b);
        assert_eq!(m.pools.as_ref().map(Vec::len), Some(1));
        let devices = m.devices.unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].threads, Some(4));
        assert_eq!(placeholder_text("rig #1 (é)"), "rig__1____");
    }
}
