//! The telemetry writer task.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter};
use rigfleet_proto::telemetry::Sample;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::telemetry::{RigSamples, SlotMap};
use crate::db::{Store, StoreError};

/// How the writer batches.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// A transaction is written once this many samples are queued…
    pub max_batch_samples: usize,
    /// …or this long after the first one arrived.
    pub flush_interval: Duration,
    /// Batches waiting at most; `submit` waits when the queue is full.
    pub queue_capacity: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_samples: 2000,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 512,
        }
    }
}

/// Samples of one rig and where to send the outcome.
#[derive(Debug)]
pub struct IngestBatch {
    pub rig_id: i64,
    pub samples: Vec<Sample>,
    /// Answered with the rig's highest durably committed seq once the transaction holding these
    /// samples committed (0 when the rig has none), or the error that kept them out.
    pub done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The writer's instruments; the caller registers them where it wants.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    /// Seconds per batch commit.
    pub commit_seconds: Histogram,
    pub samples_written: IntCounter,
    /// Resent samples skipped (seq at or below the rig's high-water mark).
    pub samples_duplicate: IntCounter,
    /// Transactions committed.
    pub batches: IntCounter,
    /// Transactions that failed.
    pub errors: IntCounter,
}

impl WriterMetrics {
    /// Wraps instruments the caller created (and registered).
    pub fn new(
        commit_seconds: Histogram,
        samples_written: IntCounter,
        samples_duplicate: IntCounter,
        batches: IntCounter,
        errors: IntCounter,
    ) -> WriterMetrics {
        WriterMetrics {
            commit_seconds,
            samples_written,
            samples_duplicate,
            batches,
            errors,
        }
    }

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
        last_seq: HashMap::new(),
        slots: HashMap::new(),
    };
    let task = tokio::spawn(writer.run(rx));
    WriterHandle {
        tx,
        task: std::sync::Arc::new(tokio::sync::Mutex::new(Some(task))),
    }
}

struct Writer {
    store: Store,
    opts: WriterOptions,
    metrics: WriterMetrics,
    /// Per rig high-water mark, loaded lazily; `None`: no sample stored yet.
    last_seq: HashMap<i64, Option<u64>>,
    slots: HashMap<i64, SlotMap>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

    /// The rig's high-water mark from the cache or the database; `Ok(None)`: no such rig.
    async fn high_water(&mut self, rig_id: i64) -> Result<Option<Option<u64>>, StoreError> {
        if let Some(v) = self.last_seq.get(&rig_id) {
            return Ok(Some(*v));
        }
        let v = self.store.rig_last_seq(rig_id).await?;
        if let Some(v) = v {
            self.last_seq.insert(rig_id, v);
        }
        Ok(v)
    }

    async fn flush(&mut self, batches: Vec<IngestBatch>) {
        // Samples to write, per rig, deduplicated against the durable mark and each other.
        let mut per_rig: HashMap<i64, Vec<&Sample>> = HashMap::new();
        let mut refused: HashMap<usize, StoreError> = HashMap::new();
        let mut seen: HashMap<i64, Option<u64>> = HashMap::new();
        let mut duplicates = 0u64;
        for (i, b) in batches.iter().enumerate() {
            let hwm = match self.high_water(b.rig_id).await {
                Ok(Some(h)) => h,
                Ok(None) => {
                    refused.insert(i, StoreError::NotFound);
                    continue;
                }
                Err(e) => {
                    refused.insert(i, e);
                    continue;
                }
            };
            if b.samples.iter().any(|s| i64::try_from(s.seq).is_err()) {
                refused.insert(i, StoreError::Invalid("seq above 2^63-1".into()));
                continue;
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
            let floor = seen.entry(b.rig_id).or_insert(hwm);
            let list = per_rig.entry(b.rig_id).or_default();
            let mut sorted: Vec<&Sample> = b.samples.iter().collect();
            sorted.sort_by_key(|s| s.seq);
            for s in sorted {
                if floor.is_some_and(|f| s.seq <= f) {
                    duplicates += 1;
                } else {
                    *floor = Some(s.seq);
                    list.push(s);
                }
            }
        }
        self.metrics.samples_duplicate.inc_by(duplicates);
        let rigs: Vec<RigSamples<'_>> = per_rig
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(rig_id, samples)| RigSamples { rig_id, samples })
            .collect();
        let written: usize = rigs.iter().map(|r| r.samples.len()).sum();
        let mut failure: Option<String> = None;
        if !rigs.is_empty() {
            let started = Instant::now();
            match self
                .store
                .write_samples(&rigs, &mut self.slots, now_ms())
                .await
            {
                Ok(outcome) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    self.metrics.samples_written.inc_by(outcome.inserted);
                    let collided = (written as u64).saturating_sub(outcome.inserted);
                    self.metrics.samples_duplicate.inc_by(collided);
                    for (rig, seq) in outcome.last_seq {
                        self.last_seq.insert(rig, Some(seq));
                    }
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, samples = written, "telemetry batch not written; agents will resend");
                    failure = Some(e.to_string());
                }
            }
        }
        let failed_rigs: HashSet<i64> = if failure.is_some() {
            rigs.iter().map(|r| r.rig_id).collect()
        } else {
            HashSet::new()
        };
        drop(rigs);
        for (i, b) in batches.into_iter().enumerate() {
            let reply = if let Some(e) = refused.remove(&i) {
                Err(e)
            } else if let (Some(msg), true) = (&failure, failed_rigs.contains(&b.rig_id)) {
                Err(StoreError::BatchFailed(msg.clone()))
            } else {
                Ok(self.last_seq.get(&b.rig_id).copied().flatten().unwrap_or(0))
            };
            let _ = b.done.send(reply);
        }
        if failure.is_some() {
            // The caches may hold what the failed transaction was about to change.
            self.last_seq.clear();
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

    fn opts(flush_ms: u64) -> WriterOptions {
        WriterOptions {
            max_batch_samples: 2000,
            flush_interval: Duration::from_millis(flush_ms),
            queue_capacity: 64,
        }
    }

    fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<Sample> {
        range
            .map(|i| sample(i, 1_000_000 + i as i64 * 10_000, 2, i))
            .collect()
    }

    async fn send(
        h: &WriterHandle,
        rig_id: i64,
        samples: Vec<Sample>,
    ) -> oneshot::Receiver<Result<u64, StoreError>> {
        let (done, rx) = oneshot::channel();
        h.submit(IngestBatch {
            rig_id,
            samples,
            done,
        })
        .await
        .unwrap();
        rx
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
                    samples: vec![],
                    done
                })
                .await
                .is_err());
            db.cleanup().await;
        }
    }
}
