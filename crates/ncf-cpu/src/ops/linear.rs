//! The dense (fully connected) layer, forward and backward.
//!
//! `inp (B,I)  w (O,I)  bias (O)  out (B,O)`:   `out = inp · wᵀ + bias`
//!
//! Backward, given `dout = ∂L/∂out (B,O)`:
//! * `dinp = dout · w`        (B,O)·(O,I) → (B,I)   — written
//! * `dw  += doutᵀ · inp`     (O,B)·(B,I) → (O,I)   — accumulated
//! * `dbias += Σ_b dout[b,:]`                       — accumulated

use super::gemm::{CpuFloat, GemmImpl, MatMut, MatRef, gemm};
use ncf_core::{Float, Result};
use rayon::prelude::*;

/// Forward, reference: the definition, one dot product per output element.
pub fn linear_forward_naive<T: Float>(inp: &[T], w: &[T], bias: &[T], out: &mut [T], b: usize, i: usize, o: usize) {
    for r in 0..b {
        for c in 0..o {
            let mut s = bias[c];
            for k in 0..i {
                s += inp[r * i + k] * w[c * i + k];
            }
            out[r * o + c] = s;
        }
    }
}

/// Forward through a GEMM: broadcast the bias into `out`, then `out ← inp · wᵀ + out`.
pub fn linear_forward<T: CpuFloat>(
    imp: GemmImpl,
    inp: &[T],
    w: &[T],
    bias: &[T],
    out: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    let imp = imp.forward();
    if o == 1 && imp == GemmImpl::Scratch && i > 0 {
        matvec_bias(inp, &w[..i], bias[0], &mut out[..b], i);
        return Ok(());
    }
    if b * o >= super::activation::PAR_MIN_ELEMS && crate::team::rayon_ok() && o > 0 {
        out[..b * o].par_chunks_mut(super::PAR_ROWS * o).for_each(|rows| fill_rows(rows, &bias[..o]));
    } else {
        fill_rows(&mut out[..b * o], &bias[..o]);
    }
    // w is stored (O,I) row-major; wᵀ (I,O) is the same memory read with the strides swapped,
    // so no transpose is ever materialized.
    gemm(
        imp,
        T::ONE,
        MatRef::row_major(inp, b, i),
        MatRef::transposed_of_row_major(w, o, i),
        T::ONE,
        MatMut::row_major(out, b, o),
    )
}

/// A dense layer and its ReLU: `z = inp · wᵀ + bias`, `x = max(z, 0)`; `inp (B,I)`, `w (O,I)`,
/// `bias (O)`, `z, x (B,O)`. Where the scratch GEMM would run the product on its direct kernel
/// on this thread (f32 on AVX2 or AVX-512, a layer of the model's size), the bias and the ReLU
/// ride in that kernel's store of `z` ([`CpuFloat::direct_bias_relu`]); elsewhere
/// [`linear_forward`] then `relu_forward`. The same bits either way (tested).
#[allow(clippy::too_many_arguments)]
pub fn linear_relu_forward<T: CpuFloat>(
    imp: GemmImpl,
    inp: &[T],
    w: &[T],
    bias: &[T],
    z: &mut [T],
    x: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    if imp.forward() == GemmImpl::Scratch
        && o > 1
        && T::direct_bias_relu(
            crate::simd::SimdLevel::best(),
            MatRef::row_major(inp, b, i),
            MatRef::transposed_of_row_major(w, o, i),
            &bias[..o],
            MatMut::row_major(z, b, o),
            &mut x[..b * o],
        )
    {
        return Ok(());
    }
    linear_forward(imp, inp, w, bias, z, b, i, o)?;
    super::activation::relu_forward(&z[..b * o], &mut x[..b * o]);
    Ok(())
}

/// Every row of `out` (a whole number of rows) set to `row`: the first row copied in, then the
/// rows written so far doubled by one block copy at a time, so `log₂ B` copies for `B` rows.
/// (One short copy per row compiled to a `memcpy` call per row. In `perf record` of a
/// forced-AVX2 NeuMF-8 epoch, `memmove` fell from 1.4% to 1.0% of the samples with this.)
fn fill_rows<T: Copy>(out: &mut [T], row: &[T]) {
    if row.is_empty() || out.is_empty() {
        return;
    }
    out[..row.len()].copy_from_slice(row);
    let mut done = row.len();
    while done < out.len() {
        let n = done.min(out.len() - done);
        out.copy_within(..n, done);
        done += n;
    }
}

/// A single output column (the prediction layer, `o = 1`) is a matrix-vector product:
/// `out[r] = bias + inp[r,:]·w`. A GEMM micro-tile would fill one of its NR columns and waste
/// the rest, so this path takes one dot product per row instead, with 8 partial sums so the
/// compiler can vectorize it. Each row is computed by one thread: deterministic.
fn matvec_bias<T: CpuFloat>(inp: &[T], w: &[T], bias: T, out: &mut [T], i: usize) {
    use super::PAR_ROWS;
    let inp = &inp[..out.len() * i];
    debug_assert!(i > 0, "linear_forward takes the matvec only for inputs of at least one column");
    if out.len() * i >= super::activation::PAR_MIN_ELEMS && crate::team::rayon_ok() {
        inp.par_chunks(PAR_ROWS * i)
            .zip(out.par_chunks_mut(PAR_ROWS))
            .for_each(|(inp, out)| matvec_bias_rows(inp, w, bias, out, i));
    } else {
        matvec_bias_rows(inp, w, bias, out, i);
    }
}

