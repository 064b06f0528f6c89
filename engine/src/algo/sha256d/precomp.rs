//! Per-header values and batch bookkeeping shared by the x86 SHA-256d kernels.
//!
//! The SIMD kernels all hash the same two blocks and differ only in how they spread nonces over
//! lanes, so what can be computed once per header (instead of once per nonce) lives here, in
//! plain scalar code that the tests can check against a plain compression, together with
//! [`LaneHits`], which walks a range in whole vectors and keeps the hits in order:
//!
//! - the first hash starts from the midstate, and rounds 0..=2 of its second block use only the
//!   tail words, so they are run once;
//! - round 3 adds the nonce word `W3` to `T1` and nothing else, so `a` and `e` after it are a
//!   per-header constant plus `W3` (the state is stored with `W3 = 0`);
//! - `W16` and `W17` do not involve `W3`, and `W18`/`W19` are a constant plus `σ0(W3)`/`W3`;
//! - the second hash starts from the standard IV and its first message word enters round 0
//!   only through `T1`, so round 0 reduces to two additions ([`H2_A1`], [`H2_E1`]).

use super::Prepared;
use crate::algo::sha256::{IV, K};
use crate::algo::NonceRange;

/// Padding word after the 80-byte header: the `1` bit that starts SHA-256 padding (FIPS 180-4
/// §5.1.1), first message word after the nonce.
pub(super) const PAD_80: u32 = 0x8000_0000;
/// Last word of the padded header block: the message length, 80 bytes = 640 bits.
pub(super) const LEN_80: u32 = 640;
/// Padding word after the 32-byte first digest, word 8 of the second hash's block.
pub(super) const PAD_32: u32 = 0x8000_0000;
/// Last word of the second hash's block: the message length, 32 bytes = 256 bits.
pub(super) const LEN_32: u32 = 256;

/// FIPS 180-4 Σ0.
#[inline(always)]
pub(super) const fn big_sigma0(x: u32) -> u32 {
    x.rotate_right(2) ^ x.rotate_right(13) ^ x.rotate_right(22)
}

/// FIPS 180-4 Σ1.
#[inline(always)]
pub(super) const fn big_sigma1(x: u32) -> u32 {
    x.rotate_right(6) ^ x.rotate_right(11) ^ x.rotate_right(25)
}

/// FIPS 180-4 σ0.
#[inline(always)]
pub(super) const fn small_sigma0(x: u32) -> u32 {
    x.rotate_right(7) ^ x.rotate_right(18) ^ (x >> 3)
}

/// FIPS 180-4 σ1.
#[inline(always)]
pub(super) const fn small_sigma1(x: u32) -> u32 {
    x.rotate_right(17) ^ x.rotate_right(19) ^ (x >> 10)
}

/// FIPS 180-4 Ch.
#[inline(always)]
const fn ch(e: u32, f: u32, g: u32) -> u32 {
    (e & f) ^ (!e & g)
}

/// FIPS 180-4 Maj.
#[inline(always)]
const fn maj(a: u32, b: u32, c: u32) -> u32 {
    (a & b) ^ (a & c) ^ (b & c)
}

/// `T1` of the second hash's round 0 without the message word: every input is an IV word.
const H2_T1_BASE: u32 = IV[7]
    .wrapping_add(big_sigma1(IV[4]))
    .wrapping_add(ch(IV[4], IV[5], IV[6]))
    .wrapping_add(K[0]);

/// `a` after round 0 of the second hash, minus its first message word: `T1 + T2` from the IV.
pub(super) const H2_A1: u32 = H2_T1_BASE
    .wrapping_add(big_sigma0(IV[0]))
    .wrapping_add(maj(IV[0], IV[1], IV[2]));

/// `e` after round 0 of the second hash, minus its first message word: `d + T1` from the IV.
pub(super) const H2_E1: u32 = IV[3].wrapping_add(H2_T1_BASE);

