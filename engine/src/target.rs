//! 256-bit share and block targets, nBits decoding and difficulty conversions.
//!
//! A hash is read as a little-endian 256-bit number (the byte order Bitcoin uses when it compares
//! a header hash with a target); it meets a target when it is less than or equal to it. The two
//! algorithms share the nBits format but not the pool difficulty convention: SHA-256d difficulty 1
//! is `0x00000000FFFF0000…`, while Scrypt pools scale difficulty by 65536, so Scrypt difficulty 1
//! is `0x0000FFFF0000…`.

use crate::algo::Algorithm;
use crate::error::TargetError;

/// A 256-bit target as four little-endian 64-bit limbs (`limbs[3]` is the most significant).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Target {
    limbs: [u64; 4],
}

/// Share difficulty as pools send it (`mining.set_difficulty`); always finite and positive.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Difficulty(f64);

/// `0xFFFF` shifted so that it is the top 16 bits below 32 zero bits: SHA-256d difficulty 1.
const SHA256D_DIFF1_SHIFT: u32 = 208;
/// Scrypt pools multiply by 65536 = 2^16, so the same mantissa sits 16 bits higher.
const SCRYPT_DIFF1_SHIFT: u32 = 224;

impl Difficulty {
    /// Accepts any finite positive value, including fractions below 1 (test pools use them).
    pub fn new(value: f64) -> Result<Self, TargetError> {
        if value.is_finite() && value > 0.0 {
            Ok(Self(value))
        } else {
            Err(TargetError::InvalidDifficulty(value))
        }
    }

    /// The value as sent by the pool.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl Target {
    /// The largest possible target (every hash meets it).
    pub const MAX: Target = Target {
        limbs: [u64::MAX; 4],
    };

    /// Builds a target from little-endian 64-bit limbs.
    pub const fn from_limbs(limbs: [u64; 4]) -> Self {
        Self { limbs }
    }

    /// The little-endian 64-bit limbs.
    pub const fn limbs(&self) -> [u64; 4] {
        self.limbs
    }

    /// Reads 32 bytes as a little-endian number (the order hashes come out of SHA-256).
    pub fn from_le_bytes(bytes: &[u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(b);
        }
        Self { limbs }
    }

    /// The target as 32 little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.limbs.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Parses the big-endian hex form block explorers print (64 hex digits, leading zeros first).
    pub fn from_be_hex(hex: &str) -> Result<Self, TargetError> {
        let bytes = crate::hex::decode_array::<32>(hex).map_err(|_| TargetError::BadHex)?;
        let mut le = bytes;
        le.reverse();
        Ok(Self::from_le_bytes(&le))
    }

    /// Decodes a compact nBits value. A set sign bit (0x00800000) or a value that does not fit in
    /// 256 bits is an error, as is a zero target, which no hash could meet.
    pub fn from_nbits(nbits: u32) -> Result<Self, TargetError> {
        let exponent = nbits >> 24;
        let mantissa = nbits & 0x007f_ffff;
        if nbits & 0x0080_0000 != 0 {
            return Err(TargetError::NegativeNbits(nbits));
        }
        if mantissa == 0 {
            return Err(TargetError::ZeroTarget);
        }
        let value = if exponent <= 3 {
            Self::from_u64(u64::from(mantissa >> (8 * (3 - exponent))))
        } else {
            let shift = 8 * (exponent - 3);
            // The mantissa has at most 23 significant bits.
            let bits = 32 - mantissa.leading_zeros();
            if shift + bits > 256 {
                return Err(TargetError::NbitsOverflow(nbits));
            }
            Self::from_u64(u64::from(mantissa)).shl(shift)
        };
        if value.is_zero() {
            return Err(TargetError::ZeroTarget);
        }
        Ok(value)
    }

