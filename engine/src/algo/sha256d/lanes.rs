//! The lane-parallel SHA-256d body shared by the AVX2 and AVX-512 kernels.
//!
//! Both kernels hash one nonce per 32-bit lane and differ only in their vector type and in how
//! they build the SHA-256 functions (AVX-512 has rotates and three-input logic, AVX2 has neither).
//! [`sha256d_lanes`] holds the round sequence once, written against a small set of functions that
//! each kernel module defines with its own `#[target_feature]`:
//! `splat(u32) -> V`, `add(V, V) -> V`, `bsig0`, `bsig1` (Σ0, Σ1), `ssig0`, `ssig1` (σ0, σ1),
//! `ch(e, f, g)` and `maj(a, b, c)`.
//!
//! The body is fully unrolled with constant indices so that every value stays in a register (or
//! a stack slot the compiler picks), and it leaves out everything the result does not need:
//!
//! - first hash: rounds 0..=3 come from [`Precomputed`](super::precomp::Precomputed) (the nonce
//!   word only adds to `a` and `e` in round 3), and the message words that are zero or
//!   constant are folded into the round constants or left out of the schedule sums;
//! - second hash: round 0 is two additions, rounds 8..=15 have constant words, and only the
//!   final state word 7 is produced. Word 7 is `IV[7]` plus `e` after round 60 (rounds 61..=63
//!   only shift it from `e` to `h`), so rounds 57..=60 compute `e` alone (`a` after round 56 is
//!   the last one that reaches `e` after round 60), rounds 61..=63 are skipped, and the schedule
//!   stops at `W60`.

/// One full SHA-256 round on the state ring `$s` (8 vectors; at round `i`, `a` is
/// `$s[(64 - i) % 8]`, `b` the next slot, and so on), with `$kw` = `K[i] + W[i]`. The new `e`
/// replaces `d` and the new `a` replaces `h`, so no values move between slots.
macro_rules! lanes_round {
    ($s:ident, $i:expr, $kw:expr) => {{
        let a = $s[(64 - $i) % 8];
        let b = $s[(65 - $i) % 8];
        let c = $s[(66 - $i) % 8];
        let e = $s[(68 - $i) % 8];
        let f = $s[(69 - $i) % 8];
        let g = $s[(70 - $i) % 8];
        let h = $s[(71 - $i) % 8];
        // h + kw does not depend on the previous round, so the path from the last `e` is
        // Σ1, one add, then `d + t1`.
        let t1 = add(add(add(h, $kw), ch(e, f, g)), bsig1(e));
        $s[(67 - $i) % 8] = add($s[(67 - $i) % 8], t1);
        $s[(71 - $i) % 8] = add(add(t1, bsig0(a)), maj(a, b, c));
    }};
}

/// A round that computes only the new `e` (into `d`'s slot): enough for the last rounds of the
/// second hash, whose `a` no longer reaches the final word.
macro_rules! lanes_round_e {
    ($s:ident, $i:expr, $kw:expr) => {{
        let e = $s[(68 - $i) % 8];
        let f = $s[(69 - $i) % 8];
        let g = $s[(70 - $i) % 8];
        let h = $s[(71 - $i) % 8];
        let t1 = add(add(add(h, $kw), ch(e, f, g)), bsig1(e));
        $s[(67 - $i) % 8] = add($s[(67 - $i) % 8], t1);
    }};
}

/// `W[i] = σ1(W[i-2]) + W[i-7] + σ0(W[i-15]) + W[i-16]` in the ring `$w` (`W[i]` in
/// `$w[i % 16]`, overwriting `W[i-16]`, which nothing needs afterwards).
macro_rules! lanes_schedule {
    ($w:ident, $i:expr) => {
        $w[$i % 16] = add(
            add(ssig1($w[($i - 2) % 16]), $w[($i - 7) % 16]),
            add(ssig0($w[($i - 15) % 16]), $w[$i % 16]),
        );
    };
}

/// For each `i`: the message word `W[i]`, then round `i` with it (`$round` is
/// [`lanes_round`] or [`lanes_round_e`]).
macro_rules! lanes_steps {
    ($round:ident, $s:ident, $w:ident; $($i:literal),*) => {$(
        lanes_schedule!($w, $i);
        $round!($s, $i, add($w[$i % 16], splat(K[$i])));
    )*};
}

