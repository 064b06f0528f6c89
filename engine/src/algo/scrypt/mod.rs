//! Scrypt with N=1024, r=1, p=1 and a 32-byte output, the header being both password and salt
//! (RFC 7914; the parameters Litecoin and Dogecoin use).
//!
//! The work splits into PBKDF2-HMAC-SHA256 before and after (cheap, a few SHA-256 blocks) and
//! ROMix in between, which costs 2048 Salsa20/8 block mixes over a 128 KiB scratchpad per hash:
//! SIMD kernels run ROMix for several nonces at once, one nonce per vector lane.

pub mod portable;

use super::Kernel;

/// Scrypt cost parameter N (scratchpad entries).
pub const N: usize = 1024;

/// Portable Scrypt of an 80-byte header, as produced (not reversed).
pub fn hash_header(header: &[u8; 80]) -> [u8; 32] {
    portable::scrypt_1024_1_1_256(header)
}

/// Every Scrypt kernel this CPU can run, slowest first.
pub fn kernels() -> Vec<&'static dyn Kernel> {
    vec![&portable::PORTABLE]
}
