//! One pool connection speaking Stratum V1: the handshake, the messages a pool sends, request and
//! response matching, and share submission. It turns lines into [`SessionEvent`]s and
//! [`SessionCommand`]s into lines; what to do with jobs and when to leave a pool is the client's
//! business ([`crate::client`]).
//!
//! Generic over any `AsyncRead + AsyncWrite` stream, so tests drive it through
//! `tokio::io::duplex` with a scripted pool.
//!
//! Protocol choices:
//! - The handshake is pipelined: `mining.configure` (BIP 310, when version rolling is wanted),
//!   `mining.subscribe`, optionally `mining.suggest_difficulty`, `mining.authorize`, optionally
//!   `mining.extranonce.subscribe`, all written at once; answers are matched by id in whatever
//!   order they come. Jobs are handed on only once the connection is both subscribed and
//!   authorized; a job that arrives earlier is held.
//! - Version rolling uses only bits the pool granted *and* we asked for
//!   ([`REQUESTED_VERSION_MASK`]). A pool that never answers `mining.configure` gets no rolling;
//!   a late grant or a `mining.set_version_mask` re-issues the current job with the new mask at
//!   once, since BIP 310 makes a new mask valid immediately.
//! - `mining.set_difficulty` and `mining.set_extranonce` apply to the **next** job, as pools mean
//!   them: a pool sends them right before the `mining.notify` they are for, and shares of jobs
//!   already out keep the difficulty they were issued with (the job's target is fixed when the
//!   job arrives). Before any `mining.set_difficulty` the difficulty is 1.
//! - Malformed or unexpected lines are logged and counted ([`ProtocolCounters`]); only a broken
//!   framing (a line over [`crate::codec::MAX_LINE_BYTES`]) or an I/O error ends the session.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rigfleet_engine::{Algorithm, Difficulty, Target};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::codec::{self, ReadError};
use crate::error::MessageError;
use crate::job::JobTemplate;
use crate::message::{
    ClientRequest, ConfigureResult, Frame, Notify, ServerMessage, StratumError, Submit,
    SubscribeResult, VersionRollingRequest,
};
use crate::shares::ShareDifficulty;

/// What we tell pools we are, in `mining.subscribe` and `client.get_version`.
pub const USER_AGENT: &str = concat!("rigfleet/", env!("CARGO_PKG_VERSION"));

/// Version bits we ask to roll: bits 13 to 28, the general-purpose bits of BIP 320
/// (`0x1fffe000`), the mask every ASIC firmware and pool uses.
pub const REQUESTED_VERSION_MASK: u32 = 0x1fff_e000;

/// `version-rolling.min-bit-count` we send: 2, as cgminer and bmminer do. The engine works with
/// any mask (even none), so this only keeps pools that check the field happy.
pub const MIN_VERSION_BITS: u32 = 2;

/// Default time a pool has to answer a request: handshake requests that time out end the
/// session; submits that time out count as unanswered.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Most requests awaiting an answer; a pool that stops answering cannot grow the map further
/// (shares beyond it are dropped and counted).
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Longest subscription id kept for resuming (real ones are 8 to 32 hex digits).
const MAX_SESSION_ID_BYTES: usize = 128;

/// Lines read ahead of the session loop.
const LINE_QUEUE: usize = 64;

/// How long a closing session waits to flush and close its side of the stream (TLS
/// close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one connection needs to know.
#[derive(Clone)]
pub struct SessionConfig {
    /// Worker name for `mining.authorize` (and every submit).
    pub user: String,
    /// Password for `mining.authorize`.
    pub password: String,
    /// What the engine computes: decides the difficulty-1 target.
    pub algorithm: Algorithm,
    /// Ask for BIP 310 version rolling.
    pub version_rolling: bool,
    /// Send `mining.suggest_difficulty` with this value.
    pub suggest_difficulty: Option<f64>,
    /// Send `mining.extranonce.subscribe`, so the pool may change extranonce1 later.
    pub extranonce_subscribe: bool,
    /// Session id of an earlier subscription to the same pool, to resume it.
    pub resume_session_id: Option<String>,
    /// How long a request may stay unanswered.
    pub response_timeout: Duration,
}

