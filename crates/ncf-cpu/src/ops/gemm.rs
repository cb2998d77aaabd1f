//! General matrix multiply, `C ← α·A·B + β·C`, three ways.
//!
//! Shapes: `A (m, k)`, `B (k, n)`, `C (m, n)`. Every operand is a *strided view*: element `(r, c)`
//! lives at `data[r·rs + c·cs]`. A transpose is therefore a view with its strides swapped, never a
//! copy — the dense layer's `inp · wᵀ` reads `w` in place (see `ops/linear.rs`).
//!
//! * [`gemm_naive`]: the definition as a triple loop. Read it first; every other GEMM is tested
//!   against it.
//! * [`gemm_scratch`]: a BLIS-style kernel written here in portable Rust: cache blocking, packing,
//!   and a register-tiled micro-kernel that the compiler vectorizes. The rest of this file is
//!   mostly about it.
//! * [`gemm_library`]: `matrixmultiply::sgemm` / `dgemm`, the yardstick.
//!
//! ## Semantics shared by all three
//!
//! * `β = 0` *overwrites* C: whatever C held (NaN included) is never read.
//!   Otherwise C is scaled by β and the product is accumulated into it.
//! * Any of `m`, `n`, `k` may be 0; `k = 0` gives `C ← β·C` (zeros when `β = 0`).
//! * α multiplies the finished dot product (`α = 0` still reads A and B, so an `inf` in them
//!   gives NaN; this is not BLAS's "α = 0 means A and B are not touched").
//! * Inputs are validated before anything runs, and a bad call returns
//!   [`Error::ShapeMismatch`] naming `gemm` and the shapes instead of panicking:
//!   `a.cols == b.rows`, `c` is `(a.rows, b.cols)`, every view fits inside its slice, and C's
//!   view does not alias itself (see [`MatMut`] for exactly which layouts are accepted).
//!   A and B may alias anything (they are only read); `&mut` already keeps C apart from them.

use ncf_core::{Error, Float, Result};
use rayon::prelude::*;
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::LocalKey;

pub mod direct;
#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

/// A strided read-only matrix view: element `(r, c)` is `data[r*rs + c*cs]`.
///
/// Row-major `(rows, cols)` storage is `rs = cols, cs = 1`; its transpose is `rs = 1, cs = cols`
/// with rows and cols swapped. Strides of 0 (broadcasts) or views that revisit an element are
/// fine for the read-only operands.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A view with explicit strides.
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        MatRef { data, rows, cols, rs, cs }
    }
    /// `(rows, cols)` stored row-major (the last index is contiguous).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }
    /// `(rows, cols)` stored column-major (the first index is contiguous).
    pub fn col_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: 1, cs: rows }
    }
    /// `Xᵀ`, a `(cols_of_stored, rows_of_stored)` view, where `X (rows_of_stored, cols_of_stored)`
    /// is stored row-major in `data`. Nothing is copied.
    pub fn transposed_of_row_major(data: &'a [T], rows_of_stored: usize, cols_of_stored: usize) -> Self {
        MatRef::row_major(data, rows_of_stored, cols_of_stored).t()
    }
    /// The transpose: rows and cols swap, and so do their strides.
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// A strided mutable matrix view, same convention as [`MatRef`].
///
/// Because every element is written, a C view must not alias itself. Accepted: every layout in
/// which one dimension's stride steps over the whole extent of the other, i.e. (possibly padded)
/// row-major `cs ≥ 1, rs ≥ (cols−1)·cs + 1`, or (possibly padded) column-major
/// `rs ≥ 1, cs ≥ (rows−1)·rs + 1`. The stride of a dimension of extent 1 is never used and may be
/// anything. (Some exotic interleavings that happen not to alias are rejected too.)
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A view with explicit strides.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        MatMut { data, rows, cols, rs, cs }
    }
    /// `(rows, cols)` stored row-major.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, rs: cols, cs: 1 }
    }
    /// `(rows, cols)` stored column-major.
    pub fn col_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, rs: 1, cs: rows }
    }
    /// The transpose: rows and cols swap, and so do their strides.
    pub fn t(self) -> Self {
        MatMut { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// A shorter-lived mutable view of the same elements (so `self` can be used again later).
    pub fn rb_mut(&mut self) -> MatMut<'_, T> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
    /// A read-only view of the same elements.
    pub fn rb(&self) -> MatRef<'_, T> {
        MatRef { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing an implementation
// ---------------------------------------------------------------------------------------------

/// Which GEMM the dense layers call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmImpl {
    /// [`gemm_naive`]: the triple loop.
    Naive,
    /// [`gemm_scratch`]: the hand-written blocked kernel.
    #[default]
    Scratch,
    /// [`gemm_library`]: matrixmultiply.
    Library,
    /// For the dense layers, the fastest measured at NCF's shapes on the CPUs we benchmark:
    /// the scratch kernel for the forward products; for the two backward ones (`dinp = dout·w`
    /// with a short inner dimension, `dw += doutᵀ·inp`) the scratch kernel too on a CPU with
    /// AVX-512 (its [`direct`] kernel), matrixmultiply otherwise; see BENCHMARKS.md.
    /// Any other product runs on the scratch kernel. [`GemmImpl::forward`] and
    /// [`GemmImpl::backward`] resolve it.
    Auto,
}

impl GemmImpl {
    /// Every concrete implementation, in the order reports list them ([`GemmImpl::Auto`] is a
    /// choice among them).
    pub const ALL: [GemmImpl; 3] = [GemmImpl::Naive, GemmImpl::Scratch, GemmImpl::Library];

    /// The name that [`FromStr`] accepts: `naive`, `scratch`, `library` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            GemmImpl::Naive => "naive",
            GemmImpl::Scratch => "scratch",
            GemmImpl::Library => "library",
            GemmImpl::Auto => "auto",
        }
    }

    /// The implementation a dense layer's forward product uses.
    pub fn forward(self) -> GemmImpl {
        if self == GemmImpl::Auto { GemmImpl::Scratch } else { self }
    }

    /// The implementation a dense layer's backward products use.
    pub fn backward(self) -> GemmImpl {
        match self {
            // With AVX-512 the scratch GEMM's direct kernel beats matrixmultiply at every
            // backward shape of NCF; with AVX2 only, matrixmultiply wins them.
            GemmImpl::Auto if Simd::best() == Simd::Avx512 => GemmImpl::Scratch,
            GemmImpl::Auto => GemmImpl::Library,
            other => other,
        }
    }
}

