//! One miner connection: the Stratum V1 server state machine.
//!
//! A reader task frames lines (the codec is not cancel-safe inside a line, so it gets its own
//! task, as the codec's docs ask) and hands them over a bounded channel; the session task owns
//! all per-connection state (extranonce1, workers, mask, difficulty, the jobs it was sent and the
//! shares seen for each) and selects between lines, new jobs, control events, the vardiff tick,
//! the idle deadline and shutdown. Nothing here trusts the peer: every request is parsed into a
//! typed message first, and anything unexpected is answered or counted, never a panic.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, error, info};

use rigfleet_engine::{Difficulty, Target};

use super::server::{now_unix, ControlEvent, Shared};
use super::stats::ShareOutcome;
use super::template::{Job, EXTRANONCE1_SIZE};
use super::validate::{check_share, Invalid, ShareContext};
use super::vardiff::{Vardiff, VardiffConfig};
use crate::codec::{self, ReadError};
use crate::error::MessageError;
use crate::message::{
    ClientRequest, ConfigureResult, Frame, ServerMessage, StratumError, Submit, SubscribeResult,
};

/// Jobs a connection may still submit shares for: at a 30 s job interval this is eight minutes
/// of jobs within one block; older ones answer "stale".
pub const MAX_LIVE_JOBS: usize = 16;

/// Ids of retired jobs remembered per connection, to tell "stale" from "never existed".
const MAX_RETIRED_JOBS: usize = 64;

/// Workers one connection may authorize (proxies authorize several; this bounds the table).
pub const MAX_WORKERS_PER_CONNECTION: usize = 16;

/// Malformed lines tolerated per connection before it is closed: a few are a buggy miner worth
/// answering, a stream of them is garbage not worth parsing.
pub const MAX_MALFORMED_LINES: u32 = 50;

/// Lines buffered between the reader task and the session.
const LINE_QUEUE: usize = 16;

/// A write that takes longer than this means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reader task hands over.
enum Incoming {
    Line(String),
    /// Not UTF-8: one bad line, framing intact.
    NotText,
    /// End of stream.
    Eof,
    /// Framing broken (a line over the limit) or the socket failed.
    Broken(String),
}

/// Why a session ended (for the log).
enum End {
    Shutdown,
    PeerClosed,
    Idle,
    Disconnected,
    TooManyMalformed,
    Broken(String),
    WriteFailed(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Shutdown => f.write_str("pool shutting down"),
            End::PeerClosed => f.write_str("closed by the peer"),
            End::Idle => f.write_str("idle timeout"),
            End::Disconnected => f.write_str("disconnected by the operator"),
            End::TooManyMalformed => f.write_str("too many malformed lines"),
            End::Broken(why) => write!(f, "framing broken: {why}"),
            End::WriteFailed(why) => write!(f, "write failed: {why}"),
        }
    }
}

type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A job as this connection got it.
struct SentJob {
    job: Arc<Job>,
    /// The difficulty in force when it was sent.
    difficulty: f64,
    /// Hashes of the shares accepted for it (duplicate detection); dropped with the job.
    accepted: HashSet<[u8; 32]>,
}

/// Serves one connection until it ends.
pub(crate) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (line_tx, line_rx) = mpsc::channel(LINE_QUEUE);
    let reader = tokio::spawn(read_lines(read_half, line_tx));
    let mut session = Session::new(shared, peer, Box::new(write_half));
    let end = session.serve(line_rx, shutdown).await;
    reader.abort();
    // Wait for the abort, so the socket is closed (both halves dropped) when this returns.
    let _ = reader.await;
    debug!(%peer, reason = %end, "Connection closed");
}

