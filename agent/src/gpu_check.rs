//! `rigfleet-agent gpu-check`: finds the GPUs through every route the engine has, checks their
//! kernels against the CPU path, measures SHA-256d per GPU and prints NVML readings. It only
//! reads: no clock, power limit, fan or other setting of any GPU is changed.
//!
//! Meant for a bare machine where nothing can be installed: `scripts/gpu-check.sh` runs this
//! binary built elsewhere. Numbers are printed (human lines, then one JSON object per GPU on a
//! line starting with `JSON `); the exit code is non-zero when a GPU returned a wrong answer.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use rigfleet_engine::device::gpu::{self, DiscoverOptions, GpuScanner};
use rigfleet_engine::test_vectors::{LITECOIN_GENESIS, SHA256D_BLOCKS};
use rigfleet_engine::{Algorithm, NonceRange, Target};

/// Options of `gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Seconds of hashing per GPU for the rate.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Target time of one kernel launch, milliseconds.
    #[arg(long, default_value_t = 50)]
    launch_ms: u64,
    /// Routes to try: `opencl`, `cuda` or `all` (a card seen through both is measured on both).
    #[arg(long, default_value = "all")]
    route: String,
    /// Also use OpenCL CPU devices (PoCL), to try the command on a machine without a GPU.
    #[arg(long)]
    include_cpu_devices: bool,
    /// Check with 64 times fewer nonces (for slow devices such as PoCL).
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &GpuCheckArgs) -> Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be between 0 and 600");
    }
    let (opencl, cuda) = match args.route.as_str() {
        "all" => (true, true),
        "opencl" => (true, false),
        "cuda" => (false, true),
        other => bail!("--route must be opencl, cuda or all, not {other:?}"),
    };
    let started = Instant::now();
    let found = gpu::discover(&DiscoverOptions {
        opencl,
        cuda,
        include_cpu_devices: args.include_cpu_devices,
        both_routes: true,
        target_launch: Duration::from_millis(args.launch_ms.clamp(1, 10_000)),
    });
    println!(
        "discovery: {} device(s) ready in {:.2} s",
        found.scanners.len(),
        started.elapsed().as_secs_f64()
    );
    for problem in &found.problems {
        println!("discovery problem: {problem}");
    }
    let nvml = Nvml::open();
    let cpu = Algorithm::Sha256d.best_kernel()?;
    println!("CPU reference path for the checks: {}", cpu.path());
    let mut failures = 0;
    for mut scanner in found.scanners {
        let info = scanner.info().clone();
        println!(
            "\n== {} [{}] route={} platform={:?} compute_units={}",
            info.name,
            info.id,
            info.route.name(),
            info.platform,
            info.compute_units
        );
        let check = check_against_cpu(&mut scanner, cpu, if args.quick { 6 } else { 0 });
        match &check {
            Ok(n) => {
                println!("check: OK, {n} nonces equal the CPU path (real blocks and random work)")
            }
            Err(e) => {
                failures += 1;
                println!("check: FAILED: {e:#}");
            }
        }
        let before = nvml
            .as_ref()
            .and_then(|n| n.reading(info.pci_bus_id.as_deref()));
        let rate = measure(&mut scanner, Duration::from_secs_f64(args.seconds));
        let after = nvml
            .as_ref()
            .and_then(|n| n.reading(info.pci_bus_id.as_deref()));
        let mut json = serde_json::json!({
            "device": info.id,
            "name": info.name,
            "route": info.route.name(),
            "platform": info.platform,
            "compute_units": info.compute_units,
            "check_ok": check.is_ok(),
        });
        match &rate {
            Ok(r) => {
                println!(
                    "sha256d: {:.1} MH/s over {:.1} s of kernels ({:.1} MH/s wall), launch {} nonces, {} wrong nonces",
                    r.hashes as f64 / r.busy_secs / 1e6,
                    r.busy_secs,
                    r.hashes as f64 / r.wall_secs / 1e6,
                    r.launch_nonces,
                    r.rejected
                );
                json["sha256d_hps"] = (r.hashes as f64 / r.busy_secs).into();
                json["sha256d_wall_hps"] = (r.hashes as f64 / r.wall_secs).into();
                json["launch_nonces"] = r.launch_nonces.into();
                json["rejected"] = r.rejected.into();
                if r.rejected > 0 {
                    failures += 1;
                }
                if let (Some(b), Some(a)) = (&before, &after) {
                    if let (Some(e0), Some(e1)) = (b.energy_mj, a.energy_mj) {
                        let watts = (e1.saturating_sub(e0)) as f64 / 1000.0 / r.wall_secs;
                        println!(
                            "energy: {watts:.0} W average while hashing, {:.2} MH/J",
                            r.hashes as f64 / r.wall_secs / watts / 1e6
                        );
                        json["average_watts"] = watts.into();
                    }
                }
            }
            Err(e) => {
                failures += 1;
                println!("sha256d rate: FAILED: {e:#}");
            }
        }
        match check_scrypt(&mut scanner, args.quick) {
            Ok(n) => println!(
                "scrypt check: OK, {n} nonces equal the CPU path (Litecoin genesis, random work)"
            ),
            Err(e) => {
                failures += 1;
                println!("scrypt check: FAILED: {e:#}");
            }
        }
        json["scrypt_check_ok"] = check.is_ok().into();
        match measure_algo(
            &mut scanner,
            Algorithm::Scrypt,
            Duration::from_secs_f64(args.seconds),
        ) {
            Ok(r) => {
                println!(
                    "scrypt: {:.1} kH/s over {:.1} s of kernels ({:.1} kH/s wall), launch {} nonces, {} wrong nonces",
                    r.hashes as f64 / r.busy_secs / 1e3,
                    r.busy_secs,
                    r.hashes as f64 / r.wall_secs / 1e3,
                    r.launch_nonces,
                    r.rejected
                );
                json["scrypt_hps"] = (r.hashes as f64 / r.busy_secs).into();
                json["scrypt_launch_nonces"] = r.launch_nonces.into();
                if r.rejected > 0 {
                    failures += 1;
                }
            }
            Err(e) => {
                failures += 1;
                println!("scrypt rate: FAILED: {e:#}");
            }
        }
        // The path the daemon mines on: the scanner as an engine device under the real Miner
        // (nonce slices, job switches, every share rechecked).
        match through_miner(scanner, Duration::from_secs_f64(args.seconds.min(5.0))) {
            Ok((hps, share_ok)) => {
                println!(
                    "miner: sha256d {:.1} MH/s through GpuDevice + Miner, genesis share {}",
                    hps / 1e6,
                    if share_ok { "found" } else { "NOT found" }
                );
                json["miner_sha256d_hps"] = hps.into();
                if !share_ok {
                    failures += 1;
                }
            }
            Err(e) => {
                failures += 1;
                println!("miner: FAILED: {e:#}");
            }
        }
        for (label, reading) in [("before", &before), ("after", &after)] {
            if let Some(r) = reading {
                println!("nvml {label}: {}", r.line());
                json[format!("nvml_{label}")] = r.json();
            }
        }
        println!("JSON {json}");
    }
    if let Some(n) = &nvml {
        n.print_all();
    } else {
        println!("\nnvml: not available (no NVIDIA driver library)");
    }
    if failures > 0 {
        bail!("{failures} GPU check(s) failed");
    }
    Ok(())
}

