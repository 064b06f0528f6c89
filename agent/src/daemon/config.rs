//! The agent's local config: the TOML file (default [`DEFAULT_CONFIG_PATH`]) < `RIGFLEET_*`
//! environment variables < command-line flags. It holds only what the rig's owner decides
//! locally: the link to the server, the state folder, the local API, safety bounds for device
//! settings and opt-ins (shell commands, reboot). Everything about mining is the server's
//! desired config (`rigfleet_proto::config`), clamped here by [`SafetyBounds::clamp`].
//!
//! Loading is all or nothing: an unknown key, a value of the wrong type or a value out of range
//! refuses the whole config with a message naming the line and the key, so the agent never starts
//! with half a config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rigfleet_proto::config::DeviceSettings;
use rigfleet_proto::DeviceId;
use serde::Deserialize;

/// Where the config file is read from when neither `--config` nor `RIGFLEET_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rigfleet/agent.toml";
/// Default state folder (identity, persisted desired config, telemetry queue).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rigfleet";
/// Default local API address: cgminer's port, loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:4028";
/// URL schemes the link accepts: ws/http only make sense for loopback tests, but refusing them
/// here would break the demo; the link warns about plain text instead.
pub const ALLOWED_SCHEMES: &[&str] = &["http", "https", "ws", "wss"];

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (an explicitly named file that is missing lands here too).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: line {line}, column {column}, key `{key}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key at that place (`safety.max_power_watts`), or `?` when unknown.
        key: String,
        /// What the parser said.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid {key} (from {source_name}): {reason}")]
    Invalid {
        /// Dotted key (`server.url`).
        key: &'static str,
        /// Where the value came from: the file, an environment variable or a flag.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Values given on the command line; `None` means "not given". Clap wiring fills this later.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config_path: Option<PathBuf>,
    /// `--server`.
    pub server_url: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--api-listen` (an address or `off`).
    pub api_listen: Option<String>,
}

/// The complete, validated local config.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// How to reach the server.
    pub link: LinkConfig,
    /// Identity, persisted desired config and telemetry queue live here.
    pub state_dir: PathBuf,
    /// The cgminer-format local API.
    pub api: ApiConfig,
    /// Bounds every device setting from the server is clamped to.
    pub safety: SafetyBounds,
    /// What the server may do beyond mining.
    pub opt_in: OptIns,
    /// CPU kernel paths that override the measured choice.
    pub cpu: CpuOverrides,
}

/// `[cpu]`: kernel paths that override the calibration (issue 18), for a CPU where the
/// measurement misleads (thermal limits under sustained load, say). Unset = the fastest path
/// measured on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuOverrides {
    /// SHA-256d path: `portable`, `avx2`, `avx512`, `shani` (those this CPU has).
    #[serde(default)]
    pub sha256d_path: Option<String>,
    /// Scrypt path: `portable`, `avx2`, `avx512`… (those this CPU has).
    #[serde(default)]
    pub scrypt_path: Option<String>,
}

/// How to reach the server.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Server URL (`https://host:port`); before enrollment it may be absent, afterwards the
    /// identity file also records it.
    #[serde(default)]
    pub url: Option<String>,
    /// A PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pinned server certificate: `sha256:<64 hex>` of its DER bytes.
    #[serde(default)]
    pub cert_fingerprint: Option<String>,
}

/// Whether and where the local API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiListen {
    /// No local API.
    Off,
    /// Listen on this address.
    Addr(SocketAddr),
}

/// The local API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Where it listens.
    pub listen: ApiListen,
    /// Privileged cgminer commands (`switchpool`, `restart`…) allowed; empty = read-only API.
    pub privileged_allow: Vec<String>,
}

