//! One simulated agent: the real link, handshake, batching and order checks, over a synthetic
//! rig and an in-memory sample store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rigfleet_proto::agent_to_server::{
    CommandResult, ConfigApplied, DeviceDescriptor, Hello, RigHello,
};
use rigfleet_proto::command::CommandOrder;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::signing::{OrderKind, SignedOrder};
use rigfleet_proto::{AgentMessage, RigId, ServerMessage};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::synth::SynthRig;
use crate::daemon::identity::{rollover_key, Identity};
use crate::daemon::link::backoff::Jitter;
use crate::daemon::link::orders::{admit, payload_error, refusal_event, MemoryCounters};
use crate::daemon::link::session::{MemoryStore, Outbox, ACK_STALL};
use crate::daemon::link::target::ServerUrl;
use crate::daemon::link::{now_unix_ms, Link, LinkEvent, LinkTimings};

/// Unacknowledged samples one simulated agent keeps (24 h at 10 s).
const STORE_CAPACITY: usize = 8_640;

/// Counters over every simulated agent.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Agents connected now.
    pub connected: AtomicI64,
    /// Samples sent (resends included).
    pub samples_sent: AtomicU64,
    /// Samples the server acknowledged.
    pub samples_acked: AtomicU64,
    /// Connections lost or attempts failed.
    pub reconnects: AtomicU64,
    /// `set_config` answered ok.
    pub configs_applied: AtomicU64,
    /// Commands answered.
    pub commands: AtomicU64,
    /// Orders refused.
    pub orders_refused: AtomicU64,
}

/// What every simulated agent shares.
#[derive(Clone)]
pub struct SimShared {
    /// The server.
    pub url: ServerUrl,
    /// Its TLS trust.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Link limits.
    pub timings: LinkTimings,
    /// Telemetry interval.
    pub interval: Duration,
    /// Devices per rig.
    pub devices: usize,
    /// Counters.
    pub stats: Arc<SimStats>,
}

/// Runs one agent until `stop` turns true.
pub async fn run_agent(
    index: usize,
    identity: Identity,
    state_dir: PathBuf,
    shared: SimShared,
    mut stop: watch::Receiver<bool>,
) {
    let Some(rig) = identity.rig_ids.first().cloned() else {
        return;
    };
    let mut agent = SimAgent {
        identity: Arc::new(identity),
        state_dir,
        rig: rig.clone(),
        synth: SynthRig::new(shared.devices, index as u64 + 1),
        devices: super::synth::descriptors(shared.devices),
        store: MemoryStore::new(STORE_CAPACITY),
        outbox: Outbox::new(rig),
        counters: MemoryCounters::default(),
        applied: None,
        clock_offset_ms: 0,
        link: Link::new_delayed(
            shared.url.clone(),
            shared.tls.clone(),
            shared.timings,
            Jitter::from_os(),
            shared.interval.min(Duration::from_secs(10)),
        ),
        stats: Arc::clone(&shared.stats),
        hostname: format!("sim-{index}"),
        was_connected: false,
    };
    let mut jitter = Jitter::from_os();
    let offset_ms = jitter.next_u64()
        % u64::try_from(shared.interval.as_millis())
            .unwrap_or(1)
            .max(1);
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_millis(offset_ms),
        shared.interval,
    );
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let interval_secs = shared.interval.as_secs().max(1);
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = tick.tick() => {
                let sample = agent.synth.sample(interval_secs, now_unix_ms());
                agent.store.push(sample);
                if agent.outbox.stalled(ACK_STALL) {
                    agent.link.reconnect("no ack");
                } else {
                    agent.pump().await;
                }
            }
            ev = agent.link.next_event() => agent.on_event(ev).await,
        }
        agent.track_connection();
    }
    agent.link.close().await;
    agent.track_connection_closed();
}

struct SimAgent {
    identity: Arc<Identity>,
    state_dir: PathBuf,
    rig: RigId,
    synth: SynthRig,
    devices: Vec<DeviceDescriptor>,
    store: MemoryStore,
    outbox: Outbox,
    counters: MemoryCounters,
    applied: Option<DesiredConfig>,
    clock_offset_ms: i64,
    link: Link,
    stats: Arc<SimStats>,
    hostname: String,
    was_connected: bool,
}

