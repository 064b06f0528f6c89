//! A fake rigfleet server for the agent's tests: the enrollment endpoint (a tiny HTTP responder)
//! and the agent WebSocket (tokio-tungstenite's server side) on one port, recording everything
//! the agents send and letting a test push orders, withhold acks, or cut connections.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use rigfleet_proto::agent_to_server::{CommandResult, ConfigApplied, Event};
use rigfleet_proto::enroll::{ApiError, EnrollRequest, EnrollResponse, EnrollToken};
use rigfleet_proto::server_to_agent::{Ack, Challenge, ErrorCode, ErrorFrame, Welcome};
use rigfleet_proto::signing::{auth_signing_bytes, key_fingerprint, OrderKind, SignedOrder};
use rigfleet_proto::{AgentMessage, RigId, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What a test can tell a connection to do.
#[derive(Debug)]
enum Ctl {
    Send(ServerMessage),
    Drop,
}

/// Everything the fake server saw and how it behaves.
#[derive(Default)]
pub struct FakeState {
    /// Registered agents: (agent id, public key, rig id).
    pub agents: Vec<(String, VerifyingKey, RigId)>,
    /// Handshakes whose signature verified.
    pub auth_ok: usize,
    /// Handshakes refused.
    pub auth_failed: usize,
    /// Every telemetry sample received: (connection number, rig, seq).
    pub samples: Vec<(usize, RigId, u64)>,
    /// `config_applied` frames.
    pub applied: Vec<ConfigApplied>,
    /// `command_result` frames.
    pub results: Vec<CommandResult>,
    /// `event` frames.
    pub events: Vec<Event>,
    /// `hello` last_acked_seq per connection.
    pub hello_acked: Vec<Option<u64>>,
    /// Whether telemetry is acknowledged.
    pub acking: bool,
    /// Whether WebSocket upgrades are accepted (false: an outage).
    pub accepting: bool,
    /// Answer enrollments with this key instead of the real one (a server the token does not
    /// name).
    pub impostor_key: Option<VerifyingKey>,
    /// Answer enrollments with this error.
    pub enroll_error: Option<(u16, ApiError)>,
    /// Telemetry interval in `welcome`.
    pub interval_secs: u32,
    /// Connections opened (welcomed).
    pub connections: usize,
    /// Close frames received from agents.
    pub closes: usize,
    /// How far the server's clock is ahead of the agent's (ms), as its signed `welcome` time says.
    pub clock_ahead_ms: i64,
    /// Send `welcome` without the signed time (a server older than the agent, or a proxy
    /// that stripped it).
    pub unsigned_welcome: bool,
    /// Put this in `welcome`'s unsigned `clock_offset_ms` instead of the truth (a proxy
    /// forging the offset so that an order it held back looks fresh).
    pub forged_offset_ms: Option<i64>,
    controls: Vec<(RigId, mpsc::UnboundedSender<Ctl>)>,
}

/// See the module docs.
#[derive(Clone)]
pub struct FakeServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The server's signing key.
    pub key: Arc<SigningKey>,
    state: Arc<Mutex<FakeState>>,
}

