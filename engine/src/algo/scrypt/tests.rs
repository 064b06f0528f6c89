//! Scrypt tests placeholder.
