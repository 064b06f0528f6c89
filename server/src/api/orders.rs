//! Orders through the REST API: a rig's desired config (read and replace; the server assigns
//! the version and pushes a signed `set_config`) and commands (send, wait briefly for the result,
//! list).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use rigfleet_proto::command::Command;
use rigfleet_proto::config::DesiredConfig;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson, ApiQuery};
use crate::app::AppState;
use crate::fleet::commands;
use crate::fleet::configs::{self, ConfigChange, Desired};
use crate::fleet::rigs::{self as fleet_rigs, DeviceView};

// The events' view, kept at its old path.
pub use crate::fleet::rigs::EventView;

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
    let d = configs::get(&state, &caller.who, &uid).await?;
    Ok(Json(ConfigView::new(d, None)))
}

impl ConfigView {
    fn new(d: Desired, pushed: Option<bool>) -> ConfigView {
        ConfigView {
            version: d.version,
            content_hash: d.content_hash,
            config: d.config,
            pushed,
        }
    }
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
    let config = config_from_json(value, "")?;
    let ConfigChange {
        desired, pushed, ..
    } = configs::put(&state, &caller.who, &uid, config).await?;
    Ok(Json(ConfigView::new(desired, Some(pushed))))
}

/// A desired config from a request's JSON (its `version` optional and ignored): a body of the
/// wrong shape is 422 with the field's path (under `prefix`, e.g. `config.`) in `fields`. The
/// rules (400 `invalid_config`) are the operation's to check, after its permission.
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
    Ok(config)
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
    let sent = commands::send(&state, &caller.who, &uid, req.command).await?;
    let (id, command, created_at_ms) = (sent.id.clone(), sent.command.clone(), sent.created_at_ms);
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(10).min(30));
    let outcome = sent.outcome(wait).await;
    Ok(Json(CommandView {
        id,
        command,
        created_by: Some(caller.who.audit_name()),
        created_at_ms,
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
    let rows = commands::list(&state, &caller.who, &uid, q.limit, q.offset).await?;
    Ok(Json(
        rows.into_iter()
            .map(|c| CommandView {
                id: c.id,
                command: c.command,
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
    Ok(Json(fleet_rigs::devices(&state, &caller.who, &uid).await?))
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

/// Events, newest first.
#[utoipa::path(get, path = "/api/v1/events", params(EventQuery), responses((status = 200, body = Vec<EventView>)), tag = "events")]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<EventView>>, ApiFailure> {
    Ok(Json(
        fleet_rigs::events(
            &state,
            &caller.who,
            q.rig.as_deref(),
            q.limit.unwrap_or(100),
            q.before,
        )
        .await?,
    ))
}
