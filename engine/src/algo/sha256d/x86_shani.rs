//! SHA-256d kernel for x86-64 using shani (not written yet: `supported` reports false).

use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The kernel.
pub static SHANI: ShaNi = ShaNi;

/// Placeholder until the kernel lands.
#[derive(Debug)]
pub struct ShaNi;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    false
}

impl Kernel for ShaNi {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "shani"
    }

    fn chunk_nonces(&self) -> u32 {
        1 << 16
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        super::portable::PORTABLE.scan(header, target, range, found)
    }
}
