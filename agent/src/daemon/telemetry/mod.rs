//! Telemetry sources read from Linux procfs and sysfs (issue 4: "Sources: … Linux hwmon and
//! powercap (RAPL) sysfs"): rig-level figures ([`host`]), hwmon sensors ([`hwmon`]) and RAPL
//! energy counters ([`powercap`]). NVIDIA GPUs are read through the driver's NVML library
//! instead ([`gpu`]), loaded at run time so that rigs without the driver run the same binary.
//!
//! Every path is resolved under a [`SysRoot`] rather than `/`, so tests point the readers at a
//! fake tree in a temporary folder. The readers are synchronous and std-only: each read is a few
//! small kernel-generated files, cheap enough to run on the telemetry interval from a blocking
//! task. Missing or malformed files never panic; they give `None` or leave a sensor out, because
//! a rig without a given sensor (a VM, a container, an old kernel) must still report the rest.

pub mod gpu;
pub mod host;
pub mod hwmon;
pub mod powercap;

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The folder that stands for `/` when reading procfs and sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysRoot {
    root: PathBuf,
}

impl SysRoot {
    /// Reads under `root` instead of `/` (tests use a temporary folder holding a fake tree).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The real filesystem root.
    pub fn system() -> Self {
        Self::new("/")
    }

    /// `rel` (written like an absolute path, `/proc/uptime`, or a relative one) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

impl Default for SysRoot {
    fn default() -> Self {
        Self::system()
    }
}

/// The file's content without surrounding whitespace, or `None` when it cannot be read (missing,
/// no permission, not UTF-8) or is empty.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let t = s.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_owned())
    }
}

/// The file's content parsed as one value, or `None` when unreadable or malformed.
pub(crate) fn read_parse<T: FromStr>(path: &Path) -> Option<T> {
    read_trimmed(path)?.parse().ok()
}

/// A fake `/` for tests: files and symlinks written into a temporary folder.
#[cfg(test)]
pub(crate) mod fake {
    use std::path::Path;

    use super::SysRoot;

    /// A temporary folder standing for `/`; removed when dropped.
    pub(crate) struct FakeTree {
        dir: tempfile::TempDir,
    }

    impl FakeTree {
        /// An empty tree.
        pub(crate) fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("BUG: test cannot create a temp dir"),
            }
        }

        /// Writes `contents` at `rel` (e.g. `/proc/uptime`), creating parent folders.
        pub(crate) fn file(&self, rel: &str, contents: &str) -> &Self {
            let p = self.dir.path().join(rel.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("BUG: test cannot create a folder");
            }
            std::fs::write(&p, contents).expect("BUG: test cannot write a file");
            self
        }

        /// Creates a folder at `rel` (for entries that exist but hold nothing readable).
        pub(crate) fn dir(&self, rel: &str) -> &Self {
            let p = self.dir.path().join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p).expect("BUG: test cannot create a folder");
            self
        }

        /// Creates a symlink at `rel` pointing at `target` (which need not exist, like sysfs
        /// `device` links whose relative targets point outside the fake tree).
        pub(crate) fn symlink(&self, rel: &str, target: &str) -> &Self {
            let p = self.dir.path().join(rel.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("BUG: test cannot create a folder");
            }
            std::os::unix::fs::symlink(Path::new(target), &p)
                .expect("BUG: test cannot create a symlink");
            self
        }

        /// The root to hand to the readers.
        pub(crate) fn root(&self) -> SysRoot {
            SysRoot::new(self.dir.path())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_joins_absolute_style_paths_under_the_root() {
        let r = SysRoot::new("/tmp/x");
        assert_eq!(r.path("/proc/uptime"), PathBuf::from("/tmp/x/proc/uptime"));
        assert_eq!(r.path("proc/uptime"), PathBuf::from("/tmp/x/proc/uptime"));
        assert_eq!(SysRoot::system().path("/sys"), PathBuf::from("/sys"));
    }

    #[test]
    fn read_helpers_give_none_for_missing_empty_and_malformed() {
        let t = fake::FakeTree::new();
        t.file("/a", "  42\n").file("/b", "\n").file("/c", "x1");
        let r = t.root();
        assert_eq!(read_parse::<u64>(&r.path("/a")), Some(42));
        assert_eq!(read_trimmed(&r.path("/b")), None);
        assert_eq!(read_parse::<u64>(&r.path("/c")), None);
        assert_eq!(read_parse::<u64>(&r.path("/missing")), None);
    }
}
