//! One agent link: the handshake (hello → challenge → auth → welcome), then telemetry with acks
//! that wait for the durable commit, config results, command results and events, and the orders
//! the hub pushes. Every limit is explicit: handshake deadline, idle deadline, frames per second,
//! batches in flight, events per minute, queued outbound frames.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use ed25519_dalek::{Signature, VerifyingKey};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use rigfleet_proto::agent_to_server::{AgentMessage, Hello};
use rigfleet_proto::server_to_agent::{
    Ack, Challenge, ErrorCode, ErrorFrame, ServerMessage, Welcome,
};
use rigfleet_proto::signing::{auth_signing_bytes, decode_hex_array, OrderKind};
use rigfleet_proto::{RigId, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};

use super::limits::TokenBucket;
use super::{live_entry, Hub, Outbound, OUTBOUND_QUEUE};
use crate::db::{AgentRow, StoreError};
use crate::ingest::{IngestBatch, LinkIngest};

/// Time an agent has for each handshake step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// No frame (pings included) for this long: the peer is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Telemetry batches of one link waiting for their commit; past this the link stops reading.
const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// Frames per second one agent may send on average, and its burst (a reconnecting agent
/// drains its queue in a burst).
const FRAMES_PER_SECOND: f64 = 20.0;
const FRAME_BURST: u32 = 200;
/// Events stored per minute per link; the rest are counted and dropped.
const EVENTS_PER_MINUTE: f64 = 30.0;
/// Malformed frames tolerated before the link is closed.
const MAX_BAD_FRAMES: u32 = 10;

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    RigId,
                    Option<String>,
                    Instant,
                    Result<Result<u64, StoreError>, oneshot::error::RecvError>,
                ),
            > + Send,
    >,
>;

