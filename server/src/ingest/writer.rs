//! The telemetry writer task.
//!
//! An acknowledgement is a promise: the mark a batch is answered with is the highest seq N of
//! its (rig, stream) such that every seq ≤ N is committed (or was reported dropped by the agent
//! itself). Seqs stored behind a hole are remembered, so the mark jumps over them once the hole
//! is filled, and a resent seq is a duplicate only when it is actually stored. Once a batch of a
//! link fails, the batches that link still has queued are refused too: the agent reconnects and
//! resends everything unacknowledged in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter};
use rigfleet_proto::telemetry::Sample;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::telemetry::{SlotMap, StreamSamples, TimedSample};
use crate::db::{Store, StoreError};

/// Samples whose corrected time is further than this from their arrival are stored at the
/// arrival time and flagged (never refused: an unacknowledged sample would stall its stream).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// How the writer batches.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// A transaction is written once this many samples are queued…
    pub max_batch_samples: usize,
    /// …or this long after the first one arrived.
    pub flush_interval: Duration,
    /// Batches waiting at most; `submit` waits when the queue is full.
    pub queue_capacity: usize,
    /// See [`DEFAULT_MAX_CLOCK_SKEW`].
    pub max_clock_skew: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_samples: 2000,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 512,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

/// What the writer knows of one agent link: once a batch of it failed, its later batches are
/// not committed (they would land behind a hole the agent fills only after reconnecting).
#[derive(Debug, Default)]
pub struct LinkIngest {
    failed: AtomicBool,
}

impl LinkIngest {
    /// A fresh link's state.
    pub fn new() -> Arc<LinkIngest> {
        Arc::new(LinkIngest::default())
    }

    /// Whether a batch of this link failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// Samples of one rig's stream and where to send the outcome.
#[derive(Debug)]
pub struct IngestBatch {
    pub rig_id: i64,
    /// The agent's stream id; empty for agents that predate streams (protocol 1).
    pub stream: String,
    pub samples: Vec<Sample>,
    /// The agent dropped every unacknowledged seq up to this one (its queue overflowed).
    pub dropped_through: Option<u64>,
    /// Server clock minus agent clock, measured at the link's handshake.
    pub clock_offset_ms: i64,
    /// When the frame arrived (server clock).
    pub received_ms: i64,
    /// The link the batch came on.
    pub link: Arc<LinkIngest>,
    /// Answered with the stream's mark (every seq at or below it committed or dropped) once
    /// the transaction holding these samples committed, or the error that kept them out.
    pub done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The writer's instruments; the caller registers them where it wants.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    /// Seconds per batch commit.
    pub commit_seconds: Histogram,
    pub samples_written: IntCounter,
    /// Resent samples skipped (their seq is already stored in the stream).
    pub samples_duplicate: IntCounter,
    /// Transactions committed.
    pub batches: IntCounter,
    /// Transactions that failed.
    pub errors: IntCounter,
    /// Samples stored at their arrival time because the agent's time was implausible.
    pub samples_time_flagged: IntCounter,
    /// Seqs agents reported dropped from their queues (lost before they were sent).
    pub samples_dropped_by_agents: IntCounter,
}

impl WriterMetrics {
    /// Fresh instruments registered nowhere (tests, tools).
    pub fn unregistered() -> WriterMetrics {
        // Constant, valid names: construction cannot fail.
        let counter = |name: &str| IntCounter::new(name, name).expect("valid constant metric name");
        WriterMetrics {
            commit_seconds: Histogram::with_opts(HistogramOpts::new(
                "rigfleet_ingest_commit_seconds",
                "batch commit latency",
            ))
            .expect("valid constant metric name"),
            samples_written: counter("rigfleet_ingest_samples_written_total"),
            samples_duplicate: counter("rigfleet_ingest_samples_duplicate_total"),
            batches: counter("rigfleet_ingest_batches_total"),
            errors: counter("rigfleet_ingest_errors_total"),
            samples_time_flagged: counter("rigfleet_ingest_samples_time_flagged_total"),
            samples_dropped_by_agents: counter("rigfleet_ingest_samples_dropped_by_agents_total"),
        }
    }
}

/// The writer task is gone (shut down).
#[derive(Debug, thiserror::Error)]
#[error("telemetry writer closed")]
pub struct WriterClosed;

enum Msg {
    Batch(IngestBatch),
    Shutdown(oneshot::Sender<()>),
}

/// Submits batches to the writer. Clones share the one writer.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    task: std::sync::Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Batch(b) => write!(f, "Batch(rig {}, {} samples)", b.rig_id, b.samples.len()),
            Msg::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

impl WriterHandle {
    /// Queues a batch; waits while the queue is full (backpressure).
    pub async fn submit(&self, b: IngestBatch) -> Result<(), WriterClosed> {
        self.tx.send(Msg::Batch(b)).await.map_err(|_| WriterClosed)
    }

