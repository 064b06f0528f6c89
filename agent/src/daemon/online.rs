//! The online half of `run`: everything the daemon does with the server once it has an
//! identity. It owns the link, the telemetry queue and its outbox, the order counters, and the
//! replies waiting for a connection; the daemon loop owns the mining runtime and lends it to
//! [`Online::handle`] for orders.
//!
//! Telemetry: every interval a sample is pushed into the on-disk queue (which gives it its seq)
//! whether connected or not; while connected the outbox sends what the server has not
//! acknowledged, a bounded number of batches at a time, and each `ack` frees queue space.
//! Replies and events produced while the link is down wait in a small bounded list and go out
//! first after the next `welcome`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rigfleet_proto::agent_to_server::{
    CommandResult, ConfigApplied, DeviceDescriptor, Hello, RigHello, Severity,
};
use rigfleet_proto::command::CommandOrder;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::server_to_agent::ErrorCode;
use rigfleet_proto::signing::{OrderKind, SignedOrder};
use rigfleet_proto::{AgentMessage, CommandId, RigId, ServerMessage};
use tokio::sync::mpsc;

use super::commands::{self, Plan};
use super::config::OptIns;
use super::desired;
use super::identity::{rollover_key, Identity};
use super::link::connect::{error_code, LinkError};
use super::link::orders::{
    admit, bound_text, event, payload_error, refusal_event, CounterStore, PersistedCounters,
};
use super::link::session::{Outbox, SampleStore, ACK_STALL};
use super::link::{Link, LinkEvent};
use super::mining::MiningRuntime;
use super::queue::TelemetryQueue;
use super::sampler::Sampler;
use super::watchdog::Watchdog;

/// Telemetry interval until the server's `welcome` names one.
pub const DEFAULT_INTERVAL_SECS: u32 = 10;
/// Replies and events kept while the link is down (the oldest go first beyond it).
const MAX_OUTGOING: usize = 256;

/// A finished command job: its id and `(ok, output)`.
type JobDone = (CommandId, bool, String);

/// What woke the online half.
#[derive(Debug)]
pub enum Input {
    /// Something on the link.
    Link(LinkEvent),
    /// A command running on a blocking thread finished.
    JobDone(JobDone),
}

/// See the module docs.
pub struct Online {
    identity: Arc<Identity>,
    state_dir: PathBuf,
    rig: RigId,
    counters: PersistedCounters,
    queue: TelemetryQueue,
    outbox: Outbox,
    link: Link,
    opt_in: OptIns,
    hostname: String,
    devices: Vec<DeviceDescriptor>,
    clock_offset_ms: i64,
    welcome_interval: Option<u32>,
    reported_loss: u64,
    /// `unqueued_total` already reported.
    reported_unqueued: u64,
    outgoing: VecDeque<AgentMessage>,
    jobs_tx: mpsc::UnboundedSender<JobDone>,
    jobs_rx: mpsc::UnboundedReceiver<JobDone>,
}

/// What [`Online::new`] needs.
pub struct OnlineParts {
    /// The enrolled identity.
    pub identity: Identity,
    /// The state folder.
    pub state_dir: PathBuf,
    /// Accepted order counters.
    pub counters: PersistedCounters,
    /// The telemetry queue.
    pub queue: TelemetryQueue,
    /// The link (not yet connected).
    pub link: Link,
    /// Local opt-ins.
    pub opt_in: OptIns,
    /// Host name for `hello`.
    pub hostname: String,
    /// Devices for `hello`.
    pub devices: Vec<DeviceDescriptor>,
}

impl Online {
    /// The online half; `None` when the identity fronts no rig (a corrupt identity).
    pub fn new(parts: OnlineParts) -> Option<Online> {
        let rig = parts.identity.rig_ids.first()?.clone();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let reported_loss = parts.queue.loss().dropped_total;
        let reported_unqueued = parts.queue.loss().unqueued_total;
        Some(Online {
            outbox: Outbox::new(rig.clone()),
            identity: Arc::new(parts.identity),
            state_dir: parts.state_dir,
            rig,
            counters: parts.counters,
            queue: parts.queue,
            link: parts.link,
            opt_in: parts.opt_in,
            hostname: parts.hostname,
            devices: parts.devices,
            clock_offset_ms: 0,
            welcome_interval: None,
            reported_loss,
            reported_unqueued,
            outgoing: VecDeque::new(),
            jobs_tx,
            jobs_rx,
        })
    }

