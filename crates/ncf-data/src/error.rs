//! Data errors. Every message names the file, and for content errors the line (1-based) and the
//! field, so a user can open the file and fix it.

use std::path::Path;

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One field of one line is malformed or out of range.
    #[error("{path}:{line}: field `{field}`: {reason}")]
    Parse { path: String, line: usize, field: &'static str, reason: String },
    /// The file as a whole is unusable (empty, inconsistent with another file, …).
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }
    pub fn parse(path: &Path, line: usize, field: &'static str, reason: impl Into<String>) -> Self {
        DataError::Parse { path: path.display().to_string(), line, field, reason: reason.into() }
    }
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Invalid { path: path.display().to_string(), reason: reason.into() }
    }
}

/// Reads a whole file, naming it on failure.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so
/// a crash never leaves half a file. Refuses to replace an existing file unless `force`.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(DataError::invalid(path, "exists; pass --force to overwrite it"));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}
