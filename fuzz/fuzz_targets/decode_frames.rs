//! Agent protocol: frames the server reads from agents, frames agents read from the server, and
//! the payloads of signed orders (`harness/frames.rs`). None may panic; what decodes round-trips.
#![no_main]

#[path = "../harness/frames.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::decode_frames(data));