    /// Writes what was queued before this call, then stops the writer.
    pub async fn shutdown(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// Starts the writer task.
pub fn spawn_writer(store: Store, opts: WriterOptions, metrics: WriterMetrics) -> WriterHandle {
    let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
    let writer = Writer {
        store,
        opts,
        metrics,
        streams: HashMap::new(),
        slots: HashMap::new(),
    };
    let task = tokio::spawn(writer.run(rx));
    WriterHandle {
        tx,
        task: std::sync::Arc::new(tokio::sync::Mutex::new(Some(task))),
    }
}

/// A stream's durable state as the writer knows it.
#[derive(Clone, Debug)]
struct StreamState {
    id: i64,
    /// Every seq at or below it is committed or dropped.
    mark: u64,
    /// Seqs committed above the mark (behind a hole).
    above: BTreeSet<u64>,
}

impl StreamState {
    /// Takes `seq` if it is not stored yet; false for a duplicate.
    fn take(&mut self, seq: u64) -> bool {
        seq > self.mark && self.above.insert(seq)
    }

    /// The agent dropped every unacknowledged seq up to `through`: the mark moves past them.
    /// Returns how many of them were never stored (lost).
    fn drop_through(&mut self, through: u64) -> u64 {
        if through <= self.mark {
            return 0;
        }
        let stored = self.above.range(..=through).count() as u64;
        let lost = (through - self.mark).saturating_sub(stored);
        self.above = self.above.split_off(&(through.saturating_add(1)));
        self.mark = through;
        lost
    }

    /// Moves the mark over seqs stored right above it.
    fn advance(&mut self) {
        while let Some(next) = self.mark.checked_add(1) {
            if !self.above.remove(&next) {
                break;
            }
            self.mark = next;
        }
    }
}

struct Writer {
    store: Store,
    opts: WriterOptions,
    metrics: WriterMetrics,
    /// Per (rig, stream id), loaded lazily.
    streams: HashMap<(i64, String), StreamState>,
    slots: HashMap<i64, SlotMap>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A sample's time on the server's clock: the agent's time corrected by the handshake offset,
/// or the arrival time (flagged) when that is further than `bound` from it.
pub fn server_time(
    agent_ms: i64,
    offset_ms: i64,
    received_ms: i64,
    bound: Duration,
) -> (i64, bool) {
    let corrected = agent_ms.saturating_add(offset_ms);
    let bound = i64::try_from(bound.as_millis()).unwrap_or(i64::MAX);
    if corrected.abs_diff(received_ms) > bound.unsigned_abs() {
        (received_ms, true)
    } else {
        (corrected, false)
    }
}

/// One stream's part of a flush.
struct Plan {
    rig_id: i64,
    state: StreamState,
    /// Indexes into the flush's batches and samples.
    samples: Vec<(usize, usize)>,
    dropped: u64,
    changed: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut stopping: Option<oneshot::Sender<()>> = None;
        while stopping.is_none() {
            let first = match rx.recv().await {
                Some(Msg::Batch(b)) => b,
                Some(Msg::Shutdown(ack)) => {
                    stopping = Some(ack);
                    break;
                }
                None => break,
            };
            let mut queued = first.samples.len();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.opts.flush_interval;
            while queued < self.opts.max_batch_samples {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Msg::Batch(b))) => {
                        queued += b.samples.len();
                        batch.push(b);
                    }
                    Ok(Some(Msg::Shutdown(ack))) => {
                        stopping = Some(ack);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            self.flush(batch).await;
        }
        // Whatever was queued before the shutdown request is written too.
        let mut rest = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Batch(b) = msg {
                rest.push(b);
            }
        }
        if !rest.is_empty() {
            self.flush(rest).await;
        }
        if let Some(ack) = stopping {
            let _ = ack.send(());
        }
    }

    /// The stream's state from the cache or the database; `Ok(None)`: no such rig.
    async fn stream(&mut self, rig_id: i64, uid: &str) -> Result<Option<StreamState>, StoreError> {
        let key = (rig_id, uid.to_string());
        if let Some(st) = self.streams.get(&key) {
            return Ok(Some(st.clone()));
        }
        let Some((row, _)) = self.store.telemetry_stream(rig_id, uid, now_ms()).await? else {
            return Ok(None);
        };
        let above = self
            .store
            .stream_seqs_above(rig_id, row.id, row.committed_seq)
            .await?;
        let mut st = StreamState {
            id: row.id,
            mark: row.committed_seq,
            above: above.into_iter().collect(),
        };
        st.advance();
        self.streams.insert(key, st.clone());
        Ok(Some(st))
    }

    async fn flush(&mut self, batches: Vec<IngestBatch>) {
        let mut plans: HashMap<(i64, String), Plan> = HashMap::new();
        let mut refused: HashMap<usize, StoreError> = HashMap::new();
        let mut duplicates = 0u64;
        for (i, b) in batches.iter().enumerate() {
            if b.link.failed() {
                refused.insert(
                    i,
                    StoreError::BatchFailed(
                        "an earlier telemetry batch of this link was not stored".into(),
                    ),
                );
                continue;
            }
            if b.samples.iter().any(|s| i64::try_from(s.seq).is_err()) {
                refused.insert(i, StoreError::Invalid("seq above 2^63-1".into()));
                continue;
            }
            let key = (b.rig_id, b.stream.clone());
            if !plans.contains_key(&key) {
                let state = match self.stream(b.rig_id, &b.stream).await {
                    Ok(Some(st)) => st,
                    Ok(None) => {
                        refused.insert(i, StoreError::NotFound);
                        continue;
                    }
                    Err(e) => {
                        refused.insert(i, e);
                        continue;
                    }
                };
                plans.insert(
                    key.clone(),
                    Plan {
                        rig_id: b.rig_id,
                        state,
                        samples: Vec::new(),
                        dropped: 0,
                        changed: false,
                    },
                );
            }
            if !self.slots.contains_key(&b.rig_id) {
                match self.store.device_slots(b.rig_id).await {
                    Ok(map) => {
                        self.slots.insert(b.rig_id, map);
                    }
                    Err(e) => {
                        refused.insert(i, e);
                        continue;
                    }
                }
            }
            let Some(plan) = plans.get_mut(&key) else {
                continue;
            };
            let mut order: Vec<usize> = (0..b.samples.len()).collect();
            order.sort_by_key(|&j| b.samples[j].seq);
            for j in order {
                if plan.state.take(b.samples[j].seq) {
                    plan.samples.push((i, j));
                    plan.changed = true;
                } else {
                    duplicates += 1;
                }
            }
            if let Some(through) = b.dropped_through {
                let before = plan.state.mark;
                plan.dropped += plan.state.drop_through(through);
                plan.changed |= plan.state.mark != before;
            }
            plan.state.advance();
        }
        self.metrics.samples_duplicate.inc_by(duplicates);

        let mut flagged = 0u64;
        let mut dropped = 0u64;
        let writes: Vec<StreamSamples<'_>> = plans
            .values()
            .filter(|p| p.changed)
            .map(|p| {
                dropped += p.dropped;
                StreamSamples {
                    rig_id: p.rig_id,
                    stream_id: p.state.id,
                    samples: p
                        .samples
                        .iter()
                        .map(|&(i, j)| {
                            let b = &batches[i];
                            let sample = &b.samples[j];
                            let (offset, recv) = (b.clock_offset_ms, b.received_ms);
                            let (ts_ms, time_flagged) = server_time(
                                sample.time_unix_ms,
                                offset,
                                recv,
                                self.opts.max_clock_skew,
                            );
                            flagged += u64::from(time_flagged);
                            TimedSample {
                                sample,
                                ts_ms,
                                recv_ms: recv,
                                time_flagged,
                            }
                        })
                        .collect(),
                    committed_seq: p.state.mark,
                    dropped: p.dropped,
                }
            })
            .collect();
        let written: usize = writes.iter().map(|w| w.samples.len()).sum();
        let mut failure: Option<String> = None;
        if !writes.is_empty() {
            let started = Instant::now();
            match self
                .store
                .write_samples(&writes, &mut self.slots, now_ms())
                .await
            {
                Ok(outcome) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    self.metrics.samples_written.inc_by(outcome.inserted);
                    self.metrics.samples_time_flagged.inc_by(flagged);
                    self.metrics.samples_dropped_by_agents.inc_by(dropped);
                    let collided = (written as u64).saturating_sub(outcome.inserted);
                    self.metrics.samples_duplicate.inc_by(collided);
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, samples = written, "telemetry batch not written; agents will resend");
                    failure = Some(e.to_string());
                }
            }
        }
        drop(writes);
        if failure.is_none() {
            for (key, plan) in &plans {
                self.streams.insert(key.clone(), plan.state.clone());
            }
        }
        for (i, b) in batches.into_iter().enumerate() {
            let reply = if let Some(e) = refused.remove(&i) {
                Err(e)
            } else if let Some(msg) = &failure {
                // One transaction holds every stream of the flush: none of it is stored.
                Err(StoreError::BatchFailed(msg.clone()))
            } else {
                match plans.get(&(b.rig_id, b.stream.clone())) {
                    Some(p) => Ok(p.state.mark),
                    None => Err(StoreError::NotFound),
                }
            };
            if reply.is_err() {
                b.link.fail();
            }
            let _ = b.done.send(reply);
        }
        if failure.is_some() {
            // The caches may hold what the failed transaction was about to change.
            self.streams.clear();
            self.slots.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::rigs::tests::one_rig;
    use crate::db::telemetry::tests::sample;
    use crate::db::test_db::{exec, test_backends};
    use crate::db::DbKind;

    /// Test samples are dated 1970: no skew bound applies unless a test sets one.
    fn opts(flush_ms: u64) -> WriterOptions {
        WriterOptions {
            max_batch_samples: 2000,
            flush_interval: Duration::from_millis(flush_ms),
            queue_capacity: 64,
            max_clock_skew: Duration::from_secs(u32::MAX.into()),
        }
    }

    fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<Sample> {
        range
            .map(|i| sample(i, 1_000_000 + i as i64 * 10_000, 2, i))
            .collect()
    }

    /// Where a batch comes from.
    struct From<'a> {
        stream: &'a str,
        link: Arc<LinkIngest>,
        dropped_through: Option<u64>,
        clock_offset_ms: i64,
        received_ms: i64,
    }

