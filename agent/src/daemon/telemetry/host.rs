//! Rig-level figures from procfs: uptime, load, memory, hostname, CPU model, and the CPU time
//! this process has used (issue 4 asks the agent to report its own CPU use apart from hashing).

use rigfleet_proto::telemetry::RigSample;

use super::{read_trimmed, SysRoot};

/// Clock ticks per second assumed for `/proc/self/stat` times. The real value is
/// `sysconf(_SC_CLK_TCK)`, which std does not expose; the kernel reports these fields in
/// `USER_HZ`, which is 100 on every mainstream Linux architecture (x86, arm, arm64, riscv), so
/// we assume it rather than pull in libc for one constant.
pub const ASSUMED_CLOCK_TICKS_PER_SEC: u64 = 100;

/// Rig-level figures; each is `None` when its source is missing or malformed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSample {
    /// Seconds since boot (`/proc/uptime`, first field, fraction dropped).
    pub uptime_secs: Option<u64>,
    /// 1-minute load average (`/proc/loadavg`, first field).
    pub load_1m: Option<f64>,
    /// Memory in use: `MemTotal − MemAvailable` from `/proc/meminfo`, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// `/proc/sys/kernel/hostname`.
    pub hostname: Option<String>,
    /// First `model name` in `/proc/cpuinfo` (x86; other architectures may lack it).
    pub cpu_model: Option<String>,
    /// User plus system CPU time of this process in seconds (`/proc/self/stat`), assuming
    /// [`ASSUMED_CLOCK_TICKS_PER_SEC`]. Two readings over an interval give the agent's CPU share.
    pub process_cpu_secs: Option<f64>,
}

impl HostSample {
    /// Reads every figure under `root`.
    pub fn read(root: &SysRoot) -> Self {
        let text = |rel: &str| std::fs::read_to_string(root.path(rel)).ok();
        let mem = text("/proc/meminfo").and_then(|s| parse_meminfo(&s));
        Self {
            uptime_secs: text("/proc/uptime").and_then(|s| parse_uptime(&s)),
            load_1m: text("/proc/loadavg").and_then(|s| parse_loadavg(&s)),
            memory_used_bytes: mem.map(|m| m.used_bytes()),
            memory_total_bytes: mem.map(|m| m.total_bytes),
            hostname: read_trimmed(&root.path("/proc/sys/kernel/hostname")),
            cpu_model: text("/proc/cpuinfo").and_then(|s| parse_cpu_model(&s)),
            process_cpu_secs: text("/proc/self/stat")
                .and_then(|s| parse_stat_cpu_ticks(&s))
                .map(|t| t as f64 / ASSUMED_CLOCK_TICKS_PER_SEC as f64),
        }
    }
}

/// Percent of one core used between two [`HostSample::process_cpu_secs`] readings taken
/// `wall_secs` apart (100 = one full core); `None` for a non-positive interval or a counter that
/// went backwards (a different process, or a bogus read).
// The agent's own CPU share is not reported by protocol v1 yet.
#[allow(dead_code)]
pub fn cpu_percent(before_secs: f64, after_secs: f64, wall_secs: f64) -> Option<f64> {
    let used = after_secs - before_secs;
    (wall_secs > 0.0 && used >= 0.0 && used.is_finite()).then(|| used / wall_secs * 100.0)
}

impl From<&HostSample> for RigSample {
    /// Missing figures become 0, the wire format having no "unknown" for them.
    fn from(h: &HostSample) -> Self {
        RigSample {
            uptime_secs: h.uptime_secs.unwrap_or(0),
            load_1m: h.load_1m.unwrap_or(0.0),
            memory_used_bytes: h.memory_used_bytes.unwrap_or(0),
            memory_total_bytes: h.memory_total_bytes.unwrap_or(0),
        }
    }
}

impl From<HostSample> for RigSample {
    fn from(h: HostSample) -> Self {
        RigSample::from(&h)
    }
}

