//! `/metrics` in the Prometheus text format: the fleet (per rig and device, built at scrape time
//! from the live state, so a removed rig or a changed pool leaves no stale series) and the
//! server's own internals.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::fleet::status::{RigStatus, StatusJudge};
use crate::hub::live::{LiveState, RigLive};

/// The server's own counters and the registry /metrics encodes.
pub struct ServerMetrics {
    /// Everything below, plus the fleet collector.
    pub registry: Registry,
    /// Agent links up now.
    pub agents_connected: IntGauge,
    /// Samples received from agents (before dedup).
    pub samples_received: IntCounter,
    /// Samples durably written.
    pub samples_written: IntCounter,
    /// Resent samples that were already stored.
    pub samples_duplicate: IntCounter,
    /// Telemetry write batches committed.
    pub write_batches: IntCounter,
    /// Samples stored at their arrival time because the agent's clock was implausible.
    pub samples_time_flagged: IntCounter,
    /// Seqs agents reported dropped from their full queues.
    pub samples_dropped_by_agents: IntCounter,
    /// Time from a batch's start to its commit.
    pub write_batch_seconds: Histogram,
    /// Time from a sample's arrival to its durable commit (what the ack waits for).
    pub ingest_to_durable_seconds: Histogram,
    /// WebSocket frames from agents.
    pub ws_frames_in: IntCounter,
    /// WebSocket frames to agents.
    pub ws_frames_out: IntCounter,
    /// Refused or failed things, by kind.
    pub errors: IntCounterVec,
}