/// Real blocks (the known nonce must be found) and random headers with easy targets: the GPU's
/// candidates must equal the CPU kernel's. Returns how many nonces were compared.
fn check_against_cpu(
    scanner: &mut GpuScanner,
    cpu: &dyn rigfleet_engine::Kernel,
    shrink: u32,
) -> Result<usize> {
    let mut compared = 0;
    for block in SHA256D_BLOCKS {
        let header = block.header();
        let target = Target::from_nbits(block.bits)?;
        let range = NonceRange::new(
            block.nonce.saturating_sub(1 << (20 - shrink)),
            block.nonce.saturating_add(1 << (20 - shrink)),
        );
        let out = scanner.scan(Algorithm::Sha256d, &header, &target, range)?;
        let mut want = Vec::new();
        cpu.scan(&header, &target, range, &mut want);
        if out.candidates != want || !out.candidates.contains(&block.nonce) || out.rejected > 0 {
            bail!(
                "{}: GPU {:?} (+{} wrong), CPU {:?}",
                block.name,
                out.candidates,
                out.rejected,
                want
            );
        }
        compared += want.len();
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for case in 0..8u32 {
        let mut header = [0u8; 80];
        for b in header.iter_mut() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 56) as u8;
        }
        // One nonce in 2^12 passes; 2^22 nonces per case, the last case at the top of the space.
        let mut bytes = [0xffu8; 32];
        bytes[28..32].copy_from_slice(&(u32::MAX >> 12).to_le_bytes());
        let target = Target::from_le_bytes(&bytes);
        let first = if case == 7 {
            u32::MAX - (1 << 22) + 1
        } else {
            case << 27
        };
        let range = NonceRange::new(first, first + ((1 << 22) - 1));
        let out = scanner.scan(Algorithm::Sha256d, &header, &target, range)?;
        let mut want = Vec::new();
        cpu.scan(&header, &target, range, &mut want);
        if out.candidates != want || out.rejected > 0 {
            bail!(
                "random case {case}: GPU found {} (+{} wrong), CPU {}",
                out.candidates.len(),
                out.rejected,
                want.len()
            );
        }
        compared += want.len();
    }
    Ok(compared)
}

