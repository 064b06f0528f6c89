//! A rig's desired config: read it, replace it (the REST API's `PUT`), or change only its
//! algorithm and pools (the rig page's form). Every change is checked as the agent checks it,
//! stored with the next version, signed and pushed through the hub, and audited before → after
//! by one function.

use rigfleet_proto::config::{DesiredConfig, PoolSpec};
use rigfleet_proto::limits::MAX_POOLS;
use rigfleet_proto::RigId;

use super::actor::{Actor, Permission};
use super::error::{FieldErrors, FleetError};
use super::rigs::find_rig;
use crate::app::AppState;
use crate::db::DesiredRow;

/// Error code of a config that breaks a rule.
pub const INVALID_CONFIG: &str = "invalid_config";

/// A rig's desired config with its version and hash.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Server-assigned version (increasing per rig).
    pub version: u64,
    /// SHA-256 of the config without its version.
    pub content_hash: String,
    /// The config; its `version` equals [`Desired::version`].
    pub config: DesiredConfig,
}

impl From<DesiredRow> for Desired {
    fn from(d: DesiredRow) -> Self {
        Desired {
            version: d.version,
            content_hash: d.content_hash,
            config: d.config,
        }
    }
}

/// What a change did.
#[derive(Clone, Debug)]
pub struct ConfigChange {
    /// The desired config now.
    pub desired: Desired,
    /// Whether a new version was stored (false: the form asked for what the rig already has).
    pub changed: bool,
    /// Whether the new version went to a connected agent just now (an offline rig gets it
    /// when it connects).
    pub pushed: bool,
}

/// The rig page's change: the algorithm and the pools in order. Device settings and the
/// telemetry interval stay as they are.
#[derive(Clone, Debug, Default)]
pub struct MiningChange {
    /// Algorithm id; empty for idle.
    pub algorithm: String,
    /// Pools in priority order.
    pub pools: Vec<PoolSpec>,
}

/// The rig's desired config. It holds wallets and pool passwords, so it takes
/// [`Permission::SeeWallets`].
pub async fn get(state: &AppState, actor: &Actor, rig_uid: &str) -> Result<Desired, FleetError> {
    if !actor.can(Permission::SeeWallets) {
        return Err(FleetError::Forbidden(
            "configs hold wallets and pool passwords: this needs the write scope".into(),
        ));
    }
    let row = find_rig(state, rig_uid).await?;
    state
        .hub
        .store
        .desired_config(row.id)
        .await?
        .map(Desired::from)
        .ok_or_else(|| FleetError::not_found("desired config"))
}

/// Refuses a config that breaks a rule, with every problem under its field's path (`prefix`
/// first, e.g. `config.` for a profile's).
pub fn check(config: &DesiredConfig, prefix: &str) -> Result<(), FleetError> {
    let mut fields = FieldErrors::new();
    for e in config.field_errors() {
        fields
            .entry(format!("{prefix}{}", e.field))
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&e.message);
            })
            .or_insert(e.message);
    }
    FleetError::check(INVALID_CONFIG, fields)
}

/// Replaces the rig's desired config; its `version` is ignored (the next one is assigned). A
/// new version is stored even when the content is the same, so a script can re-send it.
pub async fn put(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    config: DesiredConfig,
) -> Result<ConfigChange, FleetError> {
    change(state, actor, rig_uid, |_| Ok(config), true).await
}

/// Sets the rig's algorithm and pools on top of its current config (device settings and the
/// telemetry interval stay). Asking for what the rig already has stores nothing.
pub async fn set_mining(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    mining: &MiningChange,
) -> Result<ConfigChange, FleetError> {
    change(
        state,
        actor,
        rig_uid,
        |current| apply_mining(current, mining),
        false,
    )
    .await
}

/// The config `mining` asks for on top of `current`, checked as the agent checks it.
pub fn apply_mining(
    current: Option<&DesiredConfig>,
    mining: &MiningChange,
) -> Result<DesiredConfig, FleetError> {
    let algorithm = mining.algorithm.trim().to_ascii_lowercase();
    let id_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if algorithm.len() > 32 || !algorithm.chars().all(id_char) {
        return Err(FleetError::field(
            INVALID_CONFIG,
            "algorithm",
            "The algorithm is an id such as sha256d or scrypt (letters, digits, - and _), or empty for idle.",
        ));
    }
    if mining.pools.len() > MAX_POOLS {
        return Err(FleetError::field(
            INVALID_CONFIG,
            "pools",
            format!("at most {MAX_POOLS} pools"),
        ));
    }
    let mut config = current.cloned().unwrap_or(DesiredConfig {
        version: 0,
        algorithm: String::new(),
        pools: Vec::new(),
        devices: Vec::new(),
        telemetry_interval_secs: None,
    });
    config.algorithm = algorithm;
    config.pools = mining
        .pools
        .iter()
        .map(|p| PoolSpec {
            url: p.url.trim().to_string(),
            user: p.user.trim().to_string(),
            password: p.password.clone(),
        })
        .collect();
    check(&config, "")?;
    Ok(config)
}

