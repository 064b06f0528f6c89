//! RAPL energy counters under `/sys/class/powercap/intel-rapl:*/` (also used by AMD CPUs on
//! recent kernels). The kernel exposes cumulative microjoules, not watts, so [`RaplMeter`] turns
//! two readings into an average power, handling the counter's wrap-around. `energy_uj` is
//! root-only on kernels since 5.10 (to close the PLATYPUS side channel), so an unreadable counter
//! is normal for an unprivileged agent and gives `None`, never an error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{read_parse, read_trimmed, SysRoot};

/// Where powercap zones are listed, relative to the root.
pub const POWERCAP_CLASS: &str = "/sys/class/powercap";

/// One top-level RAPL zone (`intel-rapl:0`, usually named `package-0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaplZone {
    /// The folder name (`intel-rapl:0`).
    pub zone: String,
    /// The folder's path.
    pub path: PathBuf,
    /// The zone's `name` (`package-0`, `psys`…).
    pub name: Option<String>,
    /// The value after which `energy_uj` wraps to zero; `None` when unreadable.
    pub max_energy_range_uj: Option<u64>,
}

impl RaplZone {
    /// Whether the zone measures a CPU package (the CPU device's power).
    pub fn is_package(&self) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| n.starts_with("package"))
    }

    /// The cumulative energy counter, or `None` when missing, malformed or not permitted.
    pub fn read_energy_uj(&self) -> Option<u64> {
        read_parse(&self.path.join("energy_uj"))
    }
}

/// Lists top-level `intel-rapl:N` zones, sorted by N. Subzones (`intel-rapl:0:0`, core and
/// uncore inside a package) and the `intel-rapl-mmio` duplicate of the package are skipped so
/// that summing zones never counts the same energy twice.
pub fn zones(root: &SysRoot) -> Vec<RaplZone> {
    let Ok(entries) = std::fs::read_dir(root.path(POWERCAP_CLASS)) else {
        return Vec::new();
    };
    let mut zones: Vec<(u64, RaplZone)> = entries
        .flatten()
        .filter_map(|e| {
            let zone = e.file_name().into_string().ok()?;
            let n: u64 = zone.strip_prefix("intel-rapl:")?.parse().ok()?;
            let path = e.path();
            Some((
                n,
                RaplZone {
                    name: read_trimmed(&path.join("name")),
                    max_energy_range_uj: read_parse(&path.join("max_energy_range_uj")),
                    zone,
                    path,
                },
            ))
        })
        .collect();
    zones.sort_by_key(|(n, _)| *n);
    zones.into_iter().map(|(_, z)| z).collect()
}

/// Average watts between two counter readings `elapsed` apart. A reading lower than the one
/// before means the counter wrapped past `max_range_uj`; without that range the wrap cannot be
/// undone and the result is `None`, as it is for a zero interval.
pub fn watts_between(
    before_uj: u64,
    after_uj: u64,
    max_range_uj: Option<u64>,
    elapsed: Duration,
) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let delta = if after_uj >= before_uj {
        after_uj - before_uj
    } else {
        let max = max_range_uj?;
        // A before above the range is a bogus reading; refuse it rather than report nonsense.
        max.checked_sub(before_uj)?.checked_add(after_uj)?
    };
    Some(delta as f64 / 1_000_000.0 / secs)
}

/// Measures CPU package power from successive RAPL readings.
#[derive(Clone, Debug)]
pub struct RaplMeter {
    zones: Vec<RaplZone>,
    last: Option<(Vec<u64>, Instant)>,
}

impl RaplMeter {
    /// A meter over the package zones found under `root` (none found: every sample is `None`).
    pub fn new(root: &SysRoot) -> Self {
        Self::with_zones(
            zones(root)
                .into_iter()
                .filter(RaplZone::is_package)
                .collect(),
        )
    }

    /// A meter over the given zones.
    pub fn with_zones(zones: Vec<RaplZone>) -> Self {
        Self { zones, last: None }
    }

    /// Whether any package zone was found.
    #[allow(dead_code)] // Callers just take samples; None says the same.
    pub fn is_available(&self) -> bool {
        !self.zones.is_empty()
    }

    /// Takes a reading now; see [`Self::sample_at`].
    pub fn sample(&mut self) -> Option<f64> {
        self.sample_at(Instant::now())
    }