impl fmt::Display for GemmImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GemmImpl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GemmImpl::ALL.into_iter().chain([GemmImpl::Auto]).find(|g| g.name().eq_ignore_ascii_case(s.trim())).ok_or_else(
            || Error::invalid("gemm", "impl", format!("unknown GEMM `{s}`; expected naive, scratch, library or auto")),
        )
    }
}

/// `C ← α·A·B + β·C` with the chosen implementation. See the module docs for the semantics.
pub fn gemm<T: CpuFloat>(imp: GemmImpl, alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    match imp {
        GemmImpl::Naive => gemm_naive(alpha, a, b, beta, c),
        GemmImpl::Scratch | GemmImpl::Auto => gemm_scratch(alpha, a, b, beta, c),
        GemmImpl::Library => gemm_library(alpha, a, b, beta, c),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// How many elements a `(rows, cols)` view with strides `(rs, cs)` needs: its largest index + 1,
/// or `None` if that does not fit in a `usize`.
fn needed_len(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?)?.checked_add(1)
}

#[inline]
fn check_fits(tensor: &'static str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    let need = needed_len(rows, cols, rs, cs);
    if need.is_some_and(|need| need <= len) {
        return Ok(());
    }
    let need = need.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
    Err(Error::shape(
        "gemm",
        tensor,
        format!("{tensor} ({rows}, {cols}) with strides ({rs}, {cs}) needs a slice of at least {need} elements"),
        format!("a slice of {len} elements"),
    ))
}

/// True when the `(rows, cols)` layout is row-major-like: every row is a run of indices that
/// ends before the next row starts (`rs ≥ (cols−1)·cs + 1`, `cs ≥ 1`). An empty view, or a single
/// row, qualifies whatever its strides. Call only on views that fit their slice (so the product
/// cannot overflow).
fn rows_are_disjoint_runs(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    match cols {
        _ if rows <= 1 => true,
        0 => true,
        1 => rs >= 1,
        _ => cs >= 1 && rs > (cols - 1) * cs,
    }
}

/// Checks the shapes and bounds of a GEMM call (see the module docs).
fn validate<T>(a: &MatRef<T>, b: &MatRef<T>, c: &MatMut<T>) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return Err(Error::shape(
            "gemm",
            "B",
            format!("A ({m}, {k}) · B ({}, {n}) needs B.rows = {k}", b.rows),
            format!("B ({}, {n})", b.rows),
        ));
    }
    if (c.rows, c.cols) != (m, n) {
        return Err(Error::shape(
            "gemm",
            "C",
            format!("A ({m}, {k}) · B ({k}, {n}) needs C ({m}, {n})"),
            format!("C ({}, {})", c.rows, c.cols),
        ));
    }
    check_fits("A", a.data.len(), a.rows, a.cols, a.rs, a.cs)?;
    check_fits("B", b.data.len(), b.rows, b.cols, b.rs, b.cs)?;
    check_fits("C", c.data.len(), c.rows, c.cols, c.rs, c.cs)?;
    if !rows_are_disjoint_runs(c.rows, c.cols, c.rs, c.cs) && !rows_are_disjoint_runs(c.cols, c.rows, c.cs, c.rs) {
        return Err(Error::shape(
            "gemm",
            "C",
            format!(
                "C ({m}, {n}) with non-overlapping strides: rs ≥ (cols−1)·cs + 1 or cs ≥ (rows−1)·rs + 1, \
                 so that every element has its own slot"
            ),
            format!("strides ({}, {})", c.rs, c.cs),
        ));
    }
    Ok(())
}

