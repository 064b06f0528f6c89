//! Portable Scrypt: the general RFC 7914 function for any N, r and p (checked against the RFC's
//! vectors), and the reference kernel written out for N=1024, r=1, p=1, one nonce at a time.
//! Every SIMD kernel is checked against this module.

use super::N;
use crate::algo::sha256::Sha256;
use crate::algo::{set_nonce, Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The portable kernel.
pub static PORTABLE: Portable = Portable;

/// Scans one nonce at a time.
#[derive(Debug)]
pub struct Portable;

/// HMAC-SHA256 keyed once, then applied to many messages (RFC 2104).
#[derive(Clone)]
pub struct HmacSha256 {
    inner: Sha256,
    outer: Sha256,
}

impl HmacSha256 {
    /// Keys the HMAC; keys longer than a block are hashed first.
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            let mut h = Sha256::new();
            h.update(key);
            block[..32].copy_from_slice(&h.finish());
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..64 {
            ipad[i] ^= block[i];
            opad[i] ^= block[i];
        }
        let mut inner = Sha256::new();
        inner.update(&ipad);
        let mut outer = Sha256::new();
        outer.update(&opad);
        Self { inner, outer }
    }

    /// HMAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for part in parts {
            inner.update(part);
        }
        let mut outer = self.outer.clone();
        outer.update(&inner.finish());
        outer.finish()
    }
}

/// PBKDF2-HMAC-SHA256 with one iteration (RFC 8018), the only count Scrypt uses.
pub fn pbkdf2_sha256_once(password: &[u8], salt: &[u8], out: &mut [u8]) {
    pbkdf2_sha256(password, salt, 1, out)
}

/// PBKDF2-HMAC-SHA256 with any iteration count (RFC 8018 §5.2; RFC 7914 §11 gives vectors).
///
/// # Panics
/// If `iterations` is zero or `out` needs more than 2^32 - 1 blocks.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    assert!(iterations > 0, "PBKDF2 needs at least one iteration");
    let hmac = HmacSha256::new(password);
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let block_index = u32::try_from(i + 1)
            .expect("PBKDF2 output longer than 2^32 - 1 blocks")
            .to_be_bytes();
        let mut u = hmac.mac(&[salt, &block_index]);
        let mut t = u;
        for _ in 1..iterations {
            u = hmac.mac(&[&u[..]]);
            for (ti, ui) in t.iter_mut().zip(u) {
                *ti ^= ui;
            }
        }
        chunk.copy_from_slice(&t[..chunk.len()]);
    }
}

/// Scrypt for any parameters (RFC 7914 §6): `out.len()` is dkLen.
///
/// This is the specification written out, used to check the RFC vectors and the specialised
/// N=1024, r=1, p=1 code; it allocates `128 * r * n` bytes.
///
/// # Panics
/// If `n` is not a power of two greater than one, or `r` or `p` is zero, or `p * r` reaches 2^30
/// (the limits of RFC 7914 §2).
pub fn scrypt(password: &[u8], salt: &[u8], n: u64, r: u32, p: u32, out: &mut [u8]) {
    assert!(
        n > 1 && n.is_power_of_two(),
        "scrypt N must be a power of two above 1"
    );
    assert!(r > 0 && p > 0, "scrypt r and p must be positive");
    assert!(
        u64::from(r) * u64::from(p) < 1 << 30,
        "scrypt p * r must stay below 2^30"
    );
    let n = usize::try_from(n).expect("scrypt N does not fit this machine's memory");
    let r = r as usize;
    let block_bytes = 128 * r;
    let mut b = vec![0u8; block_bytes * p as usize];
    pbkdf2_sha256(password, salt, 1, &mut b);
    let mut words = vec![0u32; 32 * r];
    let mut scratch = vec![0u32; 32 * r * n];
    for block in b.chunks_mut(block_bytes) {
        for (w, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
            *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        romix_general(&mut words, r, &mut scratch);
        for (w, bytes) in words.iter().zip(block.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&w.to_le_bytes());
        }
    }
    pbkdf2_sha256(password, &b, 1, out);
}