/// Local safety bounds; `None` means no bound of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyBounds {
    /// Highest power limit a device may be given.
    #[serde(default)]
    pub max_power_watts: Option<u32>,
    /// Lowest core clock.
    #[serde(default)]
    pub min_core_clock_mhz: Option<u32>,
    /// Highest core clock.
    #[serde(default)]
    pub max_core_clock_mhz: Option<u32>,
    /// Lowest memory clock.
    #[serde(default)]
    pub min_memory_clock_mhz: Option<u32>,
    /// Highest memory clock.
    #[serde(default)]
    pub max_memory_clock_mhz: Option<u32>,
    /// Lowest fan duty the server may set.
    #[serde(default)]
    pub min_fan_percent: Option<u8>,
    /// Most CPU mining threads.
    #[serde(default)]
    pub max_cpu_threads: Option<u32>,
}

/// What the server may do beyond mining; all off by default so that a compromised server cannot
/// run code on rigs whose owners did not opt in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptIns {
    /// Whether `shell` commands run.
    #[serde(default)]
    pub allow_shell_commands: bool,
    /// The program and arguments a `reboot` command runs; `None` refuses reboots.
    #[serde(default)]
    pub reboot_command: Option<Vec<String>>,
    /// Whether the watchdog may reboot the rig (with `reboot_command`) when restarting a
    /// failing device did not help; otherwise it disables the device and the rest keeps mining.
    #[serde(default)]
    pub watchdog_reboot: bool,
}

/// The file as written: every table optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    server: LinkConfig,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    safety: SafetyBounds,
    #[serde(default)]
    opt_in: OptIns,
    #[serde(default)]
    cpu: CpuOverrides,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    privileged_allow: Vec<String>,
}

/// Environment variables read (all optional): `RIGFLEET_CONFIG`, `RIGFLEET_SERVER_URL`,
/// `RIGFLEET_CA_FILE`, `RIGFLEET_CERT_FINGERPRINT`, `RIGFLEET_STATE_DIR`, `RIGFLEET_API_LISTEN`,
/// `RIGFLEET_ALLOW_SHELL_COMMANDS` (`true`/`false`).
// Documents the variables in one place; `load_with_env` reads them one by one.
#[allow(dead_code)]
pub const ENV_VARS: &[&str] = &[
    "RIGFLEET_CONFIG",
    "RIGFLEET_SERVER_URL",
    "RIGFLEET_CA_FILE",
    "RIGFLEET_CERT_FINGERPRINT",
    "RIGFLEET_STATE_DIR",
    "RIGFLEET_API_LISTEN",
    "RIGFLEET_ALLOW_SHELL_COMMANDS",
];

/// Loads the config from the process environment and `overrides`.
pub fn load(overrides: &Overrides) -> Result<AgentConfig, ConfigError> {
    load_with_env(overrides, |name| std::env::var(name).ok())
}

/// Loads the config with `env` standing in for the process environment (tests pass a map).
///
/// The file named by `--config` or `RIGFLEET_CONFIG` must exist; the default file may be absent
/// (an agent configured only by flags and its enrolled identity).
pub fn load_with_env(
    overrides: &Overrides,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let (path, explicit) = match (&overrides.config_path, env("RIGFLEET_CONFIG")) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&path, &text)?,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let file_source = path.display().to_string();
    merge(file, &file_source, &env, overrides)
}

/// Parses and validates config text alone (no env, no flags); `path` only names it in errors.
/// Also built for the fuzz target `agent_config` (`fuzz/`).
#[cfg(any(test, fuzzing))]
pub fn from_toml(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
    let file = parse_file(path, text)?;
    merge(
        file,
        &path.display().to_string(),
        &|_| None,
        &Overrides::default(),
    )
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start).min(text.len());
        let (line, column) = line_column(text, offset);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            key: key_at(text, offset, e.message()),
            message: e.message().trim().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The dotted key at `offset`: the `[table]` header above it joined with the key on its line.
