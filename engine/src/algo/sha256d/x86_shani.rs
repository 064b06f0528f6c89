//! SHA-256d kernel for x86-64 with the SHA extensions (SHA-NI: `sha256rnds2`, `sha256msg1`,
//! `sha256msg2`).
//!
//! One `sha256rnds2` runs two rounds on the state of one nonce, so this kernel's lanes are
//! independent nonces ("ways") whose instructions are interleaved: `sha256rnds2` has a latency of
//! 4 cycles on Zen 4 but the core starts one per cycle, so one nonce alone would leave the SHA
//! unit idle three cycles out of four. [`WAYS`] nonces are hashed side by side to fill it.
//!
//! Per nonce the kernel runs 30 `sha256rnds2` for the first hash (rounds 4..=63; rounds 0..=3
//! come from the per-header precomputation) and 31 for the second (rounds 0..=61, of which it
//! uses only `e` after round 60, which becomes the final state word 7), and builds only the
//! message words the rounds need, skipping the `sha256msg1`/`sha256msg2` whose inputs are
//! constant.
//!
//! The same code is compiled for three instruction sets (`Variant`), the best one picked at run
//! time: SSE4.1 (the SHA instructions themselves have only legacy encodings), AVX (three-operand
//! forms save register copies), and AVX-512VL, whose sixteen extra vector registers hold the
//! message words of the other ways (the SHA instructions can only use `xmm0..xmm15`); on Zen 4
//! the three ran at about 32, 33 and 36.5 MH/s.
//!
//! State layout follows the instructions: `ABEF` holds `[f, e, b, a]` (lane 0 first) and `CDGH`
//! holds `[h, g, d, c]`. Message words go in groups of four, `W[4k..4k+4]`, lane 0 first.

use core::arch::x86_64::*;

use super::precomp::{
    small_sigma0, small_sigma1, LaneHits, Precomputed, LEN_32, LEN_80, PAD_32, PAD_80,
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

/// Nonces hashed side by side. Four cover the `sha256rnds2` latency; three and five measured the
/// same on Zen 4 and six or more were slower (their state and message words no longer fit in
/// registers).
pub const WAYS: usize = 4;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    Variant::best().is_some()
}

impl Kernel for ShaNi {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        "shani"
    }

    fn chunk_nonces(&self) -> u32 {
        // About 4 ms at 36 MH/s.
        1 << 17
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        match Variant::best() {
            Some(variant) => variant.scan(header, target, range, found),
            None => super::portable::PORTABLE.scan(header, target, range, found),
        }
    }
}

/// One compiled copy of the kernel, by the instruction set it may use besides SHA-NI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// SSE4.1 only: for the low-power cores that have SHA-NI but no AVX.
    Sse41,
    /// AVX (VEX encodings) for the non-SHA instructions.
    Avx,
    /// AVX-512VL: 32 vector registers.
    Avx512Vl,
}

impl Variant {
    /// Every variant, fastest first.
    pub(super) const ALL: [Variant; 3] = [Variant::Avx512Vl, Variant::Avx, Variant::Sse41];

    /// Whether this CPU can run the variant.
    pub(super) fn supported(self) -> bool {
        let base = is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1");
        base && match self {
            Variant::Sse41 => true,
            Variant::Avx => is_x86_feature_detected!("avx"),
            Variant::Avx512Vl => {
                is_x86_feature_detected!("avx")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
            }
        }
    }

    /// The fastest variant this CPU runs.
    fn best() -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.supported())
    }

    /// Scans with this variant, or with the portable kernel if the CPU lacks it.
    pub(super) fn scan(
        self,
        header: &[u8; 80],
        target: &Target,
        range: NonceRange,
        found: &mut Vec<u32>,
    ) {
        if !self.supported() {
            return super::portable::PORTABLE.scan(header, target, range, found);
        }
        let state = State::new(&Prepared::new(header));
        let top = target.top_word();
        // SAFETY: the CPU has the instructions the variant is compiled for (checked just
        // above; `supported` lists them).
        unsafe {
            match self {
                Variant::Sse41 => sse41::scan_ways::<WAYS>(&state, top, range, found),
                Variant::Avx => avx::scan_ways::<WAYS>(&state, top, range, found),
                Variant::Avx512Vl => avx512vl::scan_ways::<WAYS>(&state, top, range, found),
            }
        }
    }
}

