//! The CPU kernel path and thread count the agent mines with, measured on this machine and
//! cached in the state folder (issue 18).
//!
//! The cache (`calibration.json`) is keyed by the CPU model (with the instruction-set flags that
//! decide which paths exist) and the agent's version: another CPU (a disk moved to another
//! board, a cloud instance resized) or another binary (new kernels) measures again. A path named
//! in the local config (`[cpu] sha256d_path = "avx512"`) wins over the measurement. A damaged or
//! unreadable cache is measured again and rewritten, never trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rigfleet_engine::calibrate::{self, Budget, Calibration};
use rigfleet_engine::Algorithm;
use serde::{Deserialize, Serialize};

use crate::daemon::config::CpuOverrides;

/// File name in the state folder.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Where the choice came from (logged and shown by `bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[cpu]` in the local config.
    Config,
    /// `calibration.json`, measured earlier on this CPU by this version.
    Cached,
    /// Measured now (and written to the cache).
    Measured,
}

/// The path and thread count to mine with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Kernel path name.
    pub path: String,
    /// Worker threads that gave the most hashes.
    pub threads: usize,
    /// Where it came from.
    pub source: Source,
}

/// One algorithm's entry in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    path: String,
    threads: usize,
    /// Single-thread hashes per second by path, as measured.
    paths: BTreeMap<String, f64>,
    /// Hashes per second by thread count on the chosen path.
    threads_hps: BTreeMap<usize, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CacheFile {
    cpu_model: String,
    agent_version: String,
    algorithms: BTreeMap<String, Entry>,
}

