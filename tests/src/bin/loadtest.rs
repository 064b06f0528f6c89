//! `loadtest`: the server under a simulated fleet, measured from outside.
//!
//! Starts the release `rigfleet-server` (SQLite or PostgreSQL) and `rigfleet-agent simulate`
//! as separate processes, waits until every simulated agent is connected, then for the run's
//! length samples the server's CPU time and RSS from /proc and reads its own histograms from
//! /metrics. At the end it checks in the database that every rig's telemetry is contiguous
//! (no sample lost or duplicated) and reports the database's growth. With `--storm` it also
//! kills the server with SIGKILL, restarts it and measures how long the fleet takes to return.
//!
//! Run through `scripts/loadtest.sh`, which builds the release binaries first.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::db::{RigFilter, Store};
use rigfleet_tests::agent_proc::workspace_binary;
use rigfleet_tests::server::try_http;

#[derive(Debug, Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Simulated rigs (one agent each).
    #[arg(long, default_value_t = 1000)]
    rigs: usize,
    /// Devices per rig.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Telemetry interval (s).
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Measured run length (s) after the fleet is connected.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Kill -9 the server after the run, restart it and time the fleet's return.
    #[arg(long)]
    storm: bool,
    /// After the run, change every rig's pools through the REST API and time until every
    /// rig has applied the new config.
    #[arg(long)]
    push: bool,
    /// Port for the server.
    #[arg(long, default_value_t = 18080)]
    port: u16,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn start_server(data: &Path, db_url: &str, port: u16, log: &Path) -> Result<Proc> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(workspace_binary("rigfleet-server"))
        .args([
            "--data-dir",
            data.to_str().context("path")?,
            "--database-url",
            db_url,
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Proc(child))
}

async fn metrics(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    match tokio::time::timeout(
        Duration::from_secs(10),
        try_http(addr, "GET", "/metrics", None, None),
    )
    .await
    {
        Ok(Ok((200, text))) => text,
        _ => String::new(),
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Quantile of a Prometheus histogram from its cumulative buckets (linear within a bucket).
fn quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if count > prev.1 {
                (target - prev.1) / (count - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + frac * (le - prev.0));
        }
        prev = (le, count);
    }
    None
}

/// Histogram quantile over the interval between two scrapes.
fn quantile_between(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let diff: String = after
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let key = l.rsplit_once(' ').map(|(k, _)| k).unwrap_or(l);
            let a: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let b: f64 = before
                .lines()
                .find(|x| x.starts_with(key) && x[key.len()..].starts_with(' '))
                .and_then(|x| x.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            format!("{key} {}\n", a - b)
        })
        .collect();
    quantile(&diff, name, q)
}