impl SessionConfig {
    /// Defaults for a worker: version rolling on, nothing optional.
    pub fn new(user: impl Into<String>, password: impl Into<String>, algorithm: Algorithm) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            algorithm,
            version_rolling: true,
            suggest_difficulty: None,
            extranonce_subscribe: false,
            resume_session_id: None,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password may be a real secret on some pools: never in logs.
        f.debug_struct("SessionConfig")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("algorithm", &self.algorithm)
            .field("version_rolling", &self.version_rolling)
            .field("suggest_difficulty", &self.suggest_difficulty)
            .field("extranonce_subscribe", &self.extranonce_subscribe)
            .field("resume_session_id", &self.resume_session_id)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// What the client asks a session to do.
#[derive(Clone, Debug)]
pub enum SessionCommand {
    /// Send a share.
    Submit {
        /// The `mining.submit` params.
        submit: Submit,
        /// The pool difficulty it is submitted against and its hash's own (for statistics).
        difficulty: ShareDifficulty,
    },
}

/// A job ready for the engine.
#[derive(Clone, Debug)]
pub struct JobEvent {
    /// The job with this connection's extranonce, target and version mask.
    pub template: Arc<JobTemplate>,
    /// The pool's `clean_jobs`: earlier jobs are void.
    pub clean: bool,
    /// The same pool job again, rebuilt because the version mask changed; not a new job.
    pub reissue: bool,
    /// When the line carrying the job was read (for the job switch latency).
    pub received_at: Instant,
}

/// What a session reports.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// The stream is open (sent by whoever connects, before the session starts).
    Connected,
    /// `mining.subscribe` succeeded.
    Subscribed {
        /// Our extranonce1.
        extranonce1: Vec<u8>,
        /// Bytes of extranonce2.
        extranonce2_size: usize,
        /// The id to resume this subscription with later.
        session_id: Option<String>,
    },
    /// `mining.authorize` succeeded.
    Authorized,
    /// The difficulty for the next jobs.
    Difficulty(f64),
    /// The version-rolling mask now in use (0: no rolling).
    VersionMask(u32),
    /// A job.
    Job(JobEvent),
    /// The pool answered a submit.
    ShareAnswered {
        /// The pool's job id.
        job_id: String,
        /// Accepted, or the pool's error.
        answer: Result<(), StratumError>,
        /// From writing the submit to reading the answer.
        latency: Duration,
        /// The share's difficulties, as submitted.
        difficulty: ShareDifficulty,
    },
    /// A submit got no answer in time.
    ShareUnanswered {
        /// The pool's job id.
        job_id: String,
        /// The share's difficulties, as submitted.
        difficulty: ShareDifficulty,
    },
    /// A share could not be sent (too many requests awaiting answers).
    ShareNotSent {
        /// The pool's job id.
        job_id: String,
    },
    /// `client.show_message`.
    Message(String),
    /// The session is over (sent by whoever runs it, after it returns).
    Closed(SessionEnd),
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The stream could not be opened (reported by whoever connects; the session never ran).
    ConnectFailed(String),
    /// Our side closed it (command channel dropped).
    Shutdown,
    /// The pool closed the connection.
    Eof,
    /// Reading or writing failed.
    Io(String),
    /// The pool broke the framing (a line over the limit): nothing after it can be trusted.
    BrokenFraming(String),
    /// The pool refused `mining.subscribe`.
    SubscribeRefused(String),
    /// The pool's `mining.subscribe` result is unusable.
    BadSubscribe(String),
    /// The pool refused `mining.authorize`.
    Unauthorized(String),
    /// A handshake request got no answer in time.
    Timeout {
        /// The request.
        method: &'static str,
    },
    /// `client.reconnect`: connect again, maybe elsewhere, after a wait.
    Reconnect {
        /// Another host, if given.
        host: Option<String>,
        /// Another port, if given.
        port: Option<u16>,
        /// How long to wait first.
        wait: Duration,
    },
}

impl SessionEnd {
    /// Whether the pool refused our credentials (the operator must act, not the network).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, SessionEnd::Unauthorized(_))
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            SessionEnd::Shutdown => f.write_str("closed by us"),
            SessionEnd::Eof => f.write_str("pool closed the connection"),
            SessionEnd::Io(e) => write!(f, "connection error: {e}"),
            SessionEnd::BrokenFraming(e) => write!(f, "broken framing: {e}"),
            SessionEnd::SubscribeRefused(e) => write!(f, "subscribe refused: {e}"),
            SessionEnd::BadSubscribe(e) => write!(f, "unusable subscribe result: {e}"),
            SessionEnd::Unauthorized(e) => write!(f, "authorization refused: {e}"),
            SessionEnd::Timeout { method } => write!(f, "no answer to {method}"),
            SessionEnd::Reconnect { host, port, wait } => {
                write!(f, "pool asked to reconnect")?;
                if host.is_some() || port.is_some() {
                    write!(
                        f,
                        " to {}:{}",
                        host.as_deref().unwrap_or("(same host)"),
                        port.map_or_else(|| "(same port)".to_string(), |p| p.to_string())
                    )?;
                }
                write!(f, " in {}s", wait.as_secs())
            }
        }
    }
}

/// Lines a pool got wrong, per connection or pool. Shared with whoever reports telemetry.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    malformed: AtomicU64,
    unexpected: AtomicU64,
}

impl ProtocolCounters {
    /// Lines that are not JSON-RPC, or known messages with wrong parameters or results.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Well-formed messages we did not expect: unknown methods, answers to unknown or expired
    /// requests, masks we did not negotiate.
    pub fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }

    fn count_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    fn count_unexpected(&self) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the reader task hands the session.
enum Incoming {
    /// A line and when it was complete.
    Line(Instant, String),
    /// A line that was not UTF-8 (consumed; the framing is intact).
    NotText(String),
    /// The pool closed the stream.
    Eof,
    /// Framing broken or I/O failed: the end.
    Fatal(SessionEnd),
}

/// A request awaiting its answer.
struct Pending {
    kind: PendingKind,
    sent_at: Instant,
    deadline: Instant,
}

enum PendingKind {
    Configure,
    Subscribe {
        resuming: bool,
    },
    Authorize,
    ExtranonceSubscribe,
    SuggestDifficulty,
    Submit {
        job_id: String,
        difficulty: ShareDifficulty,
    },
}

impl PendingKind {
    fn method(&self) -> &'static str {
        match self {
            PendingKind::Configure => "mining.configure",
            PendingKind::Subscribe { .. } => "mining.subscribe",
            PendingKind::Authorize => "mining.authorize",
            PendingKind::ExtranonceSubscribe => "mining.extranonce.subscribe",
            PendingKind::SuggestDifficulty => "mining.suggest_difficulty",
            PendingKind::Submit { .. } => "mining.submit",
        }
    }
}