async fn read_lines<R: AsyncRead + Send + Unpin>(read_half: R, tx: mpsc::Sender<Incoming>) {
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        let item = match codec::read_line(&mut reader, &mut line).await {
            Ok(true) => Incoming::Line(std::mem::take(&mut line)),
            Ok(false) => Incoming::Eof,
            // read_line consumed the whole line before checking UTF-8, so reading goes on.
            Err(ReadError::Message(MessageError::NotJson(_))) => Incoming::NotText,
            Err(e) => Incoming::Broken(e.to_string()),
        };
        let last = matches!(item, Incoming::Eof | Incoming::Broken(_));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    writer: BoxedWriter,
    extranonce1: [u8; EXTRANONCE1_SIZE],
    subscribed: bool,
    extranonce_subscribed: bool,
    workers: HashSet<String>,
    /// Granted BIP 310 mask; 0 until `mining.configure` grants one.
    version_mask: u32,
    /// Current share difficulty.
    difficulty: f64,
    vardiff: Option<Vardiff>,
    /// Live jobs, oldest first.
    jobs: VecDeque<SentJob>,
    /// Ids of jobs retired by a new block, a new extranonce or age.
    retired: VecDeque<String>,
    /// Block of the last job sent, to set `clean_jobs` when it changes.
    last_block_seq: Option<u64>,
    malformed: u32,
}

impl Session {
    fn new(shared: Arc<Shared>, peer: SocketAddr, writer: BoxedWriter) -> Self {
        let extranonce1 = shared.allocate_extranonce1();
        let difficulty = shared.config.difficulty.value();
        let vardiff = shared
            .config
            .vardiff
            .map(|c| Vardiff::new(c, Instant::now()));
        Self {
            shared,
            peer,
            writer,
            extranonce1,
            subscribed: false,
            extranonce_subscribed: false,
            workers: HashSet::new(),
            version_mask: 0,
            difficulty,
            vardiff,
            jobs: VecDeque::new(),
            retired: VecDeque::new(),
            last_block_seq: None,
            malformed: 0,
        }
    }

