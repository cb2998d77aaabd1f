//! Embedding lookup: gather (forward) and scatter-add (backward).
//!
//! An embedding table is just a matrix `table (N,D)`; "looking up" id `k` reads row `k`.
//! The backward pass is the transpose of that read: the gradient of row `k` is the sum of the
//! output-gradient rows of every batch position that looked `k` up.

use super::PAR_ROWS;
use ncf_core::Float;
use rayon::prelude::*;

/// Below this many output elements, threads cost more than they save.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Gather, reference version. `table (N,D)  ids (B)  out (B,D)`:  `out[b,:] = table[ids[b],:]`.
pub fn embedding_forward_naive<T: Float>(table: &[T], d: usize, ids: &[u32], out: &mut [T]) {
    for (b, &id) in ids.iter().enumerate() {
        for j in 0..d {
            out[b * d + j] = table[id as usize * d + j];
        }
    }
}

/// Gather, fast version: one short copy per row, rows split across threads for large batches;
/// a batch on one thread runs a copy built for AVX2 where the CPU has it (whole 32-byte moves;
/// a copy is exact, so the same values on every level).
pub fn embedding_forward<T: Float>(table: &[T], d: usize, ids: &[u32], out: &mut [T]) {
    let out = &mut out[..ids.len() * d];
    if d == 0 {
        return;
    }
    if out.len() >= PAR_MIN_ELEMS && crate::team::rayon_ok() {
        // Blocks of rows, each through the AVX2-dispatched copy.
        out.par_chunks_mut(PAR_ROWS * d)
            .zip(ids.par_chunks(PAR_ROWS))
            .for_each(|(o, ids)| embedding_forward_cols(table, d, ids, o, d, 0));
        return;
    }
    embedding_forward_cols(table, d, ids, out, d, 0);
}

/// `dst += src` for one embedding row (widths specialised as in [`copy_row`](super::copy_row)).
#[inline(always)]
fn add_into<T: Float>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn add<T: Float, const W: usize>(dst: &mut [T], src: &[T]) {
        // As fixed-size arrays, so the compiler sees whole vectors (with slices it emitted one
        // scalar load-add-store per element), both rows read into values before the store:
        // added in place, the AVX2 build still ran width 8 as 8 scalar load-add-stores and
        // width 32 as 3 vectors and 8 scalars (perf annotate of the compact sum).
        let dst: &mut [T; W] = (&mut dst[..W]).try_into().expect("W elements");
        let src: [T; W] = *<&[T; W]>::try_from(&src[..W]).expect("W elements");
        let mut sum = *dst;
        for (x, g) in sum.iter_mut().zip(src) {
            *x += g;
        }
        *dst = sum;
    }
    match dst.len() {
        8 => add::<T, 8>(dst, src),
        16 => add::<T, 16>(dst, src),
        32 => add::<T, 32>(dst, src),
        64 => add::<T, 64>(dst, src),
        _ => dst.iter_mut().zip(src).for_each(|(x, &g)| *x += g),
    }
}

/// Fused gather-add-ReLU, reference version (inference only).
/// `a (NA,D)  ia (B)  c (NC,D)  ic (B)  out (B,D)`:  `out[b,:] = relu(a[ia[b],:] + c[ic[b],:])`.
pub fn gather_add_relu_naive<T: Float>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], d: usize, out: &mut [T]) {
    for b in 0..ia.len() {
        for j in 0..d {
            let z = a[ia[b] as usize * d + j] + c[ic[b] as usize * d + j];
            out[b * d + j] = if z > T::ZERO { z } else { T::ZERO };
        }
    }
}