/// Per-header values laid out the way the SHA instructions take them.
#[derive(Clone, Copy, Debug)]
struct State {
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
    fn new(prepared: &Prepared) -> Self {
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
            fix4: [
                0,
                small_sigma1(LEN_80),
                small_sigma1(pre.w16),
                small_sigma1(pre.w17),
            ],
            // sha256msg1(group 1, group 2) = [W4, 0, 0, 0] since W5..W8 are zero, plus
            // W13..W16 = [0, 0, 640, W16].
            start5: [PAD_80, 0, LEN_80, pre.w16],
            // sha256msg1(group 3, group 4) = W12..W15 + σ0(W13..W16).
            start7: [
                0,
                0,
                small_sigma0(LEN_80),
                LEN_80.wrapping_add(small_sigma0(pre.w16)),
            ],
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

/// Message group 1 of the first hash, `[W4..W8]` = `[0x80000000, 0, 0, 0]`: the padding bit.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn group1() -> __m128i {
    _mm_set_epi32(0, 0, 0, PAD_80 as i32)
}

/// Message group 2 of the second hash, `[W8..W12]`: the padding bit.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn group2() -> __m128i {
    _mm_set_epi32(0, 0, 0, PAD_32 as i32)
}

/// Message group 3 of the second hash, `[W12..W16]`: the length.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn group3() -> __m128i {
    _mm_set_epi32(LEN_32 as i32, 0, 0, 0)
}

/// The in-flight values of `N` nonces: the two state halves and a ring of the last four message
/// groups (group `k` in `g[k % 4]`).
struct Ways<const N: usize> {
    abef: [__m128i; N],
    cdgh: [__m128i; N],
    g: [[__m128i; N]; 4],
    /// Final state word 7 per nonce, written by the last step.
    out: [u32; N],
}

impl<const N: usize> Ways<N> {
    /// Empty lanes; step 0 fills them.
    #[inline]
    fn new() -> Self {
        // SAFETY: SSE2 is part of the x86-64 baseline.
        let zero = unsafe { _mm_setzero_si128() };
        Self {
            abef: [zero; N],
            cdgh: [zero; N],
            g: [[zero; N]; 4],
            out: [0; N],
        }
    }
}

/// Four rounds on every way: `abef`/`cdgh` advance by the two `sha256rnds2` whose message
/// words (with `K` added) are lanes 0..2 and 2..4 of `$wk` (evaluated per way `$j`).
macro_rules! quad {
    ($abef:ident, $cdgh:ident, $j:ident => $wk:expr) => {{
        for $j in 0..N {
            let wk = $wk;
            $cdgh[$j] = _mm_sha256rnds2_epu32($cdgh[$j], $abef[$j], wk);
            $abef[$j] = _mm_sha256rnds2_epu32($abef[$j], $cdgh[$j], _mm_shuffle_epi32::<0x0E>(wk));
        }
    }};
}

/// The general message schedule for group `$k` in ring `$g`:
/// `W[i] = σ1(W[i-2]) + W[i-7] + σ0(W[i-15]) + W[i-16]` for four words, from the four
/// previous groups.
macro_rules! group {
    ($g:ident, $k:expr) => {
        for j in 0..N {
            let m1 = _mm_sha256msg1_epu32($g[($k - 4) % 4][j], $g[($k - 3) % 4][j]);
            let w7 = _mm_alignr_epi8::<4>($g[($k - 1) % 4][j], $g[($k - 2) % 4][j]);
            $g[$k % 4][j] = _mm_sha256msg2_epu32(_mm_add_epi32(m1, w7), $g[($k - 1) % 4][j]);
        }
    };
}

