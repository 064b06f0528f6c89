//! The miner: hands nonce ranges to devices, rolls work when a range is exhausted, rechecks every
//! nonce a device reports, and keeps hash-rate averages.
//!
//! Rolling order when a device runs out of nonces: the next unassigned slice of the current
//! header, then the next combination of the version bits the pool allows (BIP 310/320), then a
//! new header from the [`WorkSource`] the Stratum layer provides (new extranonce2 or ntime).
//! Every nonce a device reports is hashed again with the portable code; one that does not meet
//! the target counts as a hardware error of that device and is never passed on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::algo::NonceRange;
use crate::device::{Device, DeviceEvent, DeviceId, DeviceInfo, EventReceiver, Sensors};
use crate::error::EngineError;
use crate::meter::{HashMeter, HashRates};
use crate::target::Target;
use crate::work::{deposit_bits, Work, WorkId};

/// Produces successive headers for the current job: each call returns a header with a new
/// extranonce2 (or ntime), or `None` when the job cannot be rolled further.
pub trait WorkSource: Send {
    /// The next header to mine.
    fn next_work(&mut self) -> Option<Work>;
}

impl<F: FnMut() -> Option<Work> + Send> WorkSource for F {
    fn next_work(&mut self) -> Option<Work> {
        self()
    }
}

/// A confirmed share: a nonce whose portable hash meets the work's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The device that found it.
    pub device: DeviceId,
    /// The exact work it was found on (header template, job id, target).
    pub work: Arc<Work>,
    /// The nonce.
    pub nonce: u32,
    /// nVersion of the header that was hashed (differs from the template when rolled on-chip).
    pub version: u32,
    /// The full header with nonce and version filled in.
    pub header: [u8; 80],
    /// The hash as produced.
    pub hash: [u8; 32],
}

impl Share {
    /// The share's own difficulty (how far below difficulty 1 its hash is).
    pub fn difficulty(&self) -> f64 {
        Target::hash_difficulty(self.work.algorithm, &self.hash)
    }
}

/// Figures of one device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceStats {
    /// Static facts.
    pub info: DeviceInfo,
    /// Averages.
    pub rates: HashRates,
    /// Every hash counted since start.
    pub hashes_total: u64,
    /// Confirmed shares.
    pub shares: u64,
    /// Reported nonces that did not confirm.
    pub hardware_errors: u64,
    /// Last sensor readings.
    pub sensors: Sensors,
    /// The last failure the device reported, if any.
    pub last_error: Option<String>,
}

/// Figures of the whole miner.
#[derive(Clone, Debug, PartialEq)]
pub struct MinerStats {
    /// Per device, in the order the devices were given.
    pub devices: Vec<DeviceStats>,
    /// Sum over devices.
    pub rates: HashRates,
}

/// Largest slice handed to one device at a time: 2^28 nonces is a few seconds for a CPU core at
/// SHA-256d and spreads the 2^32 nonce space over up to 16 devices per header.
const MAX_SLICE: u64 = 1 << 28;
/// How often hash counts are sampled into the meters.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Headers are remembered for this many job switches so late nonces still confirm.
const KEEP_GENERATIONS: u64 = 2;

struct DeviceSlot {
    device: Box<dyn Device>,
    meter: HashMeter,
    last_count: u64,
    shares: u64,
    hardware_errors: u64,
    last_error: Option<String>,
    /// Idle because the job had nothing left to hand out.
    starved: bool,
}

/// Hands out work: the current header, where its next slice starts, its version roll.
struct Dispatch {
    source: Option<Box<dyn WorkSource>>,
    base: Option<Work>,
    next_offset: u64,
    version_step: u64,
    slice: u64,
    /// Nonces of each header version used before the next version is rolled (≤ 2^32).
    nonce_span: u64,
    generation: u64,
    /// Every header handed out recently, for rechecking nonces: id → (generation, work).
    issued: HashMap<WorkId, (u64, Arc<Work>)>,
}

