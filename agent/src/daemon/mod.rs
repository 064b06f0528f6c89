//! The rig daemon (`rigfleet-agent run`), each part testable alone:
//!
//! - [`config`]: the local TOML config (link, state folder, local API, safety bounds, opt-ins).
//! - [`identity`]: the agent's key pair, the pinned server key, order signature checks.
//! - [`queue`]: the crash-safe on-disk telemetry queue; [`desired`]: the last applied config.
//! - [`mining`]: the runtime that applies a desired config to the CPU miner.
//! - [`telemetry`] (sensor readers) and [`sampler`] (one telemetry sample of the rig).
//! - [`link`]: the server link (URL and TLS, WebSocket, handshake, backoff, batching, order gate).
//! - [`online`]: the online half of `run` (link + queue + orders); [`commands`]: what server
//!   commands do; [`watchdog`]: device restarts and disables; [`sd_notify`]: systemd.
//! - [`cgminer_api`]: the cgminer-format local API; [`run`]: the daemon loop wiring all of it.

pub mod cgminer_api;
pub mod commands;
pub mod config;
pub mod desired;
#[cfg(test)]
mod fuzz_corpus;
pub mod identity;
pub mod link;
pub mod mining;
pub mod online;
pub mod queue;
pub mod run;
pub mod sampler;
pub mod sd_notify;
pub mod telemetry;
pub mod watchdog;
