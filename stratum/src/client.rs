//! The pool client the agent uses: an ordered pool list with failover, feeding the engine.
//!
//! [`Client`] keeps one active pool connection (plus at most one probe of a better pool),
//! turns each job into engine work ([`JobSink::set_source`]), submits the shares the engine
//! finds on the connection their job came from, and idles the engine when no pool works.
//! [`ClientHandle`] gives cloneable [`ClientSnapshot`]s for telemetry and a broadcast of
//! [`ClientEvent`]s (every pool switch with its reason, every share outcome).
//!
//! ```no_run
//! # async fn demo(miner: std::sync::Arc<rigfleet_engine::Miner>,
//! #               shares: std::sync::mpsc::Receiver<rigfleet_engine::Share>)
//! #               -> Result<(), Box<dyn std::error::Error>> {
//! use rigfleet_stratum::client::{Client, ClientConfig, PoolConfig, forward_shares};
//! let pool = PoolConfig::new("stratum+tcp://127.0.0.1:3333", "wallet.rig1", "x")?;
//! let config = ClientConfig::new(vec![pool], rigfleet_engine::Algorithm::Sha256d);
//! let client = Client::new(config, miner, forward_shares(shares)?)?;
//! let handle = client.handle();
//! let run = tokio::spawn(client.run(async { let _ = tokio::signal::ctrl_c().await; }));
//! println!("{:?}", handle.snapshot().current_pool().map(|p| &p.url));
//! run.await?;
//! # Ok(()) }
//! ```
//!
//! Timing choices:
//! - No job for [`DEFAULT_NO_JOB_TIMEOUT`] (120 s) on the active pool fails it over. Pools send
//!   a fresh job at least every 30 to 60 s (ckpool's default update interval is 30 s), so 120 s
//!   is two missed refreshes with margin; shorter would flap on pools that refresh slowly,
//!   longer would leave a farm hashing on a dead job for minutes.
//! - After authorization a pool has [`DEFAULT_FIRST_JOB_TIMEOUT`] (30 s) for its first job;
//!   real pools send it at once.
//! - Connect (TCP + TLS): 10 s; answers: 15 s (see [`crate::session`]).

mod config;
mod status;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rigfleet_engine::{Algorithm, Miner, Share, WorkSource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub use config::{
    ClientConfig, ClientError, PoolConfig, PoolOptions, Timeouts, DEFAULT_FIRST_JOB_TIMEOUT,
    DEFAULT_NO_JOB_TIMEOUT,
};
pub use status::{
    ClientEvent, ClientHandle, ClientSnapshot, FailReason, PoolRef, PoolSnapshot, PoolState,
    SwitchReason,
};
use status::{PoolStatus, Shared};

use crate::failover::{Backoff, Failover, Jitter, MIN_HEALTHY};
use crate::job_book::{JobBook, JobSource};
use crate::session::{
    run_session, JobEvent, ProtocolCounters, SessionCommand, SessionConfig, SessionEnd,
    SessionEvent,
};
use crate::shares::{ShareDifficulty, ShareOutcome, StaleKind};
use crate::transport::{
    connect_timeout, tls_client_config, Connector, Endpoint, NetConnector, Scheme,
};

/// Longest `client.reconnect` wait honoured: a pool cannot park a rig for an hour.
pub const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(300);
/// Client events kept for slow subscribers; older ones are skipped (they lag, never block us).
pub const EVENT_CAPACITY: usize = 256;
/// Shares queued between the engine and the client.
pub const SHARE_QUEUE: usize = 1024;
/// Submits queued for one connection; beyond it shares are dropped and counted.
const COMMAND_QUEUE: usize = 256;
/// Session events queued for the client loop.
const SESSION_EVENT_QUEUE: usize = 64;
/// How long a closing connection gets to say goodbye (TLS close_notify) at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the client does with jobs: the engine's [`Miner`], or a fake in tests.
///
/// Called from the client's task; implementations must return quickly (the miner takes a lock
/// and hands each device its work, a matter of microseconds).
pub trait JobSink: Send + Sync + 'static {
    /// Mine this job on every device from now on.
    fn set_source(&self, source: Box<dyn WorkSource>);
    /// Stop every device.
    fn idle(&self);
}