/// What a SIMD kernel needs per header, beyond compile-time constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Precomputed {
    /// SHA-256 state after header bytes 0..64; added to the first hash's final state.
    pub midstate: [u32; 8],
    /// State entering round 4 of the first hash's second block, computed with `W3 = 0`; `a`
    /// (index 0) and `e` (index 4) each still need `W3` added.
    pub state4: [u32; 8],
    /// The first hash's `W16 = σ0(W1) + W0`: no nonce in it.
    pub w16: u32,
    /// The first hash's `W17 = σ1(640) + σ0(W2) + W1`: no nonce in it.
    pub w17: u32,
    /// The first hash's `W18` minus `σ0(W3)`.
    pub w18_base: u32,
    /// The first hash's `W19` minus `W3`.
    pub w19_base: u32,
}

impl Precomputed {
    /// Derives the per-header values from a prepared header.
    pub(crate) fn new(prepared: &Prepared) -> Self {
        let [t0, t1, t2] = prepared.tail;
        let mut s = prepared.midstate;
        for (i, w) in [t0, t1, t2, 0].into_iter().enumerate() {
            s = scalar_round(s, K[i].wrapping_add(w));
        }
        // W9..W14 are zero and W15 is the length, so the general σ1(W[i-2]) + W[i-7] +
        // σ0(W[i-15]) + W[i-16] loses most terms for these words.
        let w16 = small_sigma0(t1).wrapping_add(t0);
        let w17 = small_sigma1(LEN_80)
            .wrapping_add(small_sigma0(t2))
            .wrapping_add(t1);
        Self {
            midstate: prepared.midstate,
            state4: s,
            w16,
            w17,
            w18_base: small_sigma1(w16).wrapping_add(t2),
            w19_base: small_sigma1(w17).wrapping_add(small_sigma0(PAD_80)),
        }
    }
}

/// Walks a nonce range in batches of `lanes` consecutive nonces (a SIMD kernel's width) and turns
/// each batch's hit mask into nonces. The last batch may run past the end of the range, even past
/// 0xFFFFFFFF (its nonces then wrap to small values); the lanes outside the range are dropped.
pub(super) struct LaneHits {
    first: u32,
    /// Nonces in the range (up to 2^32).
    count: u64,
    /// Offset of the next batch from `first`.
    next: u64,
    /// Offset of the current batch.
    current: u64,
    lanes: u64,
}

impl LaneHits {
    /// Batches of `lanes` (1..=64) nonces over `range`.
    pub(super) fn new(range: NonceRange, lanes: usize) -> Self {
        debug_assert!((1..=64).contains(&lanes));
        Self {
            first: range.first,
            count: range.len(),
            next: 0,
            current: 0,
            lanes: lanes as u64,
        }
    }

    /// The first nonce of the next batch, or `None` when the range is done.
    #[inline]
    pub(super) fn next_batch(&mut self) -> Option<u32> {
        if self.next >= self.count {
            return None;
        }
        self.current = self.next;
        self.next += self.lanes;
        // The offset is below the range's length, so `first + offset` is at most `last`: the cast
        // and the add are exact (only the kernels' lanes past the end wrap).
        Some(self.first.wrapping_add(self.current as u32))
    }

    /// Appends the nonces of the current batch whose bit is set in `mask` (bit `i` is the
    /// batch's first nonce plus `i`) and that lie in the range, in ascending order.
    #[inline]
    pub(super) fn report(&self, mask: u64, found: &mut Vec<u32>) {
        if mask == 0 {
            return;
        }
        let left = self.count - self.current;
        let mut mask = if left < 64 {
            mask & ((1u64 << left) - 1)
        } else {
            mask
        };
        let base = self.first.wrapping_add(self.current as u32);
        while mask != 0 {
            found.push(base.wrapping_add(mask.trailing_zeros()));
            mask &= mask - 1;
        }
    }
}

