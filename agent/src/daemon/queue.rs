//! The bounded on-disk telemetry queue: every sample is appended durably before it is sent, and
//! stays until the server's cumulative `ack` covers it, so a server outage (or an agent restart)
//! loses nothing within the queue's capacity. The queue also owns the sample sequence number, so
//! it can never go backwards across restarts.
//!
//! # Layout
//! A folder of append-only segment files `<first seq, 20 digits>.seg` plus `queue.json` (stream
//! id, acked seq, next seq, loss counters; replaced atomically). A segment holds up to
//! [`QueueOptions::segment_records`] records; a segment whose records are all acknowledged or
//! dropped is deleted, so disk use follows the unacknowledged samples.
//!
//! Each record is `len (u32 LE) ‖ crc32 (u32 LE) ‖ seq (u64 LE) ‖ JSON of the sample (len bytes)`,
//! the CRC (IEEE) covering seq and JSON. On open every segment is scanned: the first record that
//! is short, too long, fails its CRC or does not increase the seq ends that segment, and the file
//! is truncated there. That is what a crash mid-append leaves (a torn last record, or garbage),
//! and earlier records are untouched.
//!
//! # Streams
//! A queue's seqs are only meaningful with its stream id, made when the queue is created: a
//! queue that is lost or reset (disk replaced, state folder wiped, damaged state moved aside)
//! starts a new stream, whose seqs start again at 1, and the server keeps a separate
//! acknowledgement mark for it instead of taking the new seqs for resent old ones. A queue made
//! before streams existed keeps the empty id, which the server knows as the rig's legacy stream.
//!
//! # Durability
//! Records go straight to the file with one `write` (no user-space buffer), so a killed process
//! (`kill -9`) loses nothing that [`TelemetryQueue::push`] returned for: the data is in the
//! kernel. With [`FsyncPolicy::EveryRecord`] (the default: one `fdatasync` per sample, every
//! 10 s, is cheap) a power cut loses nothing either; [`FsyncPolicy::Never`] leaves flushing to the
//! kernel (about 30 s on Linux) for flash that should be spared writes. `queue.json` is always
//! fsynced. If a power cut with `Never` loses samples that were sent but not acknowledged, their
//! seqs are handed out again and the server keeps the first copy it saw: an accepted trade-off
//! of that policy.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rigfleet_proto::telemetry::Sample;
use serde::{Deserialize, Serialize};

use super::identity::{create_private_dir, write_atomic, IdentityError};

/// Default capacity: 24 h at the default 10 s interval (24 × 3600 / 10).
pub const DEFAULT_CAPACITY: usize = 8_640;
/// Default records per segment: 2 h at 10 s, so an ack frees disk in 2 h steps and a full queue
/// is about a dozen files.
pub const DEFAULT_SEGMENT_RECORDS: usize = 720;
/// Largest record accepted: a sample larger than a whole protocol frame could never be sent.
pub const MAX_RECORD_BYTES: usize = rigfleet_proto::limits::MAX_FRAME_BYTES;
/// Bytes before each record's JSON: length, CRC and seq.
const HEADER_BYTES: usize = 16;
/// The state file beside the segments.
const META_FILE: &str = "queue.json";
const SEGMENT_SUFFIX: &str = ".seg";

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// File system error.
    #[error("telemetry queue {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `queue.json` cannot be read back (it is replaced atomically, so this is real damage).
    #[error("telemetry queue state {path} is corrupt: {reason}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A sample too large to ever send.
    #[error("sample of {size} bytes exceeds the {limit}-byte record limit")]
    SampleTooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Options that cannot work (zero capacity or segment size).
    #[error("invalid queue options: {0}")]
    InvalidOptions(&'static str),
}

/// When appended records are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every record: nothing lost on a power cut.
    #[default]
    EveryRecord,
    /// Leave it to the kernel: nothing lost on a crash of the agent, recent samples lost on a
    /// power cut.
    // No config knob chooses it yet; tests use it to spare the disk.
    #[allow(dead_code)]
    Never,
}

/// Queue tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// Most unacknowledged samples kept; the oldest are dropped (and counted) beyond it.
    pub capacity: usize,
    /// Records per segment file.
    pub segment_records: usize,
    /// Flush policy.
    pub fsync: FsyncPolicy,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: DEFAULT_CAPACITY,
            segment_records: DEFAULT_SEGMENT_RECORDS,
            fsync: FsyncPolicy::EveryRecord,
        }
    }
}