/// toml's spans point at the key (unknown field) or the value (wrong type), both on the key's
/// line. Missing-field errors span the whole table; the message names the field then.
fn key_at(text: &str, offset: usize, message: &str) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let table = before
        .get(..line_start)
        .unwrap_or("")
        .lines()
        .rev()
        // A header may carry a trailing comment: `[safety] # bounds`.
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let trimmed = line.trim();
    let key = if trimmed.starts_with('[') {
        // The span is a table header itself (e.g. an unknown table).
        Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        )
    } else {
        trimmed
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty())
    };
    let key = key.or_else(|| {
        // "missing field `x`": take the name from the message.
        message
            .split('`')
            .nth(1)
            .map(str::to_string)
            .filter(|k| !k.is_empty())
    });
    match (table, key) {
        (Some(t), Some(k)) if !trimmed.starts_with('[') => format!("{t}.{k}"),
        (_, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "?".to_string(),
    }
}

fn merge(
    file: FileConfig,
    file_source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<AgentConfig, ConfigError> {
    // Each value keeps the name of where it came from, so a refusal points at the right place.
    fn pick<T>(
        file: Option<T>,
        file_source: &str,
        env: Option<(T, &str)>,
        flag: Option<(T, &str)>,
    ) -> Option<(T, String)> {
        flag.map(|(v, n)| (v, n.to_string()))
            .or_else(|| env.map(|(v, n)| (v, n.to_string())))
            .or_else(|| file.map(|v| (v, file_source.to_string())))
    }

    let url = pick(
        file.server.url,
        file_source,
        env("RIGFLEET_SERVER_URL").map(|v| (v, "RIGFLEET_SERVER_URL")),
        overrides.server_url.clone().map(|v| (v, "--server")),
    );
    if let Some((u, src)) = &url {
        check_url(u).map_err(|reason| invalid("server.url", src, reason))?;
    }
    let ca_file = pick(
        file.server.ca_file,
        file_source,
        env("RIGFLEET_CA_FILE").map(|v| (PathBuf::from(v), "RIGFLEET_CA_FILE")),
        None,
    );
    let cert_fingerprint = pick(
        file.server.cert_fingerprint,
        file_source,
        env("RIGFLEET_CERT_FINGERPRINT").map(|v| (v, "RIGFLEET_CERT_FINGERPRINT")),
        None,
    );
    if let Some((fp, src)) = &cert_fingerprint {
        check_fingerprint(fp).map_err(|r| invalid("server.cert_fingerprint", src, r))?;
    }
    let state_dir = pick(
        file.state_dir,
        file_source,
        env("RIGFLEET_STATE_DIR").map(|v| (PathBuf::from(v), "RIGFLEET_STATE_DIR")),
        overrides.state_dir.clone().map(|v| (v, "--state-dir")),
    );
    if let Some((dir, src)) = &state_dir {
        if dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", src, "must not be empty".into()));
        }
    }
    let listen = pick(
        file.api.listen,
        file_source,
        env("RIGFLEET_API_LISTEN").map(|v| (v, "RIGFLEET_API_LISTEN")),
        overrides.api_listen.clone().map(|v| (v, "--api-listen")),
    );
    let listen = match &listen {
        Some((text, src)) => {
            parse_api_listen(text).map_err(|reason| invalid("api.listen", src, reason))?
        }
        None => parse_api_listen(DEFAULT_API_LISTEN)
            .map_err(|reason| invalid("api.listen", "default", reason))?,
    };
    for cmd in &file.api.privileged_allow {
        if cmd.is_empty() || !cmd.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "api.privileged_allow",
                file_source,
                format!("{cmd:?} is not a command name"),
            ));
        }
    }
    let mut opt_in = file.opt_in;
    if let Some(v) = env("RIGFLEET_ALLOW_SHELL_COMMANDS") {
        opt_in.allow_shell_commands = match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(invalid(
                    "opt_in.allow_shell_commands",
                    "RIGFLEET_ALLOW_SHELL_COMMANDS",
                    format!("{other:?} is not true/false"),
                ))
            }
        };
    }
    if let Some(cmd) = &opt_in.reboot_command {
        if cmd.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(invalid(
                "opt_in.reboot_command",
                file_source,
                "needs a program (e.g. [\"systemctl\", \"reboot\"])".into(),
            ));
        }
    }
    file.safety
        .validate()
        .map_err(|(key, reason)| invalid(key, file_source, reason))?;
    for (key, algorithm, path) in [
        (
            "cpu.sha256d_path",
            rigfleet_engine::Algorithm::Sha256d,
            &file.cpu.sha256d_path,
        ),
        (
            "cpu.scrypt_path",
            rigfleet_engine::Algorithm::Scrypt,
            &file.cpu.scrypt_path,
        ),
    ] {
        if let Some(path) = path {
            algorithm
                .kernel(path)
                .map_err(|e| invalid(key, file_source, e.to_string()))?;
        }
    }

    Ok(AgentConfig {
        link: LinkConfig {
            url: url.map(|(v, _)| v),
            ca_file: ca_file.map(|(v, _)| v),
            cert_fingerprint: cert_fingerprint.map(|(v, _)| v),
        },
        state_dir: state_dir.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |(v, _)| v),
        api: ApiConfig {
            listen,
            privileged_allow: file.api.privileged_allow,
        },
        safety: file.safety,
        opt_in,
        cpu: file.cpu,
    })
}

