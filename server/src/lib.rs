//! rigfleet's central server: the agent hub, telemetry storage on SQLite or PostgreSQL, the REST
//! API, Prometheus metrics and the web dashboard. `rigfleet-server` is a thin CLI over [`start`].

pub mod api;
pub mod app;
pub mod auth;
pub mod coins;
pub mod config;
pub mod db;
pub mod demo;
pub mod enroll;
pub mod files;
pub mod fleet;
pub mod heap;
pub mod hub;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod secrets;
pub mod serve;
pub mod startup;
pub mod tls;
pub mod web;

pub use startup::{start, RunningServer, StartError};

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
