//! Telemetry over a connection: which samples are in flight, what the next batch is, and what
//! an `ack` frees.
//!
//! Samples live in a [`SampleStore`] (the on-disk queue for a real rig, memory for a simulated
//! one) from the moment they are taken until an `ack` covers them. A connection starts sending
//! right after the store's acked seq and keeps at most [`MAX_IN_FLIGHT`] batches unacknowledged,
//! so after a long outage the backlog drains at the pace the server commits it, not at the pace
//! of the socket. A lost connection forgets what was in flight; the next one resends from the
//! acked seq, so every sample reaches the server, and in normal operation exactly once.

use std::collections::{BTreeMap, VecDeque};

use rigfleet_proto::agent_to_server::Telemetry;
use rigfleet_proto::limits::MAX_SAMPLES_PER_BATCH;
use rigfleet_proto::telemetry::Sample;
use rigfleet_proto::{AgentMessage, ProtoError, RigId};
use tokio::time::{Duration, Instant};

use crate::daemon::queue::TelemetryQueue;

/// Unacknowledged batches allowed on one connection.
pub const MAX_IN_FLIGHT: usize = 4;
/// Batches in flight with no ack for this long: the server is stuck; reconnect and resend.
pub const ACK_STALL: Duration = Duration::from_secs(120);

/// Where samples wait for their ack.
pub trait SampleStore {
    /// Highest acknowledged seq (0: none).
    fn acked_seq(&self) -> u64;
    /// Up to `max` unacknowledged samples above `after`, in seq order.
    fn pending_after(&self, after: u64, max: usize) -> Result<Vec<Sample>, String>;
    /// Forget every sample up to `seq`.
    fn ack(&mut self, seq: u64) -> Result<(), String>;
    /// The stream the seqs belong to (`None`: the legacy stream of a queue made before
    /// streams existed).
    fn stream_id(&self) -> Option<String>;
    /// Highest seq dropped unacknowledged to the capacity bound (0: none): the server may move
    /// its acknowledgement past every seq up to it.
    fn dropped_through(&self) -> u64;
}

impl SampleStore for TelemetryQueue {
    fn acked_seq(&self) -> u64 {
        TelemetryQueue::acked_seq(self)
    }

    fn pending_after(&self, after: u64, max: usize) -> Result<Vec<Sample>, String> {
        TelemetryQueue::pending_after(self, after, max).map_err(|e| e.to_string())
    }

    fn ack(&mut self, seq: u64) -> Result<(), String> {
        TelemetryQueue::ack(self, seq).map_err(|e| e.to_string())
    }

    fn stream_id(&self) -> Option<String> {
        Some(TelemetryQueue::stream_id(self))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn dropped_through(&self) -> u64 {
        self.loss().dropped_through_seq
    }
}

/// Unacknowledged samples in memory, bounded (the simulator's store).
#[derive(Debug, Default)]
pub struct MemoryStore {
    samples: BTreeMap<u64, Sample>,
    acked: u64,
    next_seq: u64,
    capacity: usize,
    /// Samples dropped to the bound.
    pub dropped: u64,
    /// Highest seq dropped to the bound.
    dropped_through: u64,
    /// Made with the store: a simulated agent's seqs start at 1 on every run.
    stream_id: String,
}

impl MemoryStore {
    /// A store holding at most `capacity` unacknowledged samples.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            samples: BTreeMap::new(),
            acked: 0,
            next_seq: 1,
            capacity: capacity.max(1),
            dropped: 0,
            dropped_through: 0,
            stream_id: crate::daemon::queue::new_stream_id(),
        }
    }

    /// Adds a sample, giving it the next seq.
    pub fn push(&mut self, mut sample: Sample) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        sample.seq = seq;
        self.samples.insert(seq, sample);
        while self.samples.len() > self.capacity {
            if let Some((gone, _)) = self.samples.pop_first() {
                self.dropped_through = gone;
            }
            self.dropped += 1;
        }
        seq
    }

    /// Unacknowledged samples held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.samples.len()
    }
}

