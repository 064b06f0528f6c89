//! Lane-sliced Scrypt: one nonce per 32-bit vector lane, written once over the [`Lanes`] trait and
//! instantiated by each SIMD kernel (`x86.rs`) inside its `#[target_feature]` function.
//!
//! Everything runs lane-sliced, so no lane ever talks to another: the PBKDF2-HMAC-SHA256 steps
//! are multi-buffer SHA-256, and Salsa20/8 needs no shuffles. The one place where lanes meet is
//! the scratchpad: each lane's 128-byte ROMix block is stored contiguously (transposed on the way
//! in and out), because the second ROMix loop reads a different random block for every lane and
//! a lane-sliced layout would spread one lane's block over 32 cache lines.
//!
//! A kernel runs `G` independent groups of lanes in turn. In the second ROMix loop the next
//! block index of a group is known only at the end of its step; prefetching that block and then
//! working on the other groups hides the cache miss (the scratchpads outgrow the L2 cache). On
//! Zen 4 this is worth a few per cent: the work is bound by vector ALU throughput, not memory.

// Index loops mirror the specification's word numbering.
#![allow(clippy::needless_range_loop)]

use super::N;
use crate::algo::sha256::{IV, K};
use crate::algo::{set_nonce, NonceRange};
use crate::target::Target;
use std::cell::RefCell;

/// The most lanes one group has (AVX-512: 16 lanes of 32 bits).
pub const MAX_LANES: usize = 16;
/// The most nonces one batch holds (groups × lanes).
pub const MAX_BATCH: usize = 32;

/// A vector of `LANES` 32-bit words with the few operations Scrypt needs.
///
/// # Safety
/// Every method uses CPU instructions of its implementation's instruction set; callers must
/// have checked that the CPU has it (the kernels call these only inside `#[target_feature]`
/// functions that are reached after `is_x86_feature_detected!`).
pub trait Lanes: Copy {
    /// Words per vector.
    const LANES: usize;
    /// Every lane set to `x`.
    unsafe fn splat(x: u32) -> Self;
    /// Reads `LANES` words (no alignment needed).
    unsafe fn load(src: *const u32) -> Self;
    /// Writes `LANES` words (no alignment needed).
    unsafe fn store(self, dst: *mut u32);
    /// Lane-wise wrapping addition.
    unsafe fn add(self, b: Self) -> Self;
    /// Lane-wise exclusive or.
    unsafe fn xor(self, b: Self) -> Self;
    /// Lane-wise rotation left by `L` bits; `R` must be `32 - L` (stable Rust cannot compute it
    /// from a const parameter; the `rotl!` macro passes both).
    unsafe fn rotl<const L: i32, const R: i32>(self) -> Self;
    /// Lane-wise logical shift right by `S` bits.
    unsafe fn shr<const S: i32>(self) -> Self;
    /// Reverses the bytes of every word (SHA-256 reads big-endian words, Salsa20 little-endian).
    unsafe fn bswap(self) -> Self;
    /// `a ^ b ^ c`.
    #[inline(always)]
    unsafe fn xor3(a: Self, b: Self, c: Self) -> Self {
        a.xor(b).xor(c)
    }
    /// SHA-256 Ch: `(e & f) ^ (!e & g)`.
    unsafe fn ch(e: Self, f: Self, g: Self) -> Self;
    /// SHA-256 Maj: `(a & b) ^ (a & c) ^ (b & c)`.
    unsafe fn maj(a: Self, b: Self, c: Self) -> Self;
    /// Transposes a `LANES` × `LANES` block: afterwards `m[i]` lane `j` is what `m[j]` lane `i`
    /// was. `m.len()` is `LANES`.
    unsafe fn transpose(m: &mut [Self]);
    /// Hints that the cache line at `p` is about to be read.
    unsafe fn prefetch(p: *const u32);
}

/// Rotates every lane left by a literal amount.
macro_rules! rotl {
    ($x:expr, $n:literal) => {
        $x.rotl::<$n, { 32 - $n }>()
    };
}

