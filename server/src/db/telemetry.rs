//! Telemetry rows: the batch write used by the ingest writer, and the reads (latest state,
//! history, seq statistics).

use std::collections::{BTreeSet, HashMap};

use rigfleet_proto::telemetry::{DeviceSample, Sample};

use super::packed::{decode_raw, decode_rollup, encode_raw, RawDevice, RawRecord, RollupDevice};
use super::rigs::{LOCK_RIG_SQL, UPSERT_DEVICE_SQL};
use super::rollup::{DeltaTracker, MINUTE_MS};
use super::row::RowExt;
use super::{
    dispatch, to_i64, to_u64, DevicePoint, History, HistoryPoint, Resolution, Store, StoreError,
    WriteBegin,
};

/// Ranges up to this long are read from raw samples.
pub const RAW_RANGE_MS: i64 = 6 * 3_600_000;
/// Ranges up to this long are read from 1-minute rollups; longer ones from 1-hour rollups.
pub const MINUTE_RANGE_MS: i64 = 7 * 24 * 3_600_000;

/// Rows per multi-row insert: 4 binds each, 4,000 binds per statement, far under SQLite's
/// 32,766 and PostgreSQL's 65,535.
const INSERT_CHUNK: usize = 1000;

/// A rig's device ids mapped to their slots.
pub type SlotMap = HashMap<String, u16>;

/// A sample to store, with its time on the server's clock.
#[derive(Debug, Clone, Copy)]
pub struct TimedSample<'a> {
    pub sample: &'a Sample,
    /// The sample's time on the server's clock (agent time + handshake offset, or the receive
    /// time when that is more than the skew bound off).
    pub ts_ms: i64,
    /// When the server received it.
    pub recv_ms: i64,
    /// `ts_ms` is the receive time because the agent's time was implausible.
    pub time_flagged: bool,
}

/// New samples of one telemetry stream for [`Store::write_samples`], and the stream's mark once
/// they are committed (computed by the writer, which knows which seqs are stored).
#[derive(Debug)]
pub struct StreamSamples<'a> {
    pub rig_id: i64,
    /// `telemetry_streams.id`.
    pub stream_id: i64,
    pub samples: Vec<TimedSample<'a>>,
    /// Every seq at or below it is stored or dropped once this transaction commits.
    pub committed_seq: u64,
    /// Seqs the agent reported dropped that the mark moves past in this transaction.
    pub dropped: u64,
}

/// A rig's telemetry stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub id: i64,
    pub rig_id: i64,
    pub stream_uid: String,
    pub committed_seq: u64,
    pub dropped: u64,
    pub created_at_ms: i64,
}

/// What one [`Store::write_samples`] transaction committed.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Raw rows inserted (a seq already stored in its stream is not).
    pub inserted: u64,
}

pub(crate) fn minute_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

fn stream_row<R: RowExt>(r: &R) -> Result<StreamRow, StoreError> {
    Ok(StreamRow {
        id: r.i64("id")?,
        rig_id: r.i64("rig_id")?,
        stream_uid: r.text("stream_uid")?,
        committed_seq: to_u64(r.i64("committed_seq")?, "committed_seq")?,
        dropped: to_u64(r.i64("dropped")?, "dropped")?,
        created_at_ms: r.i64("created_at_ms")?,
    })
}