    /// Takes a reading at `now` and returns the total watts of all package zones since the
    /// previous reading. The first reading, or one where any zone is unreadable (no permission),
    /// gives `None`: a sum missing a socket would under-report.
    pub fn sample_at(&mut self, now: Instant) -> Option<f64> {
        if self.zones.is_empty() {
            return None;
        }
        let readings: Option<Vec<u64>> = self.zones.iter().map(RaplZone::read_energy_uj).collect();
        let Some(readings) = readings else {
            self.last = None;
            return None;
        };
        let previous = self.last.replace((readings.clone(), now));
        let (before, then) = previous?;
        let elapsed = now.checked_duration_since(then)?;
        self.zones
            .iter()
            .zip(before.iter().zip(&readings))
            .map(|(z, (b, a))| watts_between(*b, *a, z.max_energy_range_uj, elapsed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::*;

    fn package(t: &FakeTree, n: u32, energy: Option<u64>) {
        let d = format!("/sys/class/powercap/intel-rapl:{n}");
        t.file(&format!("{d}/name"), &format!("package-{n}\n"))
            .file(&format!("{d}/max_energy_range_uj"), "262143328850\n");
        if let Some(e) = energy {
            t.file(&format!("{d}/energy_uj"), &format!("{e}\n"));
        }
    }

    #[test]
    fn watts_from_two_readings_and_wrap_around() {
        let s = Duration::from_secs(2);
        assert_eq!(watts_between(1_000_000, 131_000_000, None, s), Some(65.0));
        assert_eq!(
            watts_between(900, 100, Some(1000), Duration::from_secs(1)),
            Some(0.0002)
        );
        assert_eq!(watts_between(900, 100, None, s), None);
        assert_eq!(watts_between(2000, 100, Some(1000), s), None);
        assert_eq!(watts_between(1, 2, None, Duration::ZERO), None);
    }

    #[test]
    fn zones_skip_subzones_and_mmio() {
        let t = FakeTree::new();
        package(&t, 1, Some(5));
        package(&t, 0, Some(5));
        t.file("/sys/class/powercap/intel-rapl:0:0/name", "core")
            .file("/sys/class/powercap/intel-rapl-mmio:0/name", "package-0")
            .dir("/sys/class/powercap/intel-rapl");
        let z = zones(&t.root());
        let names: Vec<_> = z.iter().map(|z| z.zone.as_str()).collect();
        assert_eq!(names, ["intel-rapl:0", "intel-rapl:1"]);
        assert_eq!(z[0].name.as_deref(), Some("package-0"));
        assert_eq!(z[0].max_energy_range_uj, Some(262143328850));
    }

    #[test]
    fn meter_sums_packages_and_handles_wrap() {
        let t = FakeTree::new();
        package(&t, 0, Some(262_143_000_000));
        package(&t, 1, Some(10_000_000));
        t.file("/sys/class/powercap/intel-rapl:2/name", "psys")
            .file("/sys/class/powercap/intel-rapl:2/energy_uj", "0");
        let mut m = RaplMeter::new(&t.root());
        assert!(m.is_available());
        let t0 = Instant::now();
        assert_eq!(m.sample_at(t0), None, "first reading only primes the meter");
        // Package 0 wraps: 328_850 µJ to the end of the range plus 49_671_150 after it = 50 J.
        t.file("/sys/class/powercap/intel-rapl:0/energy_uj", "49671150")
            .file("/sys/class/powercap/intel-rapl:1/energy_uj", "110000000")
            .file("/sys/class/powercap/intel-rapl:2/energy_uj", "999999999");
        let w = m.sample_at(t0 + Duration::from_secs(10)).expect("watts");
        assert!(
            (w - 15.0).abs() < 1e-9,
            "(50 J + 100 J) / 10 s, psys not counted: {w}"
        );
    }

    #[test]
    fn unreadable_counter_gives_none() {
        // Stands for a root-only energy_uj (tests may run as root, so no chmod).
        let t = FakeTree::new();
        package(&t, 0, None);
        let mut m = RaplMeter::new(&t.root());
        assert!(m.is_available());
        assert_eq!(m.sample(), None);
        assert_eq!(m.sample(), None);
        t.file("/sys/class/powercap/intel-rapl:0/energy_uj", "garbage");
        assert_eq!(m.sample(), None);
    }

    #[test]
    fn missing_tree_gives_an_unavailable_meter() {
        let t = FakeTree::new();
        let mut m = RaplMeter::new(&t.root());
        assert!(!m.is_available());
        assert_eq!(m.sample(), None);
    }

    #[test]
    fn reads_the_real_root_without_panicking() {
        let mut m = RaplMeter::new(&SysRoot::system());
        let _ = m.sample();
        let _ = m.sample();
    }
}
