//! Telemetry ingest: one writer task turns many small per-rig batches into few large
//! transactions, and acknowledges each batch with its stream's mark (every seq at or below it
//! committed, no hole) only after the transaction holding its samples committed.

pub mod maintenance;
mod writer;

pub use maintenance::spawn_maintenance;
pub use writer::{
    server_time, spawn_writer, IngestBatch, LinkIngest, WriterClosed, WriterHandle, WriterMetrics,
    WriterOptions, DEFAULT_MAX_CLOCK_SKEW,
};
