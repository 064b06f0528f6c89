//! One telemetry sample of this rig: the mining runtime's figures (rates, shares, hardware
//! errors, pool) joined with the host's sensors (hwmon temperature and fan, RAPL power, uptime,
//! load, memory) and the GPUs' own sensors (NVML for NVIDIA).
//!
//! GPUs are monitored, not mined, until a GPU mining backend exists: they are reported disabled,
//! with no algorithm and no hash rate, so the fleet view shows their temperature, fan and power
//! without counting them as idle miners. Whatever a GPU source gives is cleaned here, not trusted:
//! the sample must pass the protocol's checks or the server refuses the whole batch.

use std::collections::HashSet;

use rigfleet_proto::agent_to_server::DeviceDescriptor;
use rigfleet_proto::ids::validate_id;
use rigfleet_proto::limits::{MAX_DEVICES_PER_RIG, MAX_NAME_LEN};
use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};

use super::link::now_unix_ms;
use super::mining::{MiningSnapshot, CPU_DEVICE_ID};
use super::telemetry::gpu::{GpuReading, GpuSource, NvmlSource};
use super::telemetry::host::HostSample;
use super::telemetry::hwmon::{cpu_sensors, scan};
use super::telemetry::powercap::RaplMeter;
use super::telemetry::SysRoot;

/// `kind` of a GPU in `hello`.
const GPU_KIND: &str = "gpu";
/// `model` of a GPU whose name could not be read.
const UNNAMED_GPU: &str = "GPU";

/// Reads sensors; keeps the RAPL meter between samples (power is energy over time) and the GPU
/// source (NVML is loaded once, not on every sample).
pub struct Sampler {
    root: SysRoot,
    rapl: RaplMeter,
    gpus: Option<Box<dyn GpuSource>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("root", &self.root)
            .field("rapl", &self.rapl)
            .field("gpus", &self.gpus.is_some())
            .finish()
    }
}

impl Sampler {
    /// A sampler over the real `/proc` and `/sys`, or a fake root in tests, with NVIDIA GPUs when
    /// the driver is present.
    pub fn new(root: SysRoot) -> Self {
        match NvmlSource::open() {
            Some(nvml) => Self::with_gpu_source(root, Box::new(nvml)),
            None => Self::build(root, None),
        }
    }

    /// A sampler whose GPUs come from `gpus` (tests script them with a fake source).
    pub fn with_gpu_source(root: SysRoot, gpus: Box<dyn GpuSource>) -> Self {
        Self::build(root, Some(gpus))
    }

    fn build(root: SysRoot, gpus: Option<Box<dyn GpuSource>>) -> Self {
        let rapl = RaplMeter::new(&root);
        Sampler { root, rapl, gpus }
    }

    /// A sample now (its seq is set by the queue).
    pub fn sample(&mut self, snap: &MiningSnapshot) -> Sample {
        let host = HostSample::read(&self.root);
        let sensors = cpu_sensors(&scan(&self.root));
        let rapl = self.rapl.sample();
        let mut device = cpu_sample(snap);
        sensors.apply_to(&mut device);
        if let Some(w) = rapl.filter(|w| w.is_finite() && *w >= 0.0) {
            device.power_watts = Some(w as f32);
        }
        let mut devices = vec![device];
        devices.extend(
            self.read_gpus()
                .iter()
                .map(|gpu| merge_engine_gpu(gpu_sample(gpu), snap)),
        );
        Sample {
            seq: 0,
            time_unix_ms: now_unix_ms(),
            rig: RigSample::from(&host),
            devices,
            pool: pool_state(snap),
        }
    }

    /// The GPUs present now, for `hello`'s device list.
    pub fn gpu_devices(&mut self) -> Vec<DeviceDescriptor> {
        self.read_gpus().iter().map(gpu_descriptor).collect()
    }

    fn read_gpus(&mut self) -> Vec<GpuReading> {
        match self.gpus.as_mut() {
            Some(source) => usable_gpus(source.read()),
            None => Vec::new(),
        }
    }
}