/// `C ← β·C`, the whole GEMM when `k = 0`. `β = 0` writes zeros without reading C.
fn scale_c<T: Float>(beta: T, c: MatMut<T>) {
    for i in 0..c.rows {
        for j in 0..c.cols {
            let x = &mut c.data[i * c.rs + j * c.cs];
            *x = if beta == T::ZERO { T::ZERO } else { beta * *x };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Naive
// ---------------------------------------------------------------------------------------------

/// `C ← α·A·B + β·C` by the definition: `C[i,j] = α·Σ_p A[i,p]·B[p,j] + β·C[i,j]`.
///
/// One dot product per element of C, `p` in increasing order. It reads B down a column with
/// stride `b.rs`, so it is cache-hostile and runs at a small fraction of peak; it is the reference
/// the fast kernels are tested against.
pub fn gemm_naive<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    validate(&a, &b, &c)?;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut s = T::ZERO;
            for p in 0..a.cols {
                s += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
            }
            let x = &mut c.data[i * c.rs + j * c.cs];
            *x = if beta == T::ZERO { alpha * s } else { alpha * s + beta * *x };
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Library
// ---------------------------------------------------------------------------------------------

/// `C ← α·A·B + β·C` with `matrixmultiply::sgemm` / `dgemm` (single-threaded; it detects
/// AVX-512 / AVX2+FMA at run time, as [`gemm_scratch`] does).
pub fn gemm_library<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    validate(&a, &b, &c)?;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c);
        return Ok(());
    }
    // A stride is only ever multiplied by an index of its own dimension, so the stride of a
    // dimension of extent 1 is irrelevant; replace it by 1 so that a huge unused stride cannot
    // wrap when converted to `isize`. Every other stride is < its slice's length ≤ isize::MAX.
    let st = |extent: usize, stride: usize| if extent <= 1 { 1 } else { stride as isize };
    // SAFETY: `validate` checked that every index `r·rs + c·cs` of A, B and C (r < rows, c < cols)
    // lies inside its slice, and that C's view has a distinct slot per element; matrixmultiply
    // reads/writes exactly those elements. `m, n, k > 0`. C is a `&mut` borrow, so it overlaps
    // neither A nor B, and all three borrows outlive this call.
    unsafe {
        T::library_gemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            st(m, a.rs),
            st(k, a.cs),
            b.data.as_ptr(),
            st(k, b.rs),
            st(n, b.cs),
            beta,
            c.data.as_mut_ptr(),
            st(m, c.rs),
            st(n, c.cs),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Scratch: the blocked, packed, register-tiled kernel
// ---------------------------------------------------------------------------------------------
//
// Where the time goes in `C += A·B` is memory traffic, not arithmetic: the naive loop loads two
// numbers per multiply-add. A modern core can issue two 8-wide FMAs per cycle but only two or
// three loads, so the kernel must reuse every loaded value many times from registers. The BLIS
// design gets there in three steps:
//
// 1. **Register tile (micro-kernel).** Compute an `MR × NR` tile of C at once, keeping its
//    `MR·NR` partial sums in registers for the whole k loop. Per step `p` it loads `MR` values
//    of A and `NR` values of B and does `MR·NR` multiply-adds: at 6×16 (f32, AVX2) that is 6
//    broadcasts and 2 vector loads for 12 vector FMAs, so the FMA units, not the loads, set the
//    pace. Several tile shapes are compiled; each call picks the one that pads C least
//    ([`pick_tile`]).
// 2. **Packing.** The micro-kernel wants, for each `p`, its `MR` values of A and `NR` values of B
//    *next to each other*. Whatever the strides of A and B (transposed or not), we copy
//    ("pack") them once into that order: A into slivers of `MR` rows, B into slivers of `NR`
//    columns, zero-padding the last sliver. The micro-kernel then streams through contiguous
//    memory, and edge tiles need no special code.
// 3. **Cache blocking.** Packing costs a pass over the data, so it must pay for itself: we pack
//    a `KC × NC` panel of B (reused by every row block of C) and an `MC × KC` block of A (reused
//    by every column sliver of that B panel). KC is chosen so that one B sliver (KC × NR) stays in
//    L1 while it sweeps the A block, and MC so that the packed A block stays in L2.
//
// The loops, outermost first (C is split along n by NC, along k by KC, along m by MC, then into
// NR- and MR-wide tiles):
//
//     for jc in (0..n).step_by(NC)              B panel columns
//       for pc in (0..k).step_by(KC)            k block: pack B[pc.., jc..] → B̃  (KC × NC)
//         for ic in (0..m).step_by(MC)          ← parallel: row blocks of C are independent
//           pack A[ic.., pc..] → Ã (MC × KC)
//           for jr in (0..NC).step_by(NR)       one B̃ sliver, stays in L1
//             for ir in (0..MC).step_by(MR)     one Ã sliver
//               micro-kernel: C[ic+ir.., jc+jr..] (MR × NR) = α·Ã_ir·B̃_jr + β·C
//
// Determinism: every element C[i,j] is the sum over k blocks, in order, of one register
// accumulator that runs `p` in order. Nothing about that depends on which thread ran the row
// block, on MC, or on whether the tile was at an edge (edges compute the full zero-padded tile and
// store only the valid part), so the result is bit-identical for any thread count.
// (It does depend on KC and on the instruction set: FMA rounds once where mul+add rounds twice.)

/// The instruction sets that [`gemm_scratch`] has a compiled micro-kernel for.
///
/// The blocked kernel is plain Rust; it is compiled once per level, with the matching
/// `#[target_feature]`s enabled, and [`Simd::best`] picks one at run time. That way the binary
/// runs on any x86-64 (or any other architecture, as `Portable`) without `-C target-cpu=native`.
///
/// The AVX-512 level is the [`direct`] kernel (explicit intrinsics, no packing) for the skinny
/// products that suit it ([`direct::suits`]: C at most [`direct::MAX_N`] columns wide, which is
/// every dense layer of NCF), and the AVX2 blocked kernel for everything else. The blocked kernel
/// has no AVX-512 build: on AMD Zen 4 a 512-bit FMA occupies both 256-bit FMA pipes, so an
/// AVX-512 build of it measured at best equal to AVX2, and the auto-vectorizer was fragile with
/// 32 registers (tiles such as 8×32 or 16×16 were not fully unrolled, and LLVM vectorized across
/// rows with gathers and scatters instead, at 2 GFLOP/s). Zen 5 and Intel Xeons have full-width
/// 512-bit FMA units, where AVX-512 doubles the peak; the direct kernel is where that pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    /// No extra target features (SSE2 on x86-64); multiply and add are separate, since without
    /// hardware FMA `mul_add` is a slow library call.
    Portable,
    /// AVX2 + FMA: sixteen 256-bit registers.
    Avx2Fma,
    /// AVX-512F (with AVX2 + FMA): thirty-two 512-bit registers. Skinny products run on the
    /// [`direct`] kernel, the rest on the AVX2 blocked kernel.
    Avx512,
}

impl Simd {
    /// Every level, slowest first.
    pub const ALL: [Simd; 3] = [Simd::Portable, Simd::Avx2Fma, Simd::Avx512];

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Simd::Avx2Fma.is_available() && direct::is_available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available level, detected once and then cached.
    pub fn best() -> Simd {
        static BEST: AtomicU8 = AtomicU8::new(u8::MAX);
        let cached = BEST.load(Ordering::Relaxed);
        if let Some(&s) = Simd::ALL.get(cached as usize) {
            return s;
        }
        let best = Simd::ALL.into_iter().rev().find(|s| s.is_available()).unwrap_or(Simd::Portable);
        BEST.store(best as u8, Ordering::Relaxed);
        best
    }

    /// The level whose blocked kernel this level uses (AVX-512 has none of its own).
    fn blocked(self) -> Simd {
        if self == Simd::Avx512 { Simd::Avx2Fma } else { self }
    }
}

/// Cache-block sizes, in elements (see the loop nest above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Rows of A packed at a time (a multiple of MR).
    pub mc: usize,
    /// Depth of a block: columns of A / rows of B packed at a time.
    pub kc: usize,
    /// Columns of B packed at a time (a multiple of NR).
    pub nc: usize,
}

