//! Run-time compilation with NVRTC, to PTX (for any GPU of an architecture family, JIT-linked
//! by the driver) or to CUBIN (machine code for one architecture, such as sm_90 for the H100).
//! This works without a GPU or a driver: only `libnvrtc` is needed, so CI compiles every kernel
//! on a CPU-only machine (see `tests/compile_kernels.rs`).

use crate::error::{CudaError, Result};
use cudarc::nvrtc::sys;
use std::ffi::{CStr, CString, c_char};

/// What to compile to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// PTX for a virtual architecture, e.g. `compute_90`.
    Ptx(u32),
    /// CUBIN for a real architecture, e.g. `sm_90`.
    Cubin(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ptx(a) => write!(f, "PTX (compute_{a})"),
            Target::Cubin(a) => write!(f, "CUBIN (sm_{a})"),
        }
    }
}

/// Whether `libnvrtc` can be loaded.
pub fn available() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the library's candidate names and
    // closes it again; it touches no other state.
    unsafe { sys::is_culib_present() }
}

fn status(r: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a pointer to a static, NUL-terminated string for any
    // result code; the library is loaded (callers checked `available()` first).
    unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy().into_owned()
}

fn check(call: &'static str, r: sys::nvrtcResult) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS { Ok(()) } else { Err(CudaError::Call { call, status: status(r) }) }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: self.0 was created by nvrtcCreateProgram and is destroyed exactly once here.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// Reads one of NVRTC's outputs: `size` gives its length, `get` fills it.
fn read_output(
    prog: &Program,
    size: unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult,
    get: unsafe fn(sys::nvrtcProgram, *mut c_char) -> sys::nvrtcResult,
    what: &'static str,
) -> Result<Vec<u8>> {
    let mut n = 0usize;
    // SAFETY: prog.0 is a live program; `n` is a valid out-pointer.
    check(what, unsafe { size(prog.0, &mut n) })?;
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` holds exactly the `n` bytes NVRTC said it will write.
    check(what, unsafe { get(prog.0, buf.as_mut_ptr().cast()) })?;
    Ok(buf)
}

/// Compiles the CUDA source `src` (named `file` in messages) for `target`. A compile error
/// carries NVRTC's log, which names the line and the problem.
pub fn compile(file: &str, src: &str, target: Target) -> Result<Vec<u8>> {
    if !available() {
        return Err(CudaError::MissingLibrary {
            library: "libnvrtc",
            what: "the NVRTC run-time compiler",
            hint: "install it (e.g. `pip install nvidia-cuda-nvrtc==13.0.88`) and put its nvidia/cu13/lib folder on LD_LIBRARY_PATH",
        });
    }
    let c_src =
        CString::new(src).map_err(|_| CudaError::Call { call: "compile", status: "NUL byte in source".into() })?;
    let c_name = CString::new(file).unwrap_or_default();
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the program (they live
    // until the end of this function, after which the program is destroyed); no headers.
    check("nvrtcCreateProgram", unsafe {
        sys::nvrtcCreateProgram(&mut raw, c_src.as_ptr(), c_name.as_ptr(), 0, std::ptr::null(), std::ptr::null())
    })?;
    let prog = Program(raw);
    let arch = match target {
        Target::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
        Target::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
    };
    let opts: Vec<CString> =
        [arch.as_str(), "--std=c++17", "--fmad=true"].iter().map(|o| CString::new(*o).unwrap_or_default()).collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `ptrs` points at `opts`, which outlives the call; prog.0 is live.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = read_output(&prog, sys::nvrtcGetProgramLogSize, sys::nvrtcGetProgramLog, "nvrtcGetProgramLog")
            .map(|l| String::from_utf8_lossy(&l).trim_end_matches('\0').trim().to_string())
            .unwrap_or_default();
        return Err(CudaError::Compile { file: file.to_string(), target: target.to_string(), status: status(r), log });
    }
    match target {
        Target::Ptx(_) => read_output(&prog, sys::nvrtcGetPTXSize, sys::nvrtcGetPTX, "nvrtcGetPTX"),
        Target::Cubin(_) => read_output(&prog, sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN, "nvrtcGetCUBIN"),
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(CudaError::MissingLibrary { library: "libnvrtc", what: "the NVRTC run-time compiler", hint: "" });
    }
    let (mut a, mut b) = (0, 0);
    // SAFETY: the library is loaded; both are valid out-pointers.
    check("nvrtcVersion", unsafe { sys::nvrtcVersion(&mut a, &mut b) })?;
    Ok((a, b))
}
