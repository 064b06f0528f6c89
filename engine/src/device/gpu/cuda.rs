//! The CUDA route: the PTX compiled from the OpenCL C source (`scripts/build-ptx.sh`) loaded
//! through the CUDA driver API, `libcuda.so.1` opened at run time. This is how an NVIDIA card
//! mines where the driver has no OpenCL part (containers often mount only libcuda and NVML).
//!
//! Only the driver calls the scanner needs are declared, with the signatures of `cuda.h` (the
//! `_v2` entry points, which every driver since CUDA 4 exports).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use super::dynlib::DynLib;
use super::{GpuBackend, GpuError, GpuInfo, LaunchOutput, Route, CANDIDATE_CAPACITY};

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuDevicePtr = u64;

const CUDA_SUCCESS: CuResult = 0;
const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: c_int = 16;
/// `CU_JIT_ERROR_LOG_BUFFER` and its size: where the PTX compiler writes why a load failed.
const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
/// Threads per block: the launch granule.
const BLOCK: u32 = super::LAUNCH_GRANULE;

type Init = unsafe extern "C" fn(c_uint) -> CuResult;
type DriverGetVersion = unsafe extern "C" fn(*mut c_int) -> CuResult;
type DeviceGetCount = unsafe extern "C" fn(*mut c_int) -> CuResult;
type DeviceGet = unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult;
type DeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult;
type DeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult;
type CtxCreate = unsafe extern "C" fn(*mut CuContext, c_uint, CuDevice) -> CuResult;
type CtxSetCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
type CtxDestroy = unsafe extern "C" fn(CuContext) -> CuResult;
type CtxSynchronize = unsafe extern "C" fn() -> CuResult;
type ModuleLoadDataEx = unsafe extern "C" fn(
    *mut CuModule,
    *const c_void,
    c_uint,
    *mut c_int,
    *mut *mut c_void,
) -> CuResult;
type ModuleGetFunction = unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult;
type DeviceTotalMem = unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult;
type MemAlloc = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type MemFree = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type MemcpyHtoD = unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult;
type MemcpyDtoH = unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult;
type LaunchKernel = unsafe extern "C" fn(
    CuFunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;
type GetErrorName = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;

struct Api {
    _lib: DynLib,
    driver_version: c_int,
    device_get_count: DeviceGetCount,
    device_get: DeviceGet,
    device_get_name: DeviceGetName,
    device_get_pci_bus_id: DeviceGetName,
    device_get_attribute: DeviceGetAttribute,
    ctx_create: CtxCreate,
    ctx_set_current: CtxSetCurrent,
    ctx_destroy: CtxDestroy,
    ctx_synchronize: CtxSynchronize,
    module_load_data_ex: ModuleLoadDataEx,
    module_get_function: ModuleGetFunction,
    device_total_mem: DeviceTotalMem,
    mem_alloc: MemAlloc,
    mem_free: MemFree,
    memcpy_htod: MemcpyHtoD,
    memcpy_dtoh: MemcpyDtoH,
    launch_kernel: LaunchKernel,
    get_error_name: GetErrorName,
}

impl Api {
    fn load() -> Result<Arc<Self>, GpuError> {
        let lib = DynLib::open(&["libcuda.so.1", "libcuda.so"])?;
        // SAFETY: each type above is the function's signature in cuda.h.
        unsafe {
            let init: Init = lib.get("cuInit")?;
            let get_error_name: GetErrorName = lib.get("cuGetErrorName")?;
            let code = init(0);
            if code != CUDA_SUCCESS {
                return Err(api_error(get_error_name, "cuInit", code));
            }
            let version: DriverGetVersion = lib.get("cuDriverGetVersion")?;
            let mut driver_version = 0;
            version(&mut driver_version);
            Ok(Arc::new(Self {
                driver_version,
                device_get_count: lib.get("cuDeviceGetCount")?,
                device_get: lib.get("cuDeviceGet")?,
                device_get_name: lib.get("cuDeviceGetName")?,
                device_get_pci_bus_id: lib.get("cuDeviceGetPCIBusId")?,
                device_get_attribute: lib.get("cuDeviceGetAttribute")?,
                ctx_create: lib.get("cuCtxCreate_v2")?,
                ctx_set_current: lib.get("cuCtxSetCurrent")?,
                ctx_destroy: lib.get("cuCtxDestroy_v2")?,
                ctx_synchronize: lib.get("cuCtxSynchronize")?,
                module_load_data_ex: lib.get("cuModuleLoadDataEx")?,
                module_get_function: lib.get("cuModuleGetFunction")?,
                device_total_mem: lib.get("cuDeviceTotalMem_v2")?,
                mem_alloc: lib.get("cuMemAlloc_v2")?,
                mem_free: lib.get("cuMemFree_v2")?,
                memcpy_htod: lib.get("cuMemcpyHtoD_v2")?,
                memcpy_dtoh: lib.get("cuMemcpyDtoH_v2")?,
                launch_kernel: lib.get("cuLaunchKernel")?,
                get_error_name,
                _lib: lib,
            }))
        }
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), GpuError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(api_error(self.get_error_name, call, code))
        }
    }
}

