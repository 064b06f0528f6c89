//! The fault harness's pieces, shared by `faultharness` (the long runs, `scripts/faultharness.sh`)
//! and the short e2e tests (`tests/e2e/fault_*.rs`): the release-like server as a child process
//! that can be killed and restarted on the same data, a TCP relay to PostgreSQL that can be cut,
//! `rigfleet-agent simulate` with its `--report`, and the final comparison of what every agent
//! sent with what the database holds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::db::{Scope, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::agent_proc::workspace_binary;
use crate::server::try_http;

/// A database for a scenario: a SQLite file in the server's data folder, or a fresh
/// PostgreSQL database.
pub struct FaultDb {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The URL the harness itself reads through (never the relay).
    pub url: String,
    pg: Option<TestDb>,
}

impl FaultDb {
    /// SQLite in `data_dir`.
    pub fn sqlite(data_dir: &Path) -> FaultDb {
        FaultDb {
            backend: "sqlite",
            url: format!("sqlite://{}", data_dir.join("rigfleet.db").display()),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database, `None` when no PostgreSQL is reachable (a loud line says
    /// so; a panic when `RIGFLEET_REQUIRE_PG` is set).
    pub async fn postgres() -> Option<FaultDb> {
        let mut backends = rigfleet_server::db::test_db::test_backends().await;
        let pg = backends.pop().filter(|db| db.url.starts_with("postgres"));
        for db in backends {
            db.cleanup().await;
        }
        match pg {
            Some(db) => {
                // The server migrates it; the harness's store is not needed.
                Some(FaultDb {
                    backend: "postgres",
                    url: db.url.clone(),
                    pg: Some(db),
                })
            }
            None => {
                eprintln!(
                    "PostgreSQL is not reachable: the PostgreSQL half of this scenario did not run"
                );
                None
            }
        }
    }

    /// Drops the PostgreSQL database.
    pub async fn cleanup(mut self) {
        if let Some(db) = self.pg.take() {
            db.cleanup().await;
        }
    }
}

/// A free loopback port (bound and released; the server binds it a moment later).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `rigfleet-server` as a child process on a fixed port and data folder, so it can be killed
/// and started again where the agents look for it.
pub struct ServerProc {
    child: Option<Child>,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// The database URL it is given (maybe through a relay).
    pub db_url: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its output (appended over restarts).
    pub log: PathBuf,
    config: PathBuf,
    /// Times it was started.
    pub starts: u32,
}

impl ServerProc {
    /// Starts a server with 1 s telemetry on `db_url`, data in `data_dir`, and waits for
    /// /healthz.
    pub async fn start(data_dir: &Path, db_url: &str) -> Result<ServerProc> {
        std::fs::create_dir_all(data_dir)?;
        let config = data_dir
            .parent()
            .unwrap_or(data_dir)
            .join("faultharness-server.toml");
        std::fs::write(&config, "telemetry_interval_secs = 1\n")?;
        let port = free_port()?;
        let mut s = ServerProc {
            child: None,
            data_dir: data_dir.to_path_buf(),
            db_url: db_url.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: data_dir
                .parent()
                .unwrap_or(data_dir)
                .join("faultharness-server.log"),
            config,
            starts: 0,
        };
        s.restart().await?;
        Ok(s)
    }

    /// The URL agents use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts it (again) and waits up to 60 s for /healthz.
    pub async fn restart(&mut self) -> Result<Duration> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let started = Instant::now();
        let child = Command::new(workspace_binary("rigfleet-server"))
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--database-url", &self.db_url])
            .args(["--listen", &self.addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start rigfleet-server")?;
        self.child = Some(child);
        self.starts += 1;
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("the server exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(Ok((200, _))) = tokio::time::timeout(
                Duration::from_secs(2),
                try_http(self.addr, "GET", "/healthz", None, None),
            )
            .await
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the server did not answer within 60 s:\n{}",
            self.log_tail()
        )
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 20 s (SIGKILL after).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child; no memory is touched.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..200 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The last 4 KiB of its output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// An unlimited, never-expiring enrollment token (the server's own CLI on the same data).
    pub fn enroll_token(&self) -> Result<String> {
        let out = Command::new(workspace_binary("rigfleet-server"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--database-url", &self.db_url])
            .args(["token", "create", "--expires-in-hours", "0"])
            .args(["--note", "faultharness"])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("rf1."))
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "token create printed no token: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// GET/PUT/DELETE with a bearer token; (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        tokio::time::timeout(
            Duration::from_secs(10),
            try_http(self.addr, method, path, bearer, body),
        )
        .await
        .ok()?
        .ok()
    }

    /// /metrics text (empty when unreachable).
    pub async fn metrics(&self) -> String {
        match self.http("GET", "/metrics", None, None).await {
            Some((200, t)) => t,
            _ => String::new(),
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of an unlabelled metric, or of one series given its full label text
/// (`name{rig="…"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An admin API token written straight into the database (the harness is the operator).
pub async fn admin_token(db_url: &str) -> Result<String> {
    let store = Store::open(db_url).await?;
    let t =
        rigfleet_server::startup::create_api_token(&store, "faultharness", Scope::Admin).await?;
    store.close().await;
    Ok(t)
}

/// A TCP relay to `upstream` that can drop every connection and refuse new ones.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    /// Listens on a loopback port.
    pub async fn start(upstream: String) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut links) = l.lock() {
                    links.retain(|h| !h.is_finished());
                    links.push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        Ok(Relay {
            addr,
            down,
            links,
            accept,
        })
    }

    /// Open connections are cut, new ones closed at once.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    /// New connections pass again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `postgres://user@HOST:PORT/db?…` → (`HOST:PORT`, the URL with `relay` in its place).
pub fn through(url: &str, relay: SocketAddr) -> (String, String) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let start = url[start..].find('@').map_or(start, |i| start + i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].to_string();
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:5432")
    };
    (host, format!("{}{relay}{}", &url[..start], &url[end..]))
}

/// What one agent says it did: its stream, the highest seq it produced, the highest the server
/// acknowledged, and what it dropped itself.
#[derive(Debug, Clone, Default)]
pub struct AgentClaim {
    /// Rig uid.
    pub rig_id: String,
    /// Stream id.
    pub stream_id: String,
    /// Highest seq produced.
    pub produced: u64,
    /// Highest seq acknowledged.
    pub acked: u64,
    /// Highest seq the agent dropped unacknowledged (0: none).
    pub dropped_through: u64,
    /// Samples it could not queue at all (no seq; disk full).
    pub unqueued: u64,
}

/// `rigfleet-agent simulate` as a child process with a report file.
pub struct SimProc {
    child: Option<Child>,
    /// Its `--report`.
    pub report: PathBuf,
    /// Its output.
    pub log: PathBuf,
}

/// Options of one `simulate` run.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Agents.
    pub count: usize,
    /// Devices per rig.
    pub devices: usize,
    /// Seconds.
    pub interval_secs: u64,
    /// Seconds of backlog queued at start.
    pub backlog_secs: u64,
    /// Clock skew.
    pub clock_skew_secs: i64,
    /// Samples per interval.
    pub burst: u32,
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            count: 4,
            devices: 4,
            interval_secs: 1,
            backlog_secs: 0,
            clock_skew_secs: 0,
            burst: 1,
        }
    }
}

impl SimProc {
    /// Starts `simulate` against `server` with identities under `dir/name`.
    pub fn start(
        server: &str,
        token: &str,
        dir: &Path,
        name: &str,
        spec: &SimSpec,
    ) -> Result<SimProc> {
        let report = dir.join(format!("{name}.report.json"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(workspace_binary("rigfleet-agent"))
            .args(["simulate", "--server", server, "--token", token])
            .args(["--count", &spec.count.to_string()])
            .args(["--devices", &spec.devices.to_string()])
            .args(["--interval-secs", &spec.interval_secs.to_string()])
            .args(["--backlog-secs", &spec.backlog_secs.to_string()])
            .args(["--burst", &spec.burst.to_string()])
            .arg(format!("--clock-skew-secs={}", spec.clock_skew_secs))
            .arg("--state-dir")
            .arg(dir.join(name))
            .arg("--report")
            .arg(&report)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start rigfleet-agent simulate")?;
        Ok(SimProc {
            child: Some(child),
            report,
            log,
        })
    }

    /// The report as JSON (`None` before the first one is written).
    pub fn read(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.report).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// What every agent claims, from the report.
    pub fn claims(&self) -> Vec<AgentClaim> {
        let Some(v) = self.read() else {
            return Vec::new();
        };
        v["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| AgentClaim {
                        rig_id: x["rig_id"].as_str().unwrap_or_default().to_string(),
                        stream_id: x["stream_id"].as_str().unwrap_or_default().to_string(),
                        produced: x["produced"].as_u64().unwrap_or(0),
                        acked: x["acked"].as_u64().unwrap_or(0),
                        dropped_through: x["dropped_through"].as_u64().unwrap_or(0),
                        unqueued: 0,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Agents whose rig is known, acked and produced figures all present.
    pub fn ready(&self, count: usize) -> bool {
        let c = self.claims();
        c.len() == count && c.iter().all(|a| !a.rig_id.is_empty())
    }

    /// Whether every agent has everything it produced acknowledged.
    pub fn caught_up(&self) -> bool {
        let c = self.claims();
        !c.is_empty()
            && c.iter()
                .all(|a| !a.rig_id.is_empty() && a.produced > 0 && a.acked >= a.produced)
    }

    /// Ack latency p50/p99/max (ms) and count, over the run.
    pub fn latency(&self) -> (Option<u64>, Option<u64>, Option<u64>, u64) {
        let Some(v) = self.read() else {
            return (None, None, None, 0);
        };
        (
            v["ack_latency_p50_ms"].as_u64(),
            v["ack_latency_p99_ms"].as_u64(),
            v["ack_latency_max_ms"].as_u64(),
            v["ack_latency_count"].as_u64().unwrap_or(0),
        )
    }

    /// SIGTERM and wait (the final report is written on the way out).
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child; no memory is touched.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Its output.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the real agent's queue says (`<state>/telemetry-queue/queue.json`) for its one rig.
pub fn real_agent_claim(state_dir: &Path, rig_id: &str) -> Result<AgentClaim> {
    let path = state_dir.join("telemetry-queue").join("queue.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(AgentClaim {
        rig_id: rig_id.to_string(),
        stream_id: v["stream_id"].as_str().unwrap_or_default().to_string(),
        produced: v["next_seq"].as_u64().unwrap_or(1).saturating_sub(1),
        acked: v["acked_seq"].as_u64().unwrap_or(0),
        dropped_through: v["dropped_through_seq"].as_u64().unwrap_or(0),
        unqueued: v["unqueued_total"].as_u64().unwrap_or(0),
    })
}

/// The comparison of what agents sent with what the database holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Agents compared.
    pub agents: usize,
    /// Seqs produced (every seq 1..=produced per agent).
    pub sent: u64,
    /// Seqs acknowledged.
    pub acked: u64,
    /// Rows stored in the agents' streams.
    pub stored: u64,
    /// Acknowledged seqs not stored (must be 0).
    pub missing_acked: u64,
    /// Produced seqs not stored, minus what the agent dropped itself.
    pub missing: u64,
    /// Seqs stored more than once (must be 0).
    pub duplicated: u64,
    /// Seqs the agents dropped themselves.
    pub dropped: u64,
    /// Rows stored in a stream no agent claims (must be 0).
    pub foreign: u64,
    /// Rows above the highest seq the agent reported producing: 0 once its final report is
    /// written; a report read while it runs lags by up to a second.
    pub ahead: u64,
    /// Seqs produced but not acknowledged when the report was written (in flight when the
    /// agent stopped): not a loss, they were never promised.
    pub in_flight: u64,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, o: &Tally) {
        self.agents += o.agents;
        self.sent += o.sent;
        self.acked += o.acked;
        self.stored += o.stored;
        self.missing_acked += o.missing_acked;
        self.missing += o.missing;
        self.duplicated += o.duplicated;
        self.dropped += o.dropped;
        self.foreign += o.foreign;
        self.ahead += o.ahead;
        self.in_flight += o.in_flight;
    }
}

/// Compares `claims` with `Store::stored_seqs` of each rig.
pub async fn compare(store: &Store, claims: &[AgentClaim]) -> Result<Tally> {
    let mut t = Tally::default();
    for c in claims {
        let rig = store
            .rig_by_uid(&c.rig_id)
            .await?
            .with_context(|| format!("rig {} is not in the database", c.rig_id))?;
        let rows = store.stored_seqs(rig.id).await?;
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for (stream, seq) in rows {
            if stream != c.stream_id {
                t.foreign += 1;
                continue;
            }
            if seq > c.produced {
                t.ahead += 1;
                continue;
            }
            *seen.entry(seq).or_default() += 1;
        }
        t.agents += 1;
        t.sent += c.produced;
        t.acked += c.acked;
        t.in_flight += c.produced.saturating_sub(c.acked.max(c.dropped_through));
        t.stored += seen.values().map(|n| u64::from(*n)).sum::<u64>();
        t.duplicated += seen
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum::<u64>();
        for seq in 1..=c.produced {
            if seen.contains_key(&seq) {
                continue;
            }
            if seq <= c.dropped_through {
                t.dropped += 1;
                continue;
            }
            t.missing += 1;
            if seq <= c.acked {
                t.missing_acked += 1;
            }
        }
    }
    Ok(t)
}

/// Waits until `sim` has every produced sample acknowledged (or `timeout`); how long it took.
pub async fn wait_caught_up(sim: &SimProc, timeout: Duration) -> Option<Duration> {
    // Agents keep producing a sample a second, and a report written just after a new sample
    // never shows it acknowledged: if the report's tick falls right after the samples' tick,
    // "acked ≥ produced" at one instant may never be seen. Caught up means every agent's
    // acknowledgement has reached what it had produced at least LAG earlier (or everything, if
    // it is seen at once).
    const LAG: Duration = Duration::from_secs(2);
    let start = Instant::now();
    let mut seen: std::collections::VecDeque<(Instant, std::collections::HashMap<String, u64>)> =
        Default::default();
    while start.elapsed() < timeout {
        if sim.caught_up() {
            return Some(start.elapsed());
        }
        let claims = sim.claims();
        if !claims.is_empty() && claims.iter().all(|a| !a.rig_id.is_empty()) {
            let now = Instant::now();
            while seen.len() > 1 && now.duration_since(seen[1].0) >= LAG {
                seen.pop_front();
            }
            if let Some((at, produced)) = seen.front() {
                let reached = claims.iter().all(|a| {
                    produced
                        .get(&a.rig_id)
                        .is_some_and(|p| *p > 0 && a.acked >= *p)
                });
                if now.duration_since(*at) >= LAG && reached {
                    return Some(start.elapsed());
                }
            }
            seen.push_back((
                now,
                claims
                    .iter()
                    .map(|a| (a.rig_id.clone(), a.produced))
                    .collect(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until the report lists `count` enrolled agents.
pub async fn wait_ready(sim: &SimProc, count: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if sim.ready(count) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("simulate did not start {count} agents:\n{}", sim.output())
}

/// A small deterministic generator for cut lengths and kill moments.
pub struct Lcg(pub u64);

impl Lcg {
    /// Next value in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `PRAGMA integrity_check` of a SQLite file through a fresh connection (`ok` when sound).
pub async fn sqlite_integrity(db_url: &str) -> Result<String> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(db_url)?
        .connect()
        .await?;
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    drop(conn);
    Ok(rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("; "))
}
