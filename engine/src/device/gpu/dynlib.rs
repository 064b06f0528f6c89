//! Opening a driver library at run time and taking function pointers out of it.
//!
//! The GPU routes must not need a driver at build or link time: the agent runs on rigs without
//! one. `libloading` wraps `dlopen`/`dlsym`; this module only turns its failures into
//! [`GpuError`]s that name the library and symbol.

use super::GpuError;

/// An open shared library.
pub(crate) struct DynLib {
    name: &'static str,
    lib: libloading::Library,
}

impl DynLib {
    /// Opens the first of `names` that loads.
    pub(crate) fn open(names: &[&'static str]) -> Result<Self, GpuError> {
        let mut last = String::new();
        for &name in names {
            // SAFETY: loading a driver library runs its initialisers; the OpenCL ICD loader and
            // libcuda are made to be loaded this way by any program.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Ok(Self { name, lib }),
                Err(e) => last = e.to_string(),
            }
        }
        Err(GpuError::LibraryMissing {
            library: names.first().copied().unwrap_or("?"),
            reason: last,
        })
    }

    /// A function pointer of type `T` (an `unsafe extern "C" fn` type).
    ///
    /// # Safety
    /// `T` must be the symbol's true C signature.
    pub(crate) unsafe fn get<T: Copy>(&self, symbol: &'static str) -> Result<T, GpuError> {
        let mut name = Vec::with_capacity(symbol.len() + 1);
        name.extend_from_slice(symbol.as_bytes());
        name.push(0);
        // SAFETY: the caller promises the signature; the pointer stays valid while `self.lib`
        // lives, and every backend keeps its `DynLib` (through an `Arc`) as long as it calls.
        unsafe {
            self.lib
                .get::<T>(&name)
                .map(|s| *s)
                .map_err(|_| GpuError::SymbolMissing {
                    library: self.name,
                    symbol,
                })
        }
    }
}