fn api_error(get_error_name: GetErrorName, call: &'static str, code: CuResult) -> GpuError {
    let mut name: *const c_char = ptr::null();
    // SAFETY: cuGetErrorName stores a pointer to a static string or leaves it null.
    let text = unsafe {
        if get_error_name(code, &mut name) == CUDA_SUCCESS && !name.is_null() {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        } else {
            "unknown".to_string()
        }
    };
    GpuError::Api {
        call,
        code: format!("{code} ({text})"),
    }
}

/// One CUDA device, not yet set up.
pub struct CudaDevice {
    api: Arc<Api>,
    ordinal: CuDevice,
    /// Name from the driver.
    pub name: String,
    /// PCI bus id in NVML's form.
    pub pci_bus_id: Option<String>,
    /// Multiprocessors.
    pub multiprocessors: u32,
}

/// Every CUDA device; an error when the driver is missing or does not initialise.
pub fn devices() -> Result<Vec<CudaDevice>, GpuError> {
    let api = Api::load()?;
    let mut count = 0;
    // SAFETY: writes one int.
    api.check("cuDeviceGetCount", unsafe {
        (api.device_get_count)(&mut count)
    })?;
    let mut out = Vec::new();
    for i in 0..count {
        let mut dev = 0;
        // SAFETY: writes one device handle.
        api.check("cuDeviceGet", unsafe { (api.device_get)(&mut dev, i) })?;
        let name =
            read_string(&api, api.device_get_name, dev).unwrap_or_else(|_| "CUDA device".into());
        let pci = read_string(&api, api.device_get_pci_bus_id, dev).ok();
        let mut sms = 0;
        // SAFETY: writes one int.
        let _ = unsafe {
            (api.device_get_attribute)(&mut sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)
        };
        out.push(CudaDevice {
            api: Arc::clone(&api),
            ordinal: dev,
            name,
            pci_bus_id: pci.as_deref().and_then(normalise_pci),
            multiprocessors: sms.max(0) as u32,
        });
    }
    Ok(out)
}

