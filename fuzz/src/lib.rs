//! What the fuzz targets share: a scratch folder of this process, where each input is written
//! under the file name a loader expects, so the targets run the real path-based entry points
//! (file-name dispatch, streaming reads, line limits) exactly as `ncf` does.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch folder (in `/dev/shm` when there is one, so writes stay in memory).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("ncf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    })
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("writing a scratch file");
    p
}

/// Removes `name` from the scratch folder, if it is there.
pub fn remove(name: &str) {
    let _ = std::fs::remove_file(scratch().join(name));
}

/// The input's first byte picks one of `choices` (a file name); the rest is the file.
pub fn pick<'a>(data: &'a [u8], choices: &[&'static str]) -> Option<(&'static str, &'a [u8])> {
    let (&first, rest) = data.split_first()?;
    Some((choices[first as usize % choices.len()], rest))
}
