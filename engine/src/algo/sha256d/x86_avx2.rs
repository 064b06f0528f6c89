//! SHA-256d kernel for x86-64 with AVX2: eight nonces per 256-bit vector.
//!
//! For CPUs with AVX2 but neither AVX-512 nor SHA-NI (and as a reference point elsewhere). AVX2
//! has no rotate and no three-input logic, so each rotate is two shifts, the Σ/σ functions XOR
//! their shifted copies directly (`x >> n ^ x << (32 - n)` for each rotate), and Ch/Maj use the
//! forms with the fewest operations. The round sequence is shared with AVX-512 in
//! the private `lanes` module.

use core::arch::x86_64::*;

use super::lanes::sha256d_lanes;
use super::precomp::{LaneHits, Precomputed};
use super::Prepared;
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The kernel.
pub static AVX2: Avx2 = Avx2;

/// SHA-256d with AVX2, 8 lanes.
#[derive(Debug)]
pub struct Avx2;

/// Nonces per vector.
const LANES: usize = 8;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2")
}

impl Kernel for Avx2 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "avx2"
    }

    fn chunk_nonces(&self) -> u32 {
        // About 4 ms at 20 MH/s.
        1 << 16
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        if !supported() {
            return super::portable::PORTABLE.scan(header, target, range, found);
        }
        let pre = Precomputed::new(&Prepared::new(header));
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { scan(&pre, target.top_word(), range, found) }
    }
}

type V = __m256i;

/// Lane-wise wrapping addition.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn add(a: V, b: V) -> V {
    _mm256_add_epi32(a, b)
}

/// The same word in every lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn splat(x: u32) -> V {
    _mm256_set1_epi32(x as i32)
}

/// `a ^ b ^ c`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn xor3(a: V, b: V, c: V) -> V {
    _mm256_xor_si256(_mm256_xor_si256(a, b), c)
}

/// XOR of the right-rotations of `x` by `$a`, `$b` and `$c`: each rotation's two halves are
/// shifted apart and XORed in directly (their bits do not overlap, so XOR equals OR).
macro_rules! xor_ror3 {
    ($x:expr, $a:literal, $b:literal, $c:literal) => {{
        let x = $x;
        _mm256_xor_si256(
            xor3(
                _mm256_srli_epi32::<$a>(x),
                _mm256_srli_epi32::<$b>(x),
                _mm256_srli_epi32::<$c>(x),
            ),
            xor3(
                _mm256_slli_epi32::<{ 32 - $a }>(x),
                _mm256_slli_epi32::<{ 32 - $b }>(x),
                _mm256_slli_epi32::<{ 32 - $c }>(x),
            ),
        )
    }};
}

/// Σ0.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bsig0(x: V) -> V {
    xor_ror3!(x, 2, 13, 22)
}

/// Σ1.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bsig1(x: V) -> V {
    xor_ror3!(x, 6, 11, 25)
}

/// σ0: rotations by 7 and 18, shift by 3.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ssig0(x: V) -> V {
    _mm256_xor_si256(
        xor3(
            _mm256_srli_epi32::<7>(x),
            _mm256_srli_epi32::<18>(x),
            _mm256_srli_epi32::<3>(x),
        ),
        _mm256_xor_si256(_mm256_slli_epi32::<25>(x), _mm256_slli_epi32::<14>(x)),
    )
}

/// σ1: rotations by 17 and 19, shift by 10.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ssig1(x: V) -> V {
    _mm256_xor_si256(
        xor3(
            _mm256_srli_epi32::<17>(x),
            _mm256_srli_epi32::<19>(x),
            _mm256_srli_epi32::<10>(x),
        ),
        _mm256_xor_si256(_mm256_slli_epi32::<15>(x), _mm256_slli_epi32::<13>(x)),
    )
}

/// Ch as `((f ^ g) & e) ^ g`: three operations instead of four.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ch(e: V, f: V, g: V) -> V {
    _mm256_xor_si256(_mm256_and_si256(_mm256_xor_si256(f, g), e), g)
}

/// Maj as `((a ^ b) & (b ^ c)) ^ b`. The next round's `b ^ c` is this round's `a ^ b`, which the
/// compiler reuses, so a round pays three operations.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn maj(a: V, b: V, c: V) -> V {
    _mm256_xor_si256(
        _mm256_and_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(b, c)),
        b,
    )
}

/// Reverses the bytes of each 32-bit lane (the `vpshufb` index is per 128-bit half).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bswap(x: V) -> V {
    let index = _mm256_setr_epi8(
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8,
        15, 14, 13, 12,
    );
    _mm256_shuffle_epi8(x, index)
}

/// Final state word 7 of SHA-256d for each lane's nonce word `w3`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hash(pre: &Precomputed, w3: V) -> V {
    sha256d_lanes!(pre, w3)
}

/// Scans `range` eight nonces at a time.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn scan(pre: &Precomputed, top: u32, range: NonceRange, found: &mut Vec<u32>) {
    let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let top = splat(top);
    let mut hits = LaneHits::new(range, LANES);
    while let Some(base) = hits.next_batch() {
        // Lanes past 0xFFFFFFFF wrap to small nonces; `LaneHits` drops them.
        let nonces = add(splat(base), lane_index);
        // The nonce is serialised little-endian and read as a big-endian word.
        let top_words = bswap(hash(pre, bswap(nonces)));
        // Unsigned `x <= top` is `min(x, top) == x` (AVX2 compares only signed).
        let le = _mm256_cmpeq_epi32(_mm256_min_epu32(top_words, top), top_words);
        let mask = _mm256_movemask_ps(_mm256_castsi256_ps(le)) as u32;
        hits.report(u64::from(mask), found);
    }
}
