//! Rollups (raw → 1 minute → 1 hour) and retention.
//!
//! The writer marks every (rig, minute) it writes in `rollup_pending`, in the sample's own
//! transaction. [`run_rollups`] recomputes marked minutes from raw once they have ended (plus a
//! grace), so a late sample is merged by recomputing its bucket rather than patched in; the
//! recomputed minute marks its hour in `rollup_pending_hour`, and hours are rebuilt from their
//! minutes. A bucket's share counts are deltas of the cumulative counters, starting from the
//! last sample before the bucket; a counter that went down (agent restart, new config) counts
//! from zero. Samples of one rig are ordered by (time, stream, seq), so any arrival order of the
//! same samples gives the same rollups, equal to a recomputation from raw.
//!
//! Retention removes raw rows by whole minutes and never those of a minute still pending, marks
//! the buckets whose raw rows it removed (`raw_pruned`), and keeps the newest removed sample per
//! rig (`telemetry_pruned`) as the baseline of the first delta after it. A sample that arrives
//! for a bucket whose raw rows are gone is merged into the bucket (weighted) instead of
//! replacing it; its share counts are taken as already counted, since the delta of the sample
//! after it spans it.

use std::collections::{BTreeSet, HashMap};

use super::packed::{decode_raw, decode_rollup, encode_rollup, RawDevice, RawRecord, RollupDevice};
use super::row::RowExt;
use super::{dispatch, Store, StoreError, WriteBegin};

pub(crate) const MINUTE_MS: i64 = 60_000;
/// Raw rows of a minute still waiting for its rollup are kept by retention (the minute of
/// `ts_ms`, floored also for times before 1970).
const NOT_PENDING: &str =
    "NOT EXISTS (SELECT 1 FROM rollup_pending p WHERE p.rig_id = telemetry_raw.rig_id
     AND p.minute_ms = telemetry_raw.ts_ms - ((telemetry_raw.ts_ms % 60000 + 60000) % 60000))";
pub(crate) const HOUR_MS: i64 = 3_600_000;
/// A minute is rolled up this long after it ended, so samples in flight land first.
pub const ROLLUP_GRACE_MS: i64 = 30_000;
/// Buckets handled per transaction.
const BUCKETS_PER_TX: i64 = 200;

/// How long each resolution is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minute_ms: i64,
    pub hour_ms: i64,
}

impl Default for Retention {
    /// 6 hours raw, 7 days of minutes, 2 years of hours.
    fn default() -> Self {
        Retention {
            raw_ms: 6 * HOUR_MS,
            minute_ms: 7 * 24 * HOUR_MS,
            hour_ms: 730 * 24 * HOUR_MS,
        }
    }
}

/// What [`run_rollups`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollupStats {
    pub minutes: u64,
    pub hours: u64,
}

/// What [`prune`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub raw: u64,
    pub minute: u64,
    pub hour: u64,
}

/// Share counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub accepted: u64,
    pub rejected: u64,
    pub stale: u64,
    pub hardware_errors: u64,
}

