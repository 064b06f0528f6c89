//! The compact binary form of telemetry rows: one blob per rig and time, so a rig's history
//! costs one row per sample instead of one per device and value.
//!
//! Every blob starts with a format byte. Devices are named by their per-rig `slot` (devices
//! table), never by their string id. Counters and integers are LEB128 varints; rates,
//! temperatures and power are f32 (7 significant digits: enough for a chart, and half the
//! bytes of f64); optional values are presence bits in one flag byte.
//!
//! Raw sample, format 1:
//! ```text
//! u8 1 | varint uptime_secs | f32 load_1m | varint mem_used | varint mem_total
//! | varint n_strings { varint len, utf-8 }          strings used below, each stored once
//! | u8 has_pool [ varint url_str | varint user_str | varint state_str | f64 difficulty | varint priority ]
//! | varint n_devices { varint slot | varint algorithm_str | u8 flags | f32 hashrate_5s | f32 hashrate_1m
//!     | varint accepted | varint rejected | varint stale | varint hw_errors
//!     | [f32 temp] [varint fan_rpm] [f32 fan_pct] [f32 power] [varint core_mhz] [varint mem_mhz] }
//! ```
//! Rollup bucket, format 1:
//! ```text
//! u8 1 | varint n_devices { varint slot | u8 flags | varint samples | f32 avg_hashrate
//!     | [f32 max_temp] [f32 avg_fan_pct] [f32 avg_power]
//!     | varint accepted | varint rejected | varint stale | varint hw_errors }
//! ```
//! Decoding never panics: truncated, overlong or inconsistent blobs are a [`PackError`].

use rigfleet_proto::telemetry::{PoolState, RigSample};

/// Format byte of raw sample blobs written by this build.
pub const RAW_FORMAT: u8 = 1;
/// Format byte of rollup blobs written by this build.
pub const ROLLUP_FORMAT: u8 = 1;

/// Bounds that keep a damaged blob from asking for huge allocations.
const MAX_DEVICES: u64 = 4096;
const MAX_STRINGS: u64 = 1024;
const MAX_STRING_LEN: u64 = 4096;

/// A blob that cannot be decoded (or a value that cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("blob truncated")]
    Truncated,
    #[error("unknown blob format {0}")]
    UnknownFormat(u8),
    #[error("invalid blob: {0}")]
    Invalid(&'static str),
    #[error("{0} bytes after the end of the blob")]
    TrailingBytes(usize),
}

/// One device in a raw sample.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDevice {
    pub slot: u16,
    pub algorithm: String,
    pub enabled: bool,
    pub hashrate_5s_hps: f32,
    pub hashrate_1m_hps: f32,
    pub accepted: u64,
    pub rejected: u64,
    pub stale: u64,
    pub hardware_errors: u64,
    pub temperature_celsius: Option<f32>,
    pub fan_rpm: Option<u32>,
    pub fan_percent: Option<f32>,
    pub power_watts: Option<f32>,
    pub core_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
}

/// A raw sample as stored (seq and time live in their own columns).
#[derive(Clone, Debug, PartialEq)]
pub struct RawRecord {
    pub rig: RigSample,
    pub pool: Option<PoolState>,
    pub devices: Vec<RawDevice>,
}

/// One device's aggregate over a rollup bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct RollupDevice {
    pub slot: u16,
    /// Raw samples of this device in the bucket (weights for averaging buckets together).
    pub samples: u64,
    pub avg_hashrate_hps: f32,
    pub max_temperature: Option<f32>,
    pub avg_fan_percent: Option<f32>,
    pub avg_power_watts: Option<f32>,
    /// Shares found within the bucket.
    pub accepted: u64,
    pub rejected: u64,
    pub stale: u64,
    pub hardware_errors: u64,
}

const F_ENABLED: u8 = 1;
const F_TEMP: u8 = 1 << 1;
const F_FAN_RPM: u8 = 1 << 2;
const F_FAN_PCT: u8 = 1 << 3;
const F_POWER: u8 = 1 << 4;
const F_CORE: u8 = 1 << 5;
const F_MEM: u8 = 1 << 6;