/// One scalar SHA-256 round on the state `s` with `kw` = `K[i] + W[i]`.
fn scalar_round(s: [u32; 8], kw: u32) -> [u32; 8] {
    let temp1 = s[7]
        .wrapping_add(big_sigma1(s[4]))
        .wrapping_add(ch(s[4], s[5], s[6]))
        .wrapping_add(kw);
    let temp2 = big_sigma0(s[0]).wrapping_add(maj(s[0], s[1], s[2]));
    [
        temp1.wrapping_add(temp2),
        s[0],
        s[1],
        s[2],
        s[3].wrapping_add(temp1),
        s[4],
        s[5],
        s[6],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The precomputed values must equal a straight compression of the same block.
    #[test]
    fn precomputed_state_and_words_match_a_plain_compression() {
        let mut header = [0u8; 80];
        for (i, b) in header.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(29).wrapping_add(3);
        }
        let prepared = Prepared::new(&header);
        let pre = Precomputed::new(&prepared);
        for w3 in [0u32, 1, 0x1234_5678, u32::MAX] {
            let mut w = [0u32; 64];
            w[..3].copy_from_slice(&prepared.tail);
            w[3] = w3;
            w[4] = PAD_80;
            w[15] = LEN_80;
            for i in 16..64 {
                w[i] = small_sigma1(w[i - 2])
                    .wrapping_add(w[i - 7])
                    .wrapping_add(small_sigma0(w[i - 15]))
                    .wrapping_add(w[i - 16]);
            }
            assert_eq!(w[16], pre.w16);
            assert_eq!(w[17], pre.w17);
            assert_eq!(w[18], pre.w18_base.wrapping_add(small_sigma0(w3)));
            assert_eq!(w[19], pre.w19_base.wrapping_add(w3));
            // Four rounds by hand from the midstate, with the nonce word in round 3.
            let mut s = prepared.midstate;
            for (i, &wi) in w.iter().enumerate().take(4) {
                s = scalar_round(s, K[i].wrapping_add(wi));
            }
            let mut expect = pre.state4;
            expect[0] = expect[0].wrapping_add(w3);
            expect[4] = expect[4].wrapping_add(w3);
            assert_eq!(s, expect);
        }
    }

    /// Round 0 of the second hash equals a compression round from the IV.
    #[test]
    fn second_hash_round_zero_constants() {
        let w0 = 0xdead_beef_u32;
        let temp1 = IV[7]
            .wrapping_add(big_sigma1(IV[4]))
            .wrapping_add(ch(IV[4], IV[5], IV[6]))
            .wrapping_add(K[0])
            .wrapping_add(w0);
        let temp2 = big_sigma0(IV[0]).wrapping_add(maj(IV[0], IV[1], IV[2]));
        assert_eq!(H2_A1.wrapping_add(w0), temp1.wrapping_add(temp2));
        assert_eq!(H2_E1.wrapping_add(w0), IV[3].wrapping_add(temp1));
    }

    #[test]
    fn lane_hits_drop_lanes_past_the_end_of_the_range() {
        // Ten nonces ending at 0xFFFFFFFF in batches of four: the last batch wraps.
        let mut hits = LaneHits::new(NonceRange::new(u32::MAX - 9, u32::MAX), 4);
        let mut found = Vec::new();
        let mut bases = Vec::new();
        while let Some(base) = hits.next_batch() {
            bases.push(base);
            hits.report(0b1111, &mut found);
        }
        assert_eq!(bases, vec![u32::MAX - 9, u32::MAX - 5, u32::MAX - 1]);
        let expect: Vec<u32> = (u32::MAX - 9..=u32::MAX).collect();
        assert_eq!(found, expect);
        // A single nonce, and a mask with only lanes outside the range.
        let mut hits = LaneHits::new(NonceRange::new(7, 7), 16);
        let mut found = Vec::new();
        assert_eq!(hits.next_batch(), Some(7));
        hits.report(0b1110, &mut found);
        assert!(found.is_empty());
        hits.report(0b1, &mut found);
        assert_eq!(found, vec![7]);
        assert_eq!(hits.next_batch(), None);
    }
}
