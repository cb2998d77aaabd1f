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
    /// The input passes a resource limit (a line's length, a table's rows): refused before it
    /// can exhaust memory. Names the limit, so a user knows what to change.
    #[error("{path}:{line}: {what} exceeds the limit of {limit}")]
    Limit { path: String, line: usize, what: String, limit: String },
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
    pub fn limit(path: &Path, line: usize, what: impl Into<String>, limit: impl Into<String>) -> Self {
        DataError::Limit { path: path.display().to_string(), line, what: what.into(), limit: limit.into() }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder (`PATH.tmpPID`),
/// flushed to disk, then a rename, so a crash or a kill never leaves half a file under the final
/// name. A failed write (a full disk) removes the temporary file and leaves any previous file
/// at `path` as it was. Refuses to replace an existing file unless `force`.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    use std::io::Write;
    if path.exists() && !force {
        return Err(DataError::invalid(path, "exists; pass --force to overwrite it"));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })?;
    remove_stale_temporaries(path);
    Ok(())
}

/// Removes `PATH.tmpPID` files that a killed writer of `path` left behind: those whose process
/// is gone (Linux only: a process is alive while `/proc/PID` exists). Best effort.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(name)).and_then(|f| f.strip_prefix(".tmp")) else {
            continue;
        };
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
