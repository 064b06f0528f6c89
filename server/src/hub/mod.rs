//! The agent hub: one task per agent link, the live state, and the orders the server sends
//! (signed desired configs and commands).

pub mod connection;
pub mod limits;
pub mod live;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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

/// Someone waiting for a command's result.
#[derive(Debug)]
struct Waiter {
    rig_id: i64,
    tx: oneshot::Sender<CommandOutcome>,
}

type Waiters = Arc<Mutex<HashMap<String, Waiter>>>;

fn lock_waiters(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
    waiters.lock().unwrap_or_else(|e| e.into_inner())
}

/// The result of a command, once the rig answers: a future that resolves to the outcome, or to
/// an error when no answer can come any more (the rig's link closed). Dropping it (the caller's
/// wait timed out, or it never waited) forgets the waiter, so rigs that never answer leave
/// nothing behind in the hub (issue 11, item 10); the answer, when it comes, is still stored.
#[derive(Debug)]
pub struct CommandWait {
    id: String,
    rx: oneshot::Receiver<CommandOutcome>,
    waiters: Waiters,
}

impl Future for CommandWait {
    type Output = Result<CommandOutcome, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for CommandWait {
    fn drop(&mut self) {
        lock_waiters(&self.waiters).remove(&self.id);
    }
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
    command_waiters: Waiters,
    /// One lock per rig with a config push in progress: storing a new desired version, signing
    /// it (which takes the next order counter) and queueing it happen under it, so versions
    /// reach the rig in increasing order with increasing counters (issue 11, item 8).
    push_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    next_conn: AtomicU64,
}

/// Holds a rig's push lock; the entry leaves the map when nobody else holds or waits for it.
struct PushGuard<'a> {
    locks: &'a Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    rig_id: i64,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PushGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(guard) = self.guard.take() {
            let lock = tokio::sync::OwnedMutexGuard::mutex(&guard).clone();
            drop(guard);
            // Clones are only made under `locks`: the map's and this one mean nobody waits.
            if Arc::strong_count(&lock) == 2 {
                locks.remove(&self.rig_id);
            }
        }
    }
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
            command_waiters: Arc::new(Mutex::new(HashMap::new())),
            push_locks: Mutex::new(HashMap::new()),
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

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        lock_waiters(&self.command_waiters)
    }

    /// Commands whose caller still waits for the rig's answer (tests, diagnostics).
    pub fn pending_command_waiters(&self) -> usize {
        self.waiters().len()
    }

    /// Waits for the rig's config push lock (see [`Hub::set_desired_config`]).
    async fn push_lock(&self, rig_id: i64) -> PushGuard<'_> {
        let lock = self
            .push_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(rig_id)
            .or_default()
            .clone();
        PushGuard {
            locks: &self.push_locks,
            rig_id,
            guard: Some(lock.lock_owned().await),
        }
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
        let mut gone = Vec::new();
        for rig in rig_ids {
            if links.get(rig).is_some_and(|l| l.conn_id == conn_id) {
                links.remove(rig);
                self.live.update(*rig, |r| r.connected = false);
                gone.push(*rig);
            }
        }
        if !gone.is_empty() {
            // Nobody is left to answer their commands: wake the callers (no result) now rather
            // than at their timeout. A result sent after a reconnect is still stored.
            self.waiters().retain(|_, w| !gone.contains(&w.rig_id));
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
    ///
    /// Pushes to one rig are serialised (issue 11, item 8): storing the version, signing it
    /// (the next order counter) and queueing the frame happen under the rig's push lock, so two
    /// concurrent pushes reach the rig in version order with increasing counters and the rig
    /// ends on the newest.
    pub async fn set_desired_config(
        &self,
        rig_id: i64,
        rig_uid: &RigId,
        config: &DesiredConfig,
        actor: Option<&str>,
    ) -> Result<(DesiredRow, bool), OrderError> {
        let _push = self.push_lock(rig_id).await;
        let row = self
            .store
            .set_desired_config(rig_id, config, actor, crate::now_ms())
            .await?;
        let sent = self.send_config(rig_id, rig_uid, &row).await?;
        Ok((row, sent))
    }

    /// Signs and sends the rig's desired config; false when the rig is not connected. `row` is
    /// what the caller read; when a newer version was stored since, the newer one is sent
    /// instead (under the rig's push lock), so a late reconcile cannot follow a newer push
    /// with an older version.
    pub async fn push_config(
        &self,
        rig_id: i64,
        rig_uid: &RigId,
        row: &DesiredRow,
    ) -> Result<bool, OrderError> {
        if !self.is_connected(rig_id) {
            return Ok(false);
        }
        let _push = self.push_lock(rig_id).await;
        let newest = match self.store.desired_config(rig_id).await? {
            Some(current) if current.version > row.version => current,
            _ => row.clone(),
        };
        self.send_config(rig_id, rig_uid, &newest).await
    }

    /// Pushes many rigs' newly stored desired configs (a rollout's wave): the connected rigs'
    /// order counters are taken in a few statements and each frame is signed and queued under
    /// its rig's push lock. A rig for which a newer version was stored meanwhile is skipped (the
    /// newer push carries it); rigs not connected get theirs when they reconnect. Returns the
    /// rigs whose frame was queued.
    pub async fn push_configs(
        &self,
        rows: &[(i64, RigId, DesiredRow)],
    ) -> Result<std::collections::HashSet<i64>, OrderError> {
        let mut sent = std::collections::HashSet::new();
        let connected: Vec<&(i64, RigId, DesiredRow)> = rows
            .iter()
            .filter(|(id, _, _)| self.is_connected(*id))
            .collect();
        if connected.is_empty() {
            return Ok(sent);
        }
        let mut guards = Vec::with_capacity(connected.len());
        for (id, _, _) in &connected {
            guards.push(self.push_lock(*id).await);
        }
        let ids: Vec<i64> = connected.iter().map(|(id, _, _)| *id).collect();
        let newest = self.store.desired_versions(&ids).await?;
        let current: Vec<&&(i64, RigId, DesiredRow)> = connected
            .iter()
            .filter(|(id, _, row)| newest.get(id).is_some_and(|v| *v == row.version))
            .collect();
        let ids: Vec<i64> = current.iter().map(|(id, _, _)| *id).collect();
        let counters = self.store.next_order_counters(&ids).await?;
        let expires = crate::now_ms() + ORDER_LIFETIME.as_millis() as i64;
        for (id, uid, row) in current {
            let Some(counter) = counters.get(id) else {
                continue;
            };
            let payload = serde_json::to_string(&row.config)
                .map_err(|e| OrderError::Encode(e.to_string()))?;
            let order = self
                .key
                .sign_order(OrderKind::SetConfig, uid, *counter, expires, payload);
            if self.try_send(*id, Outbound::Frame(ServerMessage::SetConfig(order))) {
                sent.insert(*id);
            }
        }
        drop(guards);
        Ok(sent)
    }

    /// Signs and queues `row` for the rig; the caller holds the rig's push lock.
    async fn send_config(
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
    ) -> Result<(CommandId, CommandWait), OrderError> {
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
        self.waiters().insert(id.0.clone(), Waiter { rig_id, tx });
        // From here on, dropping `wait` (an error below, or the caller) forgets the waiter.
        let wait = CommandWait {
            id: id.0.clone(),
            rx,
            waiters: self.command_waiters.clone(),
        };
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
        Ok((id, wait))
    }

    /// Wakes whoever waits for a command's result.
    pub(crate) fn command_finished(&self, command_uid: &str, ok: bool, output: String) {
        if let Some(waiter) = self.waiters().remove(command_uid) {
            let _ = waiter.tx.send(CommandOutcome { ok, output });
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
        clock_offset_ms: None,
    }
}

/// `n` random bytes from the operating system as hex (ids, nonces, secrets: session ids, CSRF
/// tokens, API token secrets, recovery codes, initial passwords).
///
/// # Panics
///
/// When the operating system's random source fails. That is deliberate (issue 11, item 12):
/// these values are secrets, and one derived from the clock instead would be guessable, which
/// is worse than no value. A panic here ends only the request or task that asked (tokio and
/// axum keep serving the others) and says why in the log; on Linux `getrandom(2)` only fails
/// this way when the kernel has no usable source at all, which no retry would fix. Callers
/// that can report an error instead use [`try_random_hex`].
pub fn random_hex(n: usize) -> String {
    random_hex_from(n, getrandom::getrandom)
}

/// `n` random bytes from the operating system as hex, or why there are none.
pub fn try_random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes)?;
    Ok(crate::keys::hex(&bytes))
}

fn random_hex_from(
    n: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> String {
    let mut bytes = vec![0u8; n];
    if let Err(error) = fill(&mut bytes) {
        panic!(
            "the operating system's random source failed ({error}); refusing to make a \
             predictable id, token or secret instead"
        );
    }
    crate::keys::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, item 12: with no OS randomness there is no id, token or secret at all (the
    /// old code made one from the clock).
    #[test]
    #[should_panic(expected = "refusing to make a predictable id, token or secret")]
    fn random_hex_refuses_to_fall_back_to_the_clock() {
        random_hex_from(16, |_| Err(getrandom::Error::UNSUPPORTED));
    }

    #[test]
    fn random_hex_is_hex_of_the_requested_length() {
        let a = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, random_hex(16));
        assert_eq!(try_random_hex(4).map(|s| s.len()).ok(), Some(8));
    }
}