/// Seconds since boot from `/proc/uptime` (`"12345.67 54321.00"`).
pub fn parse_uptime(s: &str) -> Option<u64> {
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    // `as` saturates; the check keeps NaN and negatives (never written by the kernel) out.
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// 1-minute load from `/proc/loadavg` (`"0.52 0.58 0.59 1/467 12345"`).
pub fn parse_loadavg(s: &str) -> Option<f64> {
    let load: f64 = s.split_whitespace().next()?.parse().ok()?;
    // The proto validates numbers as finite; refuse anything else here.
    (load.is_finite() && load >= 0.0).then_some(load)
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`, or on kernels before 3.14 (which lack it) `MemFree + Buffers + Cached`.
    pub available_bytes: u64,
}

impl MemInfo {
    /// `total − available`, never below zero.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }
}

/// Parses `/proc/meminfo` (`"MemTotal:  16318480 kB"` lines); `None` without `MemTotal`.
pub fn parse_meminfo(s: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut available = None;
    let mut free_ish: Option<u64> = None;
    for line in s.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(value) = parts.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        // Values are in kB (really KiB) when a unit is given; a few lines carry none.
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        match key.trim() {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" | "Buffers" | "Cached" => {
                free_ish = Some(free_ish.unwrap_or(0).saturating_add(bytes));
            }
            _ => {}
        }
    }
    let total_bytes = total?;
    Some(MemInfo {
        total_bytes,
        available_bytes: available.or(free_ish).unwrap_or(0),
    })
}

/// The first `model name` in `/proc/cpuinfo`.
pub fn parse_cpu_model(s: &str) -> Option<String> {
    s.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_owned())
    })
}

/// `utime + stime` in clock ticks from `/proc/self/stat`. The process name (field 2) sits in
/// parentheses and may itself hold spaces and `)`, so fields are counted from the *last* `)`.
pub fn parse_stat_cpu_ticks(s: &str) -> Option<u64> {
    let after_name = &s[s.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::*;

    const MEMINFO: &str = "MemTotal:       16318480 kB\nMemFree:         1234567 kB\n\
        MemAvailable:    8159240 kB\nBuffers:          100000 kB\nCached:          2000000 kB\n\
        HugePages_Total:       0\n";

    #[test]
    fn uptime_and_loadavg() {
        assert_eq!(parse_uptime("12345.67 54321.00\n"), Some(12345));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("abc 1"), None);
        assert_eq!(parse_uptime("-5 1"), None);
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg("nan 1 1"), None);
        assert_eq!(parse_loadavg("x"), None);
    }

    #[test]
    fn meminfo_uses_memavailable_and_falls_back_on_old_kernels() {
        let m = parse_meminfo(MEMINFO).expect("parses");
        assert_eq!(m.total_bytes, 16318480 * 1024);
        assert_eq!(m.used_bytes(), (16318480 - 8159240) * 1024);
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let m = parse_meminfo(old).expect("parses");
        assert_eq!(m.used_bytes(), 600 * 1024);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("garbage\nMemTotal: x kB"), None);
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let s = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD Ryzen 9 5950X 16-Core Processor\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            parse_cpu_model(s).as_deref(),
            Some("AMD Ryzen 9 5950X 16-Core Processor")
        );
        assert_eq!(parse_cpu_model("processor : 0\nmodel name :\n"), None);
    }

    #[test]
    fn self_stat_with_spaces_and_parens_in_the_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let s = "4242 (my (weird) agent) R 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 8 0 100 1000000 500\n";
        assert_eq!(parse_stat_cpu_ticks(s), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) R 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no parens at all"), None);
        assert_eq!(parse_stat_cpu_ticks(""), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(1.0, 1.5, 10.0), Some(5.0));
        assert_eq!(cpu_percent(1.0, 0.5, 10.0), None);
        assert_eq!(cpu_percent(1.0, 2.0, 0.0), None);
    }

    #[test]
    fn reads_a_fake_proc_and_converts_to_rig_sample() {
        let t = FakeTree::new();
        t.file("/proc/uptime", "3600.99 100.0\n")
            .file("/proc/loadavg", "1.25 1.00 0.75 2/300 999\n")
            .file("/proc/meminfo", MEMINFO)
            .file("/proc/sys/kernel/hostname", "rig-07\n")
            .file("/proc/cpuinfo", "model name\t: Intel(R) Core(TM) i7\n")
            .file(
                "/proc/self/stat",
                "1 (rigfleet-agent) S 0 1 1 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 1 1 1\n",
            );
        let h = HostSample::read(&t.root());
        assert_eq!(h.uptime_secs, Some(3600));
        assert_eq!(h.load_1m, Some(1.25));
        assert_eq!(h.memory_total_bytes, Some(16318480 * 1024));
        assert_eq!(h.hostname.as_deref(), Some("rig-07"));
        assert_eq!(h.cpu_model.as_deref(), Some("Intel(R) Core(TM) i7"));
        assert_eq!(h.process_cpu_secs, Some(2.0));
        let r = RigSample::from(&h);
        assert_eq!(r.uptime_secs, 3600);
        assert_eq!(r.load_1m, 1.25);
        assert_eq!(r.memory_used_bytes, (16318480 - 8159240) * 1024);
    }

    #[test]
    fn empty_and_malformed_trees_give_none_and_zero_defaults() {
        let t = FakeTree::new();
        assert_eq!(HostSample::read(&t.root()), HostSample::default());
        t.file("/proc/uptime", "garbage")
            .file("/proc/loadavg", "")
            .file("/proc/meminfo", "nothing useful")
            .file("/proc/self/stat", "(((");
        let h = HostSample::read(&t.root());
        assert_eq!(h, HostSample::default());
        assert_eq!(RigSample::from(h), RigSample::default());
    }

    #[test]
    fn reads_the_real_root_without_panicking() {
        let h = HostSample::read(&SysRoot::system());
        // On Linux these exist; elsewhere everything is None, which is fine.
        if let Some(total) = h.memory_total_bytes {
            assert!(h.memory_used_bytes.unwrap_or(0) <= total);
        }
        let _ = RigSample::from(&h);
    }
}
