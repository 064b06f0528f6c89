//! The OpenCL route: `libOpenCL.so.1` (the ICD loader, which dispatches to PoCL, NVIDIA's or
//! AMD's driver) opened at run time, the kernel source built for each device.
//!
//! Only the dozen calls the scanner needs are declared, with the C signatures of the Khronos
//! headers (`CL/cl.h`, OpenCL 1.2: every platform in use has them).

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use super::dynlib::DynLib;
use super::{
    GpuBackend, GpuError, GpuInfo, LaunchOutput, Route, CANDIDATE_CAPACITY, LAUNCH_GRANULE,
};

type ClInt = i32;
type ClUint = u32;
type Handle = *mut c_void;

const CL_SUCCESS: ClInt = 0;
const CL_DEVICE_TYPE_ALL: u64 = 0xFFFF_FFFF;
const CL_DEVICE_TYPE_GPU: u64 = 1 << 2;
const CL_PLATFORM_NAME: ClUint = 0x0902;
const CL_DEVICE_TYPE: ClUint = 0x1000;
const CL_DEVICE_MAX_COMPUTE_UNITS: ClUint = 0x1002;
const CL_DEVICE_NAME: ClUint = 0x102B;
/// `cl_nv_device_attribute_query`: PCI bus and slot of an NVIDIA device.
const CL_DEVICE_PCI_BUS_ID_NV: ClUint = 0x4008;
const CL_DEVICE_PCI_SLOT_ID_NV: ClUint = 0x4009;
const CL_DEVICE_PCI_DOMAIN_ID_NV: ClUint = 0x400A;
const CL_DEVICE_EXTENSIONS: ClUint = 0x1030;
const CL_DEVICE_GLOBAL_MEM_SIZE: ClUint = 0x101F;
const CL_DEVICE_MAX_MEM_ALLOC_SIZE: ClUint = 0x1010;
const CL_PROGRAM_BUILD_LOG: ClUint = 0x1183;
const CL_MEM_READ_WRITE: u64 = 1;

type GetPlatformIds = unsafe extern "C" fn(ClUint, *mut Handle, *mut ClUint) -> ClInt;
type GetInfo = unsafe extern "C" fn(Handle, ClUint, usize, *mut c_void, *mut usize) -> ClInt;
type GetDeviceIds = unsafe extern "C" fn(Handle, u64, ClUint, *mut Handle, *mut ClUint) -> ClInt;
type CreateContext = unsafe extern "C" fn(
    *const isize,
    ClUint,
    *const Handle,
    *const c_void,
    *mut c_void,
    *mut ClInt,
) -> Handle;
type CreateCommandQueue = unsafe extern "C" fn(Handle, Handle, u64, *mut ClInt) -> Handle;
type CreateProgramWithSource =
    unsafe extern "C" fn(Handle, ClUint, *const *const c_char, *const usize, *mut ClInt) -> Handle;
type BuildProgram = unsafe extern "C" fn(
    Handle,
    ClUint,
    *const Handle,
    *const c_char,
    *const c_void,
    *mut c_void,
) -> ClInt;
type GetBuildInfo =
    unsafe extern "C" fn(Handle, Handle, ClUint, usize, *mut c_void, *mut usize) -> ClInt;
type CreateKernel = unsafe extern "C" fn(Handle, *const c_char, *mut ClInt) -> Handle;
type CreateBuffer = unsafe extern "C" fn(Handle, u64, usize, *mut c_void, *mut ClInt) -> Handle;
type SetKernelArg = unsafe extern "C" fn(Handle, ClUint, usize, *const c_void) -> ClInt;
type EnqueueNdRange = unsafe extern "C" fn(
    Handle,
    Handle,
    ClUint,
    *const usize,
    *const usize,
    *const usize,
    ClUint,
    *const Handle,
    *mut Handle,
) -> ClInt;
type EnqueueWrite = unsafe extern "C" fn(
    Handle,
    Handle,
    ClUint,
    usize,
    usize,
    *const c_void,
    ClUint,
    *const Handle,
    *mut Handle,
) -> ClInt;
type EnqueueRead = unsafe extern "C" fn(
    Handle,
    Handle,
    ClUint,
    usize,
    usize,
    *mut c_void,
    ClUint,
    *const Handle,
    *mut Handle,
) -> ClInt;
type Release = unsafe extern "C" fn(Handle) -> ClInt;

