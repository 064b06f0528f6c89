//! What the client tells the outside: events (every pool switch with its reason, every share's
//! fate) and snapshots of every pool's state for telemetry, behind a cloneable
//! [`ClientHandle`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::session::{ProtocolCounters, SessionEnd};
use crate::shares::{LatencyStats, ShareOutcome, ShareStats};

/// A pool named in an event: its index in the list and its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    /// Index in [`ClientConfig::pools`].
    pub index: usize,
    /// Its URL.
    pub url: String,
}

impl fmt::Display for PoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.index, self.url)
    }
}

/// Why a pool connection failed or was left.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FailReason {
    /// TCP or TLS could not be established.
    Connect(String),
    /// The session ended: refused, closed, broken, or `client.reconnect`.
    Session(SessionEnd),
    /// Authorized, but no first job in time.
    NoFirstJob(Duration),
    /// No new job in time.
    NoJob(Duration),
}

impl From<SessionEnd> for FailReason {
    fn from(end: SessionEnd) -> Self {
        match end {
            SessionEnd::ConnectFailed(e) => FailReason::Connect(e),
            other => FailReason::Session(other),
        }
    }
}

impl FailReason {
    /// Whether the pool refused our credentials.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, FailReason::Session(end) if end.is_auth_failure())
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Connect(e) => write!(f, "connect failed: {e}"),
            FailReason::Session(end) => end.fmt(f),
            FailReason::NoFirstJob(d) => {
                write!(f, "no job within {}s of authorization", d.as_secs())
            }
            FailReason::NoJob(d) => write!(f, "no new job for {}s", d.as_secs()),
        }
    }
}

/// Why mining moved to a pool.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SwitchReason {
    /// The first pool since start (or since everything was down).
    Start,
    /// The previous pool failed.
    Failover(FailReason),
    /// A better pool is healthy again.
    Recovered,
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchReason::Start => f.write_str("start"),
            SwitchReason::Failover(r) => write!(f, "failover: {r}"),
            SwitchReason::Recovered => f.write_str("a higher-priority pool is healthy again"),
        }
    }
}

/// Something operators and telemetry want to know.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connecting to a pool, as the active connection or as a probe of a better pool.
    Connecting {
        /// The pool.
        pool: PoolRef,
        /// A probe (mining goes on elsewhere meanwhile).
        probe: bool,
    },
    /// A pool connection failed or ended; the pool is tried again after `retry_in`.
    PoolFailed {
        /// The pool.
        pool: PoolRef,
        /// Why.
        reason: FailReason,
        /// Backoff before the next try.
        retry_in: Duration,
        /// It was a probe.
        probe: bool,
    },
    /// Mining moved to `to` (from `from`; the same pool after a reconnect).
    Switched {
        /// The pool mined before, if any.
        from: Option<PoolRef>,
        /// The pool mined now.
        to: PoolRef,
        /// Why.
        reason: SwitchReason,
    },
    /// The engine was idled: no pool has work for it.
    Idle {
        /// Why.
        reason: String,
    },
    /// What became of a share.
    Share {
        /// The pool its job came from.
        pool: PoolRef,
        /// The pool's job id.
        job_id: String,
        /// Accepted, rejected, stale…
        outcome: ShareOutcome,
        /// The share's own difficulty.
        difficulty: f64,
    },
    /// `client.show_message` text from a pool.
    PoolMessage {
        /// The pool.
        pool: PoolRef,
        /// The text (at most 512 characters).
        text: String,
    },
    /// The client stopped (shutdown).
    Stopped,
}

/// Where a pool connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolState {
    /// Not connected and not waiting: a standby pool.
    Standby,
    /// Opening the connection or waiting for the subscription.
    Connecting,
    /// Subscribed, not yet authorized.
    Subscribed,
    /// Authorized, no job yet.
    Authorized,
    /// Jobs are coming.
    Mining,
    /// Failed; waiting for the next try.
    Backoff,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolState::Standby => "standby",
            PoolState::Connecting => "connecting",
            PoolState::Subscribed => "subscribed",
            PoolState::Authorized => "authorized",
            PoolState::Mining => "mining",
            PoolState::Backoff => "backoff",
        })
    }
}

/// One pool as telemetry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSnapshot {
    /// Its URL.
    pub url: String,
    /// Worker name.
    pub user: String,
    /// Its priority.
    pub priority: u32,
    /// Connection state.
    pub state: PoolState,
    /// The connection is a probe (mining happens on another pool).
    pub probing: bool,
    /// Latest `mining.set_difficulty` (applies to the next job).
    pub difficulty: Option<f64>,
    /// Version-rolling mask in use on the connection.
    pub version_mask: Option<u32>,
    /// Seconds since the last job on the current connection.
    pub last_job_secs_ago: Option<f64>,
    /// Jobs received over every connection.
    pub jobs: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// Seconds until the next try, while in backoff.
    pub retry_in_secs: Option<f64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Share counters.
    pub shares: ShareStats,
    /// Lines from this pool that were malformed.
    pub malformed_lines: u64,
    /// Messages from this pool that were unexpected.
    pub unexpected_messages: u64,
}