/// Fused gather-add-ReLU, fast version: one pass over the output, rows split across threads
/// for large batches. Each element is the same single addition as the reference, so the
/// results are bit-identical.
pub fn gather_add_relu<T: Float>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], d: usize, out: &mut [T]) {
    let out = &mut out[..ia.len() * d];
    if d == 0 {
        return;
    }
    if out.len() >= PAR_MIN_ELEMS && crate::team::rayon_ok() {
        out.par_chunks_mut(PAR_ROWS * d)
            .zip(ia.par_chunks(PAR_ROWS).zip(ic.par_chunks(PAR_ROWS)))
            .for_each(|(o, (ia, ic))| gather_add_relu_rows(a, ia, c, ic, d, o));
    } else {
        gather_add_relu_rows(a, ia, c, ic, d, out);
    }
}

/// [`gather_add_relu`]'s rows on this thread, on the AVX2 build where the CPU has it (the same
/// additions and comparisons, so the same values on every level).
fn gather_add_relu_rows<T: Float>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], d: usize, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { gather_add_relu_rows_avx2(a, ia, c, ic, d, out) };
    }
    gather_add_relu_rows_in(a, ia, c, ic, d, out)
}

/// [`gather_add_relu_rows`] built for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gather_add_relu_rows_avx2<T: Float>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], d: usize, out: &mut [T]) {
    gather_add_relu_rows_in(a, ia, c, ic, d, out)
}

/// The body of [`gather_add_relu_rows`]: the common widths with rows read into fixed-size
/// values (whole vectors; see `add_into`), any other width element by element.
#[inline(always)]
fn gather_add_relu_rows_in<T: Float>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], d: usize, out: &mut [T]) {
    #[inline(always)]
    fn relu_sum<T: Float>(x: T, y: T) -> T {
        let z = x + y;
        if z > T::ZERO { z } else { T::ZERO }
    }
    #[inline(always)]
    fn fixed<T: Float, const W: usize>(a: &[T], ia: &[u32], c: &[T], ic: &[u32], out: &mut [T]) {
        for ((o, &i), &k) in out.chunks_exact_mut(W).zip(ia).zip(ic) {
            let x: [T; W] = *<&[T; W]>::try_from(&a[i as usize * W..][..W]).expect("a row of W");
            let y: [T; W] = *<&[T; W]>::try_from(&c[k as usize * W..][..W]).expect("a row of W");
            let mut z = [T::ZERO; W];
            for l in 0..W {
                z[l] = relu_sum(x[l], y[l]);
            }
            let o: &mut [T; W] = o.try_into().expect("a row of W");
            *o = z;
        }
    }
    match d {
        8 => fixed::<T, 8>(a, ia, c, ic, out),
        16 => fixed::<T, 16>(a, ia, c, ic, out),
        32 => fixed::<T, 32>(a, ia, c, ic, out),
        64 => fixed::<T, 64>(a, ia, c, ic, out),
        _ => {
            for ((o, &i), &k) in out.chunks_exact_mut(d).zip(ia).zip(ic) {
                let (x, y) = (&a[i as usize * d..][..d], &c[k as usize * d..][..d]);
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = relu_sum(x, y);
                }
            }
        }
    }
}

/// Scatter-add, reference version. `dout (B,D)  ids (B)  dtable (N,D)`:
/// `dtable[ids[b],:] += dout[b,:]`, visiting `b` in order.
pub fn embedding_backward_naive<T: Float>(dout: &[T], d: usize, ids: &[u32], dtable: &mut [T]) {
    for (b, &id) in ids.iter().enumerate() {
        for j in 0..d {
            dtable[id as usize * d + j] += dout[b * d + j];
        }
    }
}