/// The OpenCL functions in use, taken from the loader once.
struct Api {
    _lib: DynLib,
    get_platform_ids: GetPlatformIds,
    get_platform_info: GetInfo,
    get_device_ids: GetDeviceIds,
    get_device_info: GetInfo,
    create_context: CreateContext,
    create_command_queue: CreateCommandQueue,
    create_program_with_source: CreateProgramWithSource,
    build_program: BuildProgram,
    get_program_build_info: GetBuildInfo,
    create_kernel: CreateKernel,
    create_buffer: CreateBuffer,
    set_kernel_arg: SetKernelArg,
    enqueue_nd_range_kernel: EnqueueNdRange,
    enqueue_write_buffer: EnqueueWrite,
    enqueue_read_buffer: EnqueueRead,
    finish: Release,
    release_mem_object: Release,
    release_kernel: Release,
    release_program: Release,
    release_command_queue: Release,
    release_context: Release,
}

impl Api {
    fn load() -> Result<Arc<Self>, GpuError> {
        let lib = DynLib::open(&["libOpenCL.so.1", "libOpenCL.so"])?;
        // SAFETY: each type above is the function's signature in the Khronos headers.
        unsafe {
            Ok(Arc::new(Self {
                get_platform_ids: lib.get("clGetPlatformIDs")?,
                get_platform_info: lib.get("clGetPlatformInfo")?,
                get_device_ids: lib.get("clGetDeviceIDs")?,
                get_device_info: lib.get("clGetDeviceInfo")?,
                create_context: lib.get("clCreateContext")?,
                create_command_queue: lib.get("clCreateCommandQueue")?,
                create_program_with_source: lib.get("clCreateProgramWithSource")?,
                build_program: lib.get("clBuildProgram")?,
                get_program_build_info: lib.get("clGetProgramBuildInfo")?,
                create_kernel: lib.get("clCreateKernel")?,
                create_buffer: lib.get("clCreateBuffer")?,
                set_kernel_arg: lib.get("clSetKernelArg")?,
                enqueue_nd_range_kernel: lib.get("clEnqueueNDRangeKernel")?,
                enqueue_write_buffer: lib.get("clEnqueueWriteBuffer")?,
                enqueue_read_buffer: lib.get("clEnqueueReadBuffer")?,
                finish: lib.get("clFinish")?,
                release_mem_object: lib.get("clReleaseMemObject")?,
                release_kernel: lib.get("clReleaseKernel")?,
                release_program: lib.get("clReleaseProgram")?,
                release_command_queue: lib.get("clReleaseCommandQueue")?,
                release_context: lib.get("clReleaseContext")?,
                _lib: lib,
            }))
        }
    }
}

fn check(call: &'static str, code: ClInt) -> Result<(), GpuError> {
    if code == CL_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Api {
            call,
            code: format!("{code} ({})", error_name(code)),
        })
    }
}

fn error_name(code: ClInt) -> &'static str {
    match code {
        -1 => "CL_DEVICE_NOT_FOUND",
        -2 => "CL_DEVICE_NOT_AVAILABLE",
        -4 => "CL_MEM_OBJECT_ALLOCATION_FAILURE",
        -5 => "CL_OUT_OF_RESOURCES",
        -6 => "CL_OUT_OF_HOST_MEMORY",
        -11 => "CL_BUILD_PROGRAM_FAILURE",
        -30 => "CL_INVALID_VALUE",
        -33 => "CL_INVALID_DEVICE",
        -36 => "CL_INVALID_COMMAND_QUEUE",
        -38 => "CL_INVALID_MEM_OBJECT",
        -46 => "CL_INVALID_KERNEL_NAME",
        -48 => "CL_INVALID_KERNEL",
        -51 => "CL_INVALID_ARG_SIZE",
        -52 => "CL_INVALID_KERNEL_ARGS",
        -54 => "CL_INVALID_WORK_GROUP_SIZE",
        -1001 => "CL_PLATFORM_NOT_FOUND_KHR (no OpenCL driver installed)",
        _ => "see CL/cl.h",
    }
}

