//! What tests of the server share: a server on a fresh database (SQLite or
//! PostgreSQL), a small HTTP client, and a scripted agent that speaks the real protocol.

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use rigfleet_proto::agent_to_server::{
    AgentMessage, Auth, DeviceDescriptor, Hello, RigHello, Telemetry,
};
use rigfleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollRig};
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::signing::{auth_signing_bytes, decode_hex_array};
use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};
use rigfleet_proto::{AgentId, RigId};
use rigfleet_server::config::{RetentionConfig, ServerConfig, TlsMode};
use rigfleet_server::db::test_db::{test_backends, TestDb};
use rigfleet_server::db::Scope;
use rigfleet_server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A running server with an admin API token.
pub struct TestServer {
    pub server: RunningServer,
    pub admin: String,
    pub data_dir: tempfile::TempDir,
    pub db: TestDb,
}

/// A config for tests: loopback, port 0, plain HTTP, 1 s telemetry.
pub fn test_config(data_dir: &std::path::Path, database_url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        database_url: Some(database_url),
        tls: TlsMode::Plain,
        public_url: None,
        metrics_token: None,
        public_metrics: false,
        telemetry_interval_secs: 1,
        retention: RetentionConfig::default(),
    }
}

/// One server per backend (SQLite always, PostgreSQL when reachable).
pub async fn servers() -> Vec<TestServer> {
    let mut out = Vec::new();
    for db in test_backends().await {
        out.push(start_on(db).await);
    }
    out
}

