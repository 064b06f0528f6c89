//! Fuzz harness for the server's TOML config file (`server_config`). Shared by the fuzz target
//! (which compiles `server/src/config.rs` into the fuzz crate as `crate::config`) and
//! `server/tests/fuzz_corpus.rs` (where `crate::config` re-exports `rigfleet_server::config`).

use std::path::Path;

use crate::config;

/// One config file as `rigfleet-server --config` reads it.
pub fn server_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::from_toml(Path::new("server.toml"), text) {
        let _ = cfg.database_url();
        let _ = cfg.public_url();
        let _ = cfg.metrics_access();
        let _ = cfg.is_postgres();
        // The pruning job computes cutoffs in i64 milliseconds (`startup.rs`, `db/rollup.rs`).
        for kept in [cfg.retention.raw, cfg.retention.minute, cfg.retention.hour] {
            assert!(
                kept.as_millis() <= i64::MAX as u128 / 2,
                "retention {kept:?} does not fit the pruning job's i64 milliseconds"
            );
        }
    }
}
