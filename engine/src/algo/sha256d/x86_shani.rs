//! SHA-256d kernel for x86-64 with the SHA extensions (SHA-NI: `sha256rnds2`, `sha256msg1`,
//! `sha256msg2`).
//!
//! One `sha256rnds2` runs two rounds on the state of one nonce, so the lanes of this kernel are
//! independent nonces whose instructions are interleaved: `sha256rnds2` has a latency of about 4
//! cycles but the SHA unit of current x86 cores (measured on Zen 4) starts one per cycle, so a
//! single nonce would leave it idle three cycles out of four. [`WAYS`] nonces are hashed side by
//! side to fill it.
//!
//! Per nonce the kernel runs 30 `sha256rnds2` for the first hash (rounds 4..=63; rounds 0..=3
//! come from [`Precomputed`]) and 31 for the second (rounds 0..=61, of which it uses only `e`
//! after round 60, which becomes the final state word 7), and builds only the message words the
//! rounds need, skipping the `sha256msg2` whose inputs are constant.
//!
//! State layout follows the instructions: `ABEF` holds `[f, e, b, a]` (lane 0 first) and `CDGH`
//! holds `[h, g, d, c]`. Message words go in groups of four, `W[4k..4k+4]`, lane 0 first.

use core::arch::x86_64::*;

use super::precomp::{
    push_lanes, small_sigma0, small_sigma1, valid_lanes, Precomputed, LEN_32, LEN_80, PAD_32,
    PAD_80,
};
use super::Prepared;
use crate::algo::sha256::{IV, K};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The kernel.
pub static SHANI: ShaNi = ShaNi;

/// SHA-256d with the SHA-NI instructions, [`WAYS`] nonces at a time.
#[derive(Debug)]
pub struct ShaNi;

/// Nonces hashed side by side. Four cover the `sha256rnds2` latency; more did not measure
/// faster on Zen 4 (16 vector registers hold the state and message groups of about two nonces,
/// so extra ways only add spills).
pub const WAYS: usize = 4;

/// Whether this CPU can run the kernel. SSE4.1 comes with every SHA-NI CPU, but is checked
/// because the kernel is compiled for it.
pub fn supported() -> bool {
    is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("ssse3")
        && is_x86_feature_detected!("sse4.1")
}

impl Kernel for ShaNi {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "shani"
    }

    fn chunk_nonces(&self) -> u32 {
        // About 3 ms at 40 MH/s.
        1 << 17
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        if !supported() {
            return super::portable::PORTABLE.scan(header, target, range, found);
        }
        let prepared = Prepared::new(header);
        let state = State::new(&prepared);
        // SAFETY: the CPU has SHA-NI, SSSE3 and SSE4.1 (checked just above).
        unsafe {
            match std::env::var("RF_WAYS").ok().as_deref() {
                Some("1") => scan_ways::<1>(&state, target.top_word(), range, found),
                Some("2") => scan_ways::<2>(&state, target.top_word(), range, found),
                Some("3") => scan_ways::<3>(&state, target.top_word(), range, found),
                Some("5") => scan_ways::<5>(&state, target.top_word(), range, found),
                Some("6") => scan_ways::<6>(&state, target.top_word(), range, found),
                Some("8") => scan_ways::<8>(&state, target.top_word(), range, found),
                _ => scan_ways::<WAYS>(&state, target.top_word(), range, found),
            }
        } // TEMP
    }
}

/// Per-header values as vectors, next to the compile-time ones.
#[derive(Clone, Copy)]
pub(super) struct State {
    /// `ABEF` entering round 4 of the first hash, without the nonce word in `a` and `e`.
    abef4: [u32; 4],
    /// `CDGH` entering round 4 of the first hash.
    cdgh4: [u32; 4],
    /// Message group 0 of the first hash with a zero nonce word: `[W0, W1, W2, 0]`.
    group0: [u32; 4],
    /// What `W16..W20` still lack after `sha256msg1(group 0, group 1)`: the σ1 terms.
    fix4: [u32; 4],
    /// The constant sum `sha256msg1(group 1, group 2) + W[13..17]` that group 5 starts from.
    start5: [u32; 4],
    /// The constant `sha256msg1(group 3, group 4)` that group 7 starts from.
    start7: [u32; 4],
    /// The midstate as `ABEF`, added to the first hash's result.
    mid_abef: [u32; 4],
    /// The midstate as `CDGH`.
    mid_cdgh: [u32; 4],
}

