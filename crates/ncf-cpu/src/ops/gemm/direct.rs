//! The skinny-product kernel: f32 on AVX-512 (16 lanes) or AVX2 + FMA (8 lanes), with no
//! packing of A.
//!
//! NCF's dense layers multiply a tall matrix by a small one. At batch 256, split into two lanes
//! of 128 rows, the NeuMF-8 MLP runs `(128, 64)·(64, 32)` forward, `(128, 32)·(32, 64)` for
//! `dinp` and `(32, 128)·(128, 64)` for `dW`, and the same at 32→16 and 16→8. The blocked kernel
//! copies (packs) its A block and B panel before every product. At these shapes the copies cost
//! about as much as the arithmetic (a profile of an ML-1M epoch in BENCHMARKS.md shows packing
//! next to the micro-kernels). This kernel packs nothing it does not have to:
//!
//! ```text
//! for each column block j0 (V vectors of 16 floats, V ≤ 4)      B[:, j0..] stays in L1
//!   for each row tile i0 (R rows)
//!     acc[R][V] = 0                                            R·V zmm registers
//!     for p in 0..k
//!       b[v] = B[p, j0+16v .. j0+16v+16]                       V vector loads
//!       acc[r][v] += A[i0+r, p] · b[v]                         broadcast from memory + FMA
//!     C[i0.., j0..] = α·acc + β·C
//! ```
//!
//! A is read where it lies, one scalar per row and step, whatever its strides: a row-major A
//! (forward, `dinp`) is R streams of scalars, a transposed one (`doutᵀ` in `dW`) reads R
//! consecutive floats per step. B is read where it lies when its rows are contiguous (`w` in
//! `dinp`, `inp` in `dW`); otherwise (`wᵀ` in the forward) it is first copied row-major into a
//! `k × n` buffer, which is small next to A.
//!
//! Edges: the last vector of a column block is loaded and stored under a lane mask, so nothing
//! outside C's view is read or written; the last row tile is split into tiles of 8, 4, 2 and 1
//! rows. With β = 0, C is never read.
//!
//! AVX2 runs the same loop with 8-float vectors and the 16 ymm registers: column blocks of up to
//! 2 vectors (16 floats) in row tiles of 6 (8 for one vector), so the 12 accumulators, B's two
//! vectors and the broadcast fit; masks are `vmaskmovps` lane masks. (Blocks of 4 vectors in
//! tiles of 2 rows were slower at `dW`'s 32×256×64: 8 FMAs per 6 loads.)
//!
//! Determinism: every element of C is one accumulator that runs `p` in order from zero, then
//! `α·acc + β·c` with the same two roundings as the blocked kernel's store. So for `k ≤ KC` the
//! result equals the blocked AVX2 kernel's bit for bit (tested), and it never depends on the
//! thread count: threads only split the rows.

use super::blocked::with_pack_buffer;
use super::{MatMut, MatRef, PAR_MIN_FLOPS};
use crate::simd::SimdLevel;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Widest C this kernel takes: 8 column blocks of 64. Wider products go to the blocked kernel,
/// whose packed panels are built for them.
pub const MAX_N: usize = 512;

/// Most elements of a B that has to be copied first (1 MiB of f32): the copy is re-read by
/// every row tile, so it must stay in L2 with room to spare for the streams of A and C.
const MAX_B_COPY: usize = 1 << 18;

/// Most elements of any B (4 MiB of f32): every row tile re-reads all of B, which must come
/// from cache, not memory. (At batch 4096 the largest, `dW`'s `inp`, is 2048 × 64.)
const MAX_B: usize = 1 << 20;

/// Whether this CPU can run the kernel at `simd`: AVX-512F or AVX2 + FMA (x86-64 only), and the
/// CPU has the level.
pub fn is_available(simd: SimdLevel) -> bool {
    cfg!(target_arch = "x86_64") && simd >= SimdLevel::Avx2Fma && simd.is_available()
}

/// Whether a `(k, n)` B with column stride `b_cs`, into a C with column stride `c_cs`, suits the
/// kernel: C's rows contiguous, C not wider than [`MAX_N`], B not bigger than `MAX_B`, and a
/// B that must be copied (column stride ≠ 1) not bigger than `MAX_B_COPY`.
pub fn suits(k: usize, n: usize, b_cs: usize, c_cs: usize) -> bool {
    let b_len = k.saturating_mul(n);
    c_cs == 1 && n <= MAX_N && b_len <= MAX_B && (b_cs == 1 || b_len <= MAX_B_COPY)
}

/// `C ← α·A·B + β·C` with this kernel.
///
/// Preconditions (established by the caller, `dispatch.rs`'s `scratch`): the views were
/// validated, `m, k, n > 0`, [`is_available`]`(simd)` and [`suits`] hold.
pub(super) fn gemm_direct(simd: SimdLevel, alpha: f32, a: MatRef<f32>, b: MatRef<f32>, beta: f32, c: MatMut<f32>) {
    let n = b.cols;
    with_b_rows(simd, b, |b_data, b_rs| rows_parallel(simd, alpha, a, b_data, b_rs, n, beta, c));
}