const R_TEMP: u8 = 1;
const R_FAN: u8 = 1 << 1;
const R_POWER: u8 = 1 << 2;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        let end = self.pos.checked_add(n).ok_or(PackError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PackError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
    fn u8(&mut self) -> Result<u8, PackError> {
        Ok(self.take(1)?[0])
    }
    fn varint(&mut self) -> Result<u64, PackError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(PackError::Invalid("varint overflows 64 bits"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackError::Invalid("varint longer than 10 bytes"))
    }
    fn u32(&mut self) -> Result<u32, PackError> {
        u32::try_from(self.varint()?).map_err(|_| PackError::Invalid("value above u32"))
    }
    fn f32(&mut self) -> Result<f32, PackError> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f64(&mut self) -> Result<f64, PackError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }
    /// A count whose items take at least `min_item_bytes` each, checked against what is left
    /// so a damaged count cannot trigger a huge allocation.
    fn count(&mut self, max: u64, min_item_bytes: usize) -> Result<usize, PackError> {
        let n = self.varint()?;
        if n > max {
            return Err(PackError::Invalid("count above bound"));
        }
        let n = usize::try_from(n).map_err(|_| PackError::Invalid("count above bound"))?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(PackError::Truncated);
        }
        Ok(n)
    }
    fn slot(&mut self) -> Result<u16, PackError> {
        u16::try_from(self.varint()?).map_err(|_| PackError::Invalid("slot above u16"))
    }
    fn finish(self) -> Result<(), PackError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(PackError::TrailingBytes(n)),
        }
    }
}

/// Interns the strings of one sample so each is stored once.
#[derive(Default)]
struct Strings<'a>(Vec<&'a str>);

impl<'a> Strings<'a> {
    fn index(&mut self, s: &'a str) -> u64 {
        let i = match self.0.iter().position(|x| *x == s) {
            Some(i) => i,
            None => {
                self.0.push(s);
                self.0.len() - 1
            }
        };
        i as u64
    }
}

fn string_at(strings: &[String], idx: u64) -> Result<String, PackError> {
    usize::try_from(idx)
        .ok()
        .and_then(|i| strings.get(i))
        .cloned()
        .ok_or(PackError::Invalid("string index out of range"))
}

/// Encodes a raw sample.
pub fn encode_raw(r: &RawRecord) -> Result<Vec<u8>, PackError> {
    let mut strings = Strings::default();
    let pool_idx = r.pool.as_ref().map(|p| {
        (
            strings.index(&p.url),
            strings.index(&p.user),
            strings.index(&p.state),
        )
    });
    let alg_idx: Vec<u64> = r
        .devices
        .iter()
        .map(|d| strings.index(&d.algorithm))
        .collect();
    if strings.0.iter().any(|s| s.len() as u64 > MAX_STRING_LEN) {
        return Err(PackError::Invalid("string too long"));
    }
    if r.devices.len() as u64 > MAX_DEVICES {
        return Err(PackError::Invalid("too many devices"));
    }
    let mut w = Writer(Vec::with_capacity(64 + 40 * r.devices.len()));
    w.u8(RAW_FORMAT);
    w.varint(r.rig.uptime_secs);
    w.f32(r.rig.load_1m as f32);
    w.varint(r.rig.memory_used_bytes);
    w.varint(r.rig.memory_total_bytes);
    w.varint(strings.0.len() as u64);
    for s in &strings.0 {
        w.varint(s.len() as u64);
        w.0.extend_from_slice(s.as_bytes());
    }
    match (&r.pool, pool_idx) {
        (Some(p), Some((url, user, state))) => {
            w.u8(1);
            w.varint(url);
            w.varint(user);
            w.varint(state);
            w.f64(p.difficulty);
            w.varint(u64::from(p.priority));
        }
        _ => w.u8(0),
    }
    w.varint(r.devices.len() as u64);
    for (d, alg) in r.devices.iter().zip(alg_idx) {
        let mut flags = 0u8;
        for (present, bit) in [
            (d.enabled, F_ENABLED),
            (d.temperature_celsius.is_some(), F_TEMP),
            (d.fan_rpm.is_some(), F_FAN_RPM),
            (d.fan_percent.is_some(), F_FAN_PCT),
            (d.power_watts.is_some(), F_POWER),
            (d.core_clock_mhz.is_some(), F_CORE),
            (d.memory_clock_mhz.is_some(), F_MEM),
        ] {
            if present {
                flags |= bit;
            }
        }
        w.varint(u64::from(d.slot));
        w.varint(alg);
        w.u8(flags);
        w.f32(d.hashrate_5s_hps);
        w.f32(d.hashrate_1m_hps);
        w.varint(d.accepted);
        w.varint(d.rejected);
        w.varint(d.stale);
        w.varint(d.hardware_errors);
        if let Some(v) = d.temperature_celsius {
            w.f32(v);
        }
        if let Some(v) = d.fan_rpm {
            w.varint(u64::from(v));
        }
        if let Some(v) = d.fan_percent {
            w.f32(v);
        }
        if let Some(v) = d.power_watts {
            w.f32(v);
        }
        if let Some(v) = d.core_clock_mhz {
            w.varint(u64::from(v));
        }
        if let Some(v) = d.memory_clock_mhz {
            w.varint(u64::from(v));
        }
    }
    Ok(w.0)
}

