//! Errors of the CUDA side. Each says what is missing or what failed, in words a user can act on.

/// Result alias for this crate.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A CUDA library could not be loaded.
    #[error("CUDA is not available: {library} ({what}) could not be loaded; {hint}")]
    MissingLibrary { library: &'static str, what: &'static str, hint: &'static str },
    /// The driver loaded but reports no usable device.
    #[error("CUDA is not available: {0}")]
    NoDevice(String),
    /// NVRTC rejected a kernel source.
    #[error("NVRTC could not compile {file} for {target}: {status}\n{log}")]
    Compile { file: String, target: String, status: String, log: String },
    /// Any other driver or NVRTC call failed.
    #[error("{call}: {status}")]
    Call { call: &'static str, status: String },
}
