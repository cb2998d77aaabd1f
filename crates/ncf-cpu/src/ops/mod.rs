//! CPU kernels, one file per op family (the CUDA twins live in `kernels/<same name>.cu`).

pub mod activation;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod optim;

/// How many rows ahead the kernels that walk a list of table rows (the scatter-add, lazy Adam)
/// prefetch them with [`prefetch`].
pub(crate) const PREFETCH_ROWS: usize = 4;

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
/// A `memcpy` call for 32–256 bytes costs more than the move, and training makes one per row
/// and op (callgrind counted 5.8 million from `concat_cols`, `split_cols` and the bias rows in
/// one ML-100K epoch); so rows up to 64 elements are copied in pieces of 8, each a
/// copy of known length that the compiler turns into a couple of vector moves. (A single
/// `copy_from_slice` of 32 floats still compiled to a `memcpy` call.)
#[inline(always)]
pub(crate) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    if n > 64 {
        return dst.copy_from_slice(src);
    }
    let src = &src[..n];
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [T; 8] = d.try_into().expect("8 elements");
        *d = *<&[T; 8]>::try_from(s).expect("8 elements");
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = s;
    }
}

#[cfg(test)]
mod tests {
    /// Every width from 0 to 70 (pieces of 8, a remainder, both, and the long-row path) copies
    /// exactly its row and nothing past it.
    #[test]
    fn copy_row_copies_every_width_exactly() {
        for n in 0..=70usize {
            let src: Vec<f32> = (0..n + 3).map(|k| k as f32 + 0.5).collect();
            let mut dst = vec![-1.0f32; n + 3];
            super::copy_row(&mut dst[..n], &src[..n]);
            assert_eq!(&dst[..n], &src[..n], "width {n}");
            assert_eq!(&dst[n..], &[-1.0; 3], "width {n}: wrote past the row");
        }
    }
}