/// Runs one agent link to its end.
pub async fn run(socket: WebSocket, hub: Arc<Hub>, peer: SocketAddr) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let metrics = hub.metrics.clone();
    // The writer half: frames from the hub and from this task, in order, with a bounded queue.
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Outbound::Frame(msg) => {
                    let Ok(text) = rigfleet_proto::encode_server(&msg) else {
                        metrics.error("encode");
                        continue;
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                    metrics.ws_frames_out.inc();
                }
                Outbound::Close(reason) => {
                    let frame = CloseFrame {
                        code: 1000,
                        reason: reason.chars().take(120).collect::<String>().into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });

    // The handshake and each frame's handling are boxed: their futures hold database calls
    // (large state machines), and a link that waits for frames should not carry them inline —
    // at a thousand links that is the difference between 16 MiB and 200 MiB.
    let session = match Box::pin(handshake(&hub, &mut stream, &out_tx, peer)).await {
        Ok(s) => s,
        Err(refusal) => {
            refusal.report(&hub, peer);
            if let Some(frame) = refusal.frame() {
                let _ = out_tx.send(Outbound::Frame(frame)).await;
            }
            let _ = out_tx.send(Outbound::Close(refusal.close_reason())).await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let rig_ids: Vec<i64> = session.rigs.iter().map(|(id, _)| *id).collect();
    serve(&hub, &session, &mut stream, &out_tx).await;
    hub.unregister_link(session.conn_id, &rig_ids);
    tracing::info!(agent = %session.agent_uid, %peer, "Agent link closed");
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// What the handshake established.
struct Session {
    conn_id: u64,
    /// Database id of the agent.
    agent_id: i64,
    agent_uid: String,
    /// (database id, public id) of every rig on this link.
    rigs: Vec<(i64, RigId)>,
    /// When the link last received a frame (the hub reads it to tell clones from dead links).
    last_frame_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Server clock minus agent clock at the handshake; sample times are corrected by it.
    clock_offset_ms: i64,
    /// The telemetry writer's view of this link (a failed batch stops the ones queued after).
    ingest: Arc<LinkIngest>,
}

impl Session {
    fn rig(&self, uid: &RigId) -> Option<i64> {
        self.rigs.iter().find(|(_, u)| u == uid).map(|(id, _)| *id)
    }
}

/// Why a handshake ended without a session.
enum Refusal {
    /// The socket closed or timed out; nothing to say.
    Gone(&'static str),
    /// A frame could not be read.
    BadFrame(String),
    /// The agent's protocol range does not meet ours.
    Protocol { min: u32, max: u32 },
    /// Unknown agent, revoked key, bad signature.
    Auth(String),
    /// A rig that is not this agent's, or one awaiting approval.
    Rig(ErrorCode, String),
    /// Our own failure.
    Internal(String),
}

impl Refusal {
    fn frame(&self) -> Option<ServerMessage> {
        let (code, message) = match self {
            Refusal::Gone(_) => return None,
            Refusal::BadFrame(m) => (ErrorCode::BadFrame, m.clone()),
            Refusal::Protocol { min, max } => (
                ErrorCode::UnsupportedProtocol,
                format!(
                    "this server speaks protocol {}..={PROTOCOL_VERSION}; the agent offered {min}..={max}: upgrade the older side",
                    rigfleet_proto::MIN_PROTOCOL_VERSION
                ),
            ),
            // One message for every authentication failure: a prober learns nothing.
            Refusal::Auth(_) => (ErrorCode::AuthFailed, "authentication failed".to_string()),
            Refusal::Rig(code, m) => (*code, m.clone()),
            Refusal::Internal(_) => (ErrorCode::Internal, "server error; retry later".to_string()),
        };
        Some(ServerMessage::Error(ErrorFrame { code, message }))
    }

    fn close_reason(&self) -> String {
        match self {
            Refusal::Gone(r) => (*r).to_string(),
            Refusal::BadFrame(_) => "bad frame".into(),
            Refusal::Protocol { .. } => "unsupported protocol".into(),
            Refusal::Auth(_) => "authentication failed".into(),
            Refusal::Rig(..) => "refused".into(),
            Refusal::Internal(_) => "server error".into(),
        }
    }

    fn report(&self, hub: &Hub, peer: SocketAddr) {
        let (kind, detail) = match self {
            Refusal::Gone(r) => ("handshake_gone", (*r).to_string()),
            Refusal::BadFrame(m) => ("handshake_bad_frame", m.clone()),
            Refusal::Protocol { min, max } => ("unsupported_protocol", format!("{min}..={max}")),
            Refusal::Auth(m) => ("auth_failed", m.clone()),
            Refusal::Rig(_, m) => ("rig_refused", m.clone()),
            Refusal::Internal(m) => ("handshake_internal", m.clone()),
        };
        hub.metrics.error(kind);
        if let Some(suppressed) = hub.log_limiter.allow(&format!("{kind}/{}", peer.ip())) {
            tracing::warn!(%peer, kind, %detail, suppressed, "Agent handshake refused");
        }
    }
}

async fn next_text(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    deadline: Duration,
) -> Result<String, Refusal> {
    loop {
        let msg = tokio::time::timeout(deadline, stream.next())
            .await
            .map_err(|_| Refusal::Gone("handshake timeout"))?;
        match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                return Err(Refusal::Gone("closed during handshake"))
            }
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Binary(_))) => {
                return Err(Refusal::BadFrame(
                    "binary frames are not part of the protocol".into(),
                ))
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn handshake(
    hub: &Arc<Hub>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    peer: SocketAddr,
) -> Result<Session, Refusal> {
    let text = next_text(stream, HANDSHAKE_TIMEOUT).await?;
    hub.metrics.ws_frames_in.inc();
    let hello = match rigfleet_proto::decode_agent(&text) {
        Ok(AgentMessage::Hello(h)) => h,
        Ok(_) => return Err(Refusal::BadFrame("expected hello".into())),
        Err(rigfleet_proto::ProtoError::UnsupportedVersion { found, .. }) => {
            return Err(Refusal::Protocol {
                min: found,
                max: found,
            })
        }
        Err(e) => return Err(Refusal::BadFrame(e.to_string())),
    };
    let Some(protocol) = rigfleet_proto::negotiate(hello.protocol_min, hello.protocol_max) else {
        return Err(Refusal::Protocol {
            min: hello.protocol_min,
            max: hello.protocol_max,
        });
    };
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).map_err(|e| Refusal::Internal(e.to_string()))?;
    let server_time = crate::now_ms();
    let challenge = ServerMessage::Challenge(Challenge {
        nonce: crate::keys::hex(&nonce),
        server_time_unix_ms: server_time,
        protocol,
    });
    out.send(Outbound::Frame(challenge))
        .await
        .map_err(|_| Refusal::Gone("closed during handshake"))?;
    // The agent row is read while the agent computes its answer.
    let agent = hub
        .store
        .agent_by_uid(hello.agent_id.as_str())
        .await
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let text = next_text(stream, HANDSHAKE_TIMEOUT).await?;
    hub.metrics.ws_frames_in.inc();
    let auth = match rigfleet_proto::decode_agent(&text) {
        Ok(AgentMessage::Auth(a)) => a,
        Ok(_) => return Err(Refusal::BadFrame("expected auth".into())),
        Err(e) => return Err(Refusal::BadFrame(e.to_string())),
    };
    let (agent, pinned) = verify_auth(hub, agent, &hello, &nonce, &auth.signature)?;
    let rigs = check_rigs(&agent, &hello)?;
    let conn_id = hub.next_conn_id();
    let rig_ids: Vec<i64> = rigs.iter().map(|(id, _)| *id).collect();
    let last_frame_ms = Arc::new(std::sync::atomic::AtomicI64::new(crate::now_ms()));
    let replaced = hub.register_link(
        conn_id,
        &agent.agent_uid,
        &rig_ids,
        out.clone(),
        last_frame_ms.clone(),
    );
    for rig in replaced {
        let reason = "two connections presented the same agent identity (cloned disk image?)";
        if let Err(error) = hub.store.flag_rig(rig, reason).await {
            tracing::warn!(%error, "Could not flag a rig");
        }
        hub.live
            .update(rig, |l| l.flagged = Some(reason.to_string()));
        hub.event(
            Some(rig),
            "warning",
            "duplicate_identity",
            format!("{reason}; peer {peer}"),
        )
        .await;
    }
    let clock_offset_ms = server_time.saturating_sub(hello.clock_unix_ms);
    // Protocol 2 agents judge order expiry with a server time signed over their own fresh
    // nonce, so a proxy cannot forge or replay the clock they use.
    let welcome_time = crate::now_ms();
    let signed_time = match (
        protocol >= 2,
        hello.nonce.as_deref().and_then(decode_hex_array::<32>),
    ) {
        (true, Some(agent_nonce)) => {
            // Signed with the key the agent pins: one still on the previous key verifies this
            // welcome, then takes the rollover that follows it.
            let signer = match (&pinned, &hub.previous_key) {
                (PinnedKey::Previous(_), Some(previous)) => previous,
                _ => &hub.key,
            };
            Some((
                welcome_time,
                signer.sign_server_time(&agent_nonce, &hello.agent_id, welcome_time),
            ))
        }
        _ => None,
    };
    let welcome = ServerMessage::Welcome(Welcome {
        telemetry_interval_secs: hub.telemetry_interval_secs,
        clock_offset_ms,
        server_time_unix_ms: signed_time.as_ref().map(|(t, _)| *t),
        time_sig: signed_time.map(|(_, sig)| sig),
    });
    out.send(Outbound::Frame(welcome))
        .await
        .map_err(|_| Refusal::Gone("closed during handshake"))?;
    let session = Session {
        conn_id,
        agent_id: agent.id,
        agent_uid: agent.agent_uid.clone(),
        rigs,
        last_frame_ms,
        clock_offset_ms,
        ingest: LinkIngest::new(),
    };
    let pinned_fp = match pinned {
        PinnedKey::Current => hub.key.fingerprint(),
        PinnedKey::Previous(fp) => {
            // Sent before any other order: the agent handles frames in order, so everything
            // signed with the current key after this verifies once the rollover is applied.
            send_rollover(hub, out, &session).await;
            fp
        }
    };
    Box::pin(after_welcome(hub, &agent, &hello, &session, &pinned_fp)).await;
    tracing::info!(agent = %session.agent_uid, %peer, rigs = session.rigs.len(), "Agent connected");
    Ok(session)
}

/// Which server key an agent proved itself against.
enum PinnedKey {
    Current,
    /// The previous key, by fingerprint: the agent is due a rollover.
    Previous(String),
}

fn verify_auth(
    hub: &Hub,
    agent: Option<AgentRow>,
    hello: &Hello,
    nonce: &[u8; 32],
    signature: &str,
) -> Result<(AgentRow, PinnedKey), Refusal> {
    let agent = agent.ok_or_else(|| Refusal::Auth(format!("unknown agent {}", hello.agent_id)))?;
    if agent.revoked {
        return Err(Refusal::Auth(format!("revoked agent {}", agent.agent_uid)));
    }
    let key_bytes = decode_hex_array::<32>(&agent.public_key_hex)
        .ok_or_else(|| Refusal::Internal("stored agent key is not 32 hex bytes".into()))?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| Refusal::Internal("stored agent key is not a curve point".into()))?;
    let sig = decode_hex_array::<64>(signature)
        .ok_or_else(|| Refusal::Auth("signature is not 64 hex bytes".into()))?;
    let sig = Signature::from_bytes(&sig);
    let proves = |server_key: &crate::keys::ServerKey| {
        let bytes = auth_signing_bytes(nonce, &hello.agent_id, server_key.public_key().as_bytes());
        key.verify_strict(&bytes, &sig).is_ok()
    };
    if proves(&hub.key) {
        return Ok((agent, PinnedKey::Current));
    }
    match &hub.previous_key {
        Some(previous) if proves(previous) => {
            Ok((agent, PinnedKey::Previous(previous.fingerprint())))
        }
        _ => Err(Refusal::Auth(format!(
            "bad signature from agent {}",
            agent.agent_uid
        ))),
    }
}

/// Sends a `key_rollover` to the current key, signed by the previous one, for the link's first
/// rig (the agent pins one server key for all the rigs it fronts).
async fn send_rollover(hub: &Arc<Hub>, out: &mpsc::Sender<Outbound>, session: &Session) {
    let (Some(previous), Some((rig_id, rig_uid))) = (&hub.previous_key, session.rigs.first())
    else {
        return;
    };
    let payload = serde_json::json!({ "new_key": hub.key.public_key_hex() }).to_string();
    match hub
        .sign_with(previous, OrderKind::KeyRollover, *rig_id, rig_uid, payload)
        .await
    {
        Ok(order) => {
            if out
                .send(Outbound::Frame(ServerMessage::KeyRollover(order)))
                .await
                .is_ok()
            {
                tracing::info!(agent = %session.agent_uid, "Sent a server key rollover");
            }
        }
        Err(error) => {
            hub.metrics.error("store");
            tracing::warn!(%error, "Could not sign a key rollover");
        }
    }
}

fn check_rigs(agent: &AgentRow, hello: &Hello) -> Result<Vec<(i64, RigId)>, Refusal> {
    let mut rigs = Vec::with_capacity(hello.rigs.len());
    let mut seen = HashSet::new();
    for r in &hello.rigs {
        let Some(row) = agent
            .rigs
            .iter()
            .find(|row| row.rig_uid == r.rig_id.as_str())
        else {
            return Err(Refusal::Rig(
                ErrorCode::UnknownRig,
                format!("rig {} is not enrolled with this agent", r.rig_id),
            ));
        };
        if row.pending_approval {
            return Err(Refusal::Rig(
                ErrorCode::AuthFailed,
                format!("rig {} awaits an operator's approval", r.rig_id),
            ));
        }
        if seen.insert(row.id) {
            rigs.push((row.id, r.rig_id.clone()));
        }
    }
    Ok(rigs)
}

/// Devices, last-seen, live state and the desired config a rig should run.
async fn after_welcome(
    hub: &Arc<Hub>,
    agent: &AgentRow,
    hello: &Hello,
    session: &Session,
    pinned_key: &str,
) {
    let now = crate::now_ms();
    if let Err(error) = hub
        .store
        .record_agent_seen(
            agent.id,
            &hello.hostname,
            &hello.agent_version,
            pinned_key,
            now,
        )
        .await
    {
        hub.metrics.error("store");
        tracing::warn!(%error, "Could not record an agent's handshake");
    }
    for r in &hello.rigs {
        let Some(rig_id) = session.rig(&r.rig_id) else {
            continue;
        };
        if !r.devices.is_empty() {
            if let Err(error) = hub.store.upsert_devices(rig_id, &r.devices, now).await {
                hub.metrics.error("store");
                tracing::warn!(%error, "Could not store a rig's devices");
            }
        }
        if let Some(stream) = &r.stream_id {
            note_stream(hub, rig_id, stream, r.last_acked_seq, now).await;
        }
        let found = hub.live.update(rig_id, |live| {
            live.connected = true;
            live.last_seen_ms = Some(now);
            live.agent_version = Some(hello.agent_version.clone());
            live.hostname = Some(hello.hostname.clone());
            live.clock_offset_ms = Some(session.clock_offset_ms);
        });
        if !found {
            if let Some(row) = agent.rigs.iter().find(|row| row.id == rig_id) {
                let mut entry = live_entry(row, hub.telemetry_interval_secs);
                entry.connected = true;
                entry.last_seen_ms = Some(now);
                entry.agent_version = Some(hello.agent_version.clone());
                entry.hostname = Some(hello.hostname.clone());
                entry.clock_offset_ms = Some(session.clock_offset_ms);
                hub.live.insert(entry);
            }
        }
        reconcile_config(hub, rig_id, &r.rig_id, r.applied_config_version).await;
    }
}

/// Creates the rig's telemetry stream named in `hello` if it is new; a rig that already had a
/// stream started another (its agent's queue was reset: seqs start again at 1), which the
/// operator should know about.
async fn note_stream(hub: &Arc<Hub>, rig_id: i64, stream: &str, last_acked: Option<u64>, now: i64) {
    match hub.store.telemetry_stream(rig_id, stream, now).await {
        Ok(Some((_, true))) => {
            let earlier = match hub.store.telemetry_streams(rig_id).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|s| s.stream_uid != stream)
                    .collect::<Vec<_>>(),
                Err(error) => {
                    tracing::warn!(%error, "Could not read a rig's telemetry streams");
                    Vec::new()
                }
            };
            if let Some(prev) = earlier.iter().max_by_key(|s| s.id) {
                hub.event(
                    Some(rig_id),
                    "warning",
                    "telemetry_stream_started",
                    format!(
                        "the agent started a new telemetry stream (its queue was created anew; it reports seq {} as acknowledged); the previous stream ended at seq {}",
                        last_acked.unwrap_or(0),
                        prev.committed_seq
                    ),
                )
                .await;
            }
        }
        Ok(_) => {}
        Err(error) => {
            hub.metrics.error("store");
            tracing::warn!(%error, "Could not record a rig's telemetry stream");
        }
    }
}