impl FakeServer {
    /// Starts listening on a free loopback port.
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = FakeServer {
            url: format!("http://{addr}"),
            key: Arc::new(SigningKey::from_bytes(&[42u8; 32])),
            state: Arc::new(Mutex::new(FakeState {
                acking: true,
                accepting: true,
                interval_secs: 10,
                ..FakeState::default()
            })),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move { s.serve(stream).await });
            }
        });
        server
    }

    /// A TLS front for this server (a TLS-terminating proxy on another port, with a fresh
    /// self-signed certificate for 127.0.0.1): its `https://` URL and the certificate as PEM and
    /// as its `sha256:` fingerprint.
    pub async fn tls_front(&self) -> (String, String, String) {
        let tls = rigfleet_stratum::pool::self_signed(&["127.0.0.1"]).expect("certificate");
        let fingerprint = format!(
            "sha256:{}",
            rigfleet_stratum::transport::cert_fingerprint(tls.certificate_der.as_ref())
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backend = self.url.trim_start_matches("http://").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let backend = backend.clone();
                tokio::spawn(async move {
                    let Ok(mut front) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut back) = TcpStream::connect(&backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut front, &mut back).await;
                });
            }
        });
        (format!("https://{addr}"), tls.certificate_pem, fingerprint)
    }

    /// The state, locked.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A token naming this server's key.
    pub fn token(&self) -> String {
        EnrollToken {
            id: [1; 8],
            secret: [2; 16],
            server_key_sha256: fingerprint_bytes(&self.key.verifying_key()),
        }
        .to_text()
    }

    /// An order signed by this server.
    pub fn order(
        &self,
        kind: OrderKind,
        rig: &RigId,
        counter: u64,
        expires_unix_ms: i64,
        payload: &str,
    ) -> SignedOrder {
        sign_order(&self.key, kind, rig, counter, expires_unix_ms, payload)
    }

    /// Sends `msg` to every connected agent.
    pub fn send_all(&self, msg: ServerMessage) {
        let st = self.state();
        for (_, c) in &st.controls {
            let _ = c.send(Ctl::Send(msg.clone()));
        }
    }

    /// Sends `msg` to the connections of the agent fronting `rig`.
    pub fn send_to(&self, rig: &RigId, msg: ServerMessage) {
        let st = self.state();
        for (r, c) in &st.controls {
            if r == rig {
                let _ = c.send(Ctl::Send(msg.clone()));
            }
        }
    }

    /// Cuts every connection.
    pub fn drop_all(&self) {
        let mut st = self.state();
        for (_, c) in st.controls.drain(..) {
            let _ = c.send(Ctl::Drop);
        }
    }

    /// Waits until `pred` holds (polling), or `limit` passes; returns whether it held.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&FakeState) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.state()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(&self, stream: TcpStream) {
        // Peek at the request line to route it without consuming what the upgrade needs.
        let mut buf = [0u8; 2048];
        let mut head = String::new();
        for _ in 0..200 {
            let Ok(n) = stream.peek(&mut buf).await else {
                return;
            };
            head = String::from_utf8_lossy(&buf[..n]).into_owned();
            if head.contains("\r\n\r\n") || n == buf.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if head.starts_with("POST /api/agent/enroll ") {
            self.enroll(stream).await;
        } else if head.starts_with("GET /api/agent/ws ") {
            if !self.state().accepting {
                return;
            }
            let config = crate::daemon::link::connect::ws_config();
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            self.agent_session(ws).await;
        }
    }

    async fn enroll(&self, mut stream: TcpStream) {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let Ok(n) = stream.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    break raw[end + 4..end + 4 + len].to_vec();
                }
            }
        };
        let (status, json) = match self.enroll_answer(&body) {
            Ok(r) => (200, serde_json::to_string(&r).expect("json")),
            Err((status, e)) => (status, serde_json::to_string(&e).expect("json")),
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn enroll_answer(&self, body: &[u8]) -> Result<EnrollResponse, (u16, ApiError)> {
        let bad = |code: &str, message: &str| {
            (
                400,
                ApiError {
                    code: code.into(),
                    message: message.into(),
                },
            )
        };
        let req: EnrollRequest =
            serde_json::from_slice(body).map_err(|e| bad("bad_request", &e.to_string()))?;
        req.validate()
            .map_err(|e| bad("bad_request", &e.to_string()))?;
        if req.token != self.token() {
            return Err(bad("bad_token", "unknown token"));
        }
        let mut st = self.state();
        if let Some(e) = st.enroll_error.clone() {
            return Err(e);
        }
        let key_bytes = rigfleet_proto::signing::decode_hex_array::<32>(&req.agent_public_key)
            .ok_or_else(|| bad("bad_request", "key"))?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| bad("bad_request", "key"))?;
        let n = st.agents.len() + 1;
        let agent_id = format!("agt-{n}");
        let rig: RigId = format!("rig-{n}").as_str().into();
        st.agents.push((agent_id.clone(), key, rig.clone()));
        let server_key = st.impostor_key.unwrap_or_else(|| self.key.verifying_key());
        Ok(EnrollResponse {
            agent_id: agent_id.as_str().into(),
            rig_ids: vec![rig],
            server_public_key: rigfleet_engine::hex::encode(server_key.as_bytes()),
            pending_approval: false,
        })
    }

    async fn agent_session(&self, mut ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
        let send = |msg: ServerMessage| {
            Message::text(rigfleet_proto::encode_server(&msg).expect("encodes"))
        };
        let Some(Ok(Message::Text(hello))) = ws.next().await else {
            return;
        };
        let Ok(AgentMessage::Hello(hello)) = rigfleet_proto::decode_agent(hello.as_str()) else {
            return;
        };
        let nonce = [9u8; 32];
        let challenge = ServerMessage::Challenge(Challenge {
            nonce: rigfleet_engine::hex::encode(&nonce),
            server_time_unix_ms: crate::daemon::link::now_unix_ms(),
            protocol: rigfleet_proto::PROTOCOL_VERSION,
        });
        if ws.send(send(challenge)).await.is_err() {
            return;
        }
        let Some(Ok(Message::Text(auth))) = ws.next().await else {
            return;
        };
        let Ok(AgentMessage::Auth(auth)) = rigfleet_proto::decode_agent(auth.as_str()) else {
            return;
        };
        let known = self
            .state()
            .agents
            .iter()
            .find(|a| a.0 == hello.agent_id.0)
            .map(|a| a.1);
        let verified = known.is_some_and(|key| {
            let bytes =
                auth_signing_bytes(&nonce, &hello.agent_id, self.key.verifying_key().as_bytes());
            rigfleet_proto::signing::decode_hex_array::<64>(&auth.signature).is_some_and(|sig| {
                key.verify_strict(&bytes, &Signature::from_bytes(&sig))
                    .is_ok()
            })
        });
        if !verified {
            self.state().auth_failed += 1;
            let _ = ws
                .send(send(ServerMessage::Error(ErrorFrame {
                    code: ErrorCode::AuthFailed,
                    message: "bad signature".into(),
                })))
                .await;
            let _ = ws.close(None).await;
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (conn, interval, clock_ahead_ms, unsigned, forged) = {
            let mut st = self.state();
            st.auth_ok += 1;
            st.connections += 1;
            let rig = hello
                .rigs
                .first()
                .map(|r| r.rig_id.clone())
                .unwrap_or_else(|| "none".into());
            st.controls.push((rig, tx));
            st.hello_acked
                .push(hello.rigs.first().and_then(|r| r.last_acked_seq));
            (
                st.connections,
                st.interval_secs,
                st.clock_ahead_ms,
                st.unsigned_welcome,
                st.forged_offset_ms,
            )
        };
        let server_time = crate::daemon::link::now_unix_ms() + clock_ahead_ms;
        let agent_nonce = hello
            .nonce
            .as_deref()
            .and_then(rigfleet_proto::signing::decode_hex_array::<32>);
        let time_sig = agent_nonce.filter(|_| !unsigned).map(|n| {
            let bytes = rigfleet_proto::signing::server_time_signing_bytes(
                &n,
                &hello.agent_id,
                server_time,
            );
            rigfleet_engine::hex::encode(&self.key.sign(&bytes).to_bytes())
        });
        let welcome = ServerMessage::Welcome(Welcome {
            telemetry_interval_secs: interval,
            clock_offset_ms: forged.unwrap_or(clock_ahead_ms),
            server_time_unix_ms: time_sig.as_ref().map(|_| server_time),
            time_sig,
        });
        if ws.send(send(welcome)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                ctl = rx.recv() => match ctl {
                    Some(Ctl::Send(msg)) => {
                        if ws.send(send(msg)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ctl::Drop) | None => return,
                },
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) => {
                            self.state().closes += 1;
                            return;
                        }
                        None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(msg) = rigfleet_proto::decode_agent(text.as_str()) else {
                        continue;
                    };
                    let reply = self.record(conn, msg);
                    if let Some(r) = reply {
                        if ws.send(send(r)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn record(&self, conn: usize, msg: AgentMessage) -> Option<ServerMessage> {
        let mut st = self.state();
        match msg {
            AgentMessage::Telemetry(t) => {
                let last = t.samples.last().map(|s| s.seq)?;
                for s in &t.samples {
                    st.samples.push((conn, t.rig_id.clone(), s.seq));
                }
                st.acking.then_some(ServerMessage::Ack(Ack {
                    rig_id: t.rig_id,
                    seq: last,
                    stream_id: t.stream_id,
                }))
            }
            AgentMessage::ConfigApplied(c) => {
                st.applied.push(c);
                None
            }
            AgentMessage::CommandResult(c) => {
                st.results.push(c);
                None
            }
            AgentMessage::Event(e) => {
                st.events.push(e);
                None
            }
            AgentMessage::Hello(_) | AgentMessage::Auth(_) => None,
        }
    }
}

/// SHA-256 of a key as bytes (the token's form).
pub fn fingerprint_bytes(key: &VerifyingKey) -> [u8; 32] {
    let fp = key_fingerprint(key.as_bytes());
    rigfleet_proto::signing::decode_hex_array::<32>(fp.trim_start_matches("sha256:"))
        .expect("fingerprint is hex")
}

/// Signs an order the way the server does.
pub fn sign_order(
    key: &SigningKey,
    kind: OrderKind,
    rig: &RigId,
    counter: u64,
    expires_unix_ms: i64,
    payload: &str,
) -> SignedOrder {
    let mut o = SignedOrder {
        rig_id: rig.clone(),
        counter,
        expires_unix_ms,
        payload: payload.to_string(),
        sig: String::new(),
    };
    o.sig = rigfleet_engine::hex::encode(&key.sign(&o.signing_bytes(kind)).to_bytes());
    o
}