/// Rotates every lane right by a literal amount.
macro_rules! rotr {
    ($x:expr, $n:literal) => {
        $x.rotl::<{ 32 - $n }, $n>()
    };
}

/// One SHA-256 compression on `LANES` independent states (FIPS 180-4 §6.2.2).
#[inline(always)]
unsafe fn sha256_compress<V: Lanes>(state: &mut [V; 8], block: &[V; 16]) {
    let mut w = *block;
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        if i >= 16 {
            // The schedule kept as a rolling window of 16 words: w[i % 16] is W[i - 16].
            let w15 = w[(i + 1) % 16];
            let w2 = w[(i + 14) % 16];
            let s0 = V::xor3(rotr!(w15, 7), rotr!(w15, 18), w15.shr::<3>());
            let s1 = V::xor3(rotr!(w2, 17), rotr!(w2, 19), w2.shr::<10>());
            w[i % 16] = w[i % 16].add(s0).add(w[(i + 9) % 16]).add(s1);
        }
        let s1 = V::xor3(rotr!(e, 6), rotr!(e, 11), rotr!(e, 25));
        let t1 = h
            .add(s1)
            .add(V::ch(e, f, g))
            .add(V::splat(K[i]))
            .add(w[i % 16]);
        let s0 = V::xor3(rotr!(a, 2), rotr!(a, 13), rotr!(a, 22));
        let t2 = s0.add(V::maj(a, b, c));
        h = g;
        g = f;
        f = e;
        e = d.add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.add(v);
    }
}

/// The SHA-256 initial state in every lane.
#[inline(always)]
unsafe fn iv<V: Lanes>() -> [V; 8] {
    let mut s = [V::splat(0); 8];
    for (si, &h) in s.iter_mut().zip(IV.iter()) {
        *si = V::splat(h);
    }
    s
}

/// What the PBKDF2 steps share per lane: the HMAC states keyed with the header.
#[derive(Clone, Copy)]
struct Hmac<V> {
    /// State after compressing `key ^ ipad`.
    inner: [V; 8],
    /// State after compressing `key ^ opad`.
    outer: [V; 8],
}

/// HMAC outer hash of a 32-byte inner digest: message `opad || digest`, 96 bytes = 768 bits.
#[inline(always)]
unsafe fn hmac_outer<V: Lanes>(outer: &[V; 8], digest: &[V; 8]) -> [V; 8] {
    let mut block = [V::splat(0); 16];
    block[..8].copy_from_slice(digest);
    block[8] = V::splat(0x8000_0000);
    block[15] = V::splat(768);
    let mut s = *outer;
    sha256_compress(&mut s, &block);
    s
}

/// First PBKDF2-HMAC-SHA256 (password and salt are the header, one iteration, 128 bytes out):
/// returns the ROMix input as little-endian words and the keyed HMAC states.
///
/// `words[k]` lane `l` is big-endian word `k` of header `l`.
#[inline(always)]
unsafe fn pbkdf2_front<V: Lanes>(words: &[V; 20], x: &mut [V; 32]) -> Hmac<V> {
    let head: [V; 16] = words[..16].try_into().expect("BUG: 16 words");
    // The 80-byte key is longer than a SHA-256 block, so HMAC keys with its hash (RFC 2104 §2):
    // second block = header bytes 64..80, the 0x80 pad byte, and the length 640 bits.
    let mut key = iv::<V>();
    sha256_compress(&mut key, &head);
    let mut tail = [V::splat(0); 16];
    tail[..4].copy_from_slice(&words[16..20]);
    tail[4] = V::splat(0x8000_0000);
    tail[15] = V::splat(640);
    sha256_compress(&mut key, &tail);

    let mut pad = [V::splat(0x3636_3636); 16];
    for k in 0..8 {
        pad[k] = key[k].xor(V::splat(0x3636_3636));
    }
    let mut inner = iv::<V>();
    sha256_compress(&mut inner, &pad);
    let mut pad = [V::splat(0x5c5c_5c5c); 16];
    for k in 0..8 {
        pad[k] = key[k].xor(V::splat(0x5c5c_5c5c));
    }
    let mut outer = iv::<V>();
    sha256_compress(&mut outer, &pad);

    // Inner message per output block i: ipad (64) || header (80) || INT(i) (4) = 148 bytes; the
    // first header block is shared by the four output blocks.
    let mut salted = inner;
    sha256_compress(&mut salted, &head);
    let mut last = [V::splat(0); 16];
    last[..4].copy_from_slice(&words[16..20]);
    last[5] = V::splat(0x8000_0000);
    last[15] = V::splat(148 * 8);
    for i in 0..4 {
        last[4] = V::splat(i as u32 + 1);
        let mut u = salted;
        sha256_compress(&mut u, &last);
        let t = hmac_outer(&outer, &u);
        for k in 0..8 {
            x[8 * i + k] = t[k].bswap();
        }
    }
    Hmac { inner, outer }
}

