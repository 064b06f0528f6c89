//! The fault harness's scenarios. Each one starts a real server (child process) on a fresh
//! database, real `rigfleet-agent simulate` fleets and (for the agent's disk) the real agent,
//! plays its fault, and returns a [`Row`] of figures that ends with the comparison of what
//! every agent sent with what the database holds. Nothing here asserts: the e2e tests assert
//! on the rows (outcomes only), `faultharness` prints them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rigfleet_server::db::Store;

use crate::fault::*;

/// One line of the harness's table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Figures, in print order.
    pub figures: Vec<(String, String)>,
    /// What agents sent against what is stored (`None`: not compared).
    pub tally: Option<Tally>,
    /// Things the scenario found wrong (empty: it held).
    pub failures: Vec<String>,
}

impl Row {
    fn new(scenario: &str, backend: &str) -> Row {
        Row {
            scenario: scenario.into(),
            backend: backend.into(),
            ..Row::default()
        }
    }

    fn fig(&mut self, k: &str, v: impl std::fmt::Display) {
        self.figures.push((k.into(), v.to_string()));
    }

    fn fail(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("[{} {}] {w}", self.scenario, self.backend);
        self.failures.push(w);
    }

    /// A figure by name.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.figures
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Checks a tally: nothing acked missing, nothing duplicated or foreign, and (after catch-up)
    /// nothing produced missing.
    fn judge(&mut self, t: Tally, caught_up: bool) {
        if t.missing_acked > 0 {
            self.fail(format!("{} acknowledged samples missing", t.missing_acked));
        }
        if t.duplicated > 0 {
            self.fail(format!("{} samples stored twice", t.duplicated));
        }
        if t.foreign > 0 || t.ahead > 0 {
            self.fail(format!(
                "{} rows in a stream no agent has, {} above what agents produced",
                t.foreign, t.ahead
            ));
        }
        // After catch-up only what was produced in the last moment before the agents
        // stopped may be unacknowledged and missing.
        if caught_up && t.missing > t.in_flight {
            self.fail(format!(
                "{} produced samples missing after catch-up ({} in flight at stop)",
                t.missing, t.in_flight
            ));
        }
        self.tally = Some(t);
    }

    /// One line for the table.
    pub fn line(&self) -> String {
        let figs: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let tally = self.tally.map_or(String::from("-"), |t| {
            format!(
                "sent {} acked {} stored {} missing(acked) {} duplicated {} missing {} (in flight at stop {}) dropped-by-agent {}",
                t.sent, t.acked, t.stored, t.missing_acked, t.duplicated, t.missing, t.in_flight, t.dropped
            )
        });
        format!(
            "| {} | {} | {} | {} | {} |",
            self.scenario,
            self.backend,
            figs.join(", "),
            tally,
            if self.failures.is_empty() {
                "held".to_string()
            } else {
                format!("FAILED: {}", self.failures.join("; "))
            }
        )
    }
}

