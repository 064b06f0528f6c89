//! `rigfleet-agent pool`: runs the validating test pool of `rigfleet_stratum::pool` on its own,
//! for the demo and for trying a miner by hand. Prints the URL, then a stats line every few
//! seconds, and stops cleanly on Ctrl-C or SIGTERM.

use crate::mine::format_rate;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rigfleet_engine::{Algorithm, Difficulty};
use rigfleet_stratum::pool::{
    self_signed, AuthPolicy, Pool, PoolConfig, PoolHandle, PoolStats, VardiffConfig,
};

/// Options of `pool`.
#[derive(Args)]
pub struct PoolArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3333")]
    listen: String,
    /// Algorithm shares are checked with: sha256d or scrypt.
    #[arg(long, default_value = "sha256d")]
    algo: String,
    /// Share difficulty of a new connection [default: 0.001 for sha256d, 0.1 for scrypt].
    #[arg(long)]
    difficulty: Option<f64>,
    /// Adjust each connection's difficulty toward --vardiff-target-secs per share.
    #[arg(long)]
    vardiff: bool,
    /// With --vardiff: wanted seconds between shares of one connection.
    #[arg(long, default_value_t = 5.0)]
    vardiff_target_secs: f64,
    /// Seconds between new jobs on the same block (clean_jobs=false); 0 for none.
    #[arg(long, default_value_t = 30)]
    job_interval_secs: u64,
    /// Seconds between simulated new blocks (clean_jobs=true, older jobs stale); 0 for none.
    #[arg(long, default_value_t = 0)]
    block_interval_secs: u64,
    /// Version bits miners may roll (BIP 310), in hex; 0 refuses version rolling.
    #[arg(long, default_value = "1fffe000")]
    version_mask: String,
    /// Bytes of extranonce2 miners fill in (1 to 16).
    #[arg(long, default_value_t = 4)]
    extranonce2_size: usize,
    /// Accept only this password in mining.authorize (any worker name).
    #[arg(long, env = "RIGFLEET_POOL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Serve stratum+ssl with a self-signed certificate made at start.
    #[arg(long)]
    tls: bool,
    /// With --tls: write the certificate (PEM) to this file, for clients to trust or pin.
    #[arg(long, requires = "tls")]
    tls_cert_out: Option<PathBuf>,
    /// Most connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 10)]
    stats_interval_secs: u64,
}

impl std::fmt::Debug for PoolArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so that the password never reaches a log.
        f.debug_struct("PoolArgs")
            .field("listen", &self.listen)
            .field("algo", &self.algo)
            .field("difficulty", &self.difficulty)
            .field("vardiff", &self.vardiff)
            .field("vardiff_target_secs", &self.vardiff_target_secs)
            .field("job_interval_secs", &self.job_interval_secs)
            .field("block_interval_secs", &self.block_interval_secs)
            .field("version_mask", &self.version_mask)
            .field("extranonce2_size", &self.extranonce2_size)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("tls_cert_out", &self.tls_cert_out)
            .field("max_connections", &self.max_connections)
            .field("stats_interval_secs", &self.stats_interval_secs)
            .finish()
    }
}

/// Turns the flags into pool settings (TLS is added by [`run`], since it makes a key).
fn config_from(args: &PoolArgs) -> Result<PoolConfig> {
    let algorithm: Algorithm = args.algo.parse()?;
    let mut config = PoolConfig::new(algorithm);
    config.listen = args.listen.clone();
    if let Some(d) = args.difficulty {
        config.difficulty = Difficulty::new(d).context("--difficulty must be a positive number")?;
    }
    if args.vardiff {
        if !(args.vardiff_target_secs.is_finite() && args.vardiff_target_secs > 0.0) {
            bail!("--vardiff-target-secs must be positive");
        }
        config.vardiff = Some(VardiffConfig::with_target_secs(args.vardiff_target_secs));
    }
    config.job_interval =
        (args.job_interval_secs > 0).then(|| Duration::from_secs(args.job_interval_secs));
    let mask = args.version_mask.trim_start_matches("0x");
    config.version_mask = u32::from_str_radix(mask, 16)
        .with_context(|| format!("--version-mask {:?} is not hex", args.version_mask))?;
    config.extranonce2_size = args.extranonce2_size;
    if let Some(p) = &args.password {
        config.auth = AuthPolicy::Password(p.clone());
    }
    config.max_connections = args.max_connections;
    if args.stats_interval_secs == 0 {
        bail!("--stats-interval-secs must be at least 1");
    }
    config.validate()?;
    Ok(config)
}

pub fn run(args: PoolArgs) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let mut config = config_from(&args)?;
    let mut certificate_pem = None;
    if args.tls {
        let identity = self_signed(&["localhost", "127.0.0.1", "::1"])?;
        config.tls = Some(identity.server_config);
        certificate_pem = Some(identity.certificate_pem);
    }
    // Two workers are plenty: the pool hashes one header per share.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args, config, certificate_pem))
}