/// [`matvec_bias`]'s rows on this thread, on the AVX2 build where the CPU has it (no fused
/// multiply-adds: the portable build's bits).
fn matvec_bias_rows<T: Float>(inp: &[T], w: &[T], bias: T, out: &mut [T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { matvec_bias_rows_avx2(inp, w, bias, out, i) };
    }
    matvec_bias_rows_in(inp, w, bias, out, i)
}

/// [`matvec_bias_rows`] built for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matvec_bias_rows_avx2<T: Float>(inp: &[T], w: &[T], bias: T, out: &mut [T], i: usize) {
    matvec_bias_rows_in(inp, w, bias, out, i)
}

/// The body of [`matvec_bias_rows`]: one dot product per row with 8 partial sums, chunks of 8
/// read into fixed-size arrays so they compile to whole vectors.
#[inline(always)]
fn matvec_bias_rows_in<T: Float>(inp: &[T], w: &[T], bias: T, out: &mut [T], i: usize) {
    let (wh, wt) = w[..i].split_at(i - i % 8);
    for (row, o) in inp.chunks_exact(i).zip(out.iter_mut()) {
        let mut acc = [T::ZERO; 8];
        let (head, tail) = row.split_at(i - i % 8);
        for (x8, w8) in head.chunks_exact(8).zip(wh.chunks_exact(8)) {
            let (x8, w8): (&[T; 8], &[T; 8]) = (x8.try_into().expect("8"), w8.try_into().expect("8"));
            for l in 0..8 {
                acc[l] += x8[l] * w8[l];
            }
        }
        let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (&x, &wk) in tail.iter().zip(wt) {
            s += x * wk;
        }
        *o = bias + s;
    }
}

/// The prediction layer over two inputs side by side, their concatenation never formed:
/// `out[r] = bias + [a[r,:], c[r,:]] · w`, for `a (B,Ia)`, `c (B,Ic)`, `w (Ia+Ic)`, `out (B)`.
/// NeuMF's head reads the GMF tower's `h` and the MLP tower's `x` where they lie, instead of
/// copying both into `cat` first. With both widths multiples of 8 ([`two_inputs_fit`]), `cat`'s
/// chunks of 8 are `a`'s then `c`'s, so these are [`matvec_bias`]'s 8 partial sums on `cat`, in
/// its order: the same bits (tested).
pub fn matvec_bias_two<T: Float>(a: &[T], ia: usize, c: &[T], ic: usize, w: &[T], bias: T, out: &mut [T]) {
    debug_assert!(two_inputs_fit(ia, ic));
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { matvec_bias_two_avx2(a, ia, c, ic, w, bias, out) };
    }
    matvec_bias_two_in(a, ia, c, ic, w, bias, out)
}

/// [`matvec_bias_two`] built for AVX2 (no fused multiply-adds: the portable build's bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matvec_bias_two_avx2<T: Float>(a: &[T], ia: usize, c: &[T], ic: usize, w: &[T], bias: T, out: &mut [T]) {
    use super::{as_f32, as_f32_mut};
    if let (Some(a), Some(c), Some(w), Some(out)) = (as_f32(a), as_f32(c), as_f32(w), as_f32_mut(out))
        && w.len() >= ia + ic
    {
        // SAFETY: AVX2 + FMA (this function's features); `w` holds `ia + ic` floats, checked
        // just above, and `ia`, `ic` are whole chunks of 8 (`two_inputs_fit`, the caller's).
        return unsafe { matvec_bias_two_f32(a, ia, c, ic, w, bias.to_f64() as f32, out) };
    }
    matvec_bias_two_in(a, ia, c, ic, w, bias, out)
}

/// [`matvec_bias_two_in`] for f32 with AVX2 intrinsics, the same operations in the same order:
/// per row, the 8 lane sums from zero over `a`'s chunks then `c`'s, then
/// `((s₀+s₄)+(s₁+s₅))+((s₂+s₆)+(s₃+s₇))` (one add of the two halves, two horizontal adds),
/// then `bias + s`. The compiled body kept the lanes in 128-bit halves with shuffles, and the
/// chained chunk iterators cost a few branches per row.
///
/// # Safety
/// AVX2; `ia` and `ic` multiples of 8 (`two_inputs_fit`); `w` at least `ia + ic` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_bias_two_f32(a: &[f32], ia: usize, c: &[f32], ic: usize, w: &[f32], bias: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // The rows the generic body's zip visits.
    let rows = out.len().min(a.len() / ia).min(c.len() / ic);
    for (r, o) in out[..rows].iter_mut().enumerate() {
        // SAFETY: row r of `a` (`ia` floats) and of `c` (`ic`) lie inside them (r < rows), the
        // chunks of `w` inside its first `ia + ic` floats; AVX2 by the contract.
        unsafe {
            let (ra, rc) = (a.as_ptr().add(r * ia), c.as_ptr().add(r * ic));
            let mut acc = _mm256_setzero_ps();
            for k in (0..ia).step_by(8) {
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(ra.add(k)), _mm256_loadu_ps(w.as_ptr().add(k))));
            }
            for k in (0..ic).step_by(8) {
                let wk = _mm256_loadu_ps(w.as_ptr().add(ia + k));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(rc.add(k)), wk));
            }
            let u = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let h = _mm_hadd_ps(u, u);
            *o = bias + _mm_cvtss_f32(_mm_hadd_ps(h, h));
        }
    }
}