/// The readings that can be reported: an id the protocol accepts, not already taken by the CPU or
/// an earlier GPU (the server keys history by id, so a repeat would mix two cards), and no more
/// than fit in one rig's device list beside the CPU.
fn usable_gpus(readings: Vec<GpuReading>) -> Vec<GpuReading> {
    let mut seen: HashSet<String> = HashSet::from([CPU_DEVICE_ID.to_owned()]);
    readings
        .into_iter()
        .filter(|r| {
            if let Err(error) = validate_id(&r.device_id, "device_id") {
                tracing::debug!(device = %r.device_id, %error, "GPU id not reportable; left out");
                return false;
            }
            seen.insert(r.device_id.clone())
        })
        .take(MAX_DEVICES_PER_RIG - 1)
        .collect()
}

/// A sensor figure the protocol accepts: NaN, infinities and negatives are a failed read, not a
/// measurement, so they become "not known".
fn sensor(v: Option<f32>) -> Option<f32> {
    v.filter(|v| v.is_finite() && *v >= 0.0)
}

/// A GPU's sample: sensors only, since no backend mines on GPUs yet.
pub fn gpu_sample(gpu: &GpuReading) -> DeviceSample {
    DeviceSample {
        device_id: gpu.device_id.as_str().into(),
        algorithm: String::new(),
        enabled: false,
        hashrate_5s_hps: 0.0,
        hashrate_1m_hps: 0.0,
        accepted: 0,
        rejected: 0,
        stale: 0,
        hardware_errors: 0,
        temperature_celsius: sensor(gpu.temperature_celsius),
        fan_rpm: None,
        fan_percent: sensor(gpu.fan_percent),
        power_watts: sensor(gpu.power_watts),
        core_clock_mhz: gpu.core_clock_mhz,
        memory_clock_mhz: gpu.memory_clock_mhz,
    }
}

/// Adds the engine's figures for a GPU it mines on to that GPU's NVML sample. Both name the card
/// by its PCI bus id (`pci:0000:01:00.0`), so one card is one device, never two (issue 18).
pub fn merge_engine_gpu(mut sample: DeviceSample, snap: &MiningSnapshot) -> DeviceSample {
    let Some(stats) = snap.miner.as_ref().and_then(|m| {
        m.devices
            .iter()
            .find(|d| d.info.id.0 == sample.device_id.as_str())
    }) else {
        return sample;
    };
    let finite = |v: f64| if v.is_finite() && v >= 0.0 { v } else { 0.0 };
    sample.algorithm = stats.info.algorithm.to_string();
    sample.enabled = stats.last_error.is_none();
    sample.hashrate_5s_hps = finite(stats.rates.avg_5s_hps);
    sample.hashrate_1m_hps = finite(stats.rates.avg_1m_hps);
    sample.hardware_errors = stats.hardware_errors;
    sample
}