/// Evaluates to final state word 7 of SHA-256d (as a big-endian word, before the byte swap that
/// makes it the top of the hash) for every lane, given the per-header
/// [`Precomputed`](super::precomp::Precomputed) `$pre` and the vector `$w3` of nonce words (the
/// nonces byte-swapped).
macro_rules! sha256d_lanes {
    ($pre:expr, $w3:expr) => {{
        use $crate::algo::sha256::{IV, K};
        use $crate::algo::sha256d::lanes::{
            lanes_round, lanes_round_e, lanes_schedule, lanes_steps,
        };
        use $crate::algo::sha256d::precomp::{
            small_sigma0, small_sigma1, H2_A1, H2_E1, LEN_32, LEN_80, PAD_32, PAD_80,
        };
        let pre: &$crate::algo::sha256d::precomp::Precomputed = $pre;
        let w3 = $w3;
        let st = &pre.state4;

        // ---- First hash, rounds 4..=63. Round 4 has `a` in slot (64 - 4) % 8 = 4. ----
        let mut s = [splat(0); 8];
        s[4] = add(splat(st[0]), w3);
        s[5] = splat(st[1]);
        s[6] = splat(st[2]);
        s[7] = splat(st[3]);
        s[0] = add(splat(st[4]), w3);
        s[1] = splat(st[5]);
        s[2] = splat(st[6]);
        s[3] = splat(st[7]);
        // W4 is the padding bit, W5..W14 are zero, W15 is the length.
        lanes_round!(s, 4, splat(K[4].wrapping_add(PAD_80)));
        lanes_round!(s, 5, splat(K[5]));
        lanes_round!(s, 6, splat(K[6]));
        lanes_round!(s, 7, splat(K[7]));
        lanes_round!(s, 8, splat(K[8]));
        lanes_round!(s, 9, splat(K[9]));
        lanes_round!(s, 10, splat(K[10]));
        lanes_round!(s, 11, splat(K[11]));
        lanes_round!(s, 12, splat(K[12]));
        lanes_round!(s, 13, splat(K[13]));
        lanes_round!(s, 14, splat(K[14]));
        lanes_round!(s, 15, splat(K[15].wrapping_add(LEN_80)));
        // W16..W33 written out: the zero and constant words drop out of their sums.
        let mut w = [splat(0); 16];
        w[0] = splat(pre.w16);
        lanes_round!(s, 16, splat(K[16].wrapping_add(pre.w16)));
        w[1] = splat(pre.w17);
        lanes_round!(s, 17, splat(K[17].wrapping_add(pre.w17)));
        w[2] = add(splat(pre.w18_base), ssig0(w3));
        lanes_round!(s, 18, add(w[2], splat(K[18])));
        w[3] = add(splat(pre.w19_base), w3);
        lanes_round!(s, 19, add(w[3], splat(K[19])));
        // W20 = σ1(W18) + W4 (W13 = W5 = 0).
        w[4] = add(ssig1(w[2]), splat(PAD_80));
        lanes_round!(s, 20, add(w[4], splat(K[20])));
        // W21 = σ1(W19) (W14 = W6 = W5 = 0).
        w[5] = ssig1(w[3]);
        lanes_round!(s, 21, add(w[5], splat(K[21])));
        // W22 = σ1(W20) + W15.
        w[6] = add(ssig1(w[4]), splat(LEN_80));
        lanes_round!(s, 22, add(w[6], splat(K[22])));
        // W23..W29 = σ1(W[i-2]) + W[i-7] (W[i-15] and W[i-16] are zero).
        w[7] = add(ssig1(w[5]), w[0]);
        lanes_round!(s, 23, add(w[7], splat(K[23])));
        w[8] = add(ssig1(w[6]), w[1]);
        lanes_round!(s, 24, add(w[8], splat(K[24])));
        w[9] = add(ssig1(w[7]), w[2]);
        lanes_round!(s, 25, add(w[9], splat(K[25])));
        w[10] = add(ssig1(w[8]), w[3]);
        lanes_round!(s, 26, add(w[10], splat(K[26])));
        w[11] = add(ssig1(w[9]), w[4]);
        lanes_round!(s, 27, add(w[11], splat(K[27])));
        w[12] = add(ssig1(w[10]), w[5]);
        lanes_round!(s, 28, add(w[12], splat(K[28])));
        w[13] = add(ssig1(w[11]), w[6]);
        lanes_round!(s, 29, add(w[13], splat(K[29])));
        // W30 = σ1(W28) + W23 + σ0(W15); W31 adds σ0(W16) + W15; W32 adds σ0(W17) + W16.
        w[14] = add(ssig1(w[12]), add(w[7], splat(small_sigma0(LEN_80))));
        lanes_round!(s, 30, add(w[14], splat(K[30])));
        w[15] = add(
            ssig1(w[13]),
            add(w[8], splat(small_sigma0(pre.w16).wrapping_add(LEN_80))),
        );
        lanes_round!(s, 31, add(w[15], splat(K[31])));
        w[0] = add(
            ssig1(w[14]),
            add(w[9], splat(small_sigma0(pre.w17).wrapping_add(pre.w16))),
        );
        lanes_round!(s, 32, add(w[0], splat(K[32])));
        w[1] = add(add(ssig1(w[15]), w[10]), add(ssig0(w[2]), splat(pre.w17)));
        lanes_round!(s, 33, add(w[1], splat(K[33])));
        lanes_steps!(lanes_round, s, w;
            34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
            49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63);
        // After round 63, `a` is back in slot 0: the digest is the midstate plus the state.
        for (k, word) in s.iter().enumerate() {
            w[k] = add(*word, splat(pre.midstate[k]));
        }

        // ---- Second hash: the 32-byte digest, padding, length 256. ----
        // Round 0 from the IV (see `H2_A1`); round 1 has `a` in slot (64 - 1) % 8 = 7.
        s[7] = add(splat(H2_A1), w[0]);
        s[0] = splat(IV[0]);
        s[1] = splat(IV[1]);
        s[2] = splat(IV[2]);
        s[3] = add(splat(H2_E1), w[0]);
        s[4] = splat(IV[4]);
        s[5] = splat(IV[5]);
        s[6] = splat(IV[6]);
        lanes_round!(s, 1, add(w[1], splat(K[1])));
        lanes_round!(s, 2, add(w[2], splat(K[2])));
        lanes_round!(s, 3, add(w[3], splat(K[3])));
        lanes_round!(s, 4, add(w[4], splat(K[4])));
        lanes_round!(s, 5, add(w[5], splat(K[5])));
        lanes_round!(s, 6, add(w[6], splat(K[6])));
        lanes_round!(s, 7, add(w[7], splat(K[7])));
        // W8 is the padding bit, W9..W14 are zero, W15 is the length.
        lanes_round!(s, 8, splat(K[8].wrapping_add(PAD_32)));
        lanes_round!(s, 9, splat(K[9]));
        lanes_round!(s, 10, splat(K[10]));
        lanes_round!(s, 11, splat(K[11]));
        lanes_round!(s, 12, splat(K[12]));
        lanes_round!(s, 13, splat(K[13]));
        lanes_round!(s, 14, splat(K[14]));
        lanes_round!(s, 15, splat(K[15].wrapping_add(LEN_32)));
        // W16..W31 written out, dropping the zero words W9..W14.
        w[0] = add(ssig0(w[1]), w[0]);
        lanes_round!(s, 16, add(w[0], splat(K[16])));
        w[1] = add(add(ssig0(w[2]), w[1]), splat(small_sigma1(LEN_32)));
        lanes_round!(s, 17, add(w[1], splat(K[17])));
        w[2] = add(add(ssig1(w[0]), ssig0(w[3])), w[2]);
        lanes_round!(s, 18, add(w[2], splat(K[18])));
        w[3] = add(add(ssig1(w[1]), ssig0(w[4])), w[3]);
        lanes_round!(s, 19, add(w[3], splat(K[19])));
        w[4] = add(add(ssig1(w[2]), ssig0(w[5])), w[4]);
        lanes_round!(s, 20, add(w[4], splat(K[20])));
        w[5] = add(add(ssig1(w[3]), ssig0(w[6])), w[5]);
        lanes_round!(s, 21, add(w[5], splat(K[21])));
        // W22 = σ1(W20) + W15 + σ0(W7) + W6.
        w[6] = add(add(ssig1(w[4]), ssig0(w[7])), add(w[6], splat(LEN_32)));
        lanes_round!(s, 22, add(w[6], splat(K[22])));
        // W23 = σ1(W21) + W16 + σ0(W8) + W7.
        w[7] = add(add(ssig1(w[5]), w[0]), add(w[7], splat(small_sigma0(PAD_32))));
        lanes_round!(s, 23, add(w[7], splat(K[23])));
        // W24 = σ1(W22) + W17 + W8.
        w[8] = add(add(ssig1(w[6]), w[1]), splat(PAD_32));
        lanes_round!(s, 24, add(w[8], splat(K[24])));
        // W25..W29 = σ1(W[i-2]) + W[i-7].
        w[9] = add(ssig1(w[7]), w[2]);
        lanes_round!(s, 25, add(w[9], splat(K[25])));
        w[10] = add(ssig1(w[8]), w[3]);
        lanes_round!(s, 26, add(w[10], splat(K[26])));
        w[11] = add(ssig1(w[9]), w[4]);
        lanes_round!(s, 27, add(w[11], splat(K[27])));
        w[12] = add(ssig1(w[10]), w[5]);
        lanes_round!(s, 28, add(w[12], splat(K[28])));
        w[13] = add(ssig1(w[11]), w[6]);
        lanes_round!(s, 29, add(w[13], splat(K[29])));
        // W30 = σ1(W28) + W23 + σ0(W15); W31 = σ1(W29) + W24 + σ0(W16) + W15.
        w[14] = add(add(ssig1(w[12]), w[7]), splat(small_sigma0(LEN_32)));
        lanes_round!(s, 30, add(w[14], splat(K[30])));
        w[15] = add(add(ssig1(w[13]), w[8]), add(ssig0(w[0]), splat(LEN_32)));
        lanes_round!(s, 31, add(w[15], splat(K[31])));
        lanes_steps!(lanes_round, s, w;
            32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
            45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56);
        // Rounds 57..=60 need only `e`.
        lanes_steps!(lanes_round_e, s, w; 57, 58, 59);
        lanes_schedule!(w, 60);
        // IV[7] joins the round constant: the round's `e` plus IV[7] is the final word 7.
        lanes_round_e!(s, 60, add(w[12], splat(K[60].wrapping_add(IV[7]))));
        // `d` of round 60 was slot (67 - 60) % 8 = 7.
        s[7]
    }};
}

pub(super) use {lanes_round, lanes_round_e, lanes_schedule, lanes_steps, sha256d_lanes};
