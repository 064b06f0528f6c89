//! The rows and inputs the store's API speaks.

use rigfleet_proto::agent_to_server::DeviceDescriptor;
use rigfleet_proto::config::DesiredConfig;

use super::StoreError;

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, users included.
    Admin,
    /// Fleet control, no user management.
    Operator,
    /// Read only.
    Viewer,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read fleet state, history, events.
    Read,
    /// Change configs, send commands, manage rigs.
    Write,
    /// Users, tokens, settings.
    Admin,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An operator account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    /// TOTP secret (base32) once a second factor is enrolled.
    pub totp_secret: Option<String>,
    pub created_at_ms: i64,
}

/// A browser session, looked up by the SHA-256 of its cookie value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// An API token (only its hash is stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub revoked: bool,
}

/// An enrollment token to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnrollToken {
    /// 16 hex digits, the public part of the token.
    pub token_id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256_hex: String,
    /// `None`: unlimited.
    pub max_uses: Option<i64>,
    pub expires_at_ms: Option<i64>,
    /// Group the enrolled rigs join.
    pub group: Option<String>,
    pub requires_approval: bool,
    pub note: String,
    pub now_ms: i64,
}

/// A stored enrollment token (the secret hash stays inside the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollTokenRow {
    pub id: i64,
    pub token_id: String,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub expires_at_ms: Option<i64>,
    pub group: Option<String>,
    pub requires_approval: bool,
    pub note: String,
    pub revoked: bool,
    pub created_at_ms: i64,
}

/// An agent to register at enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAgent {
    pub agent_uid: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key_hex: String,
    pub hostname: String,
    pub agent_version: String,
    /// The enrollment token used (its `token_id`).
    pub enroll_token_id: Option<String>,
    pub now_ms: i64,
}

/// A rig to register with its agent.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRig {
    pub rig_uid: String,
    pub name: String,
    pub group: Option<String>,
    pub pending_approval: bool,
    pub devices: Vec<DeviceDescriptor>,
}

/// A stored agent and the rigs it fronts.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRow {
    pub id: i64,
    pub agent_uid: String,
    pub public_key_hex: String,
    pub revoked: bool,
    pub hostname: String,
    pub agent_version: String,
    pub rigs: Vec<RigRow>,
}

/// A stored rig.
#[derive(Clone, Debug, PartialEq)]
pub struct RigRow {
    pub id: i64,
    pub rig_uid: String,
    pub agent_id: i64,
    pub name: String,
    pub group: Option<String>,
    pub tags: Vec<String>,
    pub pending_approval: bool,
    /// Why the rig was flagged (for example a cloned identity), if it was.
    pub flagged: Option<String>,
    pub created_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    /// Highest telemetry seq durably stored.
    pub last_seq: Option<u64>,
    pub order_counter: u64,
    /// Version of the newest desired config (0: none yet).
    pub desired_version: u64,
    pub applied_version: Option<u64>,
    pub applied_hash: Option<String>,
    pub applied_ok: Option<bool>,
    pub applied_error: Option<String>,
    pub applied_at_ms: Option<i64>,
}

/// Columns [`RigFilter::sort`] accepts.
pub const RIG_SORT_COLUMNS: &[&str] =
    &["id", "name", "rig_uid", "group", "created_at", "last_seen"];

/// Which rigs [`super::Store::list_rigs`] returns, in which order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RigFilter {
    /// Case-insensitive substring of the name or rig id.
    pub text: Option<String>,
    pub group: Option<String>,
    pub tag: Option<String>,
    /// 0 means the default (100); capped at 1000.
    pub limit: i64,
    pub offset: i64,
    /// One of [`RIG_SORT_COLUMNS`]; `None` sorts by name.
    pub sort: Option<String>,
    pub descending: bool,
}

/// One page of a list and the number of rows matching in all.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// A device of a rig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub rig_id: i64,
    pub device_uid: String,
    /// Stable per rig; packed telemetry refers to devices by it.
    pub slot: i16,
    pub kind: String,
    pub model: String,
    pub algorithms: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// The current desired config of a rig.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRow {
    pub version: u64,
    pub content_hash: String,
    /// Its `version` field equals [`DesiredRow::version`].
    pub config: DesiredConfig,
    pub created_at_ms: i64,
    pub created_by: Option<String>,
}

/// A profile (flight sheet).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    pub id: i64,
    pub name: String,
    pub config: DesiredConfig,
    pub is_default: bool,
}

/// A command sent to a rig and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRow {
    pub id: i64,
    pub rig_id: i64,
    pub command_uid: String,
    pub command_json: String,
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub ok: Option<bool>,
    pub output: Option<String>,
}

/// An event to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub rig_id: Option<i64>,
    pub time_ms: i64,
    pub severity: String,
    pub kind: String,
    pub message: String,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub rig_id: Option<i64>,
    pub time_ms: i64,
    pub severity: String,
    pub kind: String,
    pub message: String,
}

/// An audit log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Which table a [`History`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Raw samples (every telemetry interval).
    Raw,
    /// 1-minute rollups.
    Minute,
    /// 1-hour rollups.
    Hour,
}

/// A rig's history over a time range.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    pub resolution: Resolution,
    pub points: Vec<HistoryPoint>,
}

/// One point of a rig's history: a raw sample or a rollup bucket (`ts_ms` = bucket start).
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPoint {
    pub ts_ms: i64,
    /// Sum over devices (of their bucket averages for rollups).
    pub hashrate_hps: f64,
    pub max_temperature: Option<f32>,
    pub avg_fan_percent: Option<f32>,
    /// Sum over the devices that report power.
    pub power_watts: Option<f32>,
    /// Shares found in this point's interval (deltas of the cumulative counters, counter
    /// resets counted from zero).
    pub accepted: u64,
    pub rejected: u64,
    pub stale: u64,
    pub hardware_errors: u64,
    pub devices: Vec<DevicePoint>,
}

/// One device in a [`HistoryPoint`].
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePoint {
    pub device_id: String,
    pub hashrate_hps: f64,
    /// Max over the bucket for rollups.
    pub temperature: Option<f32>,
    pub fan_percent: Option<f32>,
    pub power_watts: Option<f32>,
}

pub(crate) fn parse_scopes(text: &str) -> Result<Vec<Scope>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Scope::parse(s).ok_or_else(|| StoreError::Corrupt(format!("scope {s:?}"))))
        .collect()
}

pub(crate) fn join_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