/// Runs `f` on B's rows as the kernel reads them, `(data, row stride)`: B itself when its rows
/// are contiguous, else its row-major copy ([`copy_b`]) in this thread's packing buffer.
fn with_b_rows(simd: SimdLevel, b: MatRef<f32>, f: impl FnOnce(&[f32], usize)) {
    let (k, n) = (b.rows, b.cols);
    if b.cs == 1 {
        f(b.data, b.rs);
    } else {
        with_pack_buffer(<f32 as super::CpuFloat>::b_pack_buffer(), k * n, |buf| {
            copy_b(simd, b, buf);
            f(buf, n);
        });
    }
}

/// What the kernel does to C's tile after the product, besides `α·acc + β·C`: add a bias row
/// (`bias[j]` to column `j` of every row), and write `max(C, 0)` to `x`, a matrix laid out
/// like C. Null pointers: not that step.
#[derive(Clone, Copy)]
struct Epilogue {
    bias: *const f32,
    relu: *mut f32,
}

impl Epilogue {
    const NONE: Epilogue = Epilogue { bias: std::ptr::null(), relu: std::ptr::null_mut() };
}

/// A dense layer and its ReLU in one pass over C: `C ← A·B + bias` (the bias added to every
/// row) and `X ← max(C, 0)`, with X laid out like C. The sum is the one [`gemm_direct`] gives
/// for `α = β = 1` over a C filled with the bias rows (`1·acc + 1·bias`), so the same bits,
/// and X is `relu_forward` of it; what it saves is the pass that fills C with the bias, C's
/// reads in the product, and the ReLU's pass over C. Returns `false`, having done nothing,
/// unless this kernel would run the product on this thread alone: the level is available,
/// the product [`suits`] it, `m, k, n > 0`, C's rows are contiguous, and it is too small to
/// split across threads (or splitting is off).
pub(super) fn gemm_direct_bias_relu(
    simd: SimdLevel,
    a: MatRef<f32>,
    b: MatRef<f32>,
    bias: &[f32],
    c: MatMut<f32>,
    x: &mut [f32],
) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let split =
        flops >= PAR_MIN_FLOPS && m > ROWS_PER_TASK && crate::team::rayon_ok() && rayon::current_num_threads() > 1;
    if !is_available(simd)
        || m == 0
        || k == 0
        || n == 0
        || c.cs != 1
        || c.rows != m
        || c.cols != n
        || b.rows != k
        || !suits(k, n, b.cs, c.cs)
        || split
        || super::view::validate(&a, &b, &c).is_err()
    {
        return false;
    }
    let c_rs = if m == 1 { n } else { c.rs };
    let c_last = (m - 1) * c_rs + n - 1;
    if bias.len() < n || x.len() <= c_last {
        return false;
    }
    let epi = Epilogue { bias: bias.as_ptr(), relu: x.as_mut_ptr() };
    with_b_rows(simd, b, |b_data, b_rs| block(simd, 1.0, a, 0, m, b_data, b_rs, n, 0.0, c.data, c_rs, epi));
    true
}

/// `buf (k, n) ← B`, row-major. For `B = wᵀ` (the forward) this is a transpose of the small
/// weight matrix, done on every call: 8 × 8 blocks transposed in registers
/// ([`transpose_b_avx2`], at the AVX2 and the AVX-512 level alike: with 16 columns of a row
/// of `buf` per AVX-512 gather instead, the AVX-512 forward products ran 13–16% slower);
/// any other strided B by those gathers on AVX-512. A copy element by element is one scalar
/// load and store per weight, and since it runs before every forward product it showed up in
/// profiles of a training epoch (BENCHMARKS.md, `GEMM_TABLE=1 cargo bench --bench gemm`).
fn copy_b(simd: SimdLevel, b: MatRef<f32>, buf: &mut [f32]) {
    let (k, n) = (b.rows, b.cols);
    #[cfg(target_arch = "x86_64")]
    if b.cs <= (i32::MAX as usize) / 16 && simd == SimdLevel::Avx512 && is_available(simd) && b.rs != 1 {
        // Bounds, for the raw reads below: every element of the view is in `b.data`.
        let last = (k - 1) * b.rs + (n - 1) * b.cs;
        assert!(last < b.data.len() && buf.len() >= k * n, "gemm direct: B view out of bounds");
        // SAFETY: AVX-512F is present (checked above); the gathers read only elements of the
        // view (lanes past column n are masked off), all inside `b.data` (asserted); the stores
        // write row p of `buf`, inside its k·n elements (asserted).
        unsafe { copy_b_avx512(b.data.as_ptr(), b.rs, b.cs, k, n, buf.as_mut_ptr()) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if b.rs == 1 && simd >= SimdLevel::Avx2Fma && SimdLevel::Avx2Fma.is_available() {
        // B = wᵀ: each column of B is a run of `k` floats (a row of w), so `buf` is w
        // transposed, done 8 × 8 in registers.
        let last = (k - 1) + (n - 1) * b.cs;
        assert!(last < b.data.len() && buf.len() >= k * n, "gemm direct: B view out of bounds");
        // SAFETY: AVX2 is present (checked above); every read is `b[p + j·cs]` with `p < k`,
        // `j < n`, inside `b.data` (asserted); every write is `buf[p·n + j]`, inside its `k·n`
        // elements (asserted).
        unsafe { transpose_b_avx2(b.data.as_ptr(), b.cs, k, n, buf.as_mut_ptr()) };
        return;
    }
    for (p, row) in buf[..k * n].chunks_exact_mut(n).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = b.data[p * b.rs + j * b.cs];
        }
    }
}