fn read_string(api: &Api, f: DeviceGetName, dev: CuDevice) -> Result<String, GpuError> {
    let mut buf = [0 as c_char; 128];
    // SAFETY: the buffer's length is passed; the driver NUL-terminates within it.
    api.check("cuDeviceGet*", unsafe {
        f(buf.as_mut_ptr(), buf.len() as c_int, dev)
    })?;
    // SAFETY: NUL-terminated by the driver within `buf`.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// `0000:41:00.0` (CUDA's form) to NVML's `00000000:41:00.0`.
fn normalise_pci(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.trim().split([':', '.']).collect();
    if parts.len() != 4 {
        return None;
    }
    let num = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(
        super::pci_device_id(
            num(parts[0])?,
            num(parts[1])?,
            num(parts[2])?,
            num(parts[3])?,
        )
        .1,
    )
}

/// A CUDA device with the module loaded and its candidate buffer.
pub struct CudaBackend {
    api: Arc<Api>,
    info: GpuInfo,
    context: CuContext,
    /// The SHA-256d kernel.
    function: CuFunction,
    /// The Scrypt kernel, loaded on first use.
    scrypt: Option<CuFunction>,
    /// Candidate counter and slots.
    out: CuDevicePtr,
    /// Scrypt's per-header words.
    words: CuDevicePtr,
    /// Scrypt scratchpad and how many nonces it holds.
    scratch: CuDevicePtr,
    scratch_nonces: u32,
    /// Device memory in bytes.
    total_mem: u64,
}

// SAFETY: a CUDA context may be made current on any thread; every call below does so first.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Creates a context on the device and loads the SHA-256d PTX.
    pub fn new(dev: &CudaDevice) -> Result<Self, GpuError> {
        let api = Arc::clone(&dev.api);
        let mut context = ptr::null_mut();
        // SAFETY: writes one context handle; flags 0 = automatic scheduling.
        api.check("cuCtxCreate", unsafe {
            (api.ctx_create)(&mut context, 0, dev.ordinal)
        })?;
        let id = dev
            .pci_bus_id
            .as_deref()
            .and_then(|p| {
                let p = p.to_ascii_lowercase();
                p.get(4..).map(|rest| format!("pci:{rest}"))
            })
            .unwrap_or_else(|| format!("cuda:{}", dev.ordinal));
        let mut total = 0usize;
        // SAFETY: writes one size.
        let _ = unsafe { (api.device_total_mem)(&mut total, dev.ordinal) };
        let mut me = Self {
            api: Arc::clone(&api),
            info: GpuInfo {
                id,
                pci_bus_id: dev.pci_bus_id.clone(),
                name: dev.name.clone(),
                platform: format!("CUDA driver {}", api.driver_version),
                route: Route::CudaPtx,
                compute_units: dev.multiprocessors,
                is_gpu: true,
            },
            context,
            function: ptr::null_mut(),
            scrypt: None,
            out: 0,
            words: 0,
            scratch: 0,
            scratch_nonces: 0,
            total_mem: total as u64,
        };
        me.function = me.load(super::SHA256D_PTX, super::SHA256D_ENTRY)?;
        me.out = me.alloc((1 + CANDIDATE_CAPACITY as usize) * 4)?;
        Ok(me)
    }

    fn alloc(&self, bytes: usize) -> Result<CuDevicePtr, GpuError> {
        let mut ptr = 0;
        // SAFETY: writes one device pointer (the context is current: the caller made it so).
        self.api.check("cuMemAlloc", unsafe {
            (self.api.mem_alloc)(&mut ptr, bytes)
        })?;
        Ok(ptr)
    }

    /// Loads a PTX module (the driver compiles it for this card) and takes its entry `entry`.
    fn load(&self, ptx: &str, entry: &str) -> Result<CuFunction, GpuError> {
        let api = &self.api;
        let ptx = std::ffi::CString::new(ptx).map_err(|_| GpuError::Build {
            device: self.info.name.clone(),
            log: "PTX text has a NUL byte".into(),
        })?;
        let mut log = vec![0u8; 8192];
        let mut options = [CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        let mut values = [log.as_mut_ptr().cast::<c_void>(), log.len() as *mut c_void];
        let mut module = ptr::null_mut();
        // SAFETY: NUL-terminated PTX; two JIT options whose values are a buffer and its size.
        let code = unsafe {
            (api.module_load_data_ex)(
                &mut module,
                ptx.as_ptr().cast(),
                2,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        if code != CUDA_SUCCESS {
            let text = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            return Err(GpuError::Build {
                device: self.info.name.clone(),
                log: format!(
                    "{}: {text}",
                    api_error(api.get_error_name, "cuModuleLoadDataEx", code)
                ),
            });
        }
        let entry = std::ffi::CString::new(entry).map_err(|_| GpuError::Api {
            call: "cuModuleGetFunction",
            code: "entry name has a NUL byte".into(),
        })?;
        let mut function = ptr::null_mut();
        // SAFETY: loaded module, NUL-terminated name.
        api.check("cuModuleGetFunction", unsafe {
            (api.module_get_function)(&mut function, module, entry.as_ptr())
        })?;
        Ok(function)
    }

    /// Launches `function` over `count` threads with `params` (one pointer per kernel
    /// parameter) and reads the candidates back.
    fn run(
        &self,
        function: CuFunction,
        params: &mut [*mut c_void],
        count: u32,
    ) -> Result<LaunchOutput, GpuError> {
        let api = &self.api;
        let blocks = count.div_ceil(BLOCK);
        // SAFETY: `params` holds one pointer per kernel parameter, in order, each to a value of
        // the parameter's size; they outlive the call, which is synchronised below.
        api.check("cuLaunchKernel", unsafe {
            (api.launch_kernel)(
                function,
                blocks,
                1,
                1,
                BLOCK,
                1,
                1,
                0,
                ptr::null_mut(),
                params.as_mut_ptr(),
                ptr::null_mut(),
            )
        })?;
        // SAFETY: no arguments.
        api.check("cuCtxSynchronize", unsafe { (api.ctx_synchronize)() })?;
        let mut head = 0u32;
        // SAFETY: 4 bytes out of the buffer.
        api.check("cuMemcpyDtoH", unsafe {
            (api.memcpy_dtoh)((&mut head as *mut u32).cast(), self.out, 4)
        })?;
        let n = head.min(CANDIDATE_CAPACITY) as usize;
        let mut nonces = vec![0u32; n];
        if n > 0 {
            // SAFETY: `n` words after the counter, inside the buffer.
            api.check("cuMemcpyDtoH", unsafe {
                (api.memcpy_dtoh)(nonces.as_mut_ptr().cast(), self.out + 4, n * 4)
            })?;
        }
        Ok(LaunchOutput {
            count: head,
            nonces,
        })
    }

    /// Makes this backend's context current on the calling thread and zeroes the counter.
    fn begin(&self) -> Result<(), GpuError> {
        let api = &self.api;
        // SAFETY: the context was created by this backend and is alive.
        api.check("cuCtxSetCurrent", unsafe {
            (api.ctx_set_current)(self.context)
        })?;
        let zero = 0u32;
        // SAFETY: 4 bytes into a buffer of 1 + capacity words.
        api.check("cuMemcpyHtoD", unsafe {
            (api.memcpy_htod)(self.out, (&zero as *const u32).cast(), 4)
        })
    }
}

impl GpuBackend for CudaBackend {
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
        self.begin()?;
        let mut args: Vec<u32> = words.to_vec();
        args.extend_from_slice(&[base, top, CANDIDATE_CAPACITY]);
        let mut out = self.out;
        let mut params: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| (a as *mut u32).cast::<c_void>())
            .collect();
        params.push((&mut out as *mut CuDevicePtr).cast());
        self.run(self.function, &mut params, count)
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
                "{count} Scrypt nonces need more than a quarter of the device's memory"
            )));
        }
        self.begin()?;
        let function = match self.scrypt {
            Some(f) => f,
            None => {
                let f = self.load(super::SCRYPT_PTX, super::SCRYPT_ENTRY)?;
                self.words = self.alloc(27 * 4)?;
                self.scrypt = Some(f);
                f
            }
        };
        if count > self.scratch_nonces {
            if self.scratch != 0 {
                // SAFETY: allocated by this backend; launches are synchronised, none in flight.
                unsafe { (self.api.mem_free)(self.scratch) };
                self.scratch = 0;
                self.scratch_nonces = 0;
            }
            self.scratch = self.alloc((u64::from(count) * super::SCRYPT_SCRATCH_BYTES) as usize)?;
            self.scratch_nonces = count;
        }
        // SAFETY: 27 words into the 27-word buffer.
        self.api.check("cuMemcpyHtoD", unsafe {
            (self.api.memcpy_htod)(self.words, words.as_ptr().cast(), 27 * 4)
        })?;
        let (mut w, mut base, mut top, mut cap, mut out, mut scratch) = (
            self.words,
            base,
            top,
            CANDIDATE_CAPACITY,
            self.out,
            self.scratch,
        );
        let mut params: [*mut c_void; 6] = [
            (&mut w as *mut u64).cast(),
            (&mut base as *mut u32).cast(),
            (&mut top as *mut u32).cast(),
            (&mut cap as *mut u32).cast(),
            (&mut out as *mut u64).cast(),
            (&mut scratch as *mut u64).cast(),
        ];
        self.run(function, &mut params, count)
    }

    fn max_scrypt_launch(&self) -> u32 {
        let n = (self.total_mem / 4 / super::SCRYPT_SCRATCH_BYTES)
            .min(u64::from(super::SCRYPT_MAX_LAUNCH)) as u32;
        (n / BLOCK * BLOCK).max(BLOCK)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // SAFETY: the context and buffer belong to this backend; destroying the context frees
        // the module with it.
        unsafe {
            (self.api.ctx_set_current)(self.context);
            for buf in [self.out, self.words, self.scratch] {
                if buf != 0 {
                    (self.api.mem_free)(buf);
                }
            }
            (self.api.ctx_destroy)(self.context);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pci_bus_id_is_normalised_to_nvml_form() {
        assert_eq!(
            super::normalise_pci("0000:41:00.0").as_deref(),
            Some("00000000:41:00.0")
        );
        assert_eq!(super::normalise_pci("garbage"), None);
    }
}
