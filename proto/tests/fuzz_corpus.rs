//! Replays `fuzz/corpus/decode_frames` on stable Rust through the harness the fuzz target runs
//! (`fuzz/harness/frames.rs`): agent and server frames, order payloads, round trips.

#[path = "../../fuzz/harness/frames.rs"]
mod harness;

use std::path::Path;

#[test]
fn decode_frames_fuzz_corpus_replays_through_the_harness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode_frames");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| harness::decode_frames(&bytes));
        assert!(outcome.is_ok(), "{} panics", path.display());
        count += 1;
    }
    assert!(count >= 12, "corpus present ({count})");
}
