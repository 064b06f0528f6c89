//! GPUs: one OpenCL C kernel source, two ways onto a card, and the host side they share.
//!
//! - [`opencl`]: the kernel text is built at run time by whatever OpenCL platform the machine has
//!   (PoCL on a CPU in the tests, a vendor driver on a card). `libOpenCL.so.1` is opened with
//!   `dlopen`, so the engine builds and runs where no OpenCL is installed.
//! - [`cuda`]: for NVIDIA cards without an OpenCL driver, the same source compiled to PTX by
//!   `scripts/build-ptx.sh` (clang's NVPTX target) is loaded through the CUDA driver API,
//!   `libcuda.so.1` opened with `dlopen` as well.
//!
//! Both implement [`GpuBackend`]: one launch hashes `count` consecutive nonces and returns the
//! candidates. [`GpuScanner`] sits on top and is what devices and the check command use: it
//! precomputes what does not depend on the nonce on the host, tunes the launch size toward a
//! target kernel time (50 ms by default: long enough to hide launch overhead, short enough that a
//! new job reaches the card quickly), rescans a launch on the CPU if the card found more
//! candidates than its buffer holds, and rechecks every candidate with the portable CPU code, so a
//! GPU that computes wrong answers is counted ([`ScanOutcome::rejected`]), never believed.
//! [`GpuDevice`] puts a scanner behind the engine's `Device` trait.

pub mod cuda;
mod device;
mod dynlib;
pub mod opencl;

use std::time::{Duration, Instant};

pub use device::GpuDevice;

use crate::algo::sha256d::precomp::Precomputed;
use crate::algo::sha256d::{self, Prepared};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;

/// The OpenCL C source of the SHA-256d kernel (also compiled to [`SHA256D_PTX`]).
pub const SHA256D_CL: &str = include_str!("kernels/sha256d.cl");
/// [`SHA256D_CL`] compiled to PTX by `scripts/build-ptx.sh`.
pub const SHA256D_PTX: &str = include_str!("kernels/sha256d.ptx");
/// Entry point of the SHA-256d kernel in both forms.
pub const SHA256D_ENTRY: &str = "sha256d_scan";
/// The OpenCL C source of the Scrypt kernel (also compiled to [`SCRYPT_PTX`]).
pub const SCRYPT_CL: &str = include_str!("kernels/scrypt.cl");
/// [`SCRYPT_CL`] compiled to PTX by `scripts/build-ptx.sh`.
pub const SCRYPT_PTX: &str = include_str!("kernels/scrypt.ptx");
/// Entry point of the Scrypt kernel in both forms.
pub const SCRYPT_ENTRY: &str = "scrypt_scan";
/// Scratchpad bytes per Scrypt nonce: N = 1024 entries of 128 bytes (r = 1).
pub const SCRYPT_SCRATCH_BYTES: u64 = 1024 * 128;
/// Most nonces in one Scrypt launch (16 GiB of scratchpad): beyond this a launch only gets longer.
pub const SCRYPT_MAX_LAUNCH: u32 = 1 << 17;

/// Candidate slots per launch. A share target passes about one nonce in 2^32/top; at pool
/// difficulties a launch of millions of nonces yields a handful. More than this many (tests with
/// very easy targets) is not lost: the launch is rescanned on the CPU.
pub const CANDIDATE_CAPACITY: u32 = 4096;

/// Launches are whole multiples of this many nonces (the CUDA block size; OpenCL picks its own).
pub const LAUNCH_GRANULE: u32 = 256;

/// Errors of the GPU backends. Each names the call that failed, so an operator's log says what
/// went wrong without a debugger.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The driver library is not installed (no OpenCL ICD loader, no NVIDIA driver).
    #[error("{library} could not be loaded: {reason}")]
    LibraryMissing {
        /// The library file name tried.
        library: &'static str,
        /// dlopen's message.
        reason: String,
    },
    /// The library has no such function (too old a driver).
    #[error("{library} has no function {symbol}")]
    SymbolMissing {
        /// The library file name.
        library: &'static str,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// A driver call returned an error code.
    #[error("{call} failed: {code}")]
    Api {
        /// The call.
        call: &'static str,
        /// The error code and its name.
        code: String,
    },
    /// The kernel did not compile or load; the driver's log is attached.
    #[error("kernel build failed on {device}: {log}")]
    Build {
        /// The device name.
        device: String,
        /// The compiler's log.
        log: String,
    },
    /// The algorithm has no GPU kernel yet.
    #[error("no GPU kernel for {0}")]
    Unsupported(&'static str),
    /// Not enough device memory for the launch.
    #[error("{0}")]
    Memory(String),
}

/// Which way the kernel reached the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// The OpenCL C source built by the machine's OpenCL driver.
    OpenCl,
    /// The PTX compiled from the same source, loaded through the CUDA driver API.
    CudaPtx,
}

