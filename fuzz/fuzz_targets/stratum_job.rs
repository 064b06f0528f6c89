//! Stratum jobs into engine work: a pool's session transcript (subscribe, configure, difficulty,
//! notify), each job built into work and shares into submits that rebuild the hashed header
//! (`harness/stratum.rs`).
#![no_main]

#[path = "../harness/stratum.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::job(data));
