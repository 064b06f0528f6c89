//! Telemetry ingest: one writer task turns many small per-rig batches into few large
//! transactions, and acknowledges each batch with the rig's durable high-water mark only after
//! the transaction holding its samples committed.

pub mod maintenance;
mod writer;

pub use maintenance::spawn_maintenance;
pub use writer::{
    spawn_writer, IngestBatch, WriterClosed, WriterHandle, WriterMetrics, WriterOptions,
};
