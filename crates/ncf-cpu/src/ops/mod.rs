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

/// Rows per rayon task of the row-wise ops that scoring's large batches (25,600 rows) split
/// across threads: the gathers, the bias fill, the one-output head and `concat_cols`. A task
/// per row spent more on rayon's bookkeeping than on the row.
pub(crate) const PAR_ROWS: usize = 1024;

/// `x` as an f32 slice when `T` is `f32` (the kernels written with f32 intrinsics take their
/// generic callers' slices through it).
pub(crate) fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32` (the same type id), so the memory is a `[f32]` of that length.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
}

/// [`as_f32`] for a mutable slice.
pub(crate) fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32` (the same type id), so the memory is a `[f32]` of that length,
        // borrowed mutably for as long as `x`.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) })
}

/// Asks the CPU to start loading `data[start .. start + len]` into its caches: a hint with no
/// effect on any result, and a no-op for a range outside `data` or off x86-64.
///
/// The embedding tables and their optimizer state (6 MB for NeuMF-8 on ML-1M) live in L3, and a
/// batch visits their rows in an order the hardware prefetcher cannot guess; the kernels that
/// walk a list of rows prefetch a few rows ahead. The trainer calls it on the next batch's
/// sampled rows, which an ML-1M epoch (60 MB of them) does not keep in cache.
#[inline(always)]
pub fn prefetch<T>(data: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if start.checked_add(len).is_some_and(|end| end <= data.len()) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (first, span) = lines(&data[start..], len);
        for off in (0..span).step_by(64) {
            // SAFETY: a prefetch never faults and changes no memory; the address lies in a line
            // that holds part of `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(off).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

/// The 64-byte lines that `data[..len]` touches, as the first line's start and the bytes from
/// there to the end of the last element: stepping by 64 through them reaches every line, also
/// the last one of a range that does not start on a line (stepping from the range's own start
/// missed it). An empty range touches no line.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lines<T>(data: &[T], len: usize) -> (*const u8, usize) {
    let p = data.as_ptr().cast::<u8>();
    let bytes = len * size_of::<T>();
    let lead = if bytes == 0 { 0 } else { p as usize % 64 };
    (p.wrapping_sub(lead), if bytes == 0 { 0 } else { lead + bytes })
}

/// [`prefetch`] for lines the caller is about to *write*: PREFETCHW, which fetches each line
/// ready to be modified, where the CPU has it (AMD's, and Intel's from Broadwell on); a plain
/// [`prefetch`] elsewhere. Like [`prefetch`], a hint with no effect on any result.
///
/// In the two-lane step an embedding row is read on one core (a lane's gather) and written on
/// the other (that side's optimizer). A read prefetch brings such a line in shared, and the
/// write then waits for a second trip to invalidate the other core's copy; PREFETCHW makes it
/// one trip. BENCHMARKS.md has the timings (Zen 4 VM, 2026-12-06, third session).
#[inline(always)]
pub(crate) fn prefetch_write<T>(data: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        if start.checked_add(len).is_some_and(|end| end <= data.len()) {
            let (first, span) = lines(&data[start..], len);
            for off in (0..span).step_by(64) {
                // SAFETY: PREFETCHW (checked present above) never faults and changes no
                // memory, only where a line is cached; the address lies in a line that holds
                // part of `data`.
                unsafe {
                    std::arch::asm!("prefetchw [{0}]", in(reg) first.wrapping_add(off), options(nostack, preserves_flags, readonly))
                };
            }
        }
        return;
    }
    prefetch(data, start, len);
}

/// Prefetches the line at `p` for writing (PREFETCHW) when `write` (the caller's copy of
/// [`has_prefetchw`], read once per loop), else for reading: the raw-pointer step of
/// [`prefetch_write`] and [`prefetch`] for a kernel that has already checked its rows lie inside
/// its slices, so each row costs its prefetches and nothing else.
///
/// # Safety
/// None needed for memory (a prefetch never faults and writes nothing); `write` only where
/// [`has_prefetchw`] said so.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn prefetch_line(p: *const u8, write: bool) {
    // SAFETY: a prefetch never faults and changes no memory, only where a line is cached; the
    // caller passes `write` only where the CPU has PREFETCHW.
    unsafe {
        if write {
            std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
        } else {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
        }
    }
}