/// scryptBlockMix for any r (RFC 7914 §4): `b` holds 2r 64-byte blocks as little-endian words,
/// `y` is scratch of the same size.
pub fn block_mix_general(b: &mut [u32], y: &mut [u32]) {
    let blocks = b.len() / 16;
    debug_assert!(blocks.is_multiple_of(2) && b.len() == y.len());
    let mut x: [u32; 16] = b[b.len() - 16..].try_into().expect("BUG: 16-word block");
    for i in 0..blocks {
        for (xi, bi) in x.iter_mut().zip(&b[16 * i..16 * i + 16]) {
            *xi ^= bi;
        }
        salsa20_8(&mut x);
        // B' = (Y_0, Y_2, ..., Y_{2r-2}, Y_1, Y_3, ..., Y_{2r-1}).
        let slot = if i % 2 == 0 {
            i / 2
        } else {
            blocks / 2 + i / 2
        };
        y[16 * slot..16 * slot + 16].copy_from_slice(&x);
    }
    b.copy_from_slice(y);
}

/// scryptROMix for any N and r (RFC 7914 §5); N is `scratch.len() / b.len()`.
pub fn romix_general(b: &mut [u32], r: usize, scratch: &mut [u32]) {
    let len = 32 * r;
    debug_assert_eq!(b.len(), len);
    let n = scratch.len() / len;
    let mut y = vec![0u32; len];
    for v in scratch.chunks_exact_mut(len) {
        v.copy_from_slice(b);
        block_mix_general(b, &mut y);
    }
    for _ in 0..n {
        // Integerify: the last 64-byte block read as a little-endian number, modulo N (a power of
        // two, so its low 64 bits are enough).
        let last = len - 16;
        let j = (u64::from(b[last]) | u64::from(b[last + 1]) << 32) as usize & (n - 1);
        for (bi, vi) in b.iter_mut().zip(&scratch[j * len..(j + 1) * len]) {
            *bi ^= vi;
        }
        block_mix_general(b, &mut y);
    }
}

/// Salsa20/8 core applied in place: `b = b + salsa20_8_rounds(b)` (RFC 7914 §3).
#[inline]
pub fn salsa20_8(b: &mut [u32; 16]) {
    let mut x = *b;
    for _ in 0..4 {
        // Column round.
        x[4] ^= x[0].wrapping_add(x[12]).rotate_left(7);
        x[8] ^= x[4].wrapping_add(x[0]).rotate_left(9);
        x[12] ^= x[8].wrapping_add(x[4]).rotate_left(13);
        x[0] ^= x[12].wrapping_add(x[8]).rotate_left(18);
        x[9] ^= x[5].wrapping_add(x[1]).rotate_left(7);
        x[13] ^= x[9].wrapping_add(x[5]).rotate_left(9);
        x[1] ^= x[13].wrapping_add(x[9]).rotate_left(13);
        x[5] ^= x[1].wrapping_add(x[13]).rotate_left(18);
        x[14] ^= x[10].wrapping_add(x[6]).rotate_left(7);
        x[2] ^= x[14].wrapping_add(x[10]).rotate_left(9);
        x[6] ^= x[2].wrapping_add(x[14]).rotate_left(13);
        x[10] ^= x[6].wrapping_add(x[2]).rotate_left(18);
        x[3] ^= x[15].wrapping_add(x[11]).rotate_left(7);
        x[7] ^= x[3].wrapping_add(x[15]).rotate_left(9);
        x[11] ^= x[7].wrapping_add(x[3]).rotate_left(13);
        x[15] ^= x[11].wrapping_add(x[7]).rotate_left(18);
        // Row round.
        x[1] ^= x[0].wrapping_add(x[3]).rotate_left(7);
        x[2] ^= x[1].wrapping_add(x[0]).rotate_left(9);
        x[3] ^= x[2].wrapping_add(x[1]).rotate_left(13);
        x[0] ^= x[3].wrapping_add(x[2]).rotate_left(18);
        x[6] ^= x[5].wrapping_add(x[4]).rotate_left(7);
        x[7] ^= x[6].wrapping_add(x[5]).rotate_left(9);
        x[4] ^= x[7].wrapping_add(x[6]).rotate_left(13);
        x[5] ^= x[4].wrapping_add(x[7]).rotate_left(18);
        x[11] ^= x[10].wrapping_add(x[9]).rotate_left(7);
        x[8] ^= x[11].wrapping_add(x[10]).rotate_left(9);
        x[9] ^= x[8].wrapping_add(x[11]).rotate_left(13);
        x[10] ^= x[9].wrapping_add(x[8]).rotate_left(18);
        x[12] ^= x[15].wrapping_add(x[14]).rotate_left(7);
        x[13] ^= x[12].wrapping_add(x[15]).rotate_left(9);
        x[14] ^= x[13].wrapping_add(x[12]).rotate_left(13);
        x[15] ^= x[14].wrapping_add(x[13]).rotate_left(18);
    }
    for (bi, xi) in b.iter_mut().zip(x) {
        *bi = bi.wrapping_add(xi);
    }
}