/// Sends the desired config when the rig runs another version; a rig without one gets the
/// default profile's.
async fn reconcile_config(hub: &Arc<Hub>, rig_id: i64, rig_uid: &RigId, applied: Option<u64>) {
    let desired = match hub.store.desired_config(rig_id).await {
        Ok(Some(d)) => d,
        Ok(None) => match first_config(hub, rig_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "Could not give a rig its first config");
                return;
            }
        },
        Err(error) => {
            tracing::warn!(%error, "Could not read a rig's desired config");
            return;
        }
    };
    if applied == Some(desired.version) {
        return;
    }
    if let Err(error) = hub.push_config(rig_id, rig_uid, &desired).await {
        hub.metrics.error("order");
        tracing::warn!(%error, "Could not send a desired config");
    }
}

/// A rig that never had a desired config: it takes the default profile (as its own profile,
/// unless its group names one) and its config is built from its layers, so `{rig}` in the
/// profile's pools becomes this rig's name.
async fn first_config(
    hub: &Arc<Hub>,
    rig_id: i64,
) -> Result<Option<crate::db::DesiredRow>, crate::db::StoreError> {
    let mut snap = hub.store.layer_snapshot(Some(&[rig_id])).await?;
    let Some(rig) = snap.rigs.first().cloned() else {
        return Ok(None);
    };
    let group_profile = rig
        .group
        .as_ref()
        .and_then(|g| snap.groups.get(g))
        .and_then(|g| g.profile_id);
    if rig.profile_id.is_none() && group_profile.is_none() {
        let Some(default) = hub.store.default_profile().await? else {
            return Ok(None);
        };
        hub.store.set_rig_profile(rig_id, Some(default.id)).await?;
        snap = hub.store.layer_snapshot(Some(&[rig_id])).await?;
    }
    let Some(rig) = snap.rigs.first() else {
        return Ok(None);
    };
    let built = match crate::fleet::layers::build_rig(&snap, rig) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(error) => {
            tracing::warn!(%error, rig = %rig.rig_uid, "The rig's layers do not build a config");
            return Ok(None);
        }
    };
    let mut rows = hub
        .store
        .store_desired_batch(
            &[(rig_id, built.config)],
            Some("default profile"),
            None,
            crate::now_ms(),
        )
        .await?;
    Ok(rows.pop().map(|(_, row)| row))
}

