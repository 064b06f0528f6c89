//! SHA-256d kernel for x86-64 using avx2 (not written yet: `supported` reports false).

use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The kernel.
pub static AVX2: Avx2 = Avx2;

/// Placeholder until the kernel lands.
#[derive(Debug)]
pub struct Avx2;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    false
}

impl Kernel for Avx2 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "avx2"
    }

    fn chunk_nonces(&self) -> u32 {
        1 << 16
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        super::portable::PORTABLE.scan(header, target, range, found)
    }
}