/// Where a scenario runs: SQLite in the data folder, or a fresh PostgreSQL database.
pub enum On {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A folder of its own for one scenario on one backend.
fn scenario_dir(work: &Path, name: &str, on: &On) -> Result<std::path::PathBuf> {
    let tag = match on {
        On::Sqlite => "sqlite",
        On::Postgres => "postgres",
    };
    let dir = work.join(format!("{name}-{tag}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn database(on: &On, data: &Path) -> Result<Option<FaultDb>> {
    Ok(match on {
        On::Sqlite => Some(FaultDb::sqlite(data)),
        On::Postgres => FaultDb::postgres().await,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Plan of the database-cut scenario.
#[derive(Debug, Clone)]
pub struct CutPlan {
    /// Simulated agents.
    pub agents: usize,
    /// Backlog each starts with (s of samples at 1 s).
    pub backlog_secs: u64,
    /// Short cuts.
    pub short_cuts: usize,
    /// Their length.
    pub short: Duration,
    /// Long cuts.
    pub long_cuts: usize,
    /// Their length.
    pub long: Duration,
    /// Database reachable between cuts.
    pub gap: Duration,
}

/// Scenario 1: PostgreSQL's connection cut through a relay, again and again, while agents catch up on a
/// backlog. After every cut the acknowledged samples are checked; at the end all of them.
pub async fn db_cuts(work: &Path, plan: &CutPlan) -> Result<Option<Row>> {
    let data = work.join("cuts-server");
    let Some(db) = FaultDb::postgres().await else {
        return Ok(None);
    };
    let mut row = Row::new("db connection cuts", db.backend);
    let (upstream, _) = through(&db.url, "127.0.0.1:1".parse()?);
    let relay = Relay::start(upstream).await?;
    let (_, relayed) = through(&db.url, relay.addr);
    let mut server = ServerProc::start(&data, &relayed).await?;
    let token = server.enroll_token()?;
    let store = Store::open(&db.url).await?;
    let spec = SimSpec {
        count: plan.agents,
        backlog_secs: plan.backlog_secs,
        ..SimSpec::default()
    };
    let mut sim = SimProc::start(&server.url(), &token, work, "cuts", &spec)?;
    wait_ready(&sim, plan.agents, Duration::from_secs(120)).await?;
    // Cuts in a shuffled order of short and long ones.
    let mut cuts: Vec<Duration> = std::iter::repeat_n(plan.short, plan.short_cuts)
        .chain(std::iter::repeat_n(plan.long, plan.long_cuts))
        .collect();
    let mut rng = Lcg(0x5eed_c075);
    for i in (1..cuts.len()).rev() {
        let j = (rng.unit() * (i + 1) as f64) as usize;
        cuts.swap(i, j.min(i));
    }
    let started = Instant::now();
    let mut during_backlog = 0;
    let mut mid_missing = 0;
    for cut in &cuts {
        tokio::time::sleep(plan.gap.mul_f64(0.5 + rng.unit())).await;
        if !sim.caught_up() {
            during_backlog += 1;
        }
        relay.cut();
        tokio::time::sleep(*cut).await;
        relay.restore();
        let t = compare(&store, &sim.claims()).await?;
        mid_missing += t.missing_acked + t.duplicated;
    }
    let cuts_done = started.elapsed();
    let catch_up = wait_caught_up(&sim, Duration::from_secs(300)).await;
    sim.stop();
    let t = compare(&store, &sim.claims()).await?;
    row.fig("agents", plan.agents);
    row.fig("backlog", format!("{} s", plan.backlog_secs));
    row.fig(
        "cuts",
        format!(
            "{}×{:.1} s + {}×{:.1} s",
            plan.short_cuts,
            plan.short.as_secs_f64(),
            plan.long_cuts,
            plan.long.as_secs_f64()
        ),
    );
    row.fig("cuts while catching up", during_backlog);
    row.fig("run", secs(cuts_done));
    row.fig(
        "caught up after last cut",
        catch_up.map_or("not within 300 s".into(), secs),
    );
    row.fig("server alive", server.alive());
    if mid_missing > 0 {
        row.fail(format!(
            "{mid_missing} acknowledged samples missing or duplicated in checks between cuts"
        ));
    }
    if catch_up.is_none() {
        row.fail("the agents did not catch up within 300 s");
    }
    if !server.alive() {
        row.fail(format!("the server died:\n{}", server.log_tail()));
    }
    row.judge(t, catch_up.is_some());
    server.stop();
    store.close().await;
    drop(relay);
    db.cleanup().await;
    Ok(Some(row))
}

/// Plan of the kill -9 scenario.
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// Simulated agents.
    pub agents: usize,
    /// Kills.
    pub kills: usize,
    /// Backlog each agent starts with, so ingest is busy.
    pub backlog_secs: u64,
    /// Run time before each kill: uniform in [min, max].
    pub min_up: Duration,
    /// See `min_up`.
    pub max_up: Duration,
}

/// Scenario 2: `kill -9` of the server during ingest and config writes, restarted on the same data each
/// time: SQLite's integrity check after every kill, acknowledged samples and answered config
/// writes all stored.
pub async fn kill9(work: &Path, on: On, plan: &KillPlan) -> Result<Option<Row>> {
    let work = &scenario_dir(work, "kill", &on)?;
    let data = work.join("kill-server");
    let Some(db) = database(&on, &data).await? else {
        return Ok(None);
    };
    let mut row = Row::new("kill -9 server", db.backend);
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let admin = admin_token(&db.url).await?;
    let spec = SimSpec {
        count: plan.agents,
        backlog_secs: plan.backlog_secs,
        ..SimSpec::default()
    };
    let mut sim = SimProc::start(&server.url(), &token, work, "kill", &spec)?;
    wait_ready(&sim, plan.agents, Duration::from_secs(120)).await?;
    let rigs: Vec<String> = sim.claims().into_iter().map(|c| c.rig_id).collect();
    let mut rng = Lcg(0xdead_b33f);
    let mut integrity_bad = 0;
    let mut restart_total = Duration::ZERO;
    let mut restart_max = Duration::ZERO;
    let mut acked_missing_max = 0;
    let mut config_ok = 0u64;
    // Highest config version the API answered 200 for, per rig.
    let mut answered: std::collections::HashMap<String, u64> = Default::default();
    let body = r#"{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"w","password":"x"}],"devices":[]}"#;
    for k in 0..plan.kills {
        let up = plan.min_up + (plan.max_up.saturating_sub(plan.min_up)).mul_f64(rng.unit());
        let until = Instant::now() + up;
        // Order writes while ingest runs, until the kill.
        let mut n = 0usize;
        while Instant::now() < until {
            let rig = &rigs[(k + n) % rigs.len()];
            n += 1;
            let path = format!("/api/v1/rigs/{rig}/config");
            if let Some((200, text)) = server.http("PUT", &path, Some(&admin), Some(body)).await {
                config_ok += 1;
                if let Some(v) = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["version"].as_u64())
                {
                    let e = answered.entry(rig.clone()).or_default();
                    *e = (*e).max(v);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.kill9();
        if db.backend == "sqlite" {
            let check = sqlite_integrity(&db.url).await?;
            if check != "ok" {
                integrity_bad += 1;
                row.fail(format!("integrity check after kill {}: {check}", k + 1));
            }
        }
        let store = Store::open(&db.url).await?;
        let t = compare(&store, &sim.claims()).await?;
        store.close().await;
        acked_missing_max = acked_missing_max.max(t.missing_acked + t.duplicated + t.foreign);
        let d = server.restart().await?;
        restart_total += d;
        restart_max = restart_max.max(d);
    }
    let catch_up = wait_caught_up(&sim, Duration::from_secs(300)).await;
    sim.stop();
    let store = Store::open(&db.url).await?;
    let t = compare(&store, &sim.claims()).await?;
    let mut versions_lost = 0;
    for (rig, v) in &answered {
        let stored = store
            .rig_by_uid(rig)
            .await?
            .map_or(0, |r| r.desired_version);
        if stored < *v {
            versions_lost += 1;
        }
    }
    store.close().await;
    row.fig("agents", plan.agents);
    row.fig("kills", plan.kills);
    row.fig(
        "integrity",
        if db.backend == "sqlite" {
            format!("{} of {} ok", plan.kills - integrity_bad, plan.kills)
        } else {
            "n/a".into()
        },
    );
    row.fig(
        "restart to /healthz",
        format!(
            "mean {:.2} s, max {:.2} s",
            restart_total.as_secs_f64() / plan.kills.max(1) as f64,
            restart_max.as_secs_f64()
        ),
    );
    row.fig("config writes answered 200", config_ok);
    row.fig("answered config versions lost", versions_lost);
    row.fig(
        "caught up after last restart",
        catch_up.map_or("not within 300 s".into(), secs),
    );
    if acked_missing_max > 0 {
        row.fail(format!(
            "up to {acked_missing_max} acknowledged samples missing/duplicated after a kill"
        ));
    }
    if versions_lost > 0 {
        row.fail(format!(
            "{versions_lost} rigs lost a config write answered 200"
        ));
    }
    if catch_up.is_none() {
        row.fail("the agents did not catch up within 300 s");
    }
    row.judge(t, catch_up.is_some());
    server.stop();
    db.cleanup().await;
    Ok(Some(row))
}

/// Scenario 3: Agents with clocks skewed by each of `skews` seconds: stored times within `tolerance` of
/// the moment each sample was really taken, and the skew in /metrics.
pub async fn clock_skew(work: &Path, on: On, skews: &[i64], run: Duration) -> Result<Option<Row>> {
    let work = &scenario_dir(work, "skew", &on)?;
    let data = work.join("skew-server");
    let Some(db) = database(&on, &data).await? else {
        return Ok(None);
    };
    let mut row = Row::new("clock skew", db.backend);
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let mut sims = Vec::new();
    for (i, skew) in skews.iter().enumerate() {
        let spec = SimSpec {
            count: 1,
            clock_skew_secs: *skew,
            ..SimSpec::default()
        };
        sims.push((
            *skew,
            SimProc::start(&server.url(), &token, work, &format!("skew{i}"), &spec)?,
        ));
    }
    for (_, s) in &sims {
        wait_ready(s, 1, Duration::from_secs(120)).await?;
    }
    tokio::time::sleep(run).await;
    for (_, s) in &sims {
        wait_caught_up(s, Duration::from_secs(60)).await;
    }
    let metrics = server.metrics().await;
    let store = Store::open(&db.url).await?;
    let mut total = Tally::default();
    for (skew, s) in &mut sims {
        let skew = *skew;
        s.stop();
        let claims = s.claims();
        total.add(&compare(&store, &claims).await?);
        let Some(c) = claims.first() else {
            row.fail(format!("skew {skew}: no report"));
            continue;
        };
        let rig = store
            .rig_by_uid(&c.rig_id)
            .await?
            .context("rig in the database")?;
        let times = store.raw_times(rig.id).await?;
        let mut worst = 0i64;
        let mut flagged = 0;
        for (_, ts, agent_ts, flag) in &times {
            // When the sample was really taken, on the server's clock (same machine).
            let real = agent_ts - skew * 1000;
            worst = worst.max((ts - real).abs());
            flagged += usize::from(*flag);
        }
        let series = format!("rigfleet_rig_clock_offset_seconds{{rig=\"{}\"}}", c.rig_id);
        let shown = metric(&metrics, &series);
        row.fig(
            &format!("skew {skew:+} s"),
            format!(
                "{} rows, worst stored-time error {:.2} s, {} flagged, /metrics offset {}",
                times.len(),
                worst as f64 / 1000.0,
                flagged,
                shown.map_or("absent".into(), |v| format!("{v:+.1} s"))
            ),
        );
        if times.is_empty() {
            row.fail(format!("skew {skew}: nothing stored"));
        }
        if worst > 5_000 {
            row.fail(format!("skew {skew}: a stored time is {worst} ms off"));
        }
        match shown {
            Some(v) if (v + skew as f64).abs() <= 5.0 => {}
            other => row.fail(format!(
                "skew {skew}: /metrics shows {other:?} for {series}"
            )),
        }
    }
    row.judge(total, true);
    store.close().await;
    server.stop();
    db.cleanup().await;
    Ok(Some(row))
}

/// Scenario 4: A rig removed through the REST API: its agent's link is closed (time printed), it does
/// not come back, and the other agents keep reporting.
pub async fn rig_removed(work: &Path, on: On, cap: Duration) -> Result<Option<Row>> {
    let work = &scenario_dir(work, "remove", &on)?;
    let data = work.join("remove-server");
    let Some(db) = database(&on, &data).await? else {
        return Ok(None);
    };
    let mut row = Row::new("rig removed", db.backend);
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let admin = admin_token(&db.url).await?;
    let mut sim = SimProc::start(&server.url(), &token, work, "remove", &SimSpec::default())?;
    wait_ready(&sim, 4, Duration::from_secs(120)).await?;
    let connected = |m: &str| metric(m, "rigfleet_agents_connected").unwrap_or(-1.0);
    let start = Instant::now();
    while connected(&server.metrics().await) < 4.0 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("4 agents not connected within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = sim.claims()[0].rig_id.clone();
    let other_before = sim.claims()[1].acked;
    let t0 = Instant::now();
    let del = server
        .http(
            "DELETE",
            &format!("/api/v1/rigs/{victim}"),
            Some(&admin),
            None,
        )
        .await;
    let answered = t0.elapsed();
    if !matches!(del, Some((204, _)) | Some((200, _))) {
        row.fail(format!("DELETE answered {del:?}"));
    }
    let mut gone = None;
    while t0.elapsed() < cap {
        if connected(&server.metrics().await) <= 3.0 {
            gone = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It must stay out: its reconnects are refused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = connected(&server.metrics().await);
    let detail = server
        .http("GET", &format!("/api/v1/rigs/{victim}"), Some(&admin), None)
        .await
        .map(|(s, _)| s);
    sim.stop();
    let claims = sim.claims();
    row.fig("DELETE answered in", secs(answered));
    row.fig(
        "link closed after",
        gone.map_or(format!("not within {}", secs(cap)), secs),
    );
    row.fig("agents connected 4 s later", after);
    match gone {
        Some(_) => {}
        None => row.fail(format!(
            "the removed rig stayed connected for {}",
            secs(cap)
        )),
    }
    if after > 3.0 {
        row.fail("the removed rig's agent connected again");
    }
    if detail != Some(404) {
        row.fail(format!("GET of the removed rig answered {detail:?}"));
    }
    if claims.get(1).is_none_or(|c| c.acked <= other_before) {
        row.fail("the other agents stopped reporting");
    }
    let store = Store::open(&db.url).await?;
    let t = compare(&store, &claims[1..]).await?;
    store.close().await;
    row.judge(t, false);
    server.stop();
    db.cleanup().await;
    Ok(Some(row))
}

/// A tmpfs mounted for the run (needs root); unmounted on drop.
pub struct Tmpfs {
    /// Mount point.
    pub dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir`; `None` when mounting is not allowed here.
    pub fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Changes its size (a size below what is used is refused by the kernel).
    pub fn resize(&self, kib: u64) -> bool {
        std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// KiB in use.
    pub fn used_kib(&self) -> u64 {
        let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) else {
            return 0;
        };
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) != 0 {
                return 0;
            }
            (s.f_blocks - s.f_bfree) * s.f_frsize / 1024
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Scenario 5a: The server's disk fills up (SQLite on a tmpfs shrunk to what it uses): ingest stops
/// acknowledging (time printed), /healthz, reads and logins keep answering, and once the disk
/// has room again ingest recovers without a restart and nothing is lost.
pub async fn server_disk_full(work: &Path, full_for: Duration) -> Result<Option<Row>> {
    let Some(fs) = Tmpfs::mount(&work.join("full-server"), 64 * 1024) else {
        eprintln!(
            "cannot mount a tmpfs here (not root?): the server disk-full scenario did not run"
        );
        return Ok(None);
    };
    // The data folder is the mount itself: the server's log and config stay outside it.
    let data = fs.dir.clone();
    let db = FaultDb::sqlite(&data);
    let mut row = Row::new("server disk full", "sqlite");
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let admin = admin_token(&db.url).await?;
    let spec = SimSpec {
        count: 4,
        devices: 16,
        ..SimSpec::default()
    };
    let mut sim = SimProc::start(&server.url(), &token, work, "full", &spec)?;
    wait_ready(&sim, 4, Duration::from_secs(120)).await?;
    wait_caught_up(&sim, Duration::from_secs(60)).await;
    let acked = |s: &SimProc| s.claims().iter().map(|c| c.acked).sum::<u64>();
    let used = fs.used_kib();
    if !fs.resize(used + 16) {
        bail!("cannot shrink the tmpfs to {used} KiB");
    }
    let filled = Instant::now();
    // Ingest is full when acks stop moving for 3 s while samples keep coming.
    let mut last = acked(&sim);
    let mut last_move = Instant::now();
    let mut stalled = None;
    while filled.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = acked(&sim);
        if now != last {
            last = now;
            last_move = Instant::now();
        } else if last_move.elapsed() >= Duration::from_secs(3) {
            stalled = Some(last_move.duration_since(filled));
            break;
        }
    }
    tokio::time::sleep(full_for).await;
    // What still works on a full disk.
    let health = server
        .http("GET", "/healthz", None, None)
        .await
        .map(|r| r.0);
    let ready = server.http("GET", "/readyz", None, None).await.map(|r| r.0);
    let list = server
        .http("GET", "/api/v1/rigs", Some(&admin), None)
        .await
        .map(|r| r.0);
    let rig = sim.claims()[0].rig_id.clone();
    let body = r#"{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"w","password":"x"}],"devices":[]}"#;
    let put = server
        .http(
            "PUT",
            &format!("/api/v1/rigs/{rig}/config"),
            Some(&admin),
            Some(body),
        )
        .await;
    let login = server.http("GET", "/login", None, None).await.map(|r| r.0);
    let acked_full = acked(&sim);
    // Room again, no restart.
    if !fs.resize(64 * 1024) {
        row.fail("cannot grow the tmpfs again");
    }
    let freed = Instant::now();
    let catch_up = wait_caught_up(&sim, Duration::from_secs(120)).await;
    let alive = server.alive();
    sim.stop();
    row.fig(
        "last ack after the disk filled",
        stalled.map_or("acks never stopped".into(), secs),
    );
    row.fig("acked while full", acked_full.saturating_sub(last));
    row.fig(
        "while full: /healthz, /readyz, GET rigs, PUT config, GET /login",
        format!(
            "{health:?}, {ready:?}, {list:?}, {:?}, {login:?}",
            put.as_ref().map(|r| r.0)
        ),
    );
    row.fig(
        "caught up after room returned",
        catch_up.map_or("not within 120 s".into(), secs),
    );
    row.fig("server restarted", !alive);
    let _ = freed;
    if stalled.is_none() {
        row.fail("ingest never stopped acknowledging on a full disk");
    }
    if health != Some(200) {
        row.fail(format!("/healthz answered {health:?} on a full disk"));
    }
    if list != Some(200) {
        row.fail(format!("GET /api/v1/rigs answered {list:?} on a full disk"));
    }
    if catch_up.is_none() {
        row.fail("ingest did not recover without a restart");
        eprintln!(
            "server log:\n{}\nsimulate log:\n{}",
            server.log_tail(),
            sim.output()
        );
    }
    if !alive {
        row.fail(format!("the server died:\n{}", server.log_tail()));
    }
    let store = Store::open(&db.url).await?;
    let t = compare(&store, &sim.claims()).await?;
    store.close().await;
    row.judge(t, catch_up.is_some());
    server.stop();
    drop(fs);
    Ok(Some(row))
}

/// Scenario 5b: The real agent's disk fills up (its state folder on a tmpfs, then a filler file): it
/// keeps running, counts what it could not queue, and queues again once there is room;
/// every sample it queued is stored once.
pub async fn agent_disk_full(work: &Path, full_for: Duration) -> Result<Option<Row>> {
    let Some(fs) = Tmpfs::mount(&work.join("full-agent"), 8 * 1024) else {
        eprintln!(
            "cannot mount a tmpfs here (not root?): the agent disk-full scenario did not run"
        );
        return Ok(None);
    };
    let data = work.join("agentfull-server");
    let db = FaultDb::sqlite(&data);
    let mut row = Row::new("agent disk full", "sqlite");
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let state = fs.dir.join("agent");
    let state_arg = state.to_str().context("path")?.to_string();
    let (ok, out) = crate::agent_proc::run_agent(&[
        "enroll",
        "--server",
        &server.url(),
        "--token",
        &token,
        "--state-dir",
        &state_arg,
    ]);
    if !ok {
        bail!("enroll failed:\n{out}");
    }
    let mut agent = crate::agent_proc::AgentProc::spawn(
        &["run", "--state-dir", &state_arg, "--api-listen", "off"],
        &work.join("agentfull.log"),
    );
    let store = Store::open(&db.url).await?;
    let admin = admin_token(&db.url).await?;
    let (_, list) = server
        .http("GET", "/api/v1/rigs", Some(&admin), None)
        .await
        .context("list rigs")?;
    let list: serde_json::Value = serde_json::from_str(&list)?;
    let rig = list["items"][0]["id"]
        .as_str()
        .context("one rig")?
        .to_string();
    let rig_row = store.rig_by_uid(&rig).await?.context("rig row")?;
    let start = Instant::now();
    while store.raw_seq_stats(rig_row.id).await?.0 < 3 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no telemetry from the real agent:\n{}", agent.output());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fill the disk.
    let filler = fs.dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = vec![0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.flush();
    }
    let stored_at_full = store.raw_seq_stats(rig_row.id).await?.0;
    tokio::time::sleep(full_for).await;
    let alive_full = agent.running();
    let stored_during = store.raw_seq_stats(rig_row.id).await?.0;
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    // Recovery: new samples queued and stored again.
    let mut recovered = None;
    while freed.elapsed() < Duration::from_secs(60) {
        if store.raw_seq_stats(rig_row.id).await?.0 >= stored_during + 3 {
            recovered = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last samples be acknowledged, then stop it and read its queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = agent.stop();
    let claim = real_agent_claim(&state, &rig)?;
    let t = compare(&store, std::slice::from_ref(&claim)).await?;
    row.fig("full for", secs(full_for));
    row.fig("agent kept running", alive_full);
    row.fig("samples it could not queue", claim.unqueued);
    row.fig(
        "stored while full",
        stored_during.saturating_sub(stored_at_full),
    );
    row.fig(
        "stored again after room returned",
        recovered.map_or("not within 60 s".into(), secs),
    );
    if !alive_full {
        row.fail(format!(
            "the agent exited on a full disk:\n{}",
            agent.output()
        ));
    }
    if claim.unqueued == 0 {
        row.fail("the agent counted no unqueued sample while its disk was full");
    }
    if recovered.is_none() {
        row.fail("the agent did not queue again once there was room");
        let out = agent.output();
        eprintln!("agent log:\n{}", &out[out.len().saturating_sub(6000)..]);
    }
    if !stopped {
        row.fail("the agent did not stop cleanly");
    }
    row.judge(t, true);
    store.close().await;
    server.stop();
    drop(fs);
    Ok(Some(row))
}

/// Scenario 6: One agent sending `burst`× the normal rate beside a normal fleet: the fleet's p99 ack
/// latency with and without it, and what happened to the noisy agent's samples.
pub async fn noisy_neighbour(
    work: &Path,
    on: On,
    agents: usize,
    burst: u32,
    run: Duration,
) -> Result<Option<Row>> {
    let work = &scenario_dir(work, "noisy", &on)?;
    let data = work.join("noisy-server");
    let Some(db) = database(&on, &data).await? else {
        return Ok(None);
    };
    let mut row = Row::new("noisy agent", db.backend);
    let mut server = ServerProc::start(&data, &db.url).await?;
    let token = server.enroll_token()?;
    let spec = SimSpec {
        count: agents,
        devices: 8,
        ..SimSpec::default()
    };
    let mut base = SimProc::start(&server.url(), &token, work, "calm", &spec)?;
    wait_ready(&base, agents, Duration::from_secs(120)).await?;
    tokio::time::sleep(run).await;
    base.stop();
    let (b50, b99, _, bn) = base.latency();
    let store = Store::open(&db.url).await?;
    let mut total = compare(&store, &base.claims()).await?;
    // A second fleet of the same size, now beside the noisy agent.
    let mut noisy = SimProc::start(
        &server.url(),
        &token,
        work,
        "noisy",
        &SimSpec {
            count: 1,
            devices: 8,
            burst,
            ..SimSpec::default()
        },
    )?;
    wait_ready(&noisy, 1, Duration::from_secs(60)).await?;
    let mut calm = SimProc::start(&server.url(), &token, work, "calm2", &spec)?;
    wait_ready(&calm, agents, Duration::from_secs(120)).await?;
    tokio::time::sleep(run).await;
    calm.stop();
    let noisy_claims = noisy.claims();
    noisy.stop();
    let (c50, c99, _, cn) = calm.latency();
    total.add(&compare(&store, &calm.claims()).await?);
    let nt = compare(&store, &noisy.claims()).await?;
    store.close().await;
    let fmt = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    row.fig("fleet", format!("{agents} agents at 1 sample/s, 8 devices"));
    row.fig(
        "fleet ack p50/p99 alone",
        format!("{}/{} ({bn} samples)", fmt(b50), fmt(b99)),
    );
    row.fig(
        &format!("fleet ack p50/p99 beside a {burst}× agent"),
        format!("{}/{} ({cn} samples)", fmt(c50), fmt(c99)),
    );
    if let (Some(a), Some(b)) = (b99, c99) {
        row.fig(
            "p99 change",
            format!("{:+.0} %", (b as f64 / a.max(1) as f64 - 1.0) * 100.0),
        );
    }
    let produced: u64 = noisy_claims.iter().map(|c| c.produced).sum();
    row.fig(
        "noisy agent",
        format!(
            "produced {produced}, acked {}, stored {}, dropped by itself {}",
            nt.acked, nt.stored, nt.dropped
        ),
    );
    if nt.missing_acked + nt.duplicated + nt.foreign > 0 {
        row.fail(format!("noisy agent: {nt:?}"));
    }
    row.judge(total, true);
    server.stop();
    db.cleanup().await;
    Ok(Some(row))
}