/// The client as telemetry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSnapshot {
    /// Index of the pool of the active connection.
    pub current: Option<usize>,
    /// Every pool, in list order.
    pub pools: Vec<PoolSnapshot>,
    /// From reading a `mining.notify` line to [`JobSink::set_source`] returning, every job.
    pub job_latency: LatencyStats,
    /// The same for `clean_jobs` jobs only (the ones that must reach devices fast).
    pub clean_job_latency: LatencyStats,
    /// Times mining moved to a pool (reconnects to the same pool included).
    pub switches: u64,
    /// Shares whose job the client no longer knew (dropped).
    pub shares_unknown_job: u64,
}

impl ClientSnapshot {
    /// The pool of the active connection.
    pub fn current_pool(&self) -> Option<&PoolSnapshot> {
        self.current.and_then(|i| self.pools.get(i))
    }
}

/// Live status behind the snapshot; instants are turned into ages when a snapshot is taken.
#[derive(Clone, Debug)]
pub(super) struct PoolStatus {
    pub(super) state: PoolState,
    pub(super) probing: bool,
    pub(super) difficulty: Option<f64>,
    pub(super) version_mask: Option<u32>,
    pub(super) last_job_at: Option<Instant>,
    pub(super) jobs: u64,
    pub(super) failures: u32,
    pub(super) retry_at: Option<Instant>,
    pub(super) last_error: Option<String>,
    pub(super) shares: ShareStats,
}

#[derive(Debug)]
pub(super) struct Status {
    pub(super) current: Option<usize>,
    pub(super) pools: Vec<PoolStatus>,
    pub(super) job_latency: LatencyStats,
    pub(super) clean_job_latency: LatencyStats,
    pub(super) switches: u64,
    pub(super) shares_unknown_job: u64,
}

/// State shared by the client task and its handles.
pub(super) struct Shared {
    pub(super) status: Mutex<Status>,
    pub(super) events: broadcast::Sender<ClientEvent>,
    /// Static facts per pool: url, user, priority, protocol counters.
    pub(super) pools: Vec<(String, String, u32, Arc<ProtocolCounters>)>,
}

impl Shared {
    /// Every pool on standby; `pools` holds url, user, priority and protocol counters.
    pub(super) fn new(
        pools: Vec<(String, String, u32, Arc<ProtocolCounters>)>,
        event_capacity: usize,
    ) -> Self {
        let (events, _) = broadcast::channel(event_capacity);
        Self {
            status: Mutex::new(Status {
                current: None,
                pools: vec![
                    PoolStatus {
                        state: PoolState::Standby,
                        probing: false,
                        difficulty: None,
                        version_mask: None,
                        last_job_at: None,
                        jobs: 0,
                        failures: 0,
                        retry_at: None,
                        last_error: None,
                        shares: ShareStats::default(),
                    };
                    pools.len()
                ],
                job_latency: LatencyStats::default(),
                clean_job_latency: LatencyStats::default(),
                switches: 0,
                shares_unknown_job: 0,
            }),
            events,
            pools,
        }
    }

    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent enough to matter.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn emit(&self, event: ClientEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// A cloneable view of a running client.
#[derive(Clone)]
pub struct ClientHandle {
    pub(super) shared: Arc<Shared>,
}

impl ClientHandle {
    /// The current state of every pool, share counters and job latencies.
    pub fn snapshot(&self) -> ClientSnapshot {
        let now = Instant::now();
        let status = self.shared.status();
        let pools = status
            .pools
            .iter()
            .zip(&self.shared.pools)
            .map(|(s, (url, user, priority, counters))| PoolSnapshot {
                url: url.clone(),
                user: user.clone(),
                priority: *priority,
                state: s.state,
                probing: s.probing,
                difficulty: s.difficulty,
                version_mask: s.version_mask,
                last_job_secs_ago: s
                    .last_job_at
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                jobs: s.jobs,
                failures: s.failures,
                retry_in_secs: s
                    .retry_at
                    .filter(|_| s.state == PoolState::Backoff)
                    .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                last_error: s.last_error.clone(),
                shares: s.shares.clone(),
                malformed_lines: counters.malformed(),
                unexpected_messages: counters.unexpected(),
            })
            .collect();
        ClientSnapshot {
            current: status.current,
            pools,
            job_latency: status.job_latency,
            clean_job_latency: status.clean_job_latency,
            switches: status.switches,
            shares_unknown_job: status.shares_unknown_job,
        }
    }

    /// Events from now on. A subscriber that falls more than [`super::EVENT_CAPACITY`] behind misses
    /// the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }
}
