//! A GPU as a [`Device`]: one worker thread drives a [`GpuScanner`] over the nonce range of the
//! current work, one launch at a time, so new work reaches the card within one launch (about the
//! scanner's target launch time, 50 ms by default).
//!
//! Failures never take the rig down: a driver error, or a card that returns nonces the CPU
//! recheck refuses, ends this device's worker with [`DeviceEvent::Failed`] (the watchdog then
//! restarts or disables it) while the CPU and other devices keep mining. A refused nonce is
//! never reported as found.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::GpuScanner;
use crate::algo::{Algorithm, NonceRange};
use crate::device::{Device, DeviceEvent, DeviceId, DeviceInfo, DeviceKind, EventSender};
use crate::error::EngineError;
use crate::work::Work;

struct Slot {
    work: Option<Work>,
    generation: u64,
    shutdown: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
    hashes: AtomicU64,
    /// Nonces the CPU recheck refused (hardware errors).
    rejected: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One GPU mining one algorithm.
pub struct GpuDevice {
    info: DeviceInfo,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl GpuDevice {
    /// Starts the worker thread around `scanner` (idle until [`Device::start`]).
    pub fn new(
        scanner: GpuScanner,
        algorithm: Algorithm,
        events: EventSender,
    ) -> Result<Self, EngineError> {
        let gpu = scanner.info().clone();
        let id = DeviceId(gpu.id.clone());
        let info = DeviceInfo {
            id: id.clone(),
            kind: DeviceKind::Gpu,
            name: gpu.name.clone(),
            algorithm,
            path: gpu.route.name().to_string(),
            workers: gpu.compute_units,
        };
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                work: None,
                generation: 0,
                shutdown: false,
            }),
            changed: Condvar::new(),
            hashes: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name(format!("gpu-{}", gpu.id))
            .spawn(move || worker(scanner, id, &worker_shared, events))
            .map_err(|e| EngineError::Device {
                device: gpu.id.clone(),
                reason: format!("cannot start worker thread: {e}"),
            })?;
        Ok(Self {
            info,
            shared,
            worker: Some(worker),
        })
    }

    /// Nonces the CPU recheck refused so far.
    pub fn hardware_errors(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

impl Device for GpuDevice {
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
        slot.work = Some(work);
        slot.generation += 1;
        drop(slot);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn stop(&mut self) {
        let mut slot = self.shared.lock();
        slot.work = None;
        slot.generation += 1;
        drop(slot);
        self.shared.changed.notify_all();
    }

    fn hashes_done(&self) -> Option<u64> {
        Some(self.shared.hashes.load(Ordering::Relaxed))
    }
}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        let mut slot = self.shared.lock();
        slot.shutdown = true;
        slot.work = None;
        drop(slot);
        self.shared.changed.notify_all();
        if let Some(handle) = self.worker.take() {
            let _ = handle.join();
        }
    }
}

fn worker(mut scanner: GpuScanner, id: DeviceId, shared: &Shared, events: EventSender) {
    loop {
        let (work, generation) = {
            let mut slot = shared.lock();
            loop {
                if slot.shutdown {
                    return;
                }
                if let Some(work) = &slot.work {
                    break (work.clone(), slot.generation);
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let range = work.nonce_range;
        let len = range.len();
        let mut offset = 0u64;
        while offset < len {
            if shared.lock().generation != generation {
                break;
            }
            let step = u64::from(scanner.launch_nonces_for(work.algorithm)).min(len - offset);
            let first = range.first.wrapping_add(offset as u32);
            let part = NonceRange::new(first, first.wrapping_add((step - 1) as u32));
            let out = match scanner.scan(work.algorithm, &work.header, &work.target, part) {
                Ok(out) => out,
                Err(e) => {
                    let _ = events.send(DeviceEvent::Failed {
                        device: id.clone(),
                        reason: e.to_string(),
                    });
                    return;
                }
            };
            shared.hashes.fetch_add(step, Ordering::Relaxed);
            for nonce in out.candidates {
                // SHA-256d candidates meet the top word only: the whole target decides.
                let hash = work.algorithm.hash(&work.header_with_nonce(nonce));
                if work.target.is_met_by(&hash) {
                    let _ = events.send(DeviceEvent::Found {
                        device: id.clone(),
                        work_id: work.id,
                        nonce,
                        version: None,
                    });
                }
            }
            if out.rejected > 0 {
                shared.rejected.fetch_add(out.rejected, Ordering::Relaxed);
                let _ = events.send(DeviceEvent::Failed {
                    device: id.clone(),
                    reason: format!(
                        "{} nonce(s) from the GPU failed the CPU recheck (hardware errors); none was reported",
                        out.rejected
                    ),
                });
                return;
            }
            offset += step;
        }
        if offset >= len {
            let _ = events.send(DeviceEvent::Exhausted {
                device: id.clone(),
                work_id: work.id,
            });
            // Idle until new work arrives.
            let mut slot = shared.lock();
            while slot.generation == generation && !slot.shutdown {
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}
