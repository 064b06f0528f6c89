//! A small, real, validating Stratum V1 pool: the reference the miner is tested against, and the
//! pool of the demo (`rigfleet-agent pool`).
//!
//! It makes jobs from a synthetic block template (BIP 34 coinbase, a merkle branch of depth 4,
//! realistic nBits), sends `mining.set_difficulty` and `mining.notify`, grants BIP 310 version
//! rolling, and checks every share by rebuilding its header and hashing it again, answering with
//! the conventional codes: 20 malformed, 21 unknown or stale job, 22 duplicate, 23 low
//! difficulty, 24 unauthorized worker, 25 not subscribed. Optional vardiff, TLS, and per-worker
//! counters.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rigfleet_stratum::pool::PoolError> {
//! use rigfleet_engine::Algorithm;
//! use rigfleet_stratum::pool::{Pool, PoolConfig};
//!
//! let pool = Pool::bind(PoolConfig::new(Algorithm::Sha256d)).await?;
//! println!("mine on {}", pool.url());
//! pool.new_block(); // clean_jobs=true; older jobs are stale from here on
//! let accepted = pool.stats().totals().accepted;
//! pool.shutdown().await;
//! # let _ = accepted; Ok(()) }
//! ```
//!
//! Modules:
//! - [`template`]: the synthetic block and its jobs, built independently of [`crate::job`].
//! - [`validate`]: the share checks, as pure functions.
//! - [`vardiff`]: the difficulty controller, clock passed in.
//! - [`stats`]: the counters and their snapshots.
//! - [`config`]: settings and errors.
//! - [`tls`]: a self-signed certificate for `stratum+ssl`.
//! - `server` (accept loop, job timer, [`PoolHandle`]) and `session` (one connection).

pub mod config;
mod server;
mod session;
pub mod stats;
pub mod template;
pub mod tls;
pub mod validate;
pub mod vardiff;

pub use config::{AuthPolicy, PoolConfig, PoolError, DEFAULT_VERSION_MASK};
pub use server::{Pool, PoolHandle};
pub use session::{MAX_LIVE_JOBS, MAX_MALFORMED_LINES, MAX_WORKERS_PER_CONNECTION};
pub use stats::{PoolStats, WorkerStats};
pub use tls::{self_signed, SelfSignedTls};
pub use vardiff::VardiffConfig;

#[cfg(test)]
mod tests;
