//! Linux hwmon sensors (`/sys/class/hwmon/hwmon*/`): temperatures, fans, PWM duty and power,
//! converted to the units telemetry carries (°C, RPM, percent, W), plus the CPU summary that
//! fills the CPU device's [`DeviceSample`] and each hwmon's stable device link (a PCI bus id for
//! a GPU), so GPU sensors are matched to devices by stable id and never by `hwmonN` index,
//! which the kernel assigns in probe order and may change across boots.

use std::path::{Path, PathBuf};

use rigfleet_proto::telemetry::DeviceSample;

use super::{read_parse, read_trimmed, SysRoot};

/// Where hwmon devices are listed, relative to the root.
pub const HWMON_CLASS: &str = "/sys/class/hwmon";

/// Drivers that report the CPU's own temperature.
const CPU_DRIVERS: &[&str] = &["k10temp", "coretemp", "zenpower", "cpu_thermal"];

/// Drivers of GPUs and other add-in devices whose fans are not the CPU's.
const NON_CPU_FAN_DRIVERS: &[&str] = &["amdgpu", "radeon", "nouveau", "i915", "xe", "nvme"];

/// What a sensor measures, which also fixes its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SensorKind {
    /// Degrees Celsius (`temp*_input`, read in millidegrees).
    Temperature,
    /// Revolutions per minute (`fan*_input`).
    Fan,
    /// Fan duty in percent (`pwm*`, read as 0–255).
    Pwm,
    /// Watts (`power*_input` or `power*_average`, read in microwatts).
    Power,
}

/// One sensor reading, already in its kind's unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensor {
    /// What it measures.
    pub kind: SensorKind,
    /// The channel's file prefix (`temp1`, `fan2`, `pwm1`, `power1`).
    pub channel: String,
    /// The driver's label (`Tctl`, `Package id 0`, `edge`…), when it gives one.
    pub label: Option<String>,
    /// The value in °C, RPM, percent or W according to `kind`.
    pub value: f64,
}

/// One `hwmonN` folder and its sensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HwmonDevice {
    /// The folder name (`hwmon3`); for logs only, as the number is not stable.
    pub hwmon: String,
    /// The folder's path (under the root it was read from).
    pub path: PathBuf,
    /// The driver name from `name` (`k10temp`, `coretemp`, `amdgpu`, `nct6775`…).
    pub name: Option<String>,
    /// The last component of the `device` symlink's target: a PCI bus id (`0000:01:00.0`) for
    /// PCI devices, a platform device name (`coretemp.0`) otherwise; `None` for virtual hwmons.
    pub device_link: Option<String>,
    /// The readable sensors, ordered by kind then channel number.
    pub sensors: Vec<Sensor>,
}

impl HwmonDevice {
    /// The device link when it is a PCI bus id (`dddd:bb:dd.f`), the stable id GPUs carry.
    // For GPU devices, which the agent does not discover yet.
    #[allow(dead_code)]
    pub fn pci_bus_id(&self) -> Option<&str> {
        self.device_link.as_deref().filter(|l| is_pci_bus_id(l))
    }

    /// Whether the driver reports the CPU's own temperature.
    pub fn is_cpu(&self) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| CPU_DRIVERS.contains(&n))
    }

    /// Sensors of one kind.
    pub fn sensors_of(&self, kind: SensorKind) -> impl Iterator<Item = &Sensor> {
        self.sensors.iter().filter(move |s| s.kind == kind)
    }

    /// The package temperature: `Tdie` (the real die temperature; `Tctl` may carry a fan-control
    /// offset) then `Tctl` for k10temp, the hottest `Package id N` for coretemp (one per socket),
    /// and otherwise the hottest temperature sensor.
    pub fn package_temperature(&self) -> Option<f64> {
        let labelled = |pred: &dyn Fn(&str) -> bool| {
            self.sensors_of(SensorKind::Temperature)
                .filter(|s| s.label.as_deref().is_some_and(pred))
                .map(|s| s.value)
                .reduce(f64::max)
        };
        let preferred = match self.name.as_deref() {
            Some("k10temp") | Some("zenpower") => {
                labelled(&|l| l == "Tdie").or_else(|| labelled(&|l| l == "Tctl"))
            }
            Some("coretemp") => labelled(&|l| l.starts_with("Package id")),
            _ => None,
        };
        preferred.or_else(|| {
            self.sensors_of(SensorKind::Temperature)
                .map(|s| s.value)
                .reduce(f64::max)
        })
    }
}