impl Route {
    /// Short name for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Route::OpenCl => "opencl",
            Route::CudaPtx => "cuda-ptx",
        }
    }
}

/// Static facts about one GPU (or OpenCL CPU device) as its driver reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// Stable id: `pci:DDDD:BB:DD.F` when the driver reports the PCI address, else
    /// `opencl:<platform>:<device name>`.
    pub id: String,
    /// PCI bus id in NVML's form (`00000000:01:00.0`) when known, to merge with NVML readings.
    pub pci_bus_id: Option<String>,
    /// Device name from the driver.
    pub name: String,
    /// Platform or driver name (`NVIDIA CUDA`, `Portable Computing Language`, `CUDA driver 12080`).
    pub platform: String,
    /// How the kernel reaches the device.
    pub route: Route,
    /// Compute units (multiprocessors on NVIDIA).
    pub compute_units: u32,
    /// Whether the driver calls it a GPU (PoCL's CPU device is not).
    pub is_gpu: bool,
}

/// The per-header values the SHA-256d kernel takes, in argument order: the midstate (8 words),
/// the state entering round 4 with `W3 = 0` (8), `W16`, `W17`, `W18 - σ0(W3)`, `W19 - W3`.
pub fn sha256d_kernel_words(header: &[u8; 80]) -> [u32; 20] {
    let p = Precomputed::new(&Prepared::new(header));
    let mut words = [0u32; 20];
    words[..8].copy_from_slice(&p.midstate);
    words[8..16].copy_from_slice(&p.state4);
    words[16] = p.w16;
    words[17] = p.w17;
    words[18] = p.w18_base;
    words[19] = p.w19_base;
    words
}

/// The per-header values the Scrypt kernel takes: header words 0..18 (big-endian), then the
/// SHA-256 midstate of header bytes 0..64.
pub fn scrypt_kernel_words(header: &[u8; 80]) -> [u32; 27] {
    let p = Prepared::new(header);
    let mut words = [0u32; 27];
    for (i, w) in words.iter_mut().take(16).enumerate() {
        *w = u32::from_be_bytes([
            header[4 * i],
            header[4 * i + 1],
            header[4 * i + 2],
            header[4 * i + 3],
        ]);
    }
    words[16..19].copy_from_slice(&p.tail);
    words[19..27].copy_from_slice(&p.midstate);
    words
}

/// What one launch returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchOutput {
    /// How many nonces passed the kernel's filter (may exceed the slots).
    pub count: u32,
    /// The nonces in the slots, in no order.
    pub nonces: Vec<u32>,
}

/// One way of running the kernels on one device.
pub trait GpuBackend: Send {
    /// Static facts.
    fn info(&self) -> &GpuInfo;
    /// Hashes nonces `base, base+1, …, base+count-1` (wrapping past 0xFFFFFFFF) of the header
    /// described by `words` ([`sha256d_kernel_words`]) and returns those whose hash top word is at
    /// most `top`. `count` is a multiple of [`LAUNCH_GRANULE`]. Blocks until the launch is done.
    fn launch_sha256d(
        &mut self,
        words: &[u32; 20],
        top: u32,
        base: u32,
        count: u32,
    ) -> Result<LaunchOutput, GpuError>;

    /// As [`GpuBackend::launch_sha256d`] for Scrypt, with `words` from [`scrypt_kernel_words`];
    /// `count` is at most [`GpuBackend::max_scrypt_launch`].
    fn launch_scrypt(
        &mut self,
        words: &[u32; 27],
        top: u32,
        base: u32,
        count: u32,
    ) -> Result<LaunchOutput, GpuError>;

    /// The most Scrypt nonces one launch may hash (its scratchpad must fit the device).
    fn max_scrypt_launch(&self) -> u32;
}

/// The result of scanning a range on a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Nonces of the range whose hash top word meets the target's top word, ascending, each
    /// confirmed by the portable CPU code (the same contract as a CPU [`crate::Kernel`]).
    pub candidates: Vec<u32>,
    /// Nonces the GPU reported that the CPU recheck refused: hardware errors, never submitted.
    pub rejected: u64,
    /// Launches whose candidates overflowed the slots and were rescanned on the CPU.
    pub cpu_rescans: u32,
    /// Nonces hashed (the range, rounded up to whole launches).
    pub hashes: u64,
    /// Time spent in launches.
    pub busy: Duration,
}