/// Scatter-add, fast version, race-free without atomics or locks.
///
/// Two batch rows with the same id write the same table row, so splitting the *batch* across
/// threads would race. Instead the *table* is split into disjoint blocks of rows; each thread
/// owns one block, scans all ids, and adds only the rows it owns. No two threads ever write the
/// same memory, and every table row still receives its contributions in batch order. So the
/// result is bit-identical to the naive loop whatever the thread count (the test checks it).
pub fn embedding_backward<T: Float>(dout: &[T], d: usize, ids: &[u32], dtable: &mut [T]) {
    let b = ids.len();
    let n = dtable.len() / d.max(1);
    if d == 0 {
        return;
    }
    if b * d < PAR_MIN_ELEMS || n < 2 || !crate::team::rayon_ok() {
        // One row at a time, in batch order: the naive loop's sums, with whole-row slices
        // (no per-element bounds checks, so the adds vectorize).
        // The table's rows arrive in no order the hardware can guess: ask for a few ahead.
        for (k, (g, &id)) in dout[..b * d].chunks_exact(d).zip(ids).enumerate() {
            if let Some(&next) = ids.get(k + super::PREFETCH_ROWS) {
                super::prefetch(dtable, next as usize * d, d);
            }
            add_into(&mut dtable[id as usize * d..(id as usize + 1) * d], g);
        }
        return;
    }
    // Blocks of table rows; more blocks than threads so rayon can balance skewed ids.
    let blocks = (rayon::current_num_threads() * 4).min(n);
    let rows_per_block = n.div_ceil(blocks);
    dtable[..n * d].par_chunks_mut(rows_per_block * d).enumerate().for_each(|(blk, chunk)| {
        let lo = blk * rows_per_block;
        let hi = lo + chunk.len() / d;
        for (bi, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= lo && id < hi {
                add_into(&mut chunk[(id - lo) * d..(id - lo + 1) * d], &dout[bi * d..(bi + 1) * d]);
            }
        }
    });
}

/// Gather into columns, reference version: `out[b, col0..col0+D] = table[ids[b], :]` for
/// `table (N,D)  ids (B)  out (B,C)`, `col0 + D ≤ C`; `out`'s other columns are left alone.
/// The CPU's two-lane step gathers the MLP tower's `P[u]` and `Q[i]` straight into `x₀ =
/// [P[u], Q[i]]` with it, where the reference gathers each and then concatenates.
pub fn embedding_forward_cols_naive<T: Float>(
    table: &[T],
    d: usize,
    ids: &[u32],
    out: &mut [T],
    cols: usize,
    col0: usize,
) {
    for (b, &id) in ids.iter().enumerate() {
        for j in 0..d {
            out[b * cols + col0 + j] = table[id as usize * d + j];
        }
    }
}

/// Gather into columns, fast version: one short copy per row (a lane's few hundred rows: no
/// threads), built for AVX2 where the CPU has it.
pub fn embedding_forward_cols<T: Float>(table: &[T], d: usize, ids: &[u32], out: &mut [T], cols: usize, col0: usize) {
    if d == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { embedding_forward_cols_avx2(table, d, ids, out, cols, col0) };
    }
    embedding_forward_cols_in(table, d, ids, out, cols, col0)
}

/// [`embedding_forward_cols`] built for AVX2: f32 rows a whole number of 8 wide are moved 32
/// bytes at a time with intrinsics (in this build the compiler made the plain copy of a
/// 128-byte row a `memcpy` call: 88 core-ms of a forced-AVX2 epoch in `perf record`); other
/// rows by the plain body. A copy is exact, so the same values either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn embedding_forward_cols_avx2<T: Float>(table: &[T], d: usize, ids: &[u32], out: &mut [T], cols: usize, col0: usize) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    let (Some(table), Some(out)) = (super::as_f32(table), super::as_f32_mut(out)) else {
        return embedding_forward_cols_in(table, d, ids, out, cols, col0);
    };
    if !d.is_multiple_of(8) {
        return embedding_forward_cols_in(table, d, ids, out, cols, col0);
    }
    /// `n` vectors of 8 from `s` to `t`, written out one by one for the common widths (a loop
    /// over them was turned into a `memcpy` call too).
    ///
    /// # Safety
    /// AVX2; `s` and `t` valid for `8n` floats.
    #[inline(always)]
    unsafe fn moves(t: *mut f32, s: *const f32, n: usize) {
        // SAFETY: the caller's contract: 8n floats at each pointer, AVX2.
        unsafe {
            let mv = |k: usize| _mm256_storeu_ps(t.add(8 * k), _mm256_loadu_ps(s.add(8 * k)));
            match n {
                1 => mv(0),
                2 => (mv(0), mv(1)).1,
                4 => (mv(0), mv(1), mv(2), mv(3)).3,
                _ => (0..n).for_each(mv),
            }
        }
    }
    for (row, &id) in out.chunks_mut(cols).zip(ids) {
        let src = &table[id as usize * d..][..d];
        let dst = &mut row[col0..col0 + d];
        // SAFETY: `src` and `dst` hold `d` floats each, `d` a multiple of 8; AVX2 is enabled here.
        unsafe { moves(dst.as_mut_ptr(), src.as_ptr(), d / 8) };
    }
}