/// Samples lost to the capacity bound, for the agent to report (an event the server sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Loss {
    /// Samples dropped unacknowledged since the queue was created.
    pub dropped_total: u64,
    /// Highest seq dropped (0: none); every unacknowledged seq up to it is gone.
    pub dropped_through_seq: u64,
    /// Samples that never got into the queue because writing them failed (disk full, I/O
    /// error); they have no seq.
    #[serde(default)]
    pub unqueued_total: u64,
}

/// `queue.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    /// The stream the seqs belong to (empty: a queue made before streams).
    #[serde(default)]
    stream_id: String,
    /// Lower bound for the next seq (the records themselves may raise it).
    next_seq: u64,
    /// Highest seq the server acknowledged (0: none).
    acked_seq: u64,
    #[serde(flatten)]
    loss: Loss,
}

/// One record's place on disk.
#[derive(Debug, Clone, Copy)]
struct RecordPos {
    seq: u64,
    /// Offset of the header.
    offset: u64,
    /// JSON length.
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    records: Vec<RecordPos>,
    /// File length after the last valid record.
    end: u64,
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }
}

/// The queue. Not shared between threads by itself: the daemon owns it in one task.
#[derive(Debug)]
pub struct TelemetryQueue {
    dir: PathBuf,
    opts: QueueOptions,
    /// Oldest first; the last one takes appends.
    segments: VecDeque<Segment>,
    /// Append handle of the last segment, if it still has room.
    active: Option<File>,
    meta: Meta,
    /// `meta.next_seq` raised by the records on disk.
    next_seq: u64,
}