/// Starts a server on `db`.
pub async fn start_on(db: TestDb) -> TestServer {
    let data_dir = tempfile::tempdir().unwrap();
    let server = rigfleet_server::start(test_config(data_dir.path(), db.url.clone()))
        .await
        .unwrap();
    let admin = server
        .create_api_token("tests", Scope::Admin)
        .await
        .unwrap();
    TestServer {
        server,
        admin,
        data_dir,
        db,
    }
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Stops the server and drops its database.
    pub async fn finish(self) {
        self.server.stop().await;
        self.db.cleanup().await;
    }

    /// A token for `rigs` rigs.
    pub async fn enroll_token(&self, body: &str) -> String {
        let (status, text) = http(
            self.addr(),
            "POST",
            "/api/v1/enrollment-tokens",
            Some(&self.admin),
            Some(body),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["secret_token"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, text) = http(self.addr(), "GET", path, Some(&self.admin), None).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn send(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = http(self.addr(), method, path, Some(&self.admin), Some(body)).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns status and body. Panics when the
/// server cannot be reached (tests); [`try_http`] returns the error instead.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    try_http(addr, method, path, bearer, body)
        .await
        .expect("HTTP request to the test server")
}

/// [`http`] that reports connection failures.
pub async fn try_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 30 s"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
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
    Ok((status, body))
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

/// A scripted agent.
pub struct FakeAgent {
    pub key: SigningKey,
    pub agent_id: AgentId,
    pub rig_ids: Vec<RigId>,
    pub server_key: [u8; 32],
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

impl FakeAgent {
    /// Enrolls with `token`, `rigs` rigs.
    pub async fn enroll(addr: std::net::SocketAddr, token: &str, rigs: usize) -> FakeAgent {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).unwrap();
        let key = SigningKey::from_bytes(&secret);
        let req = EnrollRequest {
            token: token.to_string(),
            agent_public_key: hex(key.verifying_key().as_bytes()),
            hostname: "fake".into(),
            agent_version: "test".into(),
            rigs: (0..rigs)
                .map(|i| EnrollRig {
                    name: format!("fake-{i}"),
                    devices: vec![DeviceDescriptor {
                        device_id: "cpu".into(),
                        kind: "cpu".into(),
                        model: "test".into(),
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
            Some(&serde_json::to_string(&req).unwrap()),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let resp: EnrollResponse = serde_json::from_str(&text).unwrap();
        FakeAgent {
            key,
            agent_id: resp.agent_id,
            rig_ids: resp.rig_ids,
            server_key: decode_hex_array(&resp.server_public_key).unwrap(),
        }
    }

    pub fn hello(&self) -> AgentMessage {
        AgentMessage::Hello(Hello {
            agent_id: self.agent_id.clone(),
            protocol_min: 1,
            protocol_max: 1,
            agent_version: "test".into(),
            hostname: "fake".into(),
            clock_unix_ms: rigfleet_server::now_ms(),
            rigs: self
                .rig_ids
                .iter()
                .map(|r| RigHello {
                    rig_id: r.clone(),
                    devices: vec![],
                    applied_config_version: None,
                    last_acked_seq: None,
                    last_order_counter: None,
                    stream_id: None,
                })
                .collect(),
            nonce: None,
        })
    }

    /// Opens the socket and runs the handshake; returns the socket after `welcome`.
    pub async fn connect(&self, addr: std::net::SocketAddr) -> Result<Ws, String> {
        let mut ws = open_ws(addr).await;
        send(&mut ws, &self.hello()).await;
        let nonce = match recv(&mut ws).await {
            Some(ServerMessage::Challenge(c)) => decode_hex_array::<32>(&c.nonce).unwrap(),
            other => return Err(format!("expected challenge, got {other:?}")),
        };
        let sig = self.key.sign(&auth_signing_bytes(
            &nonce,
            &self.agent_id,
            &self.server_key,
        ));
        send(
            &mut ws,
            &AgentMessage::Auth(Auth {
                signature: hex(&sig.to_bytes()),
            }),
        )
        .await;
        match recv(&mut ws).await {
            Some(ServerMessage::Welcome(_)) => Ok(ws),
            other => Err(format!("expected welcome, got {other:?}")),
        }
    }
}

impl FakeAgent {
    /// Runs the handshake as a protocol 2 agent whose queue is `stream` and whose clock is
    /// `clock_skew_ms` off the server's; returns the socket, the `welcome` and the nonce the
    /// server's time signature must cover.
    pub async fn connect_v2(
        &self,
        addr: std::net::SocketAddr,
        stream: &str,
        clock_skew_ms: i64,
    ) -> Result<(Ws, rigfleet_proto::server_to_agent::Welcome, [u8; 32]), String> {
        let mut nonce = [0u8; 32];
        getrandom::getrandom(&mut nonce).unwrap();
        let AgentMessage::Hello(mut hello) = self.hello() else {
            unreachable!("hello() makes a hello")
        };
        hello.protocol_max = 2;
        hello.nonce = Some(hex(&nonce));
        hello.clock_unix_ms = rigfleet_server::now_ms() + clock_skew_ms;
        for r in &mut hello.rigs {
            r.stream_id = Some(stream.to_string());
        }
        let mut ws = open_ws(addr).await;
        send(&mut ws, &AgentMessage::Hello(hello)).await;
        let challenge = match recv(&mut ws).await {
            Some(ServerMessage::Challenge(c)) => c,
            other => return Err(format!("expected challenge, got {other:?}")),
        };
        if challenge.protocol != 2 {
            return Err(format!("server chose protocol {}", challenge.protocol));
        }
        let server_nonce = decode_hex_array::<32>(&challenge.nonce).unwrap();
        let sig = self.key.sign(&auth_signing_bytes(
            &server_nonce,
            &self.agent_id,
            &self.server_key,
        ));
        send(
            &mut ws,
            &AgentMessage::Auth(Auth {
                signature: hex(&sig.to_bytes()),
            }),
        )
        .await;
        match recv(&mut ws).await {
            Some(ServerMessage::Welcome(w)) => Ok((ws, w, nonce)),
            other => Err(format!("expected welcome, got {other:?}")),
        }
    }
}

/// A protocol 2 telemetry frame of `stream`.
pub fn telemetry_in(rig: &RigId, stream: &str, samples: Vec<Sample>) -> AgentMessage {
    AgentMessage::Telemetry(Telemetry {
        rig_id: rig.clone(),
        samples,
        stream_id: Some(stream.to_string()),
        dropped_through: None,
    })
}

pub async fn open_ws(addr: std::net::SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{}", rigfleet_proto::enroll::AGENT_WS_PATH);
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws
}

pub async fn send(ws: &mut Ws, msg: &AgentMessage) {
    let text = rigfleet_proto::encode_agent(msg).unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Skips frames until `pick` takes one; `None` when the link closes or goes quiet for 10 s.
pub async fn recv_until<T>(
    ws: &mut Ws,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> Option<T> {
    while let Some(msg) = recv(ws).await {
        if let Some(v) = pick(msg) {
            return Some(v);
        }
    }
    None
}

/// Next protocol frame, `None` on close or after 10 s.
pub async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => return rigfleet_proto::decode_server(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

pub fn sample(seq: u64, time_ms: i64, devices: usize) -> Sample {
    Sample {
        seq,
        time_unix_ms: time_ms,
        rig: RigSample {
            uptime_secs: 100 + seq,
            load_1m: 0.5,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 8 << 30,
        },
        devices: (0..devices)
            .map(|i| DeviceSample {
                device_id: format!("0000:0{i}:00.0").as_str().into(),
                algorithm: "sha256d".into(),
                enabled: true,
                hashrate_5s_hps: 1e9 + i as f64,
                hashrate_1m_hps: 1e9,
                accepted: seq * 2,
                rejected: 0,
                stale: 0,
                hardware_errors: 0,
                temperature_celsius: Some(60.0 + i as f32),
                fan_rpm: Some(1500),
                fan_percent: Some(40.0),
                power_watts: Some(150.0),
                core_clock_mhz: None,
                memory_clock_mhz: None,
            })
            .collect(),
        pool: Some(PoolState {
            url: "stratum+tcp://127.0.0.1:3333".into(),
            user: "w".into(),
            state: "alive".into(),
            difficulty: 1.0,
            priority: 0,
        }),
    }
}

pub fn telemetry(rig: &RigId, samples: Vec<Sample>) -> AgentMessage {
    AgentMessage::Telemetry(Telemetry {
        rig_id: rig.clone(),
        samples,
        stream_id: None,
        dropped_through: None,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