impl State {
    /// Lays out the precomputed values the way the SHA instructions take them.
    pub(super) fn new(prepared: &Prepared) -> Self {
        let pre = Precomputed::new(prepared);
        let s = pre.state4;
        let m = pre.midstate;
        let [t0, t1, t2] = prepared.tail;
        Self {
            abef4: [s[5], s[4], s[1], s[0]],
            cdgh4: [s[7], s[6], s[3], s[2]],
            group0: [t0, t1, t2, 0],
            // W16 = σ0(W1) + W0 (exact); W17 lacks σ1(W15); W18 lacks σ1(W16) (W11 = 0);
            // W19 lacks σ1(W17) (W12 = 0).
            fix4: [0, small_sigma1(LEN_80), small_sigma1(pre.w16), small_sigma1(pre.w17)],
            // sha256msg1(group 1, group 2) = [W4, 0, 0, 0] since W5..W8 are zero, plus
            // W13..W16 = [0, 0, 640, W16].
            start5: [PAD_80, 0, LEN_80, pre.w16],
            // sha256msg1(group 3, group 4) = W12..W15 + σ0(W13..W16).
            start7: [0, 0, small_sigma0(LEN_80), LEN_80.wrapping_add(small_sigma0(pre.w16))],
            mid_abef: [m[5], m[4], m[1], m[0]],
            mid_cdgh: [m[7], m[6], m[3], m[2]],
        }
    }
}

/// Loads four words, lane 0 first.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn load(words: &[u32; 4]) -> __m128i {
    _mm_loadu_si128(words.as_ptr().cast())
}

/// `K[4 * group .. 4 * group + 4]` as a vector.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn k4(group: usize) -> __m128i {
    _mm_loadu_si128(K[4 * group..4 * group + 4].as_ptr().cast())
}

/// Four rounds on every way: `abef`/`cdgh` advance by the two `sha256rnds2` whose message
/// words (with `K` added) are lanes 0..2 and 2..4 of `wk[j]`. Each step runs over all ways
/// before the next so that the dependent instructions of one nonce are `WAYS` apart.
macro_rules! quad {
    ($abef:ident, $cdgh:ident, $j:ident => $wk:expr) => {{
        let mut wk = [_mm_setzero_si128(); N];
        for $j in 0..N {
            wk[$j] = $wk;
            $cdgh[$j] = _mm_sha256rnds2_epu32($cdgh[$j], $abef[$j], wk[$j]);
        }
        for j in 0..N {
            $abef[j] = _mm_sha256rnds2_epu32($abef[j], $cdgh[j], _mm_shuffle_epi32::<0x0E>(wk[j]));
        }
    }};
}

/// The general message schedule for group `$k` in ring `$g` (group `k` lives in `g[k % 4]`):
/// `W[i] = σ1(W[i-2]) + W[i-7] + σ0(W[i-15]) + W[i-16]` for four words, from the four
/// previous groups.
macro_rules! group {
    ($g:ident, $k:expr) => {
        for j in 0..N {
            let m1 = msg1x($g[($k - 4) % 4][j], $g[($k - 3) % 4][j]);
            let w7 = _mm_alignr_epi8::<4>($g[($k - 1) % 4][j], $g[($k - 2) % 4][j]);
            $g[$k % 4][j] = msg2x(_mm_add_epi32(m1, w7), $g[($k - 1) % 4][j]);
        }
    };
}

/// Scans `range` `N` nonces at a time.
///
/// # Safety
/// The CPU must support SHA-NI, SSSE3 and SSE4.1.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1,avx,avx2,avx512f,avx512vl")]
pub(super) unsafe fn scan_ways<const N: usize>(
    state: &State,
    top: u32,
    range: NonceRange,
    found: &mut Vec<u32>,
) {
    let count = range.len();
    let mut offset = 0u64;
    while offset < count {
        let base = range.first.wrapping_add(offset as u32);
        let words = hash_ways::<N>(state, base);
        let mut hits = 0u32;
        for (j, word) in words.iter().enumerate() {
            // Final word 7 read little-endian is the top 32 bits of the hash as a number.
            hits |= u32::from(word.swap_bytes() <= top) << j;
        }
        hits &= valid_lanes(count, offset, N as u32);
        if hits != 0 {
            push_lanes(hits, base, found);
        }
        offset += N as u64;
    }
}