/// The one path of every desired-config change: the password again (or an API token), the
/// rig, [`Permission::ChangePools`] when the pools change (else [`Permission::Operate`]), the
/// checks, then store, sign, push and audit.
async fn change(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    build: impl FnOnce(Option<&DesiredConfig>) -> Result<DesiredConfig, FleetError>,
    store_repeats: bool,
) -> Result<ConfigChange, FleetError> {
    // Every config write carries the pools (and so where the money goes), whatever else it
    // changes: a session confirms the password for each one, as the rig page always asked.
    actor.require_fresh("changing a rig's config")?;
    let row = find_rig(state, rig_uid).await?;
    let current = state.hub.store.desired_config(row.id).await?;
    let current_config = current.as_ref().map(|d| &d.config);
    let mut config = build(current_config)?;
    let pools_change = current_config.map_or(!config.pools.is_empty(), |c| c.pools != config.pools);
    actor.require(if pools_change {
        Permission::ChangePools
    } else {
        Permission::Operate
    })?;
    check(&config, "")?;
    if !store_repeats {
        if let Some(d) = current
            .as_ref()
            .filter(|d| d.content_hash == config.content_hash())
        {
            return Ok(ConfigChange {
                desired: d.clone().into(),
                changed: false,
                pushed: false,
            });
        }
    }
    config.version = row.desired_version + 1;
    // The rig's own overrides hold what was set on it directly, so a later rollout that
    // rebuilds its config from its layers keeps this change.
    state
        .hub
        .store
        .set_rig_overrides(row.id, &super::layers::ConfigLayer::from_config(&config))
        .await?;
    let (stored, pushed) = state
        .hub
        .set_desired_config(
            row.id,
            &RigId(row.rig_uid.clone()),
            &config,
            Some(&actor.audit_name()),
        )
        .await?;
    super::audit::record_config_change(state, actor, &row.rig_uid, current_config, &stored, pushed)
        .await;
    Ok(ConfigChange {
        desired: stored.into(),
        changed: true,
        pushed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> DesiredConfig {
        serde_json::from_str(
            r#"{"version":4,"algorithm":"sha256d","pools":[{"url":"stratum+tcp://a:3333","user":"w.1","password":"x"}],"devices":[{"device_id":"cpu","enabled":true,"threads":2}],"telemetry_interval_secs":5}"#,
        )
        .unwrap()
    }

    fn pool(url: &str, user: &str) -> PoolSpec {
        PoolSpec {
            url: url.into(),
            user: user.into(),
            password: String::new(),
        }
    }

    #[test]
    fn the_mining_change_keeps_device_settings() {
        let c = apply_mining(
            Some(&current()),
            &MiningChange {
                algorithm: " Scrypt ".into(),
                pools: vec![
                    pool("stratum+ssl://b:443", "wallet.rig"),
                    pool(" stratum+tcp://c:3333 ", "wallet.backup"),
                ],
            },
        )
        .unwrap();
        assert_eq!(c.algorithm, "scrypt");
        let urls: Vec<&str> = c.pools.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(urls, ["stratum+ssl://b:443", "stratum+tcp://c:3333"]);
        assert_eq!(c.devices, current().devices);
        assert_eq!(c.telemetry_interval_secs, Some(5));
    }

    #[test]
    fn bad_mining_changes_are_refused_under_their_field() {
        let cases = [
            (
                "sha256d",
                vec![pool("pool:3333", "w")],
                "pools[0].url",
                "no scheme",
            ),
            ("sha256d", vec![], "pools", "at least one pool"),
            (
                "sha<256>",
                vec![pool("stratum+tcp://a:1", "w")],
                "algorithm",
                "algorithm is an id",
            ),
        ];
        for (algorithm, pools, field, needle) in cases {
            let err = apply_mining(
                Some(&current()),
                &MiningChange {
                    algorithm: algorithm.into(),
                    pools,
                },
            )
            .unwrap_err();
            let FleetError::Invalid { code, fields } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*code, INVALID_CONFIG);
            assert!(
                fields.get(field).is_some_and(|m| m.contains(needle)),
                "{field}: {err}"
            );
        }
        // No algorithm and no pools: idle.
        let idle = apply_mining(Some(&current()), &MiningChange::default()).unwrap();
        assert!(idle.algorithm.is_empty() && idle.pools.is_empty());
    }

    #[test]
    fn field_errors_are_gathered_under_a_prefix() {
        let mut c = current();
        c.devices[0].threads = Some(0);
        c.telemetry_interval_secs = Some(0);
        let Err(FleetError::Invalid { fields, .. }) = check(&c, "config.") else {
            panic!("refused");
        };
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "config.devices[0].threads",
                "config.telemetry_interval_secs"
            ]
        );
        assert!(check(&current(), "").is_ok());
    }
}
