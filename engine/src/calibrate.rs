//! Choosing the mining kernel and thread count by measuring them on this machine.
//!
//! The fastest SHA-256d path differs between CPUs (SHA-NI wins on a Zen 4 core, AVX-512 by almost
//! 2× on a Sapphire Rapids core), so a fixed preference order is wrong somewhere. Calibration runs
//! every path this CPU supports on the real kernel for a short, fixed time (a fraction of a
//! second, in two interleaved rounds so that a burst of other load hurts every path alike), keeps
//! the fastest, then measures that path on a few thread counts (SMT siblings may add nothing, or
//! lose) and keeps the count with the most hashes per second. The agent caches the result with
//! the CPU model and its own version, and runs it again when either changes.

use std::time::{Duration, Instant};

use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// How long each measurement runs: per path and round, and per thread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Time per path in each of the two rounds.
    pub per_path: Duration,
    /// Time per thread count.
    pub per_thread_count: Duration,
}

impl Default for Budget {
    /// 2 × 120 ms per path and 200 ms per thread count: about a second for SHA-256d on a CPU
    /// with four paths and a few thread counts to try.
    fn default() -> Self {
        Self {
            per_path: Duration::from_millis(120),
            per_thread_count: Duration::from_millis(200),
        }
    }
}

/// One path's single-thread rate.
#[derive(Clone, Debug, PartialEq)]
pub struct PathRate {
    /// Kernel path name.
    pub path: String,
    /// Hashes per second on one thread (the better of two rounds).
    pub hps: f64,
}

/// One thread count's rate on the chosen path.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadRate {
    /// Worker threads.
    pub threads: usize,
    /// Hashes per second, all threads together.
    pub hps: f64,
}

/// What calibration measured and chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The algorithm measured.
    pub algorithm: Algorithm,
    /// The fastest path on one thread.
    pub path: String,
    /// The thread count with the most hashes per second on that path.
    pub threads: usize,
    /// Every path's single-thread rate, in the order measured.
    pub paths: Vec<PathRate>,
    /// Every thread count tried on the chosen path.
    pub thread_rates: Vec<ThreadRate>,
}

