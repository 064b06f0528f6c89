//! Work: what a device hashes. A header template, the share target, a nonce range, the
//! version bits the pool lets us roll, and the job it came from. Devices never see Stratum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::algo::{Algorithm, NonceRange};
use crate::target::Target;

/// Identifies one header (one merkle root, ntime and version) handed to devices; unique in the
/// process, so a late nonce can always be matched with the exact header it was found on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkId(pub u64);

impl WorkId {
    /// A fresh id.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        WorkId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A unit of work for devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// Unique id of this header.
    pub id: WorkId,
    /// The pool job this header belongs to (opaque to the engine).
    pub job_id: Arc<str>,
    /// What to hash with.
    pub algorithm: Algorithm,
    /// The 80-byte header; its nonce field is ignored.
    pub header: [u8; 80],
    /// Nonces whose hash is at or below this target are shares.
    pub target: Target,
    /// The nonces to try.
    pub nonce_range: NonceRange,
    /// Version bits the pool allows us to change (BIP 310/320); zero when rolling is off.
    pub version_mask: u32,
    /// Opaque to the engine and kept by derived work (other ranges, rolled versions): the
    /// producer's way to recognise its header, e.g. the extranonce2 counter of a Stratum job.
    pub source_tag: u64,
}

impl Work {
    /// Work over the full nonce range with a fresh id.
    pub fn new(
        job_id: impl Into<Arc<str>>,
        algorithm: Algorithm,
        header: [u8; 80],
        target: Target,
    ) -> Self {
        Self {
            id: WorkId::next(),
            job_id: job_id.into(),
            algorithm,
            header,
            target,
            nonce_range: NonceRange::FULL,
            version_mask: 0,
            source_tag: 0,
        }
    }

    /// The same work over another nonce range with a fresh id.
    pub fn with_range(&self, range: NonceRange) -> Self {
        Self {
            id: WorkId::next(),
            nonce_range: range,
            ..self.clone()
        }
    }

    /// The same work with a different nVersion and a fresh id.
    pub fn with_version(&self, version: u32) -> Self {
        let mut header = self.header;
        header[0..4].copy_from_slice(&version.to_le_bytes());
        Self {
            id: WorkId::next(),
            header,
            ..self.clone()
        }
    }

    /// nVersion of the header.
    pub fn version(&self) -> u32 {
        read_u32(&self.header, 0)
    }

    /// nTime of the header.
    pub fn ntime(&self) -> u32 {
        read_u32(&self.header, 68)
    }

    /// nBits of the header.
    pub fn nbits(&self) -> u32 {
        read_u32(&self.header, 72)
    }

    /// The header with a nonce filled in.
    pub fn header_with_nonce(&self, nonce: u32) -> [u8; 80] {
        let mut h = self.header;
        crate::algo::set_nonce(&mut h, nonce);
        h
    }
}

fn read_u32(header: &[u8; 80], at: usize) -> u32 {
    u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
}

/// Spreads the low bits of `value` over the set bits of `mask`, lowest first (the `pdep`
/// operation): the k-th combination of rollable version bits.
pub fn deposit_bits(mut value: u64, mask: u32) -> u32 {
    let mut out = 0u32;
    let mut m = mask;
    while m != 0 && value != 0 {
        let lowest = m & m.wrapping_neg();
        if value & 1 == 1 {
            out |= lowest;
        }
        value >>= 1;
        m &= m - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::BITCOIN_881423;

    #[test]
    fn header_fields_read_little_endian() {
        let block = BITCOIN_881423;
        let w = Work::new("j", Algorithm::Sha256d, block.header(), Target::MAX);
        assert_eq!(w.version(), block.version);
        assert_eq!(w.ntime(), block.time);
        assert_eq!(w.nbits(), block.bits);
        let v = w.with_version(0x2000_0000);
        assert_eq!(v.version(), 0x2000_0000);
        assert_ne!(v.id, w.id);
        assert_eq!(&v.header[4..], &w.header[4..]);
    }

    #[test]
    fn deposit_bits_walks_every_combination_of_the_mask() {
        let mask = 0x1fff_e000u32;
        assert_eq!(deposit_bits(0, mask), 0);
        assert_eq!(deposit_bits(1, mask), 0x2000);
        assert_eq!(deposit_bits(2, mask), 0x4000);
        assert_eq!(deposit_bits(0xffff, mask), mask);
        assert_eq!(
            deposit_bits(0x1_0000, mask),
            0,
            "bits beyond the mask are dropped"
        );
        let mut seen = std::collections::HashSet::new();
        for k in 0..(1u64 << 4) {
            assert!(seen.insert(deposit_bits(k, 0b1010_0101)));
        }
    }
}
