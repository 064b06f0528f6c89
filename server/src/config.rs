//! The server's configuration: an optional TOML file, `RIGFLEET_*` environment variables and
//! flags, in that order of precedence. Everything is checked before the server binds a port, so
//! it never starts with half a config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default listen address: loopback, so a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data folder (SQLite file, keys, generated certificate).
pub const DEFAULT_DATA_DIR: &str = "rigfleet-data";
/// Longest retention of any telemetry table, in days (100 years).
pub const MAX_RETENTION_DAYS: u64 = 36_500;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key; the message names the line and key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (line, column, key).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How HTTP is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP (loopback, or behind a TLS-terminating reverse proxy by explicit choice).
    Plain,
    /// The operator's certificate and key (PEM files).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A certificate generated once into the data folder; agents pin its fingerprint.
    SelfSigned,
}

/// Retention of telemetry tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Raw samples.
    pub raw: Duration,
    /// 1-minute rollups.
    pub minute: Duration,
    /// 1-hour rollups.
    pub hour: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw: Duration::from_secs(6 * 3600),
            minute: Duration::from_secs(7 * 86_400),
            hour: Duration::from_secs(730 * 86_400),
        }
    }
}

/// The complete, validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where HTTP, the agent WebSocket and /metrics listen.
    pub listen: SocketAddr,
    /// SQLite file, server key, generated certificate.
    pub data_dir: PathBuf,
    /// `sqlite:…` or `postgres://…`; `None` = SQLite file in the data folder.
    pub database_url: Option<String>,
    /// How HTTP is served.
    pub tls: TlsMode,
    /// The address agents and browsers use to reach the server (shown in enroll commands);
    /// defaults to the listen address with the right scheme.
    pub public_url: Option<String>,
    /// Bearer token Prometheus must send to read /metrics; `None` = open (allowed off loopback
    /// only with `public_metrics`).
    pub metrics_token: Option<String>,
    /// Leave /metrics open on a non-loopback address on purpose (`--public-metrics`).
    pub public_metrics: bool,
    /// Telemetry interval told to agents in `welcome`.
    pub telemetry_interval_secs: u32,
    /// Retention of telemetry.
    pub retention: RetentionConfig,
}

impl ServerConfig {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("rigfleet.db").display()),
        }
    }

    /// The URL people and agents use.
    pub fn public_url(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let scheme = if self.tls == TlsMode::Plain {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.listen)
    }

    /// Who may read `/metrics`, or why this config must not start: off loopback, /metrics
    /// (every rig, group and pool URL) needs a bearer token unless the operator chose
    /// `public_metrics`.
    pub fn metrics_access(&self) -> Result<MetricsAccess, ConfigError> {
        match self.metrics_token.as_deref() {
            Some(t) if t.trim().is_empty() || t.len() > 512 => Err(ConfigError::Invalid {
                key: "metrics_token",
                reason: "must be 1 to 512 characters".into(),
            }),
            Some(_) => Ok(MetricsAccess::Token),
            None if self.listen.ip().is_loopback() => Ok(MetricsAccess::Loopback),
            None if self.public_metrics => Ok(MetricsAccess::Public),
            None => Err(ConfigError::Invalid {
                key: "metrics_token",
                reason: format!(
                    "the server listens on {}, which is not loopback, and /metrics lists every rig, \
                     group and pool: set a token Prometheus must send (--metrics-token, \
                     RIGFLEET_METRICS_TOKEN or metrics_token in the file), or leave /metrics open \
                     to anyone on purpose (--public-metrics, RIGFLEET_PUBLIC_METRICS=true or \
                     public_metrics = true)",
                    self.listen
                ),
            }),
        }
    }

    /// Whether the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Callers that send the bearer token.
    Token,
    /// Anyone who reaches the loopback address.
    Loopback,
    /// Anyone: the operator chose `public_metrics` on a non-loopback address.
    Public,
}

impl MetricsAccess {
    /// What the server says at start.
    pub fn describe(self) -> &'static str {
        match self {
            MetricsAccess::Token => "/metrics needs the bearer token (metrics_token)",
            MetricsAccess::Loopback => "/metrics is open on loopback only",
            MetricsAccess::Public => {
                "/metrics is open to anyone who reaches this address (public_metrics)"
            }
        }
    }
}