/// Hashes per second of `kernel` on the calling thread for about `budget`, on the real scan
/// function (a header with an impossible target, so nothing is found and no time goes to
/// reporting).
pub fn measure_kernel(kernel: &dyn Kernel, budget: Duration) -> f64 {
    let header = bench_header();
    let target = Target::from_le_bytes(&[0u8; 32]);
    let chunk = kernel.chunk_nonces().max(1);
    let mut found = Vec::new();
    // One chunk to warm caches and let the core leave low-power states.
    kernel.scan(&header, &target, NonceRange::new(0, chunk - 1), &mut found);
    let started = Instant::now();
    let mut hashes = 0u64;
    let mut first = chunk;
    while started.elapsed() < budget || hashes == 0 {
        let last = first.saturating_add(chunk - 1);
        kernel.scan(&header, &target, NonceRange::new(first, last), &mut found);
        hashes += u64::from(last - first) + 1;
        first = if last == u32::MAX { 0 } else { last + 1 };
    }
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// Hashes per second of `kernel` on `threads` threads together for about `budget`.
pub fn measure_threads(kernel: &dyn Kernel, threads: usize, budget: Duration) -> f64 {
    let threads = threads.max(1);
    let total: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| measure_kernel(kernel, budget)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    total
}

/// The thread counts worth trying on a machine with `cores` logical CPUs: every count up to 8,
/// beyond that a quarter, half, three quarters and all of them.
pub fn thread_candidates(cores: usize) -> Vec<usize> {
    let cores = cores.max(1);
    if cores <= 8 {
        return (1..=cores).collect();
    }
    let mut v = vec![cores / 4, cores / 2, cores * 3 / 4, cores];
    v.dedup();
    v
}

/// Measures `kernels` (single thread, two interleaved rounds) and the fastest one on
/// `thread_counts`, and returns the choice. `kernels` must not be empty.
pub fn calibrate_kernels(
    algorithm: Algorithm,
    kernels: &[&dyn Kernel],
    thread_counts: &[usize],
    budget: Budget,
) -> Option<Calibration> {
    if kernels.is_empty() {
        return None;
    }
    let mut best_hps = vec![0f64; kernels.len()];
    for _round in 0..2 {
        for (i, kernel) in kernels.iter().enumerate() {
            best_hps[i] = best_hps[i].max(measure_kernel(*kernel, budget.per_path));
        }
    }
    let paths: Vec<PathRate> = kernels
        .iter()
        .zip(&best_hps)
        .map(|(k, &hps)| PathRate {
            path: k.path().to_string(),
            hps,
        })
        .collect();
    let (best, _) =
        best_hps.iter().enumerate().fold(
            (0, f64::MIN),
            |acc, (i, &h)| if h > acc.1 { (i, h) } else { acc },
        );
    let kernel = kernels[best];
    let mut thread_rates = Vec::new();
    for &threads in thread_counts {
        let hps = if threads == 1 {
            best_hps[best]
        } else {
            measure_threads(kernel, threads, budget.per_thread_count)
        };
        thread_rates.push(ThreadRate { threads, hps });
    }
    let threads = thread_rates
        .iter()
        .fold((1usize, f64::MIN), |acc, r| {
            if r.hps > acc.1 {
                (r.threads, r.hps)
            } else {
                acc
            }
        })
        .0;
    Some(Calibration {
        algorithm,
        path: kernel.path().to_string(),
        threads,
        paths,
        thread_rates,
    })
}

/// Calibrates every kernel this CPU runs for `algorithm` on up to `max_threads` threads.
pub fn calibrate(algorithm: Algorithm, max_threads: usize, budget: Budget) -> Calibration {
    let kernels = algorithm.kernels();
    calibrate_kernels(algorithm, &kernels, &thread_candidates(max_threads), budget)
        .expect("BUG: every algorithm has a portable kernel")
}

/// A fixed header for measurements (Bitcoin's genesis block); any header hashes at the same speed.
fn bench_header() -> [u8; 80] {
    crate::test_vectors::BITCOIN_GENESIS.header()
}

/// The CPU model as the kernel reports it (`model name` in /proc/cpuinfo), with the flags that
/// decide which paths exist, so a cache keyed by it is redone on another CPU.
pub fn cpu_model() -> String {
    let name = crate::device::cpu::cpu_model_name();
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha") {
            features.push("sha");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f");
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{name} [{}] x{cores}", features.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that does the work of `inner` `factor` times per scan: a path made slow on
    /// purpose, listed last (where the old "last is fastest" rule would have picked it).
    struct Slowed {
        inner: &'static dyn Kernel,
        factor: u32,
    }

    impl Kernel for Slowed {
        fn algorithm(&self) -> Algorithm {
            self.inner.algorithm()
        }
        fn path(&self) -> &'static str {
            "slowed"
        }
        fn chunk_nonces(&self) -> u32 {
            self.inner.chunk_nonces()
        }
        fn scan(
            &self,
            header: &[u8; 80],
            target: &Target,
            range: NonceRange,
            found: &mut Vec<u32>,
        ) {
            for _ in 0..self.factor {
                found.clear();
                self.inner.scan(header, target, range, found);
            }
        }
    }

    #[test]
    fn calibration_does_not_choose_a_slowed_path() {
        for algorithm in Algorithm::ALL {
            let best = *algorithm.kernels().last().expect("a kernel");
            let slowed = Box::leak(Box::new(Slowed {
                inner: best,
                factor: 8,
            }));
            let kernels: Vec<&dyn Kernel> = vec![best, slowed];
            let budget = Budget {
                per_path: Duration::from_millis(40),
                per_thread_count: Duration::from_millis(40),
            };
            let c = calibrate_kernels(algorithm, &kernels, &[1, 2], budget).unwrap();
            assert_eq!(c.path, best.path(), "{algorithm}: {:?}", c.paths);
            assert_eq!(c.paths.len(), 2);
            assert_eq!(c.paths[1].path, "slowed");
            assert!(c.thread_rates.iter().any(|r| r.threads == c.threads));
        }
    }

    #[test]
    fn thread_candidates_cover_small_and_large_machines() {
        assert_eq!(thread_candidates(0), vec![1]);
        assert_eq!(thread_candidates(4), vec![1, 2, 3, 4]);
        assert_eq!(thread_candidates(64), vec![16, 32, 48, 64]);
    }
}