async fn serve(
    hub: &Arc<Hub>,
    session: &Session,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
) {
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut frames = TokenBucket::new(FRAME_BURST, FRAMES_PER_SECOND);
    let mut events = TokenBucket::new(30, EVENTS_PER_MINUTE / 60.0);
    let mut bad_frames = 0u32;
    let mut last_frame = Instant::now();
    loop {
        let can_read = acks.len() < MAX_BATCHES_IN_FLIGHT;
        let wait = frames.wait_time(Instant::now());
        let idle_left = IDLE_TIMEOUT.saturating_sub(last_frame.elapsed());
        tokio::select! {
            Some((rig_uid, stream_id, started, result)) = acks.next(), if !acks.is_empty() => {
                match result {
                    Ok(Ok(seq)) => {
                        hub.metrics.ingest_to_durable_seconds.observe(started.elapsed().as_secs_f64());
                        let ack = ServerMessage::Ack(Ack { rig_id: rig_uid, seq, stream_id });
                        if out.send(Outbound::Frame(ack)).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        // Not durable: no ack; closing makes the agent reconnect and resend.
                        hub.metrics.error("telemetry_write");
                        let _ = out.send(Outbound::Frame(error_frame(ErrorCode::Internal, "telemetry not stored; reconnect and resend"))).await;
                        let _ = out.send(Outbound::Close("telemetry not stored".into())).await;
                        return;
                    }
                }
            }
            msg = stream.next(), if can_read && wait.is_zero() => {
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        bad_frames += 1;
                        hub.metrics.error("bad_frame");
                        if bad_frames > MAX_BAD_FRAMES { return; }
                        continue;
                    }
                    Some(Ok(_)) => {
                        last_frame = Instant::now();
                        session.last_frame_ms.store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                };
                last_frame = Instant::now();
                session.last_frame_ms.store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
                hub.metrics.ws_frames_in.inc();
                let _ = frames.try_take(Instant::now());
                match rigfleet_proto::decode_agent(text.as_str()) {
                    Ok(msg) => {
                        if let Some(reply) = Box::pin(handle(hub, session, msg, &mut acks, &mut events)).await {
                            if out.send(Outbound::Frame(reply)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        bad_frames += 1;
                        hub.metrics.error("bad_frame");
                        let reply = error_frame(ErrorCode::BadFrame, &e.to_string());
                        if out.send(Outbound::Frame(reply)).await.is_err() || bad_frames > MAX_BAD_FRAMES {
                            return;
                        }
                    }
                }
            }
            _ = tokio::time::sleep(wait), if !wait.is_zero() => {}
            _ = tokio::time::sleep(idle_left) => {
                tracing::info!(agent = %session.agent_uid, "Agent link idle for {}s; closing", IDLE_TIMEOUT.as_secs());
                let _ = out.send(Outbound::Close("idle".into())).await;
                return;
            }
        }
    }
}

fn error_frame(code: ErrorCode, message: &str) -> ServerMessage {
    let message: String = message.chars().take(1024).collect();
    ServerMessage::Error(ErrorFrame { code, message })
}

async fn handle(
    hub: &Arc<Hub>,
    session: &Session,
    msg: AgentMessage,
    acks: &mut FuturesUnordered<AckFuture>,
    events: &mut TokenBucket,
) -> Option<ServerMessage> {
    let Some(uid) = msg.rig_id().cloned() else {
        return Some(error_frame(
            ErrorCode::BadFrame,
            "hello and auth belong to the handshake",
        ));
    };
    let Some(rig_id) = session.rig(&uid) else {
        hub.metrics.error("unknown_rig");
        return Some(error_frame(
            ErrorCode::UnknownRig,
            &format!("rig {uid} was not named in this link's hello"),
        ));
    };
    let now = crate::now_ms();
    match msg {
        AgentMessage::Telemetry(t) => {
            hub.metrics.samples_received.inc_by(t.samples.len() as u64);
            if let Some(newest) = t.samples.iter().max_by_key(|s| s.seq) {
                hub.live.record_sample(rig_id, newest, now);
            }
            let (done, rx) = oneshot::channel();
            let stream_id = t.stream_id;
            let batch = IngestBatch {
                rig_id,
                stream: stream_id.clone().unwrap_or_default(),
                samples: t.samples,
                dropped_through: t.dropped_through,
                clock_offset_ms: session.clock_offset_ms,
                received_ms: now,
                link: session.ingest.clone(),
                done,
            };
            let started = Instant::now();
            if hub.writer.submit(batch).await.is_err() {
                hub.metrics.error("writer_closed");
                return Some(error_frame(ErrorCode::Internal, "server is shutting down"));
            }
            acks.push(Box::pin(async move { (uid, stream_id, started, rx.await) }));
            None
        }
        AgentMessage::ConfigApplied(c) => {
            if let Err(error) = hub
                .store
                .record_config_applied(
                    rig_id,
                    c.version,
                    &c.content_hash,
                    c.ok,
                    c.error.as_deref(),
                    now,
                )
                .await
            {
                hub.metrics.error("store");
                tracing::warn!(%error, "Could not record a config result");
            }
            if !c.ok {
                let why = c.error.unwrap_or_default();
                hub.event(
                    Some(rig_id),
                    "error",
                    "config_failed",
                    format!("config version {} failed: {why}", c.version),
                )
                .await;
            }
            None
        }
        AgentMessage::CommandResult(c) => {
            match hub
                .store
                .finish_command(rig_id, c.command_id.as_str(), c.ok, &c.output, now)
                .await
            {
                Ok(true) => hub.command_finished(c.command_id.as_str(), c.ok, c.output),
                Ok(false) => hub.metrics.error("unknown_command"),
                Err(error) => {
                    hub.metrics.error("store");
                    tracing::warn!(%error, "Could not record a command result");
                }
            }
            None
        }
        AgentMessage::Event(e) => {
            if events.try_take(Instant::now()) {
                let severity = match e.severity {
                    rigfleet_proto::agent_to_server::Severity::Info => "info",
                    rigfleet_proto::agent_to_server::Severity::Warning => "warning",
                    rigfleet_proto::agent_to_server::Severity::Error => "error",
                };
                if e.kind == "key_rollover" {
                    let fp = hub.key.fingerprint();
                    if let Err(error) = hub.store.set_agent_pinned_key(session.agent_id, &fp).await
                    {
                        hub.metrics.error("store");
                        tracing::warn!(%error, "Could not record a key rollover");
                    }
                }
                hub.event(Some(rig_id), severity, &e.kind, e.message).await;
            } else {
                hub.metrics.error("event_rate_limited");
            }
            None
        }
        AgentMessage::Hello(_) | AgentMessage::Auth(_) => None,
    }
}
