//! Inputs shared by the GPU parity tests and the emulated kernel tests: the same
//! deterministic random values, so both compare the same cases with the CPU.
#![allow(dead_code)] // each test binary uses a different part

/// `n` values in `[-1, 1)` from a xorshift stream seeded by `seed`.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `n` ids in `[0, rows)`.
pub fn rand_ids(n: usize, rows: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed).iter().map(|x| (((x + 1.0) * 0.5 * rows as f32) as usize).min(rows - 1) as u32).collect()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