/// The body of [`matvec_bias_two`], chunks of 8 read into fixed-size arrays so they compile
/// to whole vectors.
#[inline(always)]
fn matvec_bias_two_in<T: Float>(a: &[T], ia: usize, c: &[T], ic: usize, w: &[T], bias: T, out: &mut [T]) {
    let (wa, wc) = w[..ia + ic].split_at(ia);
    for ((ra, rc), o) in a.chunks_exact(ia).zip(c.chunks_exact(ic)).zip(out.iter_mut()) {
        let mut acc = [T::ZERO; 8];
        for (x8, w8) in ra.chunks_exact(8).zip(wa.chunks_exact(8)).chain(rc.chunks_exact(8).zip(wc.chunks_exact(8))) {
            let (x8, w8): (&[T; 8], &[T; 8]) = (x8.try_into().expect("8"), w8.try_into().expect("8"));
            for l in 0..8 {
                acc[l] += x8[l] * w8[l];
            }
        }
        let s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        *o = bias + s;
    }
}

/// Whether [`matvec_bias_two`] and [`matvec_backward_two`] take inputs `Ia` and `Ic` wide.
pub fn two_inputs_fit(ia: usize, ic: usize) -> bool {
    ia > 0 && ic > 0 && ia.is_multiple_of(8) && ic.is_multiple_of(8)
}

/// Backward of [`matvec_bias_two`], given `dout (B)`:
/// * `da = dout ⊗ w[..Ia]`, `dc = dout ⊗ w[Ia..]`  (B,Ia), (B,Ic) — written, no `dcat` to split;
/// * `dw += Σ_r dout[r]·[a[r,:], c[r,:]]`          (Ia+Ic) — each column summed from zero in
///   row order, then added (the order of [`linear_backward_naive`]);
/// * `dbias += Σ_r dout[r]`                        — in row order.
///
/// `da` and `dc` are [`linear_backward_naive`]'s `dinp` on `cat`, split, bit for bit (a sum of
/// one term from zero), and so the products' (tested).
#[allow(clippy::too_many_arguments)]
pub fn matvec_backward_two<T: Float>(
    dout: &[T],
    a: (&[T], usize),
    c: (&[T], usize),
    w: &[T],
    da: &mut [T],
    dc: &mut [T],
    dw: &mut [T],
    dbias: &mut T,
) {
    debug_assert!(two_inputs_fit(a.1, c.1));
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { matvec_backward_two_avx2(dout, a, c, w, da, dc, dw, dbias) };
    }
    matvec_backward_two_in(dout, a, c, w, da, dc, dw, dbias)
}

/// [`matvec_backward_two`] built for AVX2 (no fused multiply-adds: the portable build's bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn matvec_backward_two_avx2<T: Float>(
    dout: &[T],
    a: (&[T], usize),
    c: (&[T], usize),
    w: &[T],
    da: &mut [T],
    dc: &mut [T],
    dw: &mut [T],
    dbias: &mut T,
) {
    use super::{as_f32, as_f32_mut};
    if let (Some(dout32), Some(a32), Some(c32), Some(w32), Some(da32), Some(dc32), Some(dw32)) =
        (as_f32(dout), as_f32(a.0), as_f32(c.0), as_f32(w), as_f32_mut(da), as_f32_mut(dc), as_f32_mut(dw))
        && a.1 <= MAX_TWO_WIDTH
        && c.1 <= MAX_TWO_WIDTH
        && w32.len() >= a.1 + c.1
        && dw32.len() >= a.1 + c.1
    {
        let (wa, wc) = w32[..a.1 + c.1].split_at(a.1);
        let (dwa, dwc) = dw32[..a.1 + c.1].split_at_mut(a.1);
        for (inp, width, wv, dinp, dwv) in [(a32, a.1, wa, da32, dwa), (c32, c.1, wc, dc32, dwc)] {
            // SAFETY: AVX2 + FMA (this function's features); `width` is a multiple of 8
            // (`two_inputs_fit`, the caller's) of at most MAX_TWO_WIDTH, and `wv`, `dwv` are
            // `width` long.
            unsafe { matvec_backward_side_f32(dout32, inp, width, wv, dinp, dwv) };
        }
        column_sums_into(dout, std::slice::from_mut(dbias));
        return;
    }
    matvec_backward_two_in(dout, a, c, w, da, dc, dw, dbias)
}

/// Widest input [`matvec_backward_side_f32`] takes (its column sums live in registers).
const MAX_TWO_WIDTH: usize = 32;

