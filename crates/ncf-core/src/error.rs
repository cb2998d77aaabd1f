//! Typed errors. Every error names the op that raised it and the shapes or ids involved, so a
//! caller never has to guess which tensor was wrong.

/// Result alias used across the library crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A buffer is too small (or a dimension disagrees) for the shape an op was asked to use.
    #[error("{op}: shape mismatch for `{tensor}`: expected {expected}, got {got}")]
    ShapeMismatch { op: &'static str, tensor: &'static str, expected: String, got: String },
    /// An embedding id is not a row of its table.
    #[error("{op}: id {id} at batch position {pos} is out of range for `{table}` with {rows} rows")]
    IdOutOfRange { op: &'static str, table: &'static str, id: u32, pos: usize, rows: usize },
    /// A configuration value that can never work (zero width, negative learning rate, …).
    #[error("{op}: invalid argument `{arg}`: {reason}")]
    InvalidArgument { op: &'static str, arg: &'static str, reason: String },
    /// A device call failed (a CUDA driver, launch or cuBLAS error).
    #[error("{op}: device error: {message}")]
    Device { op: &'static str, message: String },
}

impl Error {
    /// Shorthand for a [`Error::ShapeMismatch`].
    pub fn shape(op: &'static str, tensor: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::ShapeMismatch { op, tensor, expected: expected.into(), got: got.into() }
    }
    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { op, arg, reason: reason.into() }
    }
}

/// Checks that a buffer of `len` elements can hold a `dims` tensor: [`crate::check::len`] (kept
/// under this name for callers that predate [`crate::check`]).
pub fn check_len(op: &'static str, tensor: &'static str, len: usize, dims: &[usize]) -> Result<()> {
    crate::check::len(op, tensor, len, dims).map(|_| ())
}

/// Checks that every id in `ids` indexes a row of a table with `rows` rows: [`crate::check::ids`]
/// (kept under this name for callers that predate [`crate::check`]).
pub use crate::check::ids as check_ids;
