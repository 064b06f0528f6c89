//! Replays the fuzz corpora of the agent's local decoders on stable Rust, through the harness the
//! fuzz targets run (`fuzz/harness/agent.rs`): `fuzz/corpus/cgminer_api` (local API requests)
//! and `fuzz/corpus/agent_config` (the TOML config file). A crash found once stays fixed.

#[path = "../../../fuzz/harness/agent.rs"]
mod harness;

use std::path::Path;

/// Every file of `fuzz/corpus/<target>` through `run`; panics name the file.
fn replay(target: &str, run: fn(&[u8]), at_least: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{} panics", path.display());
        count += 1;
    }
    assert!(
        count >= at_least,
        "{target}: {count} inputs, expected {at_least}+"
    );
}

#[test]
fn cgminer_api_fuzz_corpus_replays_without_panics() {
    replay("cgminer_api", harness::cgminer_api, 10);
}

#[test]
fn agent_config_fuzz_corpus_replays_without_panics() {
    replay("agent_config", harness::agent_config, 5);
}
