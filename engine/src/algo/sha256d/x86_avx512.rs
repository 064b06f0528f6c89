//! SHA-256d kernel for x86-64 with AVX-512: two 512-bit vectors of sixteen nonces each.
//!
//! AVX-512 has what SHA-256 spends most of its instructions on in AVX2: `vprord` rotates a lane
//! in one instruction (AVX2 needs two shifts and an OR), and `vpternlogd` computes any function
//! of three inputs, so Ch, Maj and each three-way XOR of the Σ/σ functions are one instruction.
//! The round sequence itself is shared with AVX2 in the private `lanes` module.
//!
//! Each step works on two independent vectors (`BATCHES`): one SHA-256 round is a chain of
//! dependent instructions, and a second chain beside it lets the core overlap them. On Zen 4 this
//! measured about 10% faster than one vector, and three vectors were slower again (the 32 vector
//! registers no longer hold the state and message words of all three).

use core::arch::x86_64::*;

use super::lanes::sha256d_lanes;
use super::precomp::{LaneHits, Precomputed};
use super::Prepared;
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The kernel.
pub static AVX512: Avx512 = Avx512;

/// SHA-256d with AVX-512F (rotates, ternary logic) and AVX-512BW (byte shuffles).
#[derive(Debug)]
pub struct Avx512;

/// Independent vectors hashed side by side.
const BATCHES: usize = 2;
/// Nonces per vector.
const LANES: usize = 16;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

impl Kernel for Avx512 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "avx512"
    }

    fn chunk_nonces(&self) -> u32 {
        // About 4 ms at 35 MH/s.
        1 << 17
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        if !supported() {
            return super::portable::PORTABLE.scan(header, target, range, found);
        }
        let pre = Precomputed::new(&Prepared::new(header));
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked just above).
        unsafe { scan(&pre, target.top_word(), range, found) }
    }
}

/// The value [`sha256d_lanes`] computes with: one word per nonce, in two vectors.
type V = [__m512i; BATCHES];

/// `vpternlogd` truth table of `a ^ b ^ c`: bit `(a << 2) | (b << 1) | c` of the immediate is
/// the output for those inputs, and XOR is 1 where an odd number of inputs are 1 (bits 1, 2, 4,
/// 7).
const XOR3: i32 = 0x96;
/// Truth table of Ch `a ? b : c`: bits 1, 3 (a = 0, c = 1) and 6, 7 (a = 1, b = 1).
const CHOOSE: i32 = 0xCA;
/// Truth table of Maj: at least two inputs set (bits 3, 5, 6, 7).
const MAJORITY: i32 = 0xE8;

/// Defines `$name` on [`V`] from an expression on one `__m512i` per argument.
macro_rules! pairwise {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident),*) = $body:expr;) => {
        $(#[$doc])*
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn $name($($arg: V),*) -> V {
            let mut out = [_mm512_setzero_si512(); BATCHES];
            for (i, out) in out.iter_mut().enumerate() {
                $(let $arg = $arg[i];)*
                *out = $body;
            }
            out
        }
    };
}

pairwise! {
    /// Lane-wise wrapping addition.
    fn add(a, b) = _mm512_add_epi32(a, b);
}
pairwise! {
    /// Σ0.
    fn bsig0(x) = _mm512_ternarylogic_epi32::<XOR3>(
        _mm512_ror_epi32::<2>(x),
        _mm512_ror_epi32::<13>(x),
        _mm512_ror_epi32::<22>(x),
    );
}
pairwise! {
    /// Σ1.
    fn bsig1(x) = _mm512_ternarylogic_epi32::<XOR3>(
        _mm512_ror_epi32::<6>(x),
        _mm512_ror_epi32::<11>(x),
        _mm512_ror_epi32::<25>(x),
    );
}
pairwise! {
    /// σ0.
    fn ssig0(x) = _mm512_ternarylogic_epi32::<XOR3>(
        _mm512_ror_epi32::<7>(x),
        _mm512_ror_epi32::<18>(x),
        _mm512_srli_epi32::<3>(x),
    );
}
pairwise! {
    /// σ1.
    fn ssig1(x) = _mm512_ternarylogic_epi32::<XOR3>(
        _mm512_ror_epi32::<17>(x),
        _mm512_ror_epi32::<19>(x),
        _mm512_srli_epi32::<10>(x),
    );
}
pairwise! {
    /// Ch.
    fn ch(e, f, g) = _mm512_ternarylogic_epi32::<CHOOSE>(e, f, g);
}
pairwise! {
    /// Maj.
    fn maj(a, b, c) = _mm512_ternarylogic_epi32::<MAJORITY>(a, b, c);
}

/// The same word in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn splat(x: u32) -> V {
    [_mm512_set1_epi32(x as i32); BATCHES]
}

/// Reverses the bytes of each 32-bit lane (the `vpshufb` index is per 128-bit block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bswap(x: __m512i) -> __m512i {
    let index = _mm512_broadcast_i32x4(_mm_setr_epi8(
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12,
    ));
    _mm512_shuffle_epi8(x, index)
}

/// Final state word 7 of SHA-256d for each lane's nonce word `w3`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn hash(pre: &Precomputed, w3: V) -> V {
    sha256d_lanes!(pre, w3)
}

/// Scans `range` [`BATCHES`] × [`LANES`] nonces at a time.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scan(pre: &Precomputed, top: u32, range: NonceRange, found: &mut Vec<u32>) {
    let lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let top = _mm512_set1_epi32(top as i32);
    let mut hits = LaneHits::new(range, BATCHES * LANES);
    while let Some(base) = hits.next_batch() {
        let mut w3 = [_mm512_setzero_si512(); BATCHES];
        for (b, w3) in w3.iter_mut().enumerate() {
            // Lanes past 0xFFFFFFFF wrap to small nonces; `LaneHits` drops them.
            let first = _mm512_set1_epi32(base.wrapping_add((b * LANES) as u32) as i32);
            // The nonce is serialised little-endian and read as a big-endian word.
            *w3 = bswap(_mm512_add_epi32(first, lane_index));
        }
        let word7 = hash(pre, w3);
        let mut mask = 0u64;
        for (b, word7) in word7.iter().enumerate() {
            // Word 7 read little-endian is the top 32 bits of the hash as a number.
            let lanes = _mm512_cmple_epu32_mask(bswap(*word7), top);
            mask |= u64::from(lanes) << (b * LANES);
        }
        hits.report(mask, found);
    }
}
