//! Building blocks of the rig daemon (issue 4), each testable alone: the local config file, the
//! agent's identity and order checks, the on-disk telemetry queue, the persisted desired config
//! and the mining runtime that applies it, the sensor readers, and the cgminer-format local API.
//! The daemon wiring (server link, telemetry loop, commands) comes next and uses them.

pub mod cgminer_api;
pub mod config;
pub mod desired;
pub mod identity;
pub mod mining;
pub mod queue;
pub mod telemetry;