    impl Default for From<'_> {
        fn default() -> Self {
            From {
                stream: "",
                link: LinkIngest::new(),
                dropped_through: None,
                clock_offset_ms: 0,
                received_ms: now_ms(),
            }
        }
    }

    async fn send_from(
        h: &WriterHandle,
        rig_id: i64,
        samples: Vec<Sample>,
        from: From<'_>,
    ) -> oneshot::Receiver<Result<u64, StoreError>> {
        let (done, rx) = oneshot::channel();
        h.submit(IngestBatch {
            rig_id,
            stream: from.stream.to_string(),
            samples,
            dropped_through: from.dropped_through,
            clock_offset_ms: from.clock_offset_ms,
            received_ms: from.received_ms,
            link: from.link,
            done,
        })
        .await
        .unwrap();
        rx
    }

    async fn send(
        h: &WriterHandle,
        rig_id: i64,
        samples: Vec<Sample>,
    ) -> oneshot::Receiver<Result<u64, StoreError>> {
        send_from(h, rig_id, samples, From::default()).await
    }

    async fn ack_from(
        h: &WriterHandle,
        rig_id: i64,
        samples: Vec<Sample>,
        from: From<'_>,
    ) -> Result<u64, StoreError> {
        send_from(h, rig_id, samples, from).await.await.unwrap()
    }