/// Second PBKDF2-HMAC-SHA256: salt = the 128-byte ROMix output, one 32-byte block out; returns
/// the hash as eight big-endian words.
#[inline(always)]
unsafe fn pbkdf2_back<V: Lanes>(hmac: &Hmac<V>, x: &[V; 32]) -> [V; 8] {
    let mut s = hmac.inner;
    let mut block = [V::splat(0); 16];
    for half in 0..2 {
        for k in 0..16 {
            block[k] = x[16 * half + k].bswap();
        }
        sha256_compress(&mut s, &block);
    }
    // ipad (64) || salt (128) || INT(1) (4) = 196 bytes.
    let mut last = [V::splat(0); 16];
    last[0] = V::splat(1);
    last[1] = V::splat(0x8000_0000);
    last[15] = V::splat(196 * 8);
    sha256_compress(&mut s, &last);
    hmac_outer(&hmac.outer, &s)
}

/// Salsa20/8 core in place: `b = b + salsa20_8_rounds(b)` (RFC 7914 §3).
#[inline(always)]
unsafe fn salsa20_8<V: Lanes>(b: &mut [V; 16]) {
    let mut x = *b;
    macro_rules! step {
        ($d:literal, $s1:literal, $s2:literal, $r:literal) => {
            x[$d] = x[$d].xor(rotl!(x[$s1].add(x[$s2]), $r));
        };
    }
    for _ in 0..4 {
        // Column round.
        step!(4, 0, 12, 7);
        step!(9, 5, 1, 7);
        step!(14, 10, 6, 7);
        step!(3, 15, 11, 7);
        step!(8, 4, 0, 9);
        step!(13, 9, 5, 9);
        step!(2, 14, 10, 9);
        step!(7, 3, 15, 9);
        step!(12, 8, 4, 13);
        step!(1, 13, 9, 13);
        step!(6, 2, 14, 13);
        step!(11, 7, 3, 13);
        step!(0, 12, 8, 18);
        step!(5, 1, 13, 18);
        step!(10, 6, 2, 18);
        step!(15, 11, 7, 18);
        // Row round.
        step!(1, 0, 3, 7);
        step!(6, 5, 4, 7);
        step!(11, 10, 9, 7);
        step!(12, 15, 14, 7);
        step!(2, 1, 0, 9);
        step!(7, 6, 5, 9);
        step!(8, 11, 10, 9);
        step!(13, 12, 15, 9);
        step!(3, 2, 1, 13);
        step!(4, 7, 6, 13);
        step!(9, 8, 11, 13);
        step!(14, 13, 12, 13);
        step!(0, 3, 2, 18);
        step!(5, 4, 7, 18);
        step!(10, 9, 8, 18);
        step!(15, 14, 13, 18);
    }
    for i in 0..16 {
        b[i] = b[i].add(x[i]);
    }
}