fn invalid(key: &'static str, source: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key,
        source_name: source.to_string(),
        reason,
    }
}

/// `scheme://host[:port][/path]` with an allowed scheme; no whitespace. A full URL parser is the
/// link's job; this catches typos before the agent starts.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL (expected https://host:port)"));
    };
    if !ALLOWED_SCHEMES.contains(&scheme) {
        return Err(format!(
            "scheme {scheme:?} not allowed (use one of {})",
            ALLOWED_SCHEMES.join(", ")
        ));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{url:?} contains whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // `[v6]:port` or `host:port`; the port, when present, must be a port number.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => return Err(format!("{url:?} has an unclosed [")),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("{url:?} has an invalid port"));
    }
    Ok(())
}

fn check_fingerprint(fp: &str) -> Result<(), String> {
    let hex = fp.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("expected sha256:<64 hex digits>".into())
    }
}

/// `off` or a socket address (`127.0.0.1:4028`, `[::1]:4028`).
pub fn parse_api_listen(text: &str) -> Result<ApiListen, String> {
    if text.trim() == "off" {
        return Ok(ApiListen::Off);
    }
    text.trim()
        .parse::<SocketAddr>()
        .map(ApiListen::Addr)
        .map_err(|_| format!("{text:?} is neither an address (127.0.0.1:4028) nor `off`"))
}

/// A device setting changed to fit the local bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    /// The setting (`power_limit_watts`…).
    pub field: &'static str,
    /// What the server asked for.
    pub requested: u32,
    /// What will be applied.
    pub applied: u32,
}

/// Device settings after clamping, with what was changed (each change becomes an event).
#[derive(Debug, Clone, PartialEq)]
pub struct Clamped {
    /// Settings to apply.
    pub settings: DeviceSettings,
    /// Every value moved to a bound.
    pub adjustments: Vec<Adjustment>,
}

/// A device setting that cannot be made safe by clamping; the whole config is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device_id}: {field} = {value} refused: {reason}")]
pub struct Refusal {
    /// The device.
    pub device_id: DeviceId,
    /// The setting.
    pub field: &'static str,
    /// The value asked for.
    pub value: u32,
    /// Why.
    pub reason: &'static str,
}