/// Values from flags (and, through clap's `env`, from `RIGFLEET_*` variables); `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config_path: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--plain-http`: serve plain HTTP on a non-loopback address (behind a TLS proxy).
    pub plain_http: bool,
    /// `--self-signed`: serve TLS with a generated certificate even on loopback.
    pub self_signed: bool,
    /// `--public-url`.
    pub public_url: Option<String>,
    /// `--metrics-token`.
    pub metrics_token: Option<String>,
    /// `--public-metrics`.
    pub public_metrics: bool,
}

/// The file as written; every key optional, unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    metrics_token: Option<String>,
    public_metrics: Option<bool>,
    telemetry_interval_secs: Option<u32>,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    retention: FileRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    plain_http: Option<bool>,
    self_signed: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    raw_hours: Option<u64>,
    minute_days: Option<u64>,
    hour_days: Option<u64>,
}

/// Reads the file named by `overrides.config_path` (if any) and applies the overrides.
pub fn load(overrides: &Overrides) -> Result<ServerConfig, ConfigError> {
    let file = match &overrides.config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            parse_file(path, &text)?
        }
        None => FileConfig::default(),
    };
    build(file, overrides)
}

/// Parses and validates config text alone (no flags, no environment); `path` only names it in
/// errors. The fuzz target `server_config` (`fuzz/`) and its corpus replay call this.
pub fn from_toml(path: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
    build(parse_file(path, text)?, &Overrides::default())
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn build(file: FileConfig, o: &Overrides) -> Result<ServerConfig, ConfigError> {
    let listen_text = o
        .listen
        .clone()
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|e| ConfigError::Invalid {
        key: "listen",
        reason: format!("{listen_text:?} is not an address:port ({e})"),
    })?;
    let data_dir = o
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let database_url = o.database_url.clone().or(file.database_url);
    if let Some(url) = &database_url {
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !known.iter().any(|p| url.starts_with(p)) {
            return Err(ConfigError::Invalid {
                key: "database_url",
                reason: "must start with sqlite:, postgres:// or postgresql://".into(),
            });
        }
    }
    let cert = o.tls_cert.clone().or(file.tls.cert);
    let key = o.tls_key.clone().or(file.tls.key);
    let plain_http = o.plain_http || file.tls.plain_http.unwrap_or(false);
    let self_signed = o.self_signed || file.tls.self_signed.unwrap_or(false);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            if plain_http {
                return Err(ConfigError::Invalid {
                    key: "tls",
                    reason: "a certificate and plain_http were both given".into(),
                });
            }
            TlsMode::Files { cert, key }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "tls",
                reason: "give both the certificate and the key".into(),
            })
        }
        (None, None) if self_signed => TlsMode::SelfSigned,
        (None, None) if plain_http || listen.ip().is_loopback() => TlsMode::Plain,
        // Off loopback the server speaks TLS unless the operator says a proxy terminates it.
        (None, None) => TlsMode::SelfSigned,
    };
    let telemetry_interval_secs = file.telemetry_interval_secs.unwrap_or(10);
    if !(1..=3600).contains(&telemetry_interval_secs) {
        return Err(ConfigError::Invalid {
            key: "telemetry_interval_secs",
            reason: "must be 1 to 3600".into(),
        });
    }
    // Bounded so that every duration fits the i64 milliseconds the pruning job computes with:
    // unbounded, `raw_hours = 18446744073709551615` overflowed here, and a value that fitted u64
    // seconds but not i64 milliseconds wrapped to a cutoff in the future (pruning every row).
    let r = &file.retention;
    if r.raw_hours.is_some_and(|h| h > MAX_RETENTION_DAYS * 24)
        || r.minute_days.is_some_and(|d| d > MAX_RETENTION_DAYS)
        || r.hour_days.is_some_and(|d| d > MAX_RETENTION_DAYS)
    {
        return Err(ConfigError::Invalid {
            key: "retention",
            reason: format!("each table keeps at most {MAX_RETENTION_DAYS} days (100 years)"),
        });
    }
    let defaults = RetentionConfig::default();
    let retention = RetentionConfig {
        raw: file
            .retention
            .raw_hours
            .map_or(defaults.raw, |h| Duration::from_secs(h * 3600)),
        minute: file
            .retention
            .minute_days
            .map_or(defaults.minute, |d| Duration::from_secs(d * 86_400)),
        hour: file
            .retention
            .hour_days
            .map_or(defaults.hour, |d| Duration::from_secs(d * 86_400)),
    };
    if retention.raw.is_zero()
        || retention.minute < retention.raw
        || retention.hour < retention.minute
    {
        return Err(ConfigError::Invalid {
            key: "retention",
            reason: "each table must keep at least as long as the finer one, and raw > 0".into(),
        });
    }
    let config = ServerConfig {
        listen,
        data_dir,
        database_url,
        tls,
        public_url: o.public_url.clone().or(file.public_url),
        metrics_token: o.metrics_token.clone().or(file.metrics_token),
        public_metrics: o.public_metrics || file.public_metrics.unwrap_or(false),
        telemetry_interval_secs,
        retention,
    };
    // Who may read /metrics is checked when the server starts (`metrics_access`), so the
    // token and key commands still work with a config that could not serve.
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        build(
            parse_file(Path::new("server.toml"), text)?,
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_are_loopback_plain_sqlite() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.tls, TlsMode::Plain);
        assert!(c.database_url().starts_with("sqlite://"));
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        assert_eq!(c.retention, RetentionConfig::default());
    }

    #[test]
    fn non_loopback_gets_tls_unless_plain_is_chosen() {
        let c = parse("listen = \"0.0.0.0:8443\"").unwrap();
        assert_eq!(c.tls, TlsMode::SelfSigned);
        assert!(c.public_url().starts_with("https://"));
        let c = parse("listen = \"0.0.0.0:8080\"\n[tls]\nplain_http = true").unwrap();
        assert_eq!(c.tls, TlsMode::Plain);
    }

    #[test]
    fn metrics_off_loopback_need_a_token_or_an_explicit_choice() {
        let access = |text: &str| parse(text).unwrap().metrics_access();
        let e = access("listen = \"0.0.0.0:8443\"").unwrap_err().to_string();
        assert!(
            e.starts_with("metrics_token:") && e.contains("--public-metrics"),
            "{e}"
        );
        let e = access("listen = \"[::]:8443\"").unwrap_err().to_string();
        assert!(e.starts_with("metrics_token:"), "{e}");
        assert_eq!(
            access("listen = \"0.0.0.0:8443\"\nmetrics_token = \"s3cret\"").unwrap(),
            MetricsAccess::Token
        );
        assert_eq!(
            access("listen = \"0.0.0.0:8443\"\npublic_metrics = true").unwrap(),
            MetricsAccess::Public
        );
        let flags = Overrides {
            listen: Some("192.0.2.1:8080".into()),
            public_metrics: true,
            ..Overrides::default()
        };
        let c = build(FileConfig::default(), &flags).unwrap();
        assert_eq!(c.metrics_access().unwrap(), MetricsAccess::Public);
        assert_eq!(access("").unwrap(), MetricsAccess::Loopback);
        let e = access("metrics_token = \" \"").unwrap_err().to_string();
        assert!(e.starts_with("metrics_token:"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("listn = \"x\"").unwrap_err().to_string();
        assert!(e.contains("listn") && e.contains("line 1"), "{e}");
        let e = parse("listen = \"nope\"").unwrap_err().to_string();
        assert!(e.starts_with("listen:"), "{e}");
        let e = parse("database_url = \"mysql://x\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("database_url:"), "{e}");
        let e = parse("[tls]\ncert = \"/c.pem\"").unwrap_err().to_string();
        assert!(e.starts_with("tls:"), "{e}");
        let e = parse("[retention]\nraw_hours = 0").unwrap_err().to_string();
        assert!(e.starts_with("retention:"), "{e}");
        let e = parse("telemetry_interval_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("telemetry_interval_secs:"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse_file(Path::new("s.toml"), "listen = \"127.0.0.1:1\"").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            database_url: Some("postgres://localhost/x".into()),
            ..Overrides::default()
        };
        let c = build(file, &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert!(c.is_postgres());
    }
}
