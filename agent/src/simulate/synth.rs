//! A synthetic rig: believable figures with no hashing. Each device has a nominal rate with a
//! little noise, a temperature that drifts towards a load-dependent target, a fan that follows
//! it, power, and share counters that only go up.

use rigfleet_proto::agent_to_server::DeviceDescriptor;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};

use crate::daemon::link::backoff::Jitter;

/// One simulated device.
#[derive(Debug, Clone)]
struct SimDevice {
    id: String,
    nominal_hps: f64,
    temperature: f64,
    accepted: u64,
    rejected: u64,
    stale: u64,
    hardware_errors: u64,
}

/// A simulated rig.
#[derive(Debug)]
pub struct SynthRig {
    devices: Vec<SimDevice>,
    rng: Jitter,
    uptime_secs: u64,
    algorithm: String,
    pool_url: String,
    pool_user: String,
    /// Samples taken (the first few show the pool still connecting).
    samples: u64,
}

/// The device ids of a rig with `count` devices (stable, PCI-bus-like).
pub fn device_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("0000:{:02x}:00.0", i + 1))
        .collect()
}

/// How the simulated devices are described at enrollment and in `hello`.
pub fn descriptors(count: usize) -> Vec<DeviceDescriptor> {
    device_ids(count)
        .into_iter()
        .map(|id| DeviceDescriptor {
            device_id: id.as_str().into(),
            kind: "gpu".into(),
            model: "Simulated GPU".into(),
            algorithms: vec!["sha256d".into(), "scrypt".into()],
        })
        .collect()
}

impl SynthRig {
    /// A rig of `count` devices, its figures drawn from `seed`.
    pub fn new(count: usize, seed: u64) -> Self {
        let mut rng = Jitter::seeded(seed);
        let devices = device_ids(count)
            .into_iter()
            .map(|id| SimDevice {
                id,
                nominal_hps: 400e6 * (0.8 + 0.4 * rng.unit()),
                temperature: 40.0 + 10.0 * rng.unit(),
                accepted: 0,
                rejected: 0,
                stale: 0,
                hardware_errors: 0,
            })
            .collect();
        SynthRig {
            devices,
            uptime_secs: 3600 + rng.next_u64() % 86_400,
            rng,
            algorithm: "sha256d".into(),
            pool_url: "stratum+tcp://pool.sim.invalid:3333".into(),
            pool_user: "sim.worker".into(),
            samples: 0,
        }
    }

    /// Mines what a config says (algorithm and first pool), as far as figures go.
    pub fn apply(&mut self, config: &DesiredConfig) {
        self.algorithm = config.algorithm.clone();
        if let Some(p) = config.pools.first() {
            self.pool_url = p.url.chars().take(256).collect();
            self.pool_user = p.user.chars().take(200).collect();
        }
    }

    /// A sample after `elapsed_secs` more seconds (its seq is set by the store).
    pub fn sample(&mut self, elapsed_secs: u64, now_ms: i64) -> Sample {
        self.uptime_secs += elapsed_secs;
        self.samples += 1;
        let mining = !self.algorithm.is_empty();
        let scale = if self.algorithm == "scrypt" {
            1e-3
        } else {
            1.0
        };
        let mut devices = Vec::with_capacity(self.devices.len());
        for d in &mut self.devices {
            let rng = &mut self.rng;
            let noise = 1.0 + 0.06 * (rng.unit() - 0.5);
            let rate = if mining {
                d.nominal_hps * scale * noise
            } else {
                0.0
            };
            let target = if mining { 68.0 } else { 38.0 };
            d.temperature += (target - d.temperature) * 0.2 + (rng.unit() - 0.5);
            if mining {
                // About one share per device per 10 s, a rejected or stale one now and then.
                d.accepted += elapsed_secs / 10 + u64::from(rng.unit() < 0.5);
                d.rejected += u64::from(rng.unit() < 0.01);
                d.stale += u64::from(rng.unit() < 0.02);
                d.hardware_errors += u64::from(rng.unit() < 0.001);
            }
            let fan_percent = ((d.temperature - 30.0) * 2.0).clamp(20.0, 100.0);
            devices.push(DeviceSample {
                device_id: d.id.as_str().into(),
                algorithm: self.algorithm.clone(),
                enabled: true,
                hashrate_5s_hps: rate,
                hashrate_1m_hps: rate / noise,
                accepted: d.accepted,
                rejected: d.rejected,
                stale: d.stale,
                hardware_errors: d.hardware_errors,
                temperature_celsius: Some(d.temperature.max(0.0) as f32),
                fan_rpm: Some((fan_percent * 30.0) as u32),
                fan_percent: Some(fan_percent as f32),
                power_watts: Some(if mining {
                    150.0 + 60.0 * rng.unit()
                } else {
                    15.0
                } as f32),
                core_clock_mhz: Some(if mining { 1800 } else { 300 }),
                memory_clock_mhz: Some(if mining { 7000 } else { 400 }),
            });
        }
        Sample {
            seq: 0,
            time_unix_ms: now_ms,
            rig: RigSample {
                uptime_secs: self.uptime_secs,
                load_1m: 0.2 + self.rng.unit(),
                memory_used_bytes: 2 << 30,
                memory_total_bytes: 16 << 30,
            },
            devices,
            pool: mining.then(|| PoolState {
                url: self.pool_url.clone(),
                user: self.pool_user.clone(),
                state: if self.samples < 2 {
                    "connecting"
                } else {
                    "mining"
                }
                .into(),
                difficulty: 65_536.0,
                priority: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_and_counters_only_go_up() {
        let mut rig = SynthRig::new(8, 3);
        let mut last = 0;
        for i in 0..100 {
            let s = rig.sample(10, 1_700_000_000_000 + i * 10_000);
            assert!(s.validate().is_ok());
            assert_eq!(s.devices.len(), 8);
            let acc = s.devices[0].accepted;
            assert!(acc >= last);
            last = acc;
            assert!(s.devices.iter().all(|d| d.hashrate_5s_hps > 1e8));
        }
        assert!(last > 50);
    }
}
