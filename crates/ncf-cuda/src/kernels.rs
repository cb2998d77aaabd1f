//! The kernel sources, embedded in the binary. Each file is compiled on its own with the shared
//! helpers of `common.cuh` prepended (NVRTC has no file system to include from).

/// Helpers every kernel file uses (grid-stride loop, block reduction, stable sigmoid/softplus).
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// `(file name, source)` of every kernel file, in the order of the CPU ops files.
pub const SOURCES: &[(&str, &str)] = &[
    ("embedding.cu", include_str!("../../../kernels/embedding.cu")),
    ("linear.cu", include_str!("../../../kernels/linear.cu")),
    ("activation.cu", include_str!("../../../kernels/activation.cu")),
    ("loss.cu", include_str!("../../../kernels/loss.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("optim.cu", include_str!("../../../kernels/optim.cu")),
    ("eval.cu", include_str!("../../../kernels/eval.cu")),
    ("sample.cu", include_str!("../../../kernels/sample.cu")),
    ("fused.cu", include_str!("../../../kernels/fused.cu")),
];

/// The full translation unit NVRTC compiles for `source`: the common helpers, then the file.
pub fn unit(source: &str) -> String {
    format!("{COMMON}\n{source}")
}

/// The `extern "C" __global__` kernel names defined in `source`, in order (for loading a
/// module's functions and for tests that check every kernel was compiled).
pub fn kernel_names(source: &str) -> Vec<&str> {
    source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel names are unique across files (the launch plans name kernels by
    /// [`crate::plan::Kernel`], whose test checks that every kernel here has a variant and
    /// every variant a kernel).
    #[test]
    fn kernel_names_are_unique() {
        let all: Vec<&str> = SOURCES.iter().flat_map(|(_, s)| kernel_names(s)).collect();
        assert!(all.len() >= 40, "found only {all:?}");
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "kernel names are unique across files");
    }
}