    /// Makes every insert of a seq in `range` fail, as a transient database error would.
    async fn fail_seqs(s: &Store, range: std::ops::RangeInclusive<u64>) -> String {
        let (lo, hi) = (range.start(), range.end());
        let name = format!("fail_seq_{lo}_{hi}");
        match s.kind() {
            DbKind::Sqlite => exec(s, &format!("CREATE TRIGGER {name} BEFORE INSERT ON telemetry_raw WHEN NEW.seq BETWEEN {lo} AND {hi} BEGIN SELECT RAISE(ABORT, 'injected failure'); END")).await,
            DbKind::Postgres => {
                exec(s, &format!("CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.seq BETWEEN {lo} AND {hi} THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$")).await;
                exec(s, &format!("CREATE TRIGGER {name} BEFORE INSERT ON telemetry_raw FOR EACH ROW EXECUTE FUNCTION {name}()")).await;
            }
        }
        name
    }

    async fn heal(s: &Store, name: &str) {
        match s.kind() {
            DbKind::Sqlite => exec(s, &format!("DROP TRIGGER {name}")).await,
            DbKind::Postgres => {
                exec(s, &format!("DROP TRIGGER {name} ON telemetry_raw")).await;
                exec(s, &format!("DROP FUNCTION {name}()")).await;
            }
        }
    }

