//! SHA-256d: the header hash of Bitcoin and its forks.
//!
//! All kernels share the same shape: the first 64 header bytes do not depend on the nonce, so
//! their compression (the midstate) is done once per scan; the second block holds the last three
//! words of the header, the nonce, and constant padding; the second SHA-256 hashes the 32-byte
//! result. The kernel keeps only the nonces whose final hash word meets the target's top word.

#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod portable;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod precomp;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub mod x86_shani;
#[cfg(all(test, target_arch = "x86_64"))]
mod x86_tests;

use super::sha256::{self, IV};
use super::Kernel;

/// The portable double SHA-256 of an 80-byte header, as produced (not reversed).
pub fn hash_header(header: &[u8; 80]) -> [u8; 32] {
    sha256::sha256d(header)
}

/// What every SHA-256d kernel derives from a header before scanning nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// SHA-256 state after compressing header bytes 0..64.
    pub midstate: [u32; 8],
    /// Header bytes 64..76 as big-endian words: the end of the merkle root, ntime, nbits.
    pub tail: [u32; 3],
}

impl Prepared {
    /// Computes the midstate and tail words of a header.
    pub fn new(header: &[u8; 80]) -> Self {
        let first: &[u8; 64] = header[..64].try_into().expect("BUG: 80-byte header");
        let mut midstate = IV;
        sha256::compress(&mut midstate, first);
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        Self {
            midstate,
            tail: [word(64), word(68), word(72)],
        }
    }
}

/// Every SHA-256d kernel this CPU can run, slowest first (measured on one Zen 4 core: about
/// 2 MH/s portable, 14 AVX2, 34 AVX-512 and 36.5 SHA-NI).
pub fn kernels() -> Vec<&'static dyn Kernel> {
    #[allow(unused_mut)]
    let mut list: Vec<&'static dyn Kernel> = vec![&portable::PORTABLE];
    #[cfg(target_arch = "x86_64")]
    {
        if x86_avx2::supported() {
            list.push(&x86_avx2::AVX2);
        }
        if x86_avx512::supported() {
            list.push(&x86_avx512::AVX512);
        }
        if x86_shani::supported() {
            list.push(&x86_shani::SHANI);
        }
    }
    list
}
