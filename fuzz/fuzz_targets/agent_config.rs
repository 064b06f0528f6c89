//! The agent's TOML config file and `--api-listen` value (`harness/agent.rs`), compiled in from
//! `agent/src/daemon/config.rs` (the agent is a binary crate).
#![no_main]

#[path = "../../agent/src/daemon"]
#[allow(dead_code, unused_imports)]
mod daemon {
    pub mod cgminer_api;
    pub mod config;
}

#[path = "../harness/agent.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::agent_config(data));