/// Aborts a task when dropped, so that no reader outlives its session.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one session over `stream` until it ends: handshake, then jobs and shares. Events go to
/// `events` (the session waits when that channel is full); dropping the `commands` sender
/// closes the session.
pub async fn run_session<S>(
    stream: S,
    config: SessionConfig,
    mut commands: mpsc::Receiver<SessionCommand>,
    events: mpsc::Sender<SessionEvent>,
    counters: Arc<ProtocolCounters>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (line_tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let _reader = AbortOnDrop(tokio::spawn(
        read_lines(read_half, line_tx).in_current_span(),
    ));
    let mut session = Session {
        config,
        writer: write_half,
        events,
        counters,
        next_id: 1,
        pending: HashMap::new(),
        authorize_id: 0,
        subscribed: None,
        authorized: false,
        version_mask: 0,
        difficulty: 1.0,
        held: None,
        current: None,
    };
    let end = match session.run(&mut lines, &mut commands).await {
        Ok(never) => match never {},
        Err(end) => end,
    };
    session.close().await;
    end
}

async fn read_lines<R: AsyncRead + Send + Unpin>(read_half: R, lines: mpsc::Sender<Incoming>) {
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        let item = match codec::read_line(&mut reader, &mut line).await {
            Ok(true) => Incoming::Line(Instant::now(), std::mem::take(&mut line)),
            Ok(false) => Incoming::Eof,
            // Invalid UTF-8 inside one line: the line was consumed, the framing holds.
            Err(ReadError::Message(MessageError::NotJson(e))) => Incoming::NotText(e),
            Err(ReadError::Message(e)) => Incoming::Fatal(SessionEnd::BrokenFraming(e.to_string())),
            Err(ReadError::Io(e)) => Incoming::Fatal(SessionEnd::Io(e.to_string())),
        };
        let last = matches!(item, Incoming::Eof | Incoming::Fatal(_));
        if lines.send(item).await.is_err() || last {
            return;
        }
    }
}

/// The state of one connection.
struct Session<S> {
    config: SessionConfig,
    writer: WriteHalf<S>,
    events: mpsc::Sender<SessionEvent>,
    counters: Arc<ProtocolCounters>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Id of the `mining.authorize` that counts (an earlier one is void after a subscribe retry).
    authorize_id: u64,
    /// Extranonce1 and extranonce2 size once subscribed (updated by `mining.set_extranonce`).
    subscribed: Option<(Vec<u8>, usize)>,
    authorized: bool,
    /// Version bits in use: requested ∩ granted.
    version_mask: u32,
    /// Difficulty for the next job.
    difficulty: f64,
    /// A job that came before we were subscribed and authorized, and whether any held job was
    /// clean.
    held: Option<(Notify, bool, Instant)>,
    /// The last job handed on, for re-issuing it with a new mask.
    current: Option<Arc<JobTemplate>>,
}

impl<S: AsyncRead + AsyncWrite + Send> Session<S> {
    async fn run(
        &mut self,
        lines: &mut mpsc::Receiver<Incoming>,
        commands: &mut mpsc::Receiver<SessionCommand>,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        self.handshake().await?;
        loop {
            let deadline = self.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                // Lines first: a job switch must not wait behind a burst of shares.
                biased;
                incoming = lines.recv() => match incoming {
                    Some(Incoming::Line(at, line)) => self.on_line(&line, at).await?,
                    Some(Incoming::NotText(e)) => {
                        self.counters.count_malformed();
                        tracing::warn!(error = %e, "Pool sent a line that is not text; ignored");
                    }
                    Some(Incoming::Eof) | None => return Err(SessionEnd::Eof),
                    Some(Incoming::Fatal(end)) => return Err(end),
                },
                command = commands.recv() => match command {
                    Some(SessionCommand::Submit { submit, difficulty }) => {
                        self.submit(submit, difficulty).await?;
                    }
                    None => return Err(SessionEnd::Shutdown),
                },
                () = sleep_until_opt(deadline) => self.expire(Instant::now()).await?,
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), SessionEnd> {
        if self.config.version_rolling {
            let req = ClientRequest::Configure {
                version_rolling: Some(VersionRollingRequest {
                    mask: REQUESTED_VERSION_MASK,
                    min_bit_count: MIN_VERSION_BITS,
                }),
            };
            self.request(req, PendingKind::Configure).await?;
        }
        let resume = self.config.resume_session_id.clone();
        self.subscribe(resume).await?;
        if let Some(d) = self.config.suggest_difficulty {
            self.request(
                ClientRequest::SuggestDifficulty(d),
                PendingKind::SuggestDifficulty,
            )
            .await?;
        }
        self.authorize().await?;
        if self.config.extranonce_subscribe {
            self.request(
                ClientRequest::ExtranonceSubscribe,
                PendingKind::ExtranonceSubscribe,
            )
            .await?;
        }
        Ok(())
    }

    async fn subscribe(&mut self, session_id: Option<String>) -> Result<(), SessionEnd> {
        let resuming = session_id.is_some();
        let req = ClientRequest::Subscribe {
            user_agent: USER_AGENT.to_string(),
            session_id,
        };
        self.request(req, PendingKind::Subscribe { resuming })
            .await?;
        Ok(())
    }

    async fn authorize(&mut self) -> Result<(), SessionEnd> {
        let req = ClientRequest::Authorize {
            user: self.config.user.clone(),
            password: self.config.password.clone(),
        };
        self.authorize_id = self
            .request(req, PendingKind::Authorize)
            .await?
            .unwrap_or(0);
        Ok(())
    }

    /// Sends a request and remembers it; `None` when too many are pending (only submits can
    /// get there, handshake requests come first).
    async fn request(
        &mut self,
        req: ClientRequest,
        kind: PendingKind,
    ) -> Result<Option<u64>, SessionEnd> {
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            return Ok(None);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.write_line(req.to_line(id)).await?;
        let now = Instant::now();
        self.pending.insert(
            id,
            Pending {
                kind,
                sent_at: now,
                deadline: now + self.config.response_timeout,
            },
        );
        Ok(Some(id))
    }

    async fn submit(
        &mut self,
        submit: Submit,
        difficulty: ShareDifficulty,
    ) -> Result<(), SessionEnd> {
        let job_id = submit.job_id.clone();
        let kind = PendingKind::Submit {
            job_id: job_id.clone(),
            difficulty,
        };
        if self
            .request(ClientRequest::Submit(submit), kind)
            .await?
            .is_none()
        {
            tracing::warn!(
                job_id,
                pending = self.pending.len(),
                "Too many requests awaiting answers; share not sent"
            );
            self.emit(SessionEvent::ShareNotSent { job_id }).await?;
        }
        Ok(())
    }

    async fn write_line(&mut self, mut line: String) -> Result<(), SessionEnd> {
        line.push('\n');
        let write = async {
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.flush().await
        };
        match tokio::time::timeout(self.config.response_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionEnd::Io(e.to_string())),
            Err(_) => Err(SessionEnd::Io("write timed out".to_string())),
        }
    }