impl Dispatch {
    fn next_slice(&mut self) -> Option<Arc<Work>> {
        loop {
            if self.base.is_none() {
                self.base = Some(self.source.as_mut()?.next_work()?);
                self.next_offset = 0;
                self.version_step = 0;
            }
            let base = self.base.as_ref().expect("BUG: base set above");
            let range = base.nonce_range;
            // Rolling versions before the nonce space is spent only makes sense when there are
            // versions to roll.
            let span = if base.version_mask == 0 {
                range.len()
            } else {
                range.len().min(self.nonce_span)
            };
            if self.next_offset < span {
                let first = u64::from(range.first) + self.next_offset;
                let count = self.slice.min(span - self.next_offset);
                self.next_offset += count;
                let sub = NonceRange::new(first as u32, (first + count - 1) as u32);
                let rolled = base.version() ^ deposit_bits(self.version_step, base.version_mask);
                let mut work = base.with_range(sub);
                if self.version_step > 0 {
                    work = work.with_version(rolled);
                }
                let work = Arc::new(work);
                self.issued
                    .insert(work.id, (self.generation, Arc::clone(&work)));
                return Some(work);
            }
            let combinations = 1u64 << base.version_mask.count_ones();
            if self.version_step + 1 < combinations {
                self.version_step += 1;
                self.next_offset = 0;
            } else {
                self.base = None;
            }
        }
    }
}

struct Inner {
    devices: Mutex<Vec<DeviceSlot>>,
    dispatch: Mutex<Dispatch>,
    shares: mpsc::Sender<Share>,
    shutdown: AtomicBool,
}

impl Inner {
    fn devices(&self) -> MutexGuard<'_, Vec<DeviceSlot>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatch(&self) -> MutexGuard<'_, Dispatch> {
        self.dispatch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a device its next slice, or idles it when the job has nothing left.
    fn feed(&self, slot: &mut DeviceSlot, dispatch: &mut Dispatch) {
        match dispatch.next_slice() {
            Some(work) => match slot.device.start((*work).clone()) {
                Ok(()) => slot.starved = false,
                Err(e) => {
                    slot.last_error = Some(e.to_string());
                    slot.device.stop();
                }
            },
            None => {
                slot.starved = true;
                slot.device.stop();
            }
        }
    }
}

/// Drives a set of devices.
pub struct Miner {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Miner {
    /// Takes ownership of the devices and the receiving end of their event channel; confirmed
    /// shares go to `shares`. Devices stay idle until [`Miner::set_source`].
    pub fn new(
        devices: Vec<Box<dyn Device>>,
        events: EventReceiver,
        shares: mpsc::Sender<Share>,
    ) -> Result<Self, EngineError> {
        if devices.is_empty() {
            return Err(EngineError::NoDevices);
        }
        let now = Instant::now();
        let slice = (NonceRange::FULL.len() / devices.len() as u64).min(MAX_SLICE);
        let slots = devices
            .into_iter()
            .map(|device| DeviceSlot {
                last_count: device.hashes_done().unwrap_or(0),
                device,
                meter: HashMeter::new(now),
                shares: 0,
                hardware_errors: 0,
                last_error: None,
                starved: false,
            })
            .collect();
        let inner = Arc::new(Inner {
            devices: Mutex::new(slots),
            dispatch: Mutex::new(Dispatch {
                source: None,
                base: None,
                next_offset: 0,
                version_step: 0,
                slice,
                nonce_span: NonceRange::FULL.len(),
                generation: 0,
                issued: HashMap::new(),
            }),
            shares,
            shutdown: AtomicBool::new(false),
        });
        let thread_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("miner".into())
            .spawn(move || event_loop(&thread_inner, events))
            .map_err(|e| EngineError::Device {
                device: "miner".into(),
                reason: format!("cannot start miner thread: {e}"),
            })?;
        Ok(Self {
            inner,
            thread: Some(thread),
        })
    }

    /// Switches every device to a new job at once (Stratum `clean_jobs`, a pool switch). Nonces
    /// still reported for the previous job are confirmed and passed on with their old job id, so
    /// the caller can count them as stale.
    pub fn set_source(&self, source: Box<dyn WorkSource>) {
        let mut devices = self.inner.devices();
        let mut dispatch = self.inner.dispatch();
        dispatch.source = Some(source);
        dispatch.base = None;
        dispatch.generation += 1;
        let keep_from = dispatch.generation.saturating_sub(KEEP_GENERATIONS);
        dispatch.issued.retain(|_, (g, _)| *g >= keep_from);
        for slot in devices.iter_mut() {
            self.inner.feed(slot, &mut dispatch);
        }
    }

