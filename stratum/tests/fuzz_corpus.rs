//! Replays the Stratum fuzz corpora on stable Rust, through the harness the fuzz targets run
//! (`fuzz/harness/stratum.rs`): `fuzz/corpus/stratum_lines` (lines both ways) and
//! `fuzz/corpus/stratum_job` (notify into work and submits). A crash found once stays fixed.

#[path = "../../fuzz/harness/stratum.rs"]
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
fn stratum_lines_fuzz_corpus_replays_without_panics() {
    replay("stratum_lines", harness::lines, 10);
}

#[test]
fn stratum_job_fuzz_corpus_replays_without_panics() {
    replay("stratum_job", harness::job, 4);
}
