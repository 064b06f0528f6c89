//! `rigfleet-agent mine`: the standalone miner. Mines on this machine's CPU with the engine
//! against Stratum pools (with backups), prints a status line every few seconds and each share's
//! fate, and stops cleanly on Ctrl-C or SIGTERM. No server, no config file: everything comes
//! from flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rigfleet_engine::device::cpu::{CpuConfig, CpuDevice};
use rigfleet_engine::device::event_channel;
use rigfleet_engine::{Algorithm, Miner};
use rigfleet_stratum::client::{
    forward_shares, Client, ClientConfig, ClientEvent, ClientHandle, PoolConfig, PoolOptions,
};
use rigfleet_stratum::shares::ShareOutcome;
use rigfleet_stratum::transport::{Scheme, TlsOptions};
use tokio::sync::broadcast::error::RecvError;

/// Options of `mine`.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// Pool URL: stratum+tcp://host:port or stratum+ssl://host:port.
    #[arg(long, value_name = "URL")]
    pool: String,
    /// Worker name, usually WALLET.worker.
    #[arg(long, short = 'u', value_name = "WALLET.WORKER")]
    user: String,
    /// Pool password (many pools ignore it).
    #[arg(long, short = 'p', default_value = "x")]
    pass: String,
    /// Algorithm: sha256d or scrypt.
    #[arg(long, default_value = "sha256d")]
    algo: String,
    /// A backup pool (repeatable, tried in the order given), with the same user and password.
    /// Mining returns to the first pool when it is healthy again.
    #[arg(long = "backup-pool", value_name = "URL")]
    backup_pools: Vec<String>,
    /// CPU worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Ask the pools for this share difficulty (mining.suggest_difficulty).
    #[arg(long, value_name = "D")]
    suggest_difficulty: Option<f64>,
    /// Accept exactly the TLS certificate with this SHA-256 fingerprint (64 hex digits, colons
    /// allowed) on stratum+ssl pools: how to trust a self-signed pool.
    #[arg(long, value_name = "SHA256HEX", conflicts_with = "ca_file")]
    pin_cert: Option<String>,
    /// PEM file of extra CA certificates trusted for stratum+ssl pools.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Do not ask pools for version rolling (BIP 310).
    #[arg(long)]
    no_version_rolling: bool,
    /// Send mining.extranonce.subscribe (some pools and proxies want it).
    #[arg(long)]
    extranonce_subscribe: bool,
    /// Seconds without a new job before failing over to the next pool.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    no_job_timeout: u64,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    status_every: u64,
}

/// Everything checked before any thread starts.
struct Plan {
    algorithm: Algorithm,
    threads: usize,
    client: ClientConfig,
    status_every: Duration,
}

impl Plan {
    fn from_args(args: &MineArgs) -> Result<Self> {
        let algorithm: Algorithm = args.algo.parse().context("--algo")?;
        let threads = match args.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => n,
            None => 0,
        };
        if let Some(d) = args.suggest_difficulty {
            if !(d.is_finite() && d > 0.0) {
                bail!("--suggest-difficulty must be a positive number");
            }
        }
        if args.status_every == 0 || args.no_job_timeout == 0 {
            bail!("--status-every and --no-job-timeout must be at least 1 second");
        }
        let pin_sha256 = args
            .pin_cert
            .as_deref()
            .map(TlsOptions::parse_fingerprint)
            .transpose()
            .context("--pin-cert")?;
        let options = PoolOptions {
            version_rolling: !args.no_version_rolling,
            suggest_difficulty: args.suggest_difficulty,
            extranonce_subscribe: args.extranonce_subscribe,
            submit_stale: false,
            tls: TlsOptions {
                pin_sha256,
                ca_file: args.ca_file.clone(),
            },
        };
        let urls = std::iter::once(("--pool", &args.pool))
            .chain(args.backup_pools.iter().map(|u| ("--backup-pool", u)));
        let mut pools = Vec::new();
        for (priority, (flag, url)) in urls.enumerate() {
            let mut pool = PoolConfig::new(url, args.user.clone(), args.pass.clone())
                .with_context(|| format!("{flag} {url}"))?;
            pool.priority = priority as u32;
            pool.options = options.clone();
            pools.push(pool);
        }
        if (pin_sha256.is_some() || args.ca_file.is_some())
            && !pools.iter().any(|p| p.url.scheme == Scheme::Tls)
        {
            tracing::warn!("--pin-cert/--ca-file given but no pool uses stratum+ssl");
        }
        let mut client = ClientConfig::new(pools, algorithm);
        client.timeouts.no_job = Duration::from_secs(args.no_job_timeout);
        Ok(Self {
            algorithm,
            threads,
            client,
            status_every: Duration::from_secs(args.status_every),
        })
    }
}