/// One input of [`matvec_backward_two_in`] for f32 with AVX2 intrinsics, the same operations in
/// the same order: `dinp[r] = 0 + g·w` for each row, and each chunk of `dw` plus its column sum
/// over the rows, in row order from zero; the two in one pass over the rows (each element's
/// sum still runs over the rows in order), `C = width / 8` chunks held in registers.
///
/// # Safety
/// AVX2; `width` a multiple of 8, at most [`MAX_TWO_WIDTH`]; `w` and `dw` `width` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_backward_side_f32(
    dout: &[f32],
    inp: &[f32],
    width: usize,
    w: &[f32],
    dinp: &mut [f32],
    dw: &mut [f32],
) {
    // SAFETY: the caller's contract, with the chunk count as a constant.
    unsafe {
        match width / 8 {
            1 => backward_side_chunks::<1>(dout, inp, w, dinp, dw),
            2 => backward_side_chunks::<2>(dout, inp, w, dinp, dw),
            3 => backward_side_chunks::<3>(dout, inp, w, dinp, dw),
            4 => backward_side_chunks::<4>(dout, inp, w, dinp, dw),
            c => unreachable!("{c} chunks of 8 (at most MAX_TWO_WIDTH)"),
        }
    }
}

/// [`matvec_backward_side_f32`] for `C` chunks of 8.
///
/// # Safety
/// As [`matvec_backward_side_f32`], with `width = 8·C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_side_chunks<const C: usize>(dout: &[f32], inp: &[f32], w: &[f32], dinp: &mut [f32], dw: &mut [f32]) {
    use std::arch::x86_64::*;
    let width = 8 * C;
    // The rows each of the generic body's two zips visits.
    let (rows_d, rows_w) = (dout.len().min(dinp.len() / width), dout.len().min(inp.len() / width));
    let zero = _mm256_setzero_ps();
    // SAFETY: every pointer below is row r < rows_d of `dinp` or r < rows_w of `inp` (`width`
    // floats each), or chunk k < C of `w` and `dw` (`width` long); AVX2 by the contract.
    unsafe {
        let wv: [__m256; C] = std::array::from_fn(|k| _mm256_loadu_ps(w.as_ptr().add(8 * k)));
        for (r, &g) in dout[..rows_d].iter().enumerate() {
            let (gv, row) = (_mm256_set1_ps(g), dinp.as_mut_ptr().add(r * width));
            for (k, &wk) in wv.iter().enumerate() {
                _mm256_storeu_ps(row.add(8 * k), _mm256_add_ps(zero, _mm256_mul_ps(gv, wk)));
            }
        }
        let mut sums = [zero; C];
        for (r, &g) in dout[..rows_w].iter().enumerate() {
            let (gv, row) = (_mm256_set1_ps(g), inp.as_ptr().add(r * width));
            for (k, s) in sums.iter_mut().enumerate() {
                *s = _mm256_add_ps(*s, _mm256_mul_ps(gv, _mm256_loadu_ps(row.add(8 * k))));
            }
        }
        for (k, &s) in sums.iter().enumerate() {
            let d = dw.as_mut_ptr().add(8 * k);
            _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), s));
        }
    }
}

/// The body of [`matvec_backward_two`], in chunks of 8 as fixed-size arrays.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matvec_backward_two_in<T: Float>(
    dout: &[T],
    (a, ia): (&[T], usize),
    (c, ic): (&[T], usize),
    w: &[T],
    da: &mut [T],
    dc: &mut [T],
    dw: &mut [T],
    dbias: &mut T,
) {
    let (wa, wc) = w[..ia + ic].split_at(ia);
    let (dwa, dwc) = dw[..ia + ic].split_at_mut(ia);
    for (inp, width, wv, dinp, dwv) in [(a, ia, wa, da, dwa), (c, ic, wc, dc, dwc)] {
        for (&g, row) in dout.iter().zip(dinp.chunks_exact_mut(width)) {
            for (d8, w8) in row.chunks_exact_mut(8).zip(wv.chunks_exact(8)) {
                let w8: &[T; 8] = w8.try_into().expect("8");
                let mut o = [T::ZERO; 8];
                for l in 0..8 {
                    o[l] = T::ZERO + g * w8[l];
                }
                d8.copy_from_slice(&o);
            }
        }
        for (k0, dw8) in (0..width).step_by(8).zip(dwv.chunks_exact_mut(8)) {
            let mut s = [T::ZERO; 8];
            for (&g, row) in dout.iter().zip(inp.chunks_exact(width)) {
                let x8: &[T; 8] = row[k0..k0 + 8].try_into().expect("8");
                for l in 0..8 {
                    s[l] += g * x8[l];
                }
            }
            for l in 0..8 {
                dw8[l] += s[l];
            }
        }
    }
    column_sums_into(dout, std::slice::from_mut(dbias));
}

/// Backward, reference: the three sums written out.
pub fn linear_backward_naive<T: Float>(
    dout: &[T],
    inp: &[T],
    w: &[T],
    dinp: Option<&mut [T]>,
    dw: &mut [T],
    dbias: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) {
    if let Some(dinp) = dinp {
        for r in 0..b {
            for k in 0..i {
                let mut s = T::ZERO;
                for c in 0..o {
                    s += dout[r * o + c] * w[c * i + k];
                }
                dinp[r * i + k] = s;
            }
        }
    }
    for c in 0..o {
        for k in 0..i {
            let mut s = T::ZERO;
            for r in 0..b {
                s += dout[r * o + c] * inp[r * i + k];
            }
            dw[c * i + k] += s;
        }
        let mut s = T::ZERO;
        for r in 0..b {
            s += dout[r * o + c];
        }
        dbias[c] += s;
    }
}

