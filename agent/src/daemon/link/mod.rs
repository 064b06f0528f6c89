//! The agent's link to the server (issue "The rig agent and its protocol"): one WebSocket,
//! reconnected with jittered exponential backoff, kept alive by pings, and judged dead after a
//! silence.
//!
//! - [`target`]: the server URL and TLS trust.
//! - [`connect`]: TCP/TLS and the WebSocket upgrade, frame helpers.
//! - [`handshake`]: `hello` → `challenge` → `auth` → `welcome`.
//! - [`backoff`]: reconnect delays.
//! - [`session`]: telemetry batching over a connection (what is in flight, what to resend).
//! - [`orders`]: signature, counter and expiry checks of server orders.
//!
//! [`Link`] is a state machine its owner polls with [`Link::next_event`] inside its own
//! `select!` loop (the daemon loop owns the mining runtime; a simulated agent owns its fake rig),
//! so nothing here needs a lock. Connecting runs in a spawned task, so a slow server never
//! stalls telemetry sampling or the watchdog.

pub mod backoff;
pub mod connect;
pub mod handshake;
pub mod orders;
pub mod session;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rigfleet_proto::agent_to_server::Hello;
use rigfleet_proto::{ProtoError, ServerMessage};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use self::backoff::{backoff_delay_with, Jitter};
use self::connect::{close_reason, LinkError, WsStream};
use self::handshake::Welcomed;
use self::target::ServerUrl;
use crate::daemon::identity::Identity;

/// The agent's clock in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Every time limit of the link; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimings {
    /// TCP connect + TLS, and separately the WebSocket upgrade.
    pub connect_timeout: Duration,
    /// `hello` to `welcome`.
    pub handshake_timeout: Duration,
    /// A WebSocket ping this often.
    pub ping_every: Duration,
    /// No frame of any kind for this long: the peer is dead.
    pub dead_after: Duration,
    /// One send (a peer that stops reading blocks it through TCP backpressure).
    pub send_timeout: Duration,
    /// First reconnect delay cap.
    pub backoff_base: Duration,
    /// Largest reconnect delay cap.
    pub backoff_max: Duration,
}

impl Default for LinkTimings {
    fn default() -> Self {
        LinkTimings {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            ping_every: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            send_timeout: Duration::from_secs(10),
            backoff_base: backoff::BASE_DELAY,
            backoff_max: backoff::MAX_DELAY,
        }
    }
}

impl LinkTimings {
    /// Everything scaled down for tests on loopback.
    #[cfg(test)]
    pub fn fast() -> Self {
        LinkTimings {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            ping_every: Duration::from_millis(200),
            dead_after: Duration::from_millis(1500),
            send_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
        }
    }
}

/// What happened on the link.
#[derive(Debug)]
pub enum LinkEvent {
    /// The reconnect delay is over: call [`Link::connect`] with a fresh `hello`.
    ReadyToConnect,
    /// Connected and welcomed.
    Up(Welcomed),
    /// A connection attempt failed; the next one is scheduled.
    ConnectFailed(LinkError),
    /// A decoded server message.
    Message(ServerMessage),
    /// A frame that did not decode (logged; the server gets no answer, the link stays).
    BadFrame(ProtoError),
    /// Time for a ping: call [`Link::ping`].
    PingDue,
    /// The connection was lost; the next attempt is scheduled.
    Down(String),
}

type ConnectTask = JoinHandle<Result<(WsStream, Welcomed), LinkError>>;

enum State {
    Waiting(Instant),
    Ready,
    Connecting(ConnectTask),
    Connected {
        ws: Box<WsStream>,
        last_rx: Instant,
        ping: Interval,
    },
    Closed,
}

/// The connection state machine. See the module docs.
pub struct Link {
    url: ServerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    timings: LinkTimings,
    state: State,
    attempt: u32,
    jitter: Jitter,
    /// Connections lost or attempts failed since start.
    pub failures: u64,
}

impl Link {
    /// A link that connects at once (the first [`Link::next_event`] is `ReadyToConnect`).
    pub fn new(
        url: ServerUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        timings: LinkTimings,
        jitter: Jitter,
    ) -> Link {
        Link {
            url,
            tls,
            timings,
            state: State::Ready,
            attempt: 0,
            jitter,
            failures: 0,
        }
    }