struct Rate {
    hashes: u64,
    busy_secs: f64,
    wall_secs: f64,
    launch_nonces: u32,
    rejected: u64,
}

/// Scrypt: the Litecoin genesis nonce must be found, and random headers with an easy target must
/// give the CPU kernel's nonces.
fn check_scrypt(scanner: &mut GpuScanner, quick: bool) -> Result<usize> {
    let cpu = Algorithm::Scrypt.best_kernel()?;
    let block = LITECOIN_GENESIS;
    let header = block.header();
    let target = Target::from_nbits(block.bits)?;
    let half = if quick { 256 } else { 4096 };
    let range = NonceRange::new(block.nonce - half, block.nonce + half);
    let out = scanner.scan(Algorithm::Scrypt, &header, &target, range)?;
    if out.candidates != [block.nonce] || out.rejected > 0 {
        bail!(
            "Litecoin genesis: GPU {:?} (+{} wrong)",
            out.candidates,
            out.rejected
        );
    }
    let mut compared = 1;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for case in 0..4u32 {
        let mut header = [0u8; 80];
        for b in header.iter_mut() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 56) as u8;
        }
        let mut bytes = [0xffu8; 32];
        bytes[28..32].copy_from_slice(&(u32::MAX >> 8).to_le_bytes());
        let target = Target::from_le_bytes(&bytes);
        let len: u32 = if quick { 512 } else { 8192 };
        let first = if case == 3 {
            u32::MAX - len + 1
        } else {
            case << 28
        };
        let range = NonceRange::new(first, first + (len - 1));
        let out = scanner.scan(Algorithm::Scrypt, &header, &target, range)?;
        let mut want = Vec::new();
        cpu.scan(&header, &target, range, &mut want);
        if out.candidates != want || out.rejected > 0 {
            bail!(
                "scrypt random case {case}: GPU found {} (+{} wrong), CPU {}",
                out.candidates.len(),
                out.rejected,
                want.len()
            );
        }
        compared += want.len();
    }
    Ok(compared)
}

/// SHA-256d rate.
fn measure(scanner: &mut GpuScanner, duration: Duration) -> Result<Rate> {
    measure_algo(scanner, Algorithm::Sha256d, duration)
}

/// Hashes for `duration` against a target that almost nothing meets (top word 0), after a
/// second of warm-up in which the launch size settles.
fn measure_algo(scanner: &mut GpuScanner, algo: Algorithm, duration: Duration) -> Result<Rate> {
    let header = match algo {
        Algorithm::Sha256d => SHA256D_BLOCKS[0].header(),
        Algorithm::Scrypt => LITECOIN_GENESIS.header(),
    };
    let target = Target::from_le_bytes(&[0u8; 32]);
    // Warm up and let the launch size settle (about a second).
    let warm = Instant::now();
    let mut first = 0u32;
    while warm.elapsed() < Duration::from_millis(1000) {
        let n = scanner.launch_nonces_for(algo);
        scanner.scan(
            algo,
            &header,
            &target,
            NonceRange::new(first, first.saturating_add(n - 1)),
        )?;
        first = first.wrapping_add(n) & 0x7fff_ffff;
    }
    let started = Instant::now();
    let mut rate = Rate {
        hashes: 0,
        busy_secs: 0.0,
        wall_secs: 0.0,
        launch_nonces: scanner.launch_nonces_for(algo),
        rejected: 0,
    };
    while started.elapsed() < duration {
        let n = scanner.launch_nonces_for(algo);
        let out = scanner.scan(
            algo,
            &header,
            &target,
            NonceRange::new(first, first.saturating_add(n - 1)),
        )?;
        first = first.wrapping_add(n) & 0x7fff_ffff;
        rate.hashes += out.hashes;
        rate.busy_secs += out.busy.as_secs_f64();
        rate.rejected += out.rejected;
    }
    rate.wall_secs = started.elapsed().as_secs_f64();
    rate.launch_nonces = scanner.launch_nonces_for(algo);
    Ok(rate)
}