    async fn serve(
        &mut self,
        mut lines: mpsc::Receiver<Incoming>,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let mut job_rx = self.shared.current.subscribe();
        let mut events = self.shared.events.subscribe();
        let idle_timeout = self.shared.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // Half the retarget interval, so silence is noticed at most that late.
        let tick_every = self
            .vardiff
            .as_ref()
            .map_or(Duration::from_secs(3600), |v| v.config().retarget_after / 2)
            .max(Duration::from_millis(50));
        let mut vardiff_tick = tokio::time::interval(tick_every);
        vardiff_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        if *shutdown.borrow() {
            return End::Shutdown;
        }
        loop {
            let step = tokio::select! {
                _ = shutdown.changed() => Err(End::Shutdown),
                _ = &mut idle => Err(End::Idle),
                incoming = lines.recv() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    match incoming {
                        Some(Incoming::Line(line)) => self.on_line(&line).await,
                        Some(Incoming::NotText) => self.on_malformed(Value::Null, "not UTF-8").await,
                        Some(Incoming::Eof) | None => Err(End::PeerClosed),
                        Some(Incoming::Broken(why)) => {
                            self.shared.stats.update(|s| s.malformed_lines += 1);
                            Err(End::Broken(why))
                        }
                    }
                }
                changed = job_rx.changed(), if self.subscribed => match changed {
                    Ok(()) => {
                        let job = job_rx.borrow_and_update().clone();
                        self.send_job(job, false).await
                    }
                    Err(_) => Err(End::Shutdown),
                },
                event = events.recv() => match event {
                    Ok(event) => {
                        if matches!(event, ControlEvent::RotateExtranonce)
                            && self.subscribed
                            && self.extranonce_subscribed
                        {
                            // The rotation re-sends the newest job itself, after the new
                            // extranonce1; sending it here too would announce it under the old one.
                            job_rx.borrow_and_update();
                        }
                        self.on_event(event).await
                    }
                    // Missed control events are operator actions; carry on with the next.
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => Err(End::Shutdown),
                },
                _ = vardiff_tick.tick(), if self.subscribed && self.vardiff.is_some() => {
                    self.on_vardiff_tick().await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send_line(&mut self, line: String) -> Result<(), End> {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::WriteFailed(e.to_string())),
            Err(_) => Err(End::WriteFailed("write timed out".into())),
        }
    }

    async fn reply(&mut self, id: Value, result: Value) -> Result<(), End> {
        self.send_line(Frame::ok(id, result)).await
    }

    async fn reply_err(&mut self, id: Value, code: i64, message: &str) -> Result<(), End> {
        self.send_line(Frame::err(id, &StratumError::new(code, message)))
            .await
    }

    async fn on_malformed(&mut self, id: Value, why: &str) -> Result<(), End> {
        self.malformed += 1;
        self.shared.stats.update(|s| s.malformed_lines += 1);
        debug!(peer = %self.peer, why, "Malformed line");
        if self.malformed > MAX_MALFORMED_LINES {
            return Err(End::TooManyMalformed);
        }
        self.reply_err(
            id,
            StratumError::OTHER,
            &format!("malformed request: {why}"),
        )
        .await
    }

    async fn on_line(&mut self, line: &str) -> Result<(), End> {
        let (id, method, params) = match Frame::parse(line) {
            Ok(Frame::Request { id, method, params }) => (id, method, params),
            // The pool never sends requests that want an answer, so a response is noise.
            Ok(Frame::Response { .. }) => return Ok(()),
            Err(e) => return self.on_malformed(Value::Null, &e.to_string()).await,
        };
        match ClientRequest::parse(&method, &params) {
            Ok(request) => self.on_request(id, request).await,
            Err(MessageError::UnknownMethod(_)) => {
                self.shared.stats.update(|s| s.unknown_methods += 1);
                debug!(peer = %self.peer, method = %truncate(&method), "Unknown method");
                if id.is_null() {
                    // A notification wants no answer.
                    Ok(())
                } else {
                    self.reply_err(id, StratumError::OTHER, "unknown method")
                        .await
                }
            }
            Err(e) => {
                if method == "mining.submit" {
                    // A submit the pool cannot even read is a rejected share (20) of its
                    // worker, when it names one this connection authorized.
                    let worker = params
                        .get(0)
                        .and_then(Value::as_str)
                        .filter(|w| self.workers.contains(*w))
                        .map(str::to_string);
                    self.shared.stats.record_share(
                        worker.as_deref(),
                        ShareOutcome::Rejected {
                            code: StratumError::OTHER,
                            stale: false,
                        },
                    );
                }
                self.reply_err(id, StratumError::OTHER, &e.to_string())
                    .await
            }
        }
    }

    async fn on_request(&mut self, id: Value, request: ClientRequest) -> Result<(), End> {
        match request {
            ClientRequest::Subscribe { user_agent, .. } => {
                // Session resumption is not offered: every connection gets a fresh extranonce1,
                // which the protocol allows.
                let en1 = rigfleet_engine::hex::encode(&self.extranonce1);
                let result = SubscribeResult {
                    subscriptions: vec![
                        ("mining.set_difficulty".into(), en1.clone()),
                        ("mining.notify".into(), en1),
                    ],
                    extranonce1: self.extranonce1.to_vec(),
                    extranonce2_size: self.shared.config.extranonce2_size,
                };
                self.reply(id, result.to_value()).await?;
                if !self.subscribed {
                    self.subscribed = true;
                    debug!(peer = %self.peer, agent = %truncate(&user_agent), "Subscribed");
                    self.send_line(ServerMessage::SetDifficulty(self.difficulty).to_line())
                        .await?;
                    let job = self.shared.current.borrow().clone();
                    self.send_job(job, true).await?;
                }
                Ok(())
            }
            ClientRequest::Authorize { user, password } => {
                let allowed = self.shared.config.auth.allows(&user, &password)
                    && (self.workers.contains(&user)
                        || self.workers.len() < MAX_WORKERS_PER_CONNECTION);
                if allowed {
                    self.shared.stats.add_worker(&user);
                    self.workers.insert(user);
                    self.reply(id, json!(true)).await
                } else {
                    debug!(peer = %self.peer, user = %truncate(&user), "Authorization refused");
                    self.send_line(
                        json!({
                            "id": id,
                            "result": false,
                            "error": [StratumError::UNAUTHORIZED, "Unauthorized worker", null]
                        })
                        .to_string(),
                    )
                    .await
                }
            }
            ClientRequest::Configure { version_rolling } => {
                let result = match version_rolling {
                    None => json!({}),
                    Some(req) => {
                        let granted = req.mask & self.shared.config.version_mask;
                        // BIP 310: grant only what was asked and allowed; too few bits for the
                        // miner's minimum is a refusal.
                        let ok = granted != 0 && granted.count_ones() >= req.min_bit_count;
                        self.version_mask = if ok { granted } else { 0 };
                        ConfigureResult {
                            version_rolling_mask: ok.then_some(granted),
                        }
                        .to_value()
                    }
                };
                self.reply(id, result).await
            }
            ClientRequest::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                self.reply(id, json!(true)).await
            }
            ClientRequest::SuggestDifficulty(d) => {
                let bounded = self.bounded_difficulty(d);
                self.reply(id, json!(true)).await?;
                self.set_difficulty(bounded).await
            }
            ClientRequest::Submit(submit) => self.on_submit(id, submit).await,
        }
    }