/// Scans every `hwmon*` folder under the root; an absent class folder gives an empty list.
/// Devices come sorted by hwmon number so the result is deterministic.
pub fn scan(root: &SysRoot) -> Vec<HwmonDevice> {
    let Ok(entries) = std::fs::read_dir(root.path(HWMON_CLASS)) else {
        return Vec::new();
    };
    let mut devices: Vec<(u64, HwmonDevice)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u64 = name.strip_prefix("hwmon")?.parse().ok()?;
            Some((n, read_device(name, e.path())))
        })
        .collect();
    devices.sort_by_key(|(n, _)| *n);
    devices.into_iter().map(|(_, d)| d).collect()
}

/// Reads one hwmon folder.
pub fn read_device(hwmon: String, path: PathBuf) -> HwmonDevice {
    // Old drivers keep `name` next to the device rather than in the hwmon folder.
    let name = read_trimmed(&path.join("name")).or_else(|| read_trimmed(&path.join("device/name")));
    let device_link = std::fs::read_link(path.join("device"))
        .ok()
        .and_then(|t| t.file_name()?.to_str().map(str::to_owned));
    HwmonDevice {
        sensors: read_sensors(&path),
        hwmon,
        path,
        name,
        device_link,
    }
}

/// Reads every recognised sensor file in `dir`, skipping unreadable or malformed ones.
fn read_sensors(dir: &Path) -> Vec<Sensor> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    files.sort();
    let mut sensors: Vec<(SensorKind, u64, Sensor)> = Vec::new();
    for file in &files {
        let Some((kind, channel, n)) = classify(file) else {
            continue;
        };
        // A driver may offer both power*_input and power*_average; keep one per channel.
        if sensors
            .iter()
            .any(|(k, _, s)| *k == kind && s.channel == channel)
        {
            continue;
        }
        let Some(value) = read_value(dir, file, kind, &channel) else {
            continue;
        };
        let label = read_trimmed(&dir.join(format!("{channel}_label")));
        sensors.push((
            kind,
            n,
            Sensor {
                kind,
                channel,
                label,
                value,
            },
        ));
    }
    sensors.sort_by_key(|(k, n, _)| (*k as u8, *n));
    sensors.into_iter().map(|(_, _, s)| s).collect()
}

/// Recognises a sensor file: its kind, channel (`temp1`) and channel number.
fn classify(file: &str) -> Option<(SensorKind, String, u64)> {
    let (kind, prefix, rest) = if let Some(r) = file.strip_prefix("temp") {
        (SensorKind::Temperature, "temp", r.strip_suffix("_input")?)
    } else if let Some(r) = file.strip_prefix("fan") {
        (SensorKind::Fan, "fan", r.strip_suffix("_input")?)
    } else if let Some(r) = file.strip_prefix("pwm") {
        // Only `pwmN` itself; `pwmN_enable`, `pwmN_mode`… are settings, not readings.
        (SensorKind::Pwm, "pwm", r)
    } else if let Some(r) = file.strip_prefix("power") {
        let r = r
            .strip_suffix("_input")
            .or_else(|| r.strip_suffix("_average"))?;
        (SensorKind::Power, "power", r)
    } else {
        return None;
    };
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = rest.parse().ok()?;
    Some((kind, format!("{prefix}{rest}"), n))
}

/// Reads a sensor file and converts it to its kind's unit.
fn read_value(dir: &Path, file: &str, kind: SensorKind, channel: &str) -> Option<f64> {
    let raw: i64 = if kind == SensorKind::Power {
        // Prefer the instantaneous reading; older amdgpu offers only the average.
        read_parse(&dir.join(format!("{channel}_input")))
            .or_else(|| read_parse(&dir.join(format!("{channel}_average"))))?
    } else {
        read_parse(&dir.join(file))?
    };
    let value = match kind {
        SensorKind::Temperature => raw as f64 / 1000.0,
        SensorKind::Fan => {
            if raw < 0 {
                return None;
            }
            raw as f64
        }
        SensorKind::Pwm => {
            if !(0..=255).contains(&raw) {
                return None;
            }
            raw as f64 * 100.0 / 255.0
        }
        SensorKind::Power => {
            if raw < 0 {
                return None;
            }
            raw as f64 / 1_000_000.0
        }
    };
    Some(value)
}

/// Whether `s` looks like a PCI bus id: `dddd:bb:dd.f` in hex.
// For GPU devices, which the agent does not discover yet.
#[allow(dead_code)]
pub fn is_pci_bus_id(s: &str) -> bool {
    let hex = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = s.split(':');
    let (Some(domain), Some(bus), Some(dev_fn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((dev, func)) = dev_fn.split_once('.') else {
        return false;
    };
    hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)
}

/// The hwmon whose device link is `device_id` (a PCI bus id, say), for a GPU's sensors.
// For GPU devices, which the agent does not discover yet.
#[allow(dead_code)]
pub fn find_by_device_link<'a>(
    devices: &'a [HwmonDevice],
    device_id: &str,
) -> Option<&'a HwmonDevice> {
    devices
        .iter()
        .find(|d| d.device_link.as_deref() == Some(device_id))
}