/// See [`copy_b`].
///
/// # Safety
/// AVX-512F; `b[p·rs + j·cs]` in bounds for `p < k, j < n`; `dst` valid for `k·n` writes;
/// `16·cs` fits in an `i32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_b_avx512(b: *const f32, rs: usize, cs: usize, k: usize, n: usize, dst: *mut f32) {
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(cs as i32));
    for p in 0..k {
        for j0 in (0..n).step_by(16) {
            let w = 16.min(n - j0);
            let mask: __mmask16 = if w == 16 { 0xFFFF } else { (1u16 << w) - 1 };
            // SAFETY: lane j reads b[p·rs + (j0 + j)·cs] for j < w (masked), in bounds by the
            // contract; the store writes dst[p·n + j0 .. p·n + j0 + w].
            unsafe {
                let src = b.add(p * rs + j0 * cs);
                let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, src);
                _mm512_mask_storeu_ps(dst.add(p * n + j0), mask, v);
            }
        }
    }
}

/// `dst[p·n + j] = b[p + j·cs]` for `p < k`, `j < n`: [`copy_b`] for a B whose columns are
/// contiguous (`rs = 1`), with AVX2. Whole 8 × 8 blocks are transposed in registers (8 loads,
/// 24 shuffles, 8 stores, against 64 scalar loads and stores); the edges of `k` and `n` that
/// do not fill a block are copied element by element.
///
/// # Safety
/// AVX2; `b[p + j·cs]` in bounds for `p < k, j < n`; `dst` valid for `k·n` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_b_avx2(b: *const f32, cs: usize, k: usize, n: usize, dst: *mut f32) {
    let (k8, n8) = (k - k % 8, n - n % 8);
    for j0 in (0..n8).step_by(8) {
        for p0 in (0..k8).step_by(8) {
            // SAFETY: rows j0..j0+8 of w, columns p0..p0+8: b[p0 + (j0 + r)·cs ..][..8], all
            // with p < k and j < n, so in bounds by the contract.
            let r: [__m256; 8] = std::array::from_fn(|x| unsafe { _mm256_loadu_ps(b.add(p0 + (j0 + x) * cs)) });
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (x, v) in out.into_iter().enumerate() {
                // SAFETY: row p0 + x of dst, columns j0..j0+8: inside its k·n elements.
                unsafe { _mm256_storeu_ps(dst.add((p0 + x) * n + j0), v) };
            }
        }
    }
    // The edges: the columns past n8 for every row, and the rows past k8 for the first n8.
    for p in 0..k {
        let js = if p < k8 { n8..n } else { 0..n };
        for j in js {
            // SAFETY: p < k and j < n: in bounds by the contract.
            unsafe { *dst.add(p * n + j) = *b.add(p + j * cs) };
        }
    }
}

/// Rows of C per task when the product is split across threads (a multiple of every tile height).
const ROWS_PER_TASK: usize = 48;

/// Splits C's rows across the rayon pool when the product is big enough ([`PAR_MIN_FLOPS`]) and
/// runs [`block`] on each part. `b` holds B row-major with row stride `b_rs`.
#[allow(clippy::too_many_arguments)]
fn rows_parallel(
    simd: SimdLevel,
    alpha: f32,
    a: MatRef<f32>,
    b: &[f32],
    b_rs: usize,
    n: usize,
    beta: f32,
    c: MatMut<f32>,
) {
    let (m, k) = (a.rows, a.cols);
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    // With one row, rs is never used; the chunking below needs "row = run of rs slots".
    let c_rs = if m == 1 { n } else { c.rs };
    if flops >= PAR_MIN_FLOPS && m > ROWS_PER_TASK && crate::team::rayon_ok() && rayon::current_num_threads() > 1 {
        c.data.par_chunks_mut(ROWS_PER_TASK * c_rs).take(m.div_ceil(ROWS_PER_TASK)).enumerate().for_each(
            |(t, rows)| {
                let r0 = t * ROWS_PER_TASK;
                block(simd, alpha, a, r0, ROWS_PER_TASK.min(m - r0), b, b_rs, n, beta, rows, c_rs, Epilogue::NONE);
            },
        );
    } else {
        block(simd, alpha, a, 0, m, b, b_rs, n, beta, c.data, c_rs, Epilogue::NONE);
    }
}

