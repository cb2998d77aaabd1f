//! Seeded random inputs for the kernel tests.

use rand::{RngExt, SeedableRng};

/// `n` values uniform in [−1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// `b` ids uniform in `0..n`.
pub fn rand_ids(b: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..b).map(|_| r.random_range(0..n as u32)).collect()
}
