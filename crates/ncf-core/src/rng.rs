//! Seeded randomness. Everything random in ncf-rs draws from an [`Rng`] made here, so a seed
//! fixes every result.

use rand::SeedableRng;

/// The generator used everywhere: ChaCha-based `StdRng`, pinned by `Cargo.lock`.
pub type Rng = rand::rngs::StdRng;

/// A generator for one named purpose (`stream`) under a run's `seed`.
///
/// Different streams give independent sequences, so adding a random draw in one place (say,
/// the negative sampler) does not shift the numbers another place (say, init) sees.
pub fn seeded(seed: u64, stream: u64) -> Rng {
    Rng::seed_from_u64(splitmix64(seed ^ splitmix64(stream)))
}

/// SplitMix64 finalizer (Steele et al.): a cheap bijective mixer for seeds.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Dropout's keep test is `dropout_bits(seed, k) >= dropout_threshold(p)`: element `k` of a
/// dropout call keyed by `seed` is kept with probability `1 − threshold / 2²⁴ ≈ 1 − p`. A pure
/// function of `(seed, k)`, so the mask needs no storage, the backward recomputes it, and the
/// GPU (`kernels/norm.cu`, the same integer arithmetic) draws the same mask bit for bit.
pub fn dropout_bits(seed: u64, k: u64) -> u32 {
    (splitmix64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40) as u32
}

/// The 24-bit threshold of [`dropout_bits`] for a drop probability `p ∈ [0, 1)`.
pub fn dropout_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * (1u64 << 24) as f64).round() as u32
}

/// The dropout seed of one layer at one training step: every (run seed, step, layer) gets its
/// own mask.
pub fn dropout_seed(seed: u64, step: u64, layer: u64) -> u64 {
    splitmix64(splitmix64(seed ^ 0xd20_0000_0000) ^ step.wrapping_mul(0x100) ^ layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt as _;

    #[test]
    fn same_seed_same_stream_is_reproducible_and_streams_differ() {
        let a: Vec<u64> = (0..4).map(|_| 0).scan(seeded(7, 1), |r, _: u64| Some(r.random::<u64>())).collect();
        let b: Vec<u64> = (0..4).map(|_| 0).scan(seeded(7, 1), |r, _: u64| Some(r.random::<u64>())).collect();
        let c: Vec<u64> = (0..4).map(|_| 0).scan(seeded(7, 2), |r, _: u64| Some(r.random::<u64>())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_the_mask_depends_on_the_seed() {
        for p in [0.1, 0.5, 0.9] {
            let thr = dropout_threshold(p);
            let n = 200_000u64;
            let kept = (0..n).filter(|&k| dropout_bits(3, k) >= thr).count() as f64 / n as f64;
            assert!((kept - (1.0 - p)).abs() < 0.005, "p={p}: kept {kept}");
        }
        let thr = dropout_threshold(0.5);
        let a: Vec<bool> = (0..64).map(|k| dropout_bits(1, k) >= thr).collect();
        let b: Vec<bool> = (0..64).map(|k| dropout_bits(2, k) >= thr).collect();
        assert_ne!(a, b);
        assert_eq!(dropout_threshold(0.0), 0);
        assert_ne!(dropout_seed(1, 0, 0), dropout_seed(1, 1, 0));
        assert_ne!(dropout_seed(1, 0, 0), dropout_seed(1, 0, 1));
    }
}
