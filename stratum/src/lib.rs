//! Stratum V1 for rigfleet: the pool client (jobs into engine work, share submission, failover)
//! and a small validating pool for tests and the demo.
//!
//! - [`message`]: the JSON-RPC envelope and typed messages, split by direction.
//! - [`codec`]: newline framing with a line-length bound.
//! - [`job`]: coinbase, merkle root and header building; jobs into engine work; shares into
//!   submits.

pub mod client;
pub mod codec;
pub mod error;
pub mod failover;
pub mod job;
pub mod job_book;
pub mod message;
pub mod pool;
pub mod session;
pub mod shares;
pub mod transport;

#[cfg(test)]
mod test_utils;

pub use error::MessageError;
pub use job::JobTemplate;
pub use message::{ClientRequest, Frame, Notify, ServerMessage, StratumError};
