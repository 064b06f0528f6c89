//! The test pool's settings and its errors.

use std::sync::Arc;
use std::time::Duration;

use rigfleet_engine::{Algorithm, Difficulty};

use super::template::{SCRYPT_NBITS, SHA256D_NBITS};
use super::vardiff::VardiffConfig;
use crate::message::server_to_client::MAX_EXTRANONCE2_SIZE;

/// Version bits a pool lets miners roll by default: bits 13–28, the range BIP 320 sets aside
/// for general-purpose use (`0x1fffe000`).
pub const DEFAULT_VERSION_MASK: u32 = 0x1fff_e000;

/// Longest worker name accepted in `mining.authorize`; names end up in stats and logs.
pub const MAX_WORKER_NAME_BYTES: usize = 256;

/// Who may authorize.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum AuthPolicy {
    /// Every non-empty worker name, any password (what most pools do for `x`).
    #[default]
    Open,
    /// Every worker name with exactly this password.
    Password(String),
    /// Nobody: every `mining.authorize` is answered `false` (for failover tests).
    DenyAll,
}

impl AuthPolicy {
    /// Whether this user/password pair may submit shares.
    pub fn allows(&self, user: &str, password: &str) -> bool {
        if user.is_empty() || user.len() > MAX_WORKER_NAME_BYTES {
            return false;
        }
        match self {
            AuthPolicy::Open => true,
            AuthPolicy::Password(p) => p == password,
            AuthPolicy::DenyAll => false,
        }
    }
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthPolicy::Open => f.write_str("Open"),
            // Never print the secret.
            AuthPolicy::Password(_) => f.write_str("Password(<hidden>)"),
            AuthPolicy::DenyAll => f.write_str("DenyAll"),
        }
    }
}

/// Everything the pool needs to start.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// What shares are hashed with.
    pub algorithm: Algorithm,
    /// Address to listen on (`127.0.0.1:0` picks a free port; see `PoolHandle::local_addr`).
    pub listen: String,
    /// Share difficulty of a new connection.
    pub difficulty: Difficulty,
    /// Per-connection variable difficulty; `None` keeps the difficulty fixed (suggestions and
    /// `PoolHandle::set_difficulty` still change it).
    pub vardiff: Option<VardiffConfig>,
    /// A new job (same block, `clean_jobs=false`) this often; `None` only on demand.
    pub job_interval: Option<Duration>,
    /// Version bits miners may roll (BIP 310); 0 refuses version rolling.
    pub version_mask: u32,
    /// Bytes of extranonce2 miners fill in (1–16).
    pub extranonce2_size: usize,
    /// Serve `stratum+ssl` with this TLS configuration instead of plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may authorize.
    pub auth: AuthPolicy,
    /// Most connections at once; more are closed at once (so a client fails over instead of
    /// hanging in the listen backlog).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Miners at a fitting difficulty
    /// send shares every few seconds, so ten minutes only catches dead peers.
    pub idle_timeout: Duration,
    /// Height of the first block.
    pub start_height: u64,
    /// Network target of the jobs (compact form).
    pub nbits: u32,
}

impl PoolConfig {
    /// Defaults for an algorithm: `127.0.0.1:0`, a CPU-friendly difficulty, no vardiff, a new
    /// job every 30 s, the BIP 320 mask, 4-byte extranonce2, plain TCP, open authorization.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            listen: "127.0.0.1:0".into(),
            difficulty: Self::default_difficulty(algorithm),
            vardiff: None,
            job_interval: Some(Duration::from_secs(30)),
            version_mask: DEFAULT_VERSION_MASK,
            extranonce2_size: 4,
            tls: None,
            auth: AuthPolicy::Open,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(600),
            start_height: 881_423,
            nbits: match algorithm {
                Algorithm::Sha256d => SHA256D_NBITS,
                Algorithm::Scrypt => SCRYPT_NBITS,
            },
        }
    }

    /// A difficulty at which one CPU core finds shares every second or so: SHA-256d 0.001
    /// (≈ 4.3 million hashes a share), Scrypt 0.1 (≈ 6,600 hashes, since Scrypt difficulty 1 is
    /// 2^16 hashes).
    pub fn default_difficulty(algorithm: Algorithm) -> Difficulty {
        let d = match algorithm {
            Algorithm::Sha256d => 0.001,
            Algorithm::Scrypt => 0.1,
        };
        Difficulty::new(d).expect("BUG: positive constant")
    }

    /// Checks the settings that types cannot.
    pub fn validate(&self) -> Result<(), PoolError> {
        if !(1..=MAX_EXTRANONCE2_SIZE).contains(&self.extranonce2_size) {
            return Err(PoolError::Config(format!(
                "extranonce2 size must be 1 to {MAX_EXTRANONCE2_SIZE}"
            )));
        }
        if self.max_connections == 0 {
            return Err(PoolError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(PoolError::Config("idle_timeout must be positive".into()));
        }
        if self.job_interval.is_some_and(|i| i.is_zero()) {
            return Err(PoolError::Config("job_interval must be positive".into()));
        }
        if let Some(problem) = self.vardiff.as_ref().and_then(VardiffConfig::problem) {
            return Err(PoolError::Config(problem));
        }
        if rigfleet_engine::Target::from_nbits(self.nbits).is_err() {
            return Err(PoolError::Config(format!(
                "invalid nbits {:08x}",
                self.nbits
            )));
        }
        Ok(())
    }
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The settings contradict themselves.
    #[error("invalid pool settings: {0}")]
    Config(String),
    /// The TLS certificate or configuration could not be made.
    #[error("TLS: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_refused() {
        for algo in Algorithm::ALL {
            assert!(PoolConfig::new(algo).validate().is_ok());
        }
        let mut c = PoolConfig::new(Algorithm::Sha256d);
        c.extranonce2_size = 0;
        assert!(c.validate().is_err());
        c.extranonce2_size = 17;
        assert!(c.validate().is_err());
        let mut c = PoolConfig::new(Algorithm::Sha256d);
        c.nbits = 0x0180_0000;
        assert!(c.validate().is_err());
        let mut c = PoolConfig::new(Algorithm::Sha256d);
        c.job_interval = Some(Duration::ZERO);
        assert!(c.validate().is_err());
    }

    #[test]
    fn auth_policy_checks_and_hides_the_password() {
        assert!(AuthPolicy::Open.allows("a.b", "x"));
        assert!(!AuthPolicy::Open.allows("", "x"));
        assert!(!AuthPolicy::Open.allows(&"w".repeat(MAX_WORKER_NAME_BYTES + 1), "x"));
        let p = AuthPolicy::Password("s3cret".into());
        assert!(p.allows("a", "s3cret"));
        assert!(!p.allows("a", "x"));
        assert!(!AuthPolicy::DenyAll.allows("a", "x"));
        assert!(!format!("{p:?}").contains("s3cret"));
    }
}
