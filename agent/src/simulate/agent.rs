//! One simulated agent: the real link, handshake, batching and order checks, over a synthetic
//! rig and an in-memory sample store.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use super::AgentReport;
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
    /// Sample taken → acknowledged, in ms, for every sample taken live (not the backlog).
    pub ack_latencies_ms: Mutex<Vec<u32>>,
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
    /// Added to every time the agent reports (ms).
    pub clock_skew_ms: i64,
    /// Samples queued at start.
    pub backlog: Duration,
    /// Samples per interval.
    pub burst: u32,
    /// One report per agent, by index.
    pub reports: Arc<Mutex<Vec<AgentReport>>>,
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
        index,
        skew_ms: shared.clock_skew_ms,
        reports: Arc::clone(&shared.reports),
        taken: VecDeque::new(),
        produced: 0,
    };
    // A backlog: samples of the last `backlog` seconds, as a rig that was offline keeps them.
    let step_ms = i64::try_from(shared.interval.as_millis())
        .unwrap_or(1000)
        .max(1);
    let backlog_samples =
        u64::try_from(shared.backlog.as_millis() / shared.interval.as_millis().max(1))
            .unwrap_or(0)
            .min(STORE_CAPACITY as u64);
    let now = now_unix_ms();
    for i in 0..backlog_samples {
        let back = (backlog_samples - i) as i64 * step_ms;
        let sample = agent
            .synth
            .sample(shared.interval.as_secs().max(1), now - back + agent.skew_ms);
        agent.produced = agent.store.push(sample);
    }
    agent.report();
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
                for _ in 0..shared.burst.max(1) {
                    let sample = agent.synth.sample(interval_secs, now_unix_ms() + agent.skew_ms);
                    agent.produced = agent.store.push(sample);
                    agent.taken.push_back((agent.produced, std::time::Instant::now()));
                }
                agent.report();
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
    index: usize,
    skew_ms: i64,
    reports: Arc<Mutex<Vec<AgentReport>>>,
    /// Live samples not acknowledged yet, with the moment each was taken.
    taken: VecDeque<(u64, std::time::Instant)>,
    /// Highest seq produced.
    produced: u64,
}

impl SimAgent {
    /// Publishes what this agent produced, had acknowledged and dropped.
    fn report(&self) {
        use crate::daemon::link::session::SampleStore;
        if let Ok(mut all) = self.reports.lock() {
            if let Some(slot) = all.get_mut(self.index) {
                *slot = AgentReport {
                    rig_id: self.rig.to_string(),
                    stream_id: self.store.stream_id().unwrap_or_default(),
                    produced: self.produced,
                    acked: self.store.acked_seq(),
                    dropped: self.store.dropped,
                    dropped_through: self.store.dropped_through(),
                };
            }
        }
    }

    /// Records the ack latency of every live sample up to `acked`.
    fn record_latencies(&mut self, acked: u64) {
        let now = std::time::Instant::now();
        let mut lat = Vec::new();
        while let Some(&(seq, at)) = self.taken.front() {
            if seq > acked {
                break;
            }
            self.taken.pop_front();
            lat.push(u32::try_from(now.duration_since(at).as_millis()).unwrap_or(u32::MAX));
        }
        // Samples dropped to the bound are never acknowledged one by one: forget them.
        while self.taken.len() > STORE_CAPACITY {
            self.taken.pop_front();
        }
        if !lat.is_empty() {
            if let Ok(mut all) = self.stats.ack_latencies_ms.lock() {
                all.extend(lat);
            }
        }
    }

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
            clock_unix_ms: now_unix_ms() + self.skew_ms,
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
                self.record_latencies(after);
                self.report();
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