impl TelemetryQueue {
    /// Opens (or creates, mode 0700) the queue in `dir`, recovering from a crash: torn or
    /// garbage records at a segment's end are truncated away, earlier records kept.
    pub fn open(dir: &Path, opts: QueueOptions) -> Result<TelemetryQueue, QueueError> {
        if opts.capacity == 0 {
            return Err(QueueError::InvalidOptions("capacity must be above 0"));
        }
        if opts.segment_records == 0 {
            return Err(QueueError::InvalidOptions(
                "segment_records must be above 0",
            ));
        }
        create_private_dir(dir).map_err(|e| match e {
            IdentityError::Io { path, source } => QueueError::Io { path, source },
            other => io_err(dir, std::io::Error::other(other.to_string())),
        })?;
        let meta_path = dir.join(META_FILE);
        let fresh = !meta_path.exists();
        let mut meta = read_meta(&meta_path)?;

        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|source| io_err(dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| io_err(dir, source))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, entry.path()));
        }
        names.sort();

        let mut segments = VecDeque::new();
        let mut last_seq = 0u64;
        for (_, path) in names {
            let seg = scan_segment(&path, last_seq)?;
            match seg.last_seq() {
                Some(s) => {
                    last_seq = s;
                    segments.push_back(seg);
                }
                // Nothing valid in it: it only takes a name a later segment might need.
                None => remove_file(&path)?,
            }
        }

        if fresh {
            meta.stream_id = new_stream_id();
            // Records without their state (it was lost): a new stream that starts at the first
            // record kept, so the server does not wait for the seqs before it.
            if let Some(first) = segments.front().and_then(|s| s.records.first()) {
                meta.loss.dropped_through_seq = first.seq.saturating_sub(1);
            }
        }
        let next_seq = meta
            .next_seq
            .max(last_seq + 1)
            .max(meta.acked_seq + 1)
            .max(meta.loss.dropped_through_seq + 1);
        let mut queue = TelemetryQueue {
            dir: dir.to_path_buf(),
            opts,
            segments,
            active: None,
            meta,
            next_seq,
        };
        if let Some(last) = queue.segments.back() {
            if last.records.len() < opts.segment_records {
                queue.active = Some(open_append(&last.path)?);
            }
        }
        // The capacity may have shrunk since the last run; a new stream's id must be on disk
        // before any of its seqs is sent.
        if queue.enforce_capacity() || fresh {
            queue.save_meta()?;
        }
        queue.remove_consumed_segments()?;
        Ok(queue)
    }

    /// The seq the next pushed sample gets.
    #[allow(dead_code)] // Part of the queue's API; the link reads acked_seq and pending_after.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The stream id (empty for a queue made before streams).
    pub fn stream_id(&self) -> &str {
        &self.meta.stream_id
    }

    /// Counts a sample that could not be queued (its write failed), so the loss is reported.
    /// The count is saved when the state file can be written (on a full disk it may not be;
    /// it is then carried in memory until the next save).
    pub fn record_unqueued(&mut self) {
        self.meta.loss.unqueued_total += 1;
        if let Err(error) = self.save_meta() {
            tracing::debug!(%error, "Cannot save the telemetry queue state");
        }
    }

    /// Highest seq the server acknowledged (0: none).
    pub fn acked_seq(&self) -> u64 {
        self.meta.acked_seq
    }

    /// Samples lost to the capacity bound so far.
    pub fn loss(&self) -> Loss {
        self.meta.loss
    }

    /// Unacknowledged samples held.
    pub fn len(&self) -> usize {
        let floor = self.floor();
        self.segments
            .iter()
            .map(|s| s.records.len() - s.records.partition_point(|r| r.seq < floor))
            .sum()
    }

    /// Whether no sample waits for an ack.
    #[allow(dead_code)] // Pairs with len().
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `sample` durably (see the module docs for the fsync policy), setting its `seq`
    /// to [`Self::next_seq`], which it returns. If the queue is then over capacity the oldest
    /// unacknowledged samples are dropped and counted in [`Self::loss`].
    pub fn push(&mut self, mut sample: Sample) -> Result<u64, QueueError> {
        let seq = self.next_seq;
        sample.seq = seq;
        let json = serde_json::to_vec(&sample).expect("BUG: telemetry samples always serialise");
        if json.len() > MAX_RECORD_BYTES {
            return Err(QueueError::SampleTooLarge {
                size: json.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let len = u32::try_from(json.len()).expect("BUG: MAX_RECORD_BYTES fits in u32");

        if self.active.is_none() {
            self.start_segment(seq)?;
        }
        let seg = self
            .segments
            .back_mut()
            .expect("BUG: an active file always has its segment");
        let file = self
            .active
            .as_mut()
            .expect("BUG: start_segment sets the active file");

        let mut record = Vec::with_capacity(HEADER_BYTES + json.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&record_crc(seq, &json).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&json);
        // One write for the whole record, so a kill leaves it whole or torn at the end of the
        // file, which recovery handles.
        let written = file
            .write_all(&record)
            .and_then(|()| match self.opts.fsync {
                FsyncPolicy::EveryRecord => file.sync_data(),
                FsyncPolicy::Never => Ok(()),
            });
        if let Err(source) = written {
            let path = seg.path.clone();
            if seg.records.is_empty() {
                // A segment made for this record holds nothing: forget it, so the next append
                // starts its own (it would otherwise share this name and be deleted with it).
                self.active = None;
                self.segments.pop_back();
                let _ = std::fs::remove_file(&path);
            } else if file
                .set_len(seg.end)
                .and_then(|()| file.seek(SeekFrom::Start(seg.end)))
                .is_err()
            {
                // Cut off whatever part made it and write the next record where it ended (the
                // file position moved past it), so later appends do not follow a torn record;
                // if that fails, stop appending to this file (recovery truncates it).
                self.active = None;
            }
            return Err(io_err(&path, source));
        }
        seg.records.push(RecordPos {
            seq,
            offset: seg.end,
            len,
        });
        seg.end += record.len() as u64;
        if seg.records.len() >= self.opts.segment_records {
            self.active = None;
        }
        self.next_seq = seq + 1;

        if self.enforce_capacity() {
            self.save_meta()?;
            self.remove_consumed_segments()?;
        }
        Ok(seq)
    }

    /// Flushes appended records to stable storage (at shutdown; with
    /// [`FsyncPolicy::EveryRecord`] they already are).
    pub fn sync(&self) -> Result<(), QueueError> {
        match (&self.active, self.segments.back()) {
            (Some(file), Some(seg)) => file.sync_data().map_err(|source| io_err(&seg.path, source)),
            _ => Ok(()),
        }
    }

    /// The server durably committed every seq ≤ `seq` (cumulative): forget them. An ack at or
    /// below the current one changes nothing; one beyond the last pushed seq (a confused or
    /// hostile server) is capped there.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        let seq = seq.min(self.next_seq.saturating_sub(1));
        if seq <= self.meta.acked_seq {
            return Ok(());
        }
        self.meta.acked_seq = seq;
        // State first, files second: a crash in between leaves files whose records are below
        // the floor, skipped and removed on the next open.
        self.save_meta()?;
        self.remove_consumed_segments()
    }

    /// Up to `max` of the oldest unacknowledged samples, in seq order (for resending after a
    /// reconnect).
    #[allow(dead_code)] // The link pages with pending_after.
    pub fn pending(&self, max: usize) -> Result<Vec<Sample>, QueueError> {
        self.pending_after(0, max)
    }

    /// Up to `max` unacknowledged samples with a seq above `after`, in seq order (for sending
    /// the next batch while earlier ones wait for their ack). A record that no longer reads back
    /// whole (the disk changed under us) is skipped with a warning rather than blocking every
    /// later sample.
    pub fn pending_after(&self, after: u64, max: usize) -> Result<Vec<Sample>, QueueError> {
        let from = self.floor().max(after.saturating_add(1));
        let mut out = Vec::new();
        for seg in &self.segments {
            if out.len() >= max {
                break;
            }
            if seg.last_seq().is_none_or(|last| last < from) {
                continue;
            }
            let file = File::open(&seg.path).map_err(|source| io_err(&seg.path, source))?;
            let start = seg.records.partition_point(|r| r.seq < from);
            for pos in &seg.records[start..] {
                if out.len() >= max {
                    break;
                }
                match read_record(&file, pos) {
                    Ok(sample) => out.push(sample),
                    Err(reason) => tracing::warn!(
                        seq = pos.seq,
                        path = %seg.path.display(),
                        reason,
                        "skipping unreadable telemetry record"
                    ),
                }
            }
        }
        Ok(out)
    }

    /// The oldest unacknowledged record no longer reads back (the disk changed under us): it
    /// can never be sent, and the server's acknowledgement would wait for it forever, so it is
    /// counted as dropped like an overflow. Records behind it are sent meanwhile; this runs
    /// when the acknowledgement reaches it. Returns whether one was dropped.
    pub fn drop_unreadable_head(&mut self) -> Result<bool, QueueError> {
        let floor = self.floor();
        let Some((seg, pos)) = self.segments.iter().find_map(|seg| {
            seg.records
                .iter()
                .find(|r| r.seq >= floor)
                .map(|pos| (seg, *pos))
        }) else {
            return Ok(false);
        };
        let readable = File::open(&seg.path)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                read_record(&file, &pos)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if readable.is_ok() {
            return Ok(false);
        }
        tracing::warn!(
            seq = pos.seq,
            "Telemetry record unreadable; counted as dropped"
        );
        self.meta.loss.dropped_total += 1;
        self.meta.loss.dropped_through_seq = pos.seq;
        self.save_meta()?;
        self.remove_consumed_segments()?;
        Ok(true)
    }

    /// Seqs below this are gone (acknowledged or dropped).
    fn floor(&self) -> u64 {
        self.meta.acked_seq.max(self.meta.loss.dropped_through_seq) + 1
    }

    /// Drops the oldest unacknowledged samples beyond capacity; true if any were dropped.
    fn enforce_capacity(&mut self) -> bool {
        let len = self.len();
        if len <= self.opts.capacity {
            return false;
        }
        let excess = len - self.opts.capacity;
        let floor = self.floor();
        // The `excess`-th unacknowledged record (1-based) becomes the last one dropped.
        let mut remaining = excess;
        let mut through = None;
        for seg in &self.segments {
            let live = &seg.records[seg.records.partition_point(|r| r.seq < floor)..];
            if remaining <= live.len() {
                through = Some(live[remaining - 1].seq);
                break;
            }
            remaining -= live.len();
        }
        let through = through.expect("BUG: excess is below the number of live records");
        self.meta.loss.dropped_total += excess as u64;
        self.meta.loss.dropped_through_seq = through;
        true
    }

    /// Deletes segments whose records are all below the floor, keeping the one taking appends.
    fn remove_consumed_segments(&mut self) -> Result<(), QueueError> {
        let floor = self.floor();
        while self.segments.len() > 1 || (self.active.is_none() && !self.segments.is_empty()) {
            let Some(first) = self.segments.front() else {
                break;
            };
            if first.last_seq().is_some_and(|last| last >= floor) {
                break;
            }
            remove_file(&first.path)?;
            if self.segments.len() == 1 {
                self.active = None;
            }
            self.segments.pop_front();
        }
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), QueueError> {
        let path = self.dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"));
        // Mode 0600: samples name pools and wallets; only the agent reads them.
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| io_err(&path, source))?;
        // The new name must survive a power cut too, or the records in it would be lost.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_err(&self.dir, source))?;
        self.segments.push_back(Segment {
            path,
            records: Vec::new(),
            end: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    fn save_meta(&mut self) -> Result<(), QueueError> {
        self.meta.next_seq = self.next_seq;
        let json = serde_json::to_vec(&self.meta).expect("BUG: queue state always serialises");
        let path = self.dir.join(META_FILE);
        write_atomic(&path, &json, 0o600).map_err(|source| io_err(&path, source))
    }
}

/// A new stream id: 16 random bytes as hex. Stream ids are not secrets, only unique: if the
/// random source fails, the time and process id stand in.
pub fn new_stream_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..12].copy_from_slice(&nanos.to_be_bytes()[4..]);
        bytes[12..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    rigfleet_engine::hex::encode(&bytes)
}

fn io_err(path: &Path, source: std::io::Error) -> QueueError {
    QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn remove_file(path: &Path) -> Result<(), QueueError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err(path, source)),
    }
}

