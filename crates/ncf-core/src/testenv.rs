//! What a test does when something it needs is absent: skip (print `skipped: …` and pass), or,
//! when the matching `NCF_REQUIRE_*` variable is set, fail. CI sets the variables for what it
//! provides, so a test that would have silently skipped there fails instead.
//!
//! | variable | what must be present |
//! |---|---|
//! | `NCF_REQUIRE_DATA` | the real data under `NCF_DATA` ([`data_dir`]) |
//! | `NCF_REQUIRE_GPU` | a CUDA device (`ncf-cuda`'s `tests/parity.rs`, `benches/gpu.rs`) |
//! | `NCF_REQUIRE_NVRTC` | `libnvrtc` (`ncf-cuda`'s `tests/compile_kernels.rs`) |
//! | `NCF_REQUIRE_BROWSER` | Chromium, for the demo page's browser test (`tests/serve.rs`) |
//!
//! A variable counts as set when it holds anything but an empty string or `0`.

use std::path::PathBuf;

/// Whether the environment variable `var` is set to something other than `""` or `"0"`.
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A test's resource is absent: panics naming `require_var` and `why` when `require_var` is set
/// (see [`required`]), otherwise prints `skipped: {why}` and returns, for the test to return.
#[track_caller]
pub fn skip(require_var: &str, why: &str) {
    if required(require_var) {
        panic!("{require_var} is set, but {why}");
    }
    println!("skipped: {why}");
}

/// `$NCF_DATA/sub`, the real data a test reads (`sub` may be `""` for `$NCF_DATA` itself).
///
/// * `NCF_DATA` unset: `None` after [`skip`] (so under `NCF_REQUIRE_DATA` it panics).
/// * `NCF_DATA` set but `$NCF_DATA/sub` missing: panics naming the path, whatever
///   `NCF_REQUIRE_DATA` says (the data was promised).
#[track_caller]
pub fn data_dir(sub: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os("NCF_DATA") else {
        let wanted = if sub.is_empty() { "$NCF_DATA".to_string() } else { format!("$NCF_DATA/{sub}") };
        skip("NCF_REQUIRE_DATA", &format!("NCF_DATA is unset (the test reads {wanted})"));
        return None;
    };
    let dir = PathBuf::from(root).join(sub);
    if !dir.exists() {
        panic!("NCF_DATA is set, but {} is missing", dir.display());
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    // (`set_var` is unsafe in edition 2024 and this crate forbids unsafe, so only unset
    // variables are tried here; `tests/real_data.rs` under `NCF_REQUIRE_DATA=1` covers the rest.)
    #[test]
    fn an_unset_variable_is_not_required_and_skips() {
        assert!(!required("NCF_TESTENV_SELFTEST_UNSET"));
        skip("NCF_TESTENV_SELFTEST_UNSET", "nothing needed");
    }
}