impl SimAgent {
    fn track_connection(&mut self) {
        let now = self.link.is_connected();
        if now != self.was_connected {
            self.stats
                .connected
                .fetch_add(if now { 1 } else { -1 }, Ordering::Relaxed);
            if !now {
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.was_connected = now;
        }
    }

    fn track_connection_closed(&mut self) {
        if self.was_connected {
            self.stats.connected.fetch_add(-1, Ordering::Relaxed);
            self.was_connected = false;
        }
    }

    async fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::ReadyToConnect => {
                let hello = self.hello();
                self.link.connect(Arc::clone(&self.identity), hello);
            }
            LinkEvent::Up(w) => {
                self.clock_offset_ms = w.clock_offset_ms;
                self.outbox.reset(&self.store);
                self.pump().await;
            }
            LinkEvent::ConnectFailed(e) => {
                tracing::debug!(agent = %self.identity.agent_id, error = %e, "connect failed");
            }
            LinkEvent::Down(reason) => {
                tracing::debug!(agent = %self.identity.agent_id, %reason, "link down");
            }
            LinkEvent::PingDue => {
                let _ = self.link.ping().await;
            }
            LinkEvent::BadFrame(e) => {
                tracing::debug!(agent = %self.identity.agent_id, error = %e, "bad frame");
            }
            LinkEvent::Message(msg) => self.on_message(msg).await,
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            agent_id: self.identity.agent_id.clone(),
            protocol_min: rigfleet_proto::MIN_PROTOCOL_VERSION,
            protocol_max: rigfleet_proto::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            clock_unix_ms: now_unix_ms(),
            rigs: vec![RigHello {
                rig_id: self.rig.clone(),
                devices: self.devices.clone(),
                applied_config_version: self.applied.as_ref().map(|c| c.version),
                last_acked_seq: Some(crate::daemon::link::session::SampleStore::acked_seq(
                    &self.store,
                )),
                last_order_counter: self.counters.0.get(&self.rig).copied(),
                stream_id: crate::daemon::link::session::SampleStore::stream_id(&self.store),
            }],
            nonce: None,
        }
    }

    async fn pump(&mut self) {
        while self.link.is_connected() {
            let before = self.outbox.samples_sent;
            match self.outbox.next_frame(&self.store) {
                Ok(Some(frame)) => {
                    if self.link.send_text(frame).await.is_err() {
                        return;
                    }
                    self.stats
                        .samples_sent
                        .fetch_add(self.outbox.samples_sent - before, Ordering::Relaxed);
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    async fn send(&mut self, msg: AgentMessage) {
        let _ = self.link.send(&msg).await;
    }

    async fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Ack(ack) if ack.rig_id == self.rig => {
                let before = crate::daemon::link::session::SampleStore::acked_seq(&self.store);
                let _ = self
                    .outbox
                    .on_ack(&mut self.store, ack.seq, ack.stream_id.as_deref());
                let after = crate::daemon::link::session::SampleStore::acked_seq(&self.store);
                self.stats
                    .samples_acked
                    .fetch_add(after.saturating_sub(before), Ordering::Relaxed);
                self.pump().await;
            }
            ServerMessage::SetConfig(order) => self.set_config(order).await,
            ServerMessage::Command(order) => self.command(order).await,
            ServerMessage::KeyRollover(order) => self.rollover(order).await,
            ServerMessage::Error(e) => {
                tracing::debug!(agent = %self.identity.agent_id, code = ?e.code, message = %e.message, "server error");
            }
            _ => {}
        }
    }

    async fn refuse(&mut self, kind: OrderKind, order: &SignedOrder, reason: &str) {
        self.stats.orders_refused.fetch_add(1, Ordering::Relaxed);
        let msg = refusal_event(&self.rig, kind, order, reason);
        self.send(msg).await;
    }

    async fn set_config(&mut self, order: SignedOrder) {
        if let Err(reason) = admit(
            &self.identity,
            &mut self.counters,
            OrderKind::SetConfig,
            &order,
            self.clock_offset_ms,
        ) {
            self.refuse(OrderKind::SetConfig, &order, &reason).await;
            return;
        }
        let (version, hash, result) = match serde_json::from_str::<DesiredConfig>(&order.payload) {
            Err(e) => (0, String::new(), Err(payload_error("set_config", &e))),
            Ok(c) => {
                let result = check_version(&c, self.applied.as_ref());
                if result.is_ok() {
                    self.synth.apply(&c);
                    self.applied = Some(c.clone());
                }
                (c.version, c.content_hash(), result)
            }
        };
        if result.is_ok() {
            self.stats.configs_applied.fetch_add(1, Ordering::Relaxed);
        }
        let (ok, error) = match result {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        };
        self.send(AgentMessage::ConfigApplied(ConfigApplied {
            rig_id: order.rig_id.clone(),
            version,
            content_hash: hash,
            ok,
            error,
        }))
        .await;
    }

    async fn command(&mut self, order: SignedOrder) {
        if let Err(reason) = admit(
            &self.identity,
            &mut self.counters,
            OrderKind::Command,
            &order,
            self.clock_offset_ms,
        ) {
            self.refuse(OrderKind::Command, &order, &reason).await;
            return;
        }
        let cmd = match serde_json::from_str::<CommandOrder>(&order.payload) {
            Ok(c) if c.validate().is_ok() => c,
            Ok(_) => {
                self.refuse(OrderKind::Command, &order, "invalid command")
                    .await;
                return;
            }
            Err(e) => {
                let reason = payload_error("command", &e);
                self.refuse(OrderKind::Command, &order, &reason).await;
                return;
            }
        };
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let kind = serde_json::to_value(&cmd.command)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default();
        self.send(AgentMessage::CommandResult(CommandResult {
            rig_id: order.rig_id.clone(),
            command_id: cmd.command_id,
            ok: true,
            output: format!("simulated {kind}"),
        }))
        .await;
    }

    async fn rollover(&mut self, order: SignedOrder) {
        if let Err(reason) = admit(
            &self.identity,
            &mut self.counters,
            OrderKind::KeyRollover,
            &order,
            self.clock_offset_ms,
        ) {
            self.refuse(OrderKind::KeyRollover, &order, &reason).await;
            return;
        }
        match rollover_key(&order.payload) {
            Ok(key) => {
                let mut id = (*self.identity).clone();
                if id.pin_server_key(key, &self.state_dir).is_ok() {
                    self.identity = Arc::new(id);
                }
            }
            Err(e) => {
                self.refuse(OrderKind::KeyRollover, &order, &e.to_string())
                    .await;
            }
        }
    }
}

/// The version rule of `set_config` without a mining runtime.
fn check_version(c: &DesiredConfig, applied: Option<&DesiredConfig>) -> Result<(), String> {
    c.validate().map_err(|e| e.to_string())?;
    match applied {
        Some(a) if c.version < a.version => Err(format!(
            "version {} is below the applied version {}",
            c.version, a.version
        )),
        Some(a) if c.version == a.version && c.content_hash() != a.content_hash() => Err(format!(
            "version {} is already applied with other content",
            c.version
        )),
        _ => Ok(()),
    }
}