/// A string property (`clGet*Info` with a `char[]` result).
fn info_string(
    f: GetInfo,
    call: &'static str,
    obj: Handle,
    param: ClUint,
) -> Result<String, GpuError> {
    let mut size = 0usize;
    // SAFETY: a size query writes only `size`.
    check(call, unsafe {
        f(obj, param, 0, ptr::null_mut(), &mut size)
    })?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` holds `size` bytes.
    check(call, unsafe {
        f(
            obj,
            param,
            buf.len(),
            buf.as_mut_ptr().cast(),
            ptr::null_mut(),
        )
    })?;
    let text = CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&buf).into_owned());
    Ok(text.trim().to_string())
}

/// A fixed-size property (`cl_uint`, `cl_ulong`…).
fn info_value<T: Copy + Default>(
    f: GetInfo,
    call: &'static str,
    obj: Handle,
    param: ClUint,
) -> Result<T, GpuError> {
    let mut value = T::default();
    // SAFETY: `value` is `size_of::<T>()` writable bytes, the size the property has.
    check(call, unsafe {
        f(
            obj,
            param,
            std::mem::size_of::<T>(),
            (&mut value as *mut T).cast(),
            ptr::null_mut(),
        )
    })?;
    Ok(value)
}

/// Serialises program builds (see `ClBackend::new`).
static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One OpenCL device, not yet set up.
pub struct ClDevice {
    api: Arc<Api>,
    device: Handle,
    info: GpuInfo,
}

// SAFETY: OpenCL handles may be used from any thread (OpenCL 1.2 §A.2: all API calls are
// thread-safe except clSetKernelArg on one kernel, which only the owning backend calls).
unsafe impl Send for ClDevice {}

impl ClDevice {
    /// Static facts.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Builds the SHA-256d kernel for this device (the Scrypt kernel is built on first use).
    pub fn build_sha256d(self) -> Result<ClBackend, GpuError> {
        ClBackend::new(self)
    }
}

/// Every device of every OpenCL platform. An empty list when the loader finds no platform; an
/// error when the loader itself is missing.
pub fn devices() -> Result<Vec<ClDevice>, GpuError> {
    let api = Api::load()?;
    let mut n = 0u32;
    // SAFETY: a count query.
    let code = unsafe { (api.get_platform_ids)(0, ptr::null_mut(), &mut n) };
    if code == -1001 || n == 0 {
        return Ok(Vec::new());
    }
    check("clGetPlatformIDs", code)?;
    let mut platforms = vec![ptr::null_mut(); n as usize];
    // SAFETY: room for `n` handles.
    check("clGetPlatformIDs", unsafe {
        (api.get_platform_ids)(n, platforms.as_mut_ptr(), ptr::null_mut())
    })?;
    let mut out = Vec::new();
    for platform in platforms {
        let platform_name = info_string(
            api.get_platform_info,
            "clGetPlatformInfo",
            platform,
            CL_PLATFORM_NAME,
        )
        .unwrap_or_else(|_| "unknown platform".to_string());
        let mut count = 0u32;
        // SAFETY: a count query.
        let code = unsafe {
            (api.get_device_ids)(platform, CL_DEVICE_TYPE_ALL, 0, ptr::null_mut(), &mut count)
        };
        if code != CL_SUCCESS || count == 0 {
            continue;
        }
        let mut devices = vec![ptr::null_mut(); count as usize];
        // SAFETY: room for `count` handles.
        check("clGetDeviceIDs", unsafe {
            (api.get_device_ids)(
                platform,
                CL_DEVICE_TYPE_ALL,
                count,
                devices.as_mut_ptr(),
                ptr::null_mut(),
            )
        })?;
        for device in devices {
            let gi = api.get_device_info;
            let name = info_string(gi, "clGetDeviceInfo", device, CL_DEVICE_NAME)
                .unwrap_or_else(|_| "unknown device".to_string());
            let kind: u64 = info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_TYPE).unwrap_or(0);
            let compute_units: u32 =
                info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_MAX_COMPUTE_UNITS).unwrap_or(0);
            let extensions = info_string(gi, "clGetDeviceInfo", device, CL_DEVICE_EXTENSIONS)
                .unwrap_or_default();
            let pci = if extensions.contains("cl_nv_device_attribute_query") {
                let bus: Option<u32> =
                    info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_PCI_BUS_ID_NV).ok();
                let slot: Option<u32> =
                    info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_PCI_SLOT_ID_NV).ok();
                let domain: u32 =
                    info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_PCI_DOMAIN_ID_NV)
                        .unwrap_or(0);
                // NVIDIA's driver reports the PCI device number as the slot (seen on an H200 at
                // 0000:00:06.0: slot 6), function 0 (GPUs are function 0 of their device).
                bus.zip(slot)
                    .map(|(bus, slot)| super::pci_device_id(domain, bus, slot, 0))
            } else {
                None
            };
            let (id, pci_bus_id) = match pci {
                Some((id, bus)) => (id, Some(bus)),
                None => (format!("opencl:{platform_name}:{name}"), None),
            };
            out.push(ClDevice {
                api: Arc::clone(&api),
                device,
                info: GpuInfo {
                    id,
                    pci_bus_id,
                    name,
                    platform: platform_name.clone(),
                    route: Route::OpenCl,
                    compute_units,
                    is_gpu: kind & CL_DEVICE_TYPE_GPU != 0,
                },
            });
        }
    }
    Ok(out)
}

/// A device with the kernel built, its queue and its candidate buffer.
pub struct ClBackend {
    api: Arc<Api>,
    info: GpuInfo,
    device: Handle,
    context: Handle,
    queue: Handle,
    /// SHA-256d program and kernel.
    program: Handle,
    kernel: Handle,
    /// Scrypt program and kernel, built on first use.
    scrypt: Option<(Handle, Handle)>,
    /// Candidate counter and slots.
    out: Handle,
    /// Scrypt's per-header words.
    words: Handle,
    /// Scrypt scratchpad and how many nonces it holds.
    scratch: Handle,
    scratch_nonces: u32,
    /// Largest single buffer the device allows.
    max_alloc: u64,
}

// SAFETY: see `ClDevice`; the kernel object is used by this backend alone.
unsafe impl Send for ClBackend {}

impl ClBackend {
    fn new(dev: ClDevice) -> Result<Self, GpuError> {
        let api = dev.api;
        let device = dev.device;
        let mut err = 0;
        // SAFETY: one valid device handle; no properties, no callback.
        let context = unsafe {
            (api.create_context)(
                ptr::null(),
                1,
                &device,
                ptr::null(),
                ptr::null_mut(),
                &mut err,
            )
        };
        check("clCreateContext", err)?;
        let gi = api.get_device_info;
        let global: u64 =
            info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_GLOBAL_MEM_SIZE).unwrap_or(0);
        let max_alloc: u64 =
            info_value(gi, "clGetDeviceInfo", device, CL_DEVICE_MAX_MEM_ALLOC_SIZE).unwrap_or(0);
        let mut me = Self {
            api: Arc::clone(&api),
            info: dev.info,
            device,
            context,
            queue: ptr::null_mut(),
            program: ptr::null_mut(),
            kernel: ptr::null_mut(),
            scrypt: None,
            out: ptr::null_mut(),
            words: ptr::null_mut(),
            scratch: ptr::null_mut(),
            scratch_nonces: 0,
            // Leave half the memory to others (the display, other programs).
            max_alloc: max_alloc.min(global / 2),
        };
        // SAFETY: valid context and device; default (in-order) queue.
        me.queue = unsafe { (api.create_command_queue)(context, device, 0, &mut err) };
        check("clCreateCommandQueue", err)?;
        let (program, kernel) = me.build(super::SHA256D_CL, super::SHA256D_ENTRY)?;
        me.program = program;
        me.kernel = kernel;
        me.out = me.buffer((1 + CANDIDATE_CAPACITY as usize) * 4)?;
        Ok(me)
    }

    fn buffer(&self, bytes: usize) -> Result<Handle, GpuError> {
        let mut err = 0;
        // SAFETY: a device buffer with no host pointer.
        let buf = unsafe {
            (self.api.create_buffer)(
                self.context,
                CL_MEM_READ_WRITE,
                bytes,
                ptr::null_mut(),
                &mut err,
            )
        };
        check("clCreateBuffer", err)?;
        Ok(buf)
    }

    /// Builds `source` and takes its kernel `entry`.
    fn build(&self, source: &str, entry: &str) -> Result<(Handle, Handle), GpuError> {
        let api = &self.api;
        let mut err = 0;
        let src = source.as_ptr().cast::<c_char>();
        let len = source.len();
        // SAFETY: one string of `len` bytes.
        let program =
            unsafe { (api.create_program_with_source)(self.context, 1, &src, &len, &mut err) };
        check("clCreateProgramWithSource", err)?;
        let options = c"-cl-std=CL1.2";
        let code = {
            // One build at a time in this process: PoCL 3.1 was seen to crash when two threads
            // built programs at once (two tests in parallel), and builds are rare.
            let _build = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: valid program and device, NUL-terminated options, synchronous build.
            unsafe {
                (api.build_program)(
                    program,
                    1,
                    &self.device,
                    options.as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                )
            }
        };
        if code != CL_SUCCESS {
            let log = info_string_build(api, program, self.device)
                .unwrap_or_else(|e| format!("(no build log: {e})"));
            // SAFETY: created above, released once.
            unsafe { (api.release_program)(program) };
            return Err(GpuError::Build {
                device: self.info.name.clone(),
                log: format!("error {code} ({}): {log}", error_name(code)),
            });
        }
        let entry_c = std::ffi::CString::new(entry).map_err(|_| GpuError::Api {
            call: "clCreateKernel",
            code: "kernel name has a NUL byte".to_string(),
        })?;
        // SAFETY: built program, NUL-terminated name.
        let kernel = unsafe { (api.create_kernel)(program, entry_c.as_ptr(), &mut err) };
        if let Err(e) = check("clCreateKernel", err) {
            // SAFETY: created above, released once.
            unsafe { (api.release_program)(program) };
            return Err(e);
        }
        Ok((program, kernel))
    }

    /// Writes `bytes` at the start of `buffer` (blocking).
    fn write(&self, buffer: Handle, bytes: &[u8]) -> Result<(), GpuError> {
        // SAFETY: blocking write of `bytes.len()` bytes into a buffer at least that large.
        check("clEnqueueWriteBuffer", unsafe {
            (self.api.enqueue_write_buffer)(
                self.queue,
                buffer,
                1,
                0,
                bytes.len(),
                bytes.as_ptr().cast(),
                0,
                ptr::null(),
                ptr::null_mut(),
            )
        })
    }

    /// Runs `kernel` over `count` work items and reads the candidates back.
    fn run(&self, kernel: Handle, count: u32) -> Result<LaunchOutput, GpuError> {
        let global = count as usize;
        // A fixed work-group size: some platforms (PoCL) compile the kernel again for every new
        // group size, and a size the driver picks from each launch's global size would change
        // whenever the launch size is tuned. `count` is a multiple of it.
        let local = LAUNCH_GRANULE as usize;
        // SAFETY: a 1-D launch with every argument set by the caller.
        check("clEnqueueNDRangeKernel", unsafe {
            (self.api.enqueue_nd_range_kernel)(
                self.queue,
                kernel,
                1,
                ptr::null(),
                &global,
                &local,
                0,
                ptr::null(),
                ptr::null_mut(),
            )
        })?;
        let mut head = [0u32; 1];
        // SAFETY: blocking read of 4 bytes into `head` (in-order queue: after the kernel).
        check("clEnqueueReadBuffer", unsafe {
            (self.api.enqueue_read_buffer)(
                self.queue,
                self.out,
                1,
                0,
                4,
                head.as_mut_ptr().cast(),
                0,
                ptr::null(),
                ptr::null_mut(),
            )
        })?;
        let count_found = head[0];
        let n = count_found.min(CANDIDATE_CAPACITY) as usize;
        let mut nonces = vec![0u32; n];
        if n > 0 {
            // SAFETY: `n` slots after the counter, inside the buffer's 1 + capacity words.
            check("clEnqueueReadBuffer", unsafe {
                (self.api.enqueue_read_buffer)(
                    self.queue,
                    self.out,
                    1,
                    4,
                    n * 4,
                    nonces.as_mut_ptr().cast(),
                    0,
                    ptr::null(),
                    ptr::null_mut(),
                )
            })?;
        }
        Ok(LaunchOutput {
            count: count_found,
            nonces,
        })
    }

    fn set_arg<T>(&self, kernel: Handle, index: u32, value: &T) -> Result<(), GpuError> {
        // SAFETY: `value` points at `size_of::<T>()` readable bytes; OpenCL copies them.
        check("clSetKernelArg", unsafe {
            (self.api.set_kernel_arg)(
                kernel,
                index,
                std::mem::size_of::<T>(),
                (value as *const T).cast(),
            )
        })
    }
}

fn info_string_build(api: &Api, program: Handle, device: Handle) -> Result<String, GpuError> {
    let mut size = 0usize;
    // SAFETY: a size query.
    check("clGetProgramBuildInfo", unsafe {
        (api.get_program_build_info)(
            program,
            device,
            CL_PROGRAM_BUILD_LOG,
            0,
            ptr::null_mut(),
            &mut size,
        )
    })?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` holds `size` bytes.
    check("clGetProgramBuildInfo", unsafe {
        (api.get_program_build_info)(
            program,
            device,
            CL_PROGRAM_BUILD_LOG,
            buf.len(),
            buf.as_mut_ptr().cast(),
            ptr::null_mut(),
        )
    })?;
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .trim()
        .to_string())
}

