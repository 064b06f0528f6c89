//! `rigfleet-agent simulate`: many agents in one process speaking the real protocol to a server
//! (load tests, the demo). Each one enrolls once (its identity kept under `<state-dir>/sim-<i>/`
//! so a rerun reuses it), then runs the real link, handshake, batching and order checks over a
//! synthetic rig whose unacknowledged samples live in memory. Agents are tasks, not threads:
//! thousands fit in one process; the open-file limit is raised to its hard limit at start.

pub mod agent;
pub mod synth;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::sync::{watch, Semaphore};

use self::agent::{run_agent, SimShared, SimStats};
use crate::daemon::identity::Identity;
use crate::daemon::link::target::{LinkTls, ServerUrl};
use crate::daemon::link::LinkTimings;
use crate::enroll::{enroll, has_identity, EnrollOptions};

/// Options of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The server's URL.
    #[arg(long, value_name = "URL")]
    server: String,
    /// A (multi-use) enrollment token, used by agents not enrolled yet.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RIGFLEET_ENROLL_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Number of agents.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Folder of the agents' identities (`sim-<i>/` each).
    #[arg(long, value_name = "DIR", default_value = "rigfleet-sim")]
    state_dir: PathBuf,
    /// Devices per simulated rig.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Telemetry interval.
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Pin the server's certificate (`sha256:<hex>`).
    #[arg(long, value_name = "sha256:HEX")]
    tls_fingerprint: Option<String>,
    /// A PEM CA bundle to trust for the server's certificate.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    enroll_concurrency: usize,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Skew every simulated clock by this many seconds (negative: behind), in samples and in
    /// `hello`, as a rig with a wrong clock (fault harness).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_secs: i64,
    /// Each agent starts with this many seconds of samples already queued (times in the
    /// past, one per interval), as a rig that was offline and catches up.
    #[arg(long, default_value_t = 0)]
    backlog_secs: u64,
    /// Samples each agent takes per interval (100: a rig sending 100× the normal rate).
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// Write what every agent produced, had acknowledged and dropped, and the ack latency,
    /// as JSON to this file (every second and at the end; replaced atomically).
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
}

/// Everything [`simulate`] needs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Server URL.
    pub server: String,
    /// Token.
    pub token: String,
    /// Agents.
    pub count: usize,
    /// Identities folder.
    pub state_dir: PathBuf,
    /// Devices per rig.
    pub devices: usize,
    /// Telemetry interval.
    pub interval: Duration,
    /// TLS trust.
    pub tls: LinkTls,
    /// Enrollments at once.
    pub enroll_concurrency: usize,
    /// Link limits.
    pub timings: LinkTimings,
    /// Status line period.
    pub status_every: Duration,
    /// Faults to play and the report (the fault harness).
    pub faults: SimFaults,
}

/// What the fault harness asks of `simulate`.
#[derive(Debug, Clone, Default)]
pub struct SimFaults {
    /// Clock skew of every agent (ms).
    pub clock_skew_ms: i64,
    /// Seconds of samples queued at start.
    pub backlog: Duration,
    /// Samples per interval (0 or 1: one).
    pub burst: u32,
    /// Where the report goes.
    pub report: Option<PathBuf>,
}