/// Final state word 7 (before byte order is fixed) of SHA-256d for nonces `base..base + N`
/// (wrapping).
///
/// # Safety
/// The CPU must support SHA-NI, SSSE3 and SSE4.1.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1,avx,avx2,avx512f,avx512vl")]
pub(super) unsafe fn hash_ways<const N: usize>(state: &State, base: u32) -> [u32; N] {
    let zero = _mm_setzero_si128();
    let mut abef = [zero; N];
    let mut cdgh = [zero; N];
    let mut g = [[zero; N]; 4];

    // ---- First hash, second block: rounds 4..=63 from the state after round 3. ----
    let abef4 = load(&state.abef4);
    let cdgh4 = load(&state.cdgh4);
    let group0 = load(&state.group0);
    let fix4 = load(&state.fix4);
    // Group 1 is [W4, 0, 0, 0]; only sha256msg1 reads it (W4), the rounds use constants.
    let group1 = _mm_set_epi32(0, 0, 0, PAD_80 as i32);
    for j in 0..N {
        // The nonce is serialised little-endian and read as a big-endian word.
        let w3 = _mm_cvtsi32_si128(base.wrapping_add(j as u32).swap_bytes() as i32);
        // W3 adds to `a` (lane 3) and `e` (lane 1) in round 3.
        abef[j] = _mm_add_epi32(abef4, _mm_shuffle_epi32::<0x11>(w3));
        cdgh[j] = cdgh4;
        let group0 = _mm_add_epi32(group0, _mm_slli_si128::<12>(w3));
        // Group 4 = [W16, W17, W18, W19]: one sha256msg1 and the constant σ1 terms.
        g[0][j] = _mm_add_epi32(msg1x(group0, group1), fix4);
    }
    // Rounds 4..=15: W4 = 0x80000000, W5..W14 = 0, W15 = 640, so W + K is a constant.
    let wk1 = _mm_add_epi32(k4(1), group1);
    let wk2 = k4(2);
    let wk3 = _mm_add_epi32(k4(3), _mm_set_epi32(LEN_80 as i32, 0, 0, 0));
    quad!(abef, cdgh, _j => wk1);
    quad!(abef, cdgh, _j => wk2);
    quad!(abef, cdgh, _j => wk3);
    // Group 5: sha256msg1 and the W[i-7] terms are constant, only σ1 of W18, W19 varies.
    let start5 = load(&state.start5);
    for j in 0..N {
        g[1][j] = msg2x(start5, g[0][j]);
    }
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(4)));
    // Group 6: sha256msg1(group 2, group 3) is zero (W8..W12 are zero).
    for j in 0..N {
        let w7 = _mm_alignr_epi8::<4>(g[1][j], g[0][j]);
        g[2][j] = msg2x(w7, g[1][j]);
    }
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(5)));
    // Group 7: sha256msg1(group 3, group 4) is the constant `start7`.
    let start7 = load(&state.start7);
    for j in 0..N {
        let w7 = _mm_alignr_epi8::<4>(g[2][j], g[1][j]);
        g[3][j] = msg2x(_mm_add_epi32(start7, w7), g[2][j]);
    }
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(6)));
    group!(g, 8);
    quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(7)));
    group!(g, 9);
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(8)));
    group!(g, 10);
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(9)));
    group!(g, 11);
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(10)));
    group!(g, 12);
    quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(11)));
    group!(g, 13);
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(12)));
    group!(g, 14);
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(13)));
    group!(g, 15);
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(14)));
    quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(15)));

    // ---- Second hash of the 32-byte digest. ----
    let mid_abef = load(&state.mid_abef);
    let mid_cdgh = load(&state.mid_cdgh);
    let iv_abef = _mm_set_epi32(IV[0] as i32, IV[1] as i32, IV[4] as i32, IV[5] as i32);
    let iv_cdgh = _mm_set_epi32(IV[2] as i32, IV[3] as i32, IV[6] as i32, IV[7] as i32);
    for j in 0..N {
        let a = _mm_castsi128_ps(_mm_add_epi32(abef[j], mid_abef));
        let c = _mm_castsi128_ps(_mm_add_epi32(cdgh[j], mid_cdgh));
        // [f, e, b, a] and [h, g, d, c] to [a, b, c, d] and [e, f, g, h].
        g[0][j] = _mm_castps_si128(_mm_shuffle_ps::<0xBB>(a, c));
        g[1][j] = _mm_castps_si128(_mm_shuffle_ps::<0x11>(a, c));
        abef[j] = iv_abef;
        cdgh[j] = iv_cdgh;
    }
    // Group 2 is [0x80000000, 0, 0, 0] (padding), group 3 is [0, 0, 0, 256] (length).
    let group2 = _mm_set_epi32(0, 0, 0, PAD_32 as i32);
    let group3 = _mm_set_epi32(LEN_32 as i32, 0, 0, 0);
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(0)));
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(1)));
    // Group 4: the W[i-7] terms (W9..W12) are zero.
    for j in 0..N {
        let m1 = msg1x(g[0][j], g[1][j]);
        g[0][j] = msg2x(m1, group3);
    }
    let wk2 = _mm_add_epi32(k4(2), group2);
    let wk3 = _mm_add_epi32(k4(3), group3);
    quad!(abef, cdgh, _j => wk2);
    // Group 5 reads group 2 and group 3 as constants.
    for j in 0..N {
        let m1 = msg1x(g[1][j], group2);
        let w7 = _mm_alignr_epi8::<4>(g[0][j], group3);
        g[1][j] = msg2x(_mm_add_epi32(m1, w7), g[0][j]);
    }
    quad!(abef, cdgh, _j => wk3);
    // Group 6: sha256msg1(group 2, group 3) = [W8, 0, 0, 0] since W9..W12 are zero.
    for j in 0..N {
        let w7 = _mm_alignr_epi8::<4>(g[1][j], g[0][j]);
        g[2][j] = msg2x(_mm_add_epi32(group2, w7), g[1][j]);
    }
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(4)));
    // Group 7: sha256msg1(group 3, group 4).
    for j in 0..N {
        let m1 = msg1x(group3, g[0][j]);
        let w7 = _mm_alignr_epi8::<4>(g[2][j], g[1][j]);
        g[3][j] = msg2x(_mm_add_epi32(m1, w7), g[2][j]);
    }
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(5)));
    group!(g, 8);
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(6)));
    group!(g, 9);
    quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(7)));
    group!(g, 10);
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(8)));
    group!(g, 11);
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(9)));
    group!(g, 12);
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(10)));
    group!(g, 13);
    quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(11)));
    group!(g, 14);
    quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(12)));
    group!(g, 15);
    quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(13)));
    quad!(abef, cdgh, j => _mm_add_epi32(g[2][j], k4(14)));
    // Rounds 60 and 61: after them lane 0 of the new ABEF is `f`, which is `e` after round
    // 60, and the final state word 7 is IV[7] plus `e` after round 60 (rounds 61..=63 only
    // move it from e to h). Rounds 62 and 63 are skipped.
    let mut out = [0u32; N];
    for j in 0..N {
        let wk = _mm_add_epi32(g[3][j], k4(15));
        let last = _mm_sha256rnds2_epu32(cdgh[j], abef[j], wk);
        out[j] = (_mm_cvtsi128_si32(last) as u32).wrapping_add(IV[7]);
    }
    out
}

#[inline(always)]
unsafe fn msg2x(a: __m128i, b: __m128i) -> __m128i {
    #[cfg(exp_nomsg2)]
    return _mm_xor_si128(a, b);
    #[cfg(exp_vmsg2)]
    {
        let t = ssig1v(_mm_srli_si128::<8>(b));
        let u = _mm_add_epi32(a, t);
        let v = ssig1v(_mm_slli_si128::<8>(u));
        return _mm_add_epi32(u, v);
    }
    #[cfg(not(any(exp_nomsg2, exp_vmsg2)))]
    return _mm_sha256msg2_epu32(a, b);
}
#[inline(always)]
unsafe fn msg1x(a: __m128i, b: __m128i) -> __m128i {
    #[cfg(exp_nomsg1)]
    return _mm_xor_si128(a, b);
    #[cfg(not(exp_nomsg1))]
    return _mm_sha256msg1_epu32(a, b);
}

#[inline(always)]
unsafe fn ssig1v(x: __m128i) -> __m128i {
    _mm_ternarylogic_epi32::<0x96>(_mm_ror_epi32::<17>(x), _mm_ror_epi32::<19>(x), _mm_srli_epi32::<10>(x))
}