pub fn run(args: MineArgs) -> Result<()> {
    init_tracing();
    let plan = Plan::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(mine(plan))
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`. Shared with `run`.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (by a caller embedding us) is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn mine(plan: Plan) -> Result<()> {
    let (device_events, device_event_rx) = event_channel();
    let cpu = CpuDevice::new(
        CpuConfig {
            threads: plan.threads,
            ..CpuConfig::new(plan.algorithm)
        },
        device_events,
    )
    .context("cannot start the CPU device")?;
    let (share_tx, share_rx) = std::sync::mpsc::channel();
    let miner = Arc::new(
        Miner::new(vec![Box::new(cpu)], device_event_rx, share_tx)
            .context("cannot start the miner")?,
    );
    let shares = forward_shares(share_rx).context("cannot start the share forwarding thread")?;
    let client = Client::new(plan.client, miner.clone(), shares).context("pool configuration")?;
    let handle = client.handle();
    let mut events = handle.subscribe();
    let stats = miner.stats();
    if let Some(device) = stats.devices.first() {
        println!(
            "mining {} on {} ({} threads, {} kernel)",
            plan.algorithm, device.info.name, device.info.workers, device.info.path
        );
    }

    let client_task = client.run(shutdown_signal());
    tokio::pin!(client_task);
    let mut ticker = tokio::time::interval(plan.status_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = &mut client_task => break,
            _ = ticker.tick() => println!("{}", status_line(&miner, &handle)),
            event = events.recv() => match event {
                Ok(event) => print_event(&event),
                Err(RecvError::Lagged(n)) => println!("({n} events skipped)"),
                Err(RecvError::Closed) => {}
            },
        }
    }
    println!("stopped: {}", status_line(&miner, &handle));
    let latency = handle.snapshot().clean_job_latency;
    if latency.count > 0 {
        println!(
            "clean job switches: {}, notify to devices: last {:?}, avg {:?}, max {:?}",
            latency.count,
            latency.last,
            latency.avg(),
            latency.max
        );
    }
    // The client has let go of the miner; dropping the last handle joins the hashing threads.
    drop(miner);
    Ok(())
}

/// Ctrl-C, or SIGTERM from systemd or `kill`. Shared with `run`.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; Ctrl-C still works");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                tracing::warn!(%error, "Cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        () = terminate => {}
    }
    println!("stopping…");
}

fn print_event(event: &ClientEvent) {
    match event {
        ClientEvent::Share {
            pool,
            job_id,
            outcome,
            difficulty,
        } => {
            let mark = match outcome {
                ShareOutcome::Accepted => "accepted",
                ShareOutcome::Rejected(_) => "REJECTED",
                ShareOutcome::Stale(_) => "stale",
                ShareOutcome::Dropped => "dropped",
                ShareOutcome::Unanswered => "unanswered",
            };
            let detail = match outcome {
                ShareOutcome::Rejected(e) => format!(": {e}"),
                _ => String::new(),
            };
            println!(
                "share {mark}{detail} (difficulty {}, job {job_id}, pool #{})",
                format_difficulty(*difficulty),
                pool.index
            );
        }
        ClientEvent::Switched { to, reason, .. } => println!("now mining on {to} ({reason})"),
        ClientEvent::Idle { reason } => println!("idle: {reason}"),
        ClientEvent::PoolMessage { pool, text } => println!("message from {pool}: {text}"),
        _ => {}
    }
}

/// One status line: hash rates, shares, pool.
fn status_line(miner: &Miner, handle: &ClientHandle) -> String {
    let rates = miner.stats().rates;
    let snap = handle.snapshot();
    let (mut accepted, mut rejected, mut stale) = (0, 0, 0);
    for p in &snap.pools {
        accepted += p.shares.accepted;
        rejected += p.shares.rejected_total();
        stale += p.shares.stale;
    }
    let pool = match snap.current_pool() {
        Some(p) => format!(
            "{} ({}) diff {}",
            p.url,
            p.state,
            p.difficulty
                .map_or_else(|| "-".to_string(), format_difficulty)
        ),
        None => "none".to_string(),
    };
    format!(
        "5s {} | 1m {} | A {accepted} R {rejected} S {stale} | pool {pool}",
        format_rate(rates.avg_5s_hps),
        format_rate(rates.avg_1m_hps),
    )
}

/// A hash rate with a readable unit (`12.35 MH/s`). Shared with `run`.
pub(crate) fn format_rate(hps: f64) -> String {
    const UNITS: [&str; 6] = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s"];
    let mut value = hps.max(0.0);
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn format_difficulty(d: f64) -> String {
    if d >= 1000.0 || d == d.trunc() {
        format!("{d:.0}")
    } else {
        format!("{d:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: MineArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("mine").chain(argv.iter().copied()))?;
        Plan::from_args(&cli.args)
    }

    #[test]
    fn pools_are_ordered_primary_first() {
        let p = plan(&[
            "--pool",
            "stratum+tcp://a:3333",
            "--user",
            "w.1",
            "--backup-pool",
            "stratum+tcp://b:3333",
            "--backup-pool",
            "stratum+ssl://c:443",
            "--pin-cert",
            &"ab".repeat(32),
            "--suggest-difficulty",
            "0.01",
        ])
        .unwrap();
        let hosts: Vec<(&str, u32)> = p
            .client
            .pools
            .iter()
            .map(|p| (p.url.host.as_str(), p.priority))
            .collect();
        assert_eq!(hosts, [("a", 0), ("b", 1), ("c", 2)]);
        assert!(p
            .client
            .pools
            .iter()
            .all(|p| p.user == "w.1" && p.password == "x"));
        assert_eq!(p.client.pools[2].options.tls.pin_sha256, Some([0xab; 32]));
        assert_eq!(p.client.pools[0].options.suggest_difficulty, Some(0.01));
        assert_eq!(p.algorithm, Algorithm::Sha256d);
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        for (argv, needle) in [
            (vec!["--pool", "pool:3333", "--user", "w"], "no scheme"),
            (
                vec!["--pool", "stratum+tcp://pool", "--user", "w"],
                "no port",
            ),
            (
                vec![
                    "--pool",
                    "stratum+tcp://a:1",
                    "--user",
                    "w",
                    "--backup-pool",
                    "http://b:1",
                ],
                "--backup-pool http://b:1",
            ),
            (
                vec![
                    "--pool",
                    "stratum+tcp://a:1",
                    "--user",
                    "w",
                    "--algo",
                    "x11",
                ],
                "--algo",
            ),
            (
                vec![
                    "--pool",
                    "stratum+tcp://a:1",
                    "--user",
                    "w",
                    "--threads",
                    "0",
                ],
                "--threads",
            ),
            (
                vec![
                    "--pool",
                    "stratum+tcp://a:1",
                    "--user",
                    "w",
                    "--pin-cert",
                    "abc",
                ],
                "--pin-cert",
            ),
        ] {
            let err = plan(&argv).err().expect("refused");
            let text = format!("{err:#}");
            assert!(text.contains(needle), "{argv:?}: {text}");
        }
    }

    #[test]
    fn rates_and_difficulties_read_well() {
        assert_eq!(format_rate(0.0), "0.00 H/s");
        assert_eq!(format_rate(12_345_678.0), "12.35 MH/s");
        assert_eq!(format_difficulty(0.001), "0.0010");
        assert_eq!(format_difficulty(64.0), "64");
    }
}
