//! Every kernel in `kernels/*.cu` compiles with NVRTC, to PTX (compute_90) and to CUBIN (sm_90,
//! the H100), on a machine without a GPU or a driver: only `libnvrtc` is needed (`.ci/run`
//! installs it from PyPI). Prints `skipped:` when libnvrtc cannot be loaded, or fails under
//! `NCF_REQUIRE_NVRTC=1`, which `.ci/run` sets (`ncf_core::testenv::skip`).

use ncf_cuda::CudaError;
use ncf_cuda::kernels::{SOURCES, kernel_names, unit};
use ncf_cuda::nvrtc::{Target, available, compile, version};

fn nvrtc_or_skip() -> bool {
    if !available() {
        ncf_core::testenv::skip(
            "NCF_REQUIRE_NVRTC",
            "libnvrtc not found (set LD_LIBRARY_PATH to nvidia/cu13/lib of nvidia-cuda-nvrtc)",
        );
        return false;
    }
    println!("NVRTC {:?}", version().unwrap());
    true
}

#[test]
fn every_kernel_compiles_to_ptx_and_sm90_cubin() {
    if !nvrtc_or_skip() {
        return;
    }
    for &(file, src) in SOURCES {
        let ptx = compile(file, &unit(src), Target::Ptx(90)).unwrap_or_else(|e| panic!("{e}"));
        let ptx = String::from_utf8_lossy(&ptx);
        let names = kernel_names(src);
        assert!(!names.is_empty(), "{file} defines no kernel");
        for name in &names {
            assert!(ptx.contains(&format!(".entry {name}(")), "{file}: no PTX entry for `{name}`");
        }
        let cubin = compile(file, &unit(src), Target::Cubin(90)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "{file}: CUBIN is an ELF image");
        println!("{file}: {} kernels, PTX {} bytes, sm_90 CUBIN {} bytes", names.len(), ptx.len(), cubin.len());
    }
}

/// The check can fail: a kernel with a syntax error is reported with NVRTC's log naming the
/// file and line.
#[test]
fn a_broken_kernel_is_reported_with_its_line() {
    if !nvrtc_or_skip() {
        return;
    }
    let src = include_str!("fixtures/broken.cu");
    for target in [Target::Ptx(90), Target::Cubin(90)] {
        let err = compile("broken.cu", src, target).expect_err("must not compile");
        let msg = err.to_string();
        assert!(matches!(err, CudaError::Compile { .. }), "{msg}");
        assert!(msg.contains("broken.cu(5): error: expected a \";\""), "the log names the line: {msg}");
        println!("{target}: {msg}");
    }
}

/// The kernel cache: a first call compiles and writes the CUBIN file, a fresh process would read
/// it from disk, and a changed source gets a new key.
#[test]
fn compiled_kernels_are_cached_on_disk_by_source_and_arch() {
    if !nvrtc_or_skip() {
        return;
    }
    use ncf_cuda::cache::{Origin, cubin};
    let dir = std::env::temp_dir().join(format!("ncf-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = "extern \"C\" __global__ void cache_probe(float* x) { x[0] = 2.0f; }";
    let (a, oa) = cubin("probe.cu", src, 90, Some(&dir)).unwrap();
    assert_eq!(oa, Origin::Compiled);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().starts_with("probe-sm_90-"), "{files:?}");
    let (b, ob) = cubin("probe.cu", src, 90, Some(&dir)).unwrap();
    assert_eq!((ob, &b), (Origin::Memory, &a), "the same process hits memory");
    // Another process has an empty memory: it reads the file. Simulate by using a different
    // file name for the memory key but the same disk file name stem and key.
    std::fs::rename(dir.join(&files[0]), dir.join(files[0].to_string_lossy().replace("probe-", "probe2-"))).unwrap();
    let (c, oc) = cubin("probe2.cu", src, 90, Some(&dir)).unwrap();
    assert_eq!((oc, &c), (Origin::Disk, &a), "a fresh lookup reads the cached CUBIN");
    let (_, od) = cubin("probe2.cu", &src.replace("2.0f", "3.0f"), 90, Some(&dir)).unwrap();
    assert_eq!(od, Origin::Compiled, "a changed source is a different key");
    std::fs::remove_dir_all(&dir).unwrap();
}