    /// Uses at most `span` nonces of each header version before rolling the next combination of
    /// version bits (when the work allows rolling). The default spends the whole 2^32 nonce
    /// space first; a smaller span spreads work over versions sooner, which chips with
    /// per-version midstates prefer and which tests use to see rolled versions within seconds.
    /// Takes effect from the next header.
    pub fn set_nonce_span(&self, span: u64) {
        let mut dispatch = self.inner.dispatch();
        dispatch.nonce_span = span.clamp(1, NonceRange::FULL.len());
    }

    /// Stops every device until the next [`Miner::set_source`].
    pub fn idle(&self) {
        let mut devices = self.inner.devices();
        let mut dispatch = self.inner.dispatch();
        dispatch.source = None;
        dispatch.base = None;
        dispatch.generation += 1;
        for slot in devices.iter_mut() {
            slot.device.stop();
        }
    }

    /// Current figures.
    pub fn stats(&self) -> MinerStats {
        let now = Instant::now();
        let mut devices = self.inner.devices();
        sample(&mut devices, now);
        let stats: Vec<DeviceStats> = devices
            .iter()
            .map(|slot| DeviceStats {
                info: slot.device.info().clone(),
                rates: slot.meter.rates(now),
                hashes_total: slot.meter.total(),
                shares: slot.shares,
                hardware_errors: slot.hardware_errors,
                sensors: slot.device.sensors(),
                last_error: slot.last_error.clone(),
            })
            .collect();
        let rates = stats
            .iter()
            .fold(HashRates::default(), |acc, d| acc + d.rates);
        MinerStats {
            devices: stats,
            rates,
        }
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        self.idle();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Devices drop with `inner` (the CPU device joins its workers in its own Drop).
    }
}

fn sample(devices: &mut [DeviceSlot], now: Instant) {
    for slot in devices.iter_mut() {
        if let Some(count) = slot.device.hashes_done() {
            let delta = count.saturating_sub(slot.last_count);
            slot.last_count = count;
            slot.meter.record(delta, now);
        }
    }
}

fn event_loop(inner: &Inner, events: EventReceiver) {
    let mut last_sample = Instant::now();
    while !inner.shutdown.load(Ordering::Acquire) {
        match events.recv_timeout(SAMPLE_EVERY) {
            Ok(event) => handle(inner, event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now.duration_since(last_sample) >= SAMPLE_EVERY {
            sample(&mut inner.devices(), now);
            last_sample = now;
        }
    }
}

fn handle(inner: &Inner, event: DeviceEvent) {
    match event {
        DeviceEvent::Found {
            device,
            work_id,
            nonce,
            version,
        } => {
            let work = inner
                .dispatch()
                .issued
                .get(&work_id)
                .map(|(_, w)| Arc::clone(w));
            let mut devices = inner.devices();
            let Some(slot) = devices.iter_mut().find(|s| s.device.info().id == device) else {
                return;
            };
            // A nonce for a header we no longer remember is dropped, not blamed on the device.
            let Some(work) = work else { return };
            let mut header = work.header_with_nonce(nonce);
            let version = match version {
                Some(v) if (v ^ work.version()) & !work.version_mask == 0 => {
                    header[0..4].copy_from_slice(&v.to_le_bytes());
                    v
                }
                Some(_) => {
                    slot.hardware_errors += 1;
                    return;
                }
                None => work.version(),
            };
            let hash = work.algorithm.hash(&header);
            if work.target.is_met_by(&hash) {
                slot.shares += 1;
                let _ = inner.shares.send(Share {
                    device,
                    work,
                    nonce,
                    version,
                    header,
                    hash,
                });
            } else {
                slot.hardware_errors += 1;
            }
        }
        DeviceEvent::Exhausted { device, work_id } => {
            let mut devices = inner.devices();
            let mut dispatch = inner.dispatch();
            let current = dispatch
                .issued
                .get(&work_id)
                .is_some_and(|(g, _)| *g == dispatch.generation);
            if !current {
                return;
            }
            if let Some(slot) = devices.iter_mut().find(|s| s.device.info().id == device) {
                inner.feed(slot, &mut dispatch);
            }
        }
        DeviceEvent::Failed { device, reason } => {
            let mut devices = inner.devices();
            if let Some(slot) = devices.iter_mut().find(|s| s.device.info().id == device) {
                slot.last_error = Some(reason);
            }
        }
    }
}