    /// The telemetry interval: the applied config's, else the server's welcome, else 10 s.
    pub fn interval(&self, mining: &MiningRuntime) -> Duration {
        let secs = mining
            .applied()
            .and_then(|c| c.telemetry_interval_secs)
            .filter(|s| *s > 0)
            .or(self.welcome_interval)
            .unwrap_or(DEFAULT_INTERVAL_SECS)
            .clamp(1, 3600);
        Duration::from_secs(u64::from(secs))
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The queue (tests and status lines).
    pub fn queue(&self) -> &TelemetryQueue {
        &self.queue
    }

    /// The identity in use.
    #[cfg(test)]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The next input. Cancel-safe.
    pub async fn next(&mut self) -> Input {
        tokio::select! {
            ev = self.link.next_event() => Input::Link(ev),
            Some(done) = self.jobs_rx.recv() => Input::JobDone(done),
        }
    }

    /// Acts on an input.
    pub async fn handle(
        &mut self,
        input: Input,
        mining: &mut MiningRuntime,
        watchdog: &mut Watchdog,
    ) {
        match input {
            Input::JobDone((command_id, ok, output)) => {
                self.send(AgentMessage::CommandResult(CommandResult {
                    rig_id: self.rig.clone(),
                    command_id,
                    ok,
                    output: bound_text(output),
                }))
                .await;
            }
            Input::Link(ev) => self.link_event(ev, mining, watchdog).await,
        }
    }

    async fn link_event(
        &mut self,
        ev: LinkEvent,
        mining: &mut MiningRuntime,
        watchdog: &mut Watchdog,
    ) {
        match ev {
            LinkEvent::ReadyToConnect => {
                let hello = self.hello(mining);
                self.link.connect(Arc::clone(&self.identity), hello);
            }
            LinkEvent::Up(w) => {
                tracing::info!(
                    server = %self.identity.server_url,
                    interval_secs = w.welcome.telemetry_interval_secs,
                    clock_offset_ms = w.clock_offset_ms,
                    unacked = self.queue.len(),
                    "Connected to the server"
                );
                if (w.clock_offset_ms - w.local_offset_estimate_ms).abs() > 5_000 {
                    tracing::warn!(
                        server_says = w.clock_offset_ms,
                        challenge_says = w.local_offset_estimate_ms,
                        "Clock offset estimates disagree by more than 5 s"
                    );
                }
                self.clock_offset_ms = w.clock_offset_ms;
                self.welcome_interval = Some(w.welcome.telemetry_interval_secs);
                self.drop_unreadable_head().await;
                self.outbox.reset(&self.queue);
                self.flush_outgoing().await;
                self.report_loss().await;
                self.pump().await;
            }
            LinkEvent::ConnectFailed(e) => log_connect_failure(&e),
            LinkEvent::Down(reason) => {
                tracing::warn!(%reason, "Server link lost; reconnecting");
            }
            LinkEvent::PingDue => {
                if let Err(reason) = self.link.ping().await {
                    tracing::warn!(%reason, "Server link lost; reconnecting");
                }
            }
            LinkEvent::BadFrame(e) => {
                tracing::warn!(error = %e, "Ignoring a frame from the server that does not decode");
            }
            LinkEvent::Message(msg) => self.message(msg, mining, watchdog).await,
        }
    }

    async fn message(
        &mut self,
        msg: ServerMessage,
        mining: &mut MiningRuntime,
        watchdog: &mut Watchdog,
    ) {
        match msg {
            ServerMessage::Ack(ack) => {
                if ack.rig_id != self.rig {
                    tracing::warn!(rig = %ack.rig_id, "Ack for a rig this agent does not send for");
                    return;
                }
                if let Err(error) =
                    self.outbox
                        .on_ack(&mut self.queue, ack.seq, ack.stream_id.as_deref())
                {
                    tracing::error!(%error, "Cannot record the ack in the telemetry queue");
                }
                self.drop_unreadable_head().await;
                self.pump().await;
            }
            ServerMessage::SetConfig(order) => self.set_config(order, mining, watchdog).await,
            ServerMessage::Command(order) => self.command(order, mining, watchdog).await,
            ServerMessage::KeyRollover(order) => self.key_rollover(order).await,
            ServerMessage::Error(e) => {
                let code = error_code(e.code);
                match e.code {
                    ErrorCode::AuthFailed | ErrorCode::UnsupportedProtocol => tracing::error!(
                        %code,
                        message = %e.message,
                        "The server refused this agent"
                    ),
                    _ => tracing::warn!(%code, message = %e.message, "Error from the server"),
                }
            }
            ServerMessage::Challenge(_) | ServerMessage::Welcome(_) => {
                tracing::warn!("Handshake frame after the handshake; ignored");
            }
        }
    }

    /// Takes a telemetry sample into the queue and sends what the window allows.
    pub async fn sample(&mut self, mining: &MiningRuntime, sampler: &mut Sampler) {
        let sample = sampler.sample(&mining.snapshot());
        if let Err(error) = self.queue.push(sample) {
            // Mining goes on; the loss is counted and reported like the queue's own drops.
            tracing::error!(%error, "Cannot queue a telemetry sample");
            self.queue.record_unqueued();
        }
        self.report_loss().await;
        if self.outbox.stalled(ACK_STALL) {
            self.link.reconnect("no ack for the telemetry in flight");
            tracing::warn!("Server stopped acknowledging telemetry; reconnecting");
            return;
        }
        self.pump().await;
    }

    /// Sends an event about this rig (now, or after the next connect).
    pub async fn event(&mut self, severity: Severity, kind: &str, message: String) {
        let msg = event(&self.rig, severity, kind, message);
        self.send(msg).await;
    }

    /// Closes the link cleanly and flushes the queue.
    pub async fn shutdown(&mut self) {
        self.link.close().await;
        if let Err(error) = self.queue.sync() {
            tracing::error!(%error, "Cannot flush the telemetry queue");
        }
    }

    fn hello(&self, mining: &MiningRuntime) -> Hello {
        let applied = mining.applied().map(|c| c.version);
        Hello {
            agent_id: self.identity.agent_id.clone(),
            protocol_min: rigfleet_proto::MIN_PROTOCOL_VERSION,
            protocol_max: rigfleet_proto::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            clock_unix_ms: super::link::now_unix_ms(),
            rigs: self
                .identity
                .rig_ids
                .iter()
                .map(|r| {
                    let primary = r == &self.rig;
                    RigHello {
                        rig_id: r.clone(),
                        devices: if primary {
                            self.devices.clone()
                        } else {
                            vec![]
                        },
                        applied_config_version: if primary { applied } else { None },
                        last_acked_seq: primary.then(|| self.queue.acked_seq()),
                        last_order_counter: self.counters.last(r),
                        stream_id: if primary {
                            SampleStore::stream_id(&self.queue)
                        } else {
                            None
                        },
                    }
                })
                .collect(),
            // The link's handshake puts its fresh nonce here.
            nonce: None,
        }
    }

    async fn send(&mut self, msg: AgentMessage) {
        if !self.link.is_connected() {
            self.keep(msg);
            return;
        }
        if let Err(reason) = self.link.send(&msg).await {
            tracing::warn!(%reason, "Server link lost; reconnecting");
            self.keep(msg);
        }
    }

    fn keep(&mut self, msg: AgentMessage) {
        if self.outgoing.len() >= MAX_OUTGOING {
            self.outgoing.pop_front();
        }
        self.outgoing.push_back(msg);
    }

    async fn flush_outgoing(&mut self) {
        while let Some(msg) = self.outgoing.pop_front() {
            if let Err(reason) = self.link.send(&msg).await {
                tracing::warn!(%reason, "Server link lost; reconnecting");
                self.outgoing.push_front(msg);
                return;
            }
        }
    }

    async fn pump(&mut self) {
        while self.link.is_connected() {
            match self.outbox.next_frame(&self.queue) {
                Ok(Some(frame)) => {
                    if let Err(reason) = self.link.send_text(frame).await {
                        tracing::warn!(%reason, "Server link lost; reconnecting");
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "Cannot read the telemetry queue");
                    return;
                }
            }
        }
    }

    /// An unreadable record at the head of the queue would hold the server's acknowledgement
    /// back forever: count it as dropped (the next frame says so) and report it.
    async fn drop_unreadable_head(&mut self) {
        loop {
            match self.queue.drop_unreadable_head() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::error!(%error, "Cannot record an unreadable telemetry record");
                    break;
                }
            }
        }
        self.report_loss().await;
    }

    async fn report_loss(&mut self) {
        let loss = self.queue.loss();
        if loss.unqueued_total > self.reported_unqueued {
            let new = loss.unqueued_total - self.reported_unqueued;
            self.reported_unqueued = loss.unqueued_total;
            self.event(
                Severity::Error,
                "telemetry_not_queued",
                format!(
                    "{new} telemetry samples could not be written to the on-disk queue (disk full or failing?); {} in total; mining goes on",
                    loss.unqueued_total
                ),
            )
            .await;
        }
        if loss.dropped_total > self.reported_loss {
            let new = loss.dropped_total - self.reported_loss;
            self.reported_loss = loss.dropped_total;
            self.event(
                Severity::Warning,
                "telemetry_dropped",
                format!(
                    "{new} telemetry samples dropped unsent (queue full); {} in total, every seq up to {} is gone",
                    loss.dropped_total, loss.dropped_through_seq
                ),
            )
            .await;
        }
    }

    async fn refuse(&mut self, kind: OrderKind, order: &SignedOrder, reason: &str) {
        tracing::warn!(kind = ?kind, counter = order.counter, %reason, "Order refused");
        let msg = refusal_event(&self.rig, kind, order, reason);
        self.send(msg).await;
    }

    async fn set_config(
        &mut self,
        order: SignedOrder,
        mining: &mut MiningRuntime,
        watchdog: &mut Watchdog,
    ) {
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
        let config = match serde_json::from_str::<DesiredConfig>(&order.payload) {
            Ok(c) => c,
            Err(e) => {
                let error = payload_error("set_config", &e);
                self.applied_answer(&order.rig_id, 0, String::new(), Err(error))
                    .await;
                return;
            }
        };
        if let Err(reason) = check_version(&config, mining, &self.state_dir) {
            // Never go back to an older config (issue 11, item 8): the current one keeps running.
            tracing::warn!(version = config.version, %reason, "Config refused");
            self.event(
                Severity::Warning,
                "config_refused",
                format!("config version {} refused: {reason}", config.version),
            )
            .await;
            self.applied_answer(
                &order.rig_id,
                config.version,
                config.content_hash(),
                Err(reason),
            )
            .await;
            return;
        }
        let outcome = apply_config(&config, mining, &self.state_dir).await;
        match &outcome {
            Ok(notes) => {
                watchdog.reset();
                for note in notes.clone() {
                    self.event(Severity::Warning, "setting_clamped", note).await;
                }
            }
            Err(error) => tracing::warn!(version = config.version, %error, "Config refused"),
        }
        self.applied_answer(
            &order.rig_id,
            config.version,
            config.content_hash(),
            outcome.map(|_| ()),
        )
        .await;
    }

    async fn applied_answer(
        &mut self,
        rig: &RigId,
        version: u64,
        hash: String,
        result: Result<(), String>,
    ) {
        let (ok, error) = match result {
            Ok(()) => (true, None),
            Err(e) => (false, Some(bound_text(e))),
        };
        self.send(AgentMessage::ConfigApplied(ConfigApplied {
            rig_id: rig.clone(),
            version,
            content_hash: hash,
            ok,
            error,
        }))
        .await;
    }

    async fn command(
        &mut self,
        order: SignedOrder,
        mining: &mut MiningRuntime,
        watchdog: &mut Watchdog,
    ) {
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
        let parsed = serde_json::from_str::<CommandOrder>(&order.payload)
            .map_err(|e| payload_error("command", &e))
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        let cmd = match parsed {
            Ok(c) => c,
            Err(reason) => {
                self.refuse(OrderKind::Command, &order, &reason).await;
                return;
            }
        };
        let (ok, output) = match commands::plan(&cmd.command, &self.opt_in) {
            Plan::RestartMining => {
                watchdog.reset();
                match mining.restart().await {
                    Ok(change) => (true, format!("mining restarted ({change:?})")),
                    Err(e) => (false, format!("restart failed: {e}")),
                }
            }
            Plan::SwitchPool(index) => match mining.switch_pool(index).await {
                Ok(()) => (true, format!("switched to pool {index}")),
                Err(e) => (false, format!("switch_pool failed: {e}")),
            },
            Plan::Identify(seconds) => {
                spawn_identify(self.rig.clone(), seconds);
                self.event(
                    Severity::Info,
                    "identify",
                    format!("identify requested for {seconds} s"),
                )
                .await;
                (true, format!("identifying for {seconds} s"))
            }
            Plan::Spawn(job) => {
                let tx = self.jobs_tx.clone();
                let id = cmd.command_id.clone();
                tokio::task::spawn_blocking(move || {
                    let (ok, output) = commands::run_job(&job);
                    let _ = tx.send((id, ok, output));
                });
                return;
            }
            Plan::Refuse(reason) => {
                self.refuse(OrderKind::Command, &order, &reason).await;
                (false, reason)
            }
        };
        self.send(AgentMessage::CommandResult(CommandResult {
            rig_id: order.rig_id.clone(),
            command_id: cmd.command_id,
            ok,
            output: bound_text(output),
        }))
        .await;
    }

    async fn key_rollover(&mut self, order: SignedOrder) {
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
        let new_key = match rollover_key(&order.payload) {
            Ok(k) => k,
            Err(e) => {
                self.refuse(OrderKind::KeyRollover, &order, &e.to_string())
                    .await;
                return;
            }
        };
        let mut identity = (*self.identity).clone();
        match identity.pin_server_key(new_key, &self.state_dir) {
            Ok(()) => {
                let fp = identity.server_key_fingerprint();
                self.identity = Arc::new(identity);
                tracing::info!(server_key = %fp, "Server key rolled over");
                self.event(
                    Severity::Info,
                    "key_rollover",
                    format!("server key now {fp}"),
                )
                .await;
            }
            Err(e) => {
                let reason = format!("cannot save the new key: {e}");
                self.refuse(OrderKind::KeyRollover, &order, &reason).await;
            }
        }
    }
}

