//! Errors of the Stratum layer, split by who is at fault: the bytes on the wire, the pool, or
//! the local transport.

/// A line or message that cannot be understood. The session logs and counts it and goes on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A line longer than [`crate::codec::MAX_LINE_BYTES`].
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Not valid UTF-8 or not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but neither a request nor a response.
    #[error("neither a request nor a response")]
    NotJsonRpc,
    /// A method this side does not handle.
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    /// Known method, wrong parameters.
    #[error("bad params for {method}: {reason}")]
    BadParams {
        /// The method.
        method: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A response whose result has the wrong shape.
    #[error("bad result for {method}: {reason}")]
    BadResult {
        /// The request it answers.
        method: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl MessageError {
    pub(crate) fn params(method: &'static str, reason: impl Into<String>) -> Self {
        MessageError::BadParams {
            method,
            reason: reason.into(),
        }
    }

    pub(crate) fn result(method: &'static str, reason: impl Into<String>) -> Self {
        MessageError::BadResult {
            method,
            reason: reason.into(),
        }
    }
}
