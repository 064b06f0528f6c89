//! `rigfleet-agent bench`: hash rate of the engine's CPU device per thread count and code path,
//! and how fast a new job reaches the workers. Numbers are printed, never asserted.

use crate::mine::format_rate;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rigfleet_engine::calibrate;
use rigfleet_engine::device::cpu::{CpuConfig, CpuDevice};
use rigfleet_engine::device::event_channel;
use rigfleet_engine::test_vectors::{BITCOIN_GENESIS, LITECOIN_GENESIS};
use rigfleet_engine::{Algorithm, Miner, NonceRange, Share, Target, Work};

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Algorithm to measure: sha256d or scrypt.
    #[arg(long, default_value = "sha256d")]
    algo: String,
    /// Worker threads; without it, every count from 1 to the number of cores is measured.
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Kernel path (`portable`, `avx2`, `shani`, `avx512`…), or `all` for every path this CPU
    /// runs; default: the path mining would use.
    #[arg(long)]
    path: Option<String>,
    /// Also measure how long a new job takes to reach the workers (time from the switch to the
    /// first share of a job whose first nonce is a known solution).
    #[arg(long)]
    switch_latency: bool,
    /// One JSON object per line and per measurement.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let algorithm: Algorithm = args.algo.parse()?;
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 86_400.0) {
        bail!("--seconds must be between 0 and 86400");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The calibration mining runs (issue 18): every path on one thread, then thread counts on the
    // fastest. The daemon caches this in its state folder; bench measures it afresh.
    let calibration = calibrate::calibrate(algorithm, cores, calibrate::Budget::default());
    print_calibration(&calibration, args.json);
    let paths: Vec<String> = match args.path.as_deref() {
        Some("all") => algorithm
            .kernels()
            .iter()
            .map(|k| k.path().to_string())
            .collect(),
        Some(path) => vec![algorithm.kernel(path)?.path().to_string()],
        None => vec![calibration.path.clone()],
    };
    let thread_counts: Vec<usize> = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => vec![n],
        None => (1..=cores).collect(),
    };
    for path in &paths {
        for &threads in &thread_counts {
            let m = measure_rate(
                algorithm,
                path,
                threads,
                Duration::from_secs_f64(args.seconds),
            )?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "algo": algorithm.id(),
                        "threads": threads,
                        "seconds": m.seconds,
                        "hashes": m.hashes,
                        "hashes_per_second": m.hashes as f64 / m.seconds,
                        "path": path,
                    })
                );
            } else {
                println!(
                    "{:<8} {:<14} {:>2} thread{} {:>12}  ({} hashes in {:.2} s)",
                    algorithm.id(),
                    path,
                    threads,
                    if threads == 1 { " " } else { "s" },
                    format_rate(m.hashes as f64 / m.seconds),
                    m.hashes,
                    m.seconds
                );
            }
        }
        if args.switch_latency {
            let threads = *thread_counts.last().unwrap_or(&1);
            let samples = measure_switch(algorithm, path, threads, 20)?;
            let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let p50 = ms[ms.len() / 2];
            let max = ms[ms.len() - 1];
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "algo": algorithm.id(),
                        "measure": "switch_latency",
                        "threads": threads,
                        "path": path,
                        "samples": ms.len(),
                        "p50_ms": p50,
                        "max_ms": max,
                    })
                );
            } else {
                println!(
                    "{:<8} {:<14} {:>2} threads  new job to first share: p50 {:.2} ms, max {:.2} ms ({} switches)",
                    algorithm.id(),
                    path,
                    threads,
                    p50,
                    max,
                    ms.len()
                );
            }
        }
    }
    Ok(())
}

