//! Optimizer steps: SGD with momentum and Adam, dense and row-sparse ("lazy").
//!
//! Every step consumes the gradient and zeroes it, ready for the next backward pass.
//! The rules follow PyTorch exactly (see [`ncf_core::SgdHp`], [`ncf_core::AdamHp`]), which the
//! tests check against PyTorch-computed values.

use ncf_core::{AdamHp, Float, SgdHp};
use rayon::prelude::*;

/// Chunk of elements one rayon task updates; below this the step runs on one thread.
const PAR_CHUNK: usize = 1 << 14;

/// SGD with momentum, reference (f64 math, element by element):
/// `g ← g + λ·w;  mom ← μ·mom + g;  w ← (1 − lr·λ_d)·w − lr·mom;  g ← 0`.
pub fn sgd_step_naive<T: Float>(p: &mut [T], g: &mut [T], mom: &mut [T], hp: &SgdHp) {
    for k in 0..p.len() {
        let w = p[k].to_f64();
        let grad = g[k].to_f64() + hp.decay.l2() * w;
        let m = hp.momentum * mom[k].to_f64() + grad;
        mom[k] = T::from_f64(m);
        p[k] = T::from_f64(w * (1.0 - hp.lr * hp.decay.decoupled()) - hp.lr * m);
        g[k] = T::ZERO;
    }
}

/// SGD with momentum over one contiguous run of elements, in `T`.
fn sgd_run<T: Float>(p: &mut [T], g: &mut [T], mom: &mut [T], hp: &SgdHp) {
    let (lr, mu, l2) = (T::from_f64(hp.lr), T::from_f64(hp.momentum), T::from_f64(hp.decay.l2()));
    let shrink = T::from_f64(1.0 - hp.lr * hp.decay.decoupled());
    for ((w, gr), m) in p.iter_mut().zip(g.iter_mut()).zip(mom.iter_mut()) {
        let grad = *gr + l2 * *w;
        *m = mu * *m + grad;
        *w = *w * shrink - lr * *m;
        *gr = T::ZERO;
    }
}

/// Dense SGD step, parallel over chunks for large tensors.
pub fn sgd_step<T: Float>(p: &mut [T], g: &mut [T], mom: &mut [T], hp: &SgdHp) {
    if p.len() <= PAR_CHUNK || !crate::team::rayon_ok() {
        return sgd_run(p, g, mom, hp);
    }
    p.par_chunks_mut(PAR_CHUNK)
        .zip(g.par_chunks_mut(PAR_CHUNK))
        .zip(mom.par_chunks_mut(PAR_CHUNK))
        .for_each(|((p, g), m)| sgd_run(p, g, m, hp));
}

/// Adam's per-step scalars, computed once per step in f64 (PyTorch's formulation):
/// `step = lr / (1 − β₁ᵗ)`, `denom = √v / √(1 − β₂ᵗ) + ε`.
struct AdamScalars<T> {
    b1: T,
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    step: T,
    inv_sqrt_bc2: T,
    eps: T,
    l2: T,
    shrink: T,
}

impl<T: Float> AdamScalars<T> {
    /// Whether either decay applies (`l2 ≠ 0` or `shrink ≠ 1`); see [`adam_one`].
    fn decays(&self) -> bool {
        self.l2 != T::ZERO || self.shrink != T::ONE
    }

    fn new(hp: &AdamHp, t: u64) -> Self {
        let (bc1, bc2) = bias_corrections(hp, t);
        AdamScalars {
            b1: T::from_f64(hp.beta1),
            one_minus_b1: T::from_f64(1.0 - hp.beta1),
            b2: T::from_f64(hp.beta2),
            one_minus_b2: T::from_f64(1.0 - hp.beta2),
            step: T::from_f64(hp.lr / bc1),
            inv_sqrt_bc2: T::from_f64(1.0 / bc2.sqrt()),
            eps: T::from_f64(hp.eps),
            l2: T::from_f64(hp.decay.l2()),
            shrink: T::from_f64(1.0 - hp.lr * hp.decay.decoupled()),
        }
    }
}

/// Adam's bias corrections `(1 − β₁ᵗ, 1 − β₂ᵗ)` at step `t` (at least 1). A step updates a
/// dozen tensors with the same `β`s and `t`, and `powi` at `t` in the tens of thousands takes
/// about 45 ns (a product per bit of `t`), which was most of the cost of updating a bias
/// vector; so the last pair is kept per thread and reused when the key matches (the same
/// values, bit for bit).
fn bias_corrections(hp: &AdamHp, t: u64) -> (f64, f64) {
    /// `(β₁ bits, β₂ bits, t)` and the corrections computed for it.
    type Kept = Option<((u64, u64, u64), (f64, f64))>;
    thread_local! {
        static LAST: std::cell::Cell<Kept> = const { std::cell::Cell::new(None) };
    }
    let t = t.max(1);
    let key = (hp.beta1.to_bits(), hp.beta2.to_bits(), t);
    LAST.with(|last| match last.get() {
        Some((k, bc)) if k == key => bc,
        _ => {
            let ti = t as i32;
            let bc = (1.0 - hp.beta1.powi(ti), 1.0 - hp.beta2.powi(ti));
            last.set(Some((key, bc)));
            bc
        }
    })
}

/// Adam, reference (f64 math, element by element, the formula as written in the paper):
/// `m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  w ← w − lr·m̂/(√v̂ + ε)` with
/// `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`; then `g ← 0`.
pub fn adam_step_naive<T: Float>(p: &mut [T], g: &mut [T], m: &mut [T], v: &mut [T], hp: &AdamHp, t: u64) {
    let t = t.max(1) as i32;
    for k in 0..p.len() {
        let w = p[k].to_f64() * (1.0 - hp.lr * hp.decay.decoupled());
        let grad = g[k].to_f64() + hp.decay.l2() * p[k].to_f64();
        let mk = hp.beta1 * m[k].to_f64() + (1.0 - hp.beta1) * grad;
        let vk = hp.beta2 * v[k].to_f64() + (1.0 - hp.beta2) * grad * grad;
        let m_hat = mk / (1.0 - hp.beta1.powi(t));
        let v_hat = vk / (1.0 - hp.beta2.powi(t));
        m[k] = T::from_f64(mk);
        v[k] = T::from_f64(vk);
        p[k] = T::from_f64(w - hp.lr * m_hat / (v_hat.sqrt() + hp.eps));
        g[k] = T::ZERO;
    }
}

