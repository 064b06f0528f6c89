//! The CPU backend: one worker thread per selected core, pinned, all scanning the same work.
//!
//! Workers take chunks of the nonce range from an atomic cursor (each chunk lasts a few
//! milliseconds), so new work reaches every thread within one chunk of [`Device::start`].
//! Candidates from the kernel are confirmed with the portable hash before they are reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{Device, DeviceEvent, DeviceId, DeviceInfo, DeviceKind, EventSender};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::error::EngineError;
use crate::work::Work;

/// How to set up the CPU device.
#[derive(Clone, Debug)]
pub struct CpuConfig {
    /// The algorithm to mine.
    pub algorithm: Algorithm,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Pin worker `i` to core `i` (modulo the cores available).
    pub pin: bool,
    /// Kernel path to force (`None` picks the fastest, honouring `RIGFLEET_ENGINE_PATH`).
    pub path: Option<String>,
}

impl CpuConfig {
    /// All cores, pinned, fastest kernel.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            threads: 0,
            pin: true,
            path: None,
        }
    }
}

/// Work being scanned, shared by the workers.
struct Active {
    work: Work,
    generation: u64,
    /// Offset into `work.nonce_range` of the next chunk to hand out.
    cursor: AtomicU64,
    /// Set by the worker that reports the range exhausted, so it is reported once.
    exhausted: AtomicBool,
}

struct Slot {
    active: Option<Arc<Active>>,
    shutdown: bool,
}

struct Shared {
    id: DeviceId,
    kernel: &'static dyn Kernel,
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Bumped on every start/stop so workers notice between chunks without taking the lock.
    generation: AtomicU64,
    hashes: AtomicU64,
    events: EventSender,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A worker that panicked cannot leave the slot inconsistent (it only clones an Arc).
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The CPU as one device with many worker threads.
pub struct CpuDevice {
    info: DeviceInfo,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl CpuDevice {
    /// Starts the worker threads (idle until [`Device::start`]).
    pub fn new(config: CpuConfig, events: EventSender) -> Result<Self, EngineError> {
        let kernel = match &config.path {
            Some(path) => config.algorithm.kernel(path)?,
            None => config.algorithm.best_kernel()?,
        };
        let cores = available_cores();
        let threads = if config.threads == 0 {
            cores.len().max(1)
        } else {
            config.threads
        };
        let id = DeviceId("cpu".to_string());
        let shared = Arc::new(Shared {
            id: id.clone(),
            kernel,
            slot: Mutex::new(Slot {
                active: None,
                shutdown: false,
            }),
            changed: Condvar::new(),
            generation: AtomicU64::new(0),
            hashes: AtomicU64::new(0),
            events,
        });
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let core = (config.pin && !cores.is_empty()).then(|| cores[i % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("cpu-{}-{i}", kernel.algorithm()))
                .spawn(move || {
                    if let Some(core) = core {
                        pin_to_core(core);
                    }
                    worker(&shared)
                })
                .map_err(|e| EngineError::Device {
                    device: id.0.clone(),
                    reason: format!("cannot start worker thread: {e}"),
                })?;
            workers.push(handle);
        }
        Ok(Self {
            info: DeviceInfo {
                id,
                kind: DeviceKind::Cpu,
                name: cpu_model_name(),
                algorithm: config.algorithm,
                path: kernel.path().to_string(),
                workers: threads as u32,
            },
            shared,
            workers,
        })
    }
}

impl Device for CpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn start(&mut self, work: Work) -> Result<(), EngineError> {
        if work.algorithm != self.info.algorithm {
            return Err(EngineError::AlgorithmMismatch {
                work: work.algorithm.id(),
                device: self.info.algorithm.id(),
            });
        }
        let mut slot = self.shared.lock();
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        slot.active = Some(Arc::new(Active {
            work,
            generation,
            cursor: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        }));
        drop(slot);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn stop(&mut self) {
        let mut slot = self.shared.lock();
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        slot.active = None;
        drop(slot);
        self.shared.changed.notify_all();
    }

    fn hashes_done(&self) -> Option<u64> {
        Some(self.shared.hashes.load(Ordering::Relaxed))
    }
}

impl Drop for CpuDevice {
    fn drop(&mut self) {
        let mut slot = self.shared.lock();
        slot.shutdown = true;
        slot.active = None;
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        drop(slot);
        self.shared.changed.notify_all();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn worker(shared: &Shared) {
    let mut found = Vec::new();
    let chunk = u64::from(shared.kernel.chunk_nonces().max(1));
    loop {
        // Wait for work.
        let active = {
            let mut slot = shared.lock();
            loop {
                if slot.shutdown {
                    return;
                }
                if let Some(active) = &slot.active {
                    if !active.exhausted.load(Ordering::Acquire) {
                        break Arc::clone(active);
                    }
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let range = active.work.nonce_range;
        let len = range.len();
        while shared.generation.load(Ordering::Acquire) == active.generation {
            let offset = active.cursor.fetch_add(chunk, Ordering::Relaxed);
            if offset >= len {
                if !active.exhausted.swap(true, Ordering::AcqRel) {
                    let _ = shared.events.send(DeviceEvent::Exhausted {
                        device: shared.id.clone(),
                        work_id: active.work.id,
                    });
                }
                break;
            }
            let first = range.first + offset as u32;
            let last = range.first + (offset + chunk).min(len) as u32 - 1;
            found.clear();
            shared.kernel.scan(
                &active.work.header,
                &active.work.target,
                NonceRange::new(first, last),
                &mut found,
            );
            shared
                .hashes
                .fetch_add(u64::from(last - first) + 1, Ordering::Relaxed);
            for &nonce in &found {
                // The kernel's filter is coarse for SHA-256d (top word only): confirm the whole
                // target with the portable hash before reporting.
                let hash = active
                    .work
                    .algorithm
                    .hash(&active.work.header_with_nonce(nonce));
                if active.work.target.is_met_by(&hash) {
                    let _ = shared.events.send(DeviceEvent::Found {
                        device: shared.id.clone(),
                        work_id: active.work.id,
                        nonce,
                        version: None,
                    });
                }
            }
        }
    }
}

/// The cores this process may run on.
#[cfg(target_os = "linux")]
fn available_cores() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask owned by this frame; sched_getaffinity only writes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return fallback_cores();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn available_cores() -> Vec<usize> {
    fallback_cores()
}

fn fallback_cores() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Pins the calling thread; a failure only costs some speed, so it is ignored.
#[cfg(target_os = "linux")]
fn pin_to_core(core: usize) {
    // SAFETY: as above; 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_core(_core: usize) {}

/// The CPU's model name from /proc/cpuinfo, or a generic name.
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}