fn print_calibration(c: &calibrate::Calibration, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "algo": c.algorithm.id(),
                "measure": "calibration",
                "cpu": calibrate::cpu_model(),
                "paths_hps_1_thread": c.paths.iter().map(|p| (p.path.clone(), p.hps.into())).collect::<serde_json::Map<_, _>>(),
                "threads_hps": c.thread_rates.iter().map(|r| (r.threads.to_string(), r.hps.into())).collect::<serde_json::Map<_, _>>(),
                "mining_path": c.path,
                "mining_threads": c.threads,
            })
        );
        return;
    }
    println!(
        "calibration on {} ({}):",
        calibrate::cpu_model(),
        c.algorithm.id()
    );
    for p in &c.paths {
        let mark = if p.path == c.path {
            "  <- mining uses this path"
        } else {
            ""
        };
        println!(
            "  path {:<10} 1 thread  {:>12}{mark}",
            p.path,
            format_rate(p.hps)
        );
    }
    for r in &c.thread_rates {
        let mark = if r.threads == c.threads {
            "  <- mining uses this count"
        } else {
            ""
        };
        println!(
            "  {:<15} {:>2} threads {:>12}{mark}",
            c.path,
            r.threads,
            format_rate(r.hps)
        );
    }
}

struct Measurement {
    hashes: u64,
    seconds: f64,
}

fn cpu_miner(
    algorithm: Algorithm,
    path: &str,
    threads: usize,
) -> Result<(Miner, mpsc::Receiver<Share>)> {
    let (tx, rx) = event_channel();
    let config = CpuConfig {
        algorithm,
        threads,
        pin: true,
        path: Some(path.to_string()),
    };
    let device = CpuDevice::new(config, tx).context("starting the CPU device")?;
    let (share_tx, share_rx) = mpsc::channel();
    let miner = Miner::new(vec![Box::new(device)], rx, share_tx)?;
    Ok((miner, share_rx))
}

/// A header that changes on every call (as extranonce2 rolling does), with a difficulty-1 target
/// so that shares are rare and cost nothing.
fn rolling_source(algorithm: Algorithm) -> impl FnMut() -> Option<Work> + Send {
    let mut counter: u64 = 0;
    move || {
        counter += 1;
        let mut header = BITCOIN_GENESIS.header_with_nonce(0);
        header[36..44].copy_from_slice(&counter.to_le_bytes());
        let target = Target::from_nbits(0x1d00ffff).expect("BUG: constant nbits");
        Some(Work::new(
            format!("bench-{counter}"),
            algorithm,
            header,
            target,
        ))
    }
}

fn measure_rate(
    algorithm: Algorithm,
    path: &str,
    threads: usize,
    duration: Duration,
) -> Result<Measurement> {
    let (miner, _shares) = cpu_miner(algorithm, path, threads)?;
    miner.set_source(Box::new(rolling_source(algorithm)));
    // Let the workers reach full speed (and the clock settle) before counting.
    std::thread::sleep(Duration::from_millis(500));
    let start_hashes = miner.stats().devices[0].hashes_total;
    let start = Instant::now();
    std::thread::sleep(duration);
    let hashes = miner.stats().devices[0].hashes_total - start_hashes;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Measurement { hashes, seconds })
}

fn measure_switch(
    algorithm: Algorithm,
    path: &str,
    threads: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let (miner, shares) = cpu_miner(algorithm, path, threads)?;
    let block = match algorithm {
        Algorithm::Sha256d => BITCOIN_GENESIS,
        Algorithm::Scrypt => LITECOIN_GENESIS,
    };
    let target = Target::from_nbits(block.bits)?;
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Busy on a job with nothing to find, then switch to one whose first nonce is a block.
        miner.set_source(Box::new(rolling_source(algorithm)));
        std::thread::sleep(Duration::from_millis(100 + 7 * round as u64 % 50));
        while shares.try_recv().is_ok() {}
        let mut work = Work::new("switch", algorithm, block.header_with_nonce(0), target);
        work.nonce_range = NonceRange::new(block.nonce, block.nonce.saturating_add(1 << 20));
        let mut once = Some(work);
        let start = Instant::now();
        miner.set_source(Box::new(move || once.take()));
        loop {
            let share = shares
                .recv_timeout(Duration::from_secs(30))
                .context("no share after a job switch")?;
            if &*share.work.job_id == "switch" {
                samples.push(start.elapsed());
                break;
            }
        }
    }
    Ok(samples)
}