fn open_append(path: &Path) -> Result<File, QueueError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| io_err(path, source))
}

fn read_meta(path: &Path) -> Result<Meta, QueueError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| QueueError::CorruptState {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
        Err(source) => Err(io_err(path, source)),
    }
}

/// Reads a segment's valid records; truncates the file after the last one if anything follows.
fn scan_segment(path: &Path, mut prev_seq: u64) -> Result<Segment, QueueError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| io_err(path, source))?;
    let file_len = file
        .metadata()
        .map_err(|source| io_err(path, source))?
        .len();
    let mut reader = BufReader::new(&file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut json = Vec::new();
    loop {
        let mut header = [0u8; HEADER_BYTES];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("BUG: 4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("BUG: 4 bytes"));
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("BUG: 8 bytes"));
        // Check the length before allocating for it: garbage may claim gigabytes.
        if len as usize > MAX_RECORD_BYTES || seq <= prev_seq {
            break;
        }
        json.resize(len as usize, 0);
        if reader.read_exact(&mut json).is_err() || record_crc(seq, &json) != crc {
            break;
        }
        records.push(RecordPos { seq, offset, len });
        offset += (HEADER_BYTES + len as usize) as u64;
        prev_seq = seq;
    }
    if offset < file_len {
        tracing::warn!(
            path = %path.display(),
            kept_bytes = offset,
            dropped_bytes = file_len - offset,
            "telemetry queue segment has a torn or corrupt tail; truncating"
        );
        drop(reader);
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(|source| io_err(path, source))?;
    }
    Ok(Segment {
        path: path.to_path_buf(),
        records,
        end: offset,
    })
}