/// Adam over one contiguous run of elements, in `T`, with the scalars hoisted.
/// `#[inline(always)]` so that the AVX2 build below gets its own copy, 8 lanes wide.
#[inline(always)]
fn adam_run<T: Float>(p: &mut [T], g: &mut [T], m: &mut [T], v: &mut [T], s: &AdamScalars<T>) {
    for (((w, gr), mk), vk) in p.iter_mut().zip(g.iter_mut()).zip(m.iter_mut()).zip(v.iter_mut()) {
        adam_one(w, gr, mk, vk, s);
    }
}

/// Adam on one element, in `T` (with [`adam_run`]'s hoisted scalars), then `g = 0`. Without
/// weight decay (`l2 = 0`, `shrink = 1`) the gradient is `g` itself and the weight is not
/// multiplied by 1: the same weights and moments for every finite weight (`g + 0·w` can
/// differ from `g` only in the sign of a zero, which no weight ever shows), one multiply and
/// one add fewer on the path the division waits for; the AVX2 kernels make the same choice.
#[inline(always)]
fn adam_one<T: Float>(w: &mut T, gr: &mut T, mk: &mut T, vk: &mut T, s: &AdamScalars<T>) {
    let grad = if s.decays() { *gr + s.l2 * *w } else { *gr };
    *mk = s.b1 * *mk + s.one_minus_b1 * grad;
    *vk = s.b2 * *vk + s.one_minus_b2 * grad * grad;
    let denom = vk.sqrt() * s.inv_sqrt_bc2 + s.eps;
    let kept = if s.decays() { *w * s.shrink } else { *w };
    *w = kept - s.step * *mk / denom;
    *gr = T::ZERO;
}

/// Dense Adam step at step `t ≥ 1`, parallel over chunks for large tensors.
pub fn adam_step<T: Float>(p: &mut [T], g: &mut [T], m: &mut [T], v: &mut [T], hp: &AdamHp, t: u64) {
    let s = AdamScalars::new(hp, t);
    if p.len() <= PAR_CHUNK || !crate::team::rayon_ok() {
        return adam_rows_best(p, g, m, v, None, p.len(), &s);
    }
    p.par_chunks_mut(PAR_CHUNK)
        .zip(g.par_chunks_mut(PAR_CHUNK))
        .zip(m.par_chunks_mut(PAR_CHUNK).zip(v.par_chunks_mut(PAR_CHUNK)))
        .for_each(|((p, g), (m, v))| adam_rows_best(p, g, m, v, None, p.len(), &s));
}

/// Where [`adam_rows`] finds each row: the `rows` of width `d` of an `(N,D)` table whose first
/// row is `base`, the gradient either in the same row of `g` (`compact: false`) or in row `i`
/// of a compact `g (len(rows), D)` for the `i`-th listed row; `None`: all of the slices as one
/// run.
type Rows<'a> = Option<(&'a [u32], usize, bool)>;

/// How many rows ahead the lazy Adam kernels prefetch a row's weights and moments: twice the
/// scatter's distance, since an update spends longer on a row than an add does. (Alternating
/// forced-AVX2 runs on the Zen 4 VM, calm epochs: the optimizer halves were busy 0.278–0.314 s
/// per epoch at 8 rows and 0.290–0.320 s at 4, BENCHMARKS.md: a small gain, inside the spread.)
const ADAM_PREFETCH_ROWS: usize = 8;

/// Prefetches the row [`ADAM_PREFETCH_ROWS`] after the `i`-th listed one (see [`Rows`]), if
/// any: its weights for writing, its moments, and its gradient unless that is compact.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn prefetch_ahead<T>(p: &[T], g: &[T], m: &[T], v: &[T], rows: &[u32], i: usize, base: usize, d: usize, compact: bool) {
    if let Some(&next) = rows.get(i + ADAM_PREFETCH_ROWS) {
        let start = (next as usize).wrapping_sub(base).wrapping_mul(d);
        super::prefetch_write(p, start, d);
        super::prefetch(m, start, d);
        super::prefetch(v, start, d);
        if !compact {
            super::prefetch(g, start, d);
        }
    }
}

/// Adam on the rows `rows` names (see [`Rows`]).
#[inline(always)]
fn adam_rows<T: Float>(
    p: &mut [T],
    g: &mut [T],
    m: &mut [T],
    v: &mut [T],
    rows: Rows<'_>,
    d: usize,
    s: &AdamScalars<T>,
) {
    // A table's rows were last read by the other core's lane (its gather), so they are
    // prefetched for writing (see `prefetch_write`); the gradient and moments stay with the
    // core that updates this side of the step, which a plain prefetch suits.
    match rows {
        None => adam_run(p, g, m, v, s),
        Some((rows, base, compact)) => {
            for (i, &r) in rows.iter().enumerate() {
                prefetch_ahead(p, g, m, v, rows, i, base, d, compact);
                let k = (r as usize - base) * d..(r as usize - base + 1) * d;
                let kg = if compact { i * d..(i + 1) * d } else { k.clone() };
                adam_run(&mut p[k.clone()], &mut g[kg], &mut m[k.clone()], &mut v[k], s);
            }
        }
    }
}

/// [`adam_rows`] compiled for AVX2 + FMA: the square root and the division, which dominate,
/// run 8 lanes wide instead of SSE2's 4. (Rust never fuses a multiply and an add on its own,
/// so the numbers are the same as the portable build's.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn adam_rows_avx2<T: Float>(
    p: &mut [T],
    g: &mut [T],
    m: &mut [T],
    v: &mut [T],
    rows: Rows<'_>,
    d: usize,
    s: &AdamScalars<T>,
) {
    adam_rows(p, g, m, v, rows, d, s)
}