impl GpuBackend for ClBackend {
    fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn launch_sha256d(
        &mut self,
        words: &[u32; 20],
        top: u32,
        base: u32,
        count: u32,
    ) -> Result<LaunchOutput, GpuError> {
        let k = self.kernel;
        for (i, w) in words.iter().enumerate() {
            self.set_arg(k, i as u32, w)?;
        }
        self.set_arg(k, 20, &base)?;
        self.set_arg(k, 21, &top)?;
        self.set_arg(k, 22, &CANDIDATE_CAPACITY)?;
        self.set_arg(k, 23, &self.out)?;
        self.write(self.out, &0u32.to_ne_bytes())?;
        self.run(k, count)
    }

    fn launch_scrypt(
        &mut self,
        words: &[u32; 27],
        top: u32,
        base: u32,
        count: u32,
    ) -> Result<LaunchOutput, GpuError> {
        if count > self.max_scrypt_launch() {
            return Err(GpuError::Memory(format!(
                "{count} Scrypt nonces need more than the device's largest buffer"
            )));
        }
        let kernel = match self.scrypt {
            Some((_, kernel)) => kernel,
            None => {
                let built = self.build(super::SCRYPT_CL, super::SCRYPT_ENTRY)?;
                self.scrypt = Some(built);
                self.words = self.buffer(27 * 4)?;
                built.1
            }
        };
        if count > self.scratch_nonces {
            if !self.scratch.is_null() {
                // SAFETY: created by this backend; no launch is in flight (launches block).
                unsafe { (self.api.release_mem_object)(self.scratch) };
                self.scratch = ptr::null_mut();
                self.scratch_nonces = 0;
            }
            self.scratch =
                self.buffer((u64::from(count) * super::SCRYPT_SCRATCH_BYTES) as usize)?;
            self.scratch_nonces = count;
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.write(self.words, &bytes)?;
        self.write(self.out, &0u32.to_ne_bytes())?;
        self.set_arg(kernel, 0, &self.words)?;
        self.set_arg(kernel, 1, &base)?;
        self.set_arg(kernel, 2, &top)?;
        self.set_arg(kernel, 3, &CANDIDATE_CAPACITY)?;
        self.set_arg(kernel, 4, &self.out)?;
        self.set_arg(kernel, 5, &self.scratch)?;
        self.run(kernel, count)
    }

    fn max_scrypt_launch(&self) -> u32 {
        let n =
            (self.max_alloc / super::SCRYPT_SCRATCH_BYTES).min(u64::from(super::SCRYPT_MAX_LAUNCH));
        (n as u32 / LAUNCH_GRANULE * LAUNCH_GRANULE).max(LAUNCH_GRANULE)
    }
}

impl Drop for ClBackend {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this backend and is released once; null ones skip.
        unsafe {
            if !self.queue.is_null() {
                (self.api.finish)(self.queue);
            }
            for buf in [self.out, self.words, self.scratch] {
                if !buf.is_null() {
                    (self.api.release_mem_object)(buf);
                }
            }
            if let Some((program, kernel)) = self.scrypt {
                (self.api.release_kernel)(kernel);
                (self.api.release_program)(program);
            }
            if !self.kernel.is_null() {
                (self.api.release_kernel)(self.kernel);
            }
            if !self.program.is_null() {
                (self.api.release_program)(self.program);
            }
            if !self.queue.is_null() {
                (self.api.release_command_queue)(self.queue);
            }
            if !self.context.is_null() {
                (self.api.release_context)(self.context);
            }
        }
    }
}
