//! Compiled kernels, cached: in memory for the life of the process, and as CUBIN files on disk
//! keyed by a hash of the source, the GPU architecture and the NVRTC version, so a second run
//! skips NVRTC entirely. The disk folder is `$NCF_KERNEL_CACHE`, else
//! `$XDG_CACHE_HOME/ncf-rs/kernels`, else `~/.cache/ncf-rs/kernels`; it can be deleted at any
//! time. Files are written atomically (temporary name, then rename), so concurrent runs never
//! read half a file.

use crate::error::{CudaError, Result};
use crate::nvrtc::{Target, compile, version};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where a compiled module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Memory,
    Disk,
    Compiled,
}

/// FNV-1a, 64 bits: a stable hash (unlike std's, which may change between Rust releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The default disk cache folder (see the module doc); `None` if no home is known.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("NCF_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ncf-rs").join("kernels"))
}

/// (file, arch, source key) → CUBIN.
type Modules = HashMap<(String, u32, u64), Vec<u8>>;

fn memory() -> &'static Mutex<Modules> {
    static M: OnceLock<Mutex<Modules>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The CUBIN of `src` (named `file`) for `sm_{arch}`: from memory, from `dir`, or compiled (and
/// then stored in both). A disk error never fails the call: the cache is an optimization.
pub fn cubin(file: &str, src: &str, arch: u32, dir: Option<&Path>) -> Result<(Vec<u8>, Origin)> {
    let (major, minor) = version()?;
    let key = fnv1a(format!("{src}\0{arch}\0{major}.{minor}").as_bytes());
    let mem_key = (file.to_string(), arch, key);
    if let Some(hit) = memory().lock().ok().and_then(|m| m.get(&mem_key).cloned()) {
        return Ok((hit, Origin::Memory));
    }
    let stem = file.trim_end_matches(".cu");
    let path = dir.map(|d| d.join(format!("{stem}-sm_{arch}-{key:016x}.cubin")));
    let remember = |bytes: &Vec<u8>| {
        if let Ok(mut m) = memory().lock() {
            m.insert(mem_key.clone(), bytes.clone());
        }
    };
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
        && bytes.starts_with(b"\x7fELF")
    {
        remember(&bytes);
        return Ok((bytes, Origin::Disk));
    }
    let bytes = compile(file, src, Target::Cubin(arch))?;
    if let Some(p) = &path {
        let _ = store(p, &bytes);
    }
    remember(&bytes);
    Ok((bytes, Origin::Compiled))
}

fn store(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| CudaError::Call { call: "kernel cache", status: format!("{}: {e}", path.display()) };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