/// Below this many flops (`2·m·n·k`) the scratch GEMM runs on the calling thread only.
///
/// Splitting a small product costs more than the fork: the second core must pull the packed B
/// panel and its rows of C out of the first core's cache (rayon does not pin a row block to a
/// thread), microseconds against a product that takes ten. Measured on a 2-core AMD EPYC
/// (Zen 4), f32, 2 threads vs 1: the model's 1-Mflop layer shapes range from +45% to −50%;
/// 2-Mflop products gain 5–40%; 4-Mflop and up gain 40–70%.
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// `C ← α·A·B + β·C` with the hand-written blocked kernel on the best instruction set this CPU has
/// ([`Simd::best`]); parallel over row blocks of C on the current rayon pool when the product is
/// large enough ([`PAR_MIN_FLOPS`]). Bit-identical results for any thread count.
pub fn gemm_scratch<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    gemm_scratch_with(Simd::best(), alpha, a, b, beta, c)
}

/// [`gemm_scratch`] with an explicit instruction-set level (to compare levels, or test them all).
/// Asking for a level this CPU lacks returns [`Error::InvalidArgument`].
pub fn gemm_scratch_with<T: CpuFloat>(
    simd: Simd,
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: MatMut<T>,
) -> Result<()> {
    scratch(simd, None, T::BLOCKING, alpha, a, b, beta, c)
}

/// A micro-tile shape that [`gemm_scratch`] has compiled, see [`CpuFloat::tiles`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    /// Rows of C per micro-tile.
    pub mr: usize,
    /// Columns of C per micro-tile.
    pub nr: usize,
    /// Measured speed on large products, relative to the fastest tile of the list.
    pub speed: f64,
}

/// Picks the tile that wastes least: the one with the smallest zero-padded area
/// `⌈m/MR⌉·MR × ⌈n/NR⌉·NR`, divided by its relative speed.
///
/// On big products every tile pads a negligible fraction, so the fastest wins. On the model's
/// small ones the padding decides: 6×16 tiles on a `(256, 8)` output compute twice the
/// elements they keep, 8×8 tiles none.
///
/// `#[inline(always)]` so that, called on a constant list, the divisions by MR and NR become
/// multiplications: this runs on every call, and the model's calls take microseconds.
#[inline(always)]
fn pick_tile(tiles: &[Tile], m: usize, n: usize) -> usize {
    let area = |t: &Tile| (m.div_ceil(t.mr) * t.mr) as f64 * (n.div_ceil(t.nr) * t.nr) as f64;
    let mut best = 0;
    for (i, t) in tiles.iter().enumerate().skip(1) {
        // area_i / speed_i < area_best / speed_best, without dividing
        if area(t) * tiles[best].speed < area(&tiles[best]) * t.speed {
            best = i;
        }
    }
    best
}

/// The driver behind [`gemm_scratch`]: validates, handles the empty cases, picks the micro-tile
/// (`tile` = an index into [`CpuFloat::tiles`], or `None` for [`pick_tile`]), then runs the
/// loop nest described above.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scratch<T: CpuFloat>(
    simd: Simd,
    tile: Option<usize>,
    blocking: Blocking,
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: MatMut<T>,
) -> Result<()> {
    validate(&a, &b, &c)?;
    if !simd.is_available() {
        return Err(Error::invalid("gemm", "simd", format!("{simd:?} is not supported by this CPU")));
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c);
        return Ok(());
    }
    // The driver splits C into blocks of whole rows, which must be disjoint runs of `c.data`.
    // If C is column-major-like instead, compute Cᵀ = Bᵀ·Aᵀ: same numbers (each product and each
    // sum is the same), and Cᵀ's rows are C's columns.
    let (a, b, mut c) =
        if rows_are_disjoint_runs(c.rows, c.cols, c.rs, c.cs) { (a, b, c) } else { (b.t(), a.t(), c.t()) };
    // A forced tile (tests, benches) means the blocked kernel.
    if tile.is_none() && simd == Simd::Avx512 && T::direct_gemm(alpha, a, b, beta, c.rb_mut()) {
        return Ok(());
    }
    let simd = simd.blocked();
    let tile = tile.unwrap_or_else(|| T::pick_tile(simd, c.rows, c.cols));
    T::blocked_with_tile(simd, tile, blocking, alpha, a, b, beta, c);
    Ok(())
}

