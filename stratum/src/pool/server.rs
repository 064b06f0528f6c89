//! The listening side: binds, accepts (bounded), makes jobs on a timer, and gives tests and the
//! `pool` command a handle to steer and stop the pool.
//!
//! Shape after mini-redis `server.rs`: one accept task owns the connection tasks (a `JoinSet`),
//! a `Semaphore` bounds them, and a `watch` channel carries shutdown to every task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::config::{PoolConfig, PoolError};
use super::session;
use super::stats::{PoolStats, StatsBook};
use super::template::{BlockTemplate, Job};
use crate::message::Notify;

/// Control messages from the handle to every session.
#[derive(Clone, Debug)]
pub(crate) enum ControlEvent {
    /// Send `client.reconnect`.
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait_secs: u64,
    },
    /// Send `client.show_message`.
    ShowMessage(String),
    /// Set every connection's difficulty.
    SetDifficulty(f64),
    /// Give connections that asked (`mining.extranonce.subscribe`) a new extranonce1.
    RotateExtranonce,
    /// Close every connection.
    DisconnectAll,
}

/// Capacity of the control channel; a session that falls further behind skips events (they
/// are test and operator actions, not data).
const CONTROL_CAPACITY: usize = 64;

/// How long shutdown waits for sessions to finish before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Limit on a TLS handshake, so a silent peer cannot hold a connection slot.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes jobs: the block being worked on and the counters.
#[derive(Debug)]
struct JobMaker {
    block: Arc<BlockTemplate>,
    block_seq: u64,
    next_job_seq: u64,
    last_ntime: u32,
}

/// What every task of one pool shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    jobs: Mutex<JobMaker>,
    /// The newest job; sessions watch it.
    pub(crate) current: watch::Sender<Arc<Job>>,
    pub(crate) events: broadcast::Sender<ControlEvent>,
    pub(crate) stats: StatsBook,
    next_extranonce1: AtomicU32,
}

/// The pool's clock in Unix seconds (u32, as headers carry it).
pub(crate) fn now_unix() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

impl Shared {
    fn new(config: PoolConfig) -> Self {
        let block = Arc::new(BlockTemplate::synthetic(config.start_height, config.nbits));
        let ntime = now_unix();
        let first = Arc::new(Job::new(
            1,
            1,
            block.clone(),
            config.extranonce2_size,
            ntime,
            true,
        ));
        let stats = StatsBook::default();
        stats.update(|s| {
            s.jobs = 1;
            s.height = block.height;
            s.current_job_id = first.id.clone();
        });
        let (current, _) = watch::channel(first);
        let (events, _) = broadcast::channel(CONTROL_CAPACITY);
        Self {
            config,
            jobs: Mutex::new(JobMaker {
                block,
                block_seq: 1,
                next_job_seq: 2,
                last_ntime: ntime,
            }),
            current,
            events,
            stats,
            next_extranonce1: AtomicU32::new(1),
        }
    }

    /// Makes the next job (on a new block when asked) and publishes it to every session.
    pub(crate) fn make_job(&self, new_block: bool) -> Arc<Job> {
        let mut maker = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if new_block {
            let height = maker.block.height + 1;
            maker.block = Arc::new(BlockTemplate::synthetic(height, self.config.nbits));
            maker.block_seq += 1;
        }
        // ntime never goes backwards between jobs, even if the clock does.
        let ntime = now_unix().max(maker.last_ntime);
        maker.last_ntime = ntime;
        let seq = maker.next_job_seq;
        maker.next_job_seq += 1;
        let job = Arc::new(Job::new(
            seq,
            maker.block_seq,
            maker.block.clone(),
            self.config.extranonce2_size,
            ntime,
            new_block,
        ));
        // Published under the lock so sessions see jobs in order.
        self.current.send_replace(job.clone());
        drop(maker);
        self.stats.update(|s| {
            s.jobs += 1;
            s.height = job.block.height;
            s.current_job_id = job.id.clone();
        });
        debug!(job = %job.id, height = job.block.height, new_block, "New job");
        job
    }

    /// The block every valid share must be for.
    pub(crate) fn current_block_seq(&self) -> u64 {
        self.current.borrow().block_seq
    }

    /// A fresh extranonce1, unique for this pool's life (until 2^32 connections).
    pub(crate) fn allocate_extranonce1(&self) -> [u8; 4] {
        self.next_extranonce1
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes()
    }
}

/// The test pool.
pub struct Pool;

impl Pool {
    /// Binds `config.listen` and starts serving; must be called inside a tokio runtime.
    pub async fn bind(config: PoolConfig) -> Result<PoolHandle, PoolError> {
        config.validate()?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| PoolError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        Self::serve(config, listener)
    }