impl SafetyBounds {
    /// Checks the bounds themselves: each min ≤ its max, fan ≤ 100, no zero maximum.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let pairs = [
            (
                "safety.min_core_clock_mhz",
                self.min_core_clock_mhz,
                self.max_core_clock_mhz,
            ),
            (
                "safety.min_memory_clock_mhz",
                self.min_memory_clock_mhz,
                self.max_memory_clock_mhz,
            ),
        ];
        for (key, min, max) in pairs {
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err((key, format!("minimum {lo} is above maximum {hi}")));
                }
            }
        }
        if self.min_fan_percent.is_some_and(|f| f > 100) {
            return Err(("safety.min_fan_percent", "above 100".into()));
        }
        if self.max_power_watts == Some(0) {
            return Err(("safety.max_power_watts", "must be above 0".into()));
        }
        if self.max_cpu_threads == Some(0) {
            return Err(("safety.max_cpu_threads", "must be above 0".into()));
        }
        Ok(())
    }

    /// Clamps a device's settings from the server to these bounds. Values outside a bound are
    /// moved to it (and listed); values that no clamp makes meaningful (zero power, clocks or
    /// threads, fan above 100 %) refuse the settings, even when the order was properly signed.
    /// A fan minimum applies only to an explicit fan target: with none, the device's own fan
    /// control stays in charge.
    pub fn clamp(&self, settings: &DeviceSettings) -> Result<Clamped, Refusal> {
        let mut out = settings.clone();
        let mut adjustments = Vec::new();
        let refuse = |field, value, reason| Refusal {
            device_id: settings.device_id.clone(),
            field,
            value,
            reason,
        };
        let mut fit = |field: &'static str,
                       value: Option<u32>,
                       min: Option<u32>,
                       max: Option<u32>|
         -> Result<Option<u32>, Refusal> {
            let Some(v) = value else { return Ok(None) };
            if v == 0 {
                return Err(refuse(field, v, "zero is not a setting"));
            }
            let applied = v.max(min.unwrap_or(0)).min(max.unwrap_or(u32::MAX));
            if applied != v {
                adjustments.push(Adjustment {
                    field,
                    requested: v,
                    applied,
                });
            }
            Ok(Some(applied))
        };
        out.power_limit_watts = fit(
            "power_limit_watts",
            settings.power_limit_watts,
            None,
            self.max_power_watts,
        )?;
        out.core_clock_mhz = fit(
            "core_clock_mhz",
            settings.core_clock_mhz,
            self.min_core_clock_mhz,
            self.max_core_clock_mhz,
        )?;
        out.memory_clock_mhz = fit(
            "memory_clock_mhz",
            settings.memory_clock_mhz,
            self.min_memory_clock_mhz,
            self.max_memory_clock_mhz,
        )?;
        out.threads = fit("threads", settings.threads, None, self.max_cpu_threads)?;
        if let Some(f) = settings.fan_percent {
            if f > 100 {
                return Err(refuse("fan_percent", u32::from(f), "above 100 %"));
            }
            let applied = f.max(self.min_fan_percent.unwrap_or(0));
            if applied != f {
                adjustments.push(Adjustment {
                    field: "fan_percent",
                    requested: u32::from(f),
                    applied: u32::from(applied),
                });
            }
            out.fan_percent = Some(applied);
        }
        Ok(Clamped {
            settings: out,
            adjustments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        from_toml(Path::new("agent.toml"), text)
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("accepted {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").expect("empty config");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.api.listen,
            ApiListen::Addr("127.0.0.1:4028".parse().expect("addr"))
        );
        assert!(c.api.privileged_allow.is_empty());
        assert!(!c.opt_in.allow_shell_commands);
        assert_eq!(c.opt_in.reboot_command, None);
        assert_eq!(c.link, LinkConfig::default());
        assert_eq!(c.safety, SafetyBounds::default());
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
        let text = std::fs::read_to_string(&path).expect("example config is shipped");
        let c = from_toml(&path, &text).expect("example config is valid");
        assert_eq!(
            c.link.url.as_deref(),
            Some("https://fleet.example.net:8443")
        );
        assert_eq!(c.safety.max_power_watts, Some(250));
        assert!(!c.opt_in.allow_shell_commands);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let msg = parse_err("state_dir = \"/tmp/x\"\n\n[safety] # bounds\nmax_power_wats = 200\n");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("safety.max_power_wats"), "{msg}");
        assert!(msg.contains("agent.toml"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let msg = parse_err("[safety]\nmin_fan_percent = 30\nmax_power_watts = \"lots\"\n");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("safety.max_power_watts"), "{msg}");
    }

    #[test]
    fn unknown_table_and_syntax_errors_name_the_line() {
        let msg = parse_err("[serve]\nurl = \"https://a\"\n");
        assert!(msg.contains("line 1") && msg.contains("serve"), "{msg}");
        let msg = parse_err("[api]\nlisten = \n");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("api.listen"), "{msg}");
    }

    #[test]
    fn refuses_bad_url_schemes_and_non_urls() {
        for bad in [
            "ftp://host",
            "host:8443",
            "https://",
            "https://a b",
            "https://:8443",
            "https://h:99999",
            "https://[::1:80",
        ] {
            let msg = parse_err(&format!("[server]\nurl = \"{bad}\"\n"));
            assert!(msg.contains("server.url"), "{msg}");
        }
        for ok in [
            "http://127.0.0.1:8080",
            "https://h:1/x",
            "ws://[::1]:9",
            "wss://h",
        ] {
            let c = parse(&format!("[server]\nurl = \"{ok}\"\n")).expect(ok);
            assert_eq!(c.link.url.as_deref(), Some(ok));
        }
    }

    #[test]
    fn api_listen_accepts_addresses_and_off_only() {
        assert_eq!(
            parse("[api]\nlisten = \"off\"\n").expect("off").api.listen,
            ApiListen::Off
        );
        assert_eq!(
            parse("[api]\nlisten = \"[::1]:5000\"\n")
                .expect("v6")
                .api
                .listen,
            ApiListen::Addr("[::1]:5000".parse().expect("addr"))
        );
        let msg = parse_err("[api]\nlisten = \"localhost\"\n");
        assert!(msg.contains("api.listen"), "{msg}");
        let msg = parse_err("[api]\nprivileged_allow = [\"rm -rf\"]\n");
        assert!(msg.contains("api.privileged_allow"), "{msg}");
    }

    #[test]
    fn refuses_inverted_or_impossible_bounds() {
        let msg = parse_err("[safety]\nmin_core_clock_mhz = 900\nmax_core_clock_mhz = 800\n");
        assert!(msg.contains("safety.min_core_clock_mhz"), "{msg}");
        let msg = parse_err("[safety]\nmin_memory_clock_mhz = 9\nmax_memory_clock_mhz = 8\n");
        assert!(msg.contains("safety.min_memory_clock_mhz"), "{msg}");
        assert!(parse_err("[safety]\nmin_fan_percent = 101\n").contains("min_fan_percent"));
        assert!(parse_err("[safety]\nmax_power_watts = 0\n").contains("max_power_watts"));
        assert!(parse_err("[safety]\nmax_cpu_threads = 0\n").contains("max_cpu_threads"));
        assert!(parse_err("[safety]\nmin_fan_percent = -1\n").contains("line 2"));
        assert!(parse_err("[opt_in]\nreboot_command = []\n").contains("reboot_command"));
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "state_dir = \"/from/file\"\n[server]\nurl = \"https://file:1\"\n[api]\nlisten = \"127.0.0.1:1\"\n",
        )
        .expect("write");
        let env: HashMap<&str, String> = [
            ("RIGFLEET_CONFIG", file.display().to_string()),
            ("RIGFLEET_SERVER_URL", "https://env:2".to_string()),
            ("RIGFLEET_STATE_DIR", "/from/env".to_string()),
            ("RIGFLEET_ALLOW_SHELL_COMMANDS", "true".to_string()),
        ]
        .into_iter()
        .collect();
        let get = |k: &str| env.get(k).cloned();
        let c = load_with_env(&Overrides::default(), get).expect("env over file");
        assert_eq!(c.link.url.as_deref(), Some("https://env:2"));
        assert_eq!(c.state_dir, PathBuf::from("/from/env"));
        assert_eq!(
            c.api.listen,
            ApiListen::Addr("127.0.0.1:1".parse().expect("addr"))
        );
        assert!(c.opt_in.allow_shell_commands);

        let flags = Overrides {
            config_path: None,
            server_url: Some("wss://flag:3".into()),
            state_dir: Some("/from/flag".into()),
            api_listen: Some("off".into()),
        };
        let c = load_with_env(&flags, get).expect("flags over env");
        assert_eq!(c.link.url.as_deref(), Some("wss://flag:3"));
        assert_eq!(c.state_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.api.listen, ApiListen::Off);
    }

    #[test]
    fn bad_env_and_flag_values_name_their_source() {
        let env = |k: &str| (k == "RIGFLEET_API_LISTEN").then(|| "nowhere".to_string());
        let o = Overrides {
            config_path: Some("/nonexistent/agent.toml".into()),
            ..Overrides::default()
        };
        // An explicitly named file must exist.
        assert!(matches!(
            load_with_env(&o, |_| None),
            Err(ConfigError::Read { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "").expect("write");
        let o = Overrides {
            config_path: Some(file),
            ..Overrides::default()
        };
        let msg = load_with_env(&o, env).expect_err("bad env").to_string();
        assert!(msg.contains("RIGFLEET_API_LISTEN"), "{msg}");
        let o = Overrides {
            server_url: Some("gopher://x".into()),
            ..o
        };
        let msg = load_with_env(&o, |_| None)
            .expect_err("bad flag")
            .to_string();
        assert!(msg.contains("--server") && msg.contains("gopher"), "{msg}");
        let bad_bool = |k: &str| (k == "RIGFLEET_ALLOW_SHELL_COMMANDS").then(|| "yes".into());
        assert!(load_with_env(&o, bad_bool).is_err());
    }

    fn settings() -> DeviceSettings {
        DeviceSettings {
            device_id: "0000:01:00.0".into(),
            enabled: true,
            power_limit_watts: Some(400),
            core_clock_mhz: Some(2500),
            memory_clock_mhz: Some(100),
            fan_percent: Some(10),
            threads: Some(64),
        }
    }

    fn bounds() -> SafetyBounds {
        SafetyBounds {
            max_power_watts: Some(250),
            min_core_clock_mhz: Some(300),
            max_core_clock_mhz: Some(2000),
            min_memory_clock_mhz: Some(405),
            max_memory_clock_mhz: Some(7000),
            min_fan_percent: Some(30),
            max_cpu_threads: Some(8),
        }
    }

    #[test]
    fn clamp_moves_values_to_the_bounds_and_lists_each_change() {
        let c = bounds().clamp(&settings()).expect("clampable");
        assert_eq!(c.settings.power_limit_watts, Some(250));
        assert_eq!(c.settings.core_clock_mhz, Some(2000));
        assert_eq!(c.settings.memory_clock_mhz, Some(405));
        assert_eq!(c.settings.fan_percent, Some(30));
        assert_eq!(c.settings.threads, Some(8));
        let fields: Vec<_> = c.adjustments.iter().map(|a| a.field).collect();
        assert_eq!(
            fields,
            [
                "power_limit_watts",
                "core_clock_mhz",
                "memory_clock_mhz",
                "threads",
                "fan_percent"
            ]
        );
        assert_eq!(
            c.adjustments[0],
            Adjustment {
                field: "power_limit_watts",
                requested: 400,
                applied: 250
            }
        );
    }

    #[test]
    fn clamp_keeps_values_within_bounds_and_absent_ones() {
        let mut s = settings();
        s.power_limit_watts = Some(200);
        s.core_clock_mhz = None;
        s.memory_clock_mhz = Some(5000);
        s.fan_percent = None;
        s.threads = Some(4);
        let c = bounds().clamp(&s).expect("within bounds");
        assert_eq!(c.settings, s);
        assert!(c.adjustments.is_empty());
        // No bounds at all: nothing changes.
        let c = SafetyBounds::default()
            .clamp(&settings())
            .expect("no bounds");
        assert_eq!(c.settings, settings());
    }

    #[test]
    fn clamp_refuses_meaningless_values() {
        let mut s = settings();
        s.fan_percent = Some(150);
        let r = bounds().clamp(&s).expect_err("fan over 100");
        assert_eq!(r.field, "fan_percent");
        let mut s = settings();
        s.power_limit_watts = Some(0);
        let r = bounds().clamp(&s).expect_err("zero power");
        assert_eq!(r.field, "power_limit_watts");
        assert!(r.to_string().contains("0000:01:00.0"), "{r}");
    }
}
