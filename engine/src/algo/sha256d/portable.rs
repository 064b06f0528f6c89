//! The portable SHA-256d kernel: plain Rust on any architecture, and the reference the SIMD
//! kernels are compared with.

use super::Prepared;
use crate::algo::sha256::{compress_words, IV};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The portable kernel.
pub static PORTABLE: Portable = Portable;

/// Scans one nonce at a time with [`compress_words`].
#[derive(Debug)]
pub struct Portable;

/// The top 32 bits (little-endian reading) of SHA-256d(header) for one nonce.
#[inline]
pub fn hash_top_word(prepared: &Prepared, nonce: u32) -> u32 {
    full_state(prepared, nonce)[7].swap_bytes()
}

/// The final SHA-256 state words of SHA-256d(header) for one nonce.
#[inline]
pub fn full_state(prepared: &Prepared, nonce: u32) -> [u32; 8] {
    let mut block = [0u32; 16];
    block[..3].copy_from_slice(&prepared.tail);
    // The nonce is serialised little-endian; SHA-256 reads big-endian words.
    block[3] = nonce.swap_bytes();
    block[4] = 0x8000_0000;
    block[15] = 640; // 80 bytes in bits
    let mut first = prepared.midstate;
    compress_words(&mut first, &block);

    let mut second_block = [0u32; 16];
    second_block[..8].copy_from_slice(&first);
    second_block[8] = 0x8000_0000;
    second_block[15] = 256; // 32 bytes in bits
    let mut second = IV;
    compress_words(&mut second, &second_block);
    second
}

impl Kernel for Portable {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "portable"
    }

    fn chunk_nonces(&self) -> u32 {
        1 << 13
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        let prepared = Prepared::new(header);
        let top = target.top_word();
        let mut nonce = range.first;
        loop {
            if hash_top_word(&prepared, nonce) <= top {
                found.push(nonce);
            }
            if nonce == range.last {
                break;
            }
            nonce += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::set_nonce;

    #[test]
    fn prepared_path_equals_plain_double_hash() {
        let mut header = [0u8; 80];
        for (i, b) in header.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let prepared = Prepared::new(&header);
        for nonce in [0u32, 1, 0xdead_beef, u32::MAX] {
            set_nonce(&mut header, nonce);
            let hash = crate::algo::sha256::sha256d(&header);
            let state = full_state(&prepared, nonce);
            assert_eq!(crate::algo::sha256::state_bytes(&state), hash);
            assert_eq!(
                hash_top_word(&prepared, nonce),
                u32::from_le_bytes([hash[28], hash[29], hash[30], hash[31]])
            );
        }
    }
}