    /// Serves on a listener the caller bound (`config.listen` is ignored); must be called inside
    /// a tokio runtime.
    pub fn serve(config: PoolConfig, listener: TcpListener) -> Result<PoolHandle, PoolError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(|source| PoolError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let shared = Arc::new(Shared::new(config));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            shutdown_rx.clone(),
        ))];
        if let Some(interval) = shared.config.job_interval {
            tasks.push(tokio::spawn(job_timer(
                shared.clone(),
                interval,
                shutdown_rx,
            )));
        }
        info!(
            addr = %local_addr,
            algorithm = %shared.config.algorithm,
            difficulty = shared.config.difficulty.value(),
            tls = shared.config.tls.is_some(),
            "Test pool listening"
        );
        Ok(PoolHandle {
            shared,
            local_addr,
            shutdown,
            tasks,
        })
    }
}

/// A running pool. Dropping it stops the pool too (without waiting); [`PoolHandle::shutdown`]
/// waits until every connection is closed.
#[derive(Debug)]
pub struct PoolHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl PoolHandle {
    /// The address the pool listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `stratum+tcp://ip:port`, or `stratum+ssl://…` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "stratum+ssl"
        } else {
            "stratum+tcp"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The settings the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats.snapshot()
    }

    /// Waits until `pred` holds for the counters, up to `timeout`: `Ok` with the snapshot that
    /// satisfied it, or `Err` with the last one (for the test's failure message).
    pub async fn wait_for_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&PoolStats) -> bool,
    ) -> Result<PoolStats, PoolStats> {
        self.shared.stats.wait_for(timeout, pred).await
    }

    /// The newest job as sent (its `clean_jobs` is true for a block's first job).
    pub fn current_job(&self) -> Notify {
        self.shared.current.borrow().notify.clone()
    }

    /// A new job on the same block (`clean_jobs=false`); earlier jobs stay valid. Returns its id.
    pub fn new_job(&self) -> String {
        self.shared.make_job(false).id.clone()
    }

    /// A new block: the next height, a new previous hash, `clean_jobs=true`; every earlier job is
    /// stale from now on. Returns the new job's id.
    pub fn new_block(&self) -> String {
        self.shared.make_job(true).id.clone()
    }

    /// Sends every connection `client.reconnect` (host/port `None` means "the same").
    pub fn send_reconnect(&self, host: Option<String>, port: Option<u16>, wait_secs: u64) {
        self.control(ControlEvent::Reconnect {
            host,
            port,
            wait_secs,
        });
    }

    /// Sends every connection `client.show_message`.
    pub fn show_message(&self, text: impl Into<String>) {
        self.control(ControlEvent::ShowMessage(text.into()));
    }

    /// Sets every connection's share difficulty now (vardiff continues from there).
    pub fn set_difficulty(&self, difficulty: rigfleet_engine::Difficulty) {
        self.control(ControlEvent::SetDifficulty(difficulty.value()));
    }

    /// Gives every connection that sent `mining.extranonce.subscribe` a new extranonce1
    /// (`mining.set_extranonce`) followed by a new job with `clean_jobs=true`; their earlier
    /// jobs are stale. Other connections just get the new job (`clean_jobs=false`).
    pub fn rotate_extranonce(&self) {
        // A new job id, so a share made on the old extranonce1 is answered "stale" rather than
        // checked against the new one.
        self.shared.make_job(false);
        self.control(ControlEvent::RotateExtranonce);
    }

    /// Closes every open connection (the listener stays open).
    pub fn disconnect_all(&self) {
        self.control(ControlEvent::DisconnectAll);
    }

    fn control(&self, event: ControlEvent) {
        // No receivers just means no connections.
        let _ = self.shared.events.send(event);
    }

    /// Stops listening, closes every connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                warn!(error = %e, "Pool task ended abnormally");
            }
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Makes a new job every `interval` until shutdown.
async fn job_timer(shared: Arc<Shared>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {
                shared.make_job(false);
            }
        }
    }
}

/// Accepts connections until shutdown, then waits for their sessions.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let tls = shared
        .config
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let mut sessions = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "Accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    shared.stats.update(|s| s.connections_refused += 1);
                    debug!(%peer, "Connection refused: at the connection limit");
                    drop(stream);
                    continue;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                sessions.spawn(async move {
                    let _permit = permit;
                    connection(stream, peer, shared, tls, shutdown).await;
                });
            }
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = done {
                    warn!(error = %e, "Session task ended abnormally");
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        sessions.abort_all();
    }
}

/// Counts the connection while it lives (also when its task is aborted).
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .stats
            .update(|s| s.connections = s.connections.saturating_sub(1));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    shared.stats.update(|s| {
        s.connections += 1;
        s.connections_total += 1;
    });
    let _guard = ConnectionGuard(shared.clone());
    // Stratum lines are small and latency matters (a share answer, a clean job).
    let _ = stream.set_nodelay(true);
    match tls {
        None => session::run(stream, peer, shared, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => session::run(tls_stream, peer, shared, shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}