/// A GPU as `hello` lists it; no algorithms until a backend can mine on it.
pub fn gpu_descriptor(gpu: &GpuReading) -> DeviceDescriptor {
    let model = gpu
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(UNNAMED_GPU);
    DeviceDescriptor {
        device_id: gpu.device_id.as_str().into(),
        kind: GPU_KIND.into(),
        model: truncate_bytes(model, MAX_NAME_LEN).to_owned(),
        algorithms: Vec::new(),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary (the
/// protocol bounds names in bytes).
fn truncate_bytes(s: &str, max: usize) -> &str {
    let end = s
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|end| *end <= max)
        .last()
        .unwrap_or(0);
    &s[..end]
}

/// The CPU device's figures from the runtime (sensors added by the caller).
pub fn cpu_sample(snap: &MiningSnapshot) -> DeviceSample {
    let stats = snap
        .miner
        .as_ref()
        .and_then(|m| m.devices.iter().find(|d| d.info.id.0 == CPU_DEVICE_ID));
    let finite = |v: f64| if v.is_finite() && v >= 0.0 { v } else { 0.0 };
    DeviceSample {
        device_id: CPU_DEVICE_ID.into(),
        algorithm: snap.algorithm.map(|a| a.to_string()).unwrap_or_default(),
        enabled: snap.algorithm.is_some(),
        hashrate_5s_hps: finite(stats.map_or(0.0, |d| d.rates.avg_5s_hps)),
        hashrate_1m_hps: finite(stats.map_or(0.0, |d| d.rates.avg_1m_hps)),
        accepted: snap.shares.accepted,
        rejected: snap.shares.rejected,
        stale: snap.shares.stale,
        hardware_errors: stats.map_or(0, |d| d.hardware_errors),
        temperature_celsius: stats.and_then(|d| d.sensors.temperature_celsius),
        fan_rpm: None,
        fan_percent: None,
        power_watts: None,
        core_clock_mhz: None,
        memory_clock_mhz: None,
    }
}

/// The pool mined on now.
pub fn pool_state(snap: &MiningSnapshot) -> Option<PoolState> {
    snap.pool.as_ref().map(|p| PoolState {
        url: p
            .url
            .chars()
            .take(rigfleet_proto::limits::MAX_URL_LEN)
            .collect(),
        user: p.user.chars().take(200).collect(),
        state: p.state.to_string(),
        difficulty: p
            .difficulty
            .filter(|d| d.is_finite() && *d >= 0.0)
            .unwrap_or(0.0),
        priority: p.priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::mining::{MiningRuntime, RuntimeOptions, ShareTotals};
    use crate::daemon::telemetry::gpu::FakeGpuSource;
    use rigfleet_proto::agent_to_server::{Hello, RigHello};
    use rigfleet_proto::AgentMessage;

    fn idle() -> MiningSnapshot {
        MiningSnapshot {
            version: None,
            algorithm: None,
            threads: 0,
            pool: None,
            client: None,
            miner: None,
            shares: ShareTotals::default(),
        }
    }

    #[test]
    fn a_gpu_the_engine_mines_on_is_one_device_with_nvml_and_engine_figures() {
        use rigfleet_engine::device::{DeviceInfo, DeviceKind, Sensors};
        use rigfleet_engine::miner::{DeviceStats, MinerStats};
        use rigfleet_engine::{Algorithm, DeviceId, HashRates};
        let rates = HashRates {
            avg_5s_hps: 7.25e9,
            avg_1m_hps: 7.2e9,
            avg_15m_hps: 7.1e9,
        };
        let mut snap = idle();
        snap.miner = Some(MinerStats {
            devices: vec![DeviceStats {
                info: DeviceInfo {
                    id: DeviceId("pci:0000:01:00.0".into()),
                    kind: DeviceKind::Gpu,
                    name: "NVIDIA H200".into(),
                    algorithm: Algorithm::Sha256d,
                    path: "opencl".into(),
                    workers: 132,
                },
                rates,
                hashes_total: 1,
                shares: 0,
                hardware_errors: 3,
                sensors: Sensors::default(),
                last_error: None,
            }],
            rates,
        });
        let mut sampler = with_gpus(vec![
            gpu(
                "pci:0000:01:00.0",
                "NVIDIA H200",
                50.0,
                0.0,
                420.0,
                1980,
                3201,
            ),
            gpu(
                "pci:0000:02:00.0",
                "NVIDIA H200",
                40.0,
                0.0,
                80.0,
                345,
                3201,
            ),
        ]);
        let sample = sampler.sample(&snap);
        let gpus: Vec<_> = sample
            .devices
            .iter()
            .filter(|d| d.device_id.as_str() != "cpu")
            .collect();
        assert_eq!(gpus.len(), 2, "one device per card");
        let mined = gpus
            .iter()
            .find(|d| d.device_id.as_str() == "pci:0000:01:00.0")
            .unwrap();
        assert_eq!(mined.algorithm, "sha256d");
        assert!(mined.enabled);
        assert_eq!(mined.hashrate_5s_hps, 7.25e9);
        assert_eq!(mined.hardware_errors, 3);
        assert_eq!(mined.power_watts, Some(420.0));
        let idle_card = gpus
            .iter()
            .find(|d| d.device_id.as_str() == "pci:0000:02:00.0")
            .unwrap();
        assert!(!idle_card.enabled);
        assert_eq!(idle_card.hashrate_5s_hps, 0.0);
    }

    fn with_gpus(gpus: Vec<GpuReading>) -> Sampler {
        Sampler::with_gpu_source(SysRoot::system(), Box::new(FakeGpuSource::steady(gpus)))
    }

    fn gpu(
        id: &str,
        name: &str,
        temp: f32,
        fan: f32,
        watts: f32,
        core: u32,
        mem: u32,
    ) -> GpuReading {
        GpuReading {
            device_id: id.into(),
            name: Some(name.into()),
            temperature_celsius: Some(temp),
            fan_percent: Some(fan),
            power_watts: Some(watts),
            core_clock_mhz: Some(core),
            memory_clock_mhz: Some(mem),
        }
    }

    fn ids(s: &Sample) -> Vec<&str> {
        s.devices.iter().map(|d| d.device_id.as_str()).collect()
    }

    #[tokio::test]
    async fn an_idle_rig_samples_validly() {
        let mining = MiningRuntime::new(Default::default(), RuntimeOptions::default());
        // No GPUs scripted, so the check holds on machines that have real ones.
        let mut sampler = with_gpus(vec![]);
        let s = sampler.sample(&mining.snapshot());
        assert!(s.validate().is_ok());
        assert_eq!(s.devices.len(), 1);
        assert!(!s.devices[0].enabled && s.pool.is_none());
        mining.shutdown().await;
    }

    #[test]
    fn two_gpus_join_the_cpu_as_monitored_devices() {
        let mut sampler = with_gpus(vec![
            gpu(
                "pci:0000:01:00.0",
                "NVIDIA GeForce RTX 3080",
                61.0,
                45.0,
                220.5,
                1710,
                9501,
            ),
            gpu(
                "pci:0000:02:00.0",
                "NVIDIA GeForce RTX 3060",
                55.0,
                30.0,
                120.0,
                1320,
                7501,
            ),
        ]);
        let s = sampler.sample(&idle());
        assert_eq!(ids(&s), ["cpu", "pci:0000:01:00.0", "pci:0000:02:00.0"]);
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        let d = &s.devices[1];
        assert_eq!(d.temperature_celsius, Some(61.0));
        assert_eq!(d.fan_percent, Some(45.0));
        assert_eq!(d.power_watts, Some(220.5));
        assert_eq!(d.core_clock_mhz, Some(1710));
        assert_eq!(d.memory_clock_mhz, Some(9501));
        assert_eq!(s.devices[2].power_watts, Some(120.0));
        assert_eq!(s.devices[2].memory_clock_mhz, Some(7501));
        for d in &s.devices[1..] {
            assert!(!d.enabled && d.algorithm.is_empty(), "{d:?}");
            assert_eq!((d.hashrate_5s_hps, d.hashrate_1m_hps), (0.0, 0.0));
            assert_eq!(
                (d.accepted, d.rejected, d.stale, d.hardware_errors),
                (0, 0, 0, 0)
            );
            assert_eq!(d.fan_rpm, None);
        }
        // The same GPUs, in the same order, every sample.
        assert_eq!(ids(&sampler.sample(&idle())), ids(&s));
    }

    #[test]
    fn garbage_sensor_values_are_dropped_and_the_rest_kept() {
        let mut sampler = with_gpus(vec![
            gpu("pci:0000:01:00.0", "a", f32::NAN, -5.0, -12.0, 1500, 7000),
            gpu(
                "pci:0000:02:00.0",
                "b",
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                0,
                0,
            ),
            GpuReading::new("pci:0000:03:00.0"),
        ]);
        let s = sampler.sample(&idle());
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        assert_eq!(s.devices.len(), 4);
        for d in &s.devices[1..] {
            assert_eq!(d.temperature_celsius, None, "{d:?}");
            assert_eq!(d.fan_percent, None, "{d:?}");
            assert_eq!(d.power_watts, None, "{d:?}");
        }
        assert_eq!(s.devices[1].core_clock_mhz, Some(1500));
        assert_eq!(s.devices[1].memory_clock_mhz, Some(7000));
        assert_eq!(s.devices[3].core_clock_mhz, None);
    }

    #[test]
    fn gpus_with_bad_or_repeated_ids_are_left_out() {
        let mut sampler = with_gpus(vec![
            GpuReading::new("pci:0000:01:00.0"),
            GpuReading::new(""),
            GpuReading::new("GPU 0 <b>"),
            GpuReading::new("x".repeat(rigfleet_proto::limits::MAX_ID_LEN + 1)),
            GpuReading::new(CPU_DEVICE_ID),
            GpuReading::new("pci:0000:01:00.0"),
            GpuReading::new("pci:0000:02:00.0"),
        ]);
        let s = sampler.sample(&idle());
        assert_eq!(ids(&s), ["cpu", "pci:0000:01:00.0", "pci:0000:02:00.0"]);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn more_gpus_than_a_rig_may_report_are_cut_to_the_limit() {
        let many = (0..300u32)
            .map(|i| GpuReading::new(format!("pci:0000:{:02x}:{:02x}.0", i / 32, i % 32)))
            .collect();
        let s = with_gpus(many).sample(&idle());
        assert_eq!(s.devices.len(), MAX_DEVICES_PER_RIG);
        assert_eq!(s.devices[0].device_id.as_str(), CPU_DEVICE_ID);
        assert!(s.validate().is_ok(), "{:?}", s.validate());
    }

    #[test]
    fn a_driver_that_goes_away_leaves_the_cpu_alone() {
        let mut sampler = Sampler::with_gpu_source(
            SysRoot::system(),
            Box::new(FakeGpuSource::scripted(vec![
                vec![GpuReading::new("pci:0000:01:00.0")],
                vec![],
            ])),
        );
        assert_eq!(sampler.sample(&idle()).devices.len(), 2);
        let s = sampler.sample(&idle());
        assert_eq!(ids(&s), ["cpu"]);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn hello_lists_gpus_by_id_with_their_names_within_the_limits() {
        let long = "é".repeat(MAX_NAME_LEN); // 2 bytes each: twice the limit.
        let mut sampler = with_gpus(vec![
            gpu(
                "pci:0000:01:00.0",
                "NVIDIA GeForce RTX 3080",
                60.0,
                40.0,
                200.0,
                1,
                1,
            ),
            gpu("pci:0000:02:00.0", &long, 60.0, 40.0, 200.0, 1, 1),
            GpuReading::new("pci:0000:03:00.0"),
            GpuReading::new("bad id"),
        ]);
        let devices = sampler.gpu_devices();
        let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(
            ids,
            ["pci:0000:01:00.0", "pci:0000:02:00.0", "pci:0000:03:00.0"]
        );
        assert!(devices
            .iter()
            .all(|d| d.kind == "gpu" && d.algorithms.is_empty()));
        assert_eq!(devices[0].model, "NVIDIA GeForce RTX 3080");
        assert_eq!(devices[1].model, "é".repeat(MAX_NAME_LEN / 2));
        assert_eq!(devices[2].model, "GPU");

        let mut all = vec![crate::enroll::cpu_device(Some("Test CPU"))];
        all.extend(devices);
        let hello = AgentMessage::Hello(Hello {
            agent_id: "agent-1".into(),
            protocol_min: rigfleet_proto::MIN_PROTOCOL_VERSION,
            protocol_max: rigfleet_proto::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            hostname: "rig".into(),
            clock_unix_ms: 0,
            rigs: vec![RigHello {
                rig_id: "rig-1".into(),
                devices: all,
                applied_config_version: None,
                last_acked_seq: None,
                last_order_counter: None,
                stream_id: None,
            }],
            nonce: None,
        });
        assert!(hello.validate().is_ok(), "{:?}", hello.validate());
    }

    #[test]
    fn names_are_cut_on_character_boundaries() {
        assert_eq!(truncate_bytes("abc", 3), "abc");
        assert_eq!(truncate_bytes("abc", 2), "ab");
        assert_eq!(truncate_bytes("aé", 2), "a");
        assert_eq!(truncate_bytes("é", 1), "");
        assert_eq!(truncate_bytes("", 5), "");
    }
}