/// The body of [`embedding_forward_cols`].
#[inline(always)]
fn embedding_forward_cols_in<T: Float>(table: &[T], d: usize, ids: &[u32], out: &mut [T], cols: usize, col0: usize) {
    for (row, &id) in out.chunks_mut(cols).zip(ids) {
        let start = id as usize * d;
        super::copy_row(&mut row[col0..col0 + d], &table[start..start + d]);
    }
}

/// Scatter-add from columns, reference version: `dtable[ids[b], :] += dout[b, col0..col0+D]`
/// for `dout (B,C)`, in batch order. The two-lane step scatters the MLP tower's `dP[u]` and
/// `dQ[i]` straight from `∂L/∂x₀`'s columns with it, where the reference splits `dx₀` first.
pub fn embedding_backward_cols_naive<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    dtable: &mut [T],
) {
    for (b, &id) in ids.iter().enumerate() {
        for j in 0..d {
            dtable[id as usize * d + j] += dout[b * cols + col0 + j];
        }
    }
}

/// Scatter-add from columns, fast version: whole-row adds in batch order, the table's rows
/// asked for a few ahead (as the serial [`embedding_backward`]), so the sums are the naive
/// loop's bit for bit.
pub fn embedding_backward_cols<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    dtable: &mut [T],
) {
    if d == 0 {
        return;
    }
    for (k, (g, &id)) in dout.chunks(cols).zip(ids).enumerate() {
        if let Some(&next) = ids.get(k + super::PREFETCH_ROWS) {
            super::prefetch(dtable, next as usize * d, d);
        }
        add_into(&mut dtable[id as usize * d..(id as usize + 1) * d], &g[col0..col0 + d]);
    }
}

/// Scatter-add into a compact gradient, reference version: `gc[slot[ids[b]], :] += dout[b,
/// col0..col0+D]` for `dout (B,C)` and `gc (K,D)`, in batch order, where `slot` maps each id to
/// its row among the batch's `K` distinct ids ([`compact_slots`]). The two-lane step sums a
/// side's rows there, and lazy Adam reads them from there
/// ([`super::optim::adam_step_rows_compact`]), instead of a table-sized gradient.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward_compact_naive<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    slot: &[u32],
    gc: &mut [T],
) {
    for (b, &id) in ids.iter().enumerate() {
        let k = slot[id as usize] as usize;
        for j in 0..d {
            gc[k * d + j] += dout[b * cols + col0 + j];
        }
    }
}

/// Scatter-add into a compact gradient, fast version: whole-row adds, in batch order (the
/// naive loop's sums, bit for bit). `gc` is a few dozen KiB the core just zeroed, so nothing
/// is prefetched.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward_compact<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    slot: &[u32],
    gc: &mut [T],
) {
    if d == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { embedding_backward_compact_avx2(dout, cols, col0, d, ids, slot, gc) };
    }
    embedding_backward_compact_in(dout, cols, col0, d, ids, slot, gc)
}

/// [`embedding_backward_compact`] built for AVX2: the same adds, 8 lanes wide (the baseline
/// build ran them 4 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn embedding_backward_compact_avx2<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    slot: &[u32],
    gc: &mut [T],
) {
    embedding_backward_compact_in(dout, cols, col0, d, ids, slot, gc)
}

