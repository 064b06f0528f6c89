//! rigfleet's hashing engine: SHA-256d and Scrypt on the devices of a rig.
//!
//! No tokio and no network: the Stratum layer turns pool jobs into [`Work`], and the engine turns
//! work into found nonces and hash counts.
//!
//! - [`algo`]: algorithms and their scan kernels (portable and SIMD, picked at run time).
//! - [`target`]: 256-bit targets, nBits, difficulty.
//! - [`work`]: a header template with its share target, nonce range and version-rolling mask.
//! - [`calibrate`]: picks the CPU kernel path and thread count by measuring them.
//! - [`device`]: the `Device` trait, the CPU backend and the GPU routes (`device::gpu`).
//! - [`miner`]: splits nonce space across devices, rolls work, rechecks every found nonce.
//! - [`meter`]: 5 s / 1 min / 15 min hash-rate averages.
//! - [`test_vectors`]: real block headers and published hashes used by the tests.

pub mod algo;
pub mod calibrate;
pub mod error;
pub mod hex;
pub mod target;
#[cfg(test)]
mod test_rng;

pub use algo::{Algorithm, Kernel, NonceRange};
pub use error::{EngineError, TargetError};
pub use target::{Difficulty, Target};
pub mod device;
pub mod meter;
pub mod miner;
pub mod test_vectors;
pub mod work;

pub use device::{Device, DeviceEvent, DeviceId, DeviceInfo};
pub use meter::{HashMeter, HashRates};
pub use miner::{Miner, MinerStats, Share, WorkSource};
pub use work::{Work, WorkId};