/// Decodes a raw sample blob.
pub fn decode_raw(data: &[u8]) -> Result<RawRecord, PackError> {
    let mut r = Reader { data, pos: 0 };
    match r.u8()? {
        RAW_FORMAT => {}
        v => return Err(PackError::UnknownFormat(v)),
    }
    let rig = RigSample {
        uptime_secs: r.varint()?,
        load_1m: f64::from(r.f32()?),
        memory_used_bytes: r.varint()?,
        memory_total_bytes: r.varint()?,
    };
    let n = r.count(MAX_STRINGS, 1)?;
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.varint()?;
        if len > MAX_STRING_LEN {
            return Err(PackError::Invalid("string too long"));
        }
        let bytes = r.take(usize::try_from(len).map_err(|_| PackError::Truncated)?)?;
        let s = std::str::from_utf8(bytes).map_err(|_| PackError::Invalid("string not utf-8"))?;
        strings.push(s.to_string());
    }
    let pool = match r.u8()? {
        0 => None,
        1 => Some(PoolState {
            url: string_at(&strings, r.varint()?)?,
            user: string_at(&strings, r.varint()?)?,
            state: string_at(&strings, r.varint()?)?,
            difficulty: r.f64()?,
            priority: r.u32()?,
        }),
        _ => return Err(PackError::Invalid("pool tag")),
    };
    let n = r.count(MAX_DEVICES, 15)?;
    let mut devices = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = r.slot()?;
        let algorithm = string_at(&strings, r.varint()?)?;
        let flags = r.u8()?;
        if flags & 0x80 != 0 {
            return Err(PackError::Invalid("unknown device flag"));
        }
        let hashrate_5s_hps = r.f32()?;
        let hashrate_1m_hps = r.f32()?;
        let (accepted, rejected, stale, hardware_errors) =
            (r.varint()?, r.varint()?, r.varint()?, r.varint()?);
        let has = |bit: u8| flags & bit != 0;
        devices.push(RawDevice {
            slot,
            algorithm,
            enabled: has(F_ENABLED),
            hashrate_5s_hps,
            hashrate_1m_hps,
            accepted,
            rejected,
            stale,
            hardware_errors,
            temperature_celsius: if has(F_TEMP) { Some(r.f32()?) } else { None },
            fan_rpm: if has(F_FAN_RPM) { Some(r.u32()?) } else { None },
            fan_percent: if has(F_FAN_PCT) { Some(r.f32()?) } else { None },
            power_watts: if has(F_POWER) { Some(r.f32()?) } else { None },
            core_clock_mhz: if has(F_CORE) { Some(r.u32()?) } else { None },
            memory_clock_mhz: if has(F_MEM) { Some(r.u32()?) } else { None },
        });
    }
    r.finish()?;
    Ok(RawRecord { rig, pool, devices })
}