/// BlockMix with r=1 on a 32-word block: two Salsa20/8 calls (RFC 7914 §4).
#[inline]
fn block_mix(x: &mut [u32; 32]) {
    let mut a: [u32; 16] = x[..16].try_into().expect("BUG: 32 words");
    let b: [u32; 16] = x[16..].try_into().expect("BUG: 32 words");
    for i in 0..16 {
        a[i] ^= b[i];
    }
    salsa20_8(&mut a);
    let mut c = b;
    for i in 0..16 {
        c[i] ^= a[i];
    }
    salsa20_8(&mut c);
    x[..16].copy_from_slice(&a);
    x[16..].copy_from_slice(&c);
}

/// ROMix with N=1024, r=1 over a 128-byte block given as 32 little-endian words.
pub fn romix(x: &mut [u32; 32], scratch: &mut [[u32; 32]]) {
    debug_assert_eq!(scratch.len(), N);
    for v in scratch.iter_mut() {
        *v = *x;
        block_mix(x);
    }
    for _ in 0..N {
        let j = (x[16] as usize) & (N - 1);
        for (xi, vi) in x.iter_mut().zip(scratch[j].iter()) {
            *xi ^= vi;
        }
        block_mix(x);
    }
}

/// Scrypt(header, header, N=1024, r=1, p=1, dkLen=32).
pub fn scrypt_1024_1_1_256(header: &[u8; 80]) -> [u8; 32] {
    let mut scratch = vec![[0u32; 32]; N];
    scrypt_with_scratch(header, &mut scratch)
}

/// Scrypt of a header with a caller-owned scratchpad of [`N`] blocks.
pub fn scrypt_with_scratch(header: &[u8; 80], scratch: &mut [[u32; 32]]) -> [u8; 32] {
    let mut b = [0u8; 128];
    pbkdf2_sha256_once(header, header, &mut b);
    let mut x = [0u32; 32];
    for (i, w) in x.iter_mut().enumerate() {
        *w = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    }
    romix(&mut x, scratch);
    for (i, w) in x.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let mut out = [0u8; 32];
    pbkdf2_sha256_once(header, &b, &mut out);
    out
}

impl Kernel for Portable {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Scrypt
    }

    fn path(&self) -> &'static str {
        "portable"
    }

    fn chunk_nonces(&self) -> u32 {
        16
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        let mut scratch = vec![[0u32; 32]; N];
        let mut h = *header;
        let mut nonce = range.first;
        loop {
            set_nonce(&mut h, nonce);
            if target.is_met_by(&scrypt_with_scratch(&h, &mut scratch)) {
                found.push(nonce);
            }
            if nonce == range.last {
                break;
            }
            nonce += 1;
        }
    }
}
