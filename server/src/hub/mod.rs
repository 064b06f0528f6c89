//! The agent hub: one task per agent link, the live state, and the orders the server sends
//! (signed desired configs and commands).

pub mod connection;
pub mod limits;
pub mod live;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rigfleet_proto::command::{Command, CommandOrder};
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::signing::OrderKind;
use rigfleet_proto::{CommandId, RigId};
use tokio::sync::{mpsc, oneshot};

use crate::db::{DesiredRow, NewEvent, Store, StoreError};
use crate::ingest::WriterHandle;
use crate::keys::ServerKey;
use crate::metrics::ServerMetrics;
use live::{LiveState, RigLive};

/// How long a signed order stays valid (judged by the agent with the handshake's clock offset).
pub const ORDER_LIFETIME: Duration = Duration::from_secs(600);
/// Frames queued towards one agent before the hub calls it too slow.
pub const OUTBOUND_QUEUE: usize = 64;

/// What the hub sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to send.
    Frame(ServerMessage),
    /// Close the link (removed rig, replaced by a newer connection, shutdown).
    Close(String),
}

/// A live agent link, as the hub reaches it.
#[derive(Clone, Debug)]
struct Link {
    conn_id: u64,
    agent_uid: String,
    tx: mpsc::Sender<Outbound>,
    /// When the link last received a frame (Unix ms), shared with its task.
    last_frame_ms: Arc<std::sync::atomic::AtomicI64>,
}

/// A replaced link that was this recent is a second live agent with the same identity rather
/// than a dead connection the server had not noticed yet (agents ping every 15 s).
pub const DUPLICATE_ACTIVE_WITHIN_MS: i64 = 20_000;

/// Why an order could not be made or sent.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payload could not be serialised (never expected).
    #[error("payload: {0}")]
    Encode(String),
}

/// The result of a command as the REST API returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Whether the rig ran it.
    pub ok: bool,
    /// Its output or refusal.
    pub output: String,
}

/// The hub and the state it shares with every connection.
pub struct Hub {
    /// The database.
    pub store: Store,
    /// The telemetry writer.
    pub writer: WriterHandle,
    /// Signs orders.
    pub key: ServerKey,
    /// The key a rotation replaced: rigs that still pin it authenticate against it and are
    /// rolled over to [`Hub::key`] when they connect.
    pub previous_key: Option<ServerKey>,
    /// Latest state per rig.
    pub live: Arc<LiveState>,
    /// Counters.
    pub metrics: Arc<ServerMetrics>,
    /// Interval told to agents.
    pub telemetry_interval_secs: u32,
    /// Refusals logged once per key and minute.
    pub log_limiter: limits::LogLimiter,
    links: Mutex<HashMap<i64, Link>>,
    command_waiters: Mutex<HashMap<String, oneshot::Sender<CommandOutcome>>>,
    next_conn: AtomicU64,
}