impl ServerMetrics {
    /// Registers everything, with the fleet read from `live`.
    pub fn new(
        live: Arc<LiveState>,
        status: Arc<StatusJudge>,
    ) -> Result<ServerMetrics, prometheus::Error> {
        let registry = Registry::new();
        let agents_connected = IntGauge::new(
            "rigfleet_agents_connected",
            "Agent links that completed the handshake and are up now.",
        )?;
        let samples_received = IntCounter::new(
            "rigfleet_telemetry_samples_received_total",
            "Telemetry samples received from agents, resent ones included.",
        )?;
        let samples_written = IntCounter::new(
            "rigfleet_telemetry_samples_written_total",
            "Telemetry samples durably written to the database.",
        )?;
        let samples_duplicate = IntCounter::new(
            "rigfleet_telemetry_samples_duplicate_total",
            "Resent telemetry samples that were already stored.",
        )?;
        let samples_time_flagged = IntCounter::new(
            "rigfleet_telemetry_samples_time_flagged_total",
            "Telemetry samples whose time was more than the skew bound off and were stored at their arrival time.",
        )?;
        let samples_dropped_by_agents = IntCounter::new(
            "rigfleet_telemetry_samples_dropped_by_agents_total",
            "Telemetry samples agents dropped unsent because their on-disk queue was full.",
        )?;
        let write_batches = IntCounter::new(
            "rigfleet_telemetry_write_batches_total",
            "Telemetry write transactions committed.",
        )?;
        let write_batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rigfleet_telemetry_write_batch_seconds",
                "Time to write and commit one telemetry batch.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let ingest_to_durable_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rigfleet_telemetry_ingest_to_durable_seconds",
                "Time from a telemetry frame's arrival to the commit its ack waits for.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            ]),
        )?;
        let ws_frames_in = IntCounter::new(
            "rigfleet_ws_frames_received_total",
            "WebSocket frames received from agents.",
        )?;
        let ws_frames_out = IntCounter::new(
            "rigfleet_ws_frames_sent_total",
            "WebSocket frames sent to agents.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "rigfleet_errors_total",
                "Refused frames, failed handshakes, database errors and other failures, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(agents_connected.clone()))?;
        registry.register(Box::new(samples_received.clone()))?;
        registry.register(Box::new(samples_written.clone()))?;
        registry.register(Box::new(samples_duplicate.clone()))?;
        registry.register(Box::new(write_batches.clone()))?;
        registry.register(Box::new(samples_time_flagged.clone()))?;
        registry.register(Box::new(samples_dropped_by_agents.clone()))?;
        registry.register(Box::new(write_batch_seconds.clone()))?;
        registry.register(Box::new(ingest_to_durable_seconds.clone()))?;
        registry.register(Box::new(ws_frames_in.clone()))?;
        registry.register(Box::new(ws_frames_out.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(FleetCollector::new(live, status)))?;
        Ok(ServerMetrics {
            registry,
            agents_connected,
            samples_received,
            samples_written,
            samples_duplicate,
            write_batches,
            samples_time_flagged,
            samples_dropped_by_agents,
            write_batch_seconds,
            ingest_to_durable_seconds,
            ws_frames_in,
            ws_frames_out,
            errors,
        })
    }

    /// Counts one failure of `kind` (a short fixed word, never user text).
    pub fn error(&self, kind: &'static str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition of everything.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Builds per-rig and per-device families from the live state at each scrape.
struct FleetCollector {
    live: Arc<LiveState>,
    status: Arc<StatusJudge>,
    descs: Vec<Desc>,
}

/// (name, help, type) of every fleet family, in output order.
const FAMILIES: &[(&str, &str, MetricType)] = &[
    (
        "rigfleet_rig_online",
        "1 when the rig reported within the offline threshold.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_warning",
        "1 when a device of the rig is hot or rejecting shares.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_connected",
        "1 when the rig's agent link is up.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_last_seen_age_seconds",
        "Seconds since the server last heard about the rig.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_uptime_seconds",
        "Rig uptime as the agent reports it.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_load1",
        "Rig 1-minute load average.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_device_hashrate_hashes_per_second",
        "Device hash rate, 1-minute average.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_device_shares_accepted_total",
        "Shares the pool accepted from the device.",
        MetricType::COUNTER,
    ),
    (
        "rigfleet_device_shares_rejected_total",
        "Shares the pool rejected.",
        MetricType::COUNTER,
    ),
    (
        "rigfleet_device_shares_stale_total",
        "Shares that arrived after their job ended.",
        MetricType::COUNTER,
    ),
    (
        "rigfleet_device_hardware_errors_total",
        "Nonces the device reported that did not verify.",
        MetricType::COUNTER,
    ),
    (
        "rigfleet_device_temperature_celsius",
        "Device temperature.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_device_fan_ratio",
        "Device fan duty, 0 to 1.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_device_power_watts",
        "Device power draw.",
        MetricType::GAUGE,
    ),
    (
        "rigfleet_rig_clock_offset_seconds",
        "Server clock minus the rig's clock at its last handshake (the skew its sample times are corrected by).",
        MetricType::GAUGE,
    ),
];

/// Index of `rigfleet_rig_clock_offset_seconds` in [`FAMILIES`].
const CLOCK_OFFSET_FAMILY: usize = 14;

impl FleetCollector {
    fn new(live: Arc<LiveState>, status: Arc<StatusJudge>) -> FleetCollector {
        let descs = FAMILIES
            .iter()
            .filter_map(|(name, help, _)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
                .ok()
            })
            .collect();
        FleetCollector {
            live,
            status,
            descs,
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn sample(kind: MetricType, label_pairs: Vec<LabelPair>, value: f64) -> Metric {
    let mut m = Metric::default();
    m.set_label(label_pairs);
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Collector for FleetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now_ms = crate::now_ms();
        let mut metrics: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        self.live.with_all(|rigs| {
            let mut sorted: Vec<&RigLive> = rigs.values().collect();
            sorted.sort_by_key(|r| r.id);
            for rig in sorted {
                rig_metrics(rig, now_ms, &self.status, &mut metrics);
            }
        });
        FAMILIES
            .iter()
            .zip(metrics)
            .filter(|(_, m)| !m.is_empty())
            .map(|((name, help, kind), m)| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                *f.mut_metric() = m;
                f
            })
            .collect()
    }
}

fn rig_metrics(rig: &RigLive, now_ms: i64, judge: &StatusJudge, out: &mut [Vec<Metric>]) {
    let group = rig.group.as_deref().unwrap_or("");
    let rig_labels = [
        ("rig", rig.uid.as_str()),
        ("name", rig.name.as_str()),
        ("group", group),
    ];
    let status = judge.status(rig, now_ms);
    let push = |out: &mut [Vec<Metric>], i: usize, l: &[(&str, &str)], v: f64| {
        out[i].push(sample(FAMILIES[i].2, labels(l), v));
    };
    push(out, 0, &rig_labels, flag(status != RigStatus::Offline));
    push(out, 1, &rig_labels, flag(status == RigStatus::Warning));
    push(out, 2, &rig_labels, flag(rig.connected));
    if let Some(seen) = rig.last_seen_ms {
        push(
            out,
            3,
            &rig_labels,
            ((now_ms - seen).max(0) as f64) / 1000.0,
        );
    }
    if let Some(offset) = rig.clock_offset_ms {
        push(
            out,
            CLOCK_OFFSET_FAMILY,
            &[("rig", rig.uid.as_str())],
            offset as f64 / 1000.0,
        );
    }
    let Some(s) = &rig.sample else {
        return;
    };
    push(out, 4, &rig_labels, s.rig.uptime_secs as f64);
    push(out, 5, &rig_labels, s.rig.load_1m);
    let pool = s.pool.as_ref().map_or("", |p| p.url.as_str());
    for d in &s.devices {
        let l = [
            ("rig", rig.uid.as_str()),
            ("name", rig.name.as_str()),
            ("group", group),
            ("device", d.device_id.as_str()),
            ("algorithm", d.algorithm.as_str()),
            ("pool", pool),
        ];
        push(out, 6, &l, d.hashrate_1m_hps);
        push(out, 7, &l, d.accepted as f64);
        push(out, 8, &l, d.rejected as f64);
        push(out, 9, &l, d.stale as f64);
        push(out, 10, &l, d.hardware_errors as f64);
        if let Some(t) = d.temperature_celsius {
            push(out, 11, &l, f64::from(t));
        }
        if let Some(f) = d.fan_percent {
            push(out, 12, &l, f64::from(f) / 100.0);
        }
        if let Some(p) = d.power_watts {
            push(out, 13, &l, f64::from(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::live::RigLive;
    use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};

    #[test]
    fn fleet_series_follow_the_live_state() {
        let live = Arc::new(LiveState::default());
        let m = ServerMetrics::new(live.clone(), Arc::default()).unwrap();
        let now = crate::now_ms();
        live.insert(RigLive {
            id: 7,
            uid: "rig-7".into(),
            name: "shelf \"A\"\n".into(),
            group: Some("east".into()),
            tags: vec![],
            pending_approval: false,
            flagged: None,
            connected: true,
            last_seen_ms: Some(now),
            sample: Some(Sample {
                seq: 1,
                time_unix_ms: now,
                rig: RigSample::default(),
                devices: vec![DeviceSample {
                    device_id: "0000:01:00.0".into(),
                    algorithm: "sha256d".into(),
                    enabled: true,
                    hashrate_5s_hps: 5.0,
                    hashrate_1m_hps: 4.0,
                    accepted: 12,
                    rejected: 1,
                    stale: 0,
                    hardware_errors: 0,
                    temperature_celsius: Some(61.5),
                    fan_rpm: None,
                    fan_percent: Some(40.0),
                    power_watts: Some(120.0),
                    core_clock_mhz: None,
                    memory_clock_mhz: None,
                }],
                pool: Some(PoolState {
                    url: "stratum+tcp://pool:3333".into(),
                    user: "w".into(),
                    state: "alive".into(),
                    difficulty: 1.0,
                    priority: 0,
                }),
            }),
            agent_version: None,
            hostname: None,
            telemetry_interval_secs: 10,
            clock_offset_ms: Some(-1500),
        });
        let text = m.encode().unwrap();
        assert!(
            text.contains("# TYPE rigfleet_device_shares_accepted_total counter"),
            "{text}"
        );
        assert!(text.contains("device=\"0000:01:00.0\""), "{text}");
        assert!(text.contains("name=\"shelf \\\"A\\\"\\n\""), "{text}");
        assert!(text.contains("rigfleet_device_fan_ratio"), "{text}");
        assert!(
            text.contains("rigfleet_rig_clock_offset_seconds{rig=\"rig-7\"} -1.5"),
            "{text}"
        );
        assert!(
            text.contains("rigfleet_rig_online{") && text.contains("group=\"east\""),
            "{text}"
        );
        live.remove(7);
        let text = m.encode().unwrap();
        assert!(!text.contains("rig-7"), "{text}");
    }
}