/// What every row-block task of one `(jc, pc)` step shares.
struct Step<'a, T, const NR: usize> {
    a: MatRef<'a, T>,
    /// The packed `kc × nc` panel of B: `nc / NR` slivers (rounded up) of `kc` rows of `NR`.
    b_packed: &'a [[T; NR]],
    /// First k index of this block, and its depth.
    pc: usize,
    kc: usize,
    /// First column of C of this panel, and its width.
    jc: usize,
    nc: usize,
    /// Rows per row block, C's strides.
    mc: usize,
    c_rs: usize,
    c_cs: usize,
    alpha: T,
    /// β for the first k block, 1 for the later ones (they accumulate onto the first).
    beta: T,
}

/// The loop nest. Preconditions (established by [`scratch`]): validated, `m, n, k > 0`, and C's
/// rows are disjoint runs of `c.data`.
fn blocked<T: CpuFloat, const MR: usize, const NR: usize>(
    simd: Simd,
    blocking: Blocking,
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: MatMut<T>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let Blocking { mc, kc: kc_max, nc: nc_max } = blocking;
    // With a single row, rs is never used; give it the value that makes "row = run of rs slots" true.
    let c_rs = if m == 1 { (n - 1) * c.cs + 1 } else { c.rs };
    // (Saturating: with stride-0 "broadcast" views, m·n·k is not bounded by any slice length.)
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let threads = if flops >= PAR_MIN_FLOPS && crate::team::rayon_ok() { rayon::current_num_threads() } else { 1 };
    // On several threads, cut C into a multiple of `threads` row blocks of about equal height, so
    // the threads finish together. (MC never changes the result: it only decides which thread
    // computes which rows.)
    let mc = if threads > 1 {
        let blocks = m.div_ceil(mc).next_multiple_of(threads);
        m.div_ceil(blocks).next_multiple_of(MR)
    } else {
        mc
    };
    let n_row_blocks = m.div_ceil(mc);
    let b_len = kc_max.min(k) * nc_max.min(n).next_multiple_of(NR);
    let a_len = kc_max.min(k) * mc.min(m).next_multiple_of(MR);

    with_pack_buffer(T::b_pack_buffer(), b_len, |b_buf| {
        for jc in (0..n).step_by(nc_max) {
            let nc = nc_max.min(n - jc);
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                // Pack B[pc .. pc+kc, jc .. jc+nc] into slivers of NR columns.
                let b_packed = &mut b_buf.as_chunks_mut::<NR>().0[..nc.div_ceil(NR) * kc];
                let pack_b_sliver = |(s, sliver): (usize, &mut [[T; NR]])| {
                    let j0 = jc + s * NR;
                    // A column of B is a "lane", its k index the "depth".
                    pack_sliver_for(simd, b.data, pc * b.rs + j0 * b.cs, NR.min(n - j0), b.cs, b.rs, sliver);
                };
                if threads > 1 {
                    b_packed.par_chunks_mut(kc).enumerate().for_each(pack_b_sliver);
                } else {
                    b_packed.chunks_mut(kc).enumerate().for_each(pack_b_sliver);
                }
                let step = Step {
                    a,
                    b_packed,
                    pc,
                    kc,
                    jc,
                    nc,
                    mc,
                    c_rs,
                    c_cs: c.cs,
                    alpha,
                    beta: if pc == 0 { beta } else { T::ONE },
                };
                // Each row block of C is a disjoint run of `mc·rs` slots of `c.data` (rows are
                // disjoint runs of `rs` slots), so plain `chunks_mut` hands every task its own rows.
                let task = |(blk, c_rows): (usize, &mut [T])| {
                    with_pack_buffer(T::a_pack_buffer(), a_len, |a_buf| {
                        row_block_for::<T, MR, NR>(simd, &step, blk * mc, a_buf, c_rows);
                    })
                };
                let chunk = mc * c_rs;
                if threads > 1 {
                    c.data.par_chunks_mut(chunk).take(n_row_blocks).enumerate().for_each(task);
                } else {
                    c.data.chunks_mut(chunk).take(n_row_blocks).enumerate().for_each(task);
                }
            }
        }
    });
}

/// One task: pack the rows `r0 ..` of A's current k block into `a_buf`, then multiply that block
/// with the packed B panel into `c_rows` (the slice that starts at row `r0` of C).
///
/// `#[inline(always)]` so that each `#[target_feature]` wrapper below gets its own copy, compiled
/// for its instruction set, with the micro-kernel inlined.
#[inline(always)]
fn row_block<T: CpuFloat, const MR: usize, const NR: usize, const FMA: bool>(
    s: &Step<T, NR>,
    r0: usize,
    a_buf: &mut [T],
    c_rows: &mut [T],
) {
    let mc = s.mc.min(s.a.rows - r0);
    let a_packed = &mut a_buf.as_chunks_mut::<MR>().0[..mc.div_ceil(MR) * s.kc];
    for (sl, sliver) in a_packed.chunks_mut(s.kc).enumerate() {
        let i0 = r0 + sl * MR;
        // A row of A is a "lane", its k index the "depth".
        pack_sliver(s.a.data, i0 * s.a.rs + s.pc * s.a.cs, MR.min(s.a.rows - i0), s.a.rs, s.a.cs, sliver);
    }
    let c = &mut c_rows[s.jc * s.c_cs..];
    // jr outside ir: one B sliver (kc × NR) stays in L1 while all the A slivers stream past it.
    for (jr, b_sliver) in s.b_packed.chunks_exact(s.kc).enumerate() {
        let (j0, nr) = (jr * NR, NR.min(s.nc - jr * NR));
        for (ir, a_sliver) in a_packed.chunks_exact(s.kc).enumerate() {
            let (i0, mr) = (ir * MR, MR.min(mc - ir * MR));
            let ab = micro_kernel::<T, MR, NR, FMA>(a_sliver, b_sliver);
            store_tile(ab, &mut c[i0 * s.c_rs + j0 * s.c_cs..], s.c_rs, s.c_cs, mr, nr, s.alpha, s.beta);
        }
    }
}