/// scryptBlockMix with r=1 (RFC 7914 §4): two Salsa20/8 calls.
#[inline(always)]
unsafe fn block_mix<V: Lanes>(x: &mut [V; 32]) {
    let mut a = [V::splat(0); 16];
    for i in 0..16 {
        a[i] = x[i].xor(x[16 + i]);
    }
    salsa20_8(&mut a);
    let mut c = [V::splat(0); 16];
    for i in 0..16 {
        x[i] = a[i];
        c[i] = x[16 + i].xor(a[i]);
    }
    salsa20_8(&mut c);
    x[16..].copy_from_slice(&c);
}

/// Words of one scratchpad entry of one lane.
const BLOCK_WORDS: usize = 32;

/// Stores `x` transposed: lane `l`'s 32 words go to `dst + l * 32`, contiguously.
#[inline(always)]
unsafe fn store_rows<V: Lanes>(x: &[V; 32], dst: *mut u32) {
    let lanes = V::LANES;
    let mut t = [V::splat(0); MAX_LANES];
    for part in 0..BLOCK_WORDS / lanes {
        t[..lanes].copy_from_slice(&x[part * lanes..(part + 1) * lanes]);
        V::transpose(&mut t[..lanes]);
        for l in 0..lanes {
            t[l].store(dst.add(l * BLOCK_WORDS + part * lanes));
        }
    }
}

/// `x ^= V[j]` lane by lane, where lane `l` reads its row at `rows[l]`.
#[inline(always)]
unsafe fn xor_rows<V: Lanes>(x: &mut [V; 32], rows: &[*const u32; MAX_LANES]) {
    let lanes = V::LANES;
    let mut t = [V::splat(0); MAX_LANES];
    for part in 0..BLOCK_WORDS / lanes {
        for l in 0..lanes {
            t[l] = V::load(rows[l].add(part * lanes));
        }
        V::transpose(&mut t[..lanes]);
        for m in 0..lanes {
            x[part * lanes + m] = x[part * lanes + m].xor(t[m]);
        }
    }
}

/// Finds each lane's next ROMix row (Integerify: word 16 modulo N) and prefetches it.
#[inline(always)]
unsafe fn next_rows<V: Lanes>(x: &[V; 32], pad: *const u32, rows: &mut [*const u32; MAX_LANES]) {
    let lanes = V::LANES;
    let mut j = [0u32; MAX_LANES];
    x[16].store(j.as_mut_ptr());
    for l in 0..lanes {
        let row = pad.add(((j[l] as usize & (N - 1)) * lanes + l) * BLOCK_WORDS);
        V::prefetch(row);
        V::prefetch(row.add(16));
        rows[l] = row;
    }
}

/// Words of scratchpad one group of `V` lanes needs.
pub const fn pad_words<V: Lanes>() -> usize {
    N * V::LANES * BLOCK_WORDS
}

/// scryptROMix with N=1024, r=1 (RFC 7914 §5) for `G` groups, each over its own scratchpad.
///
/// A group's scratchpad holds entry `i` of lane `l` at words `(i * LANES + l) * 32`, so the first
/// loop writes sequentially.
#[inline(always)]
unsafe fn romix<V: Lanes, const G: usize>(x: &mut [[V; 32]; G], scratch: *mut u32) {
    let lanes = V::LANES;
    let pad = |g: usize| scratch.add(g * pad_words::<V>());
    for i in 0..N {
        for g in 0..G {
            store_rows(&x[g], pad(g).add(i * lanes * BLOCK_WORDS));
            block_mix(&mut x[g]);
        }
    }
    let mut rows = [[core::ptr::null::<u32>(); MAX_LANES]; G];
    for g in 0..G {
        next_rows(&x[g], pad(g), &mut rows[g]);
    }
    for _ in 0..N {
        for g in 0..G {
            xor_rows(&mut x[g], &rows[g]);
            block_mix(&mut x[g]);
            next_rows(&x[g], pad(g), &mut rows[g]);
        }
    }
}