/// Rows `r0 .. r0 + rows` of C (`c` starts at row `r0`), every column, then `epi`: a
/// non-null `epi.bias` must hold `n` floats, and a non-null `epi.relu` must be a matrix laid out
/// like `c` (starting at the same row), valid for writes wherever `c` is (callers make both
/// from slices they checked).
#[allow(clippy::too_many_arguments)]
fn block(
    simd: SimdLevel,
    alpha: f32,
    a: MatRef<f32>,
    r0: usize,
    rows: usize,
    b: &[f32],
    b_rs: usize,
    n: usize,
    beta: f32,
    c: &mut [f32],
    c_rs: usize,
    epi: Epilogue,
) {
    let k = a.cols;
    // Bounds, checked once so the kernel can use raw pointers: every A element of these rows,
    // every B element, every C element of these rows.
    let a_last = (r0 + rows - 1) * a.rs + (k - 1) * a.cs;
    let b_last = (k - 1) * b_rs + n - 1;
    let c_last = (rows - 1) * c_rs + n - 1;
    assert!(a_last < a.data.len() && b_last < b.len() && c_last < c.len(), "gemm direct: view out of bounds");
    let plain = epi.bias.is_null() && epi.relu.is_null();
    assert!(plain || (alpha == 1.0 && beta == 0.0), "gemm direct: the epilogue runs with α = 1, β = 0 only");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(is_available(simd), "gemm direct: called without AVX2 + FMA or AVX-512 ({simd})");
        let a_ptr = a.data[r0 * a.rs..].as_ptr();
        let (b_ptr, c_ptr) = (b.as_ptr(), c.as_mut_ptr());
        // SAFETY: the CPU has the level (just asserted: AVX-512F, or AVX2 + FMA), and the AVX2
        // kernel runs at the AVX-512 level only where the CPU has AVX2 + FMA too (the `if`
        // below checks it). Every address
        // the kernel forms is an element of the A rows `r0..r0+rows` (all in `a.data`, asserted
        // above), of B (rows `0..k`, columns `0..n`: in `b`), or of C's rows `0..rows`, columns
        // `0..n` (in `c`, which we borrow mutably), or the same elements of the epilogue's bias
        // row and ReLU output (valid there by this function's contract); lanes past column `n`
        // are masked off and never touched.
        unsafe {
            // C no wider than 8 (NeuMF-8's last layer) fills half of an AVX-512 vector; the AVX2
            // tiles use whole 8-float vectors (with `copy_b`'s register transpose, the
            // 128×16×8 forward went from 40 to 66 GFLOP/s, BENCHMARKS.md's twelfth session).
            // Every element is the same accumulator in the same order on both, so the same bits.
            if simd == SimdLevel::Avx512 && (n > 8 || !SimdLevel::Avx2Fma.is_available()) {
                block_avx512(alpha, a_ptr, a.rs, a.cs, k, rows, b_ptr, b_rs, n, beta, c_ptr, c_rs, epi)
            } else {
                avx2::block(alpha, a_ptr, a.rs, a.cs, k, rows, b_ptr, b_rs, n, beta, c_ptr, c_rs, epi)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (simd, alpha, beta, c, epi);
        unreachable!("gemm direct: only built for x86-64");
    }
}

/// The column blocks, each through [`rows_v`] with the matching number of vectors.
///
/// # Safety
/// As in [`block`]: AVX-512F, and every element of the described A, B and C views is in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    alpha: f32,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    k: usize,
    m: usize,
    b: *const f32,
    b_rs: usize,
    n: usize,
    beta: f32,
    c: *mut f32,
    c_rs: usize,
    epi: Epilogue,
) {
    let unit = alpha == 1.0 && (beta == 0.0 || beta == 1.0);
    for j0 in (0..n).step_by(64) {
        let w = 64.min(n - j0);
        let v = w.div_ceil(16);
        // Lanes of the last vector that are inside C: the low `w − 16(v−1)` bits.
        let tail = w - 16 * (v - 1);
        let mask: __mmask16 = if tail == 16 { 0xFFFF } else { (1u16 << tail) - 1 };
        let s = Strip {
            unit,
            a,
            a_rs,
            a_cs,
            k,
            b: b.wrapping_add(j0),
            b_rs,
            mask,
            c: c.wrapping_add(j0),
            c_rs,
            alpha,
            beta,
            bias: if epi.bias.is_null() { epi.bias } else { epi.bias.wrapping_add(j0) },
            relu: if epi.relu.is_null() { epi.relu } else { epi.relu.wrapping_add(j0) },
        };
        // SAFETY: the strip is columns j0..j0+w of the caller's views; same contract.
        unsafe {
            // The epilogue is a separate instantiation, so the plain product's loop is the
            // one it was before the epilogue existed; it runs with α = 1 and β = 0 only
            // (asserted in `block`). With α = 1 and β = 0 or 1 (`unit`) the store leaves out
            // the multiplies by 1, as the AVX2 tiles do; here a test per tile rather than an
            // instantiation of its own (the AVX-512 tiles are large, and the fuzz build's
            // instrumented compile of this crate took minutes longer with them doubled).
            match (v, s.bias.is_null() && s.relu.is_null()) {
                (1, true) => rows_v::<1, 12, false>(&s, m),
                (2, true) => rows_v::<2, 12, false>(&s, m),
                (3, true) => rows_v::<3, 8, false>(&s, m),
                (_, true) => rows_v::<4, 6, false>(&s, m),
                (1, false) => rows_v::<1, 12, true>(&s, m),
                (2, false) => rows_v::<2, 12, true>(&s, m),
                (3, false) => rows_v::<3, 8, true>(&s, m),
                (_, false) => rows_v::<4, 6, true>(&s, m),
            }
        }
    }
}

/// One column block of C: where its A, B and C start, their strides, and the product's scalars.
#[cfg(target_arch = "x86_64")]
struct Strip {
    /// α = 1 and β = 0 or 1: the store leaves out the multiplies by 1.
    unit: bool,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    k: usize,
    /// B's first row at this block's first column; rows `b_rs` apart.
    b: *const f32,
    b_rs: usize,
    /// Lanes of the block's last vector that are inside C.
    mask: __mmask16,
    c: *mut f32,
    c_rs: usize,
    alpha: f32,
    beta: f32,
    /// The bias row at this block's first column, or null ([`Epilogue`]).
    bias: *const f32,
    /// The ReLU output at this block's first column, rows `c_rs` apart, or null.
    relu: *mut f32,
}