impl JobSink for Miner {
    fn set_source(&self, source: Box<dyn WorkSource>) {
        Miner::set_source(self, source);
    }

    fn idle(&self) {
        Miner::idle(self);
    }
}

/// Bridges the engine's share channel (std, blocking) into the client's (tokio, bounded) on a
/// small thread; fails only when the thread cannot be started. The thread ends when either
/// side is gone.
pub fn forward_shares(
    engine: std::sync::mpsc::Receiver<Share>,
) -> std::io::Result<mpsc::Receiver<Share>> {
    let (tx, rx) = mpsc::channel(SHARE_QUEUE);
    std::thread::Builder::new()
        .name("share-forward".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            loop {
                // Wake now and then to notice a client that went away.
                match engine.recv_timeout(Duration::from_millis(250)) {
                    Ok(share) => {
                        if tx.blocking_send(share).is_err() {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) if tx.is_closed() => return,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(rx)
}

/// One pool as the client task holds it.
struct PoolEntry {
    config: PoolConfig,
    endpoint: Endpoint,
    counters: Arc<ProtocolCounters>,
    /// The subscription to resume on the next connection.
    resume_id: Option<String>,
    /// A port from `client.reconnect`, for the next connection only.
    reconnect_port: Option<u16>,
}

impl PoolEntry {
    fn pool_ref(&self, index: usize) -> PoolRef {
        PoolRef {
            index,
            url: self.config.url.to_string(),
        }
    }
}

/// The Stratum client. Build it with [`Client::new`], keep a [`Client::handle`], then drive
/// it with [`Client::run`].
pub struct Client {
    pools: Vec<PoolEntry>,
    algorithm: Algorithm,
    timeouts: Timeouts,
    backoff: Backoff,
    jitter: Jitter,
    sink: Arc<dyn JobSink>,
    shares: mpsc::Receiver<Share>,
    connector: Arc<dyn Connector>,
    shared: Arc<Shared>,
}

impl Client {
    /// Checks the configuration (TLS files and pins included) and prepares the client.
    /// `shares` comes from [`forward_shares`] for a real miner.
    pub fn new(
        config: ClientConfig,
        sink: Arc<dyn JobSink>,
        shares: mpsc::Receiver<Share>,
    ) -> Result<Self, ClientError> {
        if config.pools.is_empty() {
            return Err(ClientError::NoPools);
        }
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in config.pools {
            let url = pool.url.to_string();
            if pool.user.trim().is_empty() {
                return Err(ClientError::EmptyUser(url));
            }
            if pool
                .options
                .suggest_difficulty
                .is_some_and(|d| !(d.is_finite() && d > 0.0))
            {
                return Err(ClientError::BadSuggestedDifficulty(url));
            }
            let tls = match pool.url.scheme {
                Scheme::Tcp => None,
                Scheme::Tls => Some(
                    tls_client_config(&pool.options.tls)
                        .map_err(|source| ClientError::Tls { url, source })?,
                ),
            };
            pools.push(PoolEntry {
                endpoint: Endpoint {
                    url: pool.url.clone(),
                    tls,
                },
                config: pool,
                counters: Arc::new(ProtocolCounters::default()),
                resume_id: None,
                reconnect_port: None,
            });
        }
        let shared = Arc::new(Shared::new(
            pools
                .iter()
                .map(|p| {
                    (
                        p.config.url.to_string(),
                        p.config.user.clone(),
                        p.config.priority,
                        Arc::clone(&p.counters),
                    )
                })
                .collect(),
            EVENT_CAPACITY,
        ));
        Ok(Self {
            pools,
            algorithm: config.algorithm,
            timeouts: config.timeouts,
            backoff: config.backoff,
            jitter: Jitter::from_entropy(),
            sink,
            shares,
            connector: Arc::new(NetConnector),
            shared,
        })
    }

    /// Uses another way to open streams (tests: in-memory pipes).
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    /// Uses a fixed jitter sequence (tests).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// A handle for snapshots and events, usable while [`Client::run`] runs.
    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Mines until `shutdown` completes, then closes the connections and idles the engine.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let priorities: Vec<u32> = self.pools.iter().map(|p| p.config.priority).collect();
        let failover = Failover::new(&priorities, self.backoff, self.jitter, Instant::now());
        let mut runner = Runner {
            pools: self.pools,
            algorithm: self.algorithm,
            timeouts: self.timeouts,
            sink: self.sink,
            shares: self.shares,
            shares_open: true,
            connector: self.connector,
            shared: self.shared,
            failover,
            book: JobBook::default(),
            active: None,
            probe: None,
            mined_on: None,
            switch_reason: None,
            sink_idle: true,
            next_link_id: 1,
        };
        runner.run(shutdown).await;
    }
}

/// One pool connection (connect + session) running in its own task.
struct Link {
    id: u64,
    pool: usize,
    probe: bool,
    commands: Option<mpsc::Sender<SessionCommand>>,
    events: mpsc::Receiver<SessionEvent>,
    task: JoinHandle<()>,
    authorized_at: Option<Instant>,
    mining_since: Option<Instant>,
    last_job_at: Option<Instant>,
    /// Failures forgotten when this connection got its first job (put back if it dies young).
    prior_failures: u32,
    /// Pool job id and extranonce2 counter of the last job, continued by re-issues.
    current_job: Option<(String, Arc<AtomicU64>)>,
    /// Submits sent to the session and not yet answered.
    in_flight: u64,
}

impl Link {
    /// Closes the session gracefully (it flushes and closes its stream), or aborts it.
    async fn close(mut self) {
        self.commands = None;
        if tokio::time::timeout(CLOSE_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Wake {
    Shutdown,
    Active(Option<SessionEvent>),
    Probe(Option<SessionEvent>),
    Share(Option<Share>),
    Timer,
}

/// The client task's state.
struct Runner {
    pools: Vec<PoolEntry>,
    algorithm: Algorithm,
    timeouts: Timeouts,
    sink: Arc<dyn JobSink>,
    shares: mpsc::Receiver<Share>,
    shares_open: bool,
    connector: Arc<dyn Connector>,
    shared: Arc<Shared>,
    failover: Failover,
    book: JobBook,
    active: Option<Link>,
    probe: Option<Link>,
    /// The pool mined on last (for the `from` of the next switch).
    mined_on: Option<usize>,
    /// Why the last pool was left, for the next switch event.
    switch_reason: Option<SwitchReason>,
    sink_idle: bool,
    next_link_id: u64,
}

async fn next_event(link: &mut Option<Link>) -> Option<SessionEvent> {
    match link {
        Some(link) => link.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            self.ensure_active(now);
            self.ensure_probe(now);
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                biased;
                () = &mut shutdown => Wake::Shutdown,
                event = next_event(&mut self.active) => Wake::Active(event),
                event = next_event(&mut self.probe) => Wake::Probe(event),
                share = self.shares.recv(), if self.shares_open => Wake::Share(share),
                () = sleep_until_opt(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Active(event) => {
                    let event = event.unwrap_or_else(|| {
                        SessionEvent::Closed(SessionEnd::Io("session task ended".into()))
                    });
                    self.on_active_event(event);
                }
                Wake::Probe(event) => {
                    let event = event.unwrap_or_else(|| {
                        SessionEvent::Closed(SessionEnd::Io("session task ended".into()))
                    });
                    self.on_probe_event(event);
                }
                Wake::Share(Some(share)) => self.on_share(&share),
                Wake::Share(None) => {
                    tracing::warn!("The engine's share channel closed; no more shares");
                    self.shares_open = false;
                }
                Wake::Timer => self.on_timer(Instant::now()),
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        tracing::info!("Stratum client stopping");
        let links: Vec<Link> = self
            .active
            .take()
            .into_iter()
            .chain(self.probe.take())
            .collect();
        for link in &links {
            self.account_in_flight(link);
        }
        for link in links {
            link.close().await;
        }
        self.idle_sink("shutdown");
        {
            let mut status = self.shared.status();
            status.current = None;
            for p in &mut status.pools {
                p.state = PoolState::Standby;
                p.probing = false;
            }
        }
        self.shared.emit(ClientEvent::Stopped);
    }

    fn pool_ref(&self, pool: usize) -> PoolRef {
        self.pools[pool].pool_ref(pool)
    }

    fn set_state(&self, pool: usize, state: PoolState, probing: bool) {
        let mut status = self.shared.status();
        let s = &mut status.pools[pool];
        s.state = state;
        s.probing = probing;
    }

    fn idle_sink(&mut self, reason: &str) {
        if !self.sink_idle {
            self.sink.idle();
            self.sink_idle = true;
            tracing::info!(reason, "Mining idle");
            self.shared.emit(ClientEvent::Idle {
                reason: reason.to_string(),
            });
        }
    }

    /// Starts a connection to `pool` in its own task.
    fn start_link(&mut self, pool: usize, probe: bool) -> Link {
        let id = self.next_link_id;
        self.next_link_id += 1;
        let entry = &mut self.pools[pool];
        let mut endpoint = entry.endpoint.clone();
        if let Some(port) = entry.reconnect_port.take() {
            endpoint.url.port = port;
        }
        let options = &entry.config.options;
        let session = SessionConfig {
            user: entry.config.user.clone(),
            password: entry.config.password.clone(),
            algorithm: self.algorithm,
            version_rolling: options.version_rolling,
            suggest_difficulty: options.suggest_difficulty,
            extranonce_subscribe: options.extranonce_subscribe,
            resume_session_id: entry.resume_id.clone(),
            response_timeout: self.timeouts.response,
        };
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, events) = mpsc::channel(SESSION_EVENT_QUEUE);
        let span = tracing::info_span!("pool", url = %endpoint.url, link = id);
        let task = tokio::spawn(
            link_task(
                Arc::clone(&self.connector),
                endpoint,
                self.timeouts.connect,
                session,
                command_rx,
                event_tx,
                Arc::clone(&entry.counters),
            )
            .instrument(span),
        );
        tracing::info!(pool = %entry.config.url, probe, "Connecting");
        self.shared.emit(ClientEvent::Connecting {
            pool: self.pool_ref(pool),
            probe,
        });
        self.set_state(pool, PoolState::Connecting, probe);
        Link {
            id,
            pool,
            probe,
            commands: Some(commands),
            events,
            task,
            authorized_at: None,
            mining_since: None,
            last_job_at: None,
            prior_failures: 0,
            current_job: None,
            in_flight: 0,
        }
    }

    /// Without an active connection: the probe takes over, or the best pool due is tried.
    fn ensure_active(&mut self, now: Instant) {
        if self.active.is_some() {
            return;
        }
        if let Some(mut probe) = self.probe.take() {
            // Mid-handshake with a better pool anyway: it becomes the active connection.
            probe.probe = false;
            let mut status = self.shared.status();
            status.pools[probe.pool].probing = false;
            status.current = Some(probe.pool);
            drop(status);
            self.active = Some(probe);
            return;
        }
        match self.failover.pick(now, None) {
            Some(pool) => {
                let link = self.start_link(pool, false);
                self.shared.status().current = Some(pool);
                self.active = Some(link);
            }
            None => {
                self.shared.status().current = None;
                self.idle_sink("no pool available");
            }
        }
    }

    /// While mining below the best pool: probe a better one whose backoff is over.
    fn ensure_probe(&mut self, now: Instant) {
        let Some(active) = &self.active else { return };
        if self.probe.is_some() || active.mining_since.is_none() {
            return;
        }
        if let Some(pool) = self.failover.probe_candidate(active.pool, now) {
            let link = self.start_link(pool, true);
            self.probe = Some(link);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::with_capacity(4);
        match &self.active {
            None => deadlines.extend(self.failover.next_ready(None)),
            Some(link) => {
                deadlines.extend(self.job_deadline(link));
                if link.mining_since.is_some() && self.probe.is_none() {
                    deadlines.extend(self.failover.next_probe_at(link.pool));
                }
            }
        }
        if let Some(probe) = &self.probe {
            deadlines.extend(self.job_deadline(probe));
        }
        deadlines.into_iter().min()
    }

    /// When a connection is due a job: the first after authorization, or the next.
    fn job_deadline(&self, link: &Link) -> Option<Instant> {
        match (link.last_job_at, link.authorized_at) {
            (Some(last), _) => Some(last + self.timeouts.no_job),
            (None, Some(auth)) => Some(auth + self.timeouts.first_job),
            (None, None) => None,
        }
    }

    fn on_timer(&mut self, now: Instant) {
        let overdue =
            |link: &Link, runner: &Runner| runner.job_deadline(link).is_some_and(|d| d <= now);
        if let Some(link) = &self.active {
            if overdue(link, self) {
                let reason = if link.last_job_at.is_some() {
                    FailReason::NoJob(self.timeouts.no_job)
                } else {
                    FailReason::NoFirstJob(self.timeouts.first_job)
                };
                self.fail_active(reason);
            }
        }
        if let Some(link) = &self.probe {
            if overdue(link, self) {
                self.fail_probe(FailReason::NoFirstJob(self.timeouts.first_job));
            }
        }
    }

    fn on_active_event(&mut self, event: SessionEvent) {
        let Some(link) = &mut self.active else { return };
        let pool = link.pool;
        match event {
            SessionEvent::Job(job) => self.on_job(job),
            SessionEvent::Closed(end) => {
                self.fail_active(FailReason::from(end));
            }
            SessionEvent::ShareAnswered {
                job_id,
                answer,
                latency,
                difficulty,
            } => {
                link.in_flight = link.in_flight.saturating_sub(1);
                let outcome = ShareOutcome::from_answer(answer);
                self.record_share(pool, job_id, outcome, difficulty, Some(latency));
            }
            SessionEvent::ShareUnanswered { job_id, difficulty } => {
                link.in_flight = link.in_flight.saturating_sub(1);
                self.record_share(pool, job_id, ShareOutcome::Unanswered, difficulty, None);
            }
            SessionEvent::ShareNotSent { job_id } => {
                link.in_flight = link.in_flight.saturating_sub(1);
                self.record_share(
                    pool,
                    job_id,
                    ShareOutcome::Dropped,
                    ShareDifficulty::default(),
                    None,
                );
            }
            other => self.on_common_event(pool, false, other),
        }
    }

    fn on_probe_event(&mut self, event: SessionEvent) {
        let Some(link) = &self.probe else { return };
        let pool = link.pool;
        match event {
            SessionEvent::Job(job) => {
                // The better pool works: it takes over, starting with this job.
                tracing::info!(pool = %self.pools[pool].config.url, "Higher-priority pool is healthy again; switching back");
                if let Some(old) = self.active.take() {
                    self.leave(old, PoolState::Standby);
                }
                let mut link = self.probe.take().expect("BUG: probe checked above");
                link.probe = false;
                self.shared.status().current = Some(pool);
                self.set_state(pool, PoolState::Authorized, false);
                self.active = Some(link);
                self.switch_reason = Some(SwitchReason::Recovered);
                self.on_job(job);
            }
            SessionEvent::Closed(end) => self.fail_probe(FailReason::from(end)),
            // A probe submits nothing.
            SessionEvent::ShareAnswered { .. }
            | SessionEvent::ShareUnanswered { .. }
            | SessionEvent::ShareNotSent { .. } => {}
            other => self.on_common_event(pool, true, other),
        }
    }

    /// Events handled alike for the active connection and a probe.
    fn on_common_event(&mut self, pool: usize, probe: bool, event: SessionEvent) {
        let link = if probe {
            self.probe.as_mut()
        } else {
            self.active.as_mut()
        };
        match event {
            SessionEvent::Connected => {}
            SessionEvent::Subscribed { session_id, .. } => {
                self.pools[pool].resume_id = session_id;
                self.set_state(pool, PoolState::Subscribed, probe);
            }
            SessionEvent::Authorized => {
                if let Some(link) = link {
                    link.authorized_at = Some(Instant::now());
                }
                self.set_state(pool, PoolState::Authorized, probe);
            }
            SessionEvent::Difficulty(d) => self.shared.status().pools[pool].difficulty = Some(d),
            SessionEvent::VersionMask(m) => {
                self.shared.status().pools[pool].version_mask = Some(m);
            }
            SessionEvent::Message(text) => self.shared.emit(ClientEvent::PoolMessage {
                pool: self.pool_ref(pool),
                text,
            }),
            // Handled by the callers.
            SessionEvent::Job(_)
            | SessionEvent::Closed(_)
            | SessionEvent::ShareAnswered { .. }
            | SessionEvent::ShareUnanswered { .. }
            | SessionEvent::ShareNotSent { .. } => {}
        }
    }

    /// A job on the active connection: into the book and onto the devices.
    fn on_job(&mut self, job: JobEvent) {
        let Some(link) = &mut self.active else { return };
        let pool = link.pool;
        let now = Instant::now();
        link.last_job_at = Some(now);
        let first = link.mining_since.is_none();
        if first {
            link.mining_since = Some(now);
            link.prior_failures = self.failover.healthy(pool);
        }
        let job_id = job.template.notify.job_id.clone();
        let counter = match &link.current_job {
            Some((id, counter)) if job.reissue && *id == job_id => Arc::clone(counter),
            _ => Arc::new(AtomicU64::new(0)),
        };
        link.current_job = Some((job_id.clone(), Arc::clone(&counter)));
        let link_id = link.id;
        let key = self
            .book
            .insert(link_id, pool, Arc::clone(&job.template), job.clean);
        self.sink
            .set_source(Box::new(JobSource::new(job.template, key, counter)));
        self.sink_idle = false;
        let latency = job.received_at.elapsed();
        tracing::debug!(
            job_id,
            clean = job.clean,
            latency_us = latency.as_micros() as u64,
            "Job on the devices"
        );
        let from = self.mined_on.replace(pool);
        {
            let mut status = self.shared.status();
            status.job_latency.record(latency);
            if job.clean {
                status.clean_job_latency.record(latency);
            }
            let s = &mut status.pools[pool];
            s.last_job_at = Some(now);
            s.jobs += 1;
            s.state = PoolState::Mining;
            s.probing = false;
            s.failures = 0;
            s.retry_at = None;
            if first {
                status.switches += 1;
            }
        }
        if first {
            let reason = self.switch_reason.take().unwrap_or(SwitchReason::Start);
            let to = self.pool_ref(pool);
            tracing::info!(pool = %to, %reason, "Mining");
            self.shared.emit(ClientEvent::Switched {
                from: from.map(|p| self.pool_ref(p)),
                to,
                reason,
            });
        }
    }

    /// Counts the submits of a connection that is going away as unanswered.
    fn account_in_flight(&self, link: &Link) {
        if link.in_flight > 0 {
            let mut status = self.shared.status();
            let shares = &mut status.pools[link.pool].shares;
            for _ in 0..link.in_flight {
                shares.record(&ShareOutcome::Unanswered, ShareDifficulty::default(), None);
            }
        }
    }

    /// Drops a connection we no longer want (a better pool took over).
    fn leave(&mut self, link: Link, state: PoolState) {
        self.account_in_flight(&link);
        self.set_state(link.pool, state, false);
        self.shared.status().pools[link.pool].last_job_at = None;
        drop(link);
    }

    /// The active connection failed or ended: account, back off, idle the devices.
    fn fail_active(&mut self, reason: FailReason) {
        let Some(link) = self.active.take() else {
            return;
        };
        let pool = link.pool;
        let now = Instant::now();
        // A connection that mined a while and then dropped is retried at once (a pool restart
        // should not send the farm to the backup); one that died young keeps its failures.
        let lasted = link
            .mining_since
            .is_some_and(|since| now.duration_since(since) >= MIN_HEALTHY);
        if link.mining_since.is_some() && !lasted {
            self.failover.restore_failures(pool, link.prior_failures);
        }
        let retry_in = match &reason {
            FailReason::Session(SessionEnd::Reconnect { host, port, wait }) => {
                let configured = &self.pools[pool].config.url.host;
                match host {
                    Some(h) if !h.eq_ignore_ascii_case(configured) => {
                        // Following a pool to another host would let anyone on the path steer
                        // the farm; reconnect to the configured address instead.
                        tracing::warn!(requested = %h, "Ignoring client.reconnect to another host");
                    }
                    _ => self.pools[pool].reconnect_port = *port,
                }
                let wait = (*wait).min(MAX_RECONNECT_WAIT);
                self.failover.retry_at(pool, now + wait);
                wait
            }
            FailReason::Session(SessionEnd::Eof | SessionEnd::Io(_)) if lasted => {
                self.failover.retry_at(pool, now);
                Duration::ZERO
            }
            _ => self.failover.failed(pool, now),
        };
        self.account_in_flight(&link);
        drop(link);
        let pool_ref = self.pool_ref(pool);
        tracing::warn!(pool = %pool_ref, %reason, retry_in_ms = retry_in.as_millis() as u64, "Pool connection failed");
        {
            let mut status = self.shared.status();
            self.mark_backoff(&mut status.pools[pool], pool, now + retry_in, &reason);
            status.pools[pool].last_job_at = None;
            status.current = None;
        }
        self.shared.emit(ClientEvent::PoolFailed {
            pool: pool_ref,
            reason: reason.clone(),
            retry_in,
            probe: false,
        });
        self.switch_reason = Some(SwitchReason::Failover(reason.clone()));
        // Its jobs cannot be submitted anywhere: stop hashing them.
        self.idle_sink(&reason.to_string());
    }

    /// Shows a pool as waiting out its backoff after a failure.
    fn mark_backoff(
        &self,
        s: &mut PoolStatus,
        pool: usize,
        retry_at: Instant,
        reason: &FailReason,
    ) {
        s.state = PoolState::Backoff;
        s.probing = false;
        s.failures = self.failover.failures(pool);
        s.retry_at = Some(retry_at);
        s.last_error = Some(reason.to_string());
    }

    fn fail_probe(&mut self, reason: FailReason) {
        let Some(link) = self.probe.take() else {
            return;
        };
        let pool = link.pool;
        let now = Instant::now();
        drop(link);
        let retry_in = self.failover.failed(pool, now);
        tracing::info!(pool = %self.pools[pool].config.url, %reason, retry_in_ms = retry_in.as_millis() as u64, "Probe of a higher-priority pool failed");
        {
            let mut status = self.shared.status();
            self.mark_backoff(&mut status.pools[pool], pool, now + retry_in, &reason);
        }
        self.shared.emit(ClientEvent::PoolFailed {
            pool: self.pool_ref(pool),
            reason,
            retry_in,
            probe: true,
        });
    }

    /// A share from the engine: submitted on its job's connection, or counted and dropped.
    fn on_share(&mut self, share: &Share) {
        let key = &share.work.job_id;
        let Some(entry) = self.book.get(key) else {
            self.shared.status().shares_unknown_job += 1;
            tracing::warn!(job = %key, "Share for a job no longer known; dropped");
            return;
        };
        let pool = entry.pool;
        let job_id = entry.template.notify.job_id.clone();
        // The pool credits the difficulty of the job's target, not the luck of this hash.
        let difficulty = ShareDifficulty {
            pool: entry
                .template
                .target
                .to_difficulty(entry.template.algorithm),
            hash: share.difficulty(),
        };
        let link = self
            .active
            .as_mut()
            .filter(|l| l.id == entry.link && l.mining_since.is_some());
        let Some(link) = link else {
            tracing::info!(job_id, "Share for a pool connection that is gone; dropped");
            self.record_share(pool, job_id, ShareOutcome::Dropped, difficulty, None);
            return;
        };
        let options = &self.pools[pool].config.options;
        if entry.stale && !options.submit_stale {
            self.record_share(
                pool,
                job_id,
                ShareOutcome::Stale(StaleKind::Replaced),
                difficulty,
                None,
            );
            return;
        }
        let submit = entry.template.submit(&self.pools[pool].config.user, share);
        let sent = link.commands.as_ref().is_some_and(|c| {
            c.try_send(SessionCommand::Submit { submit, difficulty })
                .is_ok()
        });
        if sent {
            link.in_flight += 1;
            self.shared.status().pools[pool].shares.record_submitted();
        } else {
            tracing::warn!(job_id, "Submit queue full; share dropped");
            self.record_share(pool, job_id, ShareOutcome::Dropped, difficulty, None);
        }
    }

    fn record_share(
        &mut self,
        pool: usize,
        job_id: String,
        outcome: ShareOutcome,
        difficulty: ShareDifficulty,
        latency: Option<Duration>,
    ) {
        let pool_difficulty = difficulty.pool;
        // Accepted shares are routine (debug); the others are what operators look for.
        match &outcome {
            ShareOutcome::Accepted => {
                tracing::debug!(job_id, difficulty = pool_difficulty, "Share accepted");
            }
            ShareOutcome::Rejected(error) => {
                tracing::warn!(job_id, difficulty = pool_difficulty, %error, "Share rejected");
            }
            other => {
                tracing::info!(job_id, difficulty = pool_difficulty, outcome = %other, "Share not accepted");
            }
        }
        self.shared.status().pools[pool]
            .shares
            .record(&outcome, difficulty, latency);
        self.shared.emit(ClientEvent::Share {
            pool: self.pool_ref(pool),
            job_id,
            outcome,
            difficulty: difficulty.hash,
        });
    }
}

/// Connects, then runs the session; reports through `events` like the session itself.
async fn link_task(
    connector: Arc<dyn Connector>,
    endpoint: Endpoint,
    limit: Duration,
    config: SessionConfig,
    commands: mpsc::Receiver<SessionCommand>,
    events: mpsc::Sender<SessionEvent>,
    counters: Arc<ProtocolCounters>,
) {
    let stream = match connect_timeout(&*connector, &endpoint, limit).await {
        Ok(stream) => stream,
        Err(error) => {
            let _ = events
                .send(SessionEvent::Closed(SessionEnd::ConnectFailed(
                    error.to_string(),
                )))
                .await;
            return;
        }
    };
    if events.send(SessionEvent::Connected).await.is_err() {
        return;
    }
    let end = run_session(stream, config, commands, events.clone(), counters).await;
    let _ = events.send(SessionEvent::Closed(end)).await;
}

#[cfg(test)]
mod tests;