/// Encodes a rollup bucket.
pub fn encode_rollup(devices: &[RollupDevice]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(2 + 30 * devices.len()));
    w.u8(ROLLUP_FORMAT);
    w.varint(devices.len() as u64);
    for d in devices {
        let mut flags = 0u8;
        for (present, bit) in [
            (d.max_temperature.is_some(), R_TEMP),
            (d.avg_fan_percent.is_some(), R_FAN),
            (d.avg_power_watts.is_some(), R_POWER),
        ] {
            if present {
                flags |= bit;
            }
        }
        w.varint(u64::from(d.slot));
        w.u8(flags);
        w.varint(d.samples);
        w.f32(d.avg_hashrate_hps);
        for v in [d.max_temperature, d.avg_fan_percent, d.avg_power_watts]
            .into_iter()
            .flatten()
        {
            w.f32(v);
        }
        w.varint(d.accepted);
        w.varint(d.rejected);
        w.varint(d.stale);
        w.varint(d.hardware_errors);
    }
    w.0
}

/// Decodes a rollup bucket blob.
pub fn decode_rollup(data: &[u8]) -> Result<Vec<RollupDevice>, PackError> {
    let mut r = Reader { data, pos: 0 };
    match r.u8()? {
        ROLLUP_FORMAT => {}
        v => return Err(PackError::UnknownFormat(v)),
    }
    let n = r.count(MAX_DEVICES, 11)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = r.slot()?;
        let flags = r.u8()?;
        if flags & !(R_TEMP | R_FAN | R_POWER) != 0 {
            return Err(PackError::Invalid("unknown rollup flag"));
        }
        let samples = r.varint()?;
        let avg_hashrate_hps = r.f32()?;
        let mut opt = |bit: u8| -> Result<Option<f32>, PackError> {
            if flags & bit != 0 {
                Ok(Some(r.f32()?))
            } else {
                Ok(None)
            }
        };
        let max_temperature = opt(R_TEMP)?;
        let avg_fan_percent = opt(R_FAN)?;
        let avg_power_watts = opt(R_POWER)?;
        out.push(RollupDevice {
            slot,
            samples,
            avg_hashrate_hps,
            max_temperature,
            avg_fan_percent,
            avg_power_watts,
            accepted: r.varint()?,
            rejected: r.varint()?,
            stale: r.varint()?,
            hardware_errors: r.varint()?,
        });
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// xorshift64*: deterministic randomness without a dependency.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn f32(&mut self) -> f32 {
            (self.next() % 1_000_000) as f32 / 7.0
        }
        fn opt_f32(&mut self) -> Option<f32> {
            (self.below(3) != 0).then(|| self.f32())
        }
        fn opt_u32(&mut self) -> Option<u32> {
            (self.below(3) != 0).then(|| self.next() as u32)
        }
        fn big(&mut self) -> u64 {
            match self.below(4) {
                0 => 0,
                1 => self.below(200),
                2 => self.next() >> self.below(64),
                _ => u64::MAX,
            }
        }
    }

    fn random_record(rng: &mut Rng) -> RawRecord {
        let algs = ["sha256d", "scrypt", "randomx-é"];
        RawRecord {
            rig: RigSample {
                uptime_secs: rng.big(),
                load_1m: f64::from(rng.f32()),
                memory_used_bytes: rng.big(),
                memory_total_bytes: rng.big(),
            },
            pool: (rng.below(2) == 0).then(|| PoolState {
                url: format!("stratum+tcp://pool{}:3333", rng.below(5)),
                user: "wallet.rig".into(),
                state: "mining".into(),
                difficulty: rng.next() as f64 / 3.0,
                priority: rng.below(16) as u32,
            }),
            devices: (0..rng.below(20))
                .map(|i| RawDevice {
                    slot: (i * 3 + rng.below(3)) as u16,
                    algorithm: algs[rng.below(3) as usize].into(),
                    enabled: rng.below(2) == 0,
                    hashrate_5s_hps: rng.f32(),
                    hashrate_1m_hps: rng.f32(),
                    accepted: rng.big(),
                    rejected: rng.big(),
                    stale: rng.big(),
                    hardware_errors: rng.big(),
                    temperature_celsius: rng.opt_f32(),
                    fan_rpm: rng.opt_u32(),
                    fan_percent: rng.opt_f32(),
                    power_watts: rng.opt_f32(),
                    core_clock_mhz: rng.opt_u32(),
                    memory_clock_mhz: rng.opt_u32(),
                })
                .collect(),
        }
    }

    fn random_rollup(rng: &mut Rng) -> Vec<RollupDevice> {
        (0..rng.below(12))
            .map(|i| RollupDevice {
                slot: i as u16,
                samples: rng.big(),
                avg_hashrate_hps: rng.f32(),
                max_temperature: rng.opt_f32(),
                avg_fan_percent: rng.opt_f32(),
                avg_power_watts: rng.opt_f32(),
                accepted: rng.big(),
                rejected: rng.big(),
                stale: rng.big(),
                hardware_errors: rng.big(),
            })
            .collect()
    }

    #[test]
    fn random_records_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let rec = random_record(&mut rng);
            let blob = encode_raw(&rec).unwrap();
            assert_eq!(decode_raw(&blob).unwrap(), rec);
            let roll = random_rollup(&mut rng);
            assert_eq!(decode_rollup(&encode_rollup(&roll)).unwrap(), roll);
        }
    }

    #[test]
    fn truncated_extended_and_corrupt_blobs_are_refused_without_panic() {
        let mut rng = Rng(42);
        for _ in 0..300 {
            let blob = encode_raw(&random_record(&mut rng)).unwrap();
            for cut in 0..blob.len() {
                assert!(decode_raw(&blob[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = blob.clone();
            longer.push(0);
            assert_eq!(decode_raw(&longer), Err(PackError::TrailingBytes(1)));
            // Random damage must give an error or some record, never a panic.
            for _ in 0..20 {
                let mut bad = blob.clone();
                let i = rng.below(bad.len() as u64) as usize;
                bad[i] ^= 1 << rng.below(8);
                let _ = decode_raw(&bad);
            }
            let roll = encode_rollup(&random_rollup(&mut rng));
            for cut in 0..roll.len() {
                assert!(decode_rollup(&roll[..cut]).is_err());
            }
            for _ in 0..20 {
                let mut bad = roll.clone();
                let i = rng.below(bad.len() as u64) as usize;
                bad[i] ^= 1 << rng.below(8);
                let _ = decode_rollup(&bad);
            }
        }
        // Pure noise.
        for _ in 0..5000 {
            let len = rng.below(64) as usize;
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = decode_raw(&noise);
            let _ = decode_rollup(&noise);
        }
        assert_eq!(decode_raw(&[9]), Err(PackError::UnknownFormat(9)));
        assert_eq!(decode_rollup(&[]), Err(PackError::Truncated));
        // A huge device count in a tiny blob is refused before allocating.
        assert!(decode_rollup(&[1, 0xff, 0x1f]).is_err());
        // An overlong varint.
        assert!(
            decode_rollup(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
                .is_err()
        );
    }

    #[test]
    fn eight_device_sample_is_small() {
        let rec = RawRecord {
            rig: RigSample {
                uptime_secs: 86_400,
                load_1m: 2.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 8 << 30,
            },
            pool: Some(PoolState {
                url: "stratum+tcp://pool.example.com:3333".into(),
                user: "wallet.rig01".into(),
                state: "mining".into(),
                difficulty: 65536.0,
                priority: 0,
            }),
            devices: (0..8)
                .map(|i| RawDevice {
                    slot: i,
                    algorithm: "sha256d".into(),
                    enabled: true,
                    hashrate_5s_hps: 7.65e7,
                    hashrate_1m_hps: 7.61e7,
                    accepted: 31_000,
                    rejected: 12,
                    stale: 3,
                    hardware_errors: 0,
                    temperature_celsius: Some(61.5),
                    fan_rpm: Some(2400),
                    fan_percent: Some(55.0),
                    power_watts: Some(120.0),
                    core_clock_mhz: Some(1400),
                    memory_clock_mhz: Some(2000),
                })
                .collect(),
        };
        let len = encode_raw(&rec).unwrap().len();
        assert!(len < 400, "{len}");
    }
}