/// Backward through two GEMMs and a column sum.
pub fn linear_backward<T: CpuFloat>(
    imp: GemmImpl,
    dout: &[T],
    inp: &[T],
    w: &[T],
    dinp: Option<&mut [T]>,
    dw: &mut [T],
    dbias: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    linear_backward_products(imp, dout, inp, w, dinp, dw, b, i, o)?;
    // dbias (O) += Σ_b dout[b,:]: rows in order, so the sum is deterministic.
    column_sums_into(&dout[..b * o], &mut dbias[..o]);
    Ok(())
}

/// The two products of [`linear_backward`]: `dinp = dout · w` (when asked) and `dw += doutᵀ · inp`.
#[allow(clippy::too_many_arguments)]
fn linear_backward_products<T: CpuFloat>(
    imp: GemmImpl,
    dout: &[T],
    inp: &[T],
    w: &[T],
    dinp: Option<&mut [T]>,
    dw: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    let imp = imp.backward();
    if let Some(dinp) = dinp {
        // dinp (B,I) = dout (B,O) · w (O,I), overwriting (β = 0).
        gemm(
            imp,
            T::ONE,
            MatRef::row_major(dout, b, o),
            MatRef::row_major(w, o, i),
            T::ZERO,
            MatMut::row_major(dinp, b, i),
        )?;
    }
    // dw (O,I) += doutᵀ (O,B) · inp (B,I): doutᵀ is dout read with swapped strides; β = 1 accumulates.
    gemm(
        imp,
        T::ONE,
        MatRef::transposed_of_row_major(dout, b, o),
        MatRef::row_major(inp, b, i),
        T::ONE,
        MatMut::row_major(dw, o, i),
    )
}

/// Backward of [`linear_relu_forward`]: `dz = dx · 1[x > 0]` and `dbias += Σ_b dz` in one pass
/// over the rows ([`relu_mask_and_column_sums`]), then the two products of
/// [`linear_backward`]. The same bits as `relu_backward` then [`linear_backward`] (tested).
#[allow(clippy::too_many_arguments)]
pub fn linear_relu_backward<T: CpuFloat>(
    imp: GemmImpl,
    x: &[T],
    dx: &[T],
    dz: &mut [T],
    inp: &[T],
    w: &[T],
    dinp: Option<&mut [T]>,
    dw: &mut [T],
    dbias: &mut [T],
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    if b * o >= super::activation::PAR_MIN_ELEMS && crate::team::rayon_ok() {
        // Large enough for the mask to run on the rayon pool: the two passes, same sums.
        super::activation::relu_backward(&x[..b * o], &dx[..b * o], &mut dz[..b * o]);
        column_sums_into(&dz[..b * o], &mut dbias[..o]);
    } else {
        relu_mask_and_column_sums(&x[..b * o], &dx[..b * o], &mut dz[..b * o], &mut dbias[..o]);
    }
    linear_backward_products(imp, dz, inp, w, dinp, dw, b, i, o)
}

/// `dz = dx · 1[x > 0]` row by row, each row added into `acc` as it is written: the sums of
/// [`column_sums_into`] over the `dz` that `relu_backward` writes, in the same order, without
/// reading `dz` back. `x, dx, dz (B, W)`, `acc (W)`. Compiled for AVX2 where the CPU has it
/// ([`relu_mask_and_column_sums_avx2`]).
fn relu_mask_and_column_sums<T: Float>(x: &[T], dx: &[T], dz: &mut [T], acc: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { relu_mask_and_column_sums_avx2(x, dx, dz, acc) };
    }
    relu_mask_and_column_sums_in(x, dx, dz, acc)
}

/// [`relu_mask_and_column_sums`] built for AVX2 + FMA: each row's mask and sums 8 lanes wide.
/// (Rust never fuses a multiply and an add on its own, and there are none here: the same
/// numbers as the portable build's.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn relu_mask_and_column_sums_avx2<T: Float>(x: &[T], dx: &[T], dz: &mut [T], acc: &mut [T]) {
    relu_mask_and_column_sums_in(x, dx, dz, acc)
}

/// The body of [`relu_mask_and_column_sums`]. Each row is read into fixed-size arrays before
/// the mask, so the select has both values at hand and compiles to a compare and a blend (a
/// branch on the sign of each element, unpredictable, was what a direct `if` on the slices
/// compiled to).
#[inline(always)]
fn relu_mask_and_column_sums_in<T: Float>(x: &[T], dx: &[T], dz: &mut [T], acc: &mut [T]) {
    #[inline(always)]
    fn fixed<T: Float, const W: usize>(x: &[T], dx: &[T], dz: &mut [T], acc: &mut [T]) {
        let mut sum: [T; W] = acc[..W].try_into().expect("acc has W elements");
        for ((xr, dr), zr) in x.chunks_exact(W).zip(dx.chunks_exact(W)).zip(dz.chunks_exact_mut(W)) {
            let xr: [T; W] = xr.try_into().expect("a row of W");
            let dr: [T; W] = dr.try_into().expect("a row of W");
            let mut g = [T::ZERO; W];
            for j in 0..W {
                g[j] = if xr[j] > T::ZERO { dr[j] } else { T::ZERO };
                sum[j] += g[j];
            }
            zr.copy_from_slice(&g);
        }
        acc[..W].copy_from_slice(&sum);
    }
    match acc.len() {
        0 => {}
        8 => fixed::<T, 8>(x, dx, dz, acc),
        16 => fixed::<T, 16>(x, dx, dz, acc),
        32 => fixed::<T, 32>(x, dx, dz, acc),
        64 => fixed::<T, 64>(x, dx, dz, acc),
        w => {
            super::activation::relu_backward(x, dx, dz);
            column_sums_into(dz, &mut acc[..w]);
        }
    }
}