    async fn emit(&mut self, event: SessionEvent) -> Result<(), SessionEnd> {
        // Nobody listening means the client let go of this session.
        self.events
            .send(event)
            .await
            .map_err(|_| SessionEnd::Shutdown)
    }

    async fn on_line(&mut self, line: &str, received_at: Instant) -> Result<(), SessionEnd> {
        let frame = match Frame::parse(line) {
            Ok(frame) => frame,
            Err(error) => {
                self.counters.count_malformed();
                tracing::warn!(%error, line = %truncate(line), "Ignoring malformed line from pool");
                return Ok(());
            }
        };
        match frame {
            Frame::Request { id, method, params } => {
                self.on_request(id, &method, &params, received_at).await
            }
            Frame::Response { id, result, error } => self.on_response(&id, result, error).await,
        }
    }

    async fn on_request(
        &mut self,
        id: Value,
        method: &str,
        params: &Value,
        received_at: Instant,
    ) -> Result<(), SessionEnd> {
        if method == "mining.ping" {
            // Not in the V1 documents, but some pools check liveness this way.
            return self.write_line(Frame::ok(id, Value::from("pong"))).await;
        }
        let message = match ServerMessage::parse(method, params) {
            Ok(message) => message,
            Err(MessageError::UnknownMethod(_)) => {
                self.counters.count_unexpected();
                tracing::warn!(method, "Ignoring unknown method from pool");
                if !id.is_null() {
                    let err = StratumError::new(StratumError::OTHER, "unsupported method");
                    self.write_line(Frame::err(id, &err)).await?;
                }
                return Ok(());
            }
            Err(error) => {
                self.counters.count_malformed();
                tracing::warn!(method, %error, "Ignoring malformed message from pool");
                return Ok(());
            }
        };
        match message {
            ServerMessage::Notify(notify) => self.on_notify(notify, received_at).await,
            ServerMessage::SetDifficulty(d) => {
                tracing::debug!(difficulty = d, "Difficulty for the next job");
                self.difficulty = d;
                self.emit(SessionEvent::Difficulty(d)).await
            }
            ServerMessage::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => {
                if self.subscribed.is_none() {
                    self.counters.count_unexpected();
                    tracing::warn!("Ignoring mining.set_extranonce before the subscription");
                    return Ok(());
                }
                tracing::info!(
                    extranonce1 = %rigfleet_engine::hex::encode(&extranonce1),
                    extranonce2_size,
                    "New extranonce for the next job"
                );
                self.subscribed = Some((extranonce1, extranonce2_size));
                Ok(())
            }
            ServerMessage::SetVersionMask(mask) => self.on_version_mask(mask).await,
            ServerMessage::Reconnect {
                host,
                port,
                wait_secs,
            } => Err(SessionEnd::Reconnect {
                host,
                port,
                wait: Duration::from_secs(wait_secs),
            }),
            ServerMessage::ShowMessage(text) => {
                tracing::info!(message = %text, "Message from pool");
                self.emit(SessionEvent::Message(text)).await
            }
            ServerMessage::GetVersion => {
                if id.is_null() {
                    self.counters.count_unexpected();
                    return Ok(());
                }
                self.write_line(Frame::ok(id, Value::from(USER_AGENT)))
                    .await
            }
        }
    }

    async fn on_notify(&mut self, notify: Notify, received_at: Instant) -> Result<(), SessionEnd> {
        if !self.ready() {
            // Held until the handshake is done; a clean job held earlier keeps its meaning.
            let clean = notify.clean_jobs || self.held.as_ref().is_some_and(|h| h.1);
            tracing::debug!(job_id = %notify.job_id, "Job before the handshake finished; held");
            self.held = Some((notify, clean, received_at));
            return Ok(());
        }
        let clean = notify.clean_jobs;
        self.emit_job(notify, clean, false, received_at).await
    }

    async fn on_version_mask(&mut self, mask: u32) -> Result<(), SessionEnd> {
        if !self.config.version_rolling {
            self.counters.count_unexpected();
            tracing::warn!(mask = %format!("{mask:08x}"), "Ignoring a version mask we did not ask for");
            return Ok(());
        }
        self.set_mask(mask).await
    }