async fn wait_connected(port: u16, want: usize, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let m = metrics(port).await;
        if metric(&m, "rigfleet_agents_connected").is_some_and(|n| n as usize >= want) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

struct Contiguity {
    rigs: usize,
    stored: u64,
    gaps: usize,
    min_max_seq: u64,
}

async fn check_contiguity(store: &Store) -> Result<Contiguity> {
    let mut out = Contiguity {
        rigs: 0,
        stored: 0,
        gaps: 0,
        min_max_seq: u64::MAX,
    };
    let mut offset = 0;
    loop {
        let page = store
            .list_rigs(&RigFilter {
                limit: 500,
                offset,
                ..Default::default()
            })
            .await?;
        let n = page.items.len();
        for rig in page.items {
            let (count, min, max) = store.raw_seq_stats(rig.id).await?;
            out.rigs += 1;
            out.stored += count as u64;
            match (min, max) {
                (Some(min), Some(max)) if min == 1 && count as u64 == max - min + 1 => {
                    out.min_max_seq = out.min_max_seq.min(max);
                }
                _ => out.gaps += 1,
            }
        }
        if n < 500 {
            break;
        }
        offset += n as i64;
    }
    Ok(out)
}

/// Every rig, as the store lists them.
async fn all_rigs(store: &Store) -> Result<Vec<rigfleet_server::db::RigRow>> {
    let mut out = Vec::new();
    loop {
        let page = store
            .list_rigs(&RigFilter {
                limit: 1000,
                offset: out.len() as i64,
                ..Default::default()
            })
            .await?;
        let done = page.items.is_empty();
        out.extend(page.items);
        if done || out.len() as i64 >= page.total {
            return Ok(out);
        }
    }
}

/// A fleet-wide pool change as a script does it: one `PUT /api/v1/rigs/{rig}/config` per rig
/// (16 in flight), timed until every rig reports the new version applied.
async fn push_pools(store: &Store, port: u16, rigs: usize) -> Result<()> {
    use futures_util::StreamExt;
    let token = rigfleet_server::startup::create_api_token(
        store,
        "loadtest-push",
        rigfleet_server::db::Scope::Admin,
    )
    .await?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let targets: Vec<(String, u64)> = all_rigs(store)
        .await?
        .into_iter()
        .map(|r| (r.rig_uid, r.desired_version + 1))
        .collect();
    let body = r#"{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://pool-b.example.net:3333","user":"bc1qloadtestwallet.rig","password":"x"}],"devices":[]}"#;
    let started = Instant::now();
    let failures = futures_util::stream::iter(targets.iter())
        .map(|(uid, _)| {
            let token = token.clone();
            async move {
                let path = format!("/api/v1/rigs/{uid}/config");
                match try_http(addr, "PUT", &path, Some(&token), Some(body)).await {
                    Ok((200, _)) => 0usize,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(16)
        .fold(0, |n, f| async move { n + f })
        .await;
    let sent = started.elapsed();
    let want: std::collections::HashMap<&str, u64> =
        targets.iter().map(|(u, v)| (u.as_str(), *v)).collect();
    let (mut half, mut p99, mut all) = (None, None, None);
    while started.elapsed() < Duration::from_secs(300) {
        let applied = all_rigs(store)
            .await?
            .iter()
            .filter(|r| {
                r.applied_ok == Some(true)
                    && want
                        .get(r.rig_uid.as_str())
                        .is_some_and(|v| r.applied_version >= Some(*v))
            })
            .count();
        let t = started.elapsed();
        if applied * 2 >= targets.len() {
            half.get_or_insert(t);
        }
        if applied * 100 >= targets.len() * 99 {
            p99.get_or_insert(t);
        }
        if applied == targets.len() {
            all = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = |d: Option<Duration>| {
        d.map_or("not within 300 s".into(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    println!(
        "push: new pools to {} rigs ({rigs} expected), {failures} PUTs refused; every PUT answered in {:.2} s; applied by half {}, by 99 % {}, by all {}",
        targets.len(),
        sent.as_secs_f64(),
        secs(half),
        secs(p99),
        secs(all)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_nofile();
    let work = tempfile::tempdir()?;
    let data = work.path().join("server");
    let db = match args.backend.as_str() {
        "sqlite" => None,
        "postgres" => Some(
            TestDb::postgres(
                &std::env::var("RIGFLEET_TEST_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            )
            .await
            .context("PostgreSQL")?,
        ),
        other => bail!("--backend must be sqlite or postgres, not {other}"),
    };
    let db_url = match &db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", data.join("rigfleet.db").display()),
    };
    std::fs::create_dir_all(&data)?;
    let server_log = work.path().join("server.log");
    let mut server = start_server(&data, &db_url, args.port, &server_log)?;
    let url = format!("http://127.0.0.1:{}", args.port);
    if wait_connected(args.port, 0, Duration::from_secs(30))
        .await
        .is_none()
    {
        bail!(
            "server did not start: {}",
            std::fs::read_to_string(&server_log).unwrap_or_default()
        );
    }
    let token_out = Command::new(workspace_binary("rigfleet-server"))
        .args([
            "--data-dir",
            data.to_str().context("path")?,
            "--database-url",
            &db_url,
        ])
        .args([
            "token",
            "create",
            "--expires-in-hours",
            "0",
            "--note",
            "loadtest",
        ])
        .output()?;
    let token = String::from_utf8_lossy(&token_out.stdout)
        .lines()
        .find(|l| l.starts_with("rf1."))
        .context("token create printed no token")?
        .to_string();
    let sim_log = work.path().join("simulate.log");
    let sim_out = std::fs::File::create(&sim_log)?;
    let _sim = Proc(
        Command::new(workspace_binary("rigfleet-agent"))
            .args(["simulate", "--server", &url, "--token", &token])
            .args([
                "--count",
                &args.rigs.to_string(),
                "--devices",
                &args.devices.to_string(),
            ])
            .args(["--interval-secs", &args.interval.to_string()])
            .args([
                "--state-dir",
                work.path().join("sim").to_str().context("path")?,
            ])
            .env("RUST_LOG", "warn")
            .stdout(sim_out.try_clone()?)
            .stderr(sim_out)
            .stdin(Stdio::null())
            .spawn()?,
    );
    let Some(connect_time) = wait_connected(args.port, args.rigs, Duration::from_secs(600)).await
    else {
        bail!(
            "the fleet did not connect; simulate log:\n{}",
            std::fs::read_to_string(&sim_log).unwrap_or_default()
        );
    };
    println!(
        "backend {} | {} rigs × {} devices, telemetry every {} s",
        args.backend, args.rigs, args.devices, args.interval
    );
    println!(
        "fleet connected (enrollment included) in {:.1} s",
        connect_time.as_secs_f64()
    );
    let pid = server.0.id();
    let store = Store::open(&db_url).await?;
    let size_before = store.db_size_bytes().await?;
    let m_before = metrics(args.port).await;
    let ticks_before = cpu_ticks(pid)?;
    let started = Instant::now();
    let mut peak_rss = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid)? - ticks_before;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let m_after = metrics(args.port).await;
    let size_after = store.db_size_bytes().await?;
    let written = metric(&m_after, "rigfleet_telemetry_samples_written_total").unwrap_or(0.0)
        - metric(&m_before, "rigfleet_telemetry_samples_written_total").unwrap_or(0.0);
    let cpu = ticks as f64 / hz / elapsed * 100.0;
    println!(
        "measured {elapsed:.0} s: server CPU {cpu:.1}% of one core, RSS {:.1} MiB (peak {:.1} MiB)",
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!("samples written {written:.0} ({:.1}/s)", written / elapsed);
    for (label, name) in [
        (
            "ingest→durable",
            "rigfleet_telemetry_ingest_to_durable_seconds",
        ),
        ("write batch", "rigfleet_telemetry_write_batch_seconds"),
    ] {
        let p50 = quantile_between(&m_before, &m_after, name, 0.5).unwrap_or(f64::NAN);
        let p99 = quantile_between(&m_before, &m_after, name, 0.99).unwrap_or(f64::NAN);
        println!(
            "{label} latency p50 {:.1} ms, p99 {:.1} ms",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
    let growth = size_after.saturating_sub(size_before) as f64;
    println!(
        "database {:.1} MiB → {:.1} MiB: growth {:.2} MiB per rig per day at this rate",
        size_before as f64 / 1048576.0,
        size_after as f64 / 1048576.0,
        growth / args.rigs as f64 * 86400.0 / elapsed / 1048576.0
    );

    if args.push {
        push_pools(&store, args.port, args.rigs).await?;
    }

    if args.storm {
        let before = check_contiguity(&store).await?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = server.0.wait();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server = start_server(&data, &db_url, args.port, &server_log)?;
        let pid = server.0.id();
        let restart = Instant::now();
        let mut storm_peak = 0;
        let mut back = None;
        while restart.elapsed() < Duration::from_secs(180) {
            storm_peak = storm_peak.max(rss_kib(pid, "VmRSS:"));
            let m = metrics(args.port).await;
            if metric(&m, "rigfleet_agents_connected").unwrap_or(0.0) as usize >= args.rigs {
                back = Some(restart.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match back {
            Some(t) => println!("storm: kill -9 and restart: all {} agents back {:.1} s after the restart (server RSS peak {:.1} MiB)", args.rigs, t.as_secs_f64(), storm_peak as f64 / 1024.0),
            None => println!("storm: NOT all agents back within 180 s"),
        }
        tokio::time::sleep(Duration::from_secs(args.interval * 2)).await;
        let after = check_contiguity(&store).await?;
        println!(
            "storm: stored {} → {} samples; rigs with a gap: {} → {}",
            before.stored, after.stored, before.gaps, after.gaps
        );
    }
    // Stop the fleet first so nothing is mid-flight, then the server (clean shutdown flushes).
    drop(_sim);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let _ = server.0.wait();
    let c = check_contiguity(&store).await?;
    let expected_min = (elapsed as u64) / args.interval;
    println!(
        "loss check: {} rigs, {} samples stored, rigs with a gap or missing start: {} (must be 0), fewest samples per rig {} (≥ {} expected)",
        c.rigs, c.stored, c.gaps, c.min_max_seq, expected_min
    );
    store.close().await;
    if let Some(db) = db {
        db.cleanup().await;
    }
    Ok(())
}