/// Scrypt(N=1024, r=1, p=1) of `G * LANES` headers; `scratch` holds `G` scratchpads.
///
/// # Safety
/// The CPU must support `V`'s instructions; `scratch` must be valid for `G * pad_words::<V>()`
/// words; `headers` and `out` must hold `G * V::LANES` entries.
#[inline(always)]
pub unsafe fn hash_batch<V: Lanes, const G: usize>(
    headers: &[[u8; 80]],
    out: &mut [[u8; 32]],
    scratch: *mut u32,
) {
    let lanes = V::LANES;
    debug_assert!(headers.len() == G * lanes && out.len() == G * lanes);
    let mut x = [[V::splat(0); 32]; G];
    let mut hmac = [Hmac {
        inner: [V::splat(0); 8],
        outer: [V::splat(0); 8],
    }; G];
    for g in 0..G {
        let mut words = [V::splat(0); 20];
        let mut column = [0u32; MAX_LANES];
        for (k, word) in words.iter_mut().enumerate() {
            for l in 0..lanes {
                let h = &headers[g * lanes + l];
                column[l] =
                    u32::from_be_bytes([h[4 * k], h[4 * k + 1], h[4 * k + 2], h[4 * k + 3]]);
            }
            *word = V::load(column.as_ptr());
        }
        hmac[g] = pbkdf2_front(&words, &mut x[g]);
    }
    romix::<V, G>(&mut x, scratch);
    for g in 0..G {
        let hash = pbkdf2_back(&hmac[g], &x[g]);
        let mut column = [0u32; MAX_LANES];
        for (k, word) in hash.iter().enumerate() {
            word.store(column.as_mut_ptr());
            for l in 0..lanes {
                out[g * lanes + l][4 * k..4 * k + 4].copy_from_slice(&column[l].to_be_bytes());
            }
        }
    }
}

/// A 64-byte aligned piece of scratchpad (one cache line).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

thread_local! {
    /// Each thread's scratchpad, kept between scans: a scan lasts a few milliseconds, and
    /// allocating and faulting in megabytes each time would cost more than that.
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// This thread's scratchpad, grown to at least `words` words.
///
/// The pointer stays valid until the next call on the same thread; kernels call this once at
/// the start of a scan and never scan re-entrantly. (A pointer rather than a closure keeps the
/// hot loop inside the caller's `#[target_feature]` function.)
pub fn scratch(words: usize) -> *mut u32 {
    SCRATCH.with(|cell| {
        let mut pad = cell.borrow_mut();
        let lines = words.div_ceil(16);
        if pad.len() < lines {
            *pad = vec![Line([0; 16]); lines];
        }
        pad.as_mut_ptr().cast::<u32>()
    })
}

/// Scans `range` of `header` in batches of `G * LANES` nonces with [`hash_batch`].
///
/// The last batch of a range that is not a multiple of the batch repeats the range's last nonce
/// in the spare lanes and ignores them, so ranges of any length, including ones ending at
/// `0xFFFFFFFF`, are scanned exactly once.
///
/// # Safety
/// The CPU must support `V`'s instructions.
#[inline(always)]
pub unsafe fn scan<V: Lanes, const G: usize>(
    header: &[u8; 80],
    target: &Target,
    range: NonceRange,
    found: &mut Vec<u32>,
) {
    let batch = G * V::LANES;
    debug_assert!(batch <= MAX_BATCH);
    let mut headers = [*header; MAX_BATCH];
    let mut out = [[0u8; 32]; MAX_BATCH];
    let last = u64::from(range.last);
    let scratch = scratch(G * pad_words::<V>());
    let mut first = u64::from(range.first);
    while first <= last {
        for (k, h) in headers[..batch].iter_mut().enumerate() {
            set_nonce(h, (first + k as u64).min(last) as u32);
        }
        hash_batch::<V, G>(&headers[..batch], &mut out[..batch], scratch);
        for (k, hash) in out[..batch].iter().enumerate() {
            let nonce = first + k as u64;
            if nonce <= last && target.is_met_by(hash) {
                found.push(nonce as u32);
            }
        }
        first += batch as u64;
    }
}