/// The micro-kernel: the `MR × NR` product `Ã_sliver · B̃_sliver` over one k block.
///
/// `a[p]` holds column `p` of an `MR`-row sliver of A, `b[p]` row `p` of an `NR`-column sliver of
/// B. Each step is an outer product added into `MR·NR` accumulators. Written with fixed-size
/// arrays, the `i` and `j` loops unroll completely, the accumulators live in registers, and the
/// `j` loop becomes `NR / lanes` vector FMAs per row. For 6×16 f32 on AVX2 the `p` loop compiles
/// to 2 `vmovups` (the B row), 6 `vbroadcastss` (the A column) and 12 `vfmadd231ps` into twelve
/// accumulator registers, plus loop control. (Check it with `perf annotate` or cargo-show-asm
/// after changing a tile: if LLVM does not unroll the row loop, it vectorizes the wrong loop and
/// runs 10–50× slower; see the notes on tiles at the end of this file.) Each accumulator is an
/// independent chain in `p` order: the compiler may not reassociate floats, so it doesn't.
#[inline(always)]
fn micro_kernel<T: CpuFloat, const MR: usize, const NR: usize, const FMA: bool>(
    a: &[[T; MR]],
    b: &[[T; NR]],
) -> [[T; NR]; MR] {
    let mut ab = [[T::ZERO; NR]; MR];
    for (ap, bp) in a.iter().zip(b) {
        for i in 0..MR {
            for j in 0..NR {
                ab[i][j] = if FMA { ap[i].mul_add(bp[j], ab[i][j]) } else { ab[i][j] + ap[i] * bp[j] };
            }
        }
    }
    ab
}

/// `C_tile ← α·ab + β·C_tile` for the valid `mr × nr` corner of a micro-tile (`β = 0` does not
/// read C). `c` starts at the tile's top-left element.
///
/// Full tiles with contiguous rows (the common case) take a path whose loop bounds are all
/// compile-time constants: it unrolls completely, so `ab` never leaves the registers. Edge tiles
/// (and strided C) go through memory, one element at a time; they compute the same `ab`.
#[inline(always)]
fn store_tile<T: CpuFloat, const MR: usize, const NR: usize>(
    ab: [[T; NR]; MR],
    c: &mut [T],
    rs: usize,
    cs: usize,
    mr: usize,
    nr: usize,
    alpha: T,
    beta: T,
) {
    if mr == MR && nr == NR && cs == 1 {
        for (i, ab_row) in ab.iter().enumerate() {
            let row = &mut c[i * rs..i * rs + NR];
            if beta == T::ZERO {
                for j in 0..NR {
                    row[j] = alpha * ab_row[j];
                }
            } else {
                for j in 0..NR {
                    row[j] = alpha * ab_row[j] + beta * row[j];
                }
            }
        }
    } else {
        store_edge(ab, c, rs, cs, mr, nr, alpha, beta);
    }
}

/// The general case of [`store_tile`], kept out of line so that its run-time loop bounds do not
/// force the full-tile path to keep `ab` in memory.
#[inline(never)]
fn store_edge<T: CpuFloat, const MR: usize, const NR: usize>(
    ab: [[T; NR]; MR],
    c: &mut [T],
    rs: usize,
    cs: usize,
    mr: usize,
    nr: usize,
    alpha: T,
    beta: T,
) {
    for (i, ab_row) in ab.iter().enumerate().take(mr) {
        for (j, &v) in ab_row.iter().enumerate().take(nr) {
            let x = &mut c[i * rs + j * cs];
            *x = if beta == T::ZERO { alpha * v } else { alpha * v + beta * *x };
        }
    }
}

/// Packs one sliver: `w ≤ W` "lanes" (rows of A, or columns of B) over `dst.len()` depth steps
/// (the k index), into `dst[p][l] = data[base + l·lane_stride + p·depth_stride]`; lanes `w..W`
/// are zero-filled so the micro-kernel can always compute a full tile.
#[inline(always)]
fn pack_sliver<T: Float, const W: usize>(
    data: &[T],
    base: usize,
    w: usize,
    lane_stride: usize,
    depth_stride: usize,
    dst: &mut [[T; W]],
) {
    let kc = dst.len();
    if w == W && lane_stride == 1 {
        // Each depth step is W contiguous values (A column-major, B row-major): a copy whose
        // length is a compile-time constant, so it becomes a few vector moves, not a memcpy call.
        for (p, d) in dst.iter_mut().enumerate() {
            let start = base + p * depth_stride;
            d.copy_from_slice(&data[start..start + W]);
        }
    } else if depth_stride == 1 {
        // Each lane is a contiguous run of kc values (A row-major, B = Wᵀ): a transpose.
        for l in 0..w {
            let run = &data[base + l * lane_stride..][..kc];
            dst.iter_mut().zip(run).for_each(|(d, &x)| d[l] = x);
        }
        if w < W {
            dst.iter_mut().for_each(|d| d[w..].fill(T::ZERO));
        }
    } else {
        // Anything else, including edge slivers of a column-major A: one element at a time.
        for (p, d) in dst.iter_mut().enumerate() {
            for (l, x) in d.iter_mut().enumerate() {
                *x = if l < w { data[base + l * lane_stride + p * depth_stride] } else { T::ZERO };
            }
        }
    }
}