    /// Like [`Link::new`] but the first attempt waits a jittered `spread` (many agents starting
    /// together).
    pub fn new_delayed(
        url: ServerUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        timings: LinkTimings,
        mut jitter: Jitter,
        spread: Duration,
    ) -> Link {
        let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX).max(1);
        let wait = Duration::from_millis(jitter.next_u64() % ms);
        let mut link = Link::new(url, tls, timings, jitter);
        link.state = State::Waiting(Instant::now() + wait);
        link
    }

    /// Whether a welcomed connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Starts a connection attempt in its own task with `hello` (built now, so it carries the
    /// latest acked seq and counters) and a copy of the identity to sign with.
    pub fn connect(&mut self, identity: Arc<Identity>, hello: Hello) {
        let url = self.url.clone();
        let tls = self.tls.clone();
        let timings = self.timings;
        let task = tokio::spawn(async move {
            let mut ws = connect::open(&url, tls, timings.connect_timeout).await?;
            match handshake::handshake(&mut ws, &identity, hello, timings.handshake_timeout).await {
                Ok(w) => Ok((ws, w)),
                Err(e) => {
                    // Best effort: tell the server why we leave (it may already be gone).
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    Err(e)
                }
            }
        });
        self.state = State::Connecting(task);
    }

    /// The next event. Cancel-safe: every await is on state kept in `self`.
    pub async fn next_event(&mut self) -> LinkEvent {
        loop {
            match &mut self.state {
                State::Closed => std::future::pending::<()>().await,
                State::Ready => return LinkEvent::ReadyToConnect,
                State::Waiting(until) => {
                    tokio::time::sleep_until(*until).await;
                    self.state = State::Ready;
                    return LinkEvent::ReadyToConnect;
                }
                State::Connecting(task) => {
                    let result = match task.await {
                        Ok(r) => r,
                        Err(e) => Err(LinkError::WebSocket(format!("connect task: {e}"))),
                    };
                    return match result {
                        Ok((ws, welcomed)) => {
                            self.attempt = 0;
                            let mut ping = tokio::time::interval_at(
                                Instant::now() + self.timings.ping_every,
                                self.timings.ping_every,
                            );
                            ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            self.state = State::Connected {
                                ws: Box::new(ws),
                                last_rx: Instant::now(),
                                ping,
                            };
                            LinkEvent::Up(welcomed)
                        }
                        Err(e) => {
                            self.schedule_retry();
                            LinkEvent::ConnectFailed(e)
                        }
                    };
                }
                State::Connected { ws, last_rx, ping } => {
                    let dead_at = *last_rx + self.timings.dead_after;
                    tokio::select! {
                        frame = ws.next() => match frame {
                            Some(Ok(Message::Text(text))) => {
                                *last_rx = Instant::now();
                                return match rigfleet_proto::decode_server(text.as_str()) {
                                    Ok(msg) => LinkEvent::Message(msg),
                                    Err(e) => LinkEvent::BadFrame(e),
                                };
                            }
                            Some(Ok(Message::Close(frame))) => {
                                let reason = format!(
                                    "closed by the server{}",
                                    close_reason(frame.as_ref())
                                );
                                return self.lose(reason);
                            }
                            Some(Ok(Message::Binary(_))) => {
                                *last_rx = Instant::now();
                                return LinkEvent::BadFrame(ProtoError::Malformed(
                                    "binary frame (only text is used)".into(),
                                ));
                            }
                            Some(Ok(_)) => *last_rx = Instant::now(),
                            Some(Err(e)) => return self.lose(format!("websocket: {e}")),
                            None => return self.lose("connection closed".into()),
                        },
                        _ = ping.tick() => return LinkEvent::PingDue,
                        () = tokio::time::sleep_until(dead_at) => {
                            let secs = self.timings.dead_after.as_secs_f64();
                            return self.lose(format!("no frame from the server for {secs:.1} s"));
                        }
                    }
                }
            }
        }
    }

    /// Sends one text frame (already encoded) within the send limit. On failure the connection
    /// is dropped, a retry scheduled, and the reason returned.
    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        let State::Connected { ws, .. } = &mut self.state else {
            return Err("not connected".into());
        };
        match tokio::time::timeout(self.timings.send_timeout, ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lose_reason(format!("send failed: {e}"))),
            Err(_) => Err(self.lose_reason("send timed out (server not reading)".into())),
        }
    }

    /// Encodes and sends a message (see [`Link::send_text`]).
    pub async fn send(&mut self, msg: &rigfleet_proto::AgentMessage) -> Result<(), String> {
        match rigfleet_proto::encode_agent(msg) {
            Ok(text) => self.send_text(text).await,
            // Our own message broke a limit: a bug to log, not a reason to drop the link.
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode a message for the server; dropped");
                Ok(())
            }
        }
    }

    /// Sends a WebSocket ping.
    pub async fn ping(&mut self) -> Result<(), String> {
        let State::Connected { ws, .. } = &mut self.state else {
            return Ok(());
        };
        match tokio::time::timeout(
            self.timings.send_timeout,
            ws.send(Message::Ping(Vec::new().into())),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lose_reason(format!("ping failed: {e}"))),
            Err(_) => Err(self.lose_reason("ping timed out".into())),
        }
    }

    /// Drops the current connection (a protocol error from the server's side, or a stuck
    /// exchange) and schedules a retry.
    pub fn reconnect(&mut self, reason: &str) {
        let _ = self.lose_reason(reason.to_string());
    }

    /// Closes the connection cleanly (a close frame, bounded) and stops reconnecting.
    pub async fn close(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::Connected { mut ws, .. } => {
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "agent stopping".into(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
            }
            State::Connecting(task) => task.abort(),
            _ => {}
        }
    }

    fn lose(&mut self, reason: String) -> LinkEvent {
        LinkEvent::Down(self.lose_reason(reason))
    }

    fn lose_reason(&mut self, reason: String) -> String {
        if let State::Connecting(task) = &self.state {
            task.abort();
        }
        self.schedule_retry();
        reason
    }

    fn schedule_retry(&mut self) {
        self.failures += 1;
        let delay = backoff_delay_with(
            self.attempt,
            self.timings.backoff_base,
            self.timings.backoff_max,
            &mut || self.jitter.next_u64(),
        );
        self.attempt = self.attempt.saturating_add(1);
        self.state = State::Waiting(Instant::now() + delay);
    }
}
