//! x86-64 Scrypt kernels: the lane-sliced code of `lanes.rs` on SSE2 (4 lanes), AVX2 (8 lanes)
//! and AVX-512 (16 lanes), each run as two interleaved groups.
//!
//! Each kernel is one `#[target_feature]` function into which the generic code is inlined, so the
//! compiler emits that instruction set only there; `kernels()` hands a kernel out only after
//! `is_x86_feature_detected!` has found its features.
//!
//! Scratchpad per thread: groups × lanes × 128 KiB (AVX-512: 4 MiB, AVX2: 2 MiB, SSE2: 1 MiB).
//!
//! Measured on Zen 4 (one core, kH/s): SSE2 12.5, AVX2 25, AVX-512 39. Two groups beat one and
//! three or four by 1–5 %; AVX-512 on 8-lane `ymm` registers (with `vprold`) reached 35; two
//! Salsa20/8 cores interleaved instruction by instruction ran out of registers and lost a third.

// AVX-512 intrinsics and target features are stable since Rust 1.89, above the workspace's
// declared minimum; this module is only compiled with the toolchain the project builds with.
#![allow(clippy::incompatible_msrv)]

use super::lanes::{self, Lanes};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;
use std::arch::x86_64::*;

/// A Scrypt kernel for one x86 instruction set.
pub struct SimdKernel {
    path: &'static str,
    batch: usize,
    chunk: u32,
    supported: fn() -> bool,
    scan: unsafe fn(&[u8; 80], &Target, NonceRange, &mut Vec<u32>),
    hash: unsafe fn(&[[u8; 80]], &mut [[u8; 32]]),
}

impl std::fmt::Debug for SimdKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "scrypt/{}", self.path)
    }
}

impl SimdKernel {
    /// Whether this CPU has the kernel's instruction set.
    pub fn supported(&self) -> bool {
        (self.supported)()
    }

    /// How many nonces (lanes × groups) one batch hashes together.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Hashes `batch()` arbitrary headers at once (used by tests to compare every lane with the
    /// portable code).
    ///
    /// # Panics
    /// If the CPU lacks the instruction set or the slices do not hold `batch()` entries.
    pub fn hash_batch(&self, headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
        self.check();
        assert!(headers.len() == self.batch && out.len() == self.batch);
        // SAFETY: the features were checked above and the lengths match the batch.
        unsafe { (self.hash)(headers, out) }
    }

    fn check(&self) {
        assert!(
            self.supported(),
            "BUG: scrypt kernel {} used on a CPU without it",
            self.path
        );
    }
}

impl Kernel for SimdKernel {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Scrypt
    }

    fn path(&self) -> &'static str {
        self.path
    }

    fn chunk_nonces(&self) -> u32 {
        self.chunk
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        self.check();
        // SAFETY: the CPU has the kernel's features (checked above).
        unsafe { (self.scan)(header, target, range, found) }
    }
}