    /// The share target for a pool difficulty: `diff1 / difficulty`, saturating at [`Target::MAX`]
    /// for very small difficulties and never reaching zero for huge ones.
    pub fn from_difficulty(algorithm: Algorithm, difficulty: Difficulty) -> Self {
        let shift = diff1_shift(algorithm);
        // target = (0xFFFF / d) * 2^shift; split the quotient into a 53-bit integer and a power
        // of two so that the shift stays exact.
        let q = 65535.0 / difficulty.0;
        if !q.is_finite() {
            return Self::MAX;
        }
        let (mantissa, exp) = frexp_u64(q);
        let total = i64::from(shift) + i64::from(exp);
        let result = if total >= 0 {
            let bits = 64 - u64::leading_zeros(mantissa) as i64;
            if total + bits > 256 {
                return Self::MAX;
            }
            Self::from_u64(mantissa).shl(total as u32)
        } else if total > -64 {
            Self::from_u64(mantissa >> (-total) as u32)
        } else {
            Self::from_u64(0)
        };
        if result.is_zero() {
            Self::from_u64(1)
        } else {
            result
        }
    }

    /// The pool difficulty this target corresponds to (inverse of [`Target::from_difficulty`]).
    pub fn to_difficulty(&self, algorithm: Algorithm) -> f64 {
        let diff1 = 65535.0 * 2f64.powi(diff1_shift(algorithm) as i32);
        let t = self.to_f64();
        if t == 0.0 {
            f64::INFINITY
        } else {
            diff1 / t
        }
    }

    /// Difficulty of a hash (the "share difficulty" pools report), given as the 32 bytes SHA-256d
    /// or Scrypt produced.
    pub fn hash_difficulty(algorithm: Algorithm, hash: &[u8; 32]) -> f64 {
        Self::from_le_bytes(hash).to_difficulty(algorithm)
    }

    /// Whether a hash (32 bytes as produced, read little-endian) is at or below this target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        let h = Self::from_le_bytes(hash);
        for i in (0..4).rev() {
            if h.limbs[i] != self.limbs[i] {
                return h.limbs[i] < self.limbs[i];
            }
        }
        true
    }

    /// The most significant 32 bits: kernels filter on this word before a full comparison.
    pub fn top_word(&self) -> u32 {
        (self.limbs[3] >> 32) as u32
    }

    /// The target as a float, for rates and difficulty display.
    pub fn to_f64(&self) -> f64 {
        self.limbs
            .iter()
            .enumerate()
            .map(|(i, &l)| l as f64 * 2f64.powi(64 * i as i32))
            .sum()
    }

    fn from_u64(v: u64) -> Self {
        Self {
            limbs: [v, 0, 0, 0],
        }
    }

    fn is_zero(&self) -> bool {
        self.limbs == [0; 4]
    }

    fn shl(&self, shift: u32) -> Self {
        let mut out = [0u64; 4];
        let limb_shift = (shift / 64) as usize;
        let bit_shift = shift % 64;
        for i in (0..4).rev() {
            if i < limb_shift {
                continue;
            }
            let src = i - limb_shift;
            let mut v = self.limbs[src] << bit_shift;
            if bit_shift > 0 && src > 0 {
                v |= self.limbs[src - 1] >> (64 - bit_shift);
            }
            out[i] = v;
        }
        Self { limbs: out }
    }
}

fn diff1_shift(algorithm: Algorithm) -> u32 {
    match algorithm {
        Algorithm::Sha256d => SHA256D_DIFF1_SHIFT,
        Algorithm::Scrypt => SCRYPT_DIFF1_SHIFT,
    }
}

/// Splits a positive finite float into `mantissa * 2^exp` with a 53-bit integer mantissa.
fn frexp_u64(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if raw_exp == 0 {
        // Subnormal: no implicit leading one.
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), raw_exp - 1075)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({self})")
    }
}

