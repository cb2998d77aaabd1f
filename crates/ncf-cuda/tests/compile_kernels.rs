//! Every kernel in `kernels/*.cu` compiles with NVRTC, to PTX (compute_90) and to CUBIN (sm_90,
//! the H100), on a machine without a GPU or a driver: only `libnvrtc` is needed (`.ci/run`
//! installs it from PyPI). Prints `skipped:` when libnvrtc cannot be loaded.

use ncf_cuda::CudaError;
use ncf_cuda::kernels::{SOURCES, kernel_names, unit};
use ncf_cuda::nvrtc::{Target, available, compile, version};

fn nvrtc_or_skip() -> bool {
    if !available() {
        println!("skipped: libnvrtc not found (set LD_LIBRARY_PATH to nvidia/cu13/lib of nvidia-cuda-nvrtc)");
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