/// `acc[j] += Σ_r rows[r, j]`, adding the rows in order (the naive loop's sums, bit for bit).
///
/// Written as `for row { acc += row }` over memory, every row would wait for the previous row's
/// stores to `acc`. For the model's widths the sums run in registers instead: a local array of
/// constant length, loaded from `acc` first and stored back once.
fn column_sums_into<T: Float>(rows: &[T], acc: &mut [T]) {
    #[inline(always)]
    fn fixed<T: Float, const W: usize>(rows: &[T], acc: &mut [T]) {
        let mut sum: [T; W] = acc[..W].try_into().expect("acc has W elements");
        for row in rows.chunks_exact(W) {
            for j in 0..W {
                sum[j] += row[j];
            }
        }
        acc[..W].copy_from_slice(&sum);
    }
    match acc.len() {
        0 => {}
        1 => fixed::<T, 1>(rows, acc),
        8 => fixed::<T, 8>(rows, acc),
        16 => fixed::<T, 16>(rows, acc),
        32 => fixed::<T, 32>(rows, acc),
        64 => fixed::<T, 64>(rows, acc),
        o => {
            for row in rows.chunks_exact(o) {
                for (a, &g) in acc.iter_mut().zip(row) {
                    *a += g;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;
    use ncf_core::Tol;
    use ncf_core::tol::assert_close_f32;

    /// The one-output layer (a head): against the naive layer within f32 rounding (8 partial
    /// sums instead of one), and against its portable body on one thread bit for bit, for
    /// scoring-sized batches (parallel blocks, the last one partial) and small ones, widths
    /// with and without a tail.
    #[test]
    fn matvec_bias_matches_naive_and_its_portable_body() {
        for &(b, i) in &[(1, 3), (7, 16), (5000, 16), (3000, 27), (2500, 8)] {
            let (inp, w) = (rand_vec(b * i, 1), rand_vec(i, 2));
            let (mut got, mut want) = (vec![f32::NAN; b], vec![0.0f32; b]);
            matvec_bias(&inp, &w, 0.25, &mut got, i);
            linear_forward_naive(&inp, &w, &[0.25], &mut want, b, i, 1);
            assert_close_f32(&format!("matvec b={b} i={i}"), &got, &want, Tol { abs: 1e-5, rel: 1e-5 });
            let mut portable = vec![f32::NAN; b];
            matvec_bias_rows_in(&inp, &w, 0.25, &mut portable, i);
            assert_close_f32(&format!("portable matvec b={b} i={i}"), &got, &portable, Tol { abs: 0.0, rel: 0.0 });
        }
    }

    /// The two-input head equals the concatenation through the plain kernels bit for bit:
    /// forward against `matvec_bias` on `cat`, backward against the naive backward on `cat`
    /// (then split), for widths of one to three chunks and odd batches, on the level the
    /// dispatch picks and on the portable build.
    #[test]
    fn two_input_head_matches_the_concatenated_head_bitwise() {
        for &(b, ia, ic) in &[(1, 8, 8), (5, 8, 8), (128, 8, 8), (300, 16, 8), (77, 8, 24)] {
            let (i, seed) = (ia + ic, (b * 31 + ia) as u64);
            let (a, c) = (rand_vec(b * ia, seed), rand_vec(b * ic, seed + 1));
            let (w, dout) = (rand_vec(i, seed + 2), rand_vec(b, seed + 3));
            let mut cat = vec![0.0f32; b * i];
            for r in 0..b {
                cat[r * i..r * i + ia].copy_from_slice(&a[r * ia..(r + 1) * ia]);
                cat[r * i + ia..(r + 1) * i].copy_from_slice(&c[r * ic..(r + 1) * ic]);
            }
            let (mut want, mut got) = (vec![0.0f32; b], vec![f32::NAN; b]);
            matvec_bias(&cat, &w, 0.25, &mut want, i);
            matvec_bias_two(&a, ia, &c, ic, &w, 0.25, &mut got);
            assert_close_f32(&format!("forward b={b} {ia}+{ic}"), &got, &want, Tol { abs: 0.0, rel: 0.0 });
            // The portable build of the body, whatever level the dispatch took.
            let mut portable = vec![f32::NAN; b];
            matvec_bias_two_in(&a, ia, &c, ic, &w, 0.25, &mut portable);
            assert_close_f32(&format!("portable forward b={b}"), &portable, &want, Tol { abs: 0.0, rel: 0.0 });

            let (mut dcat, mut dw_want, mut db_want) = (vec![0.0f32; b * i], rand_vec(i, seed + 4), vec![0.5f32]);
            let (mut dw_got, mut db_got, dw_start) = (dw_want.clone(), 0.5f32, dw_want.clone());
            linear_backward_naive(&dout, &cat, &w, Some(&mut dcat), &mut dw_want, &mut db_want, b, i, 1);
            let (mut da, mut dc) = (vec![f32::NAN; b * ia], vec![f32::NAN; b * ic]);
            matvec_backward_two(&dout, (&a, ia), (&c, ic), &w, &mut da, &mut dc, &mut dw_got, &mut db_got);
            let split: (Vec<f32>, Vec<f32>) = (
                (0..b).flat_map(|r| dcat[r * i..r * i + ia].to_vec()).collect(),
                (0..b).flat_map(|r| dcat[r * i + ia..(r + 1) * i].to_vec()).collect(),
            );
            let exact = Tol { abs: 0.0, rel: 0.0 };
            let (mut pa, mut pc, mut pw, mut pb) =
                (vec![f32::NAN; b * ia], vec![f32::NAN; b * ic], dw_start.clone(), 0.5f32);
            matvec_backward_two_in(&dout, (&a, ia), (&c, ic), &w, &mut pa, &mut pc, &mut pw, &mut pb);
            assert_close_f32(&format!("portable da b={b}"), &pa, &da, exact);
            assert_close_f32(&format!("portable dc b={b}"), &pc, &dc, exact);
            assert_close_f32(&format!("portable dw b={b}"), &pw, &dw_got, exact);
            assert_eq!(pb.to_bits(), db_got.to_bits(), "portable dbias b={b}");
            assert_close_f32(&format!("da b={b} {ia}+{ic}"), &da, &split.0, exact);
            assert_close_f32(&format!("dc b={b} {ia}+{ic}"), &dc, &split.1, exact);
            assert_close_f32(&format!("dw b={b} {ia}+{ic}"), &dw_got, &dw_want, exact);
            // The naive loop sums the bias gradient from zero; this one onto the running sum,
            // as `column_sums_into` (the path it replaces) does.
            let mut db_rows = 0.5f32;
            for &g in &dout {
                db_rows += g;
            }
            assert_eq!(db_got.to_bits(), db_rows.to_bits(), "dbias b={b}");
            assert!((db_got - db_want[0]).abs() <= 1e-5, "dbias {db_got} vs {}", db_want[0]);
        }
        assert!(!two_inputs_fit(8, 12) && !two_inputs_fit(0, 8) && two_inputs_fit(16, 8));
    }

    /// The doubling fill writes the row into every row, for any row count (powers of two and
    /// not, one row) and width, and nothing past the rows.
    #[test]
    fn fill_rows_sets_every_row() {
        for o in [1, 3, 8, 32] {
            for b in [1, 2, 3, 7, 64, 129] {
                let row: Vec<f32> = (0..o).map(|k| k as f32 + 0.25).collect();
                let mut out = vec![-1.0f32; b * o + 5];
                fill_rows(&mut out[..b * o], &row);
                for (r, got) in out[..b * o].chunks_exact(o).enumerate() {
                    assert_eq!(got, &row[..], "o {o}, b {b}: row {r}");
                }
                assert_eq!(&out[b * o..], &[-1.0; 5], "o {o}, b {b}: wrote past the rows");
            }
        }
    }

    /// The register-held column sums add the rows in the naive loop's order: same bits.
    #[test]
    fn column_sums_match_the_row_loop_bit_for_bit() {
        for o in [1, 3, 8, 16, 32, 64, 65] {
            let rows = rand_vec(129 * o, 7);
            let start = rand_vec(o, 8);
            let mut want = start.clone();
            for row in rows.chunks_exact(o) {
                for (a, &g) in want.iter_mut().zip(row) {
                    *a += g;
                }
            }
            let mut got = start.clone();
            column_sums_into(&rows, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "o = {o}: got {got:?}, want {want:?}");
        }
    }

    /// The fused layer against `linear_forward` then `relu_forward`, bit for bit, for every
    /// GEMM choice and the model's layer shapes (the fused store runs for the scratch ones on a
    /// CPU with AVX2 or AVX-512, the plain ops elsewhere), in f32 and f64.
    #[test]
    fn fused_linear_relu_equals_the_two_ops() {
        fn check<T: CpuFloat>(imp: GemmImpl, b: usize, i: usize, o: usize) {
            let f = |v: Vec<f32>| v.into_iter().map(|x| T::from_f64(f64::from(x))).collect::<Vec<T>>();
            let (inp, w, bias) = (f(rand_vec(b * i, 1)), f(rand_vec(o * i, 2)), f(rand_vec(o, 3)));
            let (mut z0, mut x0) = (vec![T::ZERO; b * o], vec![T::ZERO; b * o]);
            linear_forward(imp, &inp, &w, &bias, &mut z0, b, i, o).unwrap();
            crate::ops::activation::relu_forward(&z0, &mut x0);
            let (mut z1, mut x1) = (vec![T::ONE; b * o], vec![T::ONE; b * o]);
            linear_relu_forward(imp, &inp, &w, &bias, &mut z1, &mut x1, b, i, o).unwrap();
            let same = |p: &[T], q: &[T]| p.iter().zip(q).all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits());
            assert!(
                same(&z1, &z0) && same(&x1, &x0),
                "{imp} {} b {b} i {i} o {o}: z {:?} vs {:?}",
                T::NAME,
                &z1[..4.min(b * o)],
                &z0[..4.min(b * o)]
            );
        }
        for imp in [GemmImpl::Naive, GemmImpl::Scratch, GemmImpl::Library, GemmImpl::Auto] {
            for (b, i, o) in [(128, 64, 32), (256, 32, 16), (128, 16, 8), (3, 16, 1), (7, 10, 5)] {
                check::<f32>(imp, b, i, o);
                check::<f64>(imp, b, i, o);
            }
        }
    }

    /// The fused backward (mask and bias sums in one pass) against `relu_backward` then
    /// `linear_backward`: the same bits in `dz`, `dinp`, `dw` and `dbias`, for the widths with
    /// a register path and one without, in f32 and f64, with exact zeros in the layer's output.
    #[test]
    fn fused_linear_relu_backward_equals_the_two_ops() {
        fn check<T: CpuFloat>(b: usize, i: usize, o: usize) {
            let f = |v: Vec<f32>| v.into_iter().map(|x| T::from_f64(f64::from(x))).collect::<Vec<T>>();
            let mut x = f(rand_vec(b * o, 1));
            x.iter_mut().step_by(3).for_each(|v| *v = T::ZERO);
            let (dx, inp, w) = (f(rand_vec(b * o, 2)), f(rand_vec(b * i, 3)), f(rand_vec(o * i, 4)));
            let (dw0, db0) = (f(rand_vec(o * i, 5)), f(rand_vec(o, 6)));
            let mut dz0 = vec![T::ZERO; b * o];
            let (mut dinp0, mut dw0m, mut db0m) = (vec![T::ZERO; b * i], dw0.clone(), db0.clone());
            crate::ops::activation::relu_backward(&x, &dx, &mut dz0);
            linear_backward(GemmImpl::Scratch, &dz0, &inp, &w, Some(&mut dinp0), &mut dw0m, &mut db0m, b, i, o)
                .unwrap();
            let mut dz1 = vec![T::ONE; b * o];
            let (mut dinp1, mut dw1, mut db1) = (vec![T::ONE; b * i], dw0.clone(), db0.clone());
            linear_relu_backward(
                GemmImpl::Scratch,
                &x,
                &dx,
                &mut dz1,
                &inp,
                &w,
                Some(&mut dinp1),
                &mut dw1,
                &mut db1,
                b,
                i,
                o,
            )
            .unwrap();
            let bits = |p: &[T]| p.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
            for (name, got, want) in
                [("dz", &dz1, &dz0), ("dinp", &dinp1, &dinp0), ("dw", &dw1, &dw0m), ("dbias", &db1, &db0m)]
            {
                assert_eq!(bits(got), bits(want), "{name}, {} b {b} i {i} o {o}", T::NAME);
            }
        }
        for (b, i, o) in [(128, 64, 32), (128, 32, 16), (128, 16, 8), (5, 8, 64), (9, 7, 5)] {
            check::<f32>(b, i, o);
            check::<f64>(b, i, o);
        }
    }

    #[test]
    fn every_gemm_impl_matches_the_naive_layer() {
        // The model's real shapes, plus odd ones.
        for &(b, i, o) in &[
            (256, 64, 32),
            (256, 32, 16),
            (256, 16, 8),
            (256, 16, 1),
            (25_600, 16, 1),
            (9, 21, 1),
            (7, 5, 3),
            (1, 1, 1),
        ] {
            let inp = rand_vec(b * i, 1);
            let w = rand_vec(o * i, 2);
            let bias = rand_vec(o, 3);
            let dout = rand_vec(b * o, 4);
            let mut want = vec![0.0; b * o];
            linear_forward_naive(&inp, &w, &bias, &mut want, b, i, o);
            let (mut dinp_w, mut dw_w, mut db_w) = (vec![0.0; b * i], rand_vec(o * i, 5), rand_vec(o, 6));
            let (dw0, db0) = (dw_w.clone(), db_w.clone());
            linear_backward_naive(&dout, &inp, &w, Some(&mut dinp_w), &mut dw_w, &mut db_w, b, i, o);
            for imp in [GemmImpl::Naive, GemmImpl::Scratch, GemmImpl::Library, GemmImpl::Auto] {
                let mut got = vec![f32::NAN; b * o];
                linear_forward(imp, &inp, &w, &bias, &mut got, b, i, o).unwrap();
                let tag = format!("{imp:?} b={b} i={i} o={o}");
                assert_close_f32(&format!("out {tag}"), &got, &want, Tol::F32_KERNEL);
                let (mut dinp, mut dw, mut db) = (vec![f32::NAN; b * i], dw0.clone(), db0.clone());
                linear_backward(imp, &dout, &inp, &w, Some(&mut dinp), &mut dw, &mut db, b, i, o).unwrap();
                assert_close_f32(&format!("dinp {tag}"), &dinp, &dinp_w, Tol::F32_KERNEL);
                assert_close_f32(&format!("dw {tag}"), &dw, &dw_w, Tol::F32_KERNEL);
                assert_close_f32(&format!("dbias {tag}"), &db, &db_w, Tol::F32_KERNEL);
            }
        }
    }
}
