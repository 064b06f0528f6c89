//! Hashing algorithms and their scan kernels.
//!
//! A kernel is a pure function: it scans a nonce range of an 80-byte header and returns the
//! nonces that may meet a target. Each algorithm has one portable kernel and SIMD kernels chosen
//! at run time from what the CPU supports; the `force-portable` feature or the environment variable
//! `RIGFLEET_ENGINE_PATH` (a path name such as `portable` or `avx2`) overrides the choice.

pub mod scrypt;
pub mod sha256;
pub mod sha256d;

use crate::error::EngineError;
use crate::target::Target;

/// Environment variable that forces a kernel path by name.
pub const PATH_ENV: &str = "RIGFLEET_ENGINE_PATH";

/// The proof-of-work functions the engine computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// Double SHA-256 of the 80-byte header (Bitcoin and its forks).
    Sha256d,
    /// Scrypt with N=1024, r=1, p=1 and the header as password and salt (Litecoin, Dogecoin).
    Scrypt,
}

impl Algorithm {
    /// Every algorithm the engine has.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256d, Algorithm::Scrypt];

    /// The open string id used by `proto`, the database and the command line.
    pub fn id(self) -> &'static str {
        match self {
            Algorithm::Sha256d => "sha256d",
            Algorithm::Scrypt => "scrypt",
        }
    }

    /// Hashes a full header with the portable code: the reference every kernel is checked against.
    pub fn hash(self, header: &[u8; 80]) -> [u8; 32] {
        match self {
            Algorithm::Sha256d => sha256d::hash_header(header),
            Algorithm::Scrypt => scrypt::hash_header(header),
        }
    }

    /// Every kernel this CPU can run, the portable one first.
    pub fn kernels(self) -> Vec<&'static dyn Kernel> {
        match self {
            Algorithm::Sha256d => sha256d::kernels(),
            Algorithm::Scrypt => scrypt::kernels(),
        }
    }

    /// The kernel to mine with: the fastest this CPU runs as measured here
    /// ([`Algorithm::measured_kernel`]), unless `force-portable` or [`PATH_ENV`] says otherwise. An unknown or unsupported forced path is an error rather than a
    /// silent fallback, so that a benchmark never reports the wrong path.
    pub fn best_kernel(self) -> Result<&'static dyn Kernel, EngineError> {
        if cfg!(feature = "force-portable") {
            return self.kernel("portable");
        }
        match std::env::var(PATH_ENV) {
            Ok(path) if !path.is_empty() => self.kernel(&path),
            _ => Ok(self.measured_kernel()),
        }
    }

    /// The fastest kernel on this machine as measured once per process (single thread, about
    /// 0.1 s per path: [`crate::calibrate`]); a CPU with one path skips the measurement. The
    /// agent keeps a longer calibration, with thread counts, in its state folder instead.
    pub fn measured_kernel(self) -> &'static dyn Kernel {
        static CHOSEN: [std::sync::OnceLock<&'static str>; 2] =
            [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
        let kernels = self.kernels();
        if kernels.len() == 1 {
            return kernels[0];
        }
        let slot = match self {
            Algorithm::Sha256d => &CHOSEN[0],
            Algorithm::Scrypt => &CHOSEN[1],
        };
        let path = slot.get_or_init(|| {
            let budget = crate::calibrate::Budget {
                per_path: std::time::Duration::from_millis(50),
                per_thread_count: std::time::Duration::ZERO,
            };
            crate::calibrate::calibrate_kernels(self, &kernels, &[1], budget)
                .map(|c| c.path)
                .and_then(|p| kernels.iter().map(|k| k.path()).find(|k| *k == p))
                .unwrap_or("portable")
        });
        kernels
            .iter()
            .find(|k| k.path() == *path)
            .copied()
            .unwrap_or(kernels[0])
    }

    /// The kernel with this path name, if the CPU supports it.
    pub fn kernel(self, path: &str) -> Result<&'static dyn Kernel, EngineError> {
        let kernels = self.kernels();
        kernels
            .iter()
            .find(|k| k.path() == path)
            .copied()
            .ok_or_else(|| EngineError::UnknownPath {
                algorithm: self.id(),
                path: path.to_string(),
                available: kernels
                    .iter()
                    .map(|k| k.path())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha256d" | "sha256" | "sha-256d" => Ok(Algorithm::Sha256d),
            "scrypt" => Ok(Algorithm::Scrypt),
            _ => Err(EngineError::UnknownAlgorithm(s.to_string())),
        }
    }
}