    /// A difficulty from a miner or the operator, kept inside the vardiff bounds (or the
    /// default bounds when vardiff is off).
    fn bounded_difficulty(&self, d: f64) -> f64 {
        match &self.vardiff {
            Some(v) => v.clamp(d),
            None => Vardiff::new(VardiffConfig::default(), Instant::now()).clamp(d),
        }
    }

    async fn set_difficulty(&mut self, difficulty: f64) -> Result<(), End> {
        if let Some(v) = &mut self.vardiff {
            v.reset(Instant::now());
        }
        if difficulty == self.difficulty {
            return Ok(());
        }
        self.difficulty = difficulty;
        if self.subscribed {
            debug!(peer = %self.peer, difficulty, "New difficulty");
            self.send_line(ServerMessage::SetDifficulty(difficulty).to_line())
                .await?;
        }
        Ok(())
    }

    async fn send_job(&mut self, job: Arc<Job>, force_clean: bool) -> Result<(), End> {
        let clean =
            force_clean || job.notify.clean_jobs || self.last_block_seq != Some(job.block_seq);
        if clean {
            self.retire_all();
        }
        self.last_block_seq = Some(job.block_seq);
        let mut notify = job.notify.clone();
        notify.clean_jobs = clean;
        self.jobs.push_back(SentJob {
            job,
            difficulty: self.difficulty,
            accepted: HashSet::new(),
        });
        while self.jobs.len() > MAX_LIVE_JOBS {
            if let Some(old) = self.jobs.pop_front() {
                self.retire(old.job.id.clone());
            }
        }
        self.send_line(ServerMessage::Notify(notify).to_line())
            .await
    }

    fn retire_all(&mut self) {
        while let Some(old) = self.jobs.pop_front() {
            self.retire(old.job.id.clone());
        }
    }

    fn retire(&mut self, id: String) {
        self.retired.push_back(id);
        while self.retired.len() > MAX_RETIRED_JOBS {
            self.retired.pop_front();
        }
    }

    async fn reject_share(
        &mut self,
        id: Value,
        worker: Option<&str>,
        code: i64,
        stale: bool,
        message: &str,
    ) -> Result<(), End> {
        self.shared
            .stats
            .record_share(worker, ShareOutcome::Rejected { code, stale });
        debug!(peer = %self.peer, code, message, "Share rejected");
        self.reply_err(id, code, message).await
    }