fn corrupt(e: super::packed::PackError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn slot_of(slot: i16) -> Result<u16, StoreError> {
    u16::try_from(slot).map_err(|_| StoreError::Corrupt("negative device slot".into()))
}

fn to_record(s: &Sample, slots: impl Fn(&str) -> Option<u16>) -> Result<RawRecord, StoreError> {
    let devices = s
        .devices
        .iter()
        .map(|d| {
            Ok(RawDevice {
                slot: slots(d.device_id.as_str()).ok_or_else(|| {
                    StoreError::Invalid(format!("device {} has no slot", d.device_id))
                })?,
                algorithm: d.algorithm.clone(),
                enabled: d.enabled,
                hashrate_5s_hps: d.hashrate_5s_hps as f32,
                hashrate_1m_hps: d.hashrate_1m_hps as f32,
                accepted: d.accepted,
                rejected: d.rejected,
                stale: d.stale,
                hardware_errors: d.hardware_errors,
                temperature_celsius: d.temperature_celsius,
                fan_rpm: d.fan_rpm,
                fan_percent: d.fan_percent,
                power_watts: d.power_watts,
                core_clock_mhz: d.core_clock_mhz,
                memory_clock_mhz: d.memory_clock_mhz,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(RawRecord {
        rig: s.rig.clone(),
        pool: s.pool.clone(),
        devices,
    })
}

/// A device whose slot is missing from the devices table (should not happen: devices are only
/// deleted with their rig) keeps a recognisable name rather than failing the whole read.
fn device_name(names: &HashMap<u16, String>, slot: u16) -> String {
    names
        .get(&slot)
        .cloned()
        .unwrap_or_else(|| format!("slot-{slot}"))
}

fn to_sample(rec: RawRecord, seq: u64, ts_ms: i64, names: &HashMap<u16, String>) -> Sample {
    Sample {
        seq,
        time_unix_ms: ts_ms,
        rig: rec.rig,
        pool: rec.pool,
        devices: rec
            .devices
            .into_iter()
            .map(|d| DeviceSample {
                device_id: device_name(names, d.slot).as_str().into(),
                algorithm: d.algorithm,
                enabled: d.enabled,
                hashrate_5s_hps: f64::from(d.hashrate_5s_hps),
                hashrate_1m_hps: f64::from(d.hashrate_1m_hps),
                accepted: d.accepted,
                rejected: d.rejected,
                stale: d.stale,
                hardware_errors: d.hardware_errors,
                temperature_celsius: d.temperature_celsius,
                fan_rpm: d.fan_rpm,
                fan_percent: d.fan_percent,
                power_watts: d.power_watts,
                core_clock_mhz: d.core_clock_mhz,
                memory_clock_mhz: d.memory_clock_mhz,
            })
            .collect(),
    }
}

fn sum_opt(acc: Option<f32>, v: Option<f32>) -> Option<f32> {
    match (acc, v) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

fn max_opt(acc: Option<f32>, v: Option<f32>) -> Option<f32> {
    match (acc, v) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn avg(values: impl Iterator<Item = f32>) -> Option<f32> {
    let (sum, n) = values.fold((0.0f32, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f32)
}

fn raw_point(
    rec: &RawRecord,
    ts_ms: i64,
    tracker: &mut DeltaTracker,
    names: &HashMap<u16, String>,
) -> HistoryPoint {
    let mut p = HistoryPoint {
        ts_ms,
        hashrate_hps: 0.0,
        max_temperature: None,
        avg_fan_percent: avg(rec.devices.iter().filter_map(|d| d.fan_percent)),
        power_watts: None,
        accepted: 0,
        rejected: 0,
        stale: 0,
        hardware_errors: 0,
        devices: Vec::with_capacity(rec.devices.len()),
    };
    for d in &rec.devices {
        let delta = tracker.step(d);
        p.accepted += delta.accepted;
        p.rejected += delta.rejected;
        p.stale += delta.stale;
        p.hardware_errors += delta.hardware_errors;
        p.hashrate_hps += f64::from(d.hashrate_5s_hps);
        p.max_temperature = max_opt(p.max_temperature, d.temperature_celsius);
        p.power_watts = sum_opt(p.power_watts, d.power_watts);
        p.devices.push(DevicePoint {
            device_id: device_name(names, d.slot),
            hashrate_hps: f64::from(d.hashrate_5s_hps),
            temperature: d.temperature_celsius,
            fan_percent: d.fan_percent,
            power_watts: d.power_watts,
        });
    }
    p
}

fn rollup_point(
    devices: &[RollupDevice],
    ts_ms: i64,
    names: &HashMap<u16, String>,
) -> HistoryPoint {
    let mut p = HistoryPoint {
        ts_ms,
        hashrate_hps: 0.0,
        max_temperature: None,
        avg_fan_percent: avg(devices.iter().filter_map(|d| d.avg_fan_percent)),
        power_watts: None,
        accepted: 0,
        rejected: 0,
        stale: 0,
        hardware_errors: 0,
        devices: Vec::with_capacity(devices.len()),
    };
    for d in devices {
        p.accepted += d.accepted;
        p.rejected += d.rejected;
        p.stale += d.stale;
        p.hardware_errors += d.hardware_errors;
        p.hashrate_hps += f64::from(d.avg_hashrate_hps);
        p.max_temperature = max_opt(p.max_temperature, d.max_temperature);
        p.power_watts = sum_opt(p.power_watts, d.avg_power_watts);
        p.devices.push(DevicePoint {
            device_id: device_name(names, d.slot),
            hashrate_hps: f64::from(d.avg_hashrate_hps),
            temperature: d.max_temperature,
            fan_percent: d.avg_fan_percent,
            power_watts: d.avg_power_watts,
        });
    }
    p
}

impl Store {
    /// A rig's device slots.
    pub async fn device_slots(&self, rig_id: i64) -> Result<SlotMap, StoreError> {
        let mut map = SlotMap::new();
        for d in self.list_devices(rig_id).await? {
            map.insert(d.device_uid, slot_of(d.slot)?);
        }
        Ok(map)
    }

    async fn slot_names(&self, rig_id: i64) -> Result<HashMap<u16, String>, StoreError> {
        Ok(self
            .device_slots(rig_id)
            .await?
            .into_iter()
            .map(|(name, slot)| (slot, name))
            .collect())
    }

    /// The rig's telemetry stream `stream_uid`, created (mark 0) when the rig has none by that
    /// id: `Ok(None)` when the rig does not exist; the flag says whether it was created now.
    pub async fn telemetry_stream(
        &self,
        rig_id: i64,
        stream_uid: &str,
        now_ms: i64,
    ) -> Result<Option<(StreamRow, bool)>, StoreError> {
        const SELECT: &str = "SELECT id, rig_id, stream_uid, committed_seq, dropped, created_at_ms
                              FROM telemetry_streams WHERE rig_id = $1 AND stream_uid = $2";
        let found = dispatch!(self, p => {
            let row = sqlx::query(SELECT).bind(rig_id).bind(stream_uid).fetch_optional(p).await?;
            row.map(|r| stream_row(&r)).transpose()?
        });
        if let Some(row) = found {
            return Ok(Some((row, false)));
        }
        let exists: Option<i64> = dispatch!(self, p => sqlx::query_scalar("SELECT id FROM rigs WHERE id = $1")
            .bind(rig_id).fetch_optional(p).await?);
        if exists.is_none() {
            return Ok(None);
        }
        let inserted = dispatch!(self, p => sqlx::query(
            "INSERT INTO telemetry_streams (rig_id, stream_uid, committed_seq, dropped, created_at_ms)
             VALUES ($1, $2, 0, 0, $3) ON CONFLICT (rig_id, stream_uid) DO NOTHING")
            .bind(rig_id).bind(stream_uid).bind(now_ms).execute(p).await.map(|r| r.rows_affected()));
        let created = match inserted {
            Ok(n) => n > 0,
            // The rig was removed between the two statements.
            Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => return Ok(None),
            Err(e) => return Err(StoreError::Database(e)),
        };
        let row = dispatch!(self, p => {
            let row = sqlx::query(SELECT).bind(rig_id).bind(stream_uid).fetch_optional(p).await?;
            row.map(|r| stream_row(&r)).transpose()?
        });
        Ok(row.map(|r| (r, created)))
    }

    /// A rig's telemetry streams, oldest first.
    pub async fn telemetry_streams(&self, rig_id: i64) -> Result<Vec<StreamRow>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT id, rig_id, stream_uid, committed_seq, dropped, created_at_ms
                 FROM telemetry_streams WHERE rig_id = $1 ORDER BY id")
                .bind(rig_id).fetch_all(p).await?;
            rows.iter().map(stream_row).collect()
        })
    }

    /// Seqs of a stream stored above `mark` (out of order, behind a hole), ascending.
    pub async fn stream_seqs_above(
        &self,
        rig_id: i64,
        stream_id: i64,
        mark: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mark = to_i64(mark, "seq")?;
        let seqs: Vec<i64> = dispatch!(self, p => sqlx::query_scalar(
            "SELECT seq FROM telemetry_raw WHERE rig_id = $1 AND stream_id = $2 AND seq > $3 ORDER BY seq")
            .bind(rig_id).bind(stream_id).bind(mark).fetch_all(p).await?);
        seqs.into_iter().map(|v| to_u64(v, "seq")).collect()
    }

    /// Every stored (stream, seq) of a rig, ordered (tests and the fault harness compare what
    /// agents sent with what is stored).
    pub async fn stored_seqs(&self, rig_id: i64) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT s.stream_uid, r.seq FROM telemetry_raw r JOIN telemetry_streams s ON s.id = r.stream_id
                 WHERE r.rig_id = $1 ORDER BY s.id, r.seq")
                .bind(rig_id).fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.text("stream_uid")?, to_u64(r.i64("seq")?, "seq")?)))
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        Ok(rows)
    }

    /// Writes samples of several streams in ONE transaction: devices not in `slots` get a
    /// slot, raw rows are inserted in multi-row statements (a seq already stored in its stream
    /// is skipped), touched minutes are marked for the rollup job, each stream's mark moves to
    /// the writer's figure (never backwards) and each rig's `last_seq`/`last_seen_ms` follow.
    /// `slots` learns the new devices only once the transaction committed.
    pub async fn write_samples(
        &self,
        streams: &[StreamSamples<'_>],
        slots: &mut HashMap<i64, SlotMap>,
        now_ms: i64,
    ) -> Result<WriteOutcome, StoreError> {
        type Row = (i64, i64, i64, i64, i64, i64, i16, Vec<u8>);
        let mut outcome = WriteOutcome::default();
        let mut learned: Vec<(i64, String, u16)> = Vec::new();
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let mut rows: Vec<Row> = Vec::new();
            let mut minutes: BTreeSet<(i64, i64)> = BTreeSet::new();
            let mut marks: Vec<(i64, i64, i64, i64)> = Vec::new();
            let mut fresh_by_rig: HashMap<i64, SlotMap> = HashMap::new();
            for st in streams {
                let known = slots.get(&st.rig_id);
                for t in &st.samples {
                    for d in &t.sample.devices {
                        let id = d.device_id.as_str();
                        let fresh = fresh_by_rig.entry(st.rig_id).or_default();
                        if known.is_some_and(|k| k.contains_key(id)) || fresh.contains_key(id) {
                            continue;
                        }
                        if fresh.is_empty() {
                            sqlx::query(LOCK_RIG_SQL).bind(st.rig_id).execute(&mut *tx).await?;
                        }
                        let slot: i16 = sqlx::query_scalar(UPSERT_DEVICE_SQL)
                            .bind(st.rig_id).bind(id).bind("").bind("").bind("").bind(now_ms)
                            .fetch_one(&mut *tx).await?;
                        fresh.insert(id.to_string(), slot_of(slot)?);
                    }
                }
                let fresh = fresh_by_rig.get(&st.rig_id);
                for t in &st.samples {
                    let rec = to_record(t.sample, |id| {
                        known.and_then(|k| k.get(id)).or_else(|| fresh.and_then(|f| f.get(id))).copied()
                    })?;
                    rows.push((
                        st.rig_id,
                        st.stream_id,
                        to_i64(t.sample.seq, "seq")?,
                        t.ts_ms,
                        t.sample.time_unix_ms,
                        t.recv_ms,
                        i16::from(t.time_flagged),
                        encode_raw(&rec).map_err(corrupt)?,
                    ));
                    minutes.insert((st.rig_id, minute_of(t.ts_ms)));
                }
                marks.push((st.stream_id, st.rig_id, to_i64(st.committed_seq, "seq")?, to_i64(st.dropped, "dropped")?));
            }
            for (rig, fresh) in fresh_by_rig {
                learned.extend(fresh.into_iter().map(|(id, slot)| (rig, id, slot)));
            }
            for chunk in rows.chunks(INSERT_CHUNK) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let b = 8 * i;
                        format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8)
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO telemetry_raw (rig_id, stream_id, seq, ts_ms, agent_ts_ms, recv_ms, time_flag, data)
                     VALUES {} ON CONFLICT (rig_id, stream_id, seq) DO NOTHING",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (rig, stream, seq, ts, agent_ts, recv, flag, blob) in chunk {
                    q = q.bind(*rig).bind(*stream).bind(*seq).bind(*ts).bind(*agent_ts).bind(*recv).bind(*flag).bind(blob.as_slice());
                }
                outcome.inserted += q.persistent(false).execute(&mut *tx).await?.rows_affected();
            }
            let minutes: Vec<(i64, i64)> = minutes.into_iter().collect();
            for chunk in minutes.chunks(INSERT_CHUNK) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                    .collect();
                let sql = format!(
                    "INSERT INTO rollup_pending (rig_id, minute_ms) VALUES {} ON CONFLICT DO NOTHING",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (rig, minute) in chunk {
                    q = q.bind(*rig).bind(*minute);
                }
                q.persistent(false).execute(&mut *tx).await?;
            }
            // Stream order keeps row-lock order stable between concurrent writers.
            marks.sort_unstable();
            for (stream, _, mark, dropped) in &marks {
                sqlx::query(
                    "UPDATE telemetry_streams SET
                       committed_seq = CASE WHEN committed_seq < $2 THEN $2 ELSE committed_seq END,
                       dropped = dropped + $3
                     WHERE id = $1")
                    .bind(*stream).bind(*mark).bind(*dropped).execute(&mut *tx).await?;
            }
            let mut rigs: Vec<(i64, i64)> = marks.iter().map(|(_, rig, mark, _)| (*rig, *mark)).collect();
            // One row per rig; of several streams in one flush, the highest mark is shown.
            rigs.sort_unstable_by_key(|&(rig, mark)| (rig, std::cmp::Reverse(mark)));
            rigs.dedup_by_key(|(rig, _)| *rig);
            for chunk in rigs.chunks(INSERT_CHUNK) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
                    .collect();
                // VALUES columns are called column1, column2… on both databases. `last_seq` is
                // the mark of the stream the rig wrote last, for operators to read.
                let sql = format!(
                    "UPDATE rigs SET last_seen_ms = $1, last_seq = v.column2
                     FROM (VALUES {}) AS v WHERE rigs.id = v.column1",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(now_ms);
                for (rig, seq) in chunk {
                    q = q.bind(*rig).bind(*seq);
                }
                q.persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        for (rig, id, slot) in learned {
            slots.entry(rig).or_default().insert(id, slot);
        }
        Ok(outcome)
    }

    /// The newest raw sample of every rig (to rebuild the in-memory latest state after a
    /// restart), devices resolved back to their string ids.
    pub async fn latest_samples(&self) -> Result<Vec<(i64, Sample)>, StoreError> {
        let (rigs, devices) = dispatch!(self, p => {
            let rigs: Vec<i64> = sqlx::query_scalar("SELECT id FROM rigs ORDER BY id").fetch_all(p).await?;
            let rows = sqlx::query("SELECT rig_id, slot, device_uid FROM devices").fetch_all(p).await?;
            let devices = rows.iter().map(|r| Ok((r.i64("rig_id")?, slot_of(r.i16("slot")?)?, r.text("device_uid")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            (rigs, devices)
        });
        let mut names: HashMap<i64, HashMap<u16, String>> = HashMap::new();
        for (rig, slot, uid) in devices {
            names.entry(rig).or_default().insert(slot, uid);
        }
        let empty = HashMap::new();
        let mut out = Vec::new();
        for rig in rigs {
            let row = dispatch!(self, p => {
                let row = sqlx::query("SELECT ts_ms, seq, data FROM telemetry_raw WHERE rig_id = $1 ORDER BY ts_ms DESC, stream_id DESC, seq DESC LIMIT 1")
                    .bind(rig).fetch_optional(p).await?;
                row.map(|r| Ok::<_, StoreError>((r.i64("ts_ms")?, r.i64("seq")?, r.bytes("data")?))).transpose()?
            });
            if let Some((ts, seq, data)) = row {
                let rec = decode_raw(&data).map_err(corrupt)?;
                out.push((
                    rig,
                    to_sample(
                        rec,
                        to_u64(seq, "seq")?,
                        ts,
                        names.get(&rig).unwrap_or(&empty),
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// A rig's history; the table is picked by the range: ≤ 6 h raw, ≤ 7 d 1-minute, else
    /// 1-hour. Rollup points are bucket starts, so the first bucket may start before `from_ms`.
    pub async fn history(
        &self,
        rig_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<History, StoreError> {
        if to_ms < from_ms {
            return Err(StoreError::Invalid(
                "history range ends before it starts".into(),
            ));
        }
        let span = to_ms
            .checked_sub(from_ms)
            .ok_or_else(|| StoreError::Invalid("history range too long".into()))?;
        let names = self.slot_names(rig_id).await?;
        if span <= RAW_RANGE_MS {
            let (baseline, rows) = dispatch!(self, p => {
                let raw: Option<(i64, Vec<u8>)> = sqlx::query(
                    "SELECT ts_ms, data FROM telemetry_raw WHERE rig_id = $1 AND ts_ms < $2 ORDER BY ts_ms DESC, stream_id DESC, seq DESC LIMIT 1")
                    .bind(rig_id).bind(from_ms).fetch_optional(p).await?
                    .map(|r| Ok::<_, StoreError>((r.i64("ts_ms")?, r.bytes("data")?))).transpose()?;
                // The newest sample retention removed counts when no newer raw row precedes.
                let kept: Option<(i64, Vec<u8>)> = sqlx::query(
                    "SELECT base_ts_ms, base_data FROM telemetry_pruned WHERE rig_id = $1 AND base_ts_ms < $2")
                    .bind(rig_id).bind(from_ms).fetch_optional(p).await?
                    .map(|r| Ok::<_, StoreError>((r.i64("base_ts_ms")?, r.bytes("base_data")?))).transpose()?;
                let base = match (raw, kept) {
                    (Some(r), Some(k)) => Some(if k.0 > r.0 { k.1 } else { r.1 }),
                    (r, k) => r.or(k).map(|(_, d)| d),
                };
                let rows = sqlx::query(
                    "SELECT ts_ms, data FROM telemetry_raw WHERE rig_id = $1 AND ts_ms >= $2 AND ts_ms <= $3 ORDER BY ts_ms, stream_id, seq")
                    .bind(rig_id).bind(from_ms).bind(to_ms).fetch_all(p).await?;
                let rows = rows.iter().map(|r| Ok((r.i64("ts_ms")?, r.bytes("data")?))).collect::<Result<Vec<_>, StoreError>>()?;
                (base, rows)
            });
            let mut tracker = DeltaTracker::default();
            if let Some(b) = baseline {
                tracker.seed(&decode_raw(&b).map_err(corrupt)?);
            }
            let mut points = Vec::with_capacity(rows.len());
            for (ts, data) in rows {
                let rec = decode_raw(&data).map_err(corrupt)?;
                points.push(raw_point(&rec, ts, &mut tracker, &names));
            }
            return Ok(History {
                resolution: Resolution::Raw,
                points,
            });
        }
        let (resolution, table, bucket) = if span <= MINUTE_RANGE_MS {
            (Resolution::Minute, "telemetry_1m", MINUTE_MS)
        } else {
            (Resolution::Hour, "telemetry_1h", 60 * MINUTE_MS)
        };
        let sql = format!("SELECT ts_ms, data FROM {table} WHERE rig_id = $1 AND ts_ms >= $2 AND ts_ms <= $3 ORDER BY ts_ms");
        let first_bucket = from_ms.div_euclid(bucket) * bucket;
        let rows = dispatch!(self, p => {
            let rows = sqlx::query(&sql).bind(rig_id).bind(first_bucket).bind(to_ms).fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.i64("ts_ms")?, r.bytes("data")?))).collect::<Result<Vec<_>, StoreError>>()?
        });
        let mut points = Vec::with_capacity(rows.len());
        for (ts, data) in rows {
            points.push(rollup_point(
                &decode_rollup(&data).map_err(corrupt)?,
                ts,
                &names,
            ));
        }
        Ok(History { resolution, points })
    }

    /// Every stored sample's (seq, time on the server's clock, time as the agent sent it,
    /// whether the time was replaced by the arrival time), in (stream, seq) order.
    pub async fn raw_times(&self, rig_id: i64) -> Result<Vec<(u64, i64, i64, bool)>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT seq, ts_ms, agent_ts_ms, time_flag FROM telemetry_raw WHERE rig_id = $1 ORDER BY stream_id, seq")
                .bind(rig_id).fetch_all(p).await?;
            rows.iter().map(|r| Ok((to_u64(r.i64("seq")?, "seq")?, r.i64("ts_ms")?, r.i64("agent_ts_ms")?, r.i16("time_flag")? != 0)))
                .collect()
        })
    }

    /// Seq ranges stored for a rig (for tests proving nothing was lost/duplicated): count,
    /// min, max.
    pub async fn raw_seq_stats(
        &self,
        rig_id: i64,
    ) -> Result<(i64, Option<u64>, Option<u64>), StoreError> {
        let (n, lo, hi): (i64, Option<i64>, Option<i64>) = dispatch!(self, p => sqlx::query_as(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM telemetry_raw WHERE rig_id = $1")
            .bind(rig_id).fetch_one(p).await?);
        Ok((
            n,
            lo.map(|v| to_u64(v, "seq")).transpose()?,
            hi.map(|v| to_u64(v, "seq")).transpose()?,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use rigfleet_proto::telemetry::{DeviceSample, PoolState, RigSample, Sample};

    use super::super::rigs::tests::one_rig;
    use super::super::test_db::test_backends;
    use super::*;

    /// A sample of `devices` devices named `dev0`…; every counter value is `accepted`-based so
    /// deltas are easy to predict. Values are exact in f32.
    pub(crate) fn sample(seq: u64, ts_ms: i64, devices: usize, accepted: u64) -> Sample {
        Sample {
            seq,
            time_unix_ms: ts_ms,
            rig: RigSample {
                uptime_secs: 1000 + seq,
                load_1m: 1.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 8 << 30,
            },
            devices: (0..devices)
                .map(|i| DeviceSample {
                    device_id: format!("dev{i}").as_str().into(),
                    algorithm: "sha256d".into(),
                    enabled: true,
                    hashrate_5s_hps: 1000.0 * (i as f64 + 1.0),
                    hashrate_1m_hps: 990.0,
                    accepted,
                    rejected: accepted / 10,
                    stale: 0,
                    hardware_errors: 0,
                    temperature_celsius: Some(50.0 + i as f32),
                    fan_rpm: Some(2000),
                    fan_percent: Some(40.0),
                    power_watts: Some(100.0),
                    core_clock_mhz: None,
                    memory_clock_mhz: Some(2000),
                })
                .collect(),
            pool: Some(PoolState {
                url: "stratum+tcp://127.0.0.1:3333".into(),
                user: "w.r".into(),
                state: "mining".into(),
                difficulty: 0.5,
                priority: 0,
            }),
        }
    }

    /// The rig's legacy stream (agents before streams), created when missing.
    pub(crate) async fn legacy_stream(s: &Store, rig_id: i64) -> i64 {
        s.telemetry_stream(rig_id, "", 0)
            .await
            .unwrap()
            .unwrap()
            .0
            .id
    }

    /// Samples stored at their own time, the stream's mark moved to the highest seq.
    pub(crate) fn plain<'a>(
        rig_id: i64,
        stream_id: i64,
        samples: impl IntoIterator<Item = &'a Sample>,
    ) -> StreamSamples<'a> {
        let samples: Vec<TimedSample<'a>> = samples
            .into_iter()
            .map(|sample| TimedSample {
                sample,
                ts_ms: sample.time_unix_ms,
                recv_ms: sample.time_unix_ms,
                time_flagged: false,
            })
            .collect();
        let committed_seq = samples.iter().map(|t| t.sample.seq).max().unwrap_or(0);
        StreamSamples {
            rig_id,
            stream_id,
            samples,
            committed_seq,
            dropped: 0,
        }
    }

    /// Writes samples of one rig directly (no writer task), in its legacy stream.
    pub(crate) async fn write(s: &Store, rig_id: i64, samples: &[Sample]) -> WriteOutcome {
        let mut slots = HashMap::new();
        slots.insert(rig_id, s.device_slots(rig_id).await.unwrap());
        let stream = legacy_stream(s, rig_id).await;
        let rigs = [plain(rig_id, stream, samples)];
        s.write_samples(&rigs, &mut slots, 0).await.unwrap()
    }

    #[tokio::test]
    async fn samples_round_trip_through_latest_samples() {
        for db in test_backends().await {
            let s = &db.store;
            let a = one_rig(s, "a", 2).await;
            let b = one_rig(s, "b", 0).await;
            let _no_samples = one_rig(s, "c", 1).await;
            // `dev2` is unknown to the devices table: it gets slot 2 in the same transaction.
            let mut newest = sample(3, 30_000, 3, 7);
            newest.devices[1].temperature_celsius = None;
            let out = write(
                s,
                a,
                &[
                    sample(1, 10_000, 2, 5),
                    newest.clone(),
                    sample(2, 20_000, 2, 6),
                ],
            )
            .await;
            assert_eq!(out.inserted, 3);
            write(s, b, &[sample(9, 5_000, 0, 0)]).await;
            let slots = s.device_slots(a).await.unwrap();
            assert_eq!(slots["dev2"], 2);
            let latest = s.latest_samples().await.unwrap();
            assert_eq!(latest.len(), 2);
            assert_eq!(latest[0], (a, newest));
            assert_eq!(
                (latest[1].0, latest[1].1.seq, latest[1].1.devices.len()),
                (b, 9, 0)
            );
            assert_eq!(s.raw_seq_stats(a).await.unwrap(), (3, Some(1), Some(3)));
            assert_eq!(s.raw_seq_stats(b).await.unwrap(), (1, Some(9), Some(9)));
            let rig = s.rig_by_id(a).await.unwrap().unwrap();
            assert_eq!(rig.last_seq, Some(3));
            assert!(rig.last_seen_ms.is_some());
            // Removing a rig removes its telemetry (and rollup bookkeeping) with it.
            super::super::run_rollups(s, 10_000_000).await.unwrap();
            s.remove_rig(a).await.unwrap();
            assert_eq!(s.raw_seq_stats(a).await.unwrap(), (0, None, None));
            assert_eq!(
                s.history(a, 0, 30 * 86_400_000).await.unwrap().points.len(),
                0
            );
            assert_eq!(s.latest_samples().await.unwrap().len(), 1);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn history_picks_resolution_by_range() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 2).await;
            let t0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;
            let samples: Vec<Sample> = (0..12)
                .map(|i| sample(i + 1, t0 + i as i64 * 10_000, 2, 10 * i))
                .collect();
            write(s, rig, &samples).await;
            super::super::run_rollups(s, t0 + 3 * 3_600_000)
                .await
                .unwrap();

            let raw = s.history(rig, t0, t0 + 6 * 3_600_000).await.unwrap();
            assert_eq!((raw.resolution, raw.points.len()), (Resolution::Raw, 12));
            let p = &raw.points[1];
            assert_eq!(
                (
                    p.hashrate_hps,
                    p.max_temperature,
                    p.avg_fan_percent,
                    p.power_watts
                ),
                (3000.0, Some(51.0), Some(40.0), Some(200.0))
            );
            // Two devices, 10 accepted each since the previous sample; the first point has no baseline.
            assert_eq!((raw.points[0].accepted, p.accepted, p.rejected), (0, 20, 2));
            assert_eq!(p.devices[1].device_id, "dev1");
            // A later window starts from the sample before it.
            let later = s.history(rig, t0 + 55_000, t0 + 3_600_000).await.unwrap();
            assert_eq!((later.points.len(), later.points[0].accepted), (6, 20));

            let minutes = s.history(rig, t0, t0 + 6 * 3_600_000 + 1).await.unwrap();
            assert_eq!(minutes.resolution, Resolution::Minute);
            assert_eq!(
                minutes.points.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
                [t0, t0 + 60_000]
            );
            // 11 deltas of 10 per device, 2 devices: 5 in the first minute, 6 in the second.
            assert_eq!(
                (minutes.points[0].accepted, minutes.points[1].accepted),
                (100, 120)
            );
            assert_eq!(minutes.points[0].hashrate_hps, 3000.0);
            assert_eq!(minutes.points[0].devices[0].temperature, Some(50.0));

            let hours = s
                .history(rig, t0 - 30 * 24 * 3_600_000, t0 + 3_600_000)
                .await
                .unwrap();
            assert_eq!(hours.resolution, Resolution::Hour);
            assert_eq!(hours.points.len(), 1);
            assert_eq!(
                (
                    hours.points[0].ts_ms,
                    hours.points[0].accepted,
                    hours.points[0].rejected
                ),
                (t0, 220, 22)
            );
            assert!(s.history(rig, 10, 5).await.is_err());
            db.cleanup().await;
        }
    }
}