    /// Uses `granted ∩ requested` from now on; the current job is re-issued when it changes.
    async fn set_mask(&mut self, granted: u32) -> Result<(), SessionEnd> {
        let mask = granted & REQUESTED_VERSION_MASK;
        if granted & !REQUESTED_VERSION_MASK != 0 {
            tracing::warn!(
                granted = %format!("{granted:08x}"),
                used = %format!("{mask:08x}"),
                "Pool granted version bits we did not ask for; using only the requested ones"
            );
        }
        if mask == self.version_mask {
            return Ok(());
        }
        tracing::info!(mask = %format!("{mask:08x}"), "Version rolling mask");
        self.version_mask = mask;
        self.emit(SessionEvent::VersionMask(mask)).await?;
        if let Some(current) = self.current.clone() {
            if current.version_mask != mask {
                self.emit_job(current.notify.clone(), false, true, Instant::now())
                    .await?;
            }
        }
        Ok(())
    }

    fn ready(&self) -> bool {
        self.subscribed.is_some() && self.authorized
    }

    async fn emit_job(
        &mut self,
        notify: Notify,
        clean: bool,
        reissue: bool,
        received_at: Instant,
    ) -> Result<(), SessionEnd> {
        let Some((extranonce1, extranonce2_size)) = self.subscribed.clone() else {
            return Ok(());
        };
        // The parser only lets finite positive difficulties through; 1 is the protocol default.
        let difficulty = Difficulty::new(self.difficulty)
            .or_else(|_| Difficulty::new(1.0))
            .expect("BUG: 1.0 is a valid difficulty");
        let template = Arc::new(JobTemplate {
            notify,
            extranonce1,
            extranonce2_size,
            algorithm: self.config.algorithm,
            target: Target::from_difficulty(self.config.algorithm, difficulty),
            version_mask: self.version_mask,
        });
        tracing::debug!(
            job_id = %template.notify.job_id,
            clean,
            reissue,
            difficulty = self.difficulty,
            "Job"
        );
        self.current = Some(Arc::clone(&template));
        self.emit(SessionEvent::Job(JobEvent {
            template,
            clean,
            reissue,
            received_at,
        }))
        .await
    }

    async fn on_ready(&mut self) -> Result<(), SessionEnd> {
        if let Some((notify, clean, at)) = self.held.take() {
            self.emit_job(notify, clean, false, at).await?;
        }
        Ok(())
    }