/// Mines through `GpuDevice` and the engine's `Miner`: the Bitcoin genesis block's share must
/// come out, then the rate over `duration` on rolling headers.
fn through_miner(scanner: GpuScanner, duration: Duration) -> Result<(f64, bool)> {
    use rigfleet_engine::device::event_channel;
    use rigfleet_engine::device::gpu::GpuDevice;
    use rigfleet_engine::{Miner, Work};
    let (tx, rx) = event_channel();
    let device = GpuDevice::new(scanner, Algorithm::Sha256d, tx)?;
    let (share_tx, shares) = std::sync::mpsc::channel();
    let miner = Miner::new(vec![Box::new(device)], rx, share_tx)?;
    let block = SHA256D_BLOCKS[0];
    let mut work = Work::new(
        "genesis",
        Algorithm::Sha256d,
        block.header(),
        Target::from_nbits(block.bits)?,
    );
    work.nonce_range = NonceRange::new(block.nonce - (1 << 24), block.nonce + (1 << 24));
    let mut once = Some(work);
    miner.set_source(Box::new(move || once.take()));
    let share_ok = loop {
        match shares.recv_timeout(Duration::from_secs(20)) {
            Ok(share) if &*share.work.job_id == "genesis" => break share.nonce == block.nonce,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    let mut counter = 0u64;
    let target = Target::from_nbits(0x1d00ffff)?;
    miner.set_source(Box::new(move || {
        counter += 1;
        let mut header = block.header();
        header[36..44].copy_from_slice(&counter.to_le_bytes());
        Some(Work::new(
            format!("roll-{counter}"),
            Algorithm::Sha256d,
            header,
            target,
        ))
    }));
    std::thread::sleep(Duration::from_millis(500));
    let h0 = miner.stats().devices[0].hashes_total;
    let t0 = Instant::now();
    std::thread::sleep(duration);
    let h1 = miner.stats().devices[0].hashes_total;
    Ok(((h1 - h0) as f64 / t0.elapsed().as_secs_f64(), share_ok))
}

/// Read-only NVML access for the check.
struct Nvml(nvml_wrapper::Nvml);

#[derive(Clone, Debug)]
struct Reading {
    pairs: Vec<(&'static str, String)>,
    energy_mj: Option<u64>,
}

impl Reading {
    fn line(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }
}

impl Nvml {
    fn open() -> Option<Self> {
        nvml_wrapper::Nvml::init().ok().map(Nvml)
    }

    fn reading(&self, pci_bus_id: Option<&str>) -> Option<Reading> {
        let count = self.0.device_count().ok()?;
        for i in 0..count {
            let Ok(dev) = self.0.device_by_index(i) else {
                continue;
            };
            let bus = dev.pci_info().ok().map(|p| p.bus_id);
            let matches = match (pci_bus_id, bus.as_deref()) {
                (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
                (None, _) => count == 1,
                _ => false,
            };
            if matches {
                return Some(read_device(&dev));
            }
        }
        None
    }

    fn print_all(&self) {
        let count = self.0.device_count().unwrap_or(0);
        println!(
            "\nnvml: driver {} , {count} GPU(s)",
            self.0.sys_driver_version().unwrap_or_default()
        );
        for i in 0..count {
            if let Ok(dev) = self.0.device_by_index(i) {
                println!("nvml gpu {i}: {}", read_device(&dev).line());
            }
        }
    }
}

fn read_device(dev: &nvml_wrapper::Device<'_>) -> Reading {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    let mut put = |k: &'static str, v: Option<String>| {
        pairs.push((k, v.unwrap_or_else(|| "n/a".to_string())));
    };
    put("name", dev.name().ok());
    put("pci", dev.pci_info().ok().map(|p| p.bus_id));
    put(
        "temp_c",
        dev.temperature(TemperatureSensor::Gpu)
            .ok()
            .map(|v| v.to_string()),
    );
    put(
        "power_w",
        dev.power_usage()
            .ok()
            .map(|mw| format!("{:.1}", f64::from(mw) / 1000.0)),
    );
    put(
        "power_limit_w",
        dev.enforced_power_limit()
            .ok()
            .map(|mw| format!("{:.0}", f64::from(mw) / 1000.0)),
    );
    put(
        "sm_mhz",
        dev.clock_info(Clock::SM).ok().map(|v| v.to_string()),
    );
    put(
        "sm_max_mhz",
        dev.max_clock_info(Clock::SM).ok().map(|v| v.to_string()),
    );
    put(
        "mem_mhz",
        dev.clock_info(Clock::Memory).ok().map(|v| v.to_string()),
    );
    put(
        "util_pct",
        dev.utilization_rates().ok().map(|u| u.gpu.to_string()),
    );
    put(
        "mem_used_mib",
        dev.memory_info().ok().map(|m| (m.used >> 20).to_string()),
    );
    put("fan_pct", dev.fan_speed(0).ok().map(|v| v.to_string()));
    let energy_mj = dev.total_energy_consumption().ok();
    Reading { pairs, energy_mj }
}