/// The CPU device's figures as telemetry carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSensors {
    /// Package temperature.
    pub temperature_celsius: Option<f32>,
    /// The CPU fan's speed.
    pub fan_rpm: Option<u32>,
    /// The CPU fan's duty.
    pub fan_percent: Option<f32>,
    /// Power from an hwmon power sensor on a CPU driver; RAPL ([`super::powercap`]) is the
    /// usual source and may fill this instead.
    pub power_watts: Option<f32>,
}

impl CpuSensors {
    /// Copies the known figures into the CPU's sample, leaving the others as they were.
    pub fn apply_to(&self, sample: &mut DeviceSample) {
        if self.temperature_celsius.is_some() {
            sample.temperature_celsius = self.temperature_celsius;
        }
        if self.fan_rpm.is_some() {
            sample.fan_rpm = self.fan_rpm;
        }
        if self.fan_percent.is_some() {
            sample.fan_percent = self.fan_percent;
        }
        if self.power_watts.is_some() {
            sample.power_watts = self.power_watts;
        }
    }
}

/// Picks the CPU's figures from all hwmons: the hottest package temperature over CPU drivers
/// (one per socket on multi-socket boards); the fan labelled as the CPU's on a motherboard chip,
/// else the first fan outside GPU and disk drivers, with the PWM of the same channel number on
/// the same chip (the usual pairing of `fanN` and `pwmN`); power from CPU drivers. A rig with no
/// CPU driver gets no temperature, because an NVMe or GPU sensor is not the CPU.
pub fn cpu_sensors(devices: &[HwmonDevice]) -> CpuSensors {
    let cpu = || devices.iter().filter(|d| d.is_cpu());
    let temperature = cpu()
        .filter_map(HwmonDevice::package_temperature)
        .reduce(f64::max);
    let power = cpu()
        .flat_map(|d| d.sensors_of(SensorKind::Power))
        .map(|s| s.value)
        .reduce(|a, b| a + b);

    let fan_hosts = || {
        devices.iter().filter(|d| {
            !d.name
                .as_deref()
                .is_some_and(|n| NON_CPU_FAN_DRIVERS.contains(&n))
        })
    };
    let is_cpu_label = |s: &&Sensor| {
        s.label
            .as_deref()
            .is_some_and(|l| l.to_ascii_lowercase().contains("cpu"))
    };
    let fan = fan_hosts()
        .find_map(|d| {
            d.sensors_of(SensorKind::Fan)
                .find(is_cpu_label)
                .map(|s| (d, s))
        })
        .or_else(|| fan_hosts().find_map(|d| d.sensors_of(SensorKind::Fan).next().map(|s| (d, s))));
    let fan_percent = fan.and_then(|(d, s)| {
        let pwm = format!("pwm{}", s.channel.trim_start_matches("fan"));
        d.sensors_of(SensorKind::Pwm)
            .find(|p| p.channel == pwm)
            .map(|p| p.value as f32)
    });
    CpuSensors {
        temperature_celsius: temperature.map(|t| t as f32),
        fan_rpm: fan.map(|(_, s)| s.value.min(u32::MAX as f64) as u32),
        fan_percent,
        power_watts: power.map(|p| p as f32),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::*;
    use rigfleet_proto::ids::DeviceId;

    fn k10temp(t: &FakeTree, n: u32) {
        let d = format!("/sys/class/hwmon/hwmon{n}");
        t.file(&format!("{d}/name"), "k10temp\n")
            .file(&format!("{d}/temp1_input"), "61250\n")
            .file(&format!("{d}/temp1_label"), "Tctl\n")
            .file(&format!("{d}/temp3_input"), "48000\n")
            .file(&format!("{d}/temp3_label"), "Tccd1\n")
            .symlink(&format!("{d}/device"), "../../../0000:00:18.3");
    }

    fn sample() -> DeviceSample {
        DeviceSample {
            device_id: DeviceId::from("cpu"),
            algorithm: "sha256d".into(),
            enabled: true,
            hashrate_5s_hps: 0.0,
            hashrate_1m_hps: 0.0,
            accepted: 0,
            rejected: 0,
            stale: 0,
            hardware_errors: 0,
            temperature_celsius: None,
            fan_rpm: None,
            fan_percent: None,
            power_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
        }
    }

    #[test]
    fn k10temp_prefers_tdie_then_tctl() {
        let t = FakeTree::new();
        k10temp(&t, 0);
        let devs = scan(&t.root());
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].name.as_deref(), Some("k10temp"));
        assert_eq!(devs[0].package_temperature(), Some(61.25));
        assert_eq!(devs[0].device_link.as_deref(), Some("0000:00:18.3"));
        t.file("/sys/class/hwmon/hwmon0/temp2_input", "55500")
            .file("/sys/class/hwmon/hwmon0/temp2_label", "Tdie");
        let devs = scan(&t.root());
        assert_eq!(cpu_sensors(&devs).temperature_celsius, Some(55.5));
    }

    #[test]
    fn coretemp_uses_the_package_sensor_not_the_hottest_core() {
        let t = FakeTree::new();
        let d = "/sys/class/hwmon/hwmon2";
        t.file(&format!("{d}/name"), "coretemp")
            .file(&format!("{d}/temp1_input"), "52000")
            .file(&format!("{d}/temp1_label"), "Package id 0")
            .file(&format!("{d}/temp2_input"), "57000")
            .file(&format!("{d}/temp2_label"), "Core 0")
            .file(&format!("{d}/temp3_input"), "50000")
            .file(&format!("{d}/temp3_label"), "Core 1");
        let devs = scan(&t.root());
        let labels: Vec<_> = devs[0]
            .sensors
            .iter()
            .map(|s| s.label.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(labels, ["Package id 0", "Core 0", "Core 1"]);
        assert_eq!(cpu_sensors(&devs).temperature_celsius, Some(52.0));
    }

    #[test]
    fn falls_back_to_the_hottest_without_labels_and_ignores_non_cpu_temps() {
        let t = FakeTree::new();
        t.file("/sys/class/hwmon/hwmon0/name", "cpu_thermal")
            .file("/sys/class/hwmon/hwmon0/temp1_input", "45000")
            .file("/sys/class/hwmon/hwmon0/temp2_input", "47500")
            .file("/sys/class/hwmon/hwmon1/name", "nvme")
            .file("/sys/class/hwmon/hwmon1/temp1_input", "70000");
        let devs = scan(&t.root());
        assert_eq!(cpu_sensors(&devs).temperature_celsius, Some(47.5));

        // Without any CPU driver there is no CPU temperature at all.
        let t = FakeTree::new();
        t.file("/sys/class/hwmon/hwmon1/name", "nvme")
            .file("/sys/class/hwmon/hwmon1/temp1_input", "70000");
        assert_eq!(cpu_sensors(&scan(&t.root())).temperature_celsius, None);
    }

    #[test]
    fn fan_pwm_and_power_units() {
        let t = FakeTree::new();
        k10temp(&t, 0);
        let m = "/sys/class/hwmon/hwmon1";
        t.file(&format!("{m}/name"), "nct6775")
            .file(&format!("{m}/fan1_input"), "800")
            .file(&format!("{m}/fan1_label"), "SYSFAN")
            .file(&format!("{m}/fan2_input"), "1530")
            .file(&format!("{m}/fan2_label"), "CPUFAN")
            .file(&format!("{m}/pwm1"), "255")
            .file(&format!("{m}/pwm2"), "51")
            .file(&format!("{m}/pwm2_enable"), "2")
            .file("/sys/class/hwmon/hwmon0/power1_input", "65500000");
        let devs = scan(&t.root());
        let mobo = &devs[1];
        assert_eq!(
            mobo.sensors_of(SensorKind::Pwm).count(),
            2,
            "pwm2_enable is no reading"
        );
        let cpu = cpu_sensors(&devs);
        assert_eq!(cpu.fan_rpm, Some(1530));
        assert_eq!(cpu.fan_percent, Some(20.0));
        assert_eq!(cpu.power_watts, Some(65.5));
        assert_eq!(cpu.temperature_celsius, Some(61.25));
        let mut s = sample();
        s.core_clock_mhz = Some(3000);
        cpu.apply_to(&mut s);
        assert_eq!(s.fan_rpm, Some(1530));
        assert_eq!(s.temperature_celsius, Some(61.25));
        assert_eq!(s.core_clock_mhz, Some(3000));
        CpuSensors::default().apply_to(&mut s);
        assert_eq!(
            s.power_watts,
            Some(65.5),
            "unknown figures leave the sample alone"
        );
    }

    #[test]
    fn gpu_hwmon_is_found_by_pci_bus_id_and_its_fan_is_not_the_cpus() {
        let t = FakeTree::new();
        // Index order says nothing: the GPU is hwmon0 here.
        let g = "/sys/class/hwmon/hwmon0";
        t.file(&format!("{g}/name"), "amdgpu")
            .file(&format!("{g}/temp1_input"), "66000")
            .file(&format!("{g}/temp1_label"), "edge")
            .file(&format!("{g}/temp2_input"), "80000")
            .file(&format!("{g}/temp2_label"), "junction")
            .file(&format!("{g}/fan1_input"), "2100")
            .file(&format!("{g}/pwm1"), "128")
            .file(&format!("{g}/power1_average"), "150000000")
            .file(&format!("{g}/power1_input"), "149000000")
            .symlink(
                &format!("{g}/device"),
                "../../../devices/pci0000:00/0000:00:01.1/0000:01:00.0",
            );
        k10temp(&t, 1);
        let devs = scan(&t.root());
        let gpu = find_by_device_link(&devs, "0000:01:00.0").expect("found");
        assert_eq!(gpu.pci_bus_id(), Some("0000:01:00.0"));
        assert_eq!(gpu.package_temperature(), Some(80.0));
        let power: Vec<_> = gpu.sensors_of(SensorKind::Power).collect();
        assert_eq!(power.len(), 1, "one reading per power channel");
        assert_eq!(power[0].value, 149.0, "instantaneous input preferred");
        let pwm = gpu.sensors_of(SensorKind::Pwm).next().expect("pwm");
        assert!((pwm.value - 50.196).abs() < 0.01);
        let cpu = cpu_sensors(&devs);
        assert_eq!(cpu.fan_rpm, None, "a GPU fan is not the CPU fan");
        assert_eq!(cpu.power_watts, None);
        assert_eq!(cpu.temperature_celsius, Some(61.25));
        // The k10temp link is a PCI id too, but the CPU device is matched by driver.
        assert!(find_by_device_link(&devs, "0000:02:00.0").is_none());
    }

    #[test]
    fn malformed_values_are_skipped_and_odd_names_ignored() {
        let t = FakeTree::new();
        let d = "/sys/class/hwmon/hwmon0";
        t.file(&format!("{d}/name"), "k10temp")
            .file(&format!("{d}/temp1_input"), "hot")
            .file(&format!("{d}/temp1_label"), "Tctl")
            .file(&format!("{d}/temp2_input"), "")
            .file(&format!("{d}/temp3_input"), "41000")
            .file(&format!("{d}/tempX_input"), "99000")
            .file(&format!("{d}/temp_input"), "99000")
            .file(&format!("{d}/fan1_input"), "-5")
            .file(&format!("{d}/pwm1"), "300")
            .file(&format!("{d}/power1_input"), "1e6")
            .file(&format!("{d}/power2_input"), "oops")
            .file(&format!("{d}/power2_average"), "12000000")
            .dir(&format!("{d}/temp4_input"))
            .file("/sys/class/hwmon/hwmonX/temp1_input", "99000")
            .file("/sys/class/hwmon/README", "not a hwmon");
        let devs = scan(&t.root());
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].sensors.len(), 2);
        assert_eq!(devs[0].sensors[0].value, 41.0);
        assert_eq!(
            devs[0].sensors[1].value, 12.0,
            "bad power2_input: power2_average"
        );
        assert_eq!(devs[0].device_link, None);
        let cpu = cpu_sensors(&devs);
        assert_eq!(
            cpu.temperature_celsius,
            Some(41.0),
            "Tctl unreadable: hottest"
        );
        assert_eq!((cpu.fan_rpm, cpu.fan_percent), (None, None));
        assert_eq!(cpu.power_watts, Some(12.0));
    }

    #[test]
    fn empty_or_missing_trees_give_nothing() {
        let t = FakeTree::new();
        assert!(scan(&t.root()).is_empty());
        t.dir("/sys/class/hwmon/hwmon0");
        let devs = scan(&t.root());
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].name, None);
        assert!(devs[0].sensors.is_empty());
        assert_eq!(cpu_sensors(&devs), CpuSensors::default());
    }

    #[test]
    fn pci_bus_id_shape() {
        assert!(is_pci_bus_id("0000:01:00.0"));
        assert!(is_pci_bus_id("0000:c1:1f.7"));
        assert!(!is_pci_bus_id("coretemp.0"));
        assert!(!is_pci_bus_id("0000:01:00"));
        assert!(!is_pci_bus_id("0000:01:00.0:1"));
        assert!(!is_pci_bus_id("LNXTHERM:00"));
    }

    #[test]
    fn reads_the_real_root_without_panicking() {
        let devs = scan(&SysRoot::system());
        let _ = cpu_sensors(&devs);
    }
}
