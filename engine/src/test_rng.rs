//! splitmix64 (Steele, Lea, Flood 2014) for the engine's randomised tests: tiny and
//! deterministic, so a failure replays from its printed seed without a dependency.

/// The generator; the field is the state (seed it directly).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly uniform in `0..n` (the modulo bias does not matter for tests).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A random 80-byte header.
    pub(crate) fn header(&mut self) -> [u8; 80] {
        let mut h = [0u8; 80];
        for chunk in h.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        h
    }
}
