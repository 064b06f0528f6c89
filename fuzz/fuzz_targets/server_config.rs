//! The server's TOML config file (`harness/server_config.rs`), compiled in from
//! `server/src/config.rs` so the fuzz build does not link the whole server.
#![no_main]

#[path = "../../server/src/config.rs"]
#[allow(dead_code)]
mod config;

#[path = "../harness/server_config.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::server_config(data));
