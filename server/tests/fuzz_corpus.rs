//! Replays `fuzz/corpus/server_config` on stable Rust through the harness the fuzz target runs
//! (`fuzz/harness/server_config.rs`). A crash found once stays fixed.

/// The harness names the parser `crate::config`, as in the fuzz crate.
mod config {
    pub use rigfleet_server::config::*;
}

#[path = "../../fuzz/harness/server_config.rs"]
mod harness;

use std::path::Path;

#[test]
fn server_config_fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/server_config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| harness::server_config(&bytes));
        assert!(outcome.is_ok(), "{} panics", path.display());
        count += 1;
    }
    assert!(count >= 5, "corpus present ({count})");
}

/// Found with the `server_config` target: retention values that overflowed (a panic in debug
/// builds) or wrapped to a pruning cutoff in the future (every row pruned) are refused.
#[test]
fn retention_beyond_100_years_is_refused_not_wrapped() {
    let parse = |text: &str| rigfleet_server::config::from_toml(Path::new("server.toml"), text);
    for text in [
        "[retention]\nraw_hours = 18446744073709551615\n",
        "[retention]\nraw_hours = 3000000000000000\nminute_days = 200000000000000\nhour_days = 200000000000000\n",
        "[retention]\nhour_days = 36501\n",
    ] {
        let err = parse(text).expect_err(text).to_string();
        assert!(err.contains("retention") && err.contains("100 years"), "{err}");
    }
    let c = parse("[retention]\nraw_hours = 876000\nminute_days = 36500\nhour_days = 36500\n")
        .expect("100 years is allowed");
    assert_eq!(c.retention.hour.as_secs(), 36_500 * 86_400);
}
