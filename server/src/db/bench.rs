//! Measurements that print numbers (never timed assertions). Run with
//! `cargo test -p rigfleet-server --release db::bench -- --ignored --nocapture`.

use std::collections::HashMap;
use std::time::Instant;

use super::packed::{encode_rollup, RollupDevice};
use super::rigs::tests::one_rig;
use super::rollup::{HOUR_MS, MINUTE_MS};
use super::telemetry::tests::{legacy_stream, plain, sample};
use super::telemetry::StreamSamples;
use super::test_db::test_backends;
use super::{dispatch, Store};

const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;

/// A realistic bucket: 8 devices with varying values and small share deltas.
fn bucket(samples: u64, i: u64) -> Vec<u8> {
    let devices: Vec<RollupDevice> = (0..8u16)
        .map(|d| {
            let wobble = ((i * 7919 + u64::from(d) * 104_729) % 1000) as f32 / 1000.0;
            RollupDevice {
                slot: d,
                samples,
                avg_hashrate_hps: 7.6e7 * (1.0 + wobble / 50.0),
                max_temperature: Some(60.0 + wobble * 10.0),
                avg_fan_percent: Some(50.0 + wobble * 20.0),
                avg_power_watts: Some(120.0 + wobble * 15.0),
                accepted: samples * 3 + i % 5,
                rejected: i % 3 / 2,
                stale: i % 7 / 6,
                hardware_errors: 0,
            }
        })
        .collect();
    encode_rollup(&devices)
}

async fn insert_rollups(s: &Store, table: &str, rows: &[(i64, i64, i64, Vec<u8>)]) {
    for chunk in rows.chunks(1000) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, ${}, ${}, ${})",
                    4 * i + 1,
                    4 * i + 2,
                    4 * i + 3,
                    4 * i + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} (rig_id, ts_ms, samples, data) VALUES {}",
            values.join(", ")
        );
        dispatch!(s, p => {
            let mut q = sqlx::query(&sql);
            for (rig, ts, n, blob) in chunk {
                q = q.bind(*rig).bind(*ts).bind(*n).bind(blob.as_slice());
            }
            q.execute(p).await.unwrap();
        });
    }
}

/// Bytes of the three telemetry tables (PostgreSQL: heap, TOAST and indexes).
async fn telemetry_bytes(s: &Store) -> u64 {
    match s.kind() {
        super::DbKind::Sqlite => s.db_size_bytes().await.unwrap(),
        super::DbKind::Postgres => {
            let v: i64 = dispatch!(s, p => sqlx::query_scalar(
                "SELECT (pg_total_relation_size('telemetry_raw') + pg_total_relation_size('telemetry_1m')
                         + pg_total_relation_size('telemetry_1h'))::BIGINT")
                .fetch_one(p).await.unwrap());
            v as u64
        }
    }
}

