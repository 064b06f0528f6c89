//! Decoding and validation errors. Every way a frame can be wrong ends here as a value; nothing in
//! this crate panics on input.

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame is larger than [`crate::limits::MAX_FRAME_BYTES`].
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The `v` field is missing or names a version this side cannot read.
    #[error("unsupported protocol version {found} (this side speaks {min} to {max})")]
    UnsupportedVersion {
        /// The version in the frame.
        found: u32,
        /// Oldest version understood.
        min: u32,
        /// Newest version understood.
        max: u32,
    },
    /// A `type` this side does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A field breaks a limit or a rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ProtoError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ProtoError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