/// [`adam_rows`] on the best instruction set this CPU has: listed f32 rows whose width is a
/// multiple of 8 on [`adam_rows_f32_avx2`], the rest on [`adam_rows_avx2`] (the same
/// arithmetic, so the same bits).
fn adam_rows_best<T: Float>(
    p: &mut [T],
    g: &mut [T],
    m: &mut [T],
    v: &mut [T],
    rows: Rows<'_>,
    d: usize,
    s: &AdamScalars<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        if let Some((list, base, compact)) = rows
            && d > 0
            && d.is_multiple_of(8)
            && let (Some(p), Some(g), Some(m), Some(v), Some(s)) =
                (super::as_f32_mut(p), super::as_f32_mut(g), super::as_f32_mut(m), super::as_f32_mut(v), scalars_f32(s))
            && rows_fit(list, base, compact, d, [p.len(), g.len(), m.len(), v.len()])
        {
            // SAFETY: the CPU has AVX2 and FMA (checked above), `d` is a multiple of 8, and
            // every listed row lies inside all four slices (`rows_fit`).
            return unsafe {
                if s.decays() {
                    adam_rows_f32_avx2::<true>(p, g, m, v, list, base, compact, d, s)
                } else {
                    adam_rows_f32_avx2::<false>(p, g, m, v, list, base, compact, d, s)
                }
            };
        }
        if rows.is_none()
            && let (Some(p), Some(g), Some(m), Some(v), Some(s)) =
                (super::as_f32_mut(p), super::as_f32_mut(g), super::as_f32_mut(m), super::as_f32_mut(v), scalars_f32(s))
        {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe {
                if s.decays() {
                    adam_dense_f32_avx2::<true>(p, g, m, v, s)
                } else {
                    adam_dense_f32_avx2::<false>(p, g, m, v, s)
                }
            };
        }
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { adam_rows_avx2(p, g, m, v, rows, d, s) };
    }
    adam_rows(p, g, m, v, rows, d, s)
}