/// `m` rows of a strip in tiles of `R` rows of `V` vectors (24 accumulators for the tiles used),
/// then the rest in tiles of 8, 4, 2, 1 rows.
///
/// # Safety
/// As in [`block`], for the strip's rows `0..m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_v<const V: usize, const R: usize, const EPI: bool>(s: &Strip, m: usize) {
    let mut i = 0;
    // SAFETY: for every call below, rows i..i+R (or the smaller tile) are rows of the strip,
    // with i + rows ≤ m.
    unsafe {
        while i + R <= m {
            tile::<R, V, EPI>(s, i);
            i += R;
        }
        let rest = m - i;
        if rest & 8 != 0 {
            tile::<8, V, EPI>(s, i);
            i += 8;
        }
        if rest & 4 != 0 {
            tile::<4, V, EPI>(s, i);
            i += 4;
        }
        if rest & 2 != 0 {
            tile::<2, V, EPI>(s, i);
            i += 2;
        }
        if rest & 1 != 0 {
            tile::<1, V, EPI>(s, i);
        }
    }
}

/// The micro-kernel: rows `i0 .. i0 + R` of the strip, `V` vectors wide (see the module docs).
/// The arrays are fixed-size and the loops over them have constant bounds, so they unroll and
/// `acc` lives in R·V zmm registers.
///
/// # Safety
/// As in [`block`], for the strip's rows `i0..i0+R`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize, const EPI: bool>(s: &Strip, i0: usize) {
    // SAFETY: every pointer below addresses an element of the strip's A rows i0..i0+R, B rows
    // 0..k or C rows i0..i0+R, within the columns the mask admits (see `block`).
    unsafe {
        let last = |v: usize| if v + 1 == V { s.mask } else { 0xFFFF };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let a0 = s.a.add(i0 * s.a_rs);
        for p in 0..s.k {
            let bp = s.b.add(p * s.b_rs);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(last(v), bp.add(16 * v));
            }
            let ap = a0.add(p * s.a_cs);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * s.a_rs));
                for (acc_rv, &b) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm512_fmadd_ps(x, b, *acc_rv);
                }
            }
        }
        let alpha = _mm512_set1_ps(s.alpha);
        let beta = _mm512_set1_ps(s.beta);
        let row = |r: usize| s.c.add((i0 + r) * s.c_rs);
        // α·acc + β·c, rounded after the product and after the sum (as the blocked kernel);
        // with `s.unit` (α = 1, β = 0 or 1) the same without the multiplies by 1.
        let unit = s.unit;
        let out = |x: __m512, c: __m512| {
            let ax = if unit { x } else { _mm512_mul_ps(alpha, x) };
            if s.beta != 0.0 { _mm512_add_ps(ax, if unit { c } else { _mm512_mul_ps(beta, c) }) } else { ax }
        };
        if s.beta != 0.0 && s.mask != 0xFFFF {
            // A partial row: read the whole tile's C before writing any of it. A masked store's
            // 64-byte span then covers the start of the next row (n = 8: four rows per span),
            // and a load that overlaps a store still in flight waits for it to retire;
            // interleaved, every row paid that wait (BENCHMARKS.md has the timings of the
            // (256, 16, 8) product). Full rows keep the interleaved order, which needs no
            // registers for the old values.
            let mut old = [[_mm512_setzero_ps(); V]; R];
            for (r, old_r) in old.iter_mut().enumerate() {
                for (v, o) in old_r.iter_mut().enumerate() {
                    *o = _mm512_maskz_loadu_ps(last(v), row(r).add(16 * v));
                }
            }
            for (r, (acc_r, old_r)) in acc.iter().zip(&old).enumerate() {
                for (v, (&x, &c)) in acc_r.iter().zip(old_r).enumerate() {
                    _mm512_mask_storeu_ps(row(r).add(16 * v), last(v), out(x, c));
                }
            }
        } else if EPI {
            // The epilogue ([`Epilogue`]): + bias after `α·acc + β·c`, then max(·, 0) to `relu`.
            let zero = _mm512_setzero_ps();
            let bias: [__m512; V] = std::array::from_fn(|v| {
                if s.bias.is_null() { zero } else { _mm512_maskz_loadu_ps(last(v), s.bias.add(16 * v)) }
            });
            for (r, acc_r) in acc.iter().enumerate() {
                for (v, &x) in acc_r.iter().enumerate() {
                    let dst = row(r).add(16 * v);
                    let c = if s.beta != 0.0 { _mm512_maskz_loadu_ps(last(v), dst) } else { x };
                    let y = if s.bias.is_null() { out(x, c) } else { _mm512_add_ps(out(x, c), bias[v]) };
                    _mm512_mask_storeu_ps(dst, last(v), y);
                    if !s.relu.is_null() {
                        _mm512_mask_storeu_ps(s.relu.add((i0 + r) * s.c_rs + 16 * v), last(v), _mm512_max_ps(y, zero));
                    }
                }
            }
        } else {
            for (r, acc_r) in acc.iter().enumerate() {
                for (v, &x) in acc_r.iter().enumerate() {
                    let dst = row(r).add(16 * v);
                    let c = if s.beta != 0.0 { _mm512_maskz_loadu_ps(last(v), dst) } else { x };
                    _mm512_mask_storeu_ps(dst, last(v), out(x, c));
                }
            }
        }
    }
}

