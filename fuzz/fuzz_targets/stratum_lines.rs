//! Stratum lines, both directions: what the client reads from a pool and what the pool reads
//! from a miner, cut into lines by the session codec (`harness/stratum.rs`).
#![no_main]

#[path = "../harness/stratum.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::lines(data));