// One copy of `row_block` per instruction set. The wrappers are safe functions, but calling a
// `#[target_feature]` function is `unsafe` unless the caller has the same features: the caller
// must have checked that the CPU supports them.

/// `row_block` compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_block_avx2_fma<T: CpuFloat, const MR: usize, const NR: usize>(
    s: &Step<T, NR>,
    r0: usize,
    a_buf: &mut [T],
    c_rows: &mut [T],
) {
    row_block::<T, MR, NR, true>(s, r0, a_buf, c_rows)
}

/// `pack_sliver` compiled for AVX2 (wider copies).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pack_sliver_avx2<T: Float, const W: usize>(
    data: &[T],
    base: usize,
    w: usize,
    lane_stride: usize,
    depth_stride: usize,
    dst: &mut [[T; W]],
) {
    pack_sliver(data, base, w, lane_stride, depth_stride, dst)
}

/// Runs `pack_sliver` compiled for `simd`.
fn pack_sliver_for<T: Float, const W: usize>(
    simd: Simd,
    data: &[T],
    base: usize,
    w: usize,
    lane_stride: usize,
    depth_stride: usize,
    dst: &mut [[T; W]],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma if Simd::Avx2Fma.is_available() => {
            // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
            unsafe { pack_sliver_avx2(data, base, w, lane_stride, depth_stride, dst) }
        }
        _ => pack_sliver(data, base, w, lane_stride, depth_stride, dst),
    }
}

/// Runs `row_block` compiled for `simd`.
#[inline(always)]
fn row_block_for<T: CpuFloat, const MR: usize, const NR: usize>(
    simd: Simd,
    s: &Step<T, NR>,
    r0: usize,
    a_buf: &mut [T],
    c_rows: &mut [T],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma if Simd::Avx2Fma.is_available() => {
            // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
            unsafe { row_block_avx2_fma::<T, MR, NR>(s, r0, a_buf, c_rows) }
        }
        _ => row_block::<T, MR, NR, false>(s, r0, a_buf, c_rows),
    }
}

/// Lends `f` a 64-byte-aligned slice of `len` elements from a thread-local buffer, growing it if
/// needed: after the first calls, packing allocates nothing.
///
/// The buffer is *taken* out of its cell for the duration, not borrowed: if `f` re-enters (a rayon
/// worker waiting inside `f` may run another GEMM task), the inner call finds an empty cell and
/// allocates its own buffer instead of panicking on a double borrow.
fn with_pack_buffer<T: Float, R>(key: &'static LocalKey<Cell<Vec<T>>>, len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    const ALIGN: usize = 64;
    let slack = ALIGN / size_of::<T>();
    let mut buf = key.try_with(Cell::take).unwrap_or_default();
    if buf.len() < len + slack {
        buf = vec![T::ZERO; len + slack];
    }
    let offset = buf.as_ptr().align_offset(ALIGN).min(slack);
    let r = f(&mut buf[offset..offset + len]);
    let _ = key.try_with(|cell| cell.set(buf));
    r
}

// ---------------------------------------------------------------------------------------------
// The element types
// ---------------------------------------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A [`Float`] the CPU GEMMs support (`f32`, `f64`): ties the type to matrixmultiply's
/// `sgemm`/`dgemm`, to its scratch micro-tiles, and to its packing buffers. Sealed: the hidden
/// methods are internals of this file.
pub trait CpuFloat: Float + sealed::Sealed {
    /// `self·a + b` with a single rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;

    /// Cache blocking used by [`gemm_scratch`] for this type.
    const BLOCKING: Blocking;

    /// The micro-tiles compiled for `simd`, fastest first; [`gemm_scratch`] picks one per call.
    fn tiles(simd: Simd) -> &'static [Tile];

    /// The index in `tiles(simd)` of the tile [`gemm_scratch`] uses for an `(m, n)` C.
    fn pick_tile(simd: Simd, m: usize, n: usize) -> usize;

    /// Runs the loop nest with tile `tiles(simd)[tile]`. Call only on validated, non-empty
    /// inputs whose C rows are disjoint runs (as [`gemm_scratch`] does).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn blocked_with_tile(
        simd: Simd,
        tile: usize,
        blocking: Blocking,
        alpha: Self,
        a: MatRef<Self>,
        b: MatRef<Self>,
        beta: Self,
        c: MatMut<Self>,
    );

    /// Runs the product on the AVX-512 [`direct`] kernel and returns `true` if it suits it
    /// (f32 only; f64 returns `false`). Call only on validated, non-empty inputs, on a CPU with
    /// [`Simd::Avx512`].
    #[doc(hidden)]
    fn direct_gemm(alpha: Self, a: MatRef<Self>, b: MatRef<Self>, beta: Self, c: MatMut<Self>) -> bool;

    /// This thread's packing buffer for A blocks.
    #[doc(hidden)]
    fn a_pack_buffer() -> &'static LocalKey<Cell<Vec<Self>>>;
    /// This thread's packing buffer for B panels.
    #[doc(hidden)]
    fn b_pack_buffer() -> &'static LocalKey<Cell<Vec<Self>>>;

    /// `matrixmultiply::sgemm` or `dgemm`.
    ///
    /// # Safety
    /// As for `matrixmultiply::sgemm`: every element of the three strided views must be in
    /// bounds of a live allocation, C's elements distinct and not overlapping A or B.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn library_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

