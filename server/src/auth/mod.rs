//! Who is asking, and how they prove it: browser sessions and their cookies, CSRF tokens and
//! the Origin check, passwords (argon2id), API tokens, the TOTP second factor, and the limits
//! that slow guessing (logins, re-authentication, enrollment). What a request's credentials
//! resolve to is a fleet [`Actor`](crate::fleet::Actor) ([`resolve`]); what that actor may do
//! is decided in `fleet/`, not here.
//!
//! The transports (`api/`, `web/`) only carry headers and form fields here and map the answers
//! to HTTP.

pub mod limits;
pub mod login;
pub mod origin;
pub mod password;
pub mod resolve;
pub mod session;
pub mod token;
pub mod totp;

use sha2::Digest;

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 hex of a secret (session cookies, API tokens and old recovery codes are stored so).
pub fn sha256_hex(text: &str) -> String {
    crate::keys::hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Whether a CSRF token given with a request is the expected one (an empty one never is).
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty()
        && !given.is_empty()
        && constant_time_eq(expected.as_bytes(), given.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole_and_empty_tokens_never_match() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(csrf_matches("t0k", "t0k"));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches("t0k", ""));
    }
}
