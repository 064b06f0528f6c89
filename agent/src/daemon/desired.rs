//! The last applied desired config, persisted in the state folder (`desired_config.json`) so a
//! restarted agent mines on it even when the server is unreachable (issue 4, "Desired config").
//!
//! A module of its own because it is the one file the mining runtime and the link both touch:
//! the link saves after a successful apply, the daemon loads at start. The file holds pool
//! passwords, so it is written with mode 0600 through [`write_atomic`] (temp file, fsync,
//! rename, fsync of the folder): a crash leaves the previous config or the new one, never half.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::limits::MAX_FRAME_BYTES;

use super::identity::write_atomic;

/// File name in the state folder.
pub const DESIRED_FILE: &str = "desired_config.json";

/// Largest file read back: a config arrives in one frame, so it is never larger than one.
const MAX_FILE_BYTES: u64 = MAX_FRAME_BYTES as u64;

/// Why the persisted config could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but does not hold a valid config (the agent then waits for the server
    /// instead of guessing).
    #[error("{}: corrupt desired config: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content: it holds passwords).
        reason: String,
    },
}

/// Saves `config` as the last applied one, atomically, mode 0600.
pub fn save(state_dir: &Path, config: &DesiredConfig) -> Result<(), DesiredError> {
    let path = state_dir.join(DESIRED_FILE);
    let json = serde_json::to_vec_pretty(config).expect("BUG: config values always serialise");
    write_atomic(&path, &json, 0o600).map_err(|source| DesiredError::Io { path, source })
}

/// Removes the saved config (a new enrollment: it was applied for the previous identity's rig,
/// and its version would make every version of the new rig look old). Nothing saved is fine.
pub fn forget(state_dir: &Path) -> Result<(), DesiredError> {
    let path = state_dir.join(DESIRED_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DesiredError::Io { path, source }),
    }
}

/// The file's bytes: `Ok(None)` when none was ever saved.
fn read(path: &Path) -> Result<Option<Vec<u8>>, DesiredError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DesiredError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    if let Err(source) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Err(DesiredError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DesiredError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(Some(bytes))
}

/// Loads the last applied config: `Ok(None)` when none was ever saved, an error when the file
/// is unreadable, too large, not JSON of the right shape, or fails [`DesiredConfig::validate`].
pub fn load(state_dir: &Path) -> Result<Option<DesiredConfig>, DesiredError> {
    let path = state_dir.join(DESIRED_FILE);
    let Some(bytes) = read(&path)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| DesiredError::Corrupt {
        path: path.clone(),
        reason,
    };
    let config: DesiredConfig =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    config.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(config))
}

/// The last applied config as a reference for ordering new ones (issue 11, item 8): its version
/// and, when the file still loads whole, its content hash. A file that no longer validates (or
/// that the runtime could not start at boot) still names the version it was applied with, and
/// a config below it must not replace it. `None` when nothing was saved or no version can be
/// read at all.
pub fn saved_reference(state_dir: &Path) -> Option<(u64, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    if let Ok(Some(config)) = load(state_dir) {
        return Some((config.version, Some(config.content_hash())));
    }
    let bytes = read(&state_dir.join(DESIRED_FILE)).ok()??;
    let versioned: Versioned = serde_json::from_slice(&bytes).ok()?;
    Some((versioned.version, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::config::PoolSpec;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> DesiredConfig {
        DesiredConfig {
            version: 7,
            algorithm: "sha256d".into(),
            pools: vec![PoolSpec {
                url: "stratum+tcp://127.0.0.1:3333".into(),
                user: "wallet.rig1".into(),
                password: "hunter2".into(),
            }],
            devices: vec![],
            telemetry_interval_secs: Some(10),
        }
    }

    #[test]
    fn round_trip_is_private_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none(), "nothing saved yet");
        save(dir.path(), &config()).unwrap();
        let mut newer = config();
        newer.version = 8;
        save(dir.path(), &newer).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(newer));
        let path = dir.path().join(DESIRED_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [DESIRED_FILE]);
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DESIRED_FILE);
        for text in [
            "",
            "{",
            "not json",
            r#"{"version":1,"algorithm":"","surprise":true}"#,
            // Parses, but an algorithm without a pool is not a config to mine on.
            r#"{"version":1,"algorithm":"sha256d"}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load(dir.path()).expect_err(text);
            assert!(matches!(err, DesiredError::Corrupt { .. }), "{text}: {err}");
            assert!(err.to_string().contains(DESIRED_FILE), "{err}");
        }
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn the_saved_version_is_read_even_from_a_config_that_no_longer_validates() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_reference(dir.path()), None);
        save(dir.path(), &config()).unwrap();
        assert_eq!(
            saved_reference(dir.path()),
            Some((7, Some(config().content_hash())))
        );
        let path = dir.path().join(DESIRED_FILE);
        std::fs::write(&path, r#"{"version":9,"algorithm":"sha256d"}"#).unwrap();
        assert_eq!(saved_reference(dir.path()), Some((9, None)));
        std::fs::write(&path, "{ not json").unwrap();
        assert_eq!(saved_reference(dir.path()), None);
    }

    #[test]
    fn errors_do_not_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = serde_json::to_string(&config()).unwrap();
        text.push_str("trailing");
        std::fs::write(dir.path().join(DESIRED_FILE), text).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