impl SampleStore for MemoryStore {
    fn acked_seq(&self) -> u64 {
        self.acked
    }

    fn pending_after(&self, after: u64, max: usize) -> Result<Vec<Sample>, String> {
        Ok(self
            .samples
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(_, s)| s.clone())
            .collect())
    }

    fn ack(&mut self, seq: u64) -> Result<(), String> {
        let seq = seq.min(self.next_seq.saturating_sub(1));
        if seq > self.acked {
            self.acked = seq;
            self.samples = self.samples.split_off(&(seq + 1));
        }
        Ok(())
    }

    fn stream_id(&self) -> Option<String> {
        Some(self.stream_id.clone())
    }

    fn dropped_through(&self) -> u64 {
        self.dropped_through
    }
}

/// The sending side of telemetry on one connection.
#[derive(Debug)]
pub struct Outbox {
    rig_id: RigId,
    /// Highest seq sent on this connection.
    sent_through: u64,
    /// Last seq of each unacknowledged batch, oldest first.
    in_flight: VecDeque<u64>,
    max_in_flight: usize,
    max_batch: usize,
    /// When the oldest in-flight batch was sent, or the last ack arrived.
    progress_at: Instant,
    /// Samples sent since start (resends included).
    pub samples_sent: u64,
}

impl Outbox {
    /// An outbox for `rig_id`'s samples.
    pub fn new(rig_id: RigId) -> Self {
        Outbox {
            rig_id,
            sent_through: 0,
            in_flight: VecDeque::new(),
            max_in_flight: MAX_IN_FLIGHT,
            max_batch: MAX_SAMPLES_PER_BATCH,
            progress_at: Instant::now(),
            samples_sent: 0,
        }
    }

