//! CPU kernels, one file per op family (the CUDA twins live in `kernels/<same name>.cu`).

pub mod activation;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod optim;

/// Asks the CPU to start loading `data[start .. start + len]` into its caches: a hint with no
/// effect on any result, and a no-op for a range outside `data` or off x86-64.
///
/// The embedding tables and their optimizer state (6 MB for NeuMF-8 on ML-1M) live in L3, and a
/// batch visits their rows in an order the hardware prefetcher cannot guess; the kernels that
/// walk a list of rows prefetch a few rows ahead.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if start.checked_add(len).is_some_and(|end| end <= data.len()) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = data[start..].as_ptr().cast::<i8>();
        for off in (0..len * size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch never faults and changes no memory; the address is inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

/// `dst = src` for one short row (an embedding row, one side of a concatenation, a bias).
/// The model's widths (8, 16, 32, 64) get a copy of known length, a few vector moves; a
/// `memcpy` call for 32 bytes costs more than the move, and the two-lane step makes tens of
/// millions of them per epoch.
#[inline(always)]
pub(crate) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    match dst.len() {
        8 => dst.copy_from_slice(&src[..8]),
        16 => dst.copy_from_slice(&src[..16]),
        32 => dst.copy_from_slice(&src[..32]),
        64 => dst.copy_from_slice(&src[..64]),
        n if n < 8 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s),
        _ => dst.copy_from_slice(src),
    }
}
