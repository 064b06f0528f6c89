//! The `Device` trait every hashing backend implements, and the events devices send.
//!
//! The trait is small so that very different hardware fits: CPU threads that count every hash,
//! GPUs that hash millions of nonces per launch, and ASIC chips that only report nonces (their
//! hash rate is estimated from the difficulty of what they find). A device receives [`Work`]
//! through [`Device::start`] and reports through an event channel; it never sees Stratum.

pub mod cpu;
pub mod gpu;

use std::sync::mpsc;

use crate::algo::Algorithm;
use crate::error::EngineError;
use crate::work::{Work, WorkId};

/// A device's stable id: a PCI bus id, USB path or serial, IP/MAC, or `cpu` for the CPU; never an
/// index, so that history and settings survive reordering.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub String);

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of hardware a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// CPU cores running the engine's kernels.
    Cpu,
    /// A GPU running an OpenCL kernel.
    Gpu,
    /// A USB ASIC stick or board.
    UsbAsic,
    /// A network-attached ASIC with its own firmware.
    LanAsic,
}

/// Static facts about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Stable id.
    pub id: DeviceId,
    /// Hardware kind.
    pub kind: DeviceKind,
    /// Human-readable model name.
    pub name: String,
    /// The algorithm the device is set up for.
    pub algorithm: Algorithm,
    /// The kernel code path (`avx512`, `shani`…) or firmware name.
    pub path: String,
    /// Worker threads, compute units or chips.
    pub workers: u32,
}

/// Sensor readings; `None` where the device has no such sensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sensors {
    /// Hottest temperature sensor of the device.
    pub temperature_celsius: Option<f32>,
    /// Fan speed.
    pub fan_rpm: Option<u32>,
    /// Power draw.
    pub power_watts: Option<f32>,
}

/// What a device tells the miner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A nonce that the device believes meets the work's target. The miner rechecks it.
    Found {
        /// Which device.
        device: DeviceId,
        /// The header it was found on.
        work_id: WorkId,
        /// The nonce.
        nonce: u32,
        /// The nVersion used, when the device rolled version bits itself (ASIC chips do).
        version: Option<u32>,
    },
    /// The device has tried every nonce of this work and is idle until it gets more.
    Exhausted {
        /// Which device.
        device: DeviceId,
        /// The finished work.
        work_id: WorkId,
    },
    /// The device stopped working.
    Failed {
        /// Which device.
        device: DeviceId,
        /// Why.
        reason: String,
    },
}

/// The sending side of a device's event channel.
pub type EventSender = mpsc::Sender<DeviceEvent>;
/// The receiving side, held by the miner.
pub type EventReceiver = mpsc::Receiver<DeviceEvent>;

/// A channel for device events.
pub fn event_channel() -> (EventSender, EventReceiver) {
    mpsc::channel()
}

/// A hashing device.
pub trait Device: Send {
    /// Static facts.
    fn info(&self) -> &DeviceInfo;

    /// Replaces whatever the device is doing with `work`. Returns quickly; the device switches
    /// within milliseconds (the CPU backend at its next chunk boundary).
    fn start(&mut self, work: Work) -> Result<(), EngineError>;

    /// Stops hashing; the device stays ready for the next [`Device::start`].
    fn stop(&mut self);

    /// Every hash computed since the device was created, for devices that count them (CPU, GPU);
    /// `None` for devices that only report nonces (ASIC chips).
    fn hashes_done(&self) -> Option<u64>;

    /// Current sensor readings.
    fn sensors(&self) -> Sensors {
        Sensors::default()
    }
}