    async fn on_response(
        &mut self,
        id: &Value,
        result: Value,
        error: Option<StratumError>,
    ) -> Result<(), SessionEnd> {
        let key = match id {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        let Some(pending) = key.and_then(|k| self.pending.remove(&k)) else {
            self.counters.count_unexpected();
            tracing::warn!(%id, "Ignoring an answer to an unknown or expired request");
            return Ok(());
        };
        let key = key.unwrap_or(0);
        match pending.kind {
            PendingKind::Configure => {
                let granted = match (error, ConfigureResult::parse(&result)) {
                    (Some(error), _) => {
                        tracing::info!(%error, "Pool refused mining.configure; no version rolling");
                        None
                    }
                    (None, Ok(r)) => r.version_rolling_mask,
                    (None, Err(error)) => {
                        self.counters.count_malformed();
                        tracing::warn!(%error, "Unusable mining.configure result; no version rolling");
                        None
                    }
                };
                match granted {
                    Some(mask) => self.set_mask(mask).await,
                    None => self.set_mask(0).await,
                }
            }
            PendingKind::Subscribe { resuming } => {
                if let Some(error) = error {
                    if resuming {
                        // The pool forgot the session or does not resume: start afresh, and
                        // authorize again in case it answered the first one "not subscribed".
                        tracing::info!(%error, "Pool would not resume the session; subscribing anew");
                        self.subscribe(None).await?;
                        return self.authorize().await;
                    }
                    return Err(SessionEnd::SubscribeRefused(error.to_string()));
                }
                let sub = SubscribeResult::parse(&result).map_err(|e| {
                    self.counters.count_malformed();
                    SessionEnd::BadSubscribe(e.to_string())
                })?;
                // Kept and sent back on the next connection: bounded, pool text is untrusted.
                let session_id = sub
                    .subscriptions
                    .iter()
                    .find(|(method, _)| method == "mining.notify")
                    .map(|(_, id)| id.clone())
                    .filter(|id| id.len() <= MAX_SESSION_ID_BYTES);
                tracing::info!(
                    extranonce1 = %rigfleet_engine::hex::encode(&sub.extranonce1),
                    extranonce2_size = sub.extranonce2_size,
                    "Subscribed"
                );
                self.subscribed = Some((sub.extranonce1.clone(), sub.extranonce2_size));
                self.emit(SessionEvent::Subscribed {
                    extranonce1: sub.extranonce1,
                    extranonce2_size: sub.extranonce2_size,
                    session_id,
                })
                .await?;
                if self.authorized {
                    self.on_ready().await?;
                }
                Ok(())
            }
            PendingKind::Authorize => {
                if key != self.authorize_id {
                    tracing::debug!("Answer to a superseded mining.authorize; ignored");
                    return Ok(());
                }
                match (error, result) {
                    (None, Value::Bool(true)) => {
                        tracing::info!(user = %self.config.user, "Authorized");
                        self.authorized = true;
                        self.emit(SessionEvent::Authorized).await?;
                        if self.subscribed.is_some() {
                            self.on_ready().await?;
                        }
                        Ok(())
                    }
                    (Some(error), _) => Err(SessionEnd::Unauthorized(error.to_string())),
                    (None, other) => Err(SessionEnd::Unauthorized(format!(
                        "pool answered {}",
                        truncate(&other.to_string())
                    ))),
                }
            }
            PendingKind::ExtranonceSubscribe | PendingKind::SuggestDifficulty => {
                if let Some(error) = error {
                    tracing::debug!(method = pending.kind.method(), %error, "Optional request refused");
                }
                Ok(())
            }
            PendingKind::Submit { job_id, difficulty } => {
                let answer = match (error, &result) {
                    (Some(error), _) => Err(error),
                    (None, Value::Bool(true)) => Ok(()),
                    (None, other) => Err(StratumError::new(
                        StratumError::OTHER,
                        format!("pool answered {}", truncate(&other.to_string())),
                    )),
                };
                let latency = pending.sent_at.elapsed();
                self.emit(SessionEvent::ShareAnswered {
                    job_id,
                    answer,
                    latency,
                    difficulty,
                })
                .await
            }
        }
    }

    /// Handles every request whose answer is overdue.
    async fn expire(&mut self, now: Instant) -> Result<(), SessionEnd> {
        let mut overdue: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        overdue.sort_unstable();
        for id in overdue {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            match pending.kind {
                PendingKind::Configure => {
                    tracing::warn!("Pool did not answer mining.configure; no version rolling");
                }
                PendingKind::Subscribe { .. } => {
                    return Err(SessionEnd::Timeout {
                        method: "mining.subscribe",
                    })
                }
                PendingKind::Authorize if id == self.authorize_id => {
                    return Err(SessionEnd::Timeout {
                        method: "mining.authorize",
                    })
                }
                PendingKind::Authorize => {}
                PendingKind::ExtranonceSubscribe | PendingKind::SuggestDifficulty => {
                    tracing::debug!(
                        method = pending.kind.method(),
                        "Optional request not answered"
                    );
                }
                PendingKind::Submit { job_id, difficulty } => {
                    tracing::warn!(job_id, "Pool did not answer a share");
                    self.emit(SessionEvent::ShareUnanswered { job_id, difficulty })
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.writer.shutdown()).await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A line cut for logs: pool text is untrusted and may be huge.
fn truncate(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{notify_params, ScriptedPool};
    use serde_json::json;

    struct Harness {
        pool: ScriptedPool,
        commands: mpsc::Sender<SessionCommand>,
        events: mpsc::Receiver<SessionEvent>,
        counters: Arc<ProtocolCounters>,
        task: JoinHandle<SessionEnd>,
    }

    fn start(config: SessionConfig) -> Harness {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (commands, command_rx) = mpsc::channel(16);
        let (event_tx, events) = mpsc::channel(64);
        let counters = Arc::new(ProtocolCounters::default());
        let task = tokio::spawn(run_session(
            client,
            config,
            command_rx,
            event_tx,
            Arc::clone(&counters),
        ));
        Harness {
            pool: ScriptedPool::new(server),
            commands,
            events,
            counters,
            task,
        }
    }

    fn config() -> SessionConfig {
        SessionConfig::new("wallet.rig1", "x", Algorithm::Sha256d)
    }

    impl Harness {
        async fn next_event(&mut self) -> SessionEvent {
            tokio::time::timeout(Duration::from_secs(3600), self.events.recv())
                .await
                .expect("event in time")
                .expect("session alive")
        }

        /// Skips events until a job comes.
        async fn next_job(&mut self) -> JobEvent {
            loop {
                if let SessionEvent::Job(job) = self.next_event().await {
                    return job;
                }
            }
        }

        /// Answers configure (granting `mask`), subscribe and authorize in request order.
        async fn accept_handshake(&mut self, mask: &str) {
            let (id, _) = self.pool.expect("mining.configure").await;
            self.pool
                .answer(
                    id,
                    json!({"version-rolling": true, "version-rolling.mask": mask}),
                )
                .await;
            let (id, _) = self.pool.expect("mining.subscribe").await;
            self.pool
                .answer(id, json!([[["mining.notify", "sess1"]], "f000000f", 4]))
                .await;
            let (id, _) = self.pool.expect("mining.authorize").await;
            self.pool.answer(id, json!(true)).await;
        }
    }

    #[tokio::test]
    async fn handshake_order_and_only_granted_version_bits_are_used() {
        let mut cfg = config();
        cfg.suggest_difficulty = Some(0.5);
        cfg.extranonce_subscribe = true;
        let mut h = start(cfg);
        let (id_conf, params) = h.pool.expect("mining.configure").await;
        assert_eq!(
            params,
            json!([["version-rolling"], {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 2}])
        );
        let (id_sub, params) = h.pool.expect("mining.subscribe").await;
        assert_eq!(params, json!([USER_AGENT]));
        assert!(USER_AGENT.starts_with("rigfleet/"));
        let (_, params) = h.pool.expect("mining.suggest_difficulty").await;
        assert_eq!(params, json!([0.5]));
        let (id_auth, params) = h.pool.expect("mining.authorize").await;
        assert_eq!(params, json!(["wallet.rig1", "x"]));
        let (_, _) = h.pool.expect("mining.extranonce.subscribe").await;

        // The pool grants some requested bits and one we never asked for (bit 31).
        h.pool
            .answer(
                id_conf,
                json!({"version-rolling": true, "version-rolling.mask": "8001e000"}),
            )
            .await;
        h.pool
            .answer(id_sub, json!([[["mining.notify", "sess1"]], "f000000f", 4]))
            .await;
        h.pool.answer(id_auth, json!(true)).await;
        h.pool.notify(notify_params("j1", true)).await;
        let job = h.next_job().await;
        assert_eq!(job.template.version_mask, 0x0001_e000);
        assert_eq!(job.template.extranonce1, vec![0xf0, 0, 0, 0x0f]);
        assert!(job.clean && !job.reissue);

        // A new mask from the pool re-issues the current job with it at once.
        h.pool
            .notify_method("mining.set_version_mask", json!(["00006000"]))
            .await;
        let job = h.next_job().await;
        assert_eq!(job.template.version_mask, 0x0000_6000);
        assert_eq!(job.template.notify.job_id, "j1");
        assert!(job.reissue && !job.clean);
    }

    #[tokio::test]
    async fn resume_id_is_sent_and_a_refusal_falls_back_to_a_new_subscription() {
        let mut cfg = config();
        cfg.version_rolling = false;
        cfg.resume_session_id = Some("sess1".into());
        let mut h = start(cfg);
        let (id_sub, params) = h.pool.expect("mining.subscribe").await;
        assert_eq!(params, json!([USER_AGENT, "sess1"]));
        let (id_auth, _) = h.pool.expect("mining.authorize").await;
        h.pool
            .answer_error(id_sub, StratumError::new(20, "unknown session"))
            .await;
        h.pool
            .answer_error(id_auth, StratumError::new(25, "Not subscribed"))
            .await;
        let (id_sub, params) = h.pool.expect("mining.subscribe").await;
        assert_eq!(params, json!([USER_AGENT]));
        let (id_auth, _) = h.pool.expect("mining.authorize").await;
        h.pool
            .answer(id_sub, json!([[["mining.notify", "sess2"]], "01", 4]))
            .await;
        h.pool.answer(id_auth, json!(true)).await;
        h.pool.notify(notify_params("j1", true)).await;
        let job = h.next_job().await;
        assert_eq!(job.template.version_mask, 0, "no rolling asked for");
    }

    #[tokio::test]
    async fn answers_out_of_order_are_matched_by_id() {
        let mut h = start(config());
        let (id_conf, _) = h.pool.expect("mining.configure").await;
        let (id_sub, _) = h.pool.expect("mining.subscribe").await;
        let (id_auth, _) = h.pool.expect("mining.authorize").await;
        // Reverse order, with a job before the handshake is complete.
        h.pool.answer(id_auth, json!(true)).await;
        h.pool.notify(notify_params("early", true)).await;
        h.pool
            .answer(
                id_conf,
                json!({"version-rolling": true, "version-rolling.mask": "1fffe000"}),
            )
            .await;
        h.pool
            .answer(id_sub, json!([[["mining.notify", "s"]], "aa", 4]))
            .await;
        let job = h.next_job().await;
        assert_eq!(job.template.notify.job_id, "early");
        assert!(job.clean, "a held clean job stays clean");
        assert_eq!(job.template.version_mask, REQUESTED_VERSION_MASK);

        // Two submits answered in reverse order.
        for (job_id, pool) in [("early", 1.0), ("early2", 2.0)] {
            let difficulty = ShareDifficulty { pool, hash: 5.0 };
            h.commands
                .send(SessionCommand::Submit {
                    submit: Submit {
                        worker: "wallet.rig1".into(),
                        job_id: job_id.into(),
                        extranonce2: vec![0; 4],
                        ntime: 1,
                        nonce: 2,
                        version_bits: Some(0x2000),
                    },
                    difficulty,
                })
                .await
                .unwrap();
        }
        let (first, p1) = h.pool.expect("mining.submit").await;
        assert_eq!(p1[5], json!("00002000"), "version bits are submitted");
        let (second, _) = h.pool.expect("mining.submit").await;
        h.pool
            .answer_error(second, StratumError::new(23, "Low difficulty share"))
            .await;
        h.pool.answer(first, json!(true)).await;
        let mut answers = Vec::new();
        while answers.len() < 2 {
            if let SessionEvent::ShareAnswered { job_id, answer, .. } = h.next_event().await {
                answers.push((job_id, answer.map_err(|e| e.code)));
            }
        }
        assert_eq!(
            answers,
            vec![
                ("early2".to_string(), Err(23)),
                ("early".to_string(), Ok(()))
            ]
        );
    }

    #[tokio::test]
    async fn malformed_and_unexpected_lines_are_counted_not_fatal() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        for line in [
            "garbage",
            "[1,2,3]",
            r#"{"id":1}"#,
            r#"{"id":null,"method":"mining.notify","params":[1,2]}"#,
            r#"{"id":null,"method":"mining.set_difficulty","params":["high"]}"#,
            r#"{"id":null,"method":"mining.notify","params":"x"}"#,
        ] {
            h.pool.send_line(line).await;
        }
        h.pool.send_raw(b"\xff\xfe\n").await;
        // Unexpected: an answer nobody asked for, an unknown method (answered with an error).
        h.pool
            .send_line(r#"{"id":999,"result":true,"error":null}"#)
            .await;
        h.pool
            .send_line(r#"{"id":77,"method":"mining.bogus","params":[]}"#)
            .await;
        let reply = h.pool.recv().await;
        assert_eq!(reply["id"], json!(77));
        assert!(reply["error"].is_array());
        // get_version is answered with our user agent.
        h.pool
            .send_line(r#"{"id":78,"method":"client.get_version","params":[]}"#)
            .await;
        let reply = h.pool.recv().await;
        assert_eq!(reply["id"], json!(78));
        assert_eq!(reply["result"], json!(USER_AGENT));
        // The session still works.
        h.pool.notify(notify_params("after", true)).await;
        let job = h.next_job().await;
        assert_eq!(job.template.notify.job_id, "after");
        assert_eq!(h.counters.malformed(), 7);
        assert_eq!(h.counters.unexpected(), 2);
    }

    #[tokio::test]
    async fn a_line_over_the_limit_closes_the_session() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        let mut huge = vec![b'x'; crate::codec::MAX_LINE_BYTES + 100];
        huge.push(b'\n');
        h.pool.send_raw(&huge).await;
        let end = tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, SessionEnd::BrokenFraming(_)), "{end:?}");
    }

    #[tokio::test]
    async fn set_difficulty_applies_to_the_next_job() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        h.pool
            .notify_method("mining.set_difficulty", json!([2]))
            .await;
        h.pool.notify(notify_params("j1", true)).await;
        let j1 = h.next_job().await;
        h.pool
            .notify_method("mining.set_difficulty", json!([64]))
            .await;
        // No new job from a difficulty change alone...
        match h.next_event().await {
            SessionEvent::Difficulty(d) => assert_eq!(d, 64.0),
            other => panic!("expected the difficulty event, got {other:?}"),
        }
        h.pool.notify(notify_params("j2", false)).await;
        let j2 = h.next_job().await;
        let algo = Algorithm::Sha256d;
        let d = |d: f64| Target::from_difficulty(algo, Difficulty::new(d).unwrap());
        assert_eq!(
            j1.template.target,
            d(2.0),
            "the first job keeps its difficulty"
        );
        assert_eq!(
            j2.template.target,
            d(64.0),
            "...the next job gets the new one"
        );
        assert!(!j2.clean);
    }

    #[tokio::test]
    async fn set_extranonce_applies_to_the_next_job() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        h.pool.notify(notify_params("j1", true)).await;
        let j1 = h.next_job().await;
        h.pool
            .notify_method("mining.set_extranonce", json!(["c0ffee", 2]))
            .await;
        h.pool.notify(notify_params("j2", true)).await;
        let j2 = h.next_job().await;
        assert_eq!(
            (
                j1.template.extranonce1.as_slice(),
                j1.template.extranonce2_size
            ),
            (&[0xf0, 0, 0, 0x0f][..], 4)
        );
        assert_eq!(
            (
                j2.template.extranonce1.as_slice(),
                j2.template.extranonce2_size
            ),
            (&[0xc0, 0xff, 0xee][..], 2)
        );
    }

    #[tokio::test]
    async fn refused_authorization_ends_the_session_with_the_reason() {
        let mut h = start(config());
        let (_, _) = h.pool.expect("mining.configure").await;
        let (id_sub, _) = h.pool.expect("mining.subscribe").await;
        let (id_auth, _) = h.pool.expect("mining.authorize").await;
        h.pool.answer(id_sub, json!([[], "aa", 4])).await;
        h.pool.answer(id_auth, json!(false)).await;
        let end = h.task.await.unwrap();
        assert!(end.is_auth_failure(), "{end:?}");
        assert!(end.to_string().contains("false"), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_requests_time_out() {
        let mut h = start(config());
        let (id_conf, _) = h.pool.expect("mining.configure").await;
        let (id_sub, _) = h.pool.expect("mining.subscribe").await;
        let (_, _) = h.pool.expect("mining.authorize").await;
        h.pool
            .answer(id_conf, json!({"version-rolling": false}))
            .await;
        h.pool.answer(id_sub, json!([[], "aa", 4])).await;
        // Authorize is never answered.
        let end = h.task.await.unwrap();
        assert_eq!(
            end,
            SessionEnd::Timeout {
                method: "mining.authorize"
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_submits_are_reported_and_late_answers_counted() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        h.commands
            .send(SessionCommand::Submit {
                submit: Submit {
                    worker: "w".into(),
                    job_id: "j".into(),
                    extranonce2: vec![0; 4],
                    ntime: 1,
                    nonce: 2,
                    version_bits: None,
                },
                difficulty: ShareDifficulty {
                    pool: 3.0,
                    hash: 7.0,
                },
            })
            .await
            .unwrap();
        let (id, _) = h.pool.expect("mining.submit").await;
        loop {
            match h.next_event().await {
                SessionEvent::ShareUnanswered { job_id, difficulty } => {
                    assert_eq!((job_id.as_str(), difficulty.pool), ("j", 3.0));
                    break;
                }
                SessionEvent::ShareAnswered { .. } => panic!("no answer was sent"),
                _ => {}
            }
        }
        h.pool.answer(id, json!(true)).await;
        h.pool.notify(notify_params("j2", true)).await;
        h.next_job().await;
        assert_eq!(h.counters.unexpected(), 1);
    }

    #[tokio::test]
    async fn reconnect_and_messages() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        h.pool
            .notify_method("client.show_message", json!(["maintenance soon"]))
            .await;
        loop {
            if let SessionEvent::Message(text) = h.next_event().await {
                assert_eq!(text, "maintenance soon");
                break;
            }
        }
        h.pool
            .notify_method("client.reconnect", json!(["", 3334, 5]))
            .await;
        let end = h.task.await.unwrap();
        assert_eq!(
            end,
            SessionEnd::Reconnect {
                host: None,
                port: Some(3334),
                wait: Duration::from_secs(5)
            }
        );
    }

    #[tokio::test]
    async fn dropping_the_commands_closes_the_session() {
        let mut h = start(config());
        h.accept_handshake("1fffe000").await;
        drop(h.commands);
        let end = h.task.await.unwrap();
        assert_eq!(end, SessionEnd::Shutdown);
        assert!(h.pool.at_eof().await);
    }
}
