//! Stratum V1: the pool client (jobs into engine work, share submission, failover) and a small
//! validating pool for tests and the demo. Filled in by the Stratum issue; the engine's `Work` is
//! the boundary it builds on.