fn delta(prev: u64, cur: u64) -> u64 {
    // A counter that went down was reset: everything it shows now is new.
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Turns cumulative counters into per-sample deltas, device by device.
#[derive(Default)]
pub(crate) struct DeltaTracker {
    last: HashMap<u16, Counters>,
}

impl DeltaTracker {
    /// Takes the sample just before the range as the starting point.
    pub(crate) fn seed(&mut self, rec: &RawRecord) {
        for d in &rec.devices {
            self.last.insert(d.slot, counters(d));
        }
    }

    /// Shares since the device's previous sample; zero for a device's first sample, whose
    /// starting point is unknown.
    pub(crate) fn step(&mut self, d: &RawDevice) -> Counters {
        let cur = counters(d);
        let out = match self.last.get(&d.slot) {
            Some(prev) => Counters {
                accepted: delta(prev.accepted, cur.accepted),
                rejected: delta(prev.rejected, cur.rejected),
                stale: delta(prev.stale, cur.stale),
                hardware_errors: delta(prev.hardware_errors, cur.hardware_errors),
            },
            None => Counters::default(),
        };
        self.last.insert(d.slot, cur);
        out
    }
}

fn counters(d: &RawDevice) -> Counters {
    Counters {
        accepted: d.accepted,
        rejected: d.rejected,
        stale: d.stale,
        hardware_errors: d.hardware_errors,
    }
}

#[derive(Default)]
struct Acc {
    samples: u64,
    hashrate: f64,
    max_temp: Option<f32>,
    fan: (f64, u64),
    power: (f64, u64),
    shares: Counters,
}

impl Acc {
    fn finish(&self, slot: u16) -> RollupDevice {
        let mean = |(sum, n): (f64, u64)| (n > 0).then(|| (sum / n as f64) as f32);
        RollupDevice {
            slot,
            samples: self.samples,
            avg_hashrate_hps: if self.samples > 0 {
                (self.hashrate / self.samples as f64) as f32
            } else {
                0.0
            },
            max_temperature: self.max_temp,
            avg_fan_percent: mean(self.fan),
            avg_power_watts: mean(self.power),
            accepted: self.shares.accepted,
            rejected: self.shares.rejected,
            stale: self.shares.stale,
            hardware_errors: self.shares.hardware_errors,
        }
    }

    fn add_counters(&mut self, c: Counters) {
        self.shares.accepted += c.accepted;
        self.shares.rejected += c.rejected;
        self.shares.stale += c.stale;
        self.shares.hardware_errors += c.hardware_errors;
    }
}

fn max_opt(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Aggregates one minute of raw samples (in time order) given the sample before the minute.
pub(crate) fn aggregate_raw(baseline: Option<&RawRecord>, rows: &[RawRecord]) -> Vec<RollupDevice> {
    let mut tracker = DeltaTracker::default();
    if let Some(b) = baseline {
        tracker.seed(b);
    }
    let mut acc: HashMap<u16, Acc> = HashMap::new();
    for rec in rows {
        for d in &rec.devices {
            let c = tracker.step(d);
            let a = acc.entry(d.slot).or_default();
            a.samples += 1;
            a.hashrate += f64::from(d.hashrate_5s_hps);
            a.max_temp = max_opt(a.max_temp, d.temperature_celsius);
            if let Some(f) = d.fan_percent {
                a.fan = (a.fan.0 + f64::from(f), a.fan.1 + 1);
            }
            if let Some(w) = d.power_watts {
                a.power = (a.power.0 + f64::from(w), a.power.1 + 1);
            }
            a.add_counters(c);
        }
    }
    let mut out: Vec<RollupDevice> = acc.iter().map(|(slot, a)| a.finish(*slot)).collect();
    out.sort_by_key(|d| d.slot);
    out
}

/// Merges buckets into a coarser one, averages weighted by sample counts.
pub(crate) fn merge_buckets(buckets: &[Vec<RollupDevice>]) -> Vec<RollupDevice> {
    let mut acc: HashMap<u16, Acc> = HashMap::new();
    for b in buckets {
        for d in b {
            let a = acc.entry(d.slot).or_default();
            let w = d.samples;
            a.samples += w;
            a.hashrate += f64::from(d.avg_hashrate_hps) * w as f64;
            a.max_temp = max_opt(a.max_temp, d.max_temperature);
            if let Some(f) = d.avg_fan_percent {
                a.fan = (a.fan.0 + f64::from(f) * w as f64, a.fan.1 + w);
            }
            if let Some(p) = d.avg_power_watts {
                a.power = (a.power.0 + f64::from(p) * w as f64, a.power.1 + w);
            }
            a.add_counters(Counters {
                accepted: d.accepted,
                rejected: d.rejected,
                stale: d.stale,
                hardware_errors: d.hardware_errors,
            });
        }
    }
    let mut out: Vec<RollupDevice> = acc.iter().map(|(slot, a)| a.finish(*slot)).collect();
    out.sort_by_key(|d| d.slot);
    out
}

fn corrupt(e: super::packed::PackError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Recomputes every pending minute that ended (plus the grace) before `now_ms`, then every hour
/// whose minutes changed.
pub async fn run_rollups(store: &Store, now_ms: i64) -> Result<RollupStats, StoreError> {
    let mut stats = RollupStats::default();
    loop {
        let n = store
            .rollup_minutes(now_ms - MINUTE_MS - ROLLUP_GRACE_MS)
            .await?;
        stats.minutes += n;
        if n == 0 {
            break;
        }
    }
    loop {
        let n = store.rollup_hours().await?;
        stats.hours += n;
        if n == 0 {
            break;
        }
    }
    Ok(stats)
}

/// Deletes what is older than the retention of each resolution, rig by rig. Raw rows go by
/// whole minutes, never those of a minute waiting for its rollup; the buckets they leave are
/// marked `raw_pruned`, and the newest removed sample is kept as the rig's baseline.
pub async fn prune(
    store: &Store,
    now_ms: i64,
    retention: &Retention,
) -> Result<PruneStats, StoreError> {
    let rigs: Vec<i64> =
        dispatch!(store, p => sqlx::query_scalar("SELECT id FROM rigs").fetch_all(p).await?);
    let mut stats = PruneStats::default();
    // Whole minutes only: a minute's raw rows are either all kept or all gone, which is how
    // the rollup job tells a late sample in a pruned minute from a complete minute.
    let raw_cutoff = (now_ms - retention.raw_ms).div_euclid(MINUTE_MS) * MINUTE_MS;
    for rig in rigs {
        dispatch!(store, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let newest: Option<(i64, Vec<u8>)> = sqlx::query(&format!(
                "SELECT ts_ms, data FROM telemetry_raw WHERE rig_id = $1 AND ts_ms < $2 AND {NOT_PENDING}
                 ORDER BY ts_ms DESC, stream_id DESC, seq DESC LIMIT 1"))
                .bind(rig).bind(raw_cutoff).fetch_optional(&mut *tx).await?
                .map(|r| Ok::<_, StoreError>((r.i64("ts_ms")?, r.bytes("data")?))).transpose()?;
            let removed = sqlx::query(&format!(
                "DELETE FROM telemetry_raw WHERE rig_id = $1 AND ts_ms < $2 AND {NOT_PENDING}"))
                .bind(rig).bind(raw_cutoff).execute(&mut *tx).await?.rows_affected();
            if removed > 0 {
                sqlx::query(
                    "UPDATE telemetry_1m SET raw_pruned = TRUE WHERE rig_id = $1 AND ts_ms < $2 AND NOT raw_pruned
                     AND NOT EXISTS (SELECT 1 FROM rollup_pending p WHERE p.rig_id = telemetry_1m.rig_id AND p.minute_ms = telemetry_1m.ts_ms)")
                    .bind(rig).bind(raw_cutoff).execute(&mut *tx).await?;
            }
            if let Some((ts, data)) = newest {
                sqlx::query(
                    "INSERT INTO telemetry_pruned (rig_id, pruned_before_ms, base_ts_ms, base_data) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (rig_id) DO UPDATE SET
                       pruned_before_ms = CASE WHEN telemetry_pruned.pruned_before_ms < excluded.pruned_before_ms
                                               THEN excluded.pruned_before_ms ELSE telemetry_pruned.pruned_before_ms END,
                       base_ts_ms = CASE WHEN telemetry_pruned.base_ts_ms IS NULL OR telemetry_pruned.base_ts_ms < excluded.base_ts_ms
                                         THEN excluded.base_ts_ms ELSE telemetry_pruned.base_ts_ms END,
                       base_data = CASE WHEN telemetry_pruned.base_ts_ms IS NULL OR telemetry_pruned.base_ts_ms < excluded.base_ts_ms
                                        THEN excluded.base_data ELSE telemetry_pruned.base_data END")
                    .bind(rig).bind(raw_cutoff).bind(ts).bind(data).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            stats.raw += removed;
            stats.minute += sqlx::query("DELETE FROM telemetry_1m WHERE rig_id = $1 AND ts_ms < $2")
                .bind(rig).bind(now_ms - retention.minute_ms).execute(p).await?.rows_affected();
            stats.hour += sqlx::query("DELETE FROM telemetry_1h WHERE rig_id = $1 AND ts_ms < $2")
                .bind(rig).bind(now_ms - retention.hour_ms).execute(p).await?.rows_affected();
        });
    }
    Ok(stats)
}

impl Store {
    /// One transaction over up to BUCKETS_PER_TX pending minutes that started at or before
    /// `latest_start`; returns how many minutes it recomputed.
    async fn rollup_minutes(&self, latest_start: i64) -> Result<u64, StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let rows = sqlx::query(
                "SELECT rig_id, minute_ms FROM rollup_pending WHERE minute_ms <= $1
                 ORDER BY rig_id, minute_ms LIMIT $2",
            )
            .bind(latest_start).bind(BUCKETS_PER_TX).fetch_all(&mut *tx).await?;
            let pending = rows.iter().map(|r| Ok((r.i64("rig_id")?, r.i64("minute_ms")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            if pending.is_empty() {
                return Ok(0);
            }
            // A late sample also changes the delta of the next sample after it, which may sit in
            // a later, already rolled-up minute (after a gap): recompute that minute too.
            let mut todo: BTreeSet<(i64, i64)> = BTreeSet::new();
            for (rig, minute) in &pending {
                sqlx::query("DELETE FROM rollup_pending WHERE rig_id = $1 AND minute_ms = $2")
                    .bind(rig).bind(minute).execute(&mut *tx).await?;
                todo.insert((*rig, *minute));
                let next: Option<i64> = sqlx::query_scalar(
                    "SELECT ts_ms FROM telemetry_raw WHERE rig_id = $1 AND ts_ms >= $2 ORDER BY ts_ms LIMIT 1")
                    .bind(rig).bind(minute + MINUTE_MS).fetch_optional(&mut *tx).await?;
                if let Some(ts) = next {
                    let m = super::telemetry::minute_of(ts);
                    if m <= latest_start {
                        todo.insert((*rig, m));
                    }
                }
            }
            for (rig, minute) in &todo {
                let blobs: Vec<Vec<u8>> = sqlx::query_scalar(
                    "SELECT data FROM telemetry_raw WHERE rig_id = $1 AND ts_ms >= $2 AND ts_ms < $3
                     ORDER BY ts_ms, stream_id, seq")
                    .bind(rig).bind(minute).bind(minute + MINUTE_MS).fetch_all(&mut *tx).await?;
                if blobs.is_empty() {
                    // Nothing left to recompute from (the rig's rows went with it): keep the bucket.
                    continue;
                }
                let recs = blobs.iter().map(|b| decode_raw(b)).collect::<Result<Vec<_>, _>>().map_err(corrupt)?;
                let existing = sqlx::query("SELECT samples, data, raw_pruned FROM telemetry_1m WHERE rig_id = $1 AND ts_ms = $2")
                    .bind(rig).bind(minute).fetch_optional(&mut *tx).await?;
                let pruned_bucket = match &existing {
                    Some(row) if row.flag("raw_pruned")? => Some((row.i64("samples")?, decode_rollup(&row.bytes("data")?).map_err(corrupt)?)),
                    _ => None,
                };
                let (devices, samples, raw_pruned) = if let Some((had, old)) = pruned_bucket {
                    // Retention removed this minute's raw rows: what is here arrived later. Merge
                    // it into the bucket, and drop those rows so they are never merged twice.
                    let mut late = aggregate_raw(None, &recs);
                    for d in &mut late {
                        d.accepted = 0;
                        d.rejected = 0;
                        d.stale = 0;
                        d.hardware_errors = 0;
                    }
                    sqlx::query("DELETE FROM telemetry_raw WHERE rig_id = $1 AND ts_ms >= $2 AND ts_ms < $3")
                        .bind(rig).bind(minute).bind(minute + MINUTE_MS).execute(&mut *tx).await?;
                    let n = i64::try_from(recs.len()).unwrap_or(i64::MAX);
                    (merge_buckets(&[old, late]), had.saturating_add(n), true)
                } else {
                    let base: Option<(i64, Vec<u8>)> = sqlx::query(
                        "SELECT ts_ms, data FROM telemetry_raw WHERE rig_id = $1 AND ts_ms < $2
                         ORDER BY ts_ms DESC, stream_id DESC, seq DESC LIMIT 1")
                        .bind(rig).bind(minute).fetch_optional(&mut *tx).await?
                        .map(|r| Ok::<_, StoreError>((r.i64("ts_ms")?, r.bytes("data")?))).transpose()?;
                    // The newest sample retention removed is the baseline when no newer raw row
                    // precedes the minute.
                    let kept: Option<(i64, Vec<u8>)> = sqlx::query(
                        "SELECT base_ts_ms, base_data FROM telemetry_pruned WHERE rig_id = $1 AND base_ts_ms < $2")
                        .bind(rig).bind(minute).fetch_optional(&mut *tx).await?
                        .map(|r| Ok::<_, StoreError>((r.i64("base_ts_ms")?, r.bytes("base_data")?))).transpose()?;
                    let base = match (base, kept) {
                        (Some(b), Some(k)) => Some(if k.0 > b.0 { k } else { b }),
                        (b, k) => b.or(k),
                    };
                    let base = base.map(|(_, b)| decode_raw(&b)).transpose().map_err(corrupt)?;
                    let n = i64::try_from(recs.len()).unwrap_or(i64::MAX);
                    (aggregate_raw(base.as_ref(), &recs), n, false)
                };
                sqlx::query(
                    "INSERT INTO telemetry_1m (rig_id, ts_ms, samples, data, raw_pruned) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (rig_id, ts_ms) DO UPDATE SET samples = excluded.samples, data = excluded.data,
                       raw_pruned = excluded.raw_pruned",
                )
                .bind(rig).bind(minute).bind(samples).bind(encode_rollup(&devices)).bind(raw_pruned)
                .execute(&mut *tx).await?;
                sqlx::query("INSERT INTO rollup_pending_hour (rig_id, hour_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(rig).bind(minute.div_euclid(HOUR_MS) * HOUR_MS).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(todo.len() as u64)
        })
    }

    /// One transaction over up to BUCKETS_PER_TX pending hours.
    async fn rollup_hours(&self) -> Result<u64, StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let rows = sqlx::query("SELECT rig_id, hour_ms FROM rollup_pending_hour ORDER BY rig_id, hour_ms LIMIT $1")
                .bind(BUCKETS_PER_TX).fetch_all(&mut *tx).await?;
            let pending = rows.iter().map(|r| Ok((r.i64("rig_id")?, r.i64("hour_ms")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            for (rig, hour) in &pending {
                sqlx::query("DELETE FROM rollup_pending_hour WHERE rig_id = $1 AND hour_ms = $2")
                    .bind(rig).bind(hour).execute(&mut *tx).await?;
                let rows = sqlx::query(
                    "SELECT samples, data FROM telemetry_1m WHERE rig_id = $1 AND ts_ms >= $2 AND ts_ms < $3")
                    .bind(rig).bind(hour).bind(hour + HOUR_MS).fetch_all(&mut *tx).await?;
                if rows.is_empty() {
                    continue;
                }
                let mut samples = 0i64;
                let mut buckets = Vec::with_capacity(rows.len());
                for r in &rows {
                    samples = samples.saturating_add(r.i64("samples")?);
                    buckets.push(decode_rollup(&r.bytes("data")?).map_err(corrupt)?);
                }
                sqlx::query(
                    "INSERT INTO telemetry_1h (rig_id, ts_ms, samples, data) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (rig_id, ts_ms) DO UPDATE SET samples = excluded.samples, data = excluded.data",
                )
                .bind(rig).bind(hour).bind(samples).bind(encode_rollup(&merge_buckets(&buckets)))
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(pending.len() as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::rigs::tests::one_rig;
    use super::super::row::RowExt;
    use super::super::telemetry::tests::{sample, write};
    use super::super::test_db::test_backends;
    use super::*;

    const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;

    fn accepted(h: &super::super::History) -> Vec<u64> {
        h.points.iter().map(|p| p.accepted).collect()
    }

    #[test]
    fn deltas_count_resets_from_zero() {
        let recs: Vec<RawRecord> = [100u64, 110, 5, 12, 12]
            .iter()
            .map(|a| RawRecord {
                rig: Default::default(),
                pool: None,
                devices: vec![RawDevice {
                    slot: 0,
                    algorithm: "x".into(),
                    enabled: true,
                    hashrate_5s_hps: 1.0,
                    hashrate_1m_hps: 1.0,
                    accepted: *a,
                    rejected: 0,
                    stale: 0,
                    hardware_errors: 0,
                    temperature_celsius: None,
                    fan_rpm: None,
                    fan_percent: None,
                    power_watts: Some(10.0),
                    core_clock_mhz: None,
                    memory_clock_mhz: None,
                }],
            })
            .collect();
        let agg = aggregate_raw(Some(&recs[0]), &recs[1..]);
        assert_eq!(
            (
                agg[0].accepted,
                agg[0].samples,
                agg[0].avg_power_watts,
                agg[0].max_temperature
            ),
            (10 + 5 + 7, 4, Some(10.0), None)
        );
        let no_base = aggregate_raw(None, &recs);
        assert_eq!(no_base[0].accepted, 22);
        let merged = merge_buckets(&[agg.clone(), no_base]);
        assert_eq!((merged[0].accepted, merged[0].samples), (44, 9));
    }

    #[tokio::test]
    async fn rollups_handle_counter_resets_and_grace() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            // Agent restarts after seq 3: counters start again from 0.
            let counts = [0u64, 10, 20, 30, 4, 9];
            let samples: Vec<_> = counts
                .iter()
                .enumerate()
                .map(|(i, a)| sample(i as u64 + 1, T0 + i as i64 * 10_000, 1, *a))
                .collect();
            write(s, rig, &samples).await;
            // The minute has not ended (plus grace) yet: nothing is rolled up.
            assert_eq!(
                run_rollups(s, T0 + 60_000).await.unwrap(),
                RollupStats::default()
            );
            let stats = run_rollups(s, T0 + 60_000 + ROLLUP_GRACE_MS).await.unwrap();
            assert_eq!(
                stats,
                RollupStats {
                    minutes: 1,
                    hours: 1
                }
            );
            let m = s.history(rig, T0, T0 + 7 * HOUR_MS).await.unwrap();
            assert_eq!(accepted(&m), [10 + 10 + 10 + 4 + 5]);
            assert_eq!(m.points[0].devices[0].hashrate_hps, 1000.0);
            // Running again finds nothing to do.
            assert_eq!(
                run_rollups(s, T0 + HOUR_MS).await.unwrap(),
                RollupStats::default()
            );
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn late_samples_are_merged_into_rolled_up_buckets() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            // Minutes 0 and 1 with a gap: seq 1 at 0 s, seq 2 at 10 s, then seq 4 at 70 s.
            write(
                s,
                rig,
                &[
                    sample(1, T0, 1, 0),
                    sample(2, T0 + 10_000, 1, 10),
                    sample(4, T0 + 70_000, 1, 40),
                ],
            )
            .await;
            run_rollups(s, T0 + 10 * 60_000).await.unwrap();
            let m = s.history(rig, T0, T0 + 7 * HOUR_MS).await.unwrap();
            assert_eq!(accepted(&m), [10, 30]);
            // seq 3 (counter 25, at 50 s) arrives late, after both minutes were rolled up.
            let out = write(s, rig, &[sample(3, T0 + 50_000, 1, 25)]).await;
            assert_eq!(out.inserted, 1);
            let stats = run_rollups(s, T0 + 10 * 60_000).await.unwrap();
            // Its minute and the minute holding the next sample (whose delta changed) are redone.
            assert_eq!(stats.minutes, 2);
            let m = s.history(rig, T0, T0 + 7 * HOUR_MS).await.unwrap();
            assert_eq!(accepted(&m), [25, 15]);
            let hours = s.history(rig, T0, T0 + 30 * 24 * HOUR_MS).await.unwrap();
            assert_eq!((hours.points.len(), hours.points[0].accepted), (1, 40));
            assert_eq!(m.points[0].devices[0].hashrate_hps, 1000.0);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn samples_later_than_raw_retention_merge_into_their_minute() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            write(
                s,
                rig,
                &[
                    sample(1, T0, 1, 0),
                    sample(2, T0 + 10_000, 1, 10),
                    sample(4, T0 + 30_000, 1, 30),
                ],
            )
            .await;
            run_rollups(s, T0 + 5 * 60_000).await.unwrap();
            let now = T0 + 10 * HOUR_MS;
            prune(s, now, &Retention::default()).await.unwrap();
            assert_eq!(s.raw_seq_stats(rig).await.unwrap().0, 0);
            // seq 3 arrives 10 hours late, into a minute whose raw rows are gone.
            write(s, rig, &[sample(3, T0 + 20_000, 1, 20)]).await;
            run_rollups(s, now).await.unwrap();
            let m = s.history(rig, T0, T0 + 7 * HOUR_MS).await.unwrap();
            assert_eq!(m.points.len(), 1);
            // The bucket keeps its 30 shares and now counts 4 samples (the late one's delta is
            // unknown without its predecessor).
            assert_eq!((m.points[0].accepted, m.points[0].devices.len()), (30, 1));
            let h = s.history(rig, T0, T0 + 30 * 24 * HOUR_MS).await.unwrap();
            assert_eq!(h.points[0].accepted, 30);
            let samples: i64 = super::super::dispatch!(s, p => sqlx::query_scalar("SELECT samples FROM telemetry_1m WHERE rig_id = $1")
                .bind(rig).fetch_one(p).await.unwrap());
            assert_eq!(samples, 4);
            // Running again does not merge the late sample twice.
            write(s, rig, &[]).await;
            run_rollups(s, now + HOUR_MS).await.unwrap();
            assert_eq!(s.raw_seq_stats(rig).await.unwrap().0, 0);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn prune_keeps_each_resolution_for_its_retention() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let other = one_rig(s, "b", 1).await;
            let samples: Vec<_> = (0..30)
                .map(|i| sample(i + 1, T0 + i as i64 * 10 * 60_000, 1, i))
                .collect();
            write(s, rig, &samples).await;
            write(s, other, &samples[..3]).await;
            run_rollups(s, T0 + 10 * HOUR_MS).await.unwrap();
            // 30 samples 10 minutes apart span 4 h 50 min: 5 hours, 30 minutes.
            let ret = Retention {
                raw_ms: HOUR_MS,
                minute_ms: 2 * HOUR_MS,
                hour_ms: 3 * HOUR_MS,
            };
            let now = T0 + 5 * HOUR_MS;
            let stats = prune(s, now, &ret).await.unwrap();
            // Kept: raw at or after 4 h (6, none of rig b), minutes from 3 h (12), hours from 2 h (3).
            assert_eq!(
                stats,
                PruneStats {
                    raw: 24 + 3,
                    minute: 18 + 3,
                    hour: 2 + 1
                }
            );
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (6, Some(25), Some(30)));
            assert_eq!(s.raw_seq_stats(other).await.unwrap().0, 0);
            assert_eq!(s.history(rig, T0, now).await.unwrap().points.len(), 6);
            assert_eq!(prune(s, now, &ret).await.unwrap(), PruneStats::default());
            db.cleanup().await;
        }
    }

    /// Every 1-minute and 1-hour bucket of a rig: (resolution, start, samples, packed data).
    async fn buckets(s: &Store, rig: i64) -> Vec<(&'static str, i64, i64, Vec<u8>)> {
        let mut out = Vec::new();
        for table in ["telemetry_1m", "telemetry_1h"] {
            let sql = format!(
                "SELECT ts_ms, samples, data FROM {table} WHERE rig_id = $1 ORDER BY ts_ms"
            );
            let rows = super::super::dispatch!(s, p => {
                let rows = sqlx::query(&sql).bind(rig).fetch_all(p).await.unwrap();
                rows.iter()
                    .map(|r| (r.i64("ts_ms").unwrap(), r.i64("samples").unwrap(), r.bytes("data").unwrap()))
                    .collect::<Vec<_>>()
            });
            out.extend(rows.into_iter().map(|(t, n, d)| (table, t, n, d)));
        }
        out
    }

    /// A small deterministic generator (xorshift64*), so a failing order can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Samples over ~70 minutes across an hour boundary: uneven gaps, some sharing a time,
    /// counters that grow and sometimes reset, hash rates and temperatures that vary.
    fn random_samples(rng: &mut Rng) -> Vec<rigfleet_proto::telemetry::Sample> {
        let mut out = Vec::new();
        let mut t = T0 + 40 * MINUTE_MS;
        let mut acc = 0u64;
        for seq in 1..=120u64 {
            if rng.below(8) != 0 {
                t += 5_000 + rng.below(60) as i64 * 1_000;
            }
            acc = if rng.below(25) == 0 {
                rng.below(5)
            } else {
                acc + rng.below(7)
            };
            let mut x = sample(seq, t, 2, acc);
            x.devices[0].hashrate_5s_hps = 1000.0 + rng.below(500) as f64;
            x.devices[1].temperature_celsius = Some(40.0 + rng.below(40) as f32);
            out.push(x);
        }
        out
    }

    #[tokio::test]
    async fn rollups_equal_a_recomputation_whatever_the_arrival_order() {
        for db in test_backends().await {
            let s = &db.store;
            let far = T0 + 10 * 24 * HOUR_MS;
            let mut rng = Rng(0x5eed_1234_abcd_0001);
            let samples = random_samples(&mut rng);
            // The reference: everything at once, in order, rolled up once.
            let reference = one_rig(s, "reference", 2).await;
            write(s, reference, &samples).await;
            run_rollups(s, far).await.unwrap();
            let want = buckets(s, reference).await;
            assert!(want.len() > 10, "{}", want.len());
            for round in 0..6 {
                let rig = one_rig(s, &format!("order{round}"), 2).await;
                let mut order: Vec<usize> = (0..samples.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut i = 0;
                while i < order.len() {
                    let n = 1 + rng.below(15) as usize;
                    let mut batch: Vec<_> = order[i..(i + n).min(order.len())]
                        .iter()
                        .map(|&k| samples[k].clone())
                        .collect();
                    batch.sort_by_key(|x| x.seq);
                    write(s, rig, &batch).await;
                    // Roll up between arrivals too, so late samples land in computed buckets.
                    if rng.below(2) == 0 {
                        run_rollups(s, far).await.unwrap();
                    }
                    i += n;
                }
                run_rollups(s, far).await.unwrap();
                assert_eq!(buckets(s, rig).await, want, "arrival order {round}");
            }
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn a_late_part_merges_into_a_pruned_minute_however_large() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            write(
                s,
                rig,
                &[sample(1, T0, 1, 0), sample(2, T0 + 10_000, 1, 10)],
            )
            .await;
            run_rollups(s, T0 + 5 * MINUTE_MS).await.unwrap();
            let now = T0 + 10 * HOUR_MS;
            prune(s, now, &Retention::default()).await.unwrap();
            // Three samples arrive late for that minute: more than it held on time.
            write(
                s,
                rig,
                &[
                    sample(3, T0 + 20_000, 1, 20),
                    sample(4, T0 + 30_000, 1, 30),
                    sample(5, T0 + 40_000, 1, 40),
                ],
            )
            .await;
            run_rollups(s, now).await.unwrap();
            let b = buckets(s, rig).await;
            assert_eq!((b[0].0, b[0].2), ("telemetry_1m", 5), "{b:?}");
            let m = s.history(rig, T0, T0 + 7 * HOUR_MS).await.unwrap();
            // The on-time part's 10 shares stay; the late ones' shares are spanned by the delta
            // of the sample after them, not counted twice.
            assert_eq!(m.points[0].accepted, 10);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn the_first_delta_after_retention_keeps_its_pruned_baseline() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            let ret = Retention {
                raw_ms: HOUR_MS,
                ..Retention::default()
            };
            // One sample an hour before the other: retention will remove the first.
            write(s, rig, &[sample(1, T0, 1, 100)]).await;
            write(s, rig, &[sample(2, T0 + HOUR_MS + 10_000, 1, 130)]).await;
            run_rollups(s, T0 + 2 * HOUR_MS).await.unwrap();
            prune(s, T0 + 2 * HOUR_MS - 30 * MINUTE_MS, &ret)
                .await
                .unwrap();
            assert_eq!(s.raw_seq_stats(rig).await.unwrap(), (1, Some(2), Some(2)));
            // A late sample in the second sample's minute makes it recompute from raw: its first
            // delta still counts from the pruned sample (30 shares), not from nothing.
            write(s, rig, &[sample(3, T0 + HOUR_MS + 20_000, 1, 135)]).await;
            run_rollups(s, T0 + 3 * HOUR_MS).await.unwrap();
            let raw = s
                .history(rig, T0 + HOUR_MS, T0 + HOUR_MS + 2 * MINUTE_MS)
                .await
                .unwrap();
            assert_eq!(accepted(&raw), [30, 5]);
            let minutes = s
                .history(rig, T0 + HOUR_MS, T0 + 8 * HOUR_MS)
                .await
                .unwrap();
            assert_eq!(minutes.resolution, super::super::Resolution::Minute);
            assert_eq!(accepted(&minutes), [35]);
            db.cleanup().await;
        }
    }
}
