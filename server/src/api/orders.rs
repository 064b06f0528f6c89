//! Orders through the REST API: a rig's desired config (read and replace; the server assigns
//! the version and pushes a signed `set_config`) and commands (send, wait briefly for the result,
//! list).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use rigfleet_proto::command::Command;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::RigId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson, ApiQuery};
use super::rigs::{audit, find_rig, DeviceView};
use crate::app::AppState;
use crate::db::Scope;

/// A desired config as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConfigView {
    /// Server-assigned version (increasing per rig).
    pub version: u64,
    /// SHA-256 of the config without its version.
    pub content_hash: String,
    /// The config (pool passwords included: this needs the write scope).
    #[schema(value_type = Object)]
    pub config: DesiredConfig,
    /// Whether it was pushed to a connected agent just now (PUT only).
    pub pushed: Option<bool>,
}

/// The rig's desired config.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}/config", params(("rig" = String, Path, description = "rig id")), responses((status = 200, body = ConfigView), (status = 404)), tag = "config")]
pub async fn get_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<Json<ConfigView>, ApiFailure> {
    // Pool passwords and wallets are in here.
    if !super::auth::may_see_wallets(caller.level) {
        return Err(ApiFailure::forbidden(
            "configs hold wallets and pool passwords: this needs the write scope",
        ));
    }
    let row = find_rig(&state, &uid).await?;
    let d = state
        .hub
        .store
        .desired_config(row.id)
        .await?
        .ok_or_else(|| ApiFailure::not_found("desired config"))?;
    Ok(Json(ConfigView {
        version: d.version,
        content_hash: d.content_hash,
        config: d.config,
        pushed: None,
    }))
}

/// Replaces the rig's desired config; the body's `version` is ignored (the server assigns the
/// next one) and the config is validated before anything is stored.
#[utoipa::path(put, path = "/api/v1/rigs/{rig}/config", params(("rig" = String, Path, description = "rig id")), request_body(content = Object, description = "DesiredConfig (version optional)"), responses((status = 200, body = ConfigView), (status = 400)), tag = "config")]
pub async fn put_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiJson(value): ApiJson<serde_json::Value>,
) -> Result<Json<ConfigView>, ApiFailure> {
    caller.require(Scope::Write)?;
    caller.require_token("changing a rig's pools")?;
    let row = find_rig(&state, &uid).await?;
    let mut config = config_from_json(value, "")?;
    config.version = row.desired_version + 1;
    let before = state.hub.store.desired_config(row.id).await?;
    let (d, pushed) = state
        .hub
        .set_desired_config(
            row.id,
            &RigId(row.rig_uid.clone()),
            &config,
            Some(&caller.actor),
        )
        .await
        .map_err(order_failure)?;
    super::audit::record_config_change(
        &state,
        &caller.actor,
        &uid,
        before.as_ref().map(|b| &b.config),
        &d,
        pushed,
    )
    .await;
    Ok(Json(ConfigView {
        version: d.version,
        content_hash: d.content_hash,
        config: d.config,
        pushed: Some(pushed),
    }))
}

/// A desired config from a request's JSON (its `version` optional and ignored), checked as the
/// agent checks it: a body of the wrong shape is 422 and a config that breaks a rule 400
/// `invalid_config`, both with each field's path (under `prefix`, e.g. `config.`) in `fields`.
pub fn config_from_json(
    mut value: serde_json::Value,
    prefix: &str,
) -> Result<DesiredConfig, ApiFailure> {
    if let Some(obj) = value.as_object_mut() {
        obj.entry("version")
            .or_insert(serde_json::Value::from(0u64));
    }
    let config: DesiredConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        let field = if field.is_empty() {
            "body".into()
        } else {
            field
        };
        let message = e.into_inner().to_string();
        ApiFailure::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("not a desired config: {field}: {message}"),
        )
        .with_fields([(field, message)].into_iter().collect())
    })?;
    check_config(&config, prefix)?;
    Ok(config)
}

/// Refuses a config that breaks a rule, with every problem under its field's path.
pub fn check_config(config: &DesiredConfig, prefix: &str) -> Result<(), ApiFailure> {
    let errors = config.field_errors();
    if errors.is_empty() {
        return Ok(());
    }
    let mut fields = super::error::FieldErrors::new();
    for e in errors {
        fields
            .entry(format!("{prefix}{}", e.field))
            .and_modify(|m: &mut String| {
                m.push_str("; ");
                m.push_str(&e.message);
            })
            .or_insert(e.message);
    }
    Err(ApiFailure::invalid("invalid_config", fields))
}

pub(crate) fn order_failure(e: crate::hub::OrderError) -> ApiFailure {
    match e {
        crate::hub::OrderError::Store(s) => s.into(),
        crate::hub::OrderError::Encode(m) => {
            ApiFailure::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
        }
    }
}

/// A command to send.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// `{"kind":"restart_mining"}`, `{"kind":"identify","seconds":30}`, `{"kind":"switch_pool","index":1}`, `{"kind":"reboot"}`, `{"kind":"run_benchmark","algorithm":"sha256d","seconds":10}`, `{"kind":"shell","command":"…"}`.
    #[schema(value_type = Object)]
    pub command: Command,
    /// Seconds to wait for the result (0 to 30, default 10).
    pub wait_secs: Option<u64>,
}