/// The body of [`embedding_backward_compact`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn embedding_backward_compact_in<T: Float>(
    dout: &[T],
    cols: usize,
    col0: usize,
    d: usize,
    ids: &[u32],
    slot: &[u32],
    gc: &mut [T],
) {
    for (g, &id) in dout.chunks(cols).zip(ids) {
        let k = slot[id as usize] as usize;
        add_into(&mut gc[k * d..(k + 1) * d], &g[col0..col0 + d]);
    }
}

/// `slot[uniq[k]] = k`: each of a batch's distinct ids (sorted, from `unique_ids`) mapped to
/// its row of a compact gradient. Entries of ids not in `uniq` keep whatever they held.
pub fn compact_slots(uniq: &[u32], slot: &mut [u32]) {
    for (k, &id) in uniq.iter().enumerate() {
        slot[id as usize] = k as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{rand_ids, rand_vec};
    use ncf_core::tol::assert_close_f32;

    #[test]
    fn gather_matches_naive() {
        for &(n, d, b) in &[(7, 3, 5), (100, 8, 256), (100, 32, 256), (5000, 16, 4096), (3000, 8, 5000)] {
            let table = rand_vec(n * d, 1);
            let ids = rand_ids(b, n, 2);
            let mut want = vec![0.0f32; b * d];
            let mut got = vec![f32::NAN; b * d];
            embedding_forward_naive(&table, d, &ids, &mut want);
            embedding_forward(&table, d, &ids, &mut got);
            assert_eq!(got, want, "gather n={n} d={d} b={b}");
        }
    }

    #[test]
    fn gather_add_relu_matches_naive_bitwise() {
        for &(na, nc, d, b) in &[
            (7, 5, 3, 5),
            (30, 20, 8, 40),
            (30, 20, 16, 3000),
            (100, 80, 32, 256),
            (6040, 3706, 32, 25_600),
            (50, 40, 64, 1500),
        ] {
            let (a, c) = (rand_vec(na * d, 1), rand_vec(nc * d, 2));
            let (ia, ic) = (rand_ids(b, na, 3), rand_ids(b, nc, 4));
            let mut want = vec![0.0f32; b * d];
            let mut got = vec![f32::NAN; b * d];
            gather_add_relu_naive(&a, &ia, &c, &ic, d, &mut want);
            gather_add_relu(&a, &ia, &c, &ic, d, &mut got);
            assert_eq!(got, want, "na={na} nc={nc} d={d} b={b}");
            assert!(want.contains(&0.0) && want.iter().any(|&x| x > 0.0), "both ReLU branches are exercised");
        }
    }

    #[test]
    fn scatter_add_matches_naive_bitwise_with_heavy_repeats_at_any_thread_count() {
        // Few rows, many ids: every row is hit many times, the case a racy kernel gets wrong.
        for &(n, d, b) in &[(3, 4, 10), (5, 8, 256), (9, 32, 128), (17, 32, 4096), (1000, 64, 8192)] {
            let dout = rand_vec(b * d, 3);
            let ids = rand_ids(b, n, 4);
            let mut want = rand_vec(n * d, 5);
            let start = want.clone();
            embedding_backward_naive(&dout, d, &ids, &mut want);
            for threads in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut got = start.clone();
                pool.install(|| embedding_backward(&dout, d, &ids, &mut got));
                assert_close_f32(
                    &format!("scatter n={n} d={d} b={b} threads={threads}"),
                    &got,
                    &want,
                    ncf_core::Tol { abs: 0.0, rel: 0.0 },
                );
            }
        }
    }

    /// The column gather and scatter against their naive twins, bit for bit: both halves of a
    /// `[P[u], Q[i]]` row (col0 0 and D), a row wider than the two (features' columns), repeated
    /// ids; the gather leaves the other columns alone; the gather on the dispatched level and on
    /// the portable build.
    #[test]
    fn column_gather_and_scatter_match_naive_bitwise() {
        for &(n, d, b, extra) in &[(7, 3, 5, 0), (100, 8, 128, 0), (100, 32, 128, 5), (9, 32, 200, 0)] {
            let cols = 2 * d + extra;
            let table = rand_vec(n * d, 1);
            let ids = rand_ids(b, n, 2);
            for col0 in [0, d] {
                let start = rand_vec(b * cols, 3);
                let (mut want, mut got) = (start.clone(), start.clone());
                embedding_forward_cols_naive(&table, d, &ids, &mut want, cols, col0);
                embedding_forward_cols(&table, d, &ids, &mut got, cols, col0);
                assert_eq!(got, want, "gather n={n} d={d} b={b} cols={cols} col0={col0}");
                // The portable build of the body, whatever level the dispatch took.
                let mut portable = start.clone();
                embedding_forward_cols_in(&table, d, &ids, &mut portable, cols, col0);
                assert_eq!(portable, want, "portable gather n={n} d={d} b={b} col0={col0}");
                let untouched = (0..b * cols).filter(|k| !(col0..col0 + d).contains(&(k % cols)));
                assert!(untouched.into_iter().all(|k| got[k] == start[k]), "other columns kept");
                let dout = rand_vec(b * cols, 4);
                let mut want = rand_vec(n * d, 5);
                let mut got = want.clone();
                embedding_backward_cols_naive(&dout, cols, col0, d, &ids, &mut want);
                embedding_backward_cols(&dout, cols, col0, d, &ids, &mut got);
                assert_close_f32(
                    &format!("scatter n={n} d={d} b={b} cols={cols} col0={col0}"),
                    &got,
                    &want,
                    ncf_core::Tol { abs: 0.0, rel: 0.0 },
                );
            }
        }
    }

    /// The compact scatter against its naive twin, bit for bit (the dispatched level and the
    /// portable build; every width `add_into` specialises, and one it does not), and against
    /// the table scatter: row `k` of the compact gradient is the
    /// table gradient's row `uniq[k]`.
    #[test]
    fn compact_scatter_matches_naive_and_the_table_scatter() {
        for &(n, d, b, cols, col0) in &[
            (7, 3, 20, 3, 0),
            (100, 8, 128, 8, 0),
            (100, 16, 128, 24, 8),
            (100, 32, 128, 64, 32),
            (9, 32, 200, 64, 0),
            (50, 64, 96, 128, 64),
        ] {
            let dout = rand_vec(b * cols, 4);
            let ids = rand_ids(b, n, 2);
            let mut uniq = ids.clone();
            uniq.sort_unstable();
            uniq.dedup();
            let mut slot = vec![u32::MAX; n];
            compact_slots(&uniq, &mut slot);
            let mut want = vec![0.0f32; uniq.len() * d];
            let mut got = want.clone();
            embedding_backward_compact_naive(&dout, cols, col0, d, &ids, &slot, &mut want);
            embedding_backward_compact(&dout, cols, col0, d, &ids, &slot, &mut got);
            let exact = ncf_core::Tol { abs: 0.0, rel: 0.0 };
            assert_close_f32(&format!("compact n={n} d={d} b={b} cols={cols}"), &got, &want, exact);
            let mut portable = vec![0.0f32; uniq.len() * d];
            embedding_backward_compact_in(&dout, cols, col0, d, &ids, &slot, &mut portable);
            assert_close_f32(&format!("portable compact n={n} d={d}"), &portable, &want, exact);
            let mut table = vec![0.0f32; n * d];
            embedding_backward_cols_naive(&dout, cols, col0, d, &ids, &mut table);
            let rows: Vec<f32> = uniq.iter().flat_map(|&r| table[r as usize * d..][..d].to_vec()).collect();
            assert_close_f32(&format!("compact vs table n={n} d={d}"), &got, &rows, exact);
        }
    }
}
