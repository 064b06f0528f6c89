//! Building blocks of the rig daemon (issue 4), each testable alone: the local config file, the
//! agent's identity and order checks, the on-disk telemetry queue, the persisted desired config
//! and the mining runtime that applies it, the sensor readers, and the cgminer-format local API.
//! [`run`] wires the offline half into the `run` command (config, persisted desired config,
//! mining, local API); the server link, telemetry loop and commands come next and use the rest.

pub mod cgminer_api;
pub mod config;
pub mod desired;
pub mod identity;
pub mod mining;
pub mod queue;
pub mod run;
pub mod telemetry;
