//! Finding a usable GPU before anything touches the driver. cudarc loads libraries lazily and
//! panics if one is missing, so every entry point calls [`probe`] first: it checks each library
//! with `is_culib_present()`, then asks the driver for a device, and turns any failure into a
//! [`CudaError`] that names what is missing.

use crate::error::{CudaError, Result};

/// What `--device cuda` found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
}

/// Whether the driver library (`libcuda`) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only attempts to dlopen the library's candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Checks the driver, NVRTC and cuBLAS libraries, then opens device `ordinal`.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    if !driver_present() {
        return Err(CudaError::MissingLibrary {
            library: "libcuda",
            what: "the NVIDIA driver",
            hint: "this machine has no NVIDIA driver; use --device cpu, or run on a machine with a GPU",
        });
    }
    if !crate::nvrtc::available() {
        return Err(CudaError::MissingLibrary {
            library: "libnvrtc",
            what: "the NVRTC run-time compiler",
            hint: "install it (e.g. `pip install nvidia-cuda-nvrtc==13.0.88`) and put its nvidia/cu13/lib folder on LD_LIBRARY_PATH",
        });
    }
    // SAFETY: `is_culib_present` only attempts to dlopen the library's candidate names.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary {
            library: "libcublas",
            what: "cuBLAS",
            hint: "install it (e.g. `pip install nvidia-cublas`) and put its lib folder on LD_LIBRARY_PATH",
        });
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| CudaError::NoDevice(format!("the driver cannot count devices: {e}")))?;
    if ordinal >= count as usize {
        return Err(CudaError::NoDevice(format!("device {ordinal} requested, the driver sees {count}")));
    }
    let ctx = cudarc::driver::CudaContext::new(ordinal)
        .map_err(|e| CudaError::NoDevice(format!("cannot open device {ordinal}: {e}")))?;
    let name = ctx.name().map_err(|e| CudaError::Call { call: "cuDeviceGetName", status: e.to_string() })?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| CudaError::Call { call: "cuDeviceGetAttribute", status: e.to_string() })?;
    Ok(DeviceInfo { ordinal, name, compute_capability: cc })
}