/// The CLI command.
pub fn run(args: SimulateArgs) -> Result<()> {
    crate::mine::init_tracing();
    if args.count == 0 || args.devices == 0 || args.devices > 256 {
        bail!("--count must be at least 1 and --devices 1 to 256");
    }
    if !(1..=3600).contains(&args.interval_secs) {
        bail!("--interval-secs must be 1 to 3600");
    }
    if !(1..=1000).contains(&args.burst) {
        bail!("--burst must be 1 to 1000");
    }
    if args.clock_skew_secs.unsigned_abs() > 10 * 365 * 86_400 {
        bail!("--clock-skew-secs must be within ten years");
    }
    raise_fd_limit(args.count);
    let options = SimOptions {
        server: args.server,
        token: args.token,
        count: args.count,
        state_dir: args.state_dir,
        devices: args.devices,
        interval: Duration::from_secs(args.interval_secs),
        tls: LinkTls {
            ca_file: args.ca_file,
            cert_fingerprint: args.tls_fingerprint,
        },
        enroll_concurrency: args.enroll_concurrency.max(1),
        timings: LinkTimings::default(),
        status_every: Duration::from_secs(10),
        faults: SimFaults {
            clock_skew_ms: args.clock_skew_secs * 1000,
            backlog: Duration::from_secs(args.backlog_secs),
            burst: args.burst,
            report: args.report,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let duration = args.duration_secs.map(Duration::from_secs);
    runtime.block_on(async move {
        let stop = async move {
            match duration {
                Some(d) => tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = crate::mine::shutdown_signal() => {}
                },
                None => crate::mine::shutdown_signal().await,
            }
        };
        let stats = simulate(&options, stop).await?;
        println!("simulate: stopped; {}", status_line(&stats, options.count));
        Ok(())
    })
}

/// Enrolls (or loads) every agent, runs them until `stop` completes, and returns the counters.
pub async fn simulate(
    options: &SimOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Arc<SimStats>> {
    let url = ServerUrl::parse(&options.server).map_err(anyhow::Error::msg)?;
    let tls = options
        .tls
        .client_config(&url)
        .context("TLS settings for the server")?;
    let identities = enroll_all(options).await?;
    let stats = Arc::new(SimStats::default());
    let reports = Arc::new(Mutex::new(vec![AgentReport::default(); identities.len()]));
    let shared = SimShared {
        url,
        tls,
        timings: options.timings,
        interval: options.interval,
        devices: options.devices,
        stats: Arc::clone(&stats),
        clock_skew_ms: options.faults.clock_skew_ms,
        backlog: options.faults.backlog,
        burst: options.faults.burst.max(1),
        reports: Arc::clone(&reports),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(identities.len());
    for (i, (identity, dir)) in identities.into_iter().enumerate() {
        tasks.push(tokio::spawn(run_agent(
            i,
            identity,
            dir,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    println!("simulate: {} agents started", tasks.len());
    tokio::pin!(stop);
    let mut status = tokio::time::interval(options.status_every);
    status.tick().await;
    let mut report_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = status.tick() => println!("simulate: {}", status_line(&stats, options.count)),
            _ = report_tick.tick(), if options.faults.report.is_some() => {
                if let Some(path) = &options.faults.report {
                    write_report(path, &stats, &reports);
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(path) = &options.faults.report {
        write_report(path, &stats, &reports);
    }
    Ok(stats)
}

/// What one simulated agent did, for `--report`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentReport {
    /// Its rig.
    pub rig_id: String,
    /// Its stream.
    pub stream_id: String,
    /// Highest seq produced (every seq from 1 up to it was made).
    pub produced: u64,
    /// Highest seq the server acknowledged.
    pub acked: u64,
    /// Samples dropped unacknowledged to the store's bound.
    pub dropped: u64,
    /// Highest seq dropped.
    pub dropped_through: u64,
}

/// The whole report: agents, totals and the ack latency (sample taken → acknowledged, backlog
/// samples not counted) over every agent.
#[derive(Debug, serde::Serialize)]
struct Report<'a> {
    agents: &'a [AgentReport],
    samples_sent: u64,
    samples_acked: u64,
    reconnects: u64,
    ack_latency_count: usize,
    ack_latency_p50_ms: Option<u32>,
    ack_latency_p99_ms: Option<u32>,
    ack_latency_max_ms: Option<u32>,
}

fn write_report(path: &Path, stats: &SimStats, reports: &Mutex<Vec<AgentReport>>) {
    let mut lat = stats
        .ack_latencies_ms
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let q = |f: f64| -> Option<u32> {
        let i = ((lat.len() as f64 * f).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(i).copied()
    };
    let agents = reports.lock().map(|r| r.clone()).unwrap_or_default();
    let report = Report {
        agents: &agents,
        samples_sent: stats.samples_sent.load(Ordering::Relaxed),
        samples_acked: stats.samples_acked.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        ack_latency_count: lat.len(),
        ack_latency_p50_ms: q(0.5),
        ack_latency_p99_ms: q(0.99),
        ack_latency_max_ms: lat.last().copied(),
    };
    let Ok(text) = serde_json::to_string(&report) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "Cannot write the simulate report");
    }
}

/// `connected 980/1000, samples sent …` for the status line.
pub fn status_line(stats: &SimStats, count: usize) -> String {
    format!(
        "connected {}/{count}, samples sent {}, acked {}, reconnects {}, configs applied {}, commands {}, orders refused {}",
        stats.connected.load(Ordering::Relaxed),
        stats.samples_sent.load(Ordering::Relaxed),
        stats.samples_acked.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        stats.configs_applied.load(Ordering::Relaxed),
        stats.commands.load(Ordering::Relaxed),
        stats.orders_refused.load(Ordering::Relaxed),
    )
}

async fn enroll_all(options: &SimOptions) -> Result<Vec<(Identity, PathBuf)>> {
    let gate = Arc::new(Semaphore::new(options.enroll_concurrency));
    let mut tasks = Vec::with_capacity(options.count);
    for i in 0..options.count {
        let dir = options.state_dir.join(format!("sim-{i}"));
        let gate = Arc::clone(&gate);
        let enroll_options = EnrollOptions {
            server: options.server.clone(),
            token: options.token.clone(),
            state_dir: dir.clone(),
            tls: options.tls.clone(),
            hostname: format!("sim-{i}"),
            rig_name: format!("sim-{i}"),
            devices: synth::descriptors(options.devices),
            force: false,
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            load_or_enroll(&dir, &enroll_options)
                .await
                .map(|id| (id, dir))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut enrolled = 0usize;
    for (i, t) in tasks.into_iter().enumerate() {
        let (identity, dir, fresh) = t
            .await
            .context("enrollment task")?
            .with_context(|| format!("agent sim-{i}"))
            .map(|((id, fresh), dir)| (id, dir, fresh))?;
        enrolled += usize::from(fresh);
        out.push((identity, dir));
    }
    println!(
        "simulate: {} agents ready ({} enrolled now, {} reused)",
        out.len(),
        enrolled,
        out.len() - enrolled
    );
    Ok(out)
}

/// The saved identity, or a fresh enrollment; `true` when enrolled now.
async fn load_or_enroll(dir: &Path, options: &EnrollOptions) -> Result<(Identity, bool)> {
    if has_identity(dir) {
        return Ok((Identity::load(dir)?, false));
    }
    Ok((enroll(options).await?.identity, true))
}

/// Raises the soft open-file limit to the hard one when `agents` sockets would not fit.
fn raise_fd_limit(agents: usize) {
    let need = agents as u64 + 256;
    let Some((soft, hard)) = open_file_limits() else {
        return;
    };
    if soft >= need {
        return;
    }
    if hard > soft {
        let lim = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we pass and touches no other memory.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    match open_file_limits() {
        Some((soft, _)) if soft >= need => {
            tracing::info!(limit = soft, "Open-file limit raised");
        }
        Some((soft, hard)) => tracing::warn!(
            soft,
            hard,
            need,
            "The open-file limit is below what {agents} agents need; raise it (ulimit -n)"
        ),
        None => {}
    }
}

/// Soft and hard `Max open files` from `/proc/self/limits`.
fn open_file_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| match s {
        Some("unlimited") => Some(u64::MAX),
        Some(n) => n.parse().ok(),
        None => None,
    };
    Some((parse(nums.next())?, parse(nums.next())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limits_are_readable() {
        let (soft, hard) = open_file_limits().expect("linux /proc");
        assert!(soft <= hard && soft > 0);
    }
}
