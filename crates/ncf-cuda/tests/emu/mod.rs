//! The CUDA-on-CPU emulator's Rust side (tests only): compiles kernel files with g++ against
//! `emu/cuda_emu.h` + `emu/runtime.cpp`, loads them with libloading and launches kernels by
//! name with checked, guarded arguments. See `crates/ncf-cuda/emu/README.md`.

#![allow(dead_code)] // each test binary uses a different part of the API

use libloading::Library;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const EMU_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/emu");

/// The C++ compiler (`$CXX`, else `g++`), if it runs.
pub fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let ok = Command::new(&cxx).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    ok.is_ok_and(|s| s.success()).then_some(cxx)
}

/// The order in which the threads of a block run between barriers (and the blocks of a grid).
/// A kernel correct on a GPU gives the same result in every order, up to float reassociation of
/// atomics; a missing `__syncthreads()` usually shows in one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Forward = 0,
    Reverse = 1,
    /// A fixed pseudo-random permutation, new for every round and block.
    Shuffled = 2,
}

/// A launch configuration, as cudarc's `LaunchConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shmem: u32,
}

impl std::fmt::Display for Cfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ((gx, gy, gz), (bx, by, bz)) = (self.grid, self.block);
        write!(f, "grid ({gx},{gy},{gz}) block ({bx},{by},{bz})")?;
        if self.shmem > 0 {
            write!(f, " shmem {}", self.shmem)?;
        }
        Ok(())
    }
}

impl Cfg {
    pub const fn new(grid: (u32, u32, u32), block: (u32, u32, u32), shmem: u32) -> Cfg {
        Cfg { grid, block, shmem }
    }
}

/// An element type of a buffer argument, named as the runtime names kernel parameter types.
pub trait Elem: Copy {
    const TY: &'static str;
    /// The pointer type, for [`null`].
    const PTR: &'static str;
    fn bits(self) -> u64;
}
macro_rules! elem {
    ($t:ty, $name:literal, $bits:expr) => {
        impl Elem for $t {
            const TY: &'static str = $name;
            const PTR: &'static str = concat!("*", $name);
            fn bits(self) -> u64 {
                #[allow(clippy::redundant_closure_call)]
                ($bits)(self)
            }
        }
    };
}
elem!(f32, "f32", |v: f32| v.to_bits() as u64);
elem!(f64, "f64", |v: f64| v.to_bits());
elem!(i32, "i32", |v: i32| v as u32 as u64);
elem!(u32, "u32", |v: u32| v as u64);
elem!(i64, "i64", |v: i64| v as u64);
elem!(u64, "u64", |v: u64| v);

/// One kernel argument: a scalar by value, or a buffer (the kernel's pointer). A shared borrow
/// is a read-only buffer (the kernel parameter must be `const T*`); a mutable borrow is copied
/// back after the launch.
pub enum Arg<'a> {
    Scalar { ty: &'static str, bits: u64 },
    Buf { ty: &'static str, ptr: *mut u8, bytes: usize, mutable: bool, _borrow: PhantomData<&'a mut [u8]> },
}

/// Conversion into an [`Arg`]: `f32`, `i32`, `u32`, `i64`, `u64`, `f64` by value; `&[T]`,
/// `&Vec<T>` (read-only) and `&mut [T]`, `&mut Vec<T>` (read-write) as buffers.
pub trait IntoArg<'a> {
    fn into_arg(self) -> Arg<'a>;
}
impl<'a, T: Elem> IntoArg<'a> for T {
    fn into_arg(self) -> Arg<'a> {
        Arg::Scalar { ty: T::TY, bits: self.bits() }
    }
}
impl<'a, T: Elem> IntoArg<'a> for &'a [T] {
    fn into_arg(self) -> Arg<'a> {
        let bytes = std::mem::size_of_val(self);
        Arg::Buf { ty: T::TY, ptr: self.as_ptr() as *mut u8, bytes, mutable: false, _borrow: PhantomData }
    }
}
impl<'a, T: Elem> IntoArg<'a> for &'a Vec<T> {
    fn into_arg(self) -> Arg<'a> {
        self.as_slice().into_arg()
    }
}
impl<'a, T: Elem> IntoArg<'a> for &'a mut [T] {
    fn into_arg(self) -> Arg<'a> {
        let bytes = std::mem::size_of_val(self);
        Arg::Buf { ty: T::TY, ptr: self.as_mut_ptr() as *mut u8, bytes, mutable: true, _borrow: PhantomData }
    }
}
impl<'a, T: Elem> IntoArg<'a> for &'a mut Vec<T> {
    fn into_arg(self) -> Arg<'a> {
        self.as_mut_slice().into_arg()
    }
}