/// `s` as f32 scalars when `T` is `f32`.
fn scalars_f32<T: Float>(s: &AdamScalars<T>) -> Option<&AdamScalars<f32>> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32`, so `AdamScalars<T>` is `AdamScalars<f32>`.
        .then(|| unsafe { &*(s as *const AdamScalars<T>).cast::<AdamScalars<f32>>() })
}

/// Whether every listed row (at `base` and above, `d` wide) lies inside the weights and moments
/// (`lens[0]`, `lens[2]`, `lens[3]`) and its gradient (`lens[1]`: row `i` of a compact gradient
/// for the `i`-th listed row, else the row itself) inside the gradient.
fn rows_fit(rows: &[u32], base: usize, compact: bool, d: usize, lens: [usize; 4]) -> bool {
    if rows.is_empty() {
        return true;
    }
    // One pass for both ends (it vectorizes): this runs once per table and step.
    let (lo, hi) = rows.iter().fold((u32::MAX, 0u32), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let end = (hi as usize).checked_sub(base).and_then(|r| r.checked_add(1)).and_then(|r| r.checked_mul(d));
    let g_end = if compact { rows.len().checked_mul(d) } else { end };
    (lo as usize) >= base
        && end.is_some_and(|e| e <= lens[0] && e <= lens[2] && e <= lens[3])
        && g_end.is_some_and(|e| e <= lens[1])
}

/// Adam's scalars broadcast to 8 lanes, for the AVX2 kernels below.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Adam8 {
    l2: std::arch::x86_64::__m256,
    b1: std::arch::x86_64::__m256,
    omb1: std::arch::x86_64::__m256,
    b2: std::arch::x86_64::__m256,
    omb2: std::arch::x86_64::__m256,
    step: std::arch::x86_64::__m256,
    isbc2: std::arch::x86_64::__m256,
    eps: std::arch::x86_64::__m256,
    shrink: std::arch::x86_64::__m256,
}

#[cfg(target_arch = "x86_64")]
impl Adam8 {
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn new(s: &AdamScalars<f32>) -> Self {
        use std::arch::x86_64::_mm256_set1_ps as set;
        Adam8 {
            l2: set(s.l2),
            b1: set(s.b1),
            omb1: set(s.one_minus_b1),
            b2: set(s.b2),
            omb2: set(s.one_minus_b2),
            step: set(s.step),
            isbc2: set(s.inv_sqrt_bc2),
            eps: set(s.eps),
            shrink: set(s.shrink),
        }
    }

    /// The rule on the 8 elements at `p, g, m, v` (then `g = 0`), with [`adam_one`]'s
    /// operations in its order (no FMA), so the same bits; `DECAY` is [`AdamScalars`]'s
    /// `decays()`, whose terms [`adam_one`] leaves out the same way when it is false.
    ///
    /// # Safety
    /// AVX2; each pointer valid for 8 reads and writes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const DECAY: bool>(&self, p: *mut f32, g: *mut f32, m: *mut f32, v: *mut f32) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract: 8 floats at each pointer.
        unsafe {
            let w = _mm256_loadu_ps(p);
            let grad =
                if DECAY { _mm256_add_ps(_mm256_loadu_ps(g), _mm256_mul_ps(self.l2, w)) } else { _mm256_loadu_ps(g) };
            let mk = _mm256_add_ps(_mm256_mul_ps(self.b1, _mm256_loadu_ps(m)), _mm256_mul_ps(self.omb1, grad));
            let vk = _mm256_add_ps(
                _mm256_mul_ps(self.b2, _mm256_loadu_ps(v)),
                _mm256_mul_ps(_mm256_mul_ps(self.omb2, grad), grad),
            );
            let denom = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vk), self.isbc2), self.eps);
            let kept = if DECAY { _mm256_mul_ps(w, self.shrink) } else { w };
            let w = _mm256_sub_ps(kept, _mm256_div_ps(_mm256_mul_ps(self.step, mk), denom));
            _mm256_storeu_ps(m, mk);
            _mm256_storeu_ps(v, vk);
            _mm256_storeu_ps(p, w);
            _mm256_storeu_ps(g, _mm256_setzero_ps());
        }
    }
}

/// [`adam_rows`] for listed f32 rows `d` wide (a multiple of 8), written with AVX2 intrinsics:
/// per row, one address computation and the prefetches, then `d/8` vectors through
/// [`Adam8::run`], with the decay terms or without them (`DECAY`: [`AdamScalars::decays`]).
/// The compiled generic loop spent about as long on a GMF-8 row (one vector) as on a quarter
/// of an MLP row of 32, the loop's bookkeeping around the one vector.
///
/// # Safety
/// AVX2 and FMA; `d` a multiple of 8; [`rows_fit`] holds for the slices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn adam_rows_f32_avx2<const DECAY: bool>(
    p: &mut [f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    rows: &[u32],
    base: usize,
    compact: bool,
    d: usize,
    s: &AdamScalars<f32>,
) {
    // SAFETY: the caller's contract includes AVX2.
    let k = unsafe { Adam8::new(s) };
    let write = super::has_prefetchw();
    for (i, &r) in rows.iter().enumerate() {
        // The row `ADAM_PREFETCH_ROWS` ahead, as `prefetch_ahead` asks for it, from raw
        // pointers: every listed row lies inside the slices (`rows_fit`), so nothing is
        // checked per row (the checked helpers made this loop about a fifth slower).
        if let Some(&next) = rows.get(i + ADAM_PREFETCH_ROWS) {
            let at = (next as usize - base) * d;
            let (pp, pm, pv) = (p.as_ptr().wrapping_add(at), m.as_ptr().wrapping_add(at), v.as_ptr().wrapping_add(at));
            let pg = g.as_ptr().wrapping_add(at);
            let mut j = 0;
            while j < d {
                // SAFETY: prefetches (see `prefetch_line`); `write` from `has_prefetchw`.
                unsafe {
                    super::prefetch_line(pp.wrapping_add(j).cast(), write);
                    super::prefetch_line(pm.wrapping_add(j).cast(), false);
                    super::prefetch_line(pv.wrapping_add(j).cast(), false);
                    if !compact {
                        super::prefetch_line(pg.wrapping_add(j).cast(), false);
                    }
                }
                j += 16;
            }
        }
        let at = (r as usize - base) * d;
        let at_g = if compact { i * d } else { at };
        // SAFETY: rows [at, at + d) of p, m, v and [at_g, at_g + d) of g are inside the slices
        // (`rows_fit`, the caller's contract), and j + 8 ≤ d; AVX2 by the same contract.
        unsafe {
            let (pr, mr, vr, gr) =
                (p.as_mut_ptr().add(at), m.as_mut_ptr().add(at), v.as_mut_ptr().add(at), g.as_mut_ptr().add(at_g));
            for j in (0..d).step_by(8) {
                k.run::<DECAY>(pr.add(j), gr.add(j), mr.add(j), vr.add(j));
            }
        }
    }
}

/// How far ahead (in elements: 8 lines of f32) [`adam_dense_f32_avx2`] fetches its weights and
/// gradient for writing.
#[cfg(target_arch = "x86_64")]
const DENSE_PREFETCH: usize = 128;

/// [`adam_run`] for f32 with AVX2 intrinsics (`DECAY` as in [`adam_rows_f32_avx2`]): whole
/// vectors through [`Adam8::run`], the last
/// `n mod 8` elements through [`adam_one`] (the same operations, so the same bits). The dense
/// layers' biases (8 to 32 elements) fell to the compiled loop's scalar remainder.
///
/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adam_dense_f32_avx2<const DECAY: bool>(
    p: &mut [f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamScalars<f32>,
) {
    let n = p.len().min(g.len()).min(m.len()).min(v.len());
    let whole = n - n % 8;
    // SAFETY: AVX2 by the caller's contract.
    let k = unsafe { Adam8::new(s) };
    // The weights were read by both lanes and the gradient written by one, maybe on the
    // other core: their lines are fetched for writing a few lines ahead (PREFETCHW), so the
    // stores do not each wait for the other core to give its copy up.
    super::prefetch_write(p, 0, DENSE_PREFETCH.min(n));
    super::prefetch_write(g, 0, DENSE_PREFETCH.min(n));
    let write = super::has_prefetchw();
    for j in (0..whole).step_by(8) {
        if j % 16 == 0 && j + DENSE_PREFETCH + 16 <= n {
            // SAFETY: prefetches of lines inside `p` and `g` (j + DENSE_PREFETCH + 16 ≤ n);
            // `write` from `has_prefetchw`.
            unsafe {
                super::prefetch_line(p.as_ptr().add(j + DENSE_PREFETCH).cast(), write);
                super::prefetch_line(g.as_ptr().add(j + DENSE_PREFETCH).cast(), write);
            }
        }
        // SAFETY: j + 8 ≤ whole ≤ the length of every slice.
        unsafe {
            k.run::<DECAY>(p.as_mut_ptr().add(j), g.as_mut_ptr().add(j), m.as_mut_ptr().add(j), v.as_mut_ptr().add(j))
        };
    }
    for j in whole..n {
        adam_one(&mut p[j], &mut g[j], &mut m[j], &mut v[j], s);
    }
}

/// Row-sparse SGD on an `(N,D)` table: the dense rule on each listed row only.
pub fn sgd_step_rows<T: Float>(p: &mut [T], g: &mut [T], mom: &mut [T], rows: &[u32], d: usize, hp: &SgdHp) {
    for &r in rows {
        let s = r as usize * d..(r as usize + 1) * d;
        sgd_run(&mut p[s.clone()], &mut g[s.clone()], &mut mom[s], hp);
    }
}

/// Row-sparse ("lazy") Adam on an `(N,D)` table: the dense rule on each listed row only, with
/// bias correction from the global step `t`. Rows not listed keep their moments undecayed.
pub fn adam_step_rows<T: Float>(
    p: &mut [T],
    g: &mut [T],
    m: &mut [T],
    v: &mut [T],
    rows: &[u32],
    d: usize,
    hp: &AdamHp,
    t: u64,
) {
    let s = AdamScalars::new(hp, t);
    // Inside a training epoch on two cores, the two halves of the rows go to the two threads
    // ([`crate::team`]). Ascending rows make that a split of each table at one row: every row
    // of the first half lies below the second half's first row.
    let h = rows.len() / 2;
    if h >= ROWS_PER_LANE && crate::team::helper_active() && rows.windows(2).all(|w| w[0] < w[1]) {
        let cut = rows[h] as usize * d;
        let (p0, p1) = p.split_at_mut(cut);
        let (g0, g1) = g.split_at_mut(cut);
        let (m0, m1) = m.split_at_mut(cut);
        let (v0, v1) = v.split_at_mut(cut);
        let (lo, hi) = rows.split_at(h);
        crate::team::join(
            || adam_rows_best(p0, g0, m0, v0, Some((lo, 0, false)), d, &s),
            || adam_rows_best(p1, g1, m1, v1, Some((hi, hi[0] as usize, false)), d, &s),
        );
    } else {
        adam_rows_best(p, g, m, v, Some((rows, 0, false)), d, &s);
    }
}

/// [`adam_step_rows`] with a compact gradient: row `i` of `gc (len(rows), D)` is the gradient
/// of table row `rows[i]`, and is zeroed. The same arithmetic on the same values, so the same
/// bits as [`adam_step_rows`] on a table holding those rows. The CPU's two-lane step sums a
/// batch's rows there instead of in a table-sized gradient whose rows would come from memory.
#[allow(clippy::too_many_arguments)]
pub fn adam_step_rows_compact<T: Float>(
    p: &mut [T],
    gc: &mut [T],
    m: &mut [T],
    v: &mut [T],
    rows: &[u32],
    d: usize,
    hp: &AdamHp,
    t: u64,
) {
    adam_rows_best(p, gc, m, v, Some((rows, 0, true)), d, &AdamScalars::new(hp, t));
}

/// Fewest rows per thread for which [`adam_step_rows`] splits its rows.
const ROWS_PER_LANE: usize = 32;

/// Sorted distinct ids of `ids`, written to the front of `out`; returns their count.
/// Reference: sort, then drop repeats.
pub fn unique_ids_naive(ids: &[u32], out: &mut [u32]) -> usize {
    let out = &mut out[..ids.len()];
    out.copy_from_slice(ids);
    out.sort_unstable();
    let mut n = 0;
    for k in 0..out.len() {
        if k == 0 || out[k] != out[n - 1] {
            out[n] = out[k];
            n += 1;
        }
    }
    n
}

/// [`unique_ids_naive`] in `O(b + n/64)` for ids below `n`: set one bit per id in a bitmap of
/// the table's rows, then read the set bits back in ascending order (clearing them, so the
/// bitmap, kept per thread, is all zeros again for the next call). At batch 4096 this replaces
/// a sort of 4096 ids by 4096 bit sets and a scan of `n/64` words (95 for ML-1M's users).
pub fn unique_ids(ids: &[u32], n: usize, out: &mut [u32]) -> usize {
    thread_local! {
        static BITS: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut bits = BITS.with(std::cell::Cell::take);
    let words = n.div_ceil(64);
    if bits.len() < words {
        bits.resize(words, 0);
    }
    for &id in ids {
        bits[id as usize / 64] |= 1u64 << (id % 64);
    }
    // Up to three ids per word on average (ML-1M's 6,040 users at batch 256: 2.7) four slots
    // are written per word, more (its 3,706 items: 4.4) eight (see `read_bits`).
    let count = if ids.len() * 64 <= 3 * n.max(1) {
        read_bits::<4>(&mut bits[..words], out)
    } else {
        read_bits::<8>(&mut bits[..words], out)
    };
    BITS.with(|c| c.set(bits));
    count
}

/// The set bits of `bits` as ascending indices at the front of `out` (and `bits` cleared);
/// returns their count. A word holds a few of a batch's ids: the first `EMIT` are written
/// whether or not they exist (the slots past a word's count are overwritten by the next
/// word's, or lie past the returned count), so the loop's exit is mispredicted only for words
/// with more than `EMIT` ids; the bit-by-bit loop mispredicted about once per word (ML-1M's
/// users: 866 ns a batch of 256, 640 ns this way; its items: about 710 and 490 ns).
#[inline(always)]
fn read_bits<const EMIT: usize>(bits: &mut [u64], out: &mut [u32]) -> usize {
    let mut count = 0;
    for (w, word) in bits.iter_mut().enumerate() {
        let mut x = *word;
        *word = 0;
        let (base, set) = ((w * 64) as u32, x.count_ones() as usize);
        if let Some(first) = out.get_mut(count..count + EMIT) {
            for o in first {
                *o = base + x.trailing_zeros();
                x &= x.wrapping_sub(1);
            }
        } else {
            // The last slots of `out`: no room for `EMIT`.
            for o in &mut out[count..count + set] {
                *o = base + x.trailing_zeros();
                x &= x - 1;
            }
            x = 0;
        }
        let mut k = count + EMIT;
        while x != 0 {
            out[k] = base + x.trailing_zeros();
            k += 1;
            x &= x - 1;
        }
        count += set;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;
    use ncf_core::Decay;
    use ncf_core::Tol;
    use ncf_core::tol::{assert_close, assert_close_f32};

    /// One Adam step from m = v = 0 moves every weight by almost exactly `lr` against the sign of
    /// its gradient: m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε). Hand-computed values.
    #[test]
    fn adam_first_step_hand_computed() {
        let hp = AdamHp { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: Decay::None };
        let mut p = vec![1.0f64, -2.0, 0.5];
        let mut g = vec![0.5, -4.0, 0.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adam_step(&mut p, &mut g, &mut m, &mut v, &hp, 1);
        // 1 − 0.1·0.5/(0.5+1e-8),  −2 + 0.1·4/(4+1e-8),  0.5 (zero gradient: no move)
        let want = [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), 0.5];
        assert_close("adam p", &p, &want, Tol::F64_KERNEL);
        assert_close("adam m", &m, &[0.05, -0.4, 0.0], Tol::F64_KERNEL);
        assert_close("adam v", &v, &[0.001 * 0.25, 0.001 * 16.0, 0.0], Tol::F64_KERNEL);
        assert_eq!(g, vec![0.0; 3], "the step zeroes the gradient");
    }

    /// SGD, two steps with momentum 0.9 and L2 0.01, hand-computed:
    /// step 1: g' = 1 + 0.01·2 = 1.02, mom = 1.02, w = 2 − 0.1·1.02 = 1.898
    /// step 2: g' = 1 + 0.01·1.898 = 1.01898, mom = 0.9·1.02 + 1.01898 = 1.93698,
    ///         w = 1.898 − 0.193698 = 1.704302
    #[test]
    fn sgd_two_steps_hand_computed() {
        let hp = SgdHp { lr: 0.1, momentum: 0.9, decay: Decay::L2(0.01) };
        let (mut p, mut mom) = (vec![2.0f64], vec![0.0]);
        for _ in 0..2 {
            let mut g = vec![1.0];
            sgd_step(&mut p, &mut g, &mut mom, &hp);
        }
        assert_close("sgd p", &p, &[1.704302], Tol::F64_KERNEL);
        assert_close("sgd mom", &mom, &[1.93698], Tol::F64_KERNEL);
    }

    #[test]
    fn fast_steps_match_naive_for_every_decay() {
        let n = 3 * PAR_CHUNK + 17; // exercises the parallel path and a ragged chunk
        for decay in [Decay::None, Decay::L2(0.01), Decay::Decoupled(0.1)] {
            let adam = AdamHp { lr: 0.01, decay, ..AdamHp::default() };
            let sgd = SgdHp { lr: 0.05, momentum: 0.9, decay };
            let p0 = rand_vec(n, 1);
            let (mut p1, mut p2) = (p0.clone(), p0.clone());
            let (mut m1, mut v1, mut m2, mut v2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for t in 1..=3 {
                let (mut g1, mut g2) = (rand_vec(n, 10 + t), rand_vec(n, 10 + t));
                adam_step(&mut p1, &mut g1, &mut m1, &mut v1, &adam, t);
                adam_step_naive(&mut p2, &mut g2, &mut m2, &mut v2, &adam, t);
                assert!(g1.iter().all(|&x| x == 0.0));
            }
            assert_close_f32(&format!("adam {decay:?}"), &p1, &p2, Tol { abs: 1e-6, rel: 1e-5 });
            let (mut p1, mut p2) = (p0.clone(), p0.clone());
            let (mut b1, mut b2) = (vec![0.0; n], vec![0.0; n]);
            for t in 1..=3 {
                let (mut g1, mut g2) = (rand_vec(n, 20 + t), rand_vec(n, 20 + t));
                sgd_step(&mut p1, &mut g1, &mut b1, &sgd);
                sgd_step_naive(&mut p2, &mut g2, &mut b2, &sgd);
            }
            assert_close_f32(&format!("sgd {decay:?}"), &p1, &p2, Tol { abs: 1e-6, rel: 1e-5 });
        }
    }

    /// Inside a training epoch the rows are split between two threads; the result is the
    /// same bit for bit, including rows on either side of the cut.
    #[test]
    fn lazy_adam_split_over_two_threads_is_bit_identical() {
        let hp = AdamHp { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: Decay::L2(0.01) };
        let (n, d) = (500, 8);
        let rows: Vec<u32> = (0..n as u32).filter(|r| r % 3 != 1).collect();
        let init = || {
            (
                rand_vec(n * d, 1),
                rand_vec(n * d, 2),
                rand_vec(n * d, 3),
                rand_vec(n * d, 4).iter().map(|x: &f32| x.abs()).collect::<Vec<f32>>(),
            )
        };
        let (mut p1, mut g1, mut m1, mut v1) = init();
        adam_step_rows(&mut p1, &mut g1, &mut m1, &mut v1, &rows, d, &hp, 7);
        let (mut p2, mut g2, mut m2, mut v2) = init();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            crate::team::with_helper(|| adam_step_rows(&mut p2, &mut g2, &mut m2, &mut v2, &rows, d, &hp, 7))
        });
        assert_eq!((p1, g1, m1, v1), (p2, g2, m2, v2));
    }

    #[test]
    fn lazy_steps_touch_only_listed_rows_and_equal_dense_on_them() {
        let (n, d) = (10, 4);
        let rows = [1u32, 4, 7];
        let p0 = rand_vec(n * d, 3);
        let mut g = vec![0.0f32; n * d];
        for &r in &rows {
            for j in 0..d {
                g[r as usize * d + j] = 0.3 + j as f32;
            }
        }
        let hp = AdamHp::default();
        let (mut pd, mut gd, mut md, mut vd) = (p0.clone(), g.clone(), vec![0.0; n * d], vec![0.0; n * d]);
        adam_step(&mut pd, &mut gd, &mut md, &mut vd, &hp, 1);
        let (mut pl, mut gl, mut ml, mut vl) = (p0.clone(), g.clone(), vec![0.0; n * d], vec![0.0; n * d]);
        adam_step_rows(&mut pl, &mut gl, &mut ml, &mut vl, &rows, d, &hp, 1);
        assert_eq!(pl, pd, "with zero moments elsewhere, lazy == dense after one step");
        assert!(gl.iter().all(|&x| x == 0.0));
        // Second step with no gradient: dense Adam keeps moving touched rows (momentum), lazy does not.
        adam_step(&mut pd, &mut gd, &mut md, &mut vd, &hp, 2);
        adam_step_rows(&mut pl, &mut gl, &mut ml, &mut vl, &[], d, &hp, 2);
        assert_ne!(pl, pd);
        let sgd = SgdHp { lr: 0.1, momentum: 0.0, decay: Decay::None };
        let (mut ps, mut gs, mut ms) = (p0.clone(), g.clone(), vec![0.0; n * d]);
        sgd_step_rows(&mut ps, &mut gs, &mut ms, &rows, d, &sgd);
        for r in 0..n {
            let s = r * d..(r + 1) * d;
            if rows.contains(&(r as u32)) {
                assert_ne!(ps[s.clone()], p0[s]);
            } else {
                assert_eq!(ps[s.clone()], p0[s]);
            }
        }
    }

    /// Lazy Adam with a compact gradient against the table-gradient form: the same bits in
    /// every table row and moment, over three steps with weight decay, for row widths around
    /// the vector widths; the compact gradient is consumed.
    #[test]
    fn compact_lazy_adam_equals_lazy_adam_bitwise() {
        for d in [1usize, 8, 13, 32] {
            let n = 50;
            let rows = [0u32, 3, 4, 17, 31, 49];
            let hp = AdamHp { decay: Decay::L2(0.01), ..AdamHp::default() };
            let (mut pt, mut mt, mut vt) = (rand_vec(n * d, 1), vec![0.0f32; n * d], vec![0.0f32; n * d]);
            let (mut pc, mut mc, mut vc) = (pt.clone(), mt.clone(), vt.clone());
            for t in 1..=3u64 {
                let gc = rand_vec(rows.len() * d, 10 + t);
                let mut g = vec![0.0f32; n * d];
                for (i, &r) in rows.iter().enumerate() {
                    g[r as usize * d..][..d].copy_from_slice(&gc[i * d..][..d]);
                }
                let mut gc = gc;
                adam_step_rows(&mut pt, &mut g, &mut mt, &mut vt, &rows, d, &hp, t);
                adam_step_rows_compact(&mut pc, &mut gc, &mut mc, &mut vc, &rows, d, &hp, t);
                let tol = ncf_core::Tol { abs: 0.0, rel: 0.0 };
                assert_close_f32(&format!("compact p, d={d} t={t}"), &pc, &pt, tol);
                assert_close_f32(&format!("compact m, d={d} t={t}"), &mc, &mt, tol);
                assert_close_f32(&format!("compact v, d={d} t={t}"), &vc, &vt, tol);
                assert!(gc.iter().all(|&x| x == 0.0), "the compact gradient is consumed");
            }
        }
    }

    /// The AVX2 row kernel against the generic row loop ([`adam_rows`], which the portable
    /// build runs): the same bits in every weight and moment, the gradient rows zeroed, for
    /// table and compact gradients, widths 8 to 40, three steps with each kind of decay, and
    /// rows starting above a `base`.
    #[test]
    fn avx2_adam_rows_match_the_generic_loop_bitwise() {
        if !crate::simd::SimdLevel::Avx2Fma.is_available() {
            eprintln!("skipped: this CPU has no AVX2 + FMA, so the AVX2 Adam rows were not tested");
            return;
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for decay in [Decay::None, Decay::L2(0.01), Decay::Decoupled(0.02)] {
            for d in [8usize, 16, 32, 40] {
                for (compact, base) in [(false, 0usize), (true, 0), (false, 3), (true, 3)] {
                    let n = 60;
                    let rows = [3u32, 4, 11, 17, 31, 40, 41, 42, 43, 44, 59];
                    let hp = AdamHp { decay, ..AdamHp::default() };
                    let len = (n - base) * d;
                    let (mut pa, mut ma, mut va) = (rand_vec(len, 1), rand_vec(len, 2), rand_vec(len, 3));
                    va.iter_mut().for_each(|x| *x = x.abs());
                    let (mut pb, mut mb, mut vb) = (pa.clone(), ma.clone(), va.clone());
                    for t in 1..=3u64 {
                        let s = AdamScalars::<f32>::new(&hp, t);
                        let mut ga = rand_vec(if compact { rows.len() * d } else { len }, 10 + t);
                        let mut gb = ga.clone();
                        assert!(rows_fit(&rows, base, compact, d, [pa.len(), ga.len(), ma.len(), va.len()]));
                        adam_rows(&mut pa, &mut ga, &mut ma, &mut va, Some((&rows, base, compact)), d, &s);
                        // SAFETY: AVX2 + FMA checked above; d is a multiple of 8; rows_fit asserted.
                        unsafe {
                            if s.decays() {
                                adam_rows_f32_avx2::<true>(
                                    &mut pb, &mut gb, &mut mb, &mut vb, &rows, base, compact, d, &s,
                                )
                            } else {
                                adam_rows_f32_avx2::<false>(
                                    &mut pb, &mut gb, &mut mb, &mut vb, &rows, base, compact, d, &s,
                                )
                            }
                        };
                        let what = format!("{decay:?} d={d} compact={compact} base={base} t={t}");
                        for (name, got, want) in [("p", &pb, &pa), ("m", &mb, &ma), ("v", &vb, &va), ("g", &gb, &ga)] {
                            if bits(got) != bits(want) {
                                let tol = ncf_core::Tol { abs: 0.0, rel: 0.0 };
                                assert_close_f32(&format!("{name}, {what}"), got, want, tol);
                            }
                        }
                    }
                }
            }
        }
        // The dense form: whole vectors and the scalar tail, against the generic run.
        for (n, decay) in
            [1usize, 7, 8, 9, 31, 33, 2048].into_iter().flat_map(|n| [(n, Decay::L2(0.01)), (n, Decay::None)])
        {
            let hp = AdamHp { decay, ..AdamHp::default() };
            let (mut pa, mut ma, mut va) = (rand_vec(n, 4), rand_vec(n, 5), rand_vec(n, 6));
            va.iter_mut().for_each(|x| *x = x.abs());
            let (mut pb, mut mb, mut vb) = (pa.clone(), ma.clone(), va.clone());
            for t in 1..=3u64 {
                let s = AdamScalars::<f32>::new(&hp, t);
                let mut ga = rand_vec(n, 20 + t);
                let mut gb = ga.clone();
                adam_run(&mut pa, &mut ga, &mut ma, &mut va, &s);
                // SAFETY: AVX2 + FMA checked above.
                unsafe {
                    if s.decays() {
                        adam_dense_f32_avx2::<true>(&mut pb, &mut gb, &mut mb, &mut vb, &s)
                    } else {
                        adam_dense_f32_avx2::<false>(&mut pb, &mut gb, &mut mb, &mut vb, &s)
                    }
                };
                for (name, got, want) in [("p", &pb, &pa), ("m", &mb, &ma), ("v", &vb, &va), ("g", &gb, &ga)] {
                    assert_eq!(bits(got), bits(want), "dense {name}, n {n}, {decay:?}, t {t}");
                }
            }
        }
        assert!(!rows_fit(&[2, 5], 3, false, 8, [100; 4]), "a row below the base does not fit");
        assert!(!rows_fit(&[2, 12], 0, false, 8, [100; 4]), "a row past the end does not fit");
        assert!(!rows_fit(&[2, 5], 0, true, 8, [48, 15, 48, 48]), "a compact gradient too short");
    }

    /// Without decay the rule leaves out `+ 0·w` and `·1`: the weights and moments are those of
    /// the rule written with both terms, bit for bit, over finite weights of both signs and
    /// gradients that include zeros of both signs.
    #[test]
    fn no_decay_leaves_the_terms_out_without_changing_a_value() {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let hp = AdamHp::default();
        let n = 257;
        let (mut pa, mut ma, mut va) = (rand_vec(n, 7), rand_vec(n, 8), rand_vec(n, 9));
        va.iter_mut().for_each(|x| *x = x.abs());
        let (mut pb, mut mb, mut vb) = (pa.clone(), ma.clone(), va.clone());
        for t in 1..=4u64 {
            let s = AdamScalars::<f32>::new(&hp, t);
            assert!(!s.decays() && s.l2 == 0.0 && s.shrink == 1.0);
            let mut ga = rand_vec(n, 30 + t);
            ga.iter_mut().step_by(5).for_each(|x| *x = 0.0);
            ga.iter_mut().skip(2).step_by(5).for_each(|x| *x = -0.0);
            let mut gb = ga.clone();
            adam_run(&mut pa, &mut ga, &mut ma, &mut va, &s);
            for k in 0..n {
                let grad = gb[k] + s.l2 * pb[k];
                mb[k] = s.b1 * mb[k] + s.one_minus_b1 * grad;
                vb[k] = s.b2 * vb[k] + s.one_minus_b2 * grad * grad;
                let denom = vb[k].sqrt() * s.inv_sqrt_bc2 + s.eps;
                pb[k] = pb[k] * s.shrink - s.step * mb[k] / denom;
                gb[k] = 0.0;
            }
            for (name, got, want) in [("p", &pa, &pb), ("m", &ma, &mb), ("v", &va, &vb), ("g", &ga, &gb)] {
                assert_eq!(bits(got), bits(want), "{name} at t {t}");
            }
        }
    }

    /// The kept bias corrections follow their key: the same step with other betas, and the
    /// same betas at another step, give what a fresh computation gives.
    #[test]
    fn bias_corrections_follow_their_key() {
        let fresh = |hp: &AdamHp, t: u64| (1.0 - hp.beta1.powi(t as i32), 1.0 - hp.beta2.powi(t as i32));
        let a = AdamHp::default();
        let b = AdamHp { beta1: 0.8, beta2: 0.99, ..AdamHp::default() };
        for (hp, t) in [(&a, 7u64), (&a, 7), (&b, 7), (&a, 7), (&a, 30_000), (&b, 30_000), (&a, 0), (&a, 1)] {
            assert_eq!(bias_corrections(hp, t), fresh(hp, t.max(1)), "betas {} {}, t {t}", hp.beta1, hp.beta2);
        }
    }

    #[test]
    fn unique_ids_sorts_and_dedups() {
        let mut out = [0u32; 7];
        let n = unique_ids(&[5, 1, 5, 3, 1, 9, 0], 10, &mut out);
        assert_eq!(&out[..n], &[0, 1, 3, 5, 9]);
        assert_eq!(unique_ids(&[], 10, &mut out), 0);
    }

    /// The bitmap version against the sort, on batches with many repeats, ids at both ends of
    /// the table and table sizes that are and are not multiples of 64; twice in a row on the
    /// same thread (the bitmap must come back clean).
    #[test]
    fn unique_ids_bitmap_matches_sort() {
        for &(n, b) in &[(1usize, 5usize), (64, 300), (65, 300), (6040, 256), (3706, 4096)] {
            for seed in 0..2u64 {
                let mut ids = crate::testutil::rand_ids(b, n, seed);
                ids[0] = 0;
                ids[b - 1] = (n - 1) as u32;
                let (mut want, mut got) = (vec![0u32; b], vec![u32::MAX; b]);
                let k = unique_ids_naive(&ids, &mut want);
                assert_eq!(unique_ids(&ids, n, &mut got), k, "count n={n} b={b}");
                assert_eq!(&got[..k], &want[..k], "n={n} b={b} seed={seed}");
            }
        }
        // Outputs with no room for four past the count (exactly as long as the ids), a word
        // with more than four ids, and one word's ids ending the output.
        for ids in [vec![5u32], vec![0, 64, 128], vec![3, 1, 2, 0, 7, 9, 64], vec![70, 65, 66, 67, 68, 69]] {
            let n = 200;
            let mut want = vec![0u32; ids.len()];
            let k = unique_ids_naive(&ids, &mut want);
            let mut got = vec![u32::MAX; ids.len()];
            assert_eq!(unique_ids(&ids, n, &mut got), k, "count {ids:?}");
            assert_eq!(&got[..k], &want[..k], "{ids:?}");
        }
    }
}
