//! Errors of the engine, split by what the caller can do about them.

/// A target or difficulty that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// nBits with the sign bit set encodes a negative target, which Bitcoin rejects.
    #[error("nBits {0:#010x} has the sign bit set")]
    NegativeNbits(u32),
    /// nBits whose value does not fit in 256 bits.
    #[error("nBits {0:#010x} overflows 256 bits")]
    NbitsOverflow(u32),
    /// A zero target can never be met.
    #[error("target is zero")]
    ZeroTarget,
    /// Difficulty must be finite and positive.
    #[error("difficulty {0} is not a finite positive number")]
    InvalidDifficulty(f64),
    /// A target string that is not 64 hex digits.
    #[error("target is not 64 hex digits")]
    BadHex,
}

/// Errors from choosing kernels and running devices.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// An algorithm name the engine does not know.
    #[error("unknown algorithm {0:?} (known: sha256d, scrypt)")]
    UnknownAlgorithm(String),
    /// A kernel path that does not exist or that this CPU cannot run.
    #[error("{algorithm} has no kernel path {path:?} on this CPU (available: {available})")]
    UnknownPath {
        /// The algorithm asked for.
        algorithm: &'static str,
        /// The path asked for.
        path: String,
        /// The paths this CPU runs.
        available: String,
    },
    /// Work for one algorithm given to a device set up for another.
    #[error("work is for {work} but the device mines {device}")]
    AlgorithmMismatch {
        /// Algorithm of the work.
        work: &'static str,
        /// Algorithm of the device.
        device: &'static str,
    },
    /// A device could not start or failed while running.
    #[error("device {device}: {reason}")]
    Device {
        /// The device's stable id.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// A miner was created without any device.
    #[error("no device to mine with")]
    NoDevices,
}
