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

/// Checks that a buffer of `len` elements can hold a `dims` tensor (row-major, `Π dims` elements).
///
/// Buffers may be larger than the tensor (activation workspaces are sized for the largest batch),
/// never smaller.
pub fn check_len(op: &'static str, tensor: &'static str, len: usize, dims: &[usize]) -> Result<()> {
    let need: usize = dims.iter().product();
    if len < need {
        let shape = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        return Err(Error::shape(
            op,
            tensor,
            format!("({shape}) = {need} elements"),
            format!("a buffer of {len} elements"),
        ));
    }
    Ok(())
}

/// Checks that every id in `ids[..n]` indexes a row of a table with `rows` rows.
pub fn check_ids(op: &'static str, table: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= rows) {
        Some(pos) => Err(Error::IdOutOfRange { op, table, id: ids[pos], pos, rows }),
        None => Ok(()),
    }
}