/// A GPU with the host logic around its kernel: launch sizing, overflow and recheck.
pub struct GpuScanner {
    backend: Box<dyn GpuBackend>,
    /// SHA-256d launch size.
    launch_nonces: u32,
    /// Scrypt launch size (each nonce needs 128 KiB of scratchpad, so it starts small).
    scrypt_launch_nonces: u32,
    target_launch: Duration,
}

impl GpuScanner {
    /// Wraps a backend; the launch size starts small and grows toward `target_launch`.
    pub fn new(backend: Box<dyn GpuBackend>, target_launch: Duration) -> Self {
        Self {
            backend,
            launch_nonces: 1 << 16,
            scrypt_launch_nonces: LAUNCH_GRANULE,
            target_launch,
        }
    }

    /// Static facts of the device.
    pub fn info(&self) -> &GpuInfo {
        self.backend.info()
    }

    /// The launch size now in use for an algorithm.
    pub fn launch_nonces_for(&self, algorithm: Algorithm) -> u32 {
        match algorithm {
            Algorithm::Sha256d => self.launch_nonces,
            Algorithm::Scrypt => self.scrypt_launch_nonces,
        }
    }

    /// The SHA-256d launch size now in use.
    pub fn launch_nonces(&self) -> u32 {
        self.launch_nonces
    }

    /// Fixes the launch size (rounded to [`LAUNCH_GRANULE`]); tuning continues from there.
    pub fn set_launch_nonces(&mut self, n: u32) {
        self.launch_nonces = round_launch(u64::from(n));
    }

    /// Scans `range` of `header` against `target`: the same nonces a CPU kernel of the
    /// algorithm reports (SHA-256d: hash top word at most the target's; Scrypt: the whole target
    /// met), each confirmed on the CPU.
    pub fn scan(
        &mut self,
        algorithm: Algorithm,
        header: &[u8; 80],
        target: &Target,
        range: NonceRange,
    ) -> Result<ScanOutcome, GpuError> {
        let sha_words = sha256d_kernel_words(header);
        let scrypt_words = scrypt_kernel_words(header);
        let prepared = Prepared::new(header);
        let top = target.top_word();
        let mut out = ScanOutcome::default();
        let len = range.len();
        let mut offset = 0u64;
        while offset < len {
            let size = match algorithm {
                Algorithm::Sha256d => self.launch_nonces,
                Algorithm::Scrypt => self
                    .scrypt_launch_nonces
                    .min(self.backend.max_scrypt_launch()),
            };
            let want = (len - offset).min(u64::from(size));
            let count = round_launch(want);
            let base = range.first.wrapping_add(offset as u32);
            let started = Instant::now();
            let launch = match algorithm {
                Algorithm::Sha256d => self.backend.launch_sha256d(&sha_words, top, base, count)?,
                Algorithm::Scrypt => self
                    .backend
                    .launch_scrypt(&scrypt_words, top, base, count)?,
            };
            let elapsed = started.elapsed();
            out.busy += elapsed;
            out.hashes += u64::from(count);
            // The launch covers [base, base + count) but the range may end inside it; nonces
            // past 0xFFFFFFFF wrap to small values, which `contains` also drops.
            let last = range.first.wrapping_add((offset + want - 1) as u32);
            let part = NonceRange::new(base, last);
            if launch.count > CANDIDATE_CAPACITY || launch.nonces.len() as u64 > u64::from(count) {
                out.cpu_rescans += 1;
                match algorithm.best_kernel() {
                    Ok(kernel) => kernel.scan(header, target, part, &mut out.candidates),
                    Err(_) => {
                        sha256d::portable::PORTABLE.scan(header, target, part, &mut out.candidates)
                    }
                }
            } else {
                let mut nonces = launch.nonces;
                nonces.sort_unstable();
                nonces.dedup();
                for nonce in nonces {
                    if !part.contains(nonce) {
                        continue;
                    }
                    match algorithm {
                        Algorithm::Sha256d => {
                            if sha256d::portable::hash_top_word(&prepared, nonce) <= top {
                                out.candidates.push(nonce);
                            } else {
                                out.rejected += 1;
                            }
                        }
                        Algorithm::Scrypt => {
                            let mut h = *header;
                            crate::algo::set_nonce(&mut h, nonce);
                            let hash = Algorithm::Scrypt.hash(&h);
                            let hash_top =
                                u32::from_le_bytes([hash[28], hash[29], hash[30], hash[31]]);
                            if hash_top > top {
                                out.rejected += 1;
                            } else if target.is_met_by(&hash) {
                                out.candidates.push(nonce);
                            }
                        }
                    }
                }
            }
            if count == size {
                let tuned = tuned_launch(count, elapsed, self.target_launch);
                match algorithm {
                    Algorithm::Sha256d => self.launch_nonces = tuned,
                    Algorithm::Scrypt => self.scrypt_launch_nonces = tuned.min(SCRYPT_MAX_LAUNCH),
                }
            }
            offset += want;
        }
        Ok(out)
    }

