//! Which kernel runs: the [`GemmImpl`] a caller picks (naive, scratch, library, or auto for the
//! dense layers), and, inside the scratch GEMM, the AVX-512 [`direct`](super::direct) kernel or
//! the blocked one (`blocked.rs`) for a given product and [`SimdLevel`].

use super::blocked::{Blocking, blocked_level};
use super::view::{rows_are_disjoint_runs, scale_c, validate};
use super::{CpuFloat, MatMut, MatRef, gemm_library, gemm_naive};
use crate::simd::SimdLevel;
use ncf_core::{Error, Result};
use std::fmt;
use std::str::FromStr;

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
    /// AVX2 or AVX-512 (its [`direct`](super::direct) kernels), matrixmultiply without them;
    /// see BENCHMARKS.md. Any other product runs on the scratch kernel. [`GemmImpl::forward`]
    /// and [`GemmImpl::backward`] resolve it.
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
            // With AVX2 or AVX-512 the scratch GEMM's direct kernel beats matrixmultiply's
            // kernel for the same instruction set at every backward shape of NCF (1.16–3.6× on
            // AVX2); without them, matrixmultiply's packed kernel is the faster.
            GemmImpl::Auto if SimdLevel::best() >= SimdLevel::Avx2Fma => GemmImpl::Scratch,
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

/// `C ← α·A·B + β·C` with the chosen implementation. See the docs of `gemm.rs` for the
/// semantics.
pub fn gemm<T: CpuFloat>(imp: GemmImpl, alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    match imp {
        GemmImpl::Naive => gemm_naive(alpha, a, b, beta, c),
        GemmImpl::Scratch | GemmImpl::Auto => gemm_scratch(alpha, a, b, beta, c),
        GemmImpl::Library => gemm_library(alpha, a, b, beta, c),
    }
}

// ---------------------------------------------------------------------------------------------
// Inside the scratch GEMM: which kernel, on how many threads
// ---------------------------------------------------------------------------------------------

/// Below this many flops (`2·m·n·k`) the scratch GEMM runs on the calling thread only.
///
/// Splitting a small product costs more than the fork: the second core must pull the packed B
/// panel and its rows of C out of the first core's cache (rayon does not pin a row block to a
/// thread), microseconds against a product that takes ten. Timed two threads against one, the
/// model's 1-Mflop layer products sometimes gained and sometimes lost, while every product from
/// 2 Mflop up gained (the numbers are in BENCHMARKS.md). Both kernels, blocked and direct, use
/// this threshold.
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// `C ← α·A·B + β·C` with the hand-written kernels on the best instruction set this CPU has
/// ([`SimdLevel::best`]): on AVX-512 the [`direct`](super::direct) kernel for the skinny
/// products that suit it ([`direct::suits`](super::direct::suits)), the
/// blocked kernel (`blocked.rs`) for everything else. Parallel over row blocks of C on the
/// current rayon pool when the product is large enough ([`PAR_MIN_FLOPS`]). Bit-identical
/// results for any thread count.
pub fn gemm_scratch<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    gemm_scratch_with(SimdLevel::best(), alpha, a, b, beta, c)
}

/// [`gemm_scratch`] with an explicit instruction-set level (to compare levels, or test them all).
/// Asking for a level this CPU lacks returns [`Error::InvalidArgument`].
pub fn gemm_scratch_with<T: CpuFloat>(
    simd: SimdLevel,
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: MatMut<T>,
) -> Result<()> {
    scratch(simd, None, T::BLOCKING, alpha, a, b, beta, c)
}

/// The driver behind [`gemm_scratch`]: validates, handles the empty cases, sends the product to
/// the direct kernel if it suits it, and otherwise picks the micro-tile (`tile` = an index into
/// [`CpuFloat::tiles`], or `None` for the blocked kernel's `pick_tile`) and runs the blocked
/// kernel's loop nest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scratch<T: CpuFloat>(
    simd: SimdLevel,
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
    if tile.is_none() && T::direct_gemm(simd, alpha, a, b, beta, c.rb_mut()) {
        return Ok(());
    }
    let simd = blocked_level(simd);
    let tile = tile.unwrap_or_else(|| T::pick_tile(simd, c.rows, c.cols));
    T::blocked_with_tile(simd, tile, blocking, alpha, a, b, beta, c);
    Ok(())
}
