//! Requests to the agent's cgminer-format local API (`harness/agent.rs`). The agent is a binary
//! crate, so its API and config modules are compiled in from their files under the same path
//! (`crate::daemon`); `--cfg fuzzing` leaves out the part that needs the mining runtime.
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

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::cgminer_api(data));