/// A command and its result.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CommandView {
    /// Command id.
    pub id: String,
    /// The command.
    #[schema(value_type = Object)]
    pub command: serde_json::Value,
    /// Who sent it.
    pub created_by: Option<String>,
    /// When (Unix ms).
    pub created_at_ms: i64,
    /// When the result came (Unix ms).
    pub finished_at_ms: Option<i64>,
    /// Whether it worked (absent: no result yet).
    pub ok: Option<bool>,
    /// Output or refusal.
    pub output: Option<String>,
}

/// Send a command to a rig and wait briefly for its result.
#[utoipa::path(post, path = "/api/v1/rigs/{rig}/commands", params(("rig" = String, Path, description = "rig id")), request_body = CommandRequest, responses((status = 200, body = CommandView)), tag = "commands")]
pub async fn send_command(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiJson(req): ApiJson<CommandRequest>,
) -> Result<Json<CommandView>, ApiFailure> {
    caller.require(Scope::Write)?;
    if super::auth::command_needs_reauth(&req.command) {
        caller.require_token("a shell command or a reboot")?;
    }
    let row = find_rig(&state, &uid).await?;
    let order = rigfleet_proto::command::CommandOrder {
        command_id: "check".into(),
        command: req.command.clone(),
    };
    order
        .validate()
        .map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let command_json = serde_json::to_value(&req.command).unwrap_or_default();
    let (id, rx) = state
        .hub
        .send_command(
            row.id,
            &RigId(row.rig_uid.clone()),
            req.command,
            Some(&caller.actor),
        )
        .await
        .map_err(order_failure)?;
    audit(
        &state,
        &caller,
        "rig.command",
        &uid,
        &command_json.to_string(),
    )
    .await;
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(10).min(30));
    let outcome = tokio::time::timeout(wait, rx)
        .await
        .ok()
        .and_then(Result::ok);
    Ok(Json(CommandView {
        id: id.0,
        command: command_json,
        created_by: Some(caller.actor),
        created_at_ms: crate::now_ms(),
        finished_at_ms: outcome.as_ref().map(|_| crate::now_ms()),
        ok: outcome.as_ref().map(|o| o.ok),
        output: outcome.map(|o| o.output),
    }))
}

/// Page of a list.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Rows (default 50, at most 500).
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

/// Commands sent to a rig, newest first.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}/commands", params(("rig" = String, Path, description = "rig id"), PageQuery), responses((status = 200, body = Vec<CommandView>)), tag = "commands")]
pub async fn list_commands(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<CommandView>>, ApiFailure> {
    caller.require(Scope::Read)?;
    let row = find_rig(&state, &uid).await?;
    let rows = state
        .hub
        .store
        .list_commands(
            row.id,
            q.limit.unwrap_or(50).clamp(1, 500),
            q.offset.unwrap_or(0).max(0),
        )
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|c| CommandView {
                id: c.command_uid,
                command: serde_json::from_str::<serde_json::Value>(&c.command_json)
                    .ok()
                    .and_then(|v| v.get("command").cloned())
                    .unwrap_or_default(),
                created_by: c.created_by,
                created_at_ms: c.created_at_ms,
                finished_at_ms: c.finished_at_ms,
                ok: c.ok,
                output: c.output,
            })
            .collect(),
    ))
}

/// A rig's devices.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}/devices", params(("rig" = String, Path, description = "rig id")), responses((status = 200, body = Vec<DeviceView>)), tag = "rigs")]
pub async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<Json<Vec<DeviceView>>, ApiFailure> {
    caller.require(Scope::Read)?;
    let detail = super::rigs::rig_detail(&state, &uid, caller.level).await?;
    Ok(Json(detail.devices))
}

/// Events filter.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this rig's events.
    pub rig: Option<String>,
    /// Rows (default 100, at most 1000).
    pub limit: Option<i64>,
    /// Only events with a smaller id (the next page).
    pub before: Option<i64>,
}

/// An event.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Id (pages go by it).
    pub id: i64,
    /// Rig id, if about one.
    pub rig: Option<String>,
    /// Unix ms.
    pub time_ms: i64,
    /// info, warning, error.
    pub severity: String,
    /// What kind.
    pub kind: String,
    /// Text.
    pub message: String,
}

/// Events, newest first.
#[utoipa::path(get, path = "/api/v1/events", params(EventQuery), responses((status = 200, body = Vec<EventView>)), tag = "events")]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<EventView>>, ApiFailure> {
    caller.require(Scope::Read)?;
    let rig = match &q.rig {
        Some(uid) => Some(find_rig(&state, uid).await?),
        None => None,
    };
    let rows = state
        .hub
        .store
        .list_events(
            rig.as_ref().map(|r| r.id),
            q.limit.unwrap_or(100).clamp(1, 1000),
            q.before,
        )
        .await?;
    let uid_of = |id: Option<i64>| id.and_then(|id| state.hub.live.get(id)).map(|l| l.uid.0);
    Ok(Json(
        rows.into_iter()
            .map(|e| EventView {
                id: e.id,
                rig: uid_of(e.rig_id),
                time_ms: e.time_ms,
                severity: e.severity,
                kind: e.kind,
                message: e.message,
            })
            .collect(),
    ))
}
