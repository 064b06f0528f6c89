//! rigfleet's central server: agent hub, storage, REST API, metrics and web UI.

pub mod db;

pub mod ingest;

// Integration in progress: the app modules build with `--features hub` until the storage layer
// settles (then this gate goes away).
#[cfg(feature = "hub")]
pub mod api;
#[cfg(feature = "hub")]
pub mod app;
#[cfg(feature = "hub")]
pub mod config;
#[cfg(feature = "hub")]
pub mod demo;
#[cfg(feature = "hub")]
pub mod enroll;
#[cfg(feature = "hub")]
pub mod files;
#[cfg(feature = "hub")]
pub mod hub;
#[cfg(feature = "hub")]
pub mod keys;
#[cfg(feature = "hub")]
pub mod metrics;
#[cfg(feature = "hub")]
pub mod serve;
#[cfg(feature = "hub")]
pub mod startup;
#[cfg(feature = "hub")]
pub mod tls;

#[cfg(feature = "hub")]
pub use startup::{start, RunningServer, StartError};

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
