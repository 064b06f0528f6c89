//! `rigfleet-server demo`: a whole fleet on one machine with no network. The server on an
//! embedded SQLite database, two test pools (SHA-256d and Scrypt) and three agents enrolled
//! through the real enrollment flow, each with its own state folder: two mine SHA-256d, one
//! mines Scrypt, one CPU thread each. The pools and agents are `rigfleet-agent` processes found
//! beside this executable (the server does not link the engine). Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rigfleet_proto::config::{DesiredConfig, DeviceSettings, PoolSpec};
use rigfleet_proto::RigId;

use crate::api::tokens::{create_token, TokenRequest};
use crate::config::{RetentionConfig, ServerConfig, TlsMode};
use crate::db::Role;

/// `demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's database, keys and agent state (default: a temporary folder
    /// removed on exit). Reusing a folder keeps the fleet and its history.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Dashboard address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// SHA-256d agents.
    #[arg(long, default_value_t = 2)]
    pub sha256d_agents: usize,
    /// Scrypt agents.
    #[arg(long, default_value_t = 1)]
    pub scrypt_agents: usize,
}

/// A child process killed (after a SIGTERM and a grace period) when dropped.
struct Child2(Child, &'static str);

impl Child2 {
    fn terminate(&mut self) {
        // SAFETY: kill(2) on a child this process started; no memory is involved.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        self.terminate();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(what = self.1, "did not stop on SIGTERM; killing it");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe
        .parent()
        .map(|d| d.join("rigfleet-agent"))
        .context("executable has no folder")?;
    if !path.exists() {
        bail!(
            "{} not found: the demo starts rigfleet-agent processes from the same folder; build both (cargo build --release -p rigfleet-server -p rigfleet-agent)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `rigfleet-agent pool` on a free port and returns it with its URL.
fn start_pool(agent: &Path, algo: &str, logs: &Path) -> Result<(Child2, String)> {
    use std::io::BufRead;
    let mut child = Command::new(agent)
        .args(["pool", "--listen", "127.0.0.1:0", "--algo", algo])
        .args(["--stats-interval-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(
            logs.join(format!("pool-{algo}.log")),
        )?)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {algo} pool"))?;
    let stdout = child.stdout.take().context("pool stdout")?;
    let child = Child2(child, "pool");
    let (tx, rx) = std::sync::mpsc::channel();
    // The pool prints its URL first, then a stats line a minute; keep draining so it never
    // blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines.by_ref() {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the pool did not start within 20 s")?
        .context("the pool exited at start")??;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("stratum+"))
        .context("the pool did not print its URL")?
        .to_string();
    Ok((child, url))
}

fn config_for(algorithm: &str, pool: &str, worker: &str) -> DesiredConfig {
    DesiredConfig {
        version: 0,
        algorithm: algorithm.to_string(),
        pools: vec![PoolSpec {
            url: pool.to_string(),
            user: worker.to_string(),
            password: "x".to_string(),
        }],
        devices: vec![DeviceSettings {
            device_id: "cpu".into(),
            enabled: true,
            power_limit_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
            fan_percent: None,
            threads: Some(1),
        }],
        telemetry_interval_secs: None,
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> Result<()> {
    let agent = agent_binary()?;
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("rigfleet-demo-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let listen = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address:port", args.listen))?;

    let (sha_pool, sha_url) = start_pool(&agent, "sha256d", &logs)?;
    let (scrypt_pool, scrypt_url) = start_pool(&agent, "scrypt", &logs)?;
    let server_dir = dir.join("server");
    let config = ServerConfig {
        listen,
        data_dir: server_dir.clone(),
        database_url: None,
        tls: TlsMode::Plain,
        public_url: None,
        metrics_token: None,
        public_metrics: false,
        telemetry_interval_secs: 5,
        retention: RetentionConfig::default(),
    };
    let server = crate::start(config).await.with_context(|| {
        format!("starting the server on {listen} (another program there? use --listen)")
    })?;
    let store = server.hub.store.clone();
    // A fresh admin password each run, so a reused folder still prints a login that works.
    let password = crate::hub::random_hex(8);
    let hash = crate::startup::hash_password(&password)?;
    match store.user_by_name("admin").await? {
        Some(u) => store.set_user_password(u.id, &hash).await?,
        None => {
            store.create_user("admin", &hash, Role::Admin).await?;
        }
    }

    let plan: Vec<(String, &str, &str)> = (0..args.sha256d_agents)
        .map(|i| {
            (
                format!("demo-sha256d-{}", i + 1),
                "sha256d",
                sha_url.as_str(),
            )
        })
        .chain((0..args.scrypt_agents).map(|i| {
            (
                format!("demo-scrypt-{}", i + 1),
                "scrypt",
                scrypt_url.as_str(),
            )
        }))
        .collect();
    let needs_enroll: Vec<_> = plan
        .iter()
        .filter(|(name, _, _)| !dir.join(name).join("identity.json").exists())
        .collect();
    let token = if needs_enroll.is_empty() {
        None
    } else {
        let req = TokenRequest {
            max_uses: Some(needs_enroll.len() as i64),
            expires_in_hours: Some(1),
            group: Some("demo".into()),
            requires_approval: false,
            note: "demo".into(),
        };
        Some(
            create_token(&store, &server.hub.key, &req, crate::now_ms())
                .await?
                .1,
        )
    };
    let mut agents = Vec::new();
    for (name, algorithm, pool) in &plan {
        let state = dir.join(name);
        let state_arg = state
            .to_str()
            .context("state path is not UTF-8")?
            .to_string();
        if let Some(token) = token
            .as_ref()
            .filter(|_| !state.join("identity.json").exists())
        {
            let out = Command::new(&agent)
                .args(["enroll", "--server", &server.url, "--token", token])
                .args(["--state-dir", &state_arg, "--name", name])
                .stdin(Stdio::null())
                .output()
                .context("running rigfleet-agent enroll")?;
            if !out.status.success() {
                bail!(
                    "enrolling {name} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let rigs = store
            .list_rigs(&crate::db::RigFilter {
                text: Some(name.clone()),
                limit: 10,
                ..Default::default()
            })
            .await?;
        let rig = rigs
            .items
            .into_iter()
            .find(|r| &r.name == name)
            .with_context(|| format!("rig {name} is not in the database"))?;
        let desired = config_for(algorithm, pool, &format!("demo.{name}"));
        let current = store.desired_config(rig.id).await?;
        if current.is_none_or(|c| c.content_hash != desired.content_hash()) {
            server
                .hub
                .set_desired_config(rig.id, &RigId(rig.rig_uid.clone()), &desired, Some("demo"))
                .await?;
        }
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = Command::new(&agent)
            .args(["run", "--state-dir", &state_arg, "--api-listen", "off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting agent {name}"))?;
        agents.push(Child2(child, "agent"));
    }

    println!();
    println!(
        "rigfleet demo is running: {} agents, pools {sha_url} and {scrypt_url}",
        plan.len()
    );
    println!("  dashboard  {}", server.url);
    println!("  login      admin / {password}");
    println!("  files      {} (logs in logs/)", dir.display());
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    println!("stopping…");
    for a in &mut agents {
        a.terminate();
    }
    drop(agents);
    server.stop().await;
    drop(sha_pool);
    drop(scrypt_pool);
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