/// Whether this CPU has PREFETCHW (CPUID leaf 0x8000_0001, ECX bit 8), read once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static HAS: AtomicU8 = AtomicU8::new(2);
    match HAS.load(Ordering::Relaxed) {
        2 => {
            // Leaf 0x8000_0000 reports the highest extended leaf, so 0x8000_0001 is read only
            // where it exists.
            use std::arch::x86_64::__cpuid;
            let has = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
            HAS.store(u8::from(has), Ordering::Relaxed);
            has
        }
        h => h == 1,
    }
}

/// `dst = src` for one short row (an embedding row, one side of a concatenation, a bias).
/// A `memcpy` call for 32–256 bytes costs more than the move, and training makes one per row
/// and op (callgrind counted 5.8 million from `concat_cols`, `split_cols` and the bias rows in
/// one ML-100K epoch); so rows of 8, 16 and 32 elements are copied as arrays of that constant
/// size, and other rows up to 64 elements in pieces of 8, each a copy of known length that the
/// compiler turns into a couple of vector moves. (A single `copy_from_slice` of 32 floats still
/// compiled to a `memcpy` call, in an AVX2 build the loop over pieces became one too, and a
/// constant copy of 256 bytes is one in the baseline build; the AVX2 gathers move f32 rows with
/// intrinsics, `embedding::embedding_forward_cols_avx2`.)
#[inline(always)]
pub(crate) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    /// A row of a width known here: a copy of constant size, which the compiler writes out as
    /// vector moves (a loop of unknown trip count became a `memmove` call in the AVX2 builds).
    #[inline(always)]
    fn fixed<T: Copy, const W: usize>(dst: &mut [T], src: &[T]) {
        let d: &mut [T; W] = (&mut dst[..W]).try_into().expect("W elements");
        *d = *<&[T; W]>::try_from(&src[..W]).expect("W elements");
    }
    let n = dst.len();
    match n {
        8 => return fixed::<T, 8>(dst, src),
        16 => return fixed::<T, 16>(dst, src),
        32 => return fixed::<T, 32>(dst, src),
        _ if n > 64 => return dst.copy_from_slice(src),
        _ => {}
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
    /// Both prefetches are hints: in range, at the end, past the end, or with a start that
    /// would overflow, they neither fault nor change anything.
    #[test]
    fn prefetches_never_fault_or_write() {
        let data: Vec<f32> = (0..100).map(|k| k as f32).collect();
        let copy = data.clone();
        for (start, len) in [(0, 100), (96, 4), (96, 8), (100, 1), (1000, 8), (usize::MAX, 2), (usize::MAX - 1, 0)] {
            super::prefetch(&data, start, len);
            super::prefetch_write(&data, start, len);
        }
        assert_eq!(data, copy);
    }

    /// The lines a prefetch steps through start on a line at or before the range's first byte
    /// and reach its last byte's line, and no further: for every start and length across two
    /// lines' worth of offsets (an empty range: none).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn prefetch_lines_cover_the_range_exactly() {
        let data = vec![0u32; 96];
        for start in 0..48 {
            for len in 0..=40 {
                let (first, span) = super::lines(&data[start..], len);
                let (a, first) = (data[start..].as_ptr() as usize, first as usize);
                let steps = span.div_ceil(64);
                if len == 0 {
                    assert_eq!(steps, 0, "start {start}: an empty range");
                    continue;
                }
                let last_byte = a + 4 * len - 1;
                assert_eq!(first % 64, 0, "start {start} len {len}");
                assert!(first <= a && a < first + 64, "start {start} len {len}: first line");
                assert_eq!(first + 64 * (steps - 1), last_byte & !63, "start {start} len {len}: last line");
            }
        }
    }

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