impl Hub {
    /// A hub over `store` and `writer`.
    pub fn new(
        store: Store,
        writer: WriterHandle,
        key: ServerKey,
        previous_key: Option<ServerKey>,
        live: Arc<LiveState>,
        metrics: Arc<ServerMetrics>,
        telemetry_interval_secs: u32,
    ) -> Hub {
        Hub {
            store,
            writer,
            key,
            previous_key,
            live,
            metrics,
            telemetry_interval_secs,
            log_limiter: limits::LogLimiter::default(),
            links: Mutex::new(HashMap::new()),
            command_waiters: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Loads every rig and its newest sample into the live state (start of the process).
    pub async fn rebuild_live_state(&self) -> Result<usize, StoreError> {
        let mut offset = 0;
        let mut count = 0;
        loop {
            let page = self
                .store
                .list_rigs(&crate::db::RigFilter {
                    limit: 1000,
                    offset,
                    ..Default::default()
                })
                .await?;
            let n = page.items.len() as i64;
            for row in page.items {
                self.live
                    .insert(live_entry(&row, self.telemetry_interval_secs));
                count += 1;
            }
            if n < 1000 {
                break;
            }
            offset += n;
        }
        for (rig_id, sample) in self.store.latest_samples().await? {
            let time = sample.time_unix_ms;
            self.live.update(rig_id, |rig| {
                rig.last_seen_ms = Some(rig.last_seen_ms.unwrap_or(0).max(time));
                rig.sample = Some(sample);
            });
        }
        Ok(count)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<CommandOutcome>>> {
        self.command_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh connection number.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection for its rigs; the links it replaces are told to close. Returns the
    /// rigs whose replaced link was still active: the same identity connected twice at once (a
    /// cloned disk image), as opposed to a reconnect after a connection the server had not yet
    /// noticed was dead.
    pub(crate) fn register_link(
        &self,
        conn_id: u64,
        agent_uid: &str,
        rig_ids: &[i64],
        tx: mpsc::Sender<Outbound>,
        last_frame_ms: Arc<std::sync::atomic::AtomicI64>,
    ) -> Vec<i64> {
        let now = crate::now_ms();
        let mut replaced = Vec::new();
        let mut links = self.links();
        for &rig in rig_ids {
            let link = Link {
                conn_id,
                agent_uid: agent_uid.to_string(),
                tx: tx.clone(),
                last_frame_ms: last_frame_ms.clone(),
            };
            if let Some(old) = links.insert(rig, link) {
                if old.conn_id != conn_id {
                    let _ = old.tx.try_send(Outbound::Close(
                        "another connection took over this identity".into(),
                    ));
                    let seen = old.last_frame_ms.load(Ordering::Relaxed);
                    if now - seen < DUPLICATE_ACTIVE_WITHIN_MS {
                        replaced.push(rig);
                    }
                }
            }
        }
        self.metrics.agents_connected.set(
            links
                .values()
                .map(|l| l.conn_id)
                .collect::<std::collections::HashSet<_>>()
                .len() as i64,
        );
        replaced
    }

    /// Forgets a connection's rigs (only where that connection still holds them).
    pub(crate) fn unregister_link(&self, conn_id: u64, rig_ids: &[i64]) {
        let mut links = self.links();
        for rig in rig_ids {
            if links.get(rig).is_some_and(|l| l.conn_id == conn_id) {
                links.remove(rig);
                self.live.update(*rig, |r| r.connected = false);
            }
        }
        self.metrics.agents_connected.set(
            links
                .values()
                .map(|l| l.conn_id)
                .collect::<std::collections::HashSet<_>>()
                .len() as i64,
        );
    }

    /// Whether the rig's agent is connected to this server.
    pub fn is_connected(&self, rig_id: i64) -> bool {
        self.links().contains_key(&rig_id)
    }

    /// Agent uid of the link holding a rig.
    pub fn link_agent(&self, rig_id: i64) -> Option<String> {
        self.links().get(&rig_id).map(|l| l.agent_uid.clone())
    }

    fn try_send(&self, rig_id: i64, msg: Outbound) -> bool {
        let tx = self.links().get(&rig_id).map(|l| l.tx.clone());
        match tx {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Closes a rig's link (the rig was removed or its key revoked).
    pub fn disconnect_rig(&self, rig_id: i64, reason: &str) {
        self.try_send(rig_id, Outbound::Close(reason.to_string()));
    }

    /// Closes every link (shutdown).
    pub fn disconnect_all(&self, reason: &str) {
        let txs: Vec<_> = self.links().values().map(|l| l.tx.clone()).collect();
        for tx in txs {
            let _ = tx.try_send(Outbound::Close(reason.to_string()));
        }
    }

    /// Signs an order for `rig_uid` with the rig's next counter.
    pub async fn sign(
        &self,
        kind: OrderKind,
        rig_id: i64,
        rig_uid: &RigId,
        payload: String,
    ) -> Result<rigfleet_proto::signing::SignedOrder, OrderError> {
        self.sign_with(&self.key, kind, rig_id, rig_uid, payload)
            .await
    }

    /// Signs an order with `key` (the previous key signs the rollover to the current one).
    pub async fn sign_with(
        &self,
        key: &ServerKey,
        kind: OrderKind,
        rig_id: i64,
        rig_uid: &RigId,
        payload: String,
    ) -> Result<rigfleet_proto::signing::SignedOrder, OrderError> {
        let counter = self.store.next_order_counter(rig_id).await?;
        let expires = crate::now_ms() + ORDER_LIFETIME.as_millis() as i64;
        Ok(key.sign_order(kind, rig_uid, counter, expires, payload))
    }

    /// Stores a new desired config for the rig (the version is assigned there) and pushes it
    /// if the rig is connected; an offline rig gets it when it reconnects.
    pub async fn set_desired_config(
        &self,
        rig_id: i64,
        rig_uid: &RigId,
        config: &DesiredConfig,
        actor: Option<&str>,
    ) -> Result<(DesiredRow, bool), OrderError> {
        let row = self
            .store
            .set_desired_config(rig_id, config, actor, crate::now_ms())
            .await?;
        let sent = self.push_config(rig_id, rig_uid, &row).await?;
        Ok((row, sent))
    }

    /// Signs and sends a stored desired config; false when the rig is not connected.
    pub async fn push_config(
        &self,
        rig_id: i64,
        rig_uid: &RigId,
        row: &DesiredRow,
    ) -> Result<bool, OrderError> {
        if !self.is_connected(rig_id) {
            return Ok(false);
        }
        let payload =
            serde_json::to_string(&row.config).map_err(|e| OrderError::Encode(e.to_string()))?;
        let order = self
            .sign(OrderKind::SetConfig, rig_id, rig_uid, payload)
            .await?;
        Ok(self.try_send(rig_id, Outbound::Frame(ServerMessage::SetConfig(order))))
    }

    /// Records and sends a command; returns its id and a receiver for its result. A rig that
    /// is not connected gets the command failed at once (commands do not wait for a rig).
    pub async fn send_command(
        &self,
        rig_id: i64,
        rig_uid: &RigId,
        command: Command,
        actor: Option<&str>,
    ) -> Result<(CommandId, oneshot::Receiver<CommandOutcome>), OrderError> {
        let id = CommandId(format!("cmd-{}", random_hex(8)));
        let order = CommandOrder {
            command_id: id.clone(),
            command,
        };
        let payload =
            serde_json::to_string(&order).map_err(|e| OrderError::Encode(e.to_string()))?;
        let now = crate::now_ms();
        self.store
            .insert_command(rig_id, id.as_str(), &payload, actor, now)
            .await?;
        let (tx, rx) = oneshot::channel();
        self.waiters().insert(id.0.clone(), tx);
        let sent = if self.is_connected(rig_id) {
            let signed = self
                .sign(OrderKind::Command, rig_id, rig_uid, payload)
                .await?;
            self.try_send(rig_id, Outbound::Frame(ServerMessage::Command(signed)))
        } else {
            false
        };
        if !sent {
            let output = "rig is not connected".to_string();
            self.store
                .finish_command(rig_id, id.as_str(), false, &output, now)
                .await?;
            self.command_finished(id.as_str(), false, output);
        }
        Ok((id, rx))
    }

    /// Wakes whoever waits for a command's result.
    pub(crate) fn command_finished(&self, command_uid: &str, ok: bool, output: String) {
        if let Some(tx) = self.waiters().remove(command_uid) {
            let _ = tx.send(CommandOutcome { ok, output });
        }
    }

    /// Stores an event, logging (not failing) when the database refuses.
    pub async fn event(&self, rig_id: Option<i64>, severity: &str, kind: &str, message: String) {
        let event = NewEvent {
            rig_id,
            time_ms: crate::now_ms(),
            severity: severity.to_string(),
            kind: kind.to_string(),
            message,
        };
        if let Err(error) = self.store.insert_events(std::slice::from_ref(&event)).await {
            self.metrics.error("event_store");
            tracing::warn!(%error, kind, "Could not store an event");
        }
    }
}

/// The live entry for a rig row.
pub fn live_entry(row: &crate::db::RigRow, interval: u32) -> RigLive {
    RigLive {
        id: row.id,
        uid: RigId(row.rig_uid.clone()),
        name: row.name.clone(),
        group: row.group.clone(),
        tags: row.tags.clone(),
        pending_approval: row.pending_approval,
        flagged: row.flagged.clone(),
        connected: false,
        last_seen_ms: row.last_seen_ms,
        sample: None,
        agent_version: None,
        hostname: None,
        telemetry_interval_secs: interval,
    }
}

/// `n` random bytes as hex (ids, nonces, secrets).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The OS random source failing is not recoverable in a meaningful way; fall back to time
    // so ids stay unique rather than panicking.
    if getrandom::getrandom(&mut bytes).is_err() {
        let t = crate::now_ms().to_be_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = t[i % 8] ^ (i as u8);
        }
    }
    crate::keys::hex(&bytes)
}