async fn serve(args: PoolArgs, config: PoolConfig, certificate_pem: Option<String>) -> Result<()> {
    let algorithm = config.algorithm;
    let vardiff = config.vardiff.is_some();
    let pool = Pool::bind(config).await?;
    if let (Some(path), Some(pem)) = (&args.tls_cert_out, &certificate_pem) {
        std::fs::write(path, pem)
            .with_context(|| format!("writing the certificate to {}", path.display()))?;
        println!("certificate written to {}", path.display());
    }
    println!(
        "rigfleet test pool on {} ({algorithm}, difficulty {}{}, version mask {:08x})",
        pool.url(),
        pool.config().difficulty.value(),
        if vardiff { ", vardiff" } else { "" },
        pool.config().version_mask,
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let every = Duration::from_secs(args.stats_interval_secs);
    let mut stats_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let block_every = Duration::from_secs(args.block_interval_secs.max(1));
    let mut block_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + block_every, block_every);
    let mut last = (Instant::now(), pool.stats());
    loop {
        tokio::select! {
            signal = &mut shutdown => {
                signal?;
                break;
            }
            _ = stats_tick.tick() => {
                let now = (Instant::now(), pool.stats());
                println!("{}", stats_line(&pool, algorithm, &last, &now));
                last = now;
            }
            _ = block_tick.tick(), if args.block_interval_secs > 0 => {
                let job = pool.new_block();
                println!("new block at height {} (job {job})", pool.stats().height);
            }
        }
    }
    println!("shutting down");
    pool.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; an error if the handlers cannot be installed.
async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// Hashes one difficulty-1 share stands for: 2^32 for SHA-256d; Scrypt pools divide by 2^16.
fn hashes_per_diff1(algorithm: Algorithm) -> f64 {
    match algorithm {
        Algorithm::Sha256d => 2f64.powi(32),
        Algorithm::Scrypt => 2f64.powi(16),
    }
}

/// One status line: connections, shares (with the change since the last line) and the hash
/// rate the accepted work implies over the interval.
fn stats_line(
    pool: &PoolHandle,
    algorithm: Algorithm,
    last: &(Instant, PoolStats),
    now: &(Instant, PoolStats),
) -> String {
    let (t0, s0) = last;
    let (t1, s1) = now;
    let (a, b) = (s0.totals(), s1.totals());
    let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
    let rate = (b.accepted_work - a.accepted_work).max(0.0) * hashes_per_diff1(algorithm) / secs;
    let rejected: Vec<String> = b
        .rejected
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect();
    format!(
        "{}: {} conn, {} workers, height {}, job {}; accepted {} (+{}), rejected {} [{}], stale {}, best {:.4}, ~{}",
        pool.local_addr(),
        s1.connections,
        s1.workers.len(),
        s1.height,
        s1.current_job_id,
        b.accepted,
        b.accepted.saturating_sub(a.accepted),
        b.rejected_total(),
        rejected.join(" "),
        b.stale,
        b.best_share_difficulty,
        format_rate(rate),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: PoolArgs,
    }

    fn parse(argv: &[&str]) -> Result<PoolConfig> {
        let wrap = Wrap::try_parse_from(std::iter::once("pool").chain(argv.iter().copied()))?;
        config_from(&wrap.args)
    }

    #[test]
    fn flags_become_pool_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3333");
        assert_eq!(c.algorithm, Algorithm::Sha256d);
        assert_eq!(c.version_mask, 0x1fff_e000);
        assert_eq!(c.job_interval, Some(Duration::from_secs(30)));
        assert!(c.vardiff.is_none());
        let c = parse(&[
            "--algo",
            "scrypt",
            "--difficulty",
            "0.5",
            "--vardiff",
            "--vardiff-target-secs",
            "2",
            "--job-interval-secs",
            "0",
            "--version-mask",
            "0x00ff0000",
            "--password",
            "pw",
        ])
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Scrypt);
        assert_eq!(c.difficulty.value(), 0.5);
        assert_eq!(c.vardiff.unwrap().target_share_secs, 2.0);
        assert_eq!(c.job_interval, None);
        assert_eq!(c.version_mask, 0x00ff_0000);
        assert_eq!(c.auth, AuthPolicy::Password("pw".into()));
    }

    #[test]
    fn bad_flags_are_errors() {
        for argv in [
            &["--algo", "x11"][..],
            &["--difficulty", "0"],
            &["--difficulty", "-1"],
            &["--version-mask", "zz"],
            &["--extranonce2-size", "0"],
            &["--vardiff", "--vardiff-target-secs", "0"],
            &["--stats-interval-secs", "0"],
            &["--tls-cert-out", "/tmp/x.pem"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn rates_are_printed_with_a_prefix() {
        assert_eq!(format_rate(0.0), "0.00 H/s");
        assert_eq!(format_rate(12_340.0), "12.34 kH/s");
        assert_eq!(format_rate(5.5e9), "5.50 GH/s");
        assert_eq!(format_rate(2e21), "2000000.00 PH/s");
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let wrap = Wrap::try_parse_from(["pool", "--password", "hunter2"]).unwrap();
        assert!(!format!("{:?}", wrap.args).contains("hunter2"));
    }
}
