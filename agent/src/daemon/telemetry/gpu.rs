//! NVIDIA GPU sensors through NVML (issue: "through nvml-wrapper when an NVIDIA driver is present
//! (loaded at run time, absent is fine)").
//!
//! `nvml-wrapper` opens `libnvidia-ml.so.1` with `dlopen` when [`NvmlSource::open`] runs, not at
//! link time, so one agent binary runs on rigs with and without the NVIDIA driver; without it the
//! agent simply reports no NVIDIA GPUs. Devices are named by their PCI bus id, never by NVML's
//! index, because the index follows enumeration order and changes when a card is added, removed or
//! moved, while history and per-device settings must stay with the card in its slot.
//!
//! Every query can fail on its own (`NotSupported` for fan speed on passively cooled boards, power
//! on some consumer cards, `GpuLost` for a card that fell off the bus), so each figure is optional
//! and a failing field never hides the others. The sampler behind [`GpuSource`] sees only plain
//! readings, which lets its tests script GPUs on a machine that has none.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::{Device, Nvml};

use rigfleet_proto::limits::MAX_DEVICES_PER_RIG;

/// One GPU's figures at one moment; any figure the board would not give is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    /// Stable id from the PCI bus id (`pci:0000:01:00.0`).
    pub device_id: String,
    /// Marketing name (`NVIDIA GeForce RTX 3080`).
    pub name: Option<String>,
    /// GPU die temperature, °C.
    pub temperature_celsius: Option<f32>,
    /// Fan duty of the first fan, percent of its maximum.
    pub fan_percent: Option<f32>,
    /// Board power draw, watts.
    pub power_watts: Option<f32>,
    /// Graphics clock, MHz.
    pub core_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub memory_clock_mhz: Option<u32>,
}

#[cfg(test)]
impl GpuReading {
    /// A reading with only the id (tests add the figures they need).
    pub fn new(device_id: impl Into<String>) -> Self {
        GpuReading {
            device_id: device_id.into(),
            name: None,
            temperature_celsius: None,
            fan_percent: None,
            power_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
        }
    }
}

/// Something that lists the GPUs present now with their figures. `Send` because the sampler
/// lives in the daemon's task, which the runtime may move between threads.
pub trait GpuSource: Send {
    /// The GPUs readable now; empty when there are none or the driver stopped answering.
    fn read(&mut self) -> Vec<GpuReading>;
}

/// The device id for an NVML PCI bus id: `00000000:01:00.0` becomes `pci:0000:01:00.0`.
///
/// NVML pads the domain to 8 hex digits and writes upper case, while Linux (sysfs, `lspci`) writes
/// 4 digits in lower case; the id follows Linux so the same card has the same id whichever reader
/// found it. Domains above `ffff` (Intel VMD, some hypervisors) keep all their digits so that two
/// cards never share an id. `None` when the text is not a PCI address, since a made-up id would
/// not be stable.
pub fn pci_device_id(bus_id: &str) -> Option<String> {
    let bus_id = bus_id.trim();
    let (domain, rest) = match bus_id.split(':').count() {
        3 => bus_id.split_once(':')?,
        2 => ("0", bus_id),
        _ => return None,
    };
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let domain = hex_field(domain, 8, u32::MAX)?;
    let bus = hex_field(bus, 2, 0xff)?;
    let device = hex_field(device, 2, 0x1f)?;
    let function = hex_field(function, 1, 7)?;
    Some(format!(
        "pci:{domain:04x}:{bus:02x}:{device:02x}.{function:x}"
    ))
}

/// 1 to `digits` hex digits worth at most `max`. `from_str_radix` alone would also take a sign.
fn hex_field(s: &str, digits: usize, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().filter(|v| *v <= max)
}

/// NVIDIA GPUs through the driver's NVML library.
pub struct NvmlSource {
    nvml: Nvml,
    /// Whether the last device count failed, so that a driver going away or coming back is
    /// logged once, not every interval.
    failing: bool,
}

impl NvmlSource {
    /// Loads and initialises NVML; `None` when there is no NVIDIA driver (the library is missing,
    /// the kernel module is not loaded, or the agent may not talk to it), which is normal on
    /// rigs without NVIDIA cards and therefore not an error.
    pub fn open() -> Option<Self> {
        match Nvml::init() {
            Ok(nvml) => {
                tracing::info!(
                    driver = %nvml.sys_driver_version().unwrap_or_default(),
                    gpus = nvml.device_count().unwrap_or(0),
                    "NVIDIA driver found; reading NVIDIA GPUs through NVML"
                );
                Some(NvmlSource {
                    nvml,
                    failing: false,
                })
            }
            Err(error) => {
                tracing::info!(%error, "No NVIDIA driver; NVIDIA GPUs are not monitored");
                None
            }
        }
    }
}

impl GpuSource for NvmlSource {
    fn read(&mut self) -> Vec<GpuReading> {
        let count = match self.nvml.device_count() {
            Ok(n) => {
                if self.failing {
                    tracing::info!(gpus = n, "NVIDIA driver answers again");
                    self.failing = false;
                }
                n
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%error, "NVIDIA driver stopped answering; no GPU figures");
                    self.failing = true;
                }
                return Vec::new();
            }
        };
        // A confused driver could report any count; never walk more than a rig may report.
        let count = count.min(MAX_DEVICES_PER_RIG as u32);
        (0..count)
            .filter_map(|index| match self.nvml.device_by_index(index) {
                Ok(device) => read_device(&device),
                Err(error) => {
                    tracing::debug!(index, %error, "Cannot open an NVIDIA GPU; left out");
                    None
                }
            })
            .collect()
    }
}