/// Defines module `$name` with the scan loop compiled with `#[target_feature(enable =
/// $features)]`; [`hash_ways`] and its steps are inlined into it and so compiled for the same
/// instruction sets.
macro_rules! variant {
    ($name:ident, $features:literal) => {
        mod $name {
            use super::*;

            /// Scans `range` `N` nonces at a time.
            ///
            /// # Safety
            /// The CPU must support the module's instruction sets.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn scan_ways<const N: usize>(
                state: &State,
                top: u32,
                range: NonceRange,
                found: &mut Vec<u32>,
            ) {
                let mut hits = LaneHits::new(range, N);
                while let Some(base) = hits.next_batch() {
                    let words = hash_ways::<N>(state, base);
                    let mut mask = 0u64;
                    for (j, word) in words.iter().enumerate() {
                        // Word 7 read little-endian is the top 32 bits of the hash as a number.
                        mask |= u64::from(word.swap_bytes() <= top) << j;
                    }
                    hits.report(mask, found);
                }
            }
        }
    };
}

variant!(sse41, "sha,sse2,ssse3,sse4.1");
variant!(avx, "sha,sse2,ssse3,sse4.1,avx");
variant!(avx512vl, "sha,sse2,ssse3,sse4.1,avx,avx2,avx512f,avx512vl");

/// Final state word 7 (before the byte swap) of SHA-256d for the nonces `base..base + N`
/// (wrapping).
///
/// Always inlined, and without a `#[target_feature]` of its own, so that each `scan_ways`
/// compiles it (and the intrinsics in it) with that variant's instruction sets.
///
/// # Safety
/// The CPU must support SHA-NI and SSE4.1, and the caller must be compiled for them.
#[inline(always)]
unsafe fn hash_ways<const N: usize>(state: &State, base: u32) -> [u32; N] {
    let mut ways = Ways::<N>::new();
    macro_rules! steps {
        ($($k:literal)*) => {
            $(step::<$k, N>(&mut ways, state, base);)*
        };
    }
    steps!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55);
    ways.out
}