    async fn on_submit(&mut self, id: Value, submit: Submit) -> Result<(), End> {
        if !self.subscribed {
            return self
                .reject_share(
                    id,
                    None,
                    StratumError::NOT_SUBSCRIBED,
                    false,
                    "Not subscribed",
                )
                .await;
        }
        if !self.workers.contains(&submit.worker) {
            return self
                .reject_share(
                    id,
                    None,
                    StratumError::UNAUTHORIZED,
                    false,
                    "Unauthorized worker",
                )
                .await;
        }
        let worker = submit.worker.clone();
        let worker = Some(worker.as_str());
        let current_block = self.shared.current_block_seq();
        let Some(index) = self.jobs.iter().position(|j| j.job.id == submit.job_id) else {
            let stale = self.retired.contains(&submit.job_id);
            let message = if stale { "Stale job" } else { "Job not found" };
            return self
                .reject_share(id, worker, StratumError::JOB_NOT_FOUND, stale, message)
                .await;
        };
        if self.jobs[index].job.block_seq != current_block {
            // A new block was found but this session has not sent its job yet: the share is
            // stale all the same.
            return self
                .reject_share(id, worker, StratumError::JOB_NOT_FOUND, true, "Stale job")
                .await;
        }

        // The lower of the difficulty the job was sent at and the current one: miners apply a
        // new difficulty either at once or from the next job, and both are accepted.
        let credited = self.jobs[index].difficulty.min(self.difficulty);
        let target = Target::from_difficulty(
            self.shared.config.algorithm,
            Difficulty::new(credited).expect("BUG: session difficulties are positive"),
        );
        let ctx = ShareContext {
            algorithm: self.shared.config.algorithm,
            extranonce1: &self.extranonce1,
            extranonce2_size: self.shared.config.extranonce2_size,
            version_mask: self.version_mask,
            now_unix: now_unix(),
        };
        let checked = check_share(&ctx, &self.jobs[index].job, &submit, &target);
        let valid = match checked {
            Ok(valid) => valid,
            Err(Invalid::Malformed(why) | Invalid::VersionBits(why)) => {
                return self
                    .reject_share(id, worker, StratumError::OTHER, false, &why)
                    .await;
            }
            Err(Invalid::LowDifficulty { .. }) => {
                return self
                    .reject_share(
                        id,
                        worker,
                        StratumError::LOW_DIFFICULTY,
                        false,
                        "Low difficulty share",
                    )
                    .await;
            }
            Err(Invalid::Mismatch) => {
                error!(
                    peer = %self.peer,
                    job = %submit.job_id,
                    "BUG: job.rs and the template disagree on a share's header"
                );
                self.shared.stats.update(|s| s.internal_errors += 1);
                return self
                    .reject_share(
                        id,
                        worker,
                        StratumError::OTHER,
                        false,
                        "pool error: header mismatch",
                    )
                    .await;
            }
        };
        if !self.jobs[index].accepted.insert(valid.hash) {
            return self
                .reject_share(
                    id,
                    worker,
                    StratumError::DUPLICATE,
                    false,
                    "Duplicate share",
                )
                .await;
        }
        self.shared.stats.record_share(
            worker,
            ShareOutcome::Accepted {
                credited,
                share_difficulty: valid.share_difficulty,
                is_block: valid.is_block,
            },
        );
        if valid.is_block {
            info!(
                worker = %truncate(&submit.worker),
                height = self.jobs[index].job.block.height,
                "Share meets the network target (a block)"
            );
        }
        self.reply(id, json!(true)).await?;
        let current = self.difficulty;
        let retarget = self
            .vardiff
            .as_mut()
            .and_then(|v| v.on_share(Instant::now(), credited, current));
        match retarget {
            Some(d) => self.set_difficulty(d).await,
            None => Ok(()),
        }
    }

    async fn on_vardiff_tick(&mut self) -> Result<(), End> {
        let current = self.difficulty;
        let retarget = self
            .vardiff
            .as_mut()
            .and_then(|v| v.on_tick(Instant::now(), current));
        match retarget {
            Some(d) => self.set_difficulty(d).await,
            None => Ok(()),
        }
    }

    async fn on_event(&mut self, event: ControlEvent) -> Result<(), End> {
        match event {
            ControlEvent::Reconnect {
                host,
                port,
                wait_secs,
            } => {
                self.send_line(
                    ServerMessage::Reconnect {
                        host,
                        port,
                        wait_secs,
                    }
                    .to_line(),
                )
                .await
            }
            ControlEvent::ShowMessage(text) => {
                self.send_line(ServerMessage::ShowMessage(text).to_line())
                    .await
            }
            ControlEvent::SetDifficulty(d) => self.set_difficulty(d).await,
            ControlEvent::RotateExtranonce => {
                if !(self.subscribed && self.extranonce_subscribed) {
                    return Ok(());
                }
                self.extranonce1 = self.shared.allocate_extranonce1();
                self.send_line(
                    ServerMessage::SetExtranonce {
                        extranonce1: self.extranonce1.to_vec(),
                        extranonce2_size: self.shared.config.extranonce2_size,
                    }
                    .to_line(),
                )
                .await?;
                // Work on the old extranonce1 is void; start over from the current job.
                self.retire_all();
                let job = self.shared.current.borrow().clone();
                self.send_job(job, true).await
            }
            ControlEvent::DisconnectAll => Err(End::Disconnected),
        }
    }
}

/// Peer-provided text shortened for logs.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