    fn stored(v: &[(String, u64)], stream: &str) -> Vec<u64> {
        v.iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, q)| *q)
            .collect()
    }

    #[tokio::test]
    async fn an_ack_never_crosses_a_hole_left_by_a_failed_flush() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 2).await;
            let m = WriterMetrics::unregistered();
            // Three samples a flush, so a link's second batch waits in the queue while the
            // first one's transaction fails.
            let w = spawn_writer(
                s.clone(),
                WriterOptions {
                    max_batch_samples: 3,
                    ..opts(50)
                },
                m.clone(),
            );
            assert_eq!(ack(&w, rig, seqs(1..=2)).await.unwrap(), 2);
            let fault = fail_seqs(s, 3..=5).await;
            let link = LinkIngest::new();
            let failing = send_from(
                &w,
                rig,
                seqs(3..=5),
                From {
                    link: link.clone(),
                    ..From::default()
                },
            )
            .await;
            let queued = send_from(
                &w,
                rig,
                seqs(6..=8),
                From {
                    link: link.clone(),
                    ..From::default()
                },
            )
            .await;
            assert!(matches!(
                failing.await.unwrap(),
                Err(StoreError::BatchFailed(_))
            ));
            // The batch queued behind the failure is not committed either.
            assert!(queued.await.unwrap().is_err());
            assert!(link.failed());
            assert_eq!(stored(&s.stored_seqs(rig).await.unwrap(), ""), [1, 2]);
            // Even when later seqs of the stream do commit (a link that kept going), the ack
            // stays below the hole: 3..5 are not stored.
            assert_eq!(ack(&w, rig, seqs(6..=8)).await.unwrap(), 2);
            heal(s, &fault).await;
            // The agent reconnects and resends everything unacknowledged: the hole fills, the
            // seqs already stored are duplicates, and the ack covers all of it.
            assert_eq!(ack(&w, rig, seqs(3..=8)).await.unwrap(), 8);
            assert_eq!(
                stored(&s.stored_seqs(rig).await.unwrap(), ""),
                (1..=8).collect::<Vec<_>>()
            );
            assert_eq!(m.samples_duplicate.get(), 3);
            // A fresh writer (server restart) reloads the mark and the seqs behind it.
            w.shutdown().await;
            let w = spawn_writer(s.clone(), opts(20), WriterMetrics::unregistered());
            let fault = fail_seqs(s, 10..=10).await;
            assert!(ack(&w, rig, seqs(9..=10)).await.is_err());
            heal(s, &fault).await;
            assert_eq!(ack(&w, rig, seqs(11..=12)).await.unwrap(), 8);
            w.shutdown().await;
            let w = spawn_writer(s.clone(), opts(20), WriterMetrics::unregistered());
            assert_eq!(ack(&w, rig, seqs(9..=10)).await.unwrap(), 12);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (12, Some(1), Some(12)));
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn samples_with_the_same_time_are_two_samples() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let w = spawn_writer(s.clone(), opts(20), WriterMetrics::unregistered());
            let same = vec![sample(1, 5_000_000, 1, 1), sample(2, 5_000_000, 1, 2)];
            assert_eq!(ack(&w, rig, same.clone()).await.unwrap(), 2);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (2, Some(1), Some(2)));
            // Resending them is a duplicate by seq, not by time.
            assert_eq!(ack(&w, rig, same).await.unwrap(), 2);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap().0, 2);
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn a_reset_queue_starts_a_new_stream_instead_of_being_taken_for_resends() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let w = spawn_writer(s.clone(), opts(20), WriterMetrics::unregistered());
            let a = || From {
                stream: "queue-a",
                ..From::default()
            };
            let b = || From {
                stream: "queue-b",
                ..From::default()
            };
            assert_eq!(ack_from(&w, rig, seqs(1..=5), a()).await.unwrap(), 5);
            // The agent's queue was wiped: seqs start again at 1 in a new stream.
            assert_eq!(ack_from(&w, rig, seqs(1..=3), b()).await.unwrap(), 3);
            assert_eq!(ack_from(&w, rig, seqs(1..=3), b()).await.unwrap(), 3);
            let all = s.stored_seqs(rig).await.unwrap();
            assert_eq!(
                (stored(&all, "queue-a"), stored(&all, "queue-b")),
                (vec![1, 2, 3, 4, 5], vec![1, 2, 3])
            );
            let streams = s.telemetry_streams(rig).await.unwrap();
            assert_eq!(
                streams
                    .iter()
                    .map(|st| (st.stream_uid.as_str(), st.committed_seq))
                    .collect::<Vec<_>>(),
                [("queue-a", 5), ("queue-b", 3)]
            );
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn seqs_the_agent_dropped_let_the_mark_move_and_are_counted() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let m = WriterMetrics::unregistered();
            let w = spawn_writer(s.clone(), opts(20), m.clone());
            assert_eq!(ack(&w, rig, seqs(1..=2)).await.unwrap(), 2);
            // 4 was stored out of order; the agent then drops 3..5 from its full queue.
            assert_eq!(ack(&w, rig, seqs(4..=4)).await.unwrap(), 2);
            let dropped = From {
                dropped_through: Some(5),
                ..From::default()
            };
            assert_eq!(ack_from(&w, rig, seqs(6..=7), dropped).await.unwrap(), 7);
            assert_eq!(m.samples_dropped_by_agents.get(), 2);
            let streams = s.telemetry_streams(rig).await.unwrap();
            assert_eq!((streams[0].committed_seq, streams[0].dropped), (7, 2));
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn sample_times_are_corrected_and_implausible_ones_flagged() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let m = WriterMetrics::unregistered();
            let w = spawn_writer(
                s.clone(),
                WriterOptions {
                    max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
                    ..opts(20)
                },
                m.clone(),
            );
            let now = 1_800_000_000_000;
            let hour = 3_600_000;
            // The agent's clock is an hour behind: its times are moved forward by the offset
            // its handshake measured. One sample says 1970, one 2090: stored at arrival, flagged.
            let mut batch = vec![
                sample(1, now - hour - 20_000, 1, 1),
                sample(2, 5_000, 1, 2),
                sample(3, 3_800_000_000_000, 1, 3),
                sample(4, now - hour - 10_000, 1, 4),
            ];
            batch.sort_by_key(|x| x.seq);
            let from = From {
                clock_offset_ms: hour,
                received_ms: now,
                ..From::default()
            };
            assert_eq!(ack_from(&w, rig, batch, from).await.unwrap(), 4);
            assert_eq!(
                s.raw_times(rig).await.unwrap(),
                [
                    (1, now - 20_000, now - hour - 20_000, false),
                    (2, now, 5_000, true),
                    (3, now, 3_800_000_000_000, true),
                    (4, now - 10_000, now - hour - 10_000, false),
                ]
            );
            assert_eq!(m.samples_time_flagged.get(), 2);
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    async fn ack(h: &WriterHandle, rig_id: i64, samples: Vec<Sample>) -> Result<u64, StoreError> {
        send(h, rig_id, samples).await.await.unwrap()
    }

    #[tokio::test]
    async fn resent_samples_are_stored_once_and_acks_name_the_committed_mark() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 2).await;
            let m = WriterMetrics::unregistered();
            let w = spawn_writer(s.clone(), opts(20), m.clone());
            assert_eq!(ack(&w, rig, seqs(1..=10)).await.unwrap(), 10);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (10, Some(1), Some(10)));
            assert_eq!(ack(&w, rig, seqs(5..=15)).await.unwrap(), 15);
            assert_eq!(ack(&w, rig, seqs(3..=8)).await.unwrap(), 15);
            // Overlapping batches in one transaction.
            let a = send(&w, rig, seqs(16..=20)).await;
            let b = send(&w, rig, seqs(18..=22)).await;
            assert_eq!(
                (a.await.unwrap().unwrap(), b.await.unwrap().unwrap()),
                (22, 22)
            );
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (22, Some(1), Some(22)));
            assert_eq!(
                (m.samples_written.get(), m.samples_duplicate.get()),
                (22, 6 + 6 + 3)
            );
            w.shutdown().await;

            // A fresh writer (server restart) loads the mark from the database.
            let w = spawn_writer(s.clone(), opts(20), WriterMetrics::unregistered());
            assert_eq!(ack(&w, rig, seqs(1..=22)).await.unwrap(), 22);
            assert_eq!(ack(&w, rig, seqs(23..=23)).await.unwrap(), 23);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (23, Some(1), Some(23)));
            assert_eq!(s.rig_by_id(rig).await.unwrap().unwrap().last_seq, Some(23));
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn database_failure_answers_err_then_the_writer_recovers() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 2).await;
            let m = WriterMetrics::unregistered();
            let w = spawn_writer(s.clone(), opts(20), m.clone());
            assert_eq!(ack(&w, rig, seqs(1..=2)).await.unwrap(), 2);
            // Inject a failure of every telemetry insert.
            match s.kind() {
                DbKind::Sqlite => exec(s, "CREATE TRIGGER fail_raw BEFORE INSERT ON telemetry_raw BEGIN SELECT RAISE(ABORT, 'injected failure'); END").await,
                DbKind::Postgres => {
                    exec(s, "CREATE FUNCTION fail_raw() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$").await;
                    exec(s, "CREATE TRIGGER fail_raw BEFORE INSERT ON telemetry_raw FOR EACH ROW EXECUTE FUNCTION fail_raw()").await;
                }
            }
            let failed = ack(&w, rig, seqs(3..=5)).await;
            assert!(
                matches!(&failed, Err(StoreError::BatchFailed(msg)) if msg.contains("injected")),
                "{failed:?}"
            );
            // Resent samples the failure kept out are still not duplicates.
            assert!(ack(&w, rig, seqs(3..=5)).await.is_err());
            assert!(matches!(
                ack(&w, 999_999, seqs(1..=1)).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (2, Some(1), Some(2)));
            assert_eq!(s.rig_by_id(rig).await.unwrap().unwrap().last_seq, Some(2));
            match s.kind() {
                DbKind::Sqlite => exec(s, "DROP TRIGGER fail_raw").await,
                DbKind::Postgres => exec(s, "DROP TRIGGER fail_raw ON telemetry_raw").await,
            }
            assert_eq!(ack(&w, rig, seqs(3..=5)).await.unwrap(), 5);
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (5, Some(1), Some(5)));
            assert_eq!(m.errors.get(), 2);
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_small_batches_share_few_transactions() {
        for db in test_backends().await {
            let s = &db.store;
            let mut rigs = Vec::new();
            for i in 0..40 {
                rigs.push(one_rig(s, &format!("rig{i}"), 8).await);
            }
            let m = WriterMetrics::unregistered();
            // A small queue: submitters wait on it instead of growing memory.
            let w = spawn_writer(
                s.clone(),
                WriterOptions {
                    max_batch_samples: 300,
                    flush_interval: Duration::from_millis(50),
                    queue_capacity: 8,
                    ..opts(50)
                },
                m.clone(),
            );
            let tasks: Vec<_> = rigs
                .iter()
                .map(|&rig| {
                    let w = w.clone();
                    tokio::spawn(async move {
                        for seq in 1..=25u64 {
                            let mut samples =
                                vec![sample(seq, 1_000_000 + seq as i64 * 10_000, 8, seq)];
                            if seq > 1 {
                                samples.insert(
                                    0,
                                    sample(
                                        seq - 1,
                                        1_000_000 + (seq as i64 - 1) * 10_000,
                                        8,
                                        seq - 1,
                                    ),
                                );
                            }
                            let got = ack(&w, rig, samples).await.unwrap();
                            assert!(got >= seq);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            for &rig in &rigs {
                assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (25, Some(1), Some(25)));
            }
            assert_eq!(
                (m.samples_written.get(), m.samples_duplicate.get()),
                (1000, 960)
            );
            assert!(m.batches.get() < 1000 / 4, "batches: {}", m.batches.get());
            w.shutdown().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn shutdown_writes_what_was_queued() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let w = spawn_writer(s.clone(), opts(60_000), WriterMetrics::unregistered());
            let a = send(&w, rig, seqs(1..=3)).await;
            let b = send(&w, rig, seqs(4..=6)).await;
            let w2 = w.clone();
            w.shutdown().await;
            assert_eq!(
                (a.await.unwrap().unwrap(), b.await.unwrap().unwrap()),
                (6, 6)
            );
            assert_eq!(s.raw_seq_stats(rig).await.unwrap().0, 6);
            let (done, _rx) = oneshot::channel();
            assert!(w2
                .submit(IngestBatch {
                    rig_id: rig,
                    stream: String::new(),
                    samples: vec![],
                    dropped_through: None,
                    clock_offset_ms: 0,
                    received_ms: 0,
                    link: LinkIngest::new(),
                    done
                })
                .await
                .is_err());
            db.cleanup().await;
        }
    }
}