/// The AVX2 + FMA twin of the AVX-512 kernel above: the same loop over 8-float vectors.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Epilogue;
    use std::arch::x86_64::*;

    /// One column block of C, as [`super::Strip`] with an AVX2 lane mask (lanes set to −1 are
    /// inside C).
    struct Strip {
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        k: usize,
        b: *const f32,
        b_rs: usize,
        mask: __m256i,
        full: bool,
        c: *mut f32,
        c_rs: usize,
        alpha: f32,
        beta: f32,
        bias: *const f32,
        relu: *mut f32,
    }

    /// The column blocks of 16 floats, each through [`rows_v`] with its number of vectors.
    ///
    /// # Safety
    /// As in `super::block`: AVX2 + FMA, and every element of the described views in bounds.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        alpha: f32,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        k: usize,
        m: usize,
        b: *const f32,
        b_rs: usize,
        n: usize,
        beta: f32,
        c: *mut f32,
        c_rs: usize,
        epi: Epilogue,
    ) {
        for j0 in (0..n).step_by(16) {
            let w = 16.min(n - j0);
            let v = w.div_ceil(8);
            let tail = (w - 8 * (v - 1)) as i32;
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            // Lane l is inside C when l < tail: (tail > l) gives −1 there, 0 elsewhere.
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lanes);
            let s = Strip {
                a,
                a_rs,
                a_cs,
                k,
                b: b.wrapping_add(j0),
                b_rs,
                mask,
                full: tail == 8,
                c: c.wrapping_add(j0),
                c_rs,
                alpha,
                beta,
                bias: if epi.bias.is_null() { epi.bias } else { epi.bias.wrapping_add(j0) },
                relu: if epi.relu.is_null() { epi.relu } else { epi.relu.wrapping_add(j0) },
            };
            // α = 1 and β = 0 or 1 (every product of the layers): the store leaves the
            // multiplies by 1 out (`UNIT`), which give the same value (`1·x = x` for every `x`
            // but a signalling NaN, which the multiply would quiet and no arithmetic makes) and
            // took the FMA units' slots: 12 a tile against a `dinp` 16→8 tile's 96 FMAs.
            let unit = alpha == 1.0 && (beta == 0.0 || beta == 1.0);
            // SAFETY: the strip is columns j0..j0+w of the caller's views; same contract.
            unsafe {
                // The epilogue is a separate instantiation (see `block_avx512`); it runs with
                // α = 1 and β = 0 only (asserted in `super::block`).
                match (v, s.bias.is_null() && s.relu.is_null(), unit) {
                    (1, true, true) => rows_v::<1, 8, false, true>(&s, m),
                    (_, true, true) => rows_v::<2, 6, false, true>(&s, m),
                    (1, true, false) => rows_v::<1, 8, false, false>(&s, m),
                    (_, true, false) => rows_v::<2, 6, false, false>(&s, m),
                    (1, false, _) => rows_v::<1, 8, true, true>(&s, m),
                    (_, false, _) => rows_v::<2, 6, true, true>(&s, m),
                }
            }
        }
    }

    /// `m` rows in tiles of `R` rows of `V` vectors, then the rest in tiles of 4, 2 and 1 rows;
    /// with two vectors, a rest of 1 to 3 rows takes the last full tile with it, split into
    /// tiles of 4 or 5 rows (and 3: `[4, 3]`, `[4, 4]`, `[5, 4]`). A tile of `r` rows keeps
    /// `r·V` sums in flight, and the FMA units need 8 to stay busy (two a cycle, four cycles
    /// each): a tile of 2 rows ran at half speed, so `dW`'s 32 rows in tiles of 6, 6, 6, 6, 6, 2
    /// cost as much as 34.
    ///
    /// # Safety
    /// As in [`block`], for the strip's rows `0..m`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_v<const V: usize, const R: usize, const EPI: bool, const UNIT: bool>(s: &Strip, m: usize) {
        let mut i = 0;
        // SAFETY: every tile below covers rows i..i+rows of the strip, with i + rows ≤ m.
        unsafe {
            let short = V == 2 && R == 6 && m > R && (1..4).contains(&(m % R));
            while i + R <= m && !(short && i + 2 * R > m) {
                tile::<R, V, EPI, UNIT>(s, i);
                i += R;
            }
            if short {
                // The last full tile and the rest: 7, 8 or 9 rows.
                match m - i {
                    7 => (tile::<4, V, EPI, UNIT>(s, i), tile::<3, V, EPI, UNIT>(s, i + 4)),
                    8 => (tile::<4, V, EPI, UNIT>(s, i), tile::<4, V, EPI, UNIT>(s, i + 4)),
                    9 => (tile::<5, V, EPI, UNIT>(s, i), tile::<4, V, EPI, UNIT>(s, i + 5)),
                    r => unreachable!("{r} rows for the last two tiles"),
                };
                return;
            }
            let rest = m - i;
            if rest & 4 != 0 {
                tile::<4, V, EPI, UNIT>(s, i);
                i += 4;
            }
            if rest & 2 != 0 {
                tile::<2, V, EPI, UNIT>(s, i);
                i += 2;
            }
            if rest & 1 != 0 {
                tile::<1, V, EPI, UNIT>(s, i);
            }
        }
    }

    /// Rows `i0 .. i0 + R` of the strip, `V` vectors wide: `acc[r][v] += A[i0+r, p]·B[p, v]`
    /// over `p` in order from zero, then `α·acc + β·C` with two roundings, as the AVX-512 tile
    /// and the blocked kernel do. The strip's last vector is masked or not in a separate copy of
    /// the loop ([`tile_m`]), so the loop tests nothing but its count.
    ///
    /// # Safety
    /// As in [`block`], for the strip's rows `i0..i0+R`.
    #[inline(always)]
    unsafe fn tile<const R: usize, const V: usize, const EPI: bool, const UNIT: bool>(s: &Strip, i0: usize) {
        // SAFETY: the same contract, passed on.
        unsafe { if s.full { tile_m::<R, V, false, EPI, UNIT>(s, i0) } else { tile_m::<R, V, true, EPI, UNIT>(s, i0) } }
    }

    /// [`tile`], with the last vector masked when `MASKED`. The `R` rows of A are `R` pointers
    /// held apart and `p` steps two at a time: one counter and one offset per two steps, so
    /// the integer work does not take the FMA ports' slots (each accumulator still runs `p` in
    /// order).
    ///
    /// # Safety
    /// As in [`block`], for the strip's rows `i0..i0+R`; `MASKED` only when the strip's last
    /// vector is partial.
    ///
    /// The helpers below are functions built for AVX2 rather than closures: a closure is
    /// compiled without the caller's target features, so when the compiler did not inline one
    /// (it stopped doing so once the epilogue doubled the instantiations), every intrinsic in it
    /// became a call and the forward products ran at about half speed.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_m<const R: usize, const V: usize, const MASKED: bool, const EPI: bool, const UNIT: bool>(
        s: &Strip,
        i0: usize,
    ) {
        // SAFETY: every pointer below addresses an element of the strip's A rows i0..i0+R, B rows
        // 0..k or C rows i0..i0+R (or the epilogue's bias and ReLU output at those columns); the
        // last vector's lanes past C's edge are masked off (a masked load reads nothing there, a
        // masked store writes nothing).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            let rows: [*const f32; R] = std::array::from_fn(|r| s.a.add((i0 + r) * s.a_rs));
            let mut p = 0;
            while p + 2 <= s.k {
                step::<R, V, MASKED>(s, &rows, &mut acc, p);
                step::<R, V, MASKED>(s, &rows, &mut acc, p + 1);
                p += 2;
            }
            if p < s.k {
                step::<R, V, MASKED>(s, &rows, &mut acc, p);
            }
            let alpha = _mm256_set1_ps(s.alpha);
            let beta = _mm256_set1_ps(s.beta);
            let zero = _mm256_setzero_ps();
            // The epilogue ([`Epilogue`]): + bias after `α·acc + β·c`, then max(·, 0) to `relu`.
            let mut bias = [zero; V];
            if EPI && !s.bias.is_null() {
                for (v, b) in bias.iter_mut().enumerate() {
                    *b = load::<V, MASKED>(s.bias.add(8 * v), v, s.mask);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let row = s.c.add((i0 + r) * s.c_rs);
                for (v, &x) in acc_r.iter().enumerate() {
                    let dst = row.add(8 * v);
                    // α·acc + β·c, rounded after the product and after the sum; with
                    // `UNIT` (α = 1, β = 0 or 1) the same without the multiplies by 1.
                    let ax = if UNIT { x } else { _mm256_mul_ps(alpha, x) };
                    let mut y = if s.beta != 0.0 {
                        let c = load::<V, MASKED>(dst, v, s.mask);
                        _mm256_add_ps(ax, if UNIT { c } else { _mm256_mul_ps(beta, c) })
                    } else {
                        ax
                    };
                    if EPI && !s.bias.is_null() {
                        y = _mm256_add_ps(y, bias[v]);
                    }
                    store::<V, MASKED>(dst, v, s.mask, y);
                    if EPI && !s.relu.is_null() {
                        store::<V, MASKED>(s.relu.add((i0 + r) * s.c_rs + 8 * v), v, s.mask, _mm256_max_ps(y, zero));
                    }
                }
            }
        }
    }

    /// One step `p` of [`tile_m`]'s loop: B's row `p` (V vectors), then for each of the R rows
    /// of A its element `p` broadcast and multiplied into the row's accumulators.
    ///
    /// # Safety
    /// As in [`tile_m`], for `p < k`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step<const R: usize, const V: usize, const MASKED: bool>(
        s: &Strip,
        rows: &[*const f32; R],
        acc: &mut [[__m256; V]; R],
        p: usize,
    ) {
        // SAFETY: B's row p and A's element p of each row are inside the views (the caller's
        // contract); the last vector is masked when partial.
        unsafe {
            let bp = s.b.add(p * s.b_rs);
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = load::<V, MASKED>(bp.add(8 * v), v, s.mask);
            }
            for (acc_r, &row) in acc.iter_mut().zip(rows) {
                let x = _mm256_set1_ps(*row.add(p * s.a_cs));
                for (acc_rv, &b) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm256_fmadd_ps(x, b, *acc_rv);
                }
            }
        }
    }

    /// Vector `v` of a strip's row at `p`: under the lane mask when it is the last and partial.
    ///
    /// # Safety
    /// AVX2; the lanes the mask admits (all of them for a full vector) readable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load<const V: usize, const MASKED: bool>(p: *const f32, v: usize, mask: __m256i) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { if MASKED && v + 1 == V { _mm256_maskload_ps(p, mask) } else { _mm256_loadu_ps(p) } }
    }

    /// [`load`]'s store.
    ///
    /// # Safety
    /// AVX2; the lanes the mask admits writable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const V: usize, const MASKED: bool>(p: *mut f32, v: usize, mask: __m256i, y: __m256) {
        // SAFETY: the caller's contract.
        unsafe {
            if MASKED && v + 1 == V {
                _mm256_maskstore_ps(p, mask, y);
            } else {
                _mm256_storeu_ps(p, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused layer ([`gemm_direct_bias_relu`]) against the plain kernel over a C filled
    /// with the bias rows, then the ReLU as `relu_forward` writes it: the same bits in C and in
    /// X, at every level this CPU has, for layer shapes around the tile and vector widths, with
    /// `wᵀ` read through its copy and a B read in place; the bias holds −0, +0 and a NaN. Also
    /// checks what the fused call declines: a product large enough to split across threads.
    #[test]
    fn fused_bias_and_relu_match_the_plain_kernel_bitwise() {
        let levels: Vec<SimdLevel> =
            [SimdLevel::Avx2Fma, SimdLevel::Avx512].into_iter().filter(|&l| is_available(l)).collect();
        if levels.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 + FMA nor AVX-512, so the fused epilogue was not tested");
            return;
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let val = |seed: usize, len: usize| -> Vec<f32> {
            (0..len).map(|x| (((x * 7919 + seed * 104_729) % 1000) as f32 - 500.0) / 250.0).collect()
        };
        for &simd in &levels {
            for (m, k, o) in [
                (1, 8, 8),
                (5, 16, 8),
                (7, 64, 32),
                (128, 64, 32),
                (128, 32, 16),
                (128, 16, 8),
                (13, 9, 33),
                (6, 5, 70),
            ] {
                for transposed in [true, false] {
                    let a_data = val(1, m * k);
                    let w = val(2, o * k);
                    let mut bias = val(3, o);
                    bias[0] = -0.0;
                    if o > 2 {
                        bias[1] = 0.0;
                        bias[2] = f32::NAN;
                    }
                    let a = MatRef::row_major(&a_data, m, k);
                    let b = if transposed {
                        MatRef::transposed_of_row_major(&w, o, k)
                    } else {
                        MatRef::row_major(&w, k, o)
                    };
                    let mut want = vec![0.0f32; m * o];
                    for row in want.chunks_exact_mut(o) {
                        row.copy_from_slice(&bias);
                    }
                    gemm_direct(simd, 1.0, a, b, 1.0, MatMut::row_major(&mut want, m, o));
                    let want_x: Vec<f32> = want.iter().map(|&z| if z > 0.0 { z } else { 0.0 }).collect();
                    let (mut z, mut x) = (vec![f32::NAN; m * o], vec![f32::NAN; m * o]);
                    assert!(gemm_direct_bias_relu(simd, a, b, &bias, MatMut::row_major(&mut z, m, o), &mut x));
                    let what = format!("{simd}, m {m} k {k} n {o}, B transposed {transposed}");
                    for (name, got, want) in [("z", &z, &want), ("x", &x, &want_x)] {
                        if bits(got) != bits(want) {
                            let first: Vec<_> = got
                                .iter()
                                .zip(want.iter())
                                .enumerate()
                                .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
                                .take(4)
                                .collect();
                            panic!("{name}, {what}: first differing (index, (got, want)): {first:?}");
                        }
                    }
                }
            }
        }
        // A product that the plain kernel would split across threads is declined (when the
        // pool has two threads and splitting is allowed here).
        if rayon::current_num_threads() > 1 && crate::team::rayon_ok() {
            let (m, k, o) = (1024, 64, 32);
            let (a_data, w, bias) = (val(1, m * k), val(2, o * k), val(3, o));
            let (mut z, mut x) = (vec![0.0f32; m * o], vec![0.0f32; m * o]);
            let a = MatRef::row_major(&a_data, m, k);
            let b = MatRef::transposed_of_row_major(&w, o, k);
            assert!(!gemm_direct_bias_relu(levels[0], a, b, &bias, MatMut::row_major(&mut z, m, o), &mut x));
        }
    }

    /// [`copy_b`] against the element-by-element copy at every level this CPU has: a `wᵀ`
    /// (columns contiguous: the register transpose, at AVX2 and AVX-512 alike) with `w`'s rows
    /// packed (`cs = k`) and padded, and a B strided both ways (AVX-512's gathers), for k and n
    /// below, at and past multiples of 8.
    #[test]
    fn copied_b_matches_the_scalar_copy() {
        let levels: Vec<SimdLevel> =
            [SimdLevel::Avx2Fma, SimdLevel::Avx512].into_iter().filter(|&l| is_available(l)).collect();
        if levels.is_empty() {
            eprintln!("skipped: this CPU has no AVX2, so the transposes were not tested");
            return;
        }
        for &simd in &levels {
            for k in [1usize, 7, 8, 9, 16, 17, 64] {
                for n in [1usize, 7, 8, 9, 16, 33] {
                    for pad in [0usize, 3] {
                        for (rs, cs) in [(1, k + pad), (3 * n + pad, 3)] {
                            let len = (k - 1) * rs + (n - 1) * cs + 1;
                            let data: Vec<f32> = (0..len).map(|x| x as f32 * 0.5 - 7.0).collect();
                            let b = MatRef::new(&data, k, n, rs, cs);
                            let want: Vec<f32> = (0..k * n).map(|x| data[(x / n) * rs + (x % n) * cs]).collect();
                            let mut got = vec![f32::NAN; k * n];
                            copy_b(simd, b, &mut got);
                            assert_eq!(got, want, "{simd}: k {k}, n {n}, rs {rs}, cs {cs}");
                        }
                    }
                }
            }
        }
    }
}