// Micro-tiles `(MR, NR, relative speed)` per type and level, first = default, measured with the
// `gemm` bench on a 2-core AMD EPYC (Zen 4):
//
// * AVX2, f32: 6×16 uses 12 of the 16 ymm registers for accumulators (2 per row) plus 2 for the B
//   row and 1 for the broadcast A value, the largest tile that does not spill; it runs at
//   ~100 GFLOP/s (≈ the core's peak) on big products. 4×16 has fewer rows to pad when m is small
//   (the weight gradient: m = layer width), 8×8 fewer columns when n ≤ 8 (the 16→8 and 16→1
//   layers); both are ~10% slower when nothing is padded. (12×8 was never the best; 16×8 and 8×16
//   fell to 7–35 GFLOP/s: like the AVX-512 tiles, their row loops were not fully unrolled.)
// * AVX2, f64: the same shapes at half the width (4 doubles per ymm).
// * Portable: SSE2's 16 xmm registers hold 4 floats, so 4×8 (f32) and 4×4 (f64) accumulators.
//
// Blocking: KC = 256 keeps one B sliver (256 × 16 f32 = 16 KiB) plus one A sliver (6 KiB) in the
// 32 KiB L1; MC = 120 puts the packed A block (120 KiB) in the 1 MiB L2; NC = 1024 makes the B
// panel 1 MiB, for the L2/L3. Nearby values (MC 72–240, KC 192–512, NC 1024–4096) measured within
// noise on 512² to 2048² products. f64, same budget at twice the bytes: B sliver 16 KiB + A sliver
// 12 KiB in L1, MC = 96 → 192 KiB in L2, NC = 512 → 1 MiB.

macro_rules! impl_cpu_float {
    ($t:ty, $mm:path, blocking: $blk:expr, direct: $direct:expr,
     portable: [$(($pm:literal, $pn:literal, $ps:literal)),+],
     avx2: [$(($am:literal, $an:literal, $as:literal)),+]) => {
        impl CpuFloat for $t {
            #[inline(always)]
            fn mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }

            const BLOCKING: Blocking = $blk;

            fn tiles(simd: Simd) -> &'static [Tile] {
                match simd {
                    Simd::Portable => &[$(Tile { mr: $pm, nr: $pn, speed: $ps }),+],
                    Simd::Avx2Fma | Simd::Avx512 => &[$(Tile { mr: $am, nr: $an, speed: $as }),+],
                }
            }

            fn pick_tile(simd: Simd, m: usize, n: usize) -> usize {
                match simd {
                    Simd::Portable => pick_tile(&[$(Tile { mr: $pm, nr: $pn, speed: $ps }),+], m, n),
                    Simd::Avx2Fma | Simd::Avx512 => pick_tile(&[$(Tile { mr: $am, nr: $an, speed: $as }),+], m, n),
                }
            }

            fn blocked_with_tile(
                simd: Simd,
                tile: usize,
                blocking: Blocking,
                alpha: $t,
                a: MatRef<$t>,
                b: MatRef<$t>,
                beta: $t,
                c: MatMut<$t>,
            ) {
                // One `blocked::<MR, NR>` instantiation per listed tile; an index past the end
                // means the last tile.
                let tile = tile.min(Self::tiles(simd).len() - 1);
                let mut i = 0;
                match simd.blocked() {
                    Simd::Portable => {
                        $(
                            if tile <= i {
                                return blocked::<$t, $pm, $pn>(simd, blocking, alpha, a, b, beta, c);
                            }
                            i += 1;
                        )+
                    }
                    Simd::Avx2Fma | Simd::Avx512 => {
                        $(
                            if tile <= i {
                                return blocked::<$t, $am, $an>(Simd::Avx2Fma, blocking, alpha, a, b, beta, c);
                            }
                            i += 1;
                        )+
                    }
                }
                let _ = i;
            }

            fn direct_gemm(alpha: $t, a: MatRef<$t>, b: MatRef<$t>, beta: $t, c: MatMut<$t>) -> bool {
                $direct(alpha, a, b, beta, c)
            }

            fn a_pack_buffer() -> &'static LocalKey<Cell<Vec<$t>>> {
                thread_local!(static BUF: Cell<Vec<$t>> = const { Cell::new(Vec::new()) });
                &BUF
            }
            fn b_pack_buffer() -> &'static LocalKey<Cell<Vec<$t>>> {
                thread_local!(static BUF: Cell<Vec<$t>> = const { Cell::new(Vec::new()) });
                &BUF
            }

            unsafe fn library_gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: *const $t,
                rsa: isize,
                csa: isize,
                b: *const $t,
                rsb: isize,
                csb: isize,
                beta: $t,
                c: *mut $t,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from this function's contract, which is matrixmultiply's.
                unsafe { $mm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_cpu_float!(f32, matrixmultiply::sgemm, blocking: Blocking { mc: 120, kc: 256, nc: 1024 },
    direct: |alpha, a: MatRef<f32>, b: MatRef<f32>, beta, c: MatMut<f32>| {
        let ok = direct::suits(a.cols, b.cols, b.cs, c.cs);
        if ok {
            direct::gemm_direct(alpha, a, b, beta, c);
        }
        ok
    },
    portable: [(4, 8, 1.0)],
    avx2: [(6, 16, 1.0), (4, 16, 0.93), (8, 8, 0.85)]);
impl_cpu_float!(f64, matrixmultiply::dgemm, blocking: Blocking { mc: 96, kc: 256, nc: 512 },
    direct: |_, _, _, _, _| false,
    portable: [(4, 4, 1.0)],
    avx2: [(6, 8, 1.0), (4, 8, 0.93), (8, 4, 0.75)]);