/// The agent's version as the cache records it.
pub fn agent_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Calibration settings for the mining runtime; `Default` is off (the engine's own quick
/// in-process choice, all cores), which tests use so that they do not spend seconds measuring.
#[derive(Debug, Clone, Default)]
pub struct CpuTuning {
    /// State folder holding the cache; `None` turns calibration off.
    pub state_dir: Option<PathBuf>,
    /// Paths forced by the local config.
    pub overrides: CpuOverrides,
    /// How long measurements run.
    pub budget: Budget,
    /// Choices already made by this process.
    memo: Arc<Mutex<BTreeMap<Algorithm, Choice>>>,
}

impl PartialEq for CpuTuning {
    fn eq(&self, other: &Self) -> bool {
        self.state_dir == other.state_dir && self.overrides == other.overrides
    }
}

impl Eq for CpuTuning {}

impl CpuTuning {
    /// Calibration on, cached in `state_dir`.
    pub fn new(state_dir: PathBuf, overrides: CpuOverrides) -> Self {
        Self {
            state_dir: Some(state_dir),
            overrides,
            budget: Budget::default(),
            memo: Arc::default(),
        }
    }

    /// The path and thread count for `algorithm`, or `None` when calibration is off. The first
    /// call per algorithm may measure (about a second); later ones return the memo.
    pub fn choose(&self, algorithm: Algorithm, max_threads: usize) -> Option<Choice> {
        let dir = self.state_dir.as_ref()?;
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = memo.get(&algorithm) {
            return Some(c.clone());
        }
        let choice = choose_uncached(dir, &self.overrides, algorithm, max_threads, self.budget);
        memo.insert(algorithm, choice.clone());
        Some(choice)
    }
}

fn override_for(overrides: &CpuOverrides, algorithm: Algorithm) -> Option<&str> {
    match algorithm {
        Algorithm::Sha256d => overrides.sha256d_path.as_deref(),
        Algorithm::Scrypt => overrides.scrypt_path.as_deref(),
    }
}

fn choose_uncached(
    dir: &Path,
    overrides: &CpuOverrides,
    algorithm: Algorithm,
    max_threads: usize,
    budget: Budget,
) -> Choice {
    let model = calibrate::cpu_model();
    let version = agent_version();
    let cache = read_cache(dir).filter(|c| c.cpu_model == model && c.agent_version == version);
    if let Some(path) = override_for(overrides, algorithm) {
        // The config's path (checked when the config was loaded); the thread count from a cache
        // measured on that same path, or from measuring it alone.
        if let Some(e) = cache
            .as_ref()
            .and_then(|c| c.algorithms.get(algorithm.id()))
            .filter(|e| e.path == path)
        {
            return Choice {
                path: path.to_string(),
                threads: e.threads,
                source: Source::Config,
            };
        }
        let threads = match algorithm.kernel(path) {
            Ok(kernel) => calibrate::calibrate_kernels(
                algorithm,
                &[kernel],
                &calibrate::thread_candidates(max_threads),
                budget,
            )
            .map_or(max_threads, |c| c.threads),
            Err(_) => max_threads,
        };
        return Choice {
            path: path.to_string(),
            threads,
            source: Source::Config,
        };
    }
    if let Some(e) = cache
        .as_ref()
        .and_then(|c| c.algorithms.get(algorithm.id()))
    {
        // A cached path this binary no longer has is measured again.
        if algorithm.kernel(&e.path).is_ok() && e.threads >= 1 {
            return Choice {
                path: e.path.clone(),
                threads: e.threads.min(max_threads.max(1)),
                source: Source::Cached,
            };
        }
    }
    let c = calibrate::calibrate(algorithm, max_threads, budget);
    tracing::info!(
        algorithm = algorithm.id(),
        path = %c.path,
        threads = c.threads,
        rates = %describe(&c),
        "Measured the CPU kernels; mining with the fastest"
    );
    let mut file = cache.unwrap_or(CacheFile {
        cpu_model: model,
        agent_version: version,
        algorithms: BTreeMap::new(),
    });
    file.algorithms.insert(
        algorithm.id().to_string(),
        Entry {
            path: c.path.clone(),
            threads: c.threads,
            paths: c.paths.iter().map(|p| (p.path.clone(), p.hps)).collect(),
            threads_hps: c.thread_rates.iter().map(|r| (r.threads, r.hps)).collect(),
        },
    );
    if let Err(error) = write_cache(dir, &file) {
        tracing::warn!(%error, "Cannot write the CPU calibration cache; measuring again next start");
    }
    Choice {
        path: c.path,
        threads: c.threads,
        source: Source::Measured,
    }
}

/// `avx512 25.6 MH/s, shani 13.7 MH/s …` for logs.
pub fn describe(c: &Calibration) -> String {
    c.paths
        .iter()
        .map(|p| format!("{} {:.2} MH/s", p.path, p.hps / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_cache(dir: &Path) -> Option<CacheFile> {
    let text = std::fs::read_to_string(dir.join(CALIBRATION_FILE)).ok()?;
    match serde_json::from_str(&text) {
        Ok(c) => Some(c),
        Err(error) => {
            tracing::warn!(%error, "Ignoring a damaged CPU calibration cache");
            None
        }
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old cache or the new one.
fn write_cache(dir: &Path, file: &CacheFile) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{CALIBRATION_FILE}.tmp"));
    let text = serde_json::to_string_pretty(file).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(CALIBRATION_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quick(dir: &Path, overrides: CpuOverrides) -> CpuTuning {
        let mut t = CpuTuning::new(dir.to_path_buf(), overrides);
        t.budget = Budget {
            per_path: Duration::from_millis(20),
            per_thread_count: Duration::from_millis(20),
        };
        t
    }

    #[test]
    fn measures_once_then_uses_the_cache_until_the_key_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = quick(dir.path(), CpuOverrides::default())
            .choose(Algorithm::Sha256d, 2)
            .expect("calibration on");
        assert_eq!(first.source, Source::Measured);
        assert!(Algorithm::Sha256d.kernel(&first.path).is_ok());
        // A new process (new memo) reads the cache.
        let again = quick(dir.path(), CpuOverrides::default())
            .choose(Algorithm::Sha256d, 2)
            .expect("calibration on");
        assert_eq!(again.source, Source::Cached);
        assert_eq!(again.path, first.path);
        // Another binary version: measured again.
        let path = dir.path().join(CALIBRATION_FILE);
        let mut file: CacheFile =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("cache")).expect("json");
        file.agent_version = "0.0.0-other".into();
        std::fs::write(&path, serde_json::to_string(&file).expect("json")).expect("write");
        let remeasured = quick(dir.path(), CpuOverrides::default())
            .choose(Algorithm::Sha256d, 2)
            .expect("calibration on");
        assert_eq!(remeasured.source, Source::Measured);
        // A damaged cache is measured again, not trusted.
        std::fs::write(&path, b"{ not json").expect("write");
        let repaired = quick(dir.path(), CpuOverrides::default())
            .choose(Algorithm::Sha256d, 2)
            .expect("calibration on");
        assert_eq!(repaired.source, Source::Measured);
    }

    #[test]
    fn a_path_in_the_local_config_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let overrides = CpuOverrides {
            sha256d_path: Some("portable".into()),
            scrypt_path: None,
        };
        let c = quick(dir.path(), overrides)
            .choose(Algorithm::Sha256d, 1)
            .expect("calibration on");
        assert_eq!(c.path, "portable");
        assert_eq!(c.source, Source::Config);
        assert_eq!(c.threads, 1);
    }

    #[test]
    fn local_config_path_is_checked_against_this_cpu() {
        use crate::daemon::config;
        let ok = config::from_toml(Path::new("t.toml"), "[cpu]\nsha256d_path = \"portable\"\n")
            .expect("portable exists everywhere");
        assert_eq!(ok.cpu.sha256d_path.as_deref(), Some("portable"));
        let err = config::from_toml(Path::new("t.toml"), "[cpu]\nscrypt_path = \"warp9\"\n")
            .expect_err("unknown path");
        assert!(err.to_string().contains("cpu.scrypt_path"), "{err}");
    }

    #[test]
    fn off_by_default() {
        assert_eq!(CpuTuning::default().choose(Algorithm::Sha256d, 2), None);
    }
}