    /// Smaller batches and window (tests).
    #[cfg(test)]
    pub fn with_limits(mut self, max_batch: usize, max_in_flight: usize) -> Self {
        self.max_batch = max_batch.clamp(1, MAX_SAMPLES_PER_BATCH);
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// A new connection: resend everything after the acked seq.
    pub fn reset(&mut self, store: &dyn SampleStore) {
        self.sent_through = store.acked_seq();
        self.in_flight.clear();
        self.progress_at = Instant::now();
    }

    /// The next `telemetry` frame to send, encoded, if the window has room and samples wait.
    /// Marks it in flight: send it, or drop the connection (which resets the outbox).
    pub fn next_frame(&mut self, store: &dyn SampleStore) -> Result<Option<String>, String> {
        if self.in_flight.len() >= self.max_in_flight {
            return Ok(None);
        }
        let mut max = self.max_batch;
        loop {
            let samples = store.pending_after(self.sent_through, max)?;
            let Some(last) = samples.last().map(|s| s.seq) else {
                return Ok(None);
            };
            let count = samples.len();
            let dropped = store.dropped_through();
            let msg = AgentMessage::Telemetry(Telemetry {
                rig_id: self.rig_id.clone(),
                samples,
                stream_id: store.stream_id(),
                dropped_through: (dropped > store.acked_seq()).then_some(dropped),
            });
            match rigfleet_proto::encode_agent(&msg) {
                Ok(text) => {
                    if self.in_flight.is_empty() {
                        self.progress_at = Instant::now();
                    }
                    self.sent_through = last;
                    self.in_flight.push_back(last);
                    self.samples_sent += count as u64;
                    return Ok(Some(text));
                }
                // Many devices make big samples: halve the batch until it fits a frame.
                Err(ProtoError::FrameTooLarge { .. }) if count > 1 => max = count / 2,
                Err(e) => {
                    // One sample alone too large can never be sent: skip it rather than block
                    // every later one.
                    tracing::error!(seq = last, error = %e, "Telemetry sample cannot be sent; skipped");
                    self.sent_through = last;
                }
            }
        }
    }

    /// The server committed every seq up to `seq` of `stream` (`None`: the server did not say,
    /// as servers before streams). An ack about another stream (one this queue replaced) is
    /// ignored: its seqs mean other samples.
    pub fn on_ack(
        &mut self,
        store: &mut dyn SampleStore,
        seq: u64,
        stream: Option<&str>,
    ) -> Result<(), String> {
        if let Some(acked) = stream {
            if store.stream_id().as_deref() != Some(acked) {
                tracing::warn!(stream = acked, "Ack for another telemetry stream; ignored");
                return Ok(());
            }
        }
        store.ack(seq)?;
        let before = self.in_flight.len();
        self.in_flight.retain(|&last| last > seq);
        if self.in_flight.len() != before {
            self.progress_at = Instant::now();
        }
        Ok(())
    }

    /// Whether batches have waited too long for an ack (see [`ACK_STALL`]).
    pub fn stalled(&self, limit: Duration) -> bool {
        !self.in_flight.is_empty() && self.progress_at.elapsed() > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::telemetry::RigSample;

    fn sample() -> Sample {
        Sample {
            seq: 0,
            time_unix_ms: 1,
            rig: RigSample::default(),
            devices: vec![],
            pool: None,
        }
    }

    fn seqs(frame: &str) -> Vec<u64> {
        match rigfleet_proto::decode_agent(frame).expect("valid frame") {
            AgentMessage::Telemetry(t) => t.samples.iter().map(|s| s.seq).collect(),
            other => panic!("not telemetry: {other:?}"),
        }
    }

    #[test]
    fn window_bounds_batches_and_acks_open_it() {
        let mut store = MemoryStore::new(10_000);
        for _ in 0..1000 {
            store.push(sample());
        }
        let mut out = Outbox::new("rig-1".into()).with_limits(100, 3);
        out.reset(&store);
        let mut frames = Vec::new();
        while let Some(f) = out.next_frame(&store).expect("store") {
            frames.push(seqs(&f));
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].first(), Some(&1));
        assert_eq!(frames[2].last(), Some(&300));
        out.on_ack(&mut store, 100, None).expect("ack");
        let next = out.next_frame(&store).expect("store").expect("room again");
        assert_eq!(seqs(&next).first(), Some(&301));
        assert!(out.next_frame(&store).expect("store").is_none());
        assert_eq!(store.held(), 900);
    }

    #[test]
    fn a_new_connection_resends_from_the_acked_seq() {
        let mut store = MemoryStore::new(100);
        for _ in 0..10 {
            store.push(sample());
        }
        let mut out = Outbox::new("rig-1".into());
        out.reset(&store);
        let f = out.next_frame(&store).expect("store").expect("frame");
        assert_eq!(seqs(&f), (1..=10).collect::<Vec<_>>());
        out.on_ack(&mut store, 4, None).expect("ack");
        out.reset(&store);
        let f = out.next_frame(&store).expect("store").expect("frame");
        assert_eq!(seqs(&f), (5..=10).collect::<Vec<_>>());
    }

    #[test]
    fn oversized_batches_are_split_to_fit_a_frame() {
        let mut store = MemoryStore::new(1000);
        let mut big = sample();
        big.devices = (0..40)
            .map(|i| rigfleet_proto::telemetry::DeviceSample {
                device_id: format!("dev-{i}").as_str().into(),
                algorithm: "sha256d".into(),
                enabled: true,
                hashrate_5s_hps: 1.0,
                hashrate_1m_hps: 1.0,
                accepted: 1,
                rejected: 0,
                stale: 0,
                hardware_errors: 0,
                temperature_celsius: Some(50.0),
                fan_rpm: Some(1000),
                fan_percent: Some(50.0),
                power_watts: Some(100.0),
                core_clock_mhz: Some(1000),
                memory_clock_mhz: Some(1000),
            })
            .collect();
        for _ in 0..360 {
            store.push(big.clone());
        }
        let mut out = Outbox::new("rig-1".into()).with_limits(360, 100);
        out.reset(&store);
        let mut total = 0;
        while let Some(f) = out.next_frame(&store).expect("store") {
            assert!(f.len() <= rigfleet_proto::limits::MAX_FRAME_BYTES);
            total += seqs(&f).len();
        }
        assert_eq!(total, 360);
    }
}