/// An inclusive nonce range, so that a range can end at `0xFFFFFFFF` without wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NonceRange {
    /// First nonce scanned.
    pub first: u32,
    /// Last nonce scanned (inclusive).
    pub last: u32,
}

impl NonceRange {
    /// The whole 32-bit nonce space.
    pub const FULL: NonceRange = NonceRange {
        first: 0,
        last: u32::MAX,
    };

    /// A range; `first > last` is a caller bug and is turned into an empty-looking single nonce
    /// range by no one: use [`NonceRange::try_new`] for untrusted bounds.
    pub fn new(first: u32, last: u32) -> Self {
        assert!(
            first <= last,
            "BUG: nonce range {first}..={last} is reversed"
        );
        Self { first, last }
    }

    /// A range from untrusted bounds.
    pub fn try_new(first: u32, last: u32) -> Option<Self> {
        (first <= last).then_some(Self { first, last })
    }

    /// How many nonces the range holds (up to 2^32).
    pub fn len(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    /// Never true: an inclusive range holds at least one nonce.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the nonce lies in the range.
    pub fn contains(&self, nonce: u32) -> bool {
        self.first <= nonce && nonce <= self.last
    }

    /// The first `count` nonces of the range and what remains after them.
    pub fn split_at(&self, count: u64) -> (NonceRange, Option<NonceRange>) {
        if count == 0 || count >= self.len() {
            return (*self, None);
        }
        let mid = self.first + (count - 1) as u32;
        (
            NonceRange::new(self.first, mid),
            Some(NonceRange::new(mid + 1, self.last)),
        )
    }
}

/// A scan function for one algorithm on one code path.
///
/// Contract (checked by the engine's tests for every path against the portable kernel):
/// - `scan` appends to `found`, in ascending order, the nonces of `range` that pass the kernel's
///   filter, and nothing else; it never misses a nonce whose hash meets `target`.
/// - SHA-256d kernels filter exactly on the most significant 32-bit word of the hash (read as a
///   little-endian number): `hash_top_word <= target.top_word()`. Scrypt kernels filter on the whole
///   target. Callers confirm every candidate with [`Algorithm::hash`] before reporting it.
pub trait Kernel: Send + Sync {
    /// The algorithm this kernel computes.
    fn algorithm(&self) -> Algorithm;
    /// The code path name (`portable`, `shani`, `avx2`, `avx512`, `sse2`…), shown by `bench`.
    fn path(&self) -> &'static str;
    /// How many nonces one `scan` call should cover so that a call lasts a few milliseconds on
    /// one core: devices check for new work between calls.
    fn chunk_nonces(&self) -> u32;
    /// Scans `range` of `header` (its nonce field is ignored) against `target`.
    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>);
}

impl std::fmt::Debug for dyn Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({}/{})", self.algorithm(), self.path())
    }
}

/// Writes `nonce` into bytes 76..80 of a header (little-endian, as Bitcoin serialises it).
#[inline]
pub fn set_nonce(header: &mut [u8; 80], nonce: u32) {
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_range_len_and_split_cover_the_ends() {
        assert_eq!(NonceRange::FULL.len(), 1 << 32);
        let r = NonceRange::new(u32::MAX - 9, u32::MAX);
        assert_eq!(r.len(), 10);
        let (a, b) = r.split_at(4);
        assert_eq!(a, NonceRange::new(u32::MAX - 9, u32::MAX - 6));
        assert_eq!(b, Some(NonceRange::new(u32::MAX - 5, u32::MAX)));
        assert_eq!(r.split_at(10), (r, None));
        assert_eq!(r.split_at(0), (r, None));
        assert!(NonceRange::try_new(5, 4).is_none());
    }

    #[test]
    fn algorithm_ids_parse_and_unknown_path_is_an_error() {
        assert_eq!("sha256d".parse::<Algorithm>().unwrap(), Algorithm::Sha256d);
        assert_eq!("Scrypt".parse::<Algorithm>().unwrap(), Algorithm::Scrypt);
        assert!("x11".parse::<Algorithm>().is_err());
        for algo in Algorithm::ALL {
            assert_eq!(algo.kernels()[0].path(), "portable");
            assert!(algo.kernel("no-such-path").is_err());
        }
    }
}