    #[cfg(test)]
    fn tune(&mut self, count: u32, elapsed: Duration) {
        self.launch_nonces = tuned_launch(count, elapsed, self.target_launch);
    }
}

/// The launch size that moves toward the target time: at most 4× up or down per launch, so one
/// slow launch (a busy desktop, a clock change) does not swing it far.
fn tuned_launch(count: u32, elapsed: Duration, target: Duration) -> u32 {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let ratio = (target.as_secs_f64() / secs).clamp(0.25, 4.0);
    round_launch((f64::from(count) * ratio) as u64)
}

/// Rounds a nonce count up to whole granules, between one granule and 2^31.
fn round_launch(n: u64) -> u32 {
    let g = u64::from(LAUNCH_GRANULE);
    let n = n.clamp(g, 1 << 31);
    (n.div_ceil(g) * g) as u32
}

/// Every GPU found on this machine, and why a route found none.
#[derive(Default)]
pub struct Discovery {
    /// The devices that built the kernel, ready to scan.
    pub scanners: Vec<GpuScanner>,
    /// One line per route, device or build that failed; the CPU keeps mining regardless.
    pub problems: Vec<String>,
}

/// Which devices [`discover`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Try the OpenCL route.
    pub opencl: bool,
    /// Try the CUDA route (PTX).
    pub cuda: bool,
    /// Also use OpenCL devices that are not GPUs (PoCL's CPU device: tests and demos).
    pub include_cpu_devices: bool,
    /// Use the CUDA route for a card its OpenCL driver already serves (to compare the routes).
    pub both_routes: bool,
    /// Target time of one launch.
    pub target_launch: Duration,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            opencl: true,
            cuda: true,
            include_cpu_devices: false,
            both_routes: false,
            target_launch: Duration::from_millis(50),
        }
    }
}

/// Finds GPUs: OpenCL first (the vendor's own driver), then NVIDIA cards through the CUDA driver
/// that OpenCL did not already serve (matched by PCI bus id). Nothing here panics or aborts on a
/// missing library or a failing device: each failure becomes a line in [`Discovery::problems`].
pub fn discover(options: &DiscoverOptions) -> Discovery {
    let mut found = Discovery::default();
    if options.opencl {
        match opencl::devices() {
            Ok(list) => {
                for dev in list {
                    if !dev.info().is_gpu && !options.include_cpu_devices {
                        continue;
                    }
                    let name = dev.info().name.clone();
                    match dev.build_sha256d() {
                        Ok(backend) => found
                            .scanners
                            .push(GpuScanner::new(Box::new(backend), options.target_launch)),
                        Err(e) => found.problems.push(format!("opencl device {name}: {e}")),
                    }
                }
            }
            Err(e) => found.problems.push(format!("opencl: {e}")),
        }
    }
    if options.cuda {
        match cuda::devices() {
            Ok(list) => {
                for dev in list {
                    let served = found.scanners.iter().any(|s| {
                        s.info().pci_bus_id.is_some() && s.info().pci_bus_id == dev.pci_bus_id
                    });
                    if served && !options.both_routes {
                        continue;
                    }
                    let label = dev.name.clone();
                    match cuda::CudaBackend::new(&dev) {
                        Ok(backend) => found
                            .scanners
                            .push(GpuScanner::new(Box::new(backend), options.target_launch)),
                        Err(e) => found.problems.push(format!("cuda device {label}: {e}")),
                    }
                }
            }
            Err(e) => found.problems.push(format!("cuda: {e}")),
        }
    }
    found
}

/// `pci:` id from a PCI address in NVML's form, normalised to a 4-digit domain and lower case.
pub(crate) fn pci_device_id(domain: u32, bus: u32, device: u32, function: u32) -> (String, String) {
    (
        format!("pci:{domain:04x}:{bus:02x}:{device:02x}.{function:x}"),
        format!("{domain:08X}:{bus:02X}:{device:02X}.{function:X}"),
    )
}

#[cfg(test)]
mod tests;
