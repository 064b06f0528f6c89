//! The client's configuration: the pool list with per-pool options, time limits, and the
//! errors of a configuration the client cannot run with.

use std::fmt;
use std::time::Duration;

use rigfleet_engine::Algorithm;

use crate::failover::Backoff;
use crate::session::DEFAULT_RESPONSE_TIMEOUT;
use crate::transport::{PoolUrl, TlsOptions, TransportError, UrlError, DEFAULT_CONNECT_TIMEOUT};

/// Default time without a new job before the active pool is failed over (see the module doc).
pub const DEFAULT_NO_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time from authorization to the first job.
pub const DEFAULT_FIRST_JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-pool protocol options.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOptions {
    /// Ask for BIP 310 version rolling (default on).
    pub version_rolling: bool,
    /// Send `mining.suggest_difficulty` with this value.
    pub suggest_difficulty: Option<f64>,
    /// Send `mining.extranonce.subscribe` (NiceHash and some proxies want it).
    pub extranonce_subscribe: bool,
    /// Submit shares found on jobs a `clean_jobs` replaced (default off: they are stale).
    pub submit_stale: bool,
    /// Certificate checks for `stratum+ssl` URLs.
    pub tls: TlsOptions,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            version_rolling: true,
            suggest_difficulty: None,
            extranonce_subscribe: false,
            submit_stale: false,
            tls: TlsOptions::default(),
        }
    }
}

/// One pool of the list.
#[derive(Clone, PartialEq)]
pub struct PoolConfig {
    /// Where.
    pub url: PoolUrl,
    /// Worker name (`WALLET.worker` or account.worker).
    pub user: String,
    /// Password (often `x`).
    pub password: String,
    /// Lower is preferred; equal priorities keep list order.
    pub priority: u32,
    /// Protocol options.
    pub options: PoolOptions,
}

impl PoolConfig {
    /// A pool with default options and priority 0.
    pub fn new(
        url: &str,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, UrlError> {
        Ok(Self {
            url: url.parse()?,
            user: user.into(),
            password: password.into(),
            priority: 0,
            options: PoolOptions::default(),
        })
    }
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("url", &self.url.to_string())
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("priority", &self.priority)
            .field("options", &self.options)
            .finish()
    }
}

/// Time limits of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Answer to any request.
    pub response: Duration,
    /// From authorization to the first job.
    pub first_job: Duration,
    /// Between jobs on the active pool.
    pub no_job: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            response: DEFAULT_RESPONSE_TIMEOUT,
            first_job: DEFAULT_FIRST_JOB_TIMEOUT,
            no_job: DEFAULT_NO_JOB_TIMEOUT,
        }
    }
}

/// Everything the client needs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The pools, in list order (priority decides, then this order).
    pub pools: Vec<PoolConfig>,
    /// What is mined.
    pub algorithm: Algorithm,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Reconnect backoff.
    pub backoff: Backoff,
}

impl ClientConfig {
    /// Default timeouts and backoff.
    pub fn new(pools: Vec<PoolConfig>, algorithm: Algorithm) -> Self {
        Self {
            pools,
            algorithm,
            timeouts: Timeouts::default(),
            backoff: Backoff::default(),
        }
    }
}

/// A configuration the client cannot run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No pool at all.
    #[error("no pool configured")]
    NoPools,
    /// A pool without a worker name.
    #[error("pool {0}: the user (worker name) is empty")]
    EmptyUser(String),
    /// A suggested difficulty that is not a positive number.
    #[error("pool {0}: the suggested difficulty must be a positive number")]
    BadSuggestedDifficulty(String),
    /// The TLS options of a pool do not work.
    #[error("pool {url}: {source}")]
    Tls {
        /// The pool.
        url: String,
        /// What is wrong.
        source: TransportError,
    },
}