impl std::fmt::Display for Target {
    /// Big-endian hex, as block explorers print targets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for limb in self.limbs.iter().rev() {
            write!(f, "{limb:016x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_nbits_decodes_to_difficulty_one_target() {
        let t = Target::from_nbits(0x1d00ffff).unwrap();
        assert_eq!(
            t.to_string(),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(t.to_difficulty(Algorithm::Sha256d), 1.0);
    }

    #[test]
    fn nbits_of_block_125552_decodes() {
        // nBits 0x1a44b9f2 from block 125552 (see the Bitcoin wiki's "Block hashing algorithm").
        let t = Target::from_nbits(0x1a44b9f2).unwrap();
        assert_eq!(
            t.to_string(),
            "00000000000044b9f20000000000000000000000000000000000000000000000"
        );
    }

    #[test]
    fn nbits_small_exponent_shifts_right() {
        assert_eq!(
            Target::from_nbits(0x0300_1234).unwrap().limbs(),
            [0x1234, 0, 0, 0]
        );
        assert_eq!(
            Target::from_nbits(0x0200_1234).unwrap().limbs(),
            [0x12, 0, 0, 0]
        );
        assert_eq!(
            Target::from_nbits(0x0112_3456),
            Ok(Target::from_limbs([0x12, 0, 0, 0]))
        );
    }

    #[test]
    fn nbits_with_sign_bit_is_rejected() {
        assert_eq!(
            Target::from_nbits(0x1d80ffff),
            Err(TargetError::NegativeNbits(0x1d80ffff))
        );
        assert_eq!(
            Target::from_nbits(0x04923456),
            Err(TargetError::NegativeNbits(0x04923456))
        );
    }

    #[test]
    fn nbits_overflow_and_zero_are_rejected() {
        assert_eq!(
            Target::from_nbits(0x2300ffff),
            Err(TargetError::NbitsOverflow(0x2300ffff))
        );
        assert_eq!(
            Target::from_nbits(0x21010000),
            Err(TargetError::NbitsOverflow(0x21010000))
        );
        assert!(Target::from_nbits(0x2000ffff).is_ok());
        assert_eq!(Target::from_nbits(0x1d000000), Err(TargetError::ZeroTarget));
        assert_eq!(Target::from_nbits(0x01003456), Err(TargetError::ZeroTarget));
    }

    #[test]
    fn difficulty_one_matches_diff1_for_both_algorithms() {
        let d1 = Difficulty::new(1.0).unwrap();
        assert_eq!(
            Target::from_difficulty(Algorithm::Sha256d, d1).to_string(),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            Target::from_difficulty(Algorithm::Scrypt, d1).to_string(),
            "0000ffff00000000000000000000000000000000000000000000000000000000"
        );
    }

    #[test]
    fn fractional_difficulty_gives_larger_target() {
        let t = Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(1.0 / 256.0).unwrap());
        assert_eq!(
            t.to_string(),
            "000000ffff000000000000000000000000000000000000000000000000000000"
        );
        let tiny = Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(1e-80).unwrap());
        assert_eq!(tiny, Target::MAX);
        let sub = Target::from_difficulty(
            Algorithm::Scrypt,
            Difficulty::new(f64::MIN_POSITIVE).unwrap(),
        );
        assert_eq!(sub, Target::MAX);
    }

    #[test]
    fn huge_difficulty_never_gives_zero_target() {
        let t = Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(1e300).unwrap());
        assert_eq!(t.limbs(), [1, 0, 0, 0]);
        let t = Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(f64::MAX).unwrap());
        assert_eq!(t.limbs(), [1, 0, 0, 0]);
    }

    #[test]
    fn difficulty_round_trips() {
        for d in [0.001, 0.5, 1.0, 3.75, 1024.0, 65536.0, 1.5e6, 9.07e13] {
            for algo in [Algorithm::Sha256d, Algorithm::Scrypt] {
                let t = Target::from_difficulty(algo, Difficulty::new(d).unwrap());
                let back = t.to_difficulty(algo);
                assert!((back - d).abs() / d < 1e-12, "{algo:?} {d} -> {back}");
            }
        }
    }

    #[test]
    fn invalid_difficulties_are_rejected() {
        for d in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Difficulty::new(d).is_err(), "{d}");
        }
    }

    #[test]
    fn comparison_uses_little_endian_hash_order() {
        let t = Target::from_nbits(0x1d00ffff).unwrap();
        let mut hash = [0u8; 32];
        hash[27] = 0xff;
        hash[26] = 0xff;
        assert!(t.is_met_by(&hash), "equal to target");
        hash[0] = 1;
        assert!(!t.is_met_by(&hash), "one above target");
        let mut low = [0xffu8; 32];
        low[28..].copy_from_slice(&[0, 0, 0, 0]);
        low[27] = 0xfe;
        assert!(t.is_met_by(&low));
        assert_eq!(t.top_word(), 0);
        assert_eq!(Target::MAX.top_word(), u32::MAX);
    }

    #[test]
    fn hex_round_trip() {
        let s = "00000000000044b9f20000000000000000000000000000000000000000000000";
        assert_eq!(Target::from_be_hex(s).unwrap().to_string(), s);
        assert!(Target::from_be_hex("zz").is_err());
    }
}