/// Fills `RIGS` (default 10) 8-device rigs with the steady state of the default retention
/// (2,160 raw samples, 10,080 minutes, 17,520 hours each), rigs interleaved in time order as
/// the writer and the rollup job would insert them, and prints bytes per rig.
#[tokio::test]
#[ignore = "measurement; prints numbers"]
async fn steady_state_size_per_rig() {
    let n_rigs: usize = std::env::var("RIGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for db in test_backends().await {
        let s = &db.store;
        let empty = telemetry_bytes(s).await;
        let mut rigs = Vec::new();
        for i in 0..n_rigs {
            rigs.push(one_rig(s, &format!("rig{i}"), 8).await);
        }
        // Hours first (oldest), then minutes, then raw: the order time would have produced.
        for (table, count, step, per) in [
            ("telemetry_1h", 17_520, HOUR_MS, 360),
            ("telemetry_1m", 10_080, MINUTE_MS, 6),
        ] {
            let start = T0 - count as i64 * step;
            let mut rows = Vec::new();
            for i in 0..count as u64 {
                for &rig in &rigs {
                    rows.push((
                        rig,
                        start + i as i64 * step,
                        per as i64,
                        bucket(per, i + rig as u64),
                    ));
                }
            }
            insert_rollups(s, table, &rows).await;
        }
        let mut slots = HashMap::new();
        for &rig in &rigs {
            slots.insert(rig, s.device_slots(rig).await.unwrap());
        }
        let samples: Vec<Vec<_>> = (0..2160u64)
            .map(|i| {
                (0..n_rigs)
                    .map(|r| {
                        let mut x = sample(i + 1, T0 + i as i64 * 10_000, 8, 3 * i + r as u64);
                        for (d, dev) in x.devices.iter_mut().enumerate() {
                            let w = ((i * 31 + d as u64 * 17) % 100) as f64 / 100.0;
                            dev.hashrate_5s_hps = 7.6e7 * (1.0 + w / 30.0);
                            dev.temperature_celsius = Some(60.0 + w as f32 * 8.0);
                            dev.power_watts = Some(120.0 + w as f32 * 9.0);
                        }
                        x
                    })
                    .collect()
            })
            .collect();
        let mut streams = Vec::new();
        for &rig in &rigs {
            streams.push(legacy_stream(s, rig).await);
        }
        for chunk in samples.chunks(10) {
            let batch: Vec<StreamSamples<'_>> = rigs
                .iter()
                .enumerate()
                .map(|(r, &rig_id)| {
                    plain(rig_id, streams[r], chunk.iter().map(|per_rig| &per_rig[r]))
                })
                .collect();
            s.write_samples(&batch, &mut slots, 0).await.unwrap();
        }
        let full = telemetry_bytes(s).await;
        dispatch!(s, p => { sqlx::query("VACUUM").execute(p).await.unwrap(); });
        let vacuumed = telemetry_bytes(s).await;
        let per = |b: u64| b.saturating_sub(empty) as f64 / n_rigs as f64;
        println!(
            "SIZE {:?}: {n_rigs} rigs x 8 devices, 2160 raw + 10080 1m + 17520 1h rows each: {:.0} bytes/rig as inserted ({:.2} MB), {:.0} bytes/rig after VACUUM ({:.2} MB)",
            s.kind(),
            per(full),
            per(full) / 1e6,
            per(vacuumed),
            per(vacuumed) / 1e6
        );
        db.cleanup().await;
    }
}

/// 1,000 rigs x 8 devices, one sample each per 10 s: times batches of 1,000 samples (one
/// transaction each) on every backend.
#[tokio::test]
#[ignore = "measurement; prints numbers"]
async fn ingest_batch_speed() {
    for db in test_backends().await {
        let s = &db.store;
        let mut rigs = Vec::new();
        for i in 0..1000 {
            rigs.push(one_rig(s, &format!("rig{i}"), 8).await);
        }
        let mut slots = HashMap::new();
        for &rig in &rigs {
            slots.insert(rig, s.device_slots(rig).await.unwrap());
        }
        let mut streams = Vec::new();
        for &rig in &rigs {
            streams.push(legacy_stream(s, rig).await);
        }
        let mut times = Vec::new();
        for round in 0..20u64 {
            let samples: Vec<_> = rigs
                .iter()
                .map(|_| sample(round + 1, T0 + round as i64 * 10_000, 8, round * 3))
                .collect();
            let batch: Vec<StreamSamples<'_>> = rigs
                .iter()
                .zip(&streams)
                .zip(&samples)
                .map(|((&rig_id, &stream), x)| plain(rig_id, stream, [x]))
                .collect();
            let t = Instant::now();
            let out = s.write_samples(&batch, &mut slots, 0).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(out.inserted, 1000);
        }
        let t = Instant::now();
        let stats = super::run_rollups(s, T0 + 10 * MINUTE_MS).await.unwrap();
        let rollup_ms = t.elapsed().as_secs_f64() * 1000.0;
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "SPEED {:?}: batch of 1000 samples (1000 rigs x 8 devices): median {:.1} ms, min {:.1} ms, max {:.1} ms => {:.0} samples/s; rollup of {} minutes + {} hours: {:.0} ms",
            s.kind(),
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            1000.0 / (times[times.len() / 2] / 1000.0),
            stats.minutes,
            stats.hours,
            rollup_ms
        );
        db.cleanup().await;
    }
}