/// One device's figures; `None` only when its PCI address cannot be read, because without it the
/// figures could not be told apart from another card's.
fn read_device(device: &Device<'_>) -> Option<GpuReading> {
    let pci = match device.pci_info() {
        Ok(pci) => pci,
        Err(error) => {
            tracing::debug!(%error, "Cannot read an NVIDIA GPU's PCI address; left out");
            return None;
        }
    };
    let Some(device_id) = pci_device_id(&pci.bus_id) else {
        tracing::debug!(bus_id = %pci.bus_id, "NVML gave a PCI address that does not parse; left out");
        return None;
    };
    Some(GpuReading {
        device_id,
        name: device.name().ok(),
        temperature_celsius: device
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .map(|c| c as f32),
        fan_percent: device.fan_speed(0).ok().map(|p| p as f32),
        // NVML reports milliwatts.
        power_watts: device.power_usage().ok().map(|mw| mw as f32 / 1000.0),
        core_clock_mhz: device.clock_info(Clock::Graphics).ok(),
        memory_clock_mhz: device.clock_info(Clock::Memory).ok(),
    })
}

/// Scripted GPUs: each read gives the next list, and the last one again once the script runs out
/// (so a one-entry script is a steady set of GPUs, and a script ending in `vec![]` is a driver
/// that went away).
#[cfg(test)]
pub struct FakeGpuSource {
    script: std::collections::VecDeque<Vec<GpuReading>>,
    last: Vec<GpuReading>,
}

#[cfg(test)]
impl FakeGpuSource {
    /// The same GPUs on every read.
    pub fn steady(gpus: Vec<GpuReading>) -> Self {
        Self::scripted(vec![gpus])
    }

    /// One list per read, in order.
    pub fn scripted(reads: Vec<Vec<GpuReading>>) -> Self {
        FakeGpuSource {
            script: reads.into(),
            last: Vec::new(),
        }
    }
}

#[cfg(test)]
impl GpuSource for FakeGpuSource {
    fn read(&mut self) -> Vec<GpuReading> {
        if let Some(next) = self.script.pop_front() {
            self.last = next;
        }
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_bus_ids_become_linux_style_ids() {
        for (nvml, id) in [
            ("00000000:01:00.0", "pci:0000:01:00.0"),
            ("00000000:0A:00.0", "pci:0000:0a:00.0"),
            ("00000001:C1:1F.7", "pci:0001:c1:1f.7"),
            // The legacy 4-digit form and a bus id without a domain name the same card.
            ("0000:01:00.0", "pci:0000:01:00.0"),
            ("01:00.0", "pci:0000:01:00.0"),
            // Intel VMD domains do not fit 4 digits; truncating would merge cards.
            ("00010000:E1:00.0", "pci:10000:e1:00.0"),
            ("  00000000:02:00.0 ", "pci:0000:02:00.0"),
        ] {
            assert_eq!(pci_device_id(nvml).as_deref(), Some(id), "{nvml}");
        }
    }

    #[test]
    fn text_that_is_not_a_pci_address_gives_no_id() {
        for bad in [
            "",
            "GPU-5b0c0c61-0d9c-4a1e-8f3e-7d0f0b1e2a3c",
            "00000000:01:00",
            "00000000:01:00.8",
            "00000000:100:00.0",
            "00000000:01:20.0",
            "000000000:01:00.0",
            "0000:+1:00.0",
            "0000:01:00.0:0",
            "zz:01:00.0",
        ] {
            assert_eq!(pci_device_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_pass_the_protocol_check() {
        let id = pci_device_id("00000000:01:00.0").expect("valid bus id");
        assert!(rigfleet_proto::ids::validate_id(&id, "device_id").is_ok());
    }

    #[test]
    fn fake_source_plays_its_script_then_repeats_the_last_read() {
        let mut fake =
            FakeGpuSource::scripted(vec![vec![GpuReading::new("pci:0000:01:00.0")], vec![]]);
        assert_eq!(fake.read().len(), 1);
        assert!(fake.read().is_empty());
        assert!(fake.read().is_empty());
    }

    /// Without the NVIDIA kernel driver (CI, this repository's build machines) opening must fail
    /// quietly. With one, the library may still be missing (a container without the NVIDIA
    /// runtime), so only what it reads is checked: every GPU named by a valid id that is the PCI
    /// address the kernel driver lists it under (`/proc/driver/nvidia/gpus/0000:01:00.0`). The
    /// driver may list more cards than a container can open, hence a subset.
    #[test]
    fn opening_nvml_never_panics_and_gives_none_without_a_driver() {
        let driver_loaded = std::path::Path::new("/proc/driver/nvidia/version").exists();
        match NvmlSource::open() {
            None => {}
            Some(_) if !driver_loaded => {
                panic!("NVML opened although the NVIDIA kernel driver is not loaded")
            }
            Some(mut source) => {
                let listed: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
                    .map(|dir| {
                        dir.flatten()
                            .filter_map(|e| e.file_name().into_string().ok())
                            .map(|bus_id| format!("pci:{bus_id}"))
                            .collect()
                    })
                    .unwrap_or_default();
                for gpu in source.read() {
                    assert!(
                        rigfleet_proto::ids::validate_id(&gpu.device_id, "device_id").is_ok(),
                        "{gpu:?}"
                    );
                    assert!(
                        listed.is_empty() || listed.contains(&gpu.device_id),
                        "{gpu:?} not among {listed:?}"
                    );
                }
            }
        }
    }
}
