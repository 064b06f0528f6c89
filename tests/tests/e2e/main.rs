//! End-to-end tests: real pools, miners, (later) servers and agents on 127.0.0.1.

/// The engine and the Stratum client mining against the validating test pool over TCP.
mod stratum_mining;
