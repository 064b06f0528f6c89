//! One telemetry sample of this rig: the mining runtime's figures (rates, shares, hardware
//! errors, pool) joined with the host's sensors (hwmon temperature and fan, RAPL power, uptime,
//! load, memory).

use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};

use super::link::now_unix_ms;
use super::mining::{MiningSnapshot, CPU_DEVICE_ID};
use super::telemetry::host::HostSample;
use super::telemetry::hwmon::{cpu_sensors, scan};
use super::telemetry::powercap::RaplMeter;
use super::telemetry::SysRoot;

/// Reads sensors; keeps the RAPL meter between samples (power is energy over time).
#[derive(Debug)]
pub struct Sampler {
    root: SysRoot,
    rapl: RaplMeter,
}

impl Sampler {
    /// A sampler over the real `/proc` and `/sys`, or a fake root in tests.
    pub fn new(root: SysRoot) -> Self {
        let rapl = RaplMeter::new(&root);
        Sampler { root, rapl }
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
        Sample {
            seq: 0,
            time_unix_ms: now_unix_ms(),
            rig: RigSample::from(&host),
            devices: vec![device],
            pool: pool_state(snap),
        }
    }
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
    use crate::daemon::mining::{MiningRuntime, RuntimeOptions};

    #[tokio::test]
    async fn an_idle_rig_samples_validly() {
        let mining = MiningRuntime::new(Default::default(), RuntimeOptions::default());
        let mut sampler = Sampler::new(SysRoot::system());
        let s = sampler.sample(&mining.snapshot());
        assert!(s.validate().is_ok());
        assert_eq!(s.devices.len(), 1);
        assert!(!s.devices[0].enabled && s.pool.is_none());
        mining.shutdown().await;
    }
}