fn read_record(file: &File, pos: &RecordPos) -> Result<Sample, String> {
    let mut buf = vec![0u8; HEADER_BYTES + pos.len as usize];
    file.read_exact_at(&mut buf, pos.offset)
        .map_err(|e| e.to_string())?;
    let (header, json) = buf.split_at(HEADER_BYTES);
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("BUG: 4 bytes"));
    if record_crc(pos.seq, json) != crc {
        return Err("CRC mismatch".into());
    }
    let sample: Sample = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if sample.seq != pos.seq {
        return Err(format!("record holds seq {}", sample.seq));
    }
    Ok(sample)
}

fn record_crc(seq: u64, json: &[u8]) -> u32 {
    let crc = crc32_update(!0, &seq.to_le_bytes());
    !crc32_update(crc, json)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) table, built at compile time: a
/// dependency for 20 lines is not worth it.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::telemetry::RigSample;

    fn sample(uptime: u64) -> Sample {
        Sample {
            seq: 0,
            time_unix_ms: 1_764_280_000_000 + uptime as i64 * 10_000,
            rig: RigSample {
                uptime_secs: uptime,
                ..RigSample::default()
            },
            devices: vec![],
            pool: None,
        }
    }

    fn opts(capacity: usize, segment_records: usize) -> QueueOptions {
        QueueOptions {
            capacity,
            segment_records,
            fsync: FsyncPolicy::EveryRecord,
        }
    }

    fn seqs(samples: &[Sample]) -> Vec<u64> {
        samples.iter().map(|s| s.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn fill(q: &mut TelemetryQueue, n: u64) {
        for i in 0..n {
            q.push(sample(i)).expect("push");
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(!crc32_update(!0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn default_capacity_covers_a_day_at_ten_seconds() {
        assert!(QueueOptions::default().capacity >= 24 * 3600 / 10);
    }

    #[test]
    fn push_assigns_seqs_and_pending_returns_them_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("open");
        assert_eq!(q.next_seq(), 1);
        assert!(q.is_empty());
        fill(&mut q, 10);
        assert_eq!(q.len(), 10);
        assert_eq!(segment_files(dir.path()).len(), 3);
        let all = q.pending(100).expect("pending");
        assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
        assert_eq!(all[3].rig.uptime_secs, 3);
        assert_eq!(seqs(&q.pending(3).expect("pending")), [1, 2, 3]);
        assert_eq!(seqs(&q.pending_after(5, 3).expect("after")), [6, 7, 8]);
        assert!(q.pending_after(10, 3).expect("after").is_empty());
    }

    #[test]
    fn ack_is_cumulative_and_frees_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("open");
        fill(&mut q, 10);
        q.ack(6).expect("ack");
        assert_eq!(q.acked_seq(), 6);
        assert_eq!(seqs(&q.pending(100).expect("pending")), [7, 8, 9, 10]);
        // Segment 1..4 is gone; 5..8 stays for 7 and 8.
        assert_eq!(segment_files(dir.path()).len(), 2);
        // A stale ack changes nothing.
        q.ack(3).expect("stale ack");
        assert_eq!(q.acked_seq(), 6);
        // An ack beyond what was pushed is capped.
        q.ack(1_000).expect("future ack");
        assert_eq!(q.acked_seq(), 10);
        assert!(q.is_empty());
        assert_eq!(q.next_seq(), 11);
        // The acks survive a reopen.
        drop(q);
        let q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("reopen");
        assert_eq!(q.acked_seq(), 10);
        assert!(q.pending(100).expect("pending").is_empty());
    }

    #[test]
    fn next_seq_never_goes_backwards_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("open");
        fill(&mut q, 8);
        q.ack(8).expect("ack all");
        drop(q);
        // Every segment is gone, the seq lives on in queue.json.
        assert!(segment_files(dir.path()).len() <= 1);
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("reopen");
        assert_eq!(q.next_seq(), 9);
        assert_eq!(q.push(sample(9)).expect("push"), 9);
        drop(q);
        // Unacknowledged records raise the seq even without a state write.
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 4)).expect("reopen");
        assert_eq!(q.next_seq(), 10);
        fill(&mut q, 3);
        assert_eq!(seqs(&q.pending(100).expect("pending")), [9, 10, 11, 12]);
    }

    #[test]
    fn reopening_after_a_kill_loses_nothing_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        for policy in [FsyncPolicy::EveryRecord, FsyncPolicy::Never] {
            let sub = dir.path().join(format!("{policy:?}"));
            let o = QueueOptions {
                fsync: policy,
                ..opts(100, 7)
            };
            let mut q = TelemetryQueue::open(&sub, o).expect("open");
            fill(&mut q, 20);
            q.ack(5).expect("ack");
            // No close, no flush: the process "dies" here.
            std::mem::forget(q);
            let q = TelemetryQueue::open(&sub, o).expect("reopen");
            assert_eq!(
                seqs(&q.pending(100).expect("pending")),
                (6..=20).collect::<Vec<_>>()
            );
            assert_eq!(q.next_seq(), 21);
        }
    }

    #[test]
    fn capacity_drops_the_oldest_and_counts_the_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(5, 2)).expect("open");
        fill(&mut q, 8);
        assert_eq!(q.len(), 5);
        assert_eq!(seqs(&q.pending(100).expect("pending")), [4, 5, 6, 7, 8]);
        assert_eq!(
            q.loss(),
            Loss {
                dropped_total: 3,
                dropped_through_seq: 3,
                unqueued_total: 0,
            }
        );
        // Disk use follows: segment 1..2 is gone.
        assert_eq!(segment_files(dir.path()).len(), 3);
        // Acked samples are not a loss.
        q.ack(6).expect("ack");
        fill(&mut q, 2);
        assert_eq!(q.loss().dropped_total, 3);
        drop(q);
        // A smaller capacity on the next start drops (and counts) more.
        let q = TelemetryQueue::open(dir.path(), opts(2, 2)).expect("reopen");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [9, 10]);
        assert_eq!(
            q.loss(),
            Loss {
                dropped_total: 5,
                dropped_through_seq: 8,
                unqueued_total: 0,
            }
        );
    }

    #[test]
    fn a_full_disk_loses_the_sample_not_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 1)).expect("open");
        let stream = q.stream_id().to_string();
        assert_eq!(stream.len(), 32);
        fill(&mut q, 2);
        // The next segment lands on a device that is always full.
        let next = dir
            .path()
            .join(format!("{:020}{SEGMENT_SUFFIX}", q.next_seq()));
        std::os::unix::fs::symlink("/dev/full", &next).expect("symlink");
        assert!(matches!(q.push(sample(9)), Err(QueueError::Io { .. })));
        q.record_unqueued();
        assert_eq!(q.loss().unqueued_total, 1);
        // The queue already removed the empty segment it had made there.
        assert!(std::fs::symlink_metadata(&next).is_err());
        // Space again: the seq the failed sample never got goes to the next one, no gap.
        fill(&mut q, 2);
        assert_eq!(seqs(&q.pending(100).expect("pending")), [1, 2, 3, 4]);
        q.ack(1).expect("ack");
        drop(q);
        let q = TelemetryQueue::open(dir.path(), opts(100, 1)).expect("reopen");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [2, 3, 4]);
        assert_eq!(
            (q.stream_id(), q.loss().unqueued_total),
            (stream.as_str(), 1)
        );
    }

    #[test]
    fn an_unreadable_head_record_is_dropped_so_the_stream_moves_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("open");
        fill(&mut q, 5);
        // Damage record 3 on disk.
        let seg = q.segments.back().expect("segment");
        let pos = seg.records[2];
        let file = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .expect("open");
        file.write_all_at(b"garbage!", pos.offset + HEADER_BYTES as u64)
            .expect("damage");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [1, 2, 4, 5]);
        // Not at the head yet: nothing dropped.
        assert!(!q.drop_unreadable_head().expect("check"));
        q.ack(2).expect("ack");
        assert!(q.drop_unreadable_head().expect("check"));
        assert_eq!(
            (q.loss().dropped_total, q.loss().dropped_through_seq),
            (1, 3)
        );
        assert_eq!(seqs(&q.pending(100).expect("pending")), [4, 5]);
        assert!(!q.drop_unreadable_head().expect("check"));
    }

    #[test]
    fn a_queue_without_its_state_starts_a_new_stream_at_its_first_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 2)).expect("open");
        let first = q.stream_id().to_string();
        fill(&mut q, 5);
        q.ack(2).expect("ack");
        drop(q);
        std::fs::remove_file(dir.path().join(META_FILE)).expect("remove state");
        let q = TelemetryQueue::open(dir.path(), opts(100, 2)).expect("reopen");
        assert_ne!(q.stream_id(), first);
        // The records left start the new stream; what came before is declared gone.
        let pending = seqs(&q.pending(100).expect("pending"));
        assert_eq!(pending.last(), Some(&5));
        assert_eq!(q.loss().dropped_through_seq, pending[0] - 1);
        // A queue made before streams keeps the legacy (empty) stream id.
        let legacy = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            legacy.path().join(META_FILE),
            r#"{"next_seq":8,"acked_seq":7,"dropped_total":0,"dropped_through_seq":0}"#,
        )
        .expect("write");
        let q = TelemetryQueue::open(legacy.path(), opts(100, 2)).expect("open legacy");
        assert_eq!((q.stream_id(), q.next_seq()), ("", 8));
    }

    #[test]
    fn torn_last_record_is_dropped_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("open");
        fill(&mut q, 5);
        drop(q);
        let seg = segment_files(dir.path()).pop().expect("a segment");
        let len = std::fs::metadata(&seg).expect("stat").len();
        // Cut the last record in the middle of its JSON, then just after its header.
        for cut in [len - 10, len - 10 - 40] {
            let f = OpenOptions::new().write(true).open(&seg).expect("open");
            f.set_len(cut).expect("truncate");
        }
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("reopen");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [1, 2, 3, 4]);
        // Appends continue cleanly after the cut.
        assert_eq!(q.push(sample(99)).expect("push"), 5);
        drop(q);
        let q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("reopen");
        let all = q.pending(100).expect("pending");
        assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
        assert_eq!(all[4].rig.uptime_secs, 99);
    }

    #[test]
    fn a_torn_record_in_an_older_segment_loses_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 3)).expect("open");
        fill(&mut q, 9);
        drop(q);
        let first = segment_files(dir.path()).remove(0);
        let len = std::fs::metadata(&first).expect("stat").len();
        let f = OpenOptions::new().write(true).open(&first).expect("open");
        f.set_len(len - 5).expect("truncate");
        let q = TelemetryQueue::open(dir.path(), opts(100, 3)).expect("reopen");
        assert_eq!(
            seqs(&q.pending(100).expect("pending")),
            [1, 2, 4, 5, 6, 7, 8, 9]
        );
        assert_eq!(q.next_seq(), 10);
    }

    #[test]
    fn disk_use_stays_bounded_at_the_default_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = QueueOptions {
            fsync: FsyncPolicy::Never,
            ..QueueOptions::default()
        };
        let mut q = TelemetryQueue::open(dir.path(), o).expect("open");
        let n = DEFAULT_CAPACITY as u64 + 1_000;
        fill(&mut q, n);
        assert_eq!(q.len(), DEFAULT_CAPACITY);
        assert_eq!(q.loss().dropped_total, 1_000);
        let files = segment_files(dir.path()).len();
        assert!(
            files <= DEFAULT_CAPACITY / DEFAULT_SEGMENT_RECORDS + 2,
            "{files}"
        );
        let batch = q
            .pending(rigfleet_proto::limits::MAX_SAMPLES_PER_BATCH)
            .expect("pending");
        assert_eq!(batch.len(), rigfleet_proto::limits::MAX_SAMPLES_PER_BATCH);
        assert_eq!(batch[0].seq, 1_001);
    }

    #[test]
    fn garbage_after_the_last_record_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("open");
        fill(&mut q, 3);
        drop(q);
        let seg = segment_files(dir.path()).pop().expect("a segment");
        let clean_len = std::fs::metadata(&seg).expect("stat").len();
        // A header claiming 4 GiB, then noise: must not allocate for it, must not keep it.
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&[0xff; 16]).expect("garbage");
        f.write_all(b"not a record at all").expect("garbage");
        drop(f);
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("reopen");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [1, 2, 3]);
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), clean_len);
        q.push(sample(4)).expect("push");
        assert_eq!(q.pending(100).expect("pending").len(), 4);
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_fails_its_crc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("open");
        fill(&mut q, 3);
        drop(q);
        let seg = segment_files(dir.path()).pop().expect("a segment");
        let mut bytes = std::fs::read(&seg).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        std::fs::write(&seg, &bytes).expect("write");
        let q = TelemetryQueue::open(dir.path(), opts(100, 100)).expect("reopen");
        assert_eq!(seqs(&q.pending(100).expect("pending")), [1, 2]);
        // The lost record's seq is handed out again: it was never acknowledged, so never counted.
        assert_eq!(q.next_seq(), 3);
    }

    #[test]
    fn refuses_bad_options_and_corrupt_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            TelemetryQueue::open(dir.path(), opts(0, 1)),
            Err(QueueError::InvalidOptions(_))
        ));
        assert!(matches!(
            TelemetryQueue::open(dir.path(), opts(1, 0)),
            Err(QueueError::InvalidOptions(_))
        ));
        std::fs::write(dir.path().join(META_FILE), b"{").expect("write");
        assert!(matches!(
            TelemetryQueue::open(dir.path(), opts(1, 1)),
            Err(QueueError::CorruptState { .. })
        ));
    }

    #[test]
    fn refuses_a_sample_too_large_to_send() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(10, 10)).expect("open");
        let mut s = sample(1);
        s.pool = Some(rigfleet_proto::telemetry::PoolState {
            url: "x".repeat(MAX_RECORD_BYTES),
            user: String::new(),
            state: String::new(),
            difficulty: 0.0,
            priority: 0,
        });
        assert!(matches!(q.push(s), Err(QueueError::SampleTooLarge { .. })));
        // Nothing was consumed: the next sample still gets seq 1.
        assert_eq!(q.push(sample(1)).expect("push"), 1);
    }

    #[test]
    fn segments_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = TelemetryQueue::open(dir.path(), opts(100, 2)).expect("open");
        fill(&mut q, 5);
        let segs = segment_files(dir.path());
        assert!(segs.len() >= 2);
        for seg in segs {
            let mode = std::fs::metadata(&seg).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", seg.display());
        }
    }
}
