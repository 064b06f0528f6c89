//! Building blocks of the rig daemon (issue 4), kept apart from the link and the miner so each
//! can be tested alone: the local config file, the agent's identity and order checks, and the
//! on-disk telemetry queue. The daemon wiring (link, apply, telemetry loop) uses them.

pub mod config;
pub mod desired;
pub mod identity;
pub mod mining;
pub mod queue;