/// Whether `config`'s version may be applied: `Ok(true)` when it is the version running now
/// with the same content (answered ok again, nothing to do), `Ok(false)` when it is newer, or
/// the saved version with the same content that the runtime is not running (a retry), and an
/// error for a version below the applied one or the same version with other content. The
/// reference is the higher of the running config's version and the one saved in the state
/// folder, so a rig whose saved config could not start at boot still refuses older versions.
pub fn check_version(
    config: &DesiredConfig,
    mining: &MiningRuntime,
    state_dir: &std::path::Path,
) -> Result<bool, String> {
    let running = mining
        .applied()
        .map(|c| (c.version, Some(c.content_hash())));
    let saved = desired::saved_reference(state_dir);
    let reference = match (running.clone(), saved) {
        (Some(r), Some(s)) if s.0 > r.0 => Some(s),
        (Some(r), _) => Some(r),
        (None, s) => s,
    };
    let Some((version, hash)) = reference else {
        return Ok(false);
    };
    if config.version < version {
        return Err(format!(
            "version {} is below the applied version {version}",
            config.version
        ));
    }
    if config.version == version {
        if hash.as_deref() != Some(config.content_hash().as_str()) {
            return Err(format!(
                "version {} is already applied with other content",
                config.version
            ));
        }
        return Ok(running.is_some_and(|r| r.0 == version));
    }
    Ok(false)
}

