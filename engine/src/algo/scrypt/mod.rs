//! Scrypt with N=1024, r=1, p=1 and a 32-byte output, the header being both password and salt
//! (RFC 7914; the parameters Litecoin and Dogecoin use).
//!
//! The work splits into PBKDF2-HMAC-SHA256 before and after (cheap, a few SHA-256 blocks) and
//! ROMix in between, which costs 2048 Salsa20/8 block mixes over a 128 KiB scratchpad per hash:
//! SIMD kernels run everything for several nonces at once, one nonce per vector lane.
//!
//! - `portable`: the general RFC 7914 function and the one-nonce-at-a-time reference kernel.
//! - `lanes` (x86-64): the lane-sliced algorithm, generic over the vector type.
//! - `x86`: SSE2, AVX2 and AVX-512 instantiations, picked at run time.

#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use portable::scrypt;

use super::Kernel;

/// Scrypt cost parameter N (scratchpad entries).
pub const N: usize = 1024;

/// Portable Scrypt of an 80-byte header, as produced (not reversed).
pub fn hash_header(header: &[u8; 80]) -> [u8; 32] {
    portable::scrypt_1024_1_1_256(header)
}

/// Every Scrypt kernel this CPU can run, slowest first (ordered by measured speed on Zen 4).
pub fn kernels() -> Vec<&'static dyn Kernel> {
    #[allow(unused_mut)]
    let mut list: Vec<&'static dyn Kernel> = vec![&portable::PORTABLE];
    #[cfg(target_arch = "x86_64")]
    for kernel in [&x86::SSE2, &x86::AVX2, &x86::AVX512] {
        if kernel.supported() {
            list.push(kernel);
        }
    }
    list
}