/// `arg(&buf)`, `arg(&mut out)`, `arg(n as i64)`.
pub fn arg<'a>(a: impl IntoArg<'a>) -> Arg<'a> {
    a.into_arg()
}

/// A null `T*` / `const T*` (an optional buffer left out), passed by value like backend.rs's
/// 64-bit zero.
pub fn null<'a, T: Elem>() -> Arg<'a> {
    Arg::Scalar { ty: T::PTR, bits: 0 }
}

/// Pointer parameter types, for a null pointer's type.
const POINTER_TYPES: &[&str] = &[
    "*f32",
    "*const f32",
    "*f64",
    "*const f64",
    "*i32",
    "*const i32",
    "*u32",
    "*const u32",
    "*i64",
    "*const i64",
    "*u64",
    "*const u64",
];

/// Finds the buffer at `addr` among `bufs`: `(pointer, elements of T)`.
fn host_buf(bufs: &[Arg<'_>], addr: u64, write: bool) -> Result<(*mut f32, usize), String> {
    bufs.iter()
        .find_map(|b| match b {
            Arg::Buf { ty: "f32", ptr, bytes, mutable, .. } if *ptr as u64 == addr && (*mutable || !write) => {
                Some((*ptr as *mut f32, bytes / 4))
            }
            _ => None,
        })
        .ok_or_else(|| format!("sgemm: no {} f32 buffer at {addr:#x}", if write { "mutable" } else { "" }))
}

/// `cublasSgemm` on host buffers (column-major, f64 accumulation): what the GPU's cuBLAS call
/// of a plan computes, within rounding. Every index is bounds-checked against the buffers.
fn sgemm_host(g: &ncf_cuda::plan::Sgemm, bufs: &[Arg<'_>]) -> Result<(), String> {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
    let (pa, la) = host_buf(bufs, g.a, false)?;
    let (pb, lb) = host_buf(bufs, g.b, false)?;
    let (pc, lc) = host_buf(bufs, g.c, true)?;
    // SAFETY: each pointer and length describes a live borrow in `bufs` (a Vec or slice the
    // caller holds for this call); `a` and `b` are only read, `c` (a mutable borrow) written.
    // They may alias only if the test passed one buffer twice, which the plans never do.
    let (a, b) = unsafe { (std::slice::from_raw_parts(pa, la).to_vec(), std::slice::from_raw_parts(pb, lb).to_vec()) };
    // SAFETY: as above; `c` is the one mutable borrow.
    let c = unsafe { std::slice::from_raw_parts_mut(pc, lc) };
    let at = |i: usize, p: usize| if g.trans_a { p + i * lda } else { i + p * lda };
    let bt = |p: usize, j: usize| if g.trans_b { j + p * ldb } else { p + j * ldb };
    for j in 0..n {
        for i in 0..m {
            let mut s = 0.0f64;
            for p in 0..k {
                let (x, y) = (at(i, p), bt(p, j));
                if x >= a.len() || y >= b.len() {
                    return Err(format!("sgemm: A[{x}] / B[{y}] outside {} / {} elements", a.len(), b.len()));
                }
                s += a[x] as f64 * b[y] as f64;
            }
            let e = i + j * ldc;
            if e >= c.len() {
                return Err(format!("sgemm: C[{e}] outside {} elements", c.len()));
            }
            let old = if g.beta == 0.0 { 0.0 } else { g.beta as f64 * c[e] as f64 };
            c[e] = (g.alpha as f64 * s + old) as f32;
        }
    }
    Ok(())
}

/// The runtime's `EmuArg`.
#[repr(C)]
struct RawArg {
    ty: *const c_char,
    data: *mut c_void,
    bytes: u64,
    kind: c_int,
}

type LaunchEx = unsafe extern "C" fn(
    *const c_char,
    *const c_uint,
    *const c_uint,
    c_uint,
    *const RawArg,
    c_int,
    c_uint,
    c_uint,
    *mut c_char,
    c_int,
) -> c_int;
type LaunchRaw = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
    *mut c_char,
    c_int,
) -> c_int;

struct Module {
    file: String,
    launch_ex: LaunchEx,
    launch_raw: LaunchRaw,
}

/// Launches from every library go through one lock: each launch installs and restores the
/// process's SIGSEGV/SIGBUS/SIGALRM handlers, which must nest.
static LAUNCH_LOCK: Mutex<()> = Mutex::new(());

/// Kernel files compiled for the CPU, kernels launched by name.
pub struct Emu {
    modules: Vec<Module>,
    by_kernel: HashMap<String, usize>,
    signatures: HashMap<String, String>,
    launched: Mutex<BTreeSet<String>>,
    order: AtomicU32,
    timeout_ms: AtomicU32,
}

/// `extern __shared__ T name[];` → `EMU_EXTERN_SHARED(T, name);` (the only source rewrite: C++
/// has no spelling for it). Comments and string literals are left alone; lines are preserved.
pub fn rewrite_extern_shared(src: &str) -> Result<String, String> {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let (mut i, mut copied) = (0, 0);
    // Skips a comment or literal starting at `j`, returning the index after it (or `j`).
    let skip = |j: usize| -> usize {
        if b[j..].starts_with(b"//") {
            return src[j..].find('\n').map_or(b.len(), |e| j + e);
        }
        if b[j..].starts_with(b"/*") {
            return src[j + 2..].find("*/").map_or(b.len(), |e| j + 2 + e + 2);
        }
        if b[j] == b'"' || b[j] == b'\'' {
            let q = b[j];
            let mut k = j + 1;
            while k < b.len() && b[k] != q {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            return (k + 1).min(b.len());
        }
        j
    };
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let s = skip(i);
        if s != i {
            i = s;
            continue;
        }
        if !is_ident(b[i]) || (i > 0 && is_ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let end = (i..b.len()).find(|&k| !is_ident(b[k])).unwrap_or(b.len());
        if &src[i..end] != "extern" {
            i = end;
            continue;
        }
        let mut k = end;
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if !src[k..].starts_with("__shared__") || b.get(k + 10).is_some_and(|&c| is_ident(c)) {
            i = end;
            continue;
        }
        let decl_start = k + 10;
        let semi = src[decl_start..].find(';').map(|e| decl_start + e).ok_or("`extern __shared__` without `;`")?;
        let mut decl = src[decl_start..semi].to_string();
        while let Some(a) = decl.find("__align__(") {
            let close = decl[a..].find(')').map(|e| a + e + 1).ok_or("unclosed __align__(")?;
            decl.replace_range(a..close, " ");
        }
        let decl = decl.trim();
        let bad = || format!("unsupported `extern __shared__{decl};` (expected `extern __shared__ T name[];`)");
        let body = decl.strip_suffix(']').map(str::trim_end).and_then(|d| d.strip_suffix('[')).ok_or_else(bad)?;
        let body = body.trim_end();
        let name_start = body.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
        let (ty, name) = (body[..name_start].trim(), &body[name_start..]);
        if ty.is_empty() || name.is_empty() {
            return Err(bad());
        }
        out.push_str(&src[copied..i]);
        out.push_str(&format!("EMU_EXTERN_SHARED({ty}, {name});"));
        out.push_str(&"\n".repeat(src[i..=semi].matches('\n').count()));
        i = semi + 1;
        copied = i;
    }
    out.push_str(&src[copied..]);
    Ok(out)
}

/// The C++ translation unit for one kernel file: `#line` markers, the unit with dynamic shared
/// memory rewritten, and the registry of its kernels.
pub fn emu_source(file: &str, unit: &str, kernels: &[&str]) -> Result<String, String> {
    let unit = rewrite_extern_shared(unit).map_err(|e| format!("{file}: {e}"))?;
    let common = ncf_cuda::kernels::COMMON;
    let mut s = String::new();
    match unit.strip_prefix(common).and_then(|rest| rest.strip_prefix('\n')) {
        Some(rest) => {
            s.push_str("#line 1 \"kernels/common.cuh\"\n");
            s.push_str(common);
            s.push_str(&format!("\n#line 1 \"kernels/{file}\"\n"));
            s.push_str(rest);
        }
        _ => {
            s.push_str(&format!("#line 1 \"{file} (unit)\"\n"));
            s.push_str(&unit);
        }
    }
    s.push_str("\n#line 1 \"emu registry\"\nnamespace emu {\n");
    if kernels.is_empty() {
        s.push_str("const KernelInfo* registry(int* n) { *n = 0; return nullptr; }\n");
    } else {
        s.push_str("static const KernelInfo emu_table[] = {\n");
        for k in kernels {
            s.push_str(&format!("    kernel_info(\"{k}\", ::{k}),\n"));
        }
        s.push_str(&format!(
            "}};\nconst KernelInfo* registry(int* n) {{ *n = {}; return emu_table; }}\n",
            kernels.len()
        ));
    }
    s.push_str("}  // namespace emu\n");
    Ok(s)
}

fn finish(child: Child, what: &str) -> Result<(), String> {
    let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
    if log.len() > 6000 {
        log.truncate(6000);
        log.push_str("\n[…]");
    }
    Err(format!("{what} failed to compile with the emulation header:\n{log}"))
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Child, String> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run the compiler: {e}"))
}

fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ncf-cuda-emu-{}-{n}", std::process::id()))
}

impl Emu {
    /// Compiles `files` (`(file name, NVRTC unit as kernels::unit builds it, the file's kernels
    /// as kernels::kernel_names lists them)`) into one shared library each, in parallel, and
    /// loads them.
    pub fn build(cxx: &str, files: &[(&str, String, Vec<&str>)]) -> Result<Emu, String> {
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let runtime_o = dir.join("runtime.o");
        let mut rt = Command::new(cxx);
        rt.args(["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0"])
            .arg(format!("-I{EMU_DIR}"))
            .args(["-c", &format!("{EMU_DIR}/runtime.cpp"), "-o"])
            .arg(&runtime_o);
        finish(spawn(&mut rt, "emu/runtime.cpp")?, "emu/runtime.cpp")?;
        let mut children = Vec::new();
        for (k, (file, unit, kernels)) in files.iter().enumerate() {
            let cpp = dir.join(format!("unit{k}.cpp"));
            std::fs::write(&cpp, emu_source(file, unit, kernels)?).map_err(|e| format!("{}: {e}", cpp.display()))?;
            let so = dir.join(format!("libunit{k}.so"));
            let mut c = Command::new(cxx);
            c.args(["-std=c++17", "-O1", "-fPIC", "-shared", "-fno-weak", "-fno-strict-aliasing"])
                .args(["-fvisibility=hidden", "-w", "-include", &format!("{EMU_DIR}/cuda_emu.h"), "-o"])
                .arg(&so)
                .arg(&cpp)
                .arg(&runtime_o);
            children.push((spawn(&mut c, file)?, so, *file));
        }
        let mut errors = Vec::new();
        let mut built = Vec::new();
        for (child, so, file) in children {
            match finish(child, file) {
                Ok(()) => built.push((so, file)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(format!("{}\n(sources kept in {})", errors.join("\n"), dir.display()));
        }
        let mut emu = Emu {
            modules: Vec::new(),
            by_kernel: HashMap::new(),
            signatures: HashMap::new(),
            launched: Mutex::new(BTreeSet::new()),
            order: AtomicU32::new(Order::Forward as u32),
            timeout_ms: AtomicU32::new(60_000),
        };
        for (so, file) in built {
            emu.load(&so, file)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        for (file, _, kernels) in files {
            for k in kernels {
                if !emu.by_kernel.contains_key(*k) {
                    return Err(format!("{file}: kernel `{k}` is not in the emulated module"));
                }
            }
        }
        Ok(emu)
    }

    fn load(&mut self, so: &Path, file: &str) -> Result<(), String> {
        // SAFETY: the library is ours, built just now from runtime.cpp and a kernel unit; its
        // initializers only build the kernel table. It is leaked (never unloaded) because a
        // launch installs signal handlers from it, and a handler must never point at unmapped
        // code.
        let lib: &'static Library =
            Box::leak(Box::new(unsafe { Library::new(so) }.map_err(|e| format!("{file}: dlopen: {e}"))?));
        type Count = unsafe extern "C" fn() -> c_int;
        type Name = unsafe extern "C" fn(c_int) -> *const c_char;
        type Sig = unsafe extern "C" fn(c_int, *mut c_char, c_int) -> c_int;
        // SAFETY: the symbols are runtime.cpp's exported functions with exactly these C types.
        let (launch_ex, launch_raw, count, name, sig) = unsafe {
            let get = |s: &[u8]| format!("{file}: missing symbol {}", String::from_utf8_lossy(s));
            (
                *lib.get::<LaunchEx>(b"emu_launch_ex\0").map_err(|_| get(b"emu_launch_ex"))?,
                *lib.get::<LaunchRaw>(b"emu_launch\0").map_err(|_| get(b"emu_launch"))?,
                *lib.get::<Count>(b"emu_kernel_count\0").map_err(|_| get(b"emu_kernel_count"))?,
                *lib.get::<Name>(b"emu_kernel_name\0").map_err(|_| get(b"emu_kernel_name"))?,
                *lib.get::<Sig>(b"emu_kernel_signature\0").map_err(|_| get(b"emu_kernel_signature"))?,
            )
        };
        let m = self.modules.len();
        // SAFETY: plain calls into the runtime; names are NUL-terminated static strings of the
        // registry, the signature buffer is 512 bytes and its length is passed.
        unsafe {
            for i in 0..count() {
                let k = CStr::from_ptr(name(i)).to_string_lossy().into_owned();
                let mut buf = [0 as c_char; 512];
                sig(i, buf.as_mut_ptr(), buf.len() as c_int);
                let s = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
                if let Some(&other) = self.by_kernel.get(&k) {
                    return Err(format!("kernel `{k}` is defined in {file} and {}", self.modules[other].file));
                }
                self.by_kernel.insert(k.clone(), m);
                self.signatures.insert(k, s);
            }
        }
        self.modules.push(Module { file: file.to_string(), launch_ex, launch_raw });
        Ok(())
    }

    /// Compiles every kernel file of `ncf_cuda::kernels::SOURCES`.
    pub fn build_sources(cxx: &str) -> Result<Emu, String> {
        use ncf_cuda::kernels::{SOURCES, kernel_names, unit};
        let files: Vec<(&str, String, Vec<&str>)> =
            SOURCES.iter().map(|&(f, src)| (f, unit(src), kernel_names(src))).collect();
        Emu::build(cxx, &files)
    }

    pub fn set_order(&self, order: Order) {
        self.order.store(order as u32, Ordering::Relaxed);
    }
    pub fn order(&self) -> Order {
        match self.order.load(Ordering::Relaxed) {
            0 => Order::Forward,
            1 => Order::Reverse,
            _ => Order::Shuffled,
        }
    }
    /// A launch running longer than this fails with "timed out" (0: no limit).
    pub fn set_timeout_ms(&self, ms: u32) {
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The kernel's parameter types as the runtime sees them, e.g.
    /// `relu_forward(*const f32, *f32, i64)`.
    pub fn signature(&self, kernel: &str) -> Option<&str> {
        self.signatures.get(kernel).map(String::as_str)
    }
    pub fn kernels(&self) -> BTreeSet<String> {
        self.by_kernel.keys().cloned().collect()
    }
    /// The kernels launched since the last call, and forgets them.
    pub fn take_launched(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.launched.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn module(&self, name: &str) -> Result<&Module, String> {
        self.by_kernel
            .get(name)
            .map(|&m| &self.modules[m])
            .ok_or_else(|| format!("no kernel `{name}` in the emulated modules (have: {:?})", self.kernels()))
    }

    /// Launches `name` on `grid` × `block` threads with `shmem` bytes of dynamic shared memory,
    /// like `cuLaunchKernel`. Argument types are checked against the kernel's signature.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shmem: u32,
        args: &[Arg<'_>],
    ) -> Result<(), String> {
        let m = self.module(name)?;
        self.launched.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        let tys: Vec<CString> = args
            .iter()
            .map(|a| match a {
                Arg::Scalar { ty, .. } => CString::new(*ty),
                Arg::Buf { ty, mutable: true, .. } => CString::new(format!("*{ty}")),
                Arg::Buf { ty, .. } => CString::new(format!("*const {ty}")),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let raw: Vec<RawArg> = args
            .iter()
            .zip(&tys)
            .map(|(a, ty)| match a {
                Arg::Scalar { bits, .. } => {
                    RawArg { ty: ty.as_ptr(), data: bits as *const u64 as *mut c_void, bytes: 8, kind: 0 }
                }
                Arg::Buf { ptr, bytes, mutable, .. } => RawArg {
                    ty: ty.as_ptr(),
                    data: *ptr as *mut c_void,
                    bytes: *bytes as u64,
                    kind: if *mutable { 2 } else { 1 },
                },
            })
            .collect();
        let cname = CString::new(name).map_err(|e| e.to_string())?;
        let (g, b) = ([grid.0, grid.1, grid.2], [block.0, block.1, block.2]);
        let mut err = vec![0 as c_char; 4096];
        let _guard = LAUNCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `raw` describes live borrows held by `args` for this call: a shared buffer is
        // only read (the runtime copies it, and checked that the kernel's parameter is const),
        // a mutable one is written back with exactly `bytes` bytes; scalars point at `u64`s
        // inside `args`. All strings are NUL-terminated and `err` holds `err.len()` bytes.
        let rc = unsafe {
            (m.launch_ex)(
                cname.as_ptr(),
                g.as_ptr(),
                b.as_ptr(),
                shmem,
                raw.as_ptr(),
                raw.len() as c_int,
                self.order.load(Ordering::Relaxed),
                self.timeout_ms.load(Ordering::Relaxed),
                err.as_mut_ptr(),
                err.len() as c_int,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the runtime wrote a NUL-terminated message into `err`.
        Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// The kernel's parameter types, e.g. `["*const f32", "*f32", "i64"]`.
    fn params(&self, kernel: &str) -> Vec<String> {
        let sig = self.signature(kernel).unwrap_or("()");
        let inner = sig.split_once('(').map_or("", |(_, r)| r.trim_end_matches(')'));
        inner.split(", ").filter(|t| !t.is_empty()).map(str::to_string).collect()
    }

    /// Runs `plan` (built by `ncf_cuda::plan` from host addresses) as the GPU would: each
    /// launch through the checked entry point, its pointer arguments resolved to the buffers of
    /// `bufs` with those addresses (a shared borrow stays read-only, a mutable one is copied
    /// back; an address not among them fails), a null pointer passed with the parameter's
    /// type; each cuBLAS call by a column-major reference `sgemm` on the same buffers.
    pub fn run_plan(&self, plan: &ncf_cuda::plan::Plan, bufs: &[Arg<'_>]) -> Result<(), String> {
        use ncf_cuda::plan::{Arg as P, Step};
        for step in plan.steps() {
            let l = match step {
                Step::Kernel(l) => l,
                Step::Gemm(g) => {
                    self.launched.lock().unwrap_or_else(|e| e.into_inner()).insert("cublasSgemm".to_string());
                    sgemm_host(g, bufs)?;
                    continue;
                }
            };
            let name = l.kernel.name();
            let params = self.params(name);
            let mut args = Vec::with_capacity(l.args().len());
            for (i, a) in l.args().iter().enumerate() {
                let param = params.get(i).map_or("?", String::as_str);
                let scalar = |ty: &'static str, bits: u64| Arg::Scalar { ty, bits };
                args.push(match *a {
                    P::Ptr(0) => {
                        let ty = POINTER_TYPES.iter().find(|t| **t == param).copied().unwrap_or("*null");
                        scalar(ty, 0)
                    }
                    P::Ptr(addr) => {
                        let want = param.trim_start_matches('*').trim_start_matches("const ");
                        let found = bufs
                            .iter()
                            .filter(|b| matches!(b, Arg::Buf { ptr, .. } if *ptr as u64 == addr))
                            .max_by_key(|b| matches!(b, Arg::Buf { ty, .. } if *ty == want));
                        match found {
                            Some(Arg::Buf { ty, ptr, bytes, mutable, .. }) => {
                                Arg::Buf { ty, ptr: *ptr, bytes: *bytes, mutable: *mutable, _borrow: PhantomData }
                            }
                            _ => {
                                return Err(format!(
                                    "{l}: argument {i} ({param}) is address {addr:#x}, not one of the buffers given"
                                ));
                            }
                        }
                    }
                    P::I32(v) => scalar("i32", v as u32 as u64),
                    P::U32(v) => scalar("u32", v as u64),
                    P::I64(v) => scalar("i64", v as u64),
                    P::U64(v) => scalar("u64", v),
                    P::F32(v) => scalar("f32", v.to_bits() as u64),
                    P::F64(v) => scalar("f64", v.to_bits()),
                });
            }
            self.launch(name, l.grid, l.block, l.smem, &args).map_err(|e| format!("{l}: {e}"))?;
        }
        Ok(())
    }

    /// [`Emu::launch`] with a [`Cfg`]; panics with the emulator's message on failure.
    #[track_caller]
    pub fn run(&self, name: &str, cfg: Cfg, args: &[Arg<'_>]) {
        if let Err(e) = self.launch(name, cfg.grid, cfg.block, cfg.shmem, args) {
            panic!("emulated launch of `{name}` {cfg:?} failed: {e}");
        }
    }

    /// The unchecked `cuLaunchKernel`-style entry point: `args[i]` points to the i-th argument's
    /// value, device pointers are host pointers. Blocks and threads run in forward order.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type, and every pointer argument
    /// must be valid for every access the kernel makes.
    pub unsafe fn launch_raw(&self, name: &str, cfg: Cfg, args: &mut [*mut c_void]) -> Result<(), String> {
        let m = self.module(name)?;
        self.launched.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        let cname = CString::new(name).map_err(|e| e.to_string())?;
        let mut err = vec![0 as c_char; 4096];
        let _guard = LAUNCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let (g, b) = (cfg.grid, cfg.block);
        // SAFETY: the caller guarantees the arguments; `err` holds `err.len()` bytes.
        let rc = unsafe {
            (m.launch_raw)(
                cname.as_ptr(),
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shmem,
                args.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as c_int,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the runtime wrote a NUL-terminated message into `err`.
        Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extern_shared_is_rewritten_outside_comments() {
        let src = "// extern __shared__ float no[];\nextern __shared__ __align__(16) float smem[];\n\
                   void k() { extern __shared__\n unsigned char buf [ ] ; }";
        let out = rewrite_extern_shared(src).unwrap();
        assert_eq!(
            out,
            "// extern __shared__ float no[];\nEMU_EXTERN_SHARED(float, smem);\n\
             void k() { EMU_EXTERN_SHARED(unsigned char, buf);\n }"
        );
        assert!(rewrite_extern_shared("extern __shared__ float x[4];").is_err());
    }
}