/// Applies a verified desired config: validation, version order ([`check_version`]: an equal
/// version with the same content is answered ok again), the runtime, then the file. On an
/// error the previous config keeps running. Ok carries notes about clamped settings.
pub async fn apply_config(
    config: &DesiredConfig,
    mining: &mut MiningRuntime,
    state_dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    config.validate().map_err(|e| e.to_string())?;
    if check_version(config, mining, state_dir)? {
        return Ok(Vec::new());
    }
    let outcome = mining.apply(config).await.map_err(|e| e.to_string())?;
    if let Err(error) = desired::save(state_dir, config) {
        // It runs; only a restart would lose it. Say so loudly rather than stop mining.
        tracing::error!(%error, "Applied config could not be saved");
    }
    Ok(outcome
        .adjustments
        .iter()
        .map(|(device, a)| {
            format!(
                "device {device}: {} {} clamped to {} by the local safety bounds",
                a.field, a.requested, a.applied
            )
        })
        .collect())
}

fn spawn_identify(rig: RigId, seconds: u32) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(seconds));
        while tokio::time::Instant::now() < until {
            tracing::warn!("*** IDENTIFY: this is rig {rig} ***");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

fn log_connect_failure(e: &LinkError) {
    match e {
        LinkError::Refused { code, message } if code == "auth_failed" => tracing::error!(
            %code,
            %message,
            "The server refused this agent's identity (removed, not approved yet, or another server); retrying"
        ),
        LinkError::Refused { code, message } if code == "unsupported_protocol" => tracing::error!(
            %code,
            %message,
            "The server does not speak this agent's protocol; upgrade one of them"
        ),
        other => tracing::warn!(error = %other, "Cannot connect to the server; retrying"),
    }
}