/// Step `K` of hashing `N` nonces from `base`: the setup, four rounds on every way, one message
/// group for every way, the switch to the second hash, or the last two rounds. Each message
/// group is computed one step before the rounds that use it, so its latency overlaps the
/// previous rounds.
///
/// # Safety
/// As for [`hash_ways`].
// Each loop walks the ways through several arrays (state halves and message groups) in
// lockstep, which reads best with an index.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn step<const K: usize, const N: usize>(ways: &mut Ways<N>, state: &State, base: u32) {
    let Ways { abef, cdgh, g, out } = ways;
    match K {
        // ---- First hash, second block: rounds 4..=63 from the state after round 3. ----
        0 => {
            let abef4 = load(&state.abef4);
            let cdgh4 = load(&state.cdgh4);
            let group0 = load(&state.group0);
            let fix4 = load(&state.fix4);
            for j in 0..N {
                // The nonce is serialised little-endian and read as a big-endian word.
                let w3 = _mm_cvtsi32_si128(base.wrapping_add(j as u32).swap_bytes() as i32);
                // W3 adds to `a` (lane 3) and `e` (lane 1) in round 3.
                abef[j] = _mm_add_epi32(abef4, _mm_shuffle_epi32::<0x11>(w3));
                cdgh[j] = cdgh4;
                let group0 = _mm_add_epi32(group0, _mm_slli_si128::<12>(w3));
                // Group 4 = [W16, W17, W18, W19]: one sha256msg1 and the constant σ1 terms.
                g[0][j] = _mm_add_epi32(_mm_sha256msg1_epu32(group0, group1()), fix4);
            }
        }
        // Rounds 4..=15: W4 = 0x80000000, W5..W14 = 0, W15 = 640, so W + K is a constant.
        1 => quad!(abef, cdgh, _j => _mm_add_epi32(k4(1), group1())),
        2 => quad!(abef, cdgh, _j => k4(2)),
        3 => quad!(abef, cdgh, _j => _mm_add_epi32(k4(3), _mm_set_epi32(LEN_80 as i32, 0, 0, 0))),
        // Group 5: sha256msg1 and the W[i-7] terms are constant, only σ1 of W18, W19 varies.
        4 => {
            let start5 = load(&state.start5);
            for j in 0..N {
                g[1][j] = _mm_sha256msg2_epu32(start5, g[0][j]);
            }
        }
        // Group 6: sha256msg1(group 2, group 3) is zero (W8..W12 are zero).
        6 => {
            for j in 0..N {
                let w7 = _mm_alignr_epi8::<4>(g[1][j], g[0][j]);
                g[2][j] = _mm_sha256msg2_epu32(w7, g[1][j]);
            }
        }
        // Group 7: sha256msg1(group 3, group 4) is the constant `start7`.
        8 => {
            let start7 = load(&state.start7);
            for j in 0..N {
                let w7 = _mm_alignr_epi8::<4>(g[2][j], g[1][j]);
                g[3][j] = _mm_sha256msg2_epu32(_mm_add_epi32(start7, w7), g[2][j]);
            }
        }
        // Groups 8..=15, each computed one quad ahead of its use.
        10 | 12 | 14 | 16 | 18 | 20 | 22 | 24 => group!(g, K / 2 + 3),
        // Rounds 16..=63: quad `q` uses group `q`.
        5 | 7 | 9 | 11 | 13 | 15 | 17 | 19 | 21 | 23 | 25 => {
            let q = (K + 3) / 2;
            quad!(abef, cdgh, j => _mm_add_epi32(g[q % 4][j], k4(q)))
        }
        26 => quad!(abef, cdgh, j => _mm_add_epi32(g[3][j], k4(15))),

        // ---- Second hash of the 32-byte digest. ----
        27 => {
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
        }
        28 => quad!(abef, cdgh, j => _mm_add_epi32(g[0][j], k4(0))),
        29 => quad!(abef, cdgh, j => _mm_add_epi32(g[1][j], k4(1))),
        // Group 4: the W[i-7] terms (W9..W12) are zero.
        30 => {
            for j in 0..N {
                let m1 = _mm_sha256msg1_epu32(g[0][j], g[1][j]);
                g[0][j] = _mm_sha256msg2_epu32(m1, group3());
            }
        }
        31 => quad!(abef, cdgh, _j => _mm_add_epi32(k4(2), group2())),
        // Group 5 reads group 2 and group 3 as constants.
        32 => {
            for j in 0..N {
                let m1 = _mm_sha256msg1_epu32(g[1][j], group2());
                let w7 = _mm_alignr_epi8::<4>(g[0][j], group3());
                g[1][j] = _mm_sha256msg2_epu32(_mm_add_epi32(m1, w7), g[0][j]);
            }
        }
        33 => quad!(abef, cdgh, _j => _mm_add_epi32(k4(3), group3())),
        // Group 6: sha256msg1(group 2, group 3) = [W8, 0, 0, 0] since W9..W12 are zero.
        34 => {
            for j in 0..N {
                let w7 = _mm_alignr_epi8::<4>(g[1][j], g[0][j]);
                g[2][j] = _mm_sha256msg2_epu32(_mm_add_epi32(group2(), w7), g[1][j]);
            }
        }
        // Group 7: sha256msg1(group 3, group 4).
        36 => {
            for j in 0..N {
                let m1 = _mm_sha256msg1_epu32(group3(), g[0][j]);
                let w7 = _mm_alignr_epi8::<4>(g[2][j], g[1][j]);
                g[3][j] = _mm_sha256msg2_epu32(_mm_add_epi32(m1, w7), g[2][j]);
            }
        }
        38 | 40 | 42 | 44 | 46 | 48 | 50 | 52 => group!(g, K / 2 - 11),
        // Rounds 16..=59: quad `q` uses group `q`.
        35 | 37 | 39 | 41 | 43 | 45 | 47 | 49 | 51 | 53 | 54 => {
            let q = if K == 54 { 14 } else { (K - 27) / 2 };
            quad!(abef, cdgh, j => _mm_add_epi32(g[q % 4][j], k4(q)))
        }
        // Rounds 60 and 61: after them lane 0 of the new ABEF is `f`, which is `e` after round
        // 60, and the final state word 7 is IV[7] plus `e` after round 60 (rounds 61..=63 only
        // move it from e to h). Rounds 62 and 63 are skipped.
        55 => {
            for j in 0..N {
                let wk = _mm_add_epi32(g[3][j], k4(15));
                let last = _mm_sha256rnds2_epu32(cdgh[j], abef[j], wk);
                out[j] = (_mm_cvtsi128_si32(last) as u32).wrapping_add(IV[7]);
            }
        }
        _ => {}
    }
}
