//! Harness for the dashboard's browser tests: headless Chromium driven over WebDriver
//! (chromedriver on a free local port), agents that keep sending telemetry and answer commands
//! while a browser looks, and a small cookie-aware HTTP client for the CSRF/Origin checks.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rigfleet_proto::agent_to_server::{AgentMessage, CommandResult, DeviceDescriptor};
use rigfleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollRig};
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::signing::decode_hex_array;
use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};
use rigfleet_proto::RigId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::{hex, http, recv, send, telemetry, FakeAgent};

/// Where Debian puts the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser tests can run. Missing Chromium fails the test unless
/// `RIGFLEET_SKIP_BROWSER=1` says to skip (then it says so loudly).
pub fn browser_present() -> bool {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if present {
        return true;
    }
    if std::env::var("RIGFLEET_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! BROWSER TEST SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing and   \n\
             !!! RIGFLEET_SKIP_BROWSER=1 is set. Install: apt-get install chromium chromium-driver\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return false;
    }
    panic!(
        "the browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium \
         chromium-driver); set RIGFLEET_SKIP_BROWSER=1 to skip them"
    );
}

/// A headless Chromium session and its chromedriver.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: DriverProcess,
}

/// chromedriver in a process group of its own, with the browser it starts: the whole group
/// ends when this is dropped, so a failing test leaves no browser behind.
struct DriverProcess(std::process::Child);

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless browser window of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        use std::os::unix::process::CommandExt;
        let driver = DriverProcess(
            std::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-crash-reporter", "--disable-breakpad",
                    "--hide-scrollbars", format!("--window-size={width},{height}"),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last_err = String::new();
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let _ = client.set_window_size(width, height).await;
                    return Browser { client, driver };
                }
                Err(e) => {
                    last_err = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("no WebDriver session: {last_err}");
    }

    /// Ends the session and the driver.
    pub async fn stop(self) {
        let _ = self.client.close().await;
        drop(self.driver);
    }

    /// Runs a script and returns its value.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Saves a PNG of the viewport under `docs/screenshots/`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
    }

    /// Polls `script` (a JS expression) until it is truthy.
    pub async fn wait_js(&self, script: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.js(&format!("return !!({script});")).await;
            if v == serde_json::Value::Bool(true) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a [`LiveAgent`] reports, changeable while it runs.
#[derive(Clone, Debug)]
pub struct RigFigures {
    pub hashrate_hps: f64,
    pub temperature: f32,
    pub pool_url: String,
    pub algorithm: String,
    /// false: the rig stops sending telemetry (it goes offline).
    pub reporting: bool,
}

impl Default for RigFigures {
    fn default() -> Self {
        RigFigures {
            hashrate_hps: 1.25e9,
            temperature: 61.0,
            pool_url: "stratum+tcp://pool.example:3333".into(),
            algorithm: "sha256d".into(),
            reporting: true,
        }
    }
}

/// An enrolled agent, with custom rig names and device models.
pub async fn enroll_named(
    addr: std::net::SocketAddr,
    token: &str,
    rigs: &[(String, String)],
) -> FakeAgent {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).expect("random");
    let key = SigningKey::from_bytes(&secret);
    let req = EnrollRequest {
        token: token.to_string(),
        agent_public_key: hex(key.verifying_key().as_bytes()),
        hostname: "browser-test".into(),
        agent_version: "0.1.0-test".into(),
        rigs: rigs
            .iter()
            .map(|(name, model)| EnrollRig {
                name: name.clone(),
                devices: vec![DeviceDescriptor {
                    device_id: "gpu0".into(),
                    kind: "gpu".into(),
                    model: model.clone(),
                    algorithms: vec!["sha256d".into()],
                }],
            })
            .collect(),
    };
    let (status, text) = http(
        addr,
        "POST",
        rigfleet_proto::enroll::ENROLL_PATH,
        None,
        Some(&serde_json::to_string(&req).expect("json")),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let resp: EnrollResponse = serde_json::from_str(&text).expect("enroll response");
    FakeAgent {
        key,
        agent_id: resp.agent_id,
        rig_ids: resp.rig_ids,
        server_key: decode_hex_array(&resp.server_public_key).expect("server key"),
    }
}

/// One sample of a rig with one device `gpu0`.
pub fn figures_sample(seq: u64, time_ms: i64, f: &RigFigures) -> Sample {
    Sample {
        seq,
        time_unix_ms: time_ms,
        rig: RigSample {
            uptime_secs: 3600 + seq,
            load_1m: 0.4,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 8 << 30,
        },
        devices: vec![
            DeviceSample {
                device_id: "gpu0".into(),
                algorithm: f.algorithm.clone(),
                enabled: true,
                hashrate_5s_hps: f.hashrate_hps,
                hashrate_1m_hps: f.hashrate_hps,
                accepted: seq * 3,
                rejected: seq / 20,
                stale: 0,
                hardware_errors: 0,
                temperature_celsius: Some(f.temperature),
                fan_rpm: Some(1800),
                fan_percent: Some(45.0),
                power_watts: Some(120.0),
                core_clock_mhz: None,
                memory_clock_mhz: None,
            },
            DeviceSample {
                // A monitored card that mines nothing, as the agent reports NVIDIA GPUs.
                device_id: "pci:0000:65:00.0".into(),
                algorithm: String::new(),
                enabled: false,
                hashrate_5s_hps: 0.0,
                hashrate_1m_hps: 0.0,
                accepted: 0,
                rejected: 0,
                stale: 0,
                hardware_errors: 0,
                temperature_celsius: Some(48.0),
                fan_rpm: None,
                fan_percent: Some(30.0),
                power_watts: Some(15.0),
                core_clock_mhz: Some(210),
                memory_clock_mhz: Some(405),
            },
        ],
        pool: Some(PoolState {
            url: f.pool_url.clone(),
            user: "wallet.worker".into(),
            state: "alive".into(),
            difficulty: 1.0,
            priority: 0,
        }),
    }
}

/// Figures per rig of a running agent.
pub type Figures = Arc<Mutex<Vec<RigFigures>>>;

/// An agent connected in a task: it first sends `history_minutes` of past samples (one a
/// minute, so charts have points), then a sample per rig every `interval`, and answers every
/// command with `ok` and the output `done: <kind>`.
pub struct LiveAgent {
    pub rig_ids: Vec<RigId>,
    pub figures: Figures,
    task: tokio::task::JoinHandle<()>,
}

impl LiveAgent {
    pub async fn start(
        addr: std::net::SocketAddr,
        agent: FakeAgent,
        history_minutes: i64,
        interval: Duration,
        figures: Vec<RigFigures>,
    ) -> LiveAgent {
        let mut ws = agent.connect(addr).await.expect("agent connects");
        let rig_ids = agent.rig_ids.clone();
        let figures: Figures = Arc::new(Mutex::new(figures));
        let now = rigfleet_server::now_ms();
        let mut seq = 0u64;
        if history_minutes > 0 {
            for (i, rig) in rig_ids.iter().enumerate() {
                let f = figures.lock().expect("figures")[i].clone();
                let samples: Vec<Sample> = (0..history_minutes)
                    .map(|m| {
                        let mut f = f.clone();
                        // A wavy line reads better than a flat one in the screenshots.
                        f.hashrate_hps *= 1.0 + 0.05 * ((m as f64) / 4.0).sin();
                        f.temperature += (m % 7) as f32;
                        figures_sample(m as u64 + 1, now - (history_minutes - m) * 60_000, &f)
                    })
                    .collect();
                send(&mut ws, &telemetry(rig, samples)).await;
            }
            seq = history_minutes as u64;
        }
        let rigs = rig_ids.clone();
        let figs = figures.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        seq += 1;
                        let now = rigfleet_server::now_ms();
                        let current = figs.lock().map(|f| f.clone()).unwrap_or_default();
                        for (rig, f) in rigs.iter().zip(current.iter()) {
                            if f.reporting {
                                send(&mut ws, &telemetry(rig, vec![figures_sample(seq, now, f)])).await;
                            }
                        }
                    }
                    msg = recv(&mut ws) => match msg {
                        Some(ServerMessage::Command(o)) => {
                            let Ok(cmd) = serde_json::from_str::<rigfleet_proto::command::CommandOrder>(&o.payload) else { continue };
                            let kind = serde_json::to_value(&cmd.command)
                                .ok()
                                .and_then(|v| v["kind"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                            send(&mut ws, &AgentMessage::CommandResult(CommandResult {
                                rig_id: o.rig_id.clone(),
                                command_id: cmd.command_id,
                                ok: true,
                                output: format!("done: {kind}"),
                            })).await;
                        }
                        Some(_) => {}
                        // recv gives up after 10 s of silence; the link is still fine.
                        None => {}
                    },
                }
            }
        });
        LiveAgent {
            rig_ids,
            figures,
            task,
        }
    }

    /// Changes rig `i`'s figures.
    pub fn set(&self, i: usize, f: impl FnOnce(&mut RigFigures)) {
        if let Ok(mut v) = self.figures.lock() {
            f(&mut v[i]);
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// Values of `Set-Cookie` as `name=value`.
    pub fn cookies(&self) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("set-cookie")
                    .then(|| v.trim().split(';').next().unwrap_or("").to_string())
            })
            .collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The first `name="csrf" value="…"` of the page.
    pub fn csrf(&self) -> Option<String> {
        let i = self.body.find(r#"name="csrf" value=""#)?;
        let rest = &self.body[i + r#"name="csrf" value=""#.len()..];
        Some(rest[..rest.find('"')?].to_string())
    }
}

/// One HTTP/1.1 request with optional cookies, Origin, content type and extra headers.
// Each argument is one visible part of the request; a builder would hide what the CSRF tests
// vary.
#[allow(clippy::too_many_arguments)]
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a form value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A logged-in HTTP session: its cookie header and CSRF token.
pub struct WebSession {
    pub cookie: String,
    pub csrf: String,
}

/// Logs in over plain HTTP; `None` when the login is refused.
pub async fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> Option<WebSession> {
    let page = request(addr, "GET", "/login", None, None, "", &[], "").await;
    let pre = page.cookies().into_iter().next()?;
    let csrf = page.csrf()?;
    let origin = format!("http://{addr}");
    let a = request(
        addr,
        "POST",
        "/login",
        Some(&pre),
        Some(&origin),
        "application/x-www-form-urlencoded",
        &[],
        &format!(
            "csrf={}&username={}&password={}",
            enc(&csrf),
            enc(user),
            enc(password)
        ),
    )
    .await;
    if a.status != 303 {
        return None;
    }
    let session = a
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("rf_session=") && c.len() > "rf_session=".len())?;
    let home = request(addr, "GET", "/", Some(&session), None, "", &[], "").await;
    Some(WebSession {
        csrf: home.csrf()?,
        cookie: session,
    })
}