/// Defines a kernel's `scan` and `hash` entry points for one instruction set.
macro_rules! entry_points {
    ($features:literal, $vector:ty, $groups:expr, $scan:ident, $hash:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $scan(
            header: &[u8; 80],
            target: &Target,
            range: NonceRange,
            found: &mut Vec<u32>,
        ) {
            lanes::scan::<$vector, { $groups }>(header, target, range, found)
        }

        #[target_feature(enable = $features)]
        unsafe fn $hash(headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
            let scratch = lanes::scratch($groups * lanes::pad_words::<$vector>());
            lanes::hash_batch::<$vector, { $groups }>(headers, out, scratch)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// SSE2: 4 lanes.

/// Interleaved SSE2 groups.
const SSE2_GROUPS: usize = 2;

/// The SSE2 kernel (every x86-64 CPU has it).
pub static SSE2: SimdKernel = SimdKernel {
    path: "sse2",
    batch: 4 * SSE2_GROUPS,
    // Six batches: about 4 ms at 12.5 kH/s.
    chunk: 48,
    supported: || is_x86_feature_detected!("sse2"),
    scan: scan_sse2,
    hash: hash_sse2,
};

entry_points!("sse2", Xmm, SSE2_GROUPS, scan_sse2, hash_sse2);

/// Four 32-bit lanes in an SSE2 register.
#[derive(Clone, Copy)]
struct Xmm(__m128i);

impl Lanes for Xmm {
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        Xmm(_mm_set1_epi32(x as i32))
    }
    #[inline(always)]
    unsafe fn load(src: *const u32) -> Self {
        Xmm(_mm_loadu_si128(src.cast()))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut u32) {
        _mm_storeu_si128(dst.cast(), self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Xmm(_mm_add_epi32(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        Xmm(_mm_xor_si128(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn rotl<const L: i32, const R: i32>(self) -> Self {
        Xmm(_mm_or_si128(
            _mm_slli_epi32::<L>(self.0),
            _mm_srli_epi32::<R>(self.0),
        ))
    }
    #[inline(always)]
    unsafe fn shr<const S: i32>(self) -> Self {
        Xmm(_mm_srli_epi32::<S>(self.0))
    }
    #[inline(always)]
    unsafe fn bswap(self) -> Self {
        // SSE2 has no byte shuffle: swap the 16-bit halves, then the bytes within them.
        let x = self.rotl::<16, 16>().0;
        let mask = _mm_set1_epi32(0x00ff_00ff);
        Xmm(_mm_or_si128(
            _mm_slli_epi32::<8>(_mm_and_si128(x, mask)),
            _mm_and_si128(_mm_srli_epi32::<8>(x), mask),
        ))
    }
    #[inline(always)]
    unsafe fn ch(e: Self, f: Self, g: Self) -> Self {
        Xmm(_mm_xor_si128(
            g.0,
            _mm_and_si128(e.0, _mm_xor_si128(f.0, g.0)),
        ))
    }
    #[inline(always)]
    unsafe fn maj(a: Self, b: Self, c: Self) -> Self {
        Xmm(_mm_or_si128(
            _mm_and_si128(a.0, b.0),
            _mm_and_si128(c.0, _mm_or_si128(a.0, b.0)),
        ))
    }
    #[inline(always)]
    unsafe fn transpose(m: &mut [Self]) {
        let m: &mut [Self; 4] = m.try_into().expect("BUG: 4x4 block");
        let t0 = _mm_unpacklo_epi32(m[0].0, m[1].0);
        let t1 = _mm_unpacklo_epi32(m[2].0, m[3].0);
        let t2 = _mm_unpackhi_epi32(m[0].0, m[1].0);
        let t3 = _mm_unpackhi_epi32(m[2].0, m[3].0);
        m[0] = Xmm(_mm_unpacklo_epi64(t0, t1));
        m[1] = Xmm(_mm_unpackhi_epi64(t0, t1));
        m[2] = Xmm(_mm_unpacklo_epi64(t2, t3));
        m[3] = Xmm(_mm_unpackhi_epi64(t2, t3));
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2: 8 lanes.

/// Interleaved AVX2 groups.
const AVX2_GROUPS: usize = 2;

/// The AVX2 kernel.
pub static AVX2: SimdKernel = SimdKernel {
    path: "avx2",
    batch: 8 * AVX2_GROUPS,
    // Six batches: about 4 ms at 25 kH/s.
    chunk: 96,
    supported: || is_x86_feature_detected!("avx2"),
    scan: scan_avx2,
    hash: hash_avx2,
};

entry_points!("avx2", Ymm, AVX2_GROUPS, scan_avx2, hash_avx2);

/// Eight 32-bit lanes in an AVX2 register.
#[derive(Clone, Copy)]
struct Ymm(__m256i);

impl Lanes for Ymm {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        Ymm(_mm256_set1_epi32(x as i32))
    }
    #[inline(always)]
    unsafe fn load(src: *const u32) -> Self {
        Ymm(_mm256_loadu_si256(src.cast()))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut u32) {
        _mm256_storeu_si256(dst.cast(), self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Ymm(_mm256_add_epi32(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        Ymm(_mm256_xor_si256(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn rotl<const L: i32, const R: i32>(self) -> Self {
        Ymm(_mm256_or_si256(
            _mm256_slli_epi32::<L>(self.0),
            _mm256_srli_epi32::<R>(self.0),
        ))
    }
    #[inline(always)]
    unsafe fn shr<const S: i32>(self) -> Self {
        Ymm(_mm256_srli_epi32::<S>(self.0))
    }
    #[inline(always)]
    unsafe fn bswap(self) -> Self {
        let mask = _mm256_setr_epi8(
            3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10,
            9, 8, 15, 14, 13, 12,
        );
        Ymm(_mm256_shuffle_epi8(self.0, mask))
    }
    #[inline(always)]
    unsafe fn ch(e: Self, f: Self, g: Self) -> Self {
        Ymm(_mm256_xor_si256(
            g.0,
            _mm256_and_si256(e.0, _mm256_xor_si256(f.0, g.0)),
        ))
    }
    #[inline(always)]
    unsafe fn maj(a: Self, b: Self, c: Self) -> Self {
        Ymm(_mm256_or_si256(
            _mm256_and_si256(a.0, b.0),
            _mm256_and_si256(c.0, _mm256_or_si256(a.0, b.0)),
        ))
    }
    #[inline(always)]
    unsafe fn transpose(m: &mut [Self]) {
        let m: &mut [Self; 8] = m.try_into().expect("BUG: 8x8 block");
        // Pairs of rows interleaved by word, then by word pair: in each 128-bit half, b[4s + c]
        // holds column c (low half) or c + 4 (high half) of rows 4s..4s+4.
        let mut b = [_mm256_setzero_si256(); 8];
        for s in 0..2 {
            let r = 4 * s;
            let a0 = _mm256_unpacklo_epi32(m[r].0, m[r + 1].0);
            let a1 = _mm256_unpackhi_epi32(m[r].0, m[r + 1].0);
            let a2 = _mm256_unpacklo_epi32(m[r + 2].0, m[r + 3].0);
            let a3 = _mm256_unpackhi_epi32(m[r + 2].0, m[r + 3].0);
            b[r] = _mm256_unpacklo_epi64(a0, a2);
            b[r + 1] = _mm256_unpackhi_epi64(a0, a2);
            b[r + 2] = _mm256_unpacklo_epi64(a1, a3);
            b[r + 3] = _mm256_unpackhi_epi64(a1, a3);
        }
        for c in 0..4 {
            m[c] = Ymm(_mm256_permute2x128_si256::<0x20>(b[c], b[4 + c]));
            m[c + 4] = Ymm(_mm256_permute2x128_si256::<0x31>(b[c], b[4 + c]));
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512: 16 lanes.

/// Interleaved AVX-512 groups.
const AVX512_GROUPS: usize = 2;

/// The AVX-512 kernel (F for the arithmetic, BW for the byte shuffle).
pub static AVX512: SimdKernel = SimdKernel {
    path: "avx512",
    batch: 16 * AVX512_GROUPS,
    // Four batches: about 3.3 ms at 39 kH/s.
    chunk: 128,
    supported: || is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
    scan: scan_avx512,
    hash: hash_avx512,
};

entry_points!(
    "avx512f,avx512bw",
    Zmm,
    AVX512_GROUPS,
    scan_avx512,
    hash_avx512
);

/// Sixteen 32-bit lanes in an AVX-512 register.
#[derive(Clone, Copy)]
struct Zmm(__m512i);

impl Lanes for Zmm {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        Zmm(_mm512_set1_epi32(x as i32))
    }
    #[inline(always)]
    unsafe fn load(src: *const u32) -> Self {
        Zmm(_mm512_loadu_si512(src.cast()))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut u32) {
        _mm512_storeu_si512(dst.cast(), self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Zmm(_mm512_add_epi32(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        Zmm(_mm512_xor_si512(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn rotl<const L: i32, const R: i32>(self) -> Self {
        Zmm(_mm512_rol_epi32::<L>(self.0))
    }
    #[inline(always)]
    unsafe fn shr<const S: i32>(self) -> Self {
        // The immediate form takes an unsigned count, which a signed const parameter cannot
        // become on stable Rust; the count-in-register form costs the same here.
        Zmm(_mm512_srl_epi32(self.0, _mm_cvtsi32_si128(S)))
    }
    #[inline(always)]
    unsafe fn bswap(self) -> Self {
        let mask = _mm512_set4_epi32(0x0c0d_0e0f, 0x0809_0a0b, 0x0405_0607, 0x0001_0203);
        Zmm(_mm512_shuffle_epi8(self.0, mask))
    }
    #[inline(always)]
    unsafe fn xor3(a: Self, b: Self, c: Self) -> Self {
        Zmm(_mm512_ternarylogic_epi32::<0x96>(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn ch(e: Self, f: Self, g: Self) -> Self {
        Zmm(_mm512_ternarylogic_epi32::<0xca>(e.0, f.0, g.0))
    }
    #[inline(always)]
    unsafe fn maj(a: Self, b: Self, c: Self) -> Self {
        Zmm(_mm512_ternarylogic_epi32::<0xe8>(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn transpose(m: &mut [Self]) {
        let m: &mut [Self; 16] = m.try_into().expect("BUG: 16x16 block");
        // Within each 128-bit lane q, b[4s + c] holds column 4q + c of rows 4s..4s+4.
        let mut b = [_mm512_setzero_si512(); 16];
        for s in 0..4 {
            let r = 4 * s;
            let a0 = _mm512_unpacklo_epi32(m[r].0, m[r + 1].0);
            let a1 = _mm512_unpackhi_epi32(m[r].0, m[r + 1].0);
            let a2 = _mm512_unpacklo_epi32(m[r + 2].0, m[r + 3].0);
            let a3 = _mm512_unpackhi_epi32(m[r + 2].0, m[r + 3].0);
            b[r] = _mm512_unpacklo_epi64(a0, a2);
            b[r + 1] = _mm512_unpackhi_epi64(a0, a2);
            b[r + 2] = _mm512_unpacklo_epi64(a1, a3);
            b[r + 3] = _mm512_unpackhi_epi64(a1, a3);
        }
        // A 4x4 transpose of 128-bit lanes for each c: column 4q + c takes lane q of
        // b[c], b[4 + c], b[8 + c], b[12 + c].
        for c in 0..4 {
            let t0 = _mm512_shuffle_i32x4::<0x88>(b[c], b[4 + c]);
            let t1 = _mm512_shuffle_i32x4::<0xdd>(b[c], b[4 + c]);
            let t2 = _mm512_shuffle_i32x4::<0x88>(b[8 + c], b[12 + c]);
            let t3 = _mm512_shuffle_i32x4::<0xdd>(b[8 + c], b[12 + c]);
            m[c] = Zmm(_mm512_shuffle_i32x4::<0x88>(t0, t2));
            m[4 + c] = Zmm(_mm512_shuffle_i32x4::<0x88>(t1, t3));
            m[8 + c] = Zmm(_mm512_shuffle_i32x4::<0xdd>(t0, t2));
            m[12 + c] = Zmm(_mm512_shuffle_i32x4::<0xdd>(t1, t3));
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
}
