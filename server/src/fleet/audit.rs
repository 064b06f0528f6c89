//! The audit log: who changed what (configs, commands, tokens, users, coin data), newest first.
//! Every operation writes its entry through [`record`]; a desired config's change is described
//! part by part, before → after ([`config_diff`]), the same whichever transport made it.

use rigfleet_proto::config::DesiredConfig;

use super::actor::{Actor, Permission};
use super::error::FleetError;
use crate::app::AppState;
use crate::db::{AuditRow, DesiredRow};

/// Rows a page of the log has when the caller does not say.
pub const DEFAULT_PAGE: i64 = 100;

/// One change as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Id (pages go by it).
    pub id: i64,
    /// When (Unix ms).
    pub time_ms: i64,
    /// Who (`user:<name>`, `token:<name>`…).
    pub actor: String,
    /// What (`rig.config`, `rig.command`, `coin.put`…).
    pub action: String,
    /// On what (a rig id, a user, an algorithm…).
    pub target: String,
    /// Details.
    pub detail: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        AuditEntry {
            id: r.id,
            time_ms: r.time_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            detail: r.detail,
        }
    }
}

/// The log, newest first: `limit` rows (1 to 1000, default 100) with ids under `before`. It
/// names people and what they did, so it takes [`Permission::Settings`].
pub async fn list(
    state: &AppState,
    actor: &Actor,
    limit: Option<i64>,
    before: Option<i64>,
) -> Result<Vec<AuditEntry>, FleetError> {
    actor.require(Permission::Settings)?;
    let rows = state
        .hub
        .store
        .list_audit(limit.unwrap_or(DEFAULT_PAGE).clamp(1, 1000), before)
        .await?;
    Ok(rows.into_iter().map(AuditEntry::from).collect())
}

/// Writes an entry. A failure is logged, not returned: the change itself already happened.
pub async fn record(state: &AppState, actor: &Actor, action: &str, target: &str, detail: &str) {
    state
        .hub
        .store
        .audit(&actor.audit_name(), action, target, detail)
        .await;
}

/// One line per part of a desired config, as the audit log shows it: the algorithm, the pools
/// (URL and user/wallet, never the password), each device's settings, the telemetry interval.
fn config_parts(c: &DesiredConfig) -> [(&'static str, String); 4] {
    let pools: Vec<String> = c
        .pools
        .iter()
        .map(|p| format!("{} {}", p.url, p.user))
        .collect();
    let devices: Vec<String> = c
        .devices
        .iter()
        .map(|d| {
            let mut s = format!(
                "{} {}",
                d.device_id.as_str(),
                if d.enabled { "on" } else { "off" }
            );
            let mut add = |name: &str, v: Option<u32>, unit: &str| {
                if let Some(v) = v {
                    s.push_str(&format!(" {name} {v}{unit}"));
                }
            };
            add("threads", d.threads, "");
            add("power", d.power_limit_watts, " W");
            add("core", d.core_clock_mhz, " MHz");
            add("memory", d.memory_clock_mhz, " MHz");
            add("fan", d.fan_percent.map(u32::from), " %");
            s
        })
        .collect();
    [
        ("algorithm", format!("{:?}", c.algorithm)),
        ("pools", format!("[{}]", pools.join(", "))),
        ("devices", format!("[{}]", devices.join(", "))),
        (
            "telemetry_interval",
            c.telemetry_interval_secs
                .map_or_else(|| "default".to_string(), |s| format!("{s} s")),
        ),
    ]
}

/// Each part of a config that changed, as `part before → after` (everything is new when
/// there was no config: `part none → …`). Pool passwords never appear (not even whether they
/// changed, which would hint at them).
pub fn config_diff(before: Option<&DesiredConfig>, after: &DesiredConfig) -> String {
    let new = config_parts(after);
    let mut changes = Vec::new();
    match before {
        None => {
            for (name, value) in &new {
                changes.push(format!("{name} none → {value}"));
            }
        }
        Some(before) => {
            for ((name, old), (_, value)) in config_parts(before).iter().zip(&new) {
                if old != value {
                    changes.push(format!("{name} {old} → {value}"));
                }
            }
        }
    }
    if changes.is_empty() {
        changes.push("no visible change (pool passwords only, or the same content)".into());
    }
    changes.join("; ")
}

/// The audit text of a rig's config change: the new version and hash, the [`config_diff`],
/// then whether the rig got it now.
pub fn config_change_detail(
    before: Option<&DesiredConfig>,
    after: &DesiredConfig,
    version: u64,
    content_hash: &str,
    pushed: bool,
) -> String {
    format!(
        "version {version} hash {}: {}{}",
        content_hash.get(..12).unwrap_or(content_hash),
        config_diff(before, after),
        if pushed {
            ""
        } else {
            " (rig offline: sent when it connects)"
        }
    )
}

/// Writes the audit entry of a rig's desired-config change (action `rig.config`).
pub async fn record_config_change(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    before: Option<&DesiredConfig>,
    after: &DesiredRow,
    pushed: bool,
) {
    let detail = config_change_detail(
        before,
        &after.config,
        after.version,
        &after.content_hash,
        pushed,
    );
    record(state, actor, "rig.config", rig_uid, &detail).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(user: &str, threads: u32) -> DesiredConfig {
        serde_json::from_str(&format!(
            r#"{{"version":4,"algorithm":"sha256d","pools":[{{"url":"stratum+tcp://a:3333","user":"{user}","password":"hunter2"}}],"devices":[{{"device_id":"cpu","enabled":true,"threads":{threads}}}],"telemetry_interval_secs":5}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_audit_of_a_config_change_shows_before_and_after_without_passwords() {
        let (a, b) = (config("old.w", 2), config("new.w", 8));
        let text = config_change_detail(Some(&a), &b, 5, &b.content_hash(), true);
        assert!(text.starts_with("version 5 hash "), "{text}");
        assert!(
            text.contains("pools [stratum+tcp://a:3333 old.w] → [stratum+tcp://a:3333 new.w]"),
            "{text}"
        );
        assert!(
            text.contains("devices [cpu on threads 2] → [cpu on threads 8]"),
            "{text}"
        );
        assert!(
            !text.contains("algorithm"),
            "unchanged parts are left out: {text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let first = config_change_detail(None, &b, 1, "abc", false);
        assert!(first.contains("algorithm none → \"sha256d\""), "{first}");
        assert!(first.contains("new.w") && first.ends_with("sent when it connects)"));
        assert!(!first.contains("hunter2"), "{first}");
    }
}
