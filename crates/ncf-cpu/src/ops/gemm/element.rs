//! The element types the CPU GEMMs run on (`f32`, `f64`): [`CpuFloat`] ties each to
//! matrixmultiply's `sgemm`/`dgemm`, to the blocked kernel's micro-tiles and cache blocking,
//! to the direct kernel (f32 only), and to its packing buffers.

use super::blocked::{Blocking, Tile, blocked, blocked_level, pick_tile};
use super::{MatMut, MatRef, direct};
use crate::simd::SimdLevel;
use ncf_core::Float;
use std::cell::Cell;
use std::thread::LocalKey;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A [`Float`] the CPU GEMMs support (`f32`, `f64`): ties the type to matrixmultiply's
/// `sgemm`/`dgemm`, to its scratch micro-tiles, and to its packing buffers. Sealed: the hidden
/// methods are internals of the GEMM module.
pub trait CpuFloat: Float + sealed::Sealed {
    /// `self·a + b` with a single rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;

    /// Cache blocking used by [`gemm_scratch`](super::gemm_scratch) for this type.
    const BLOCKING: Blocking;

    /// The micro-tiles compiled for `simd`, fastest first; [`gemm_scratch`](super::gemm_scratch) picks one per call.
    fn tiles(simd: SimdLevel) -> &'static [Tile];

    /// The index in `tiles(simd)` of the tile [`gemm_scratch`](super::gemm_scratch) uses for an `(m, n)` C.
    fn pick_tile(simd: SimdLevel, m: usize, n: usize) -> usize;

    /// Runs the loop nest with tile `tiles(simd)[tile]`. Call only on validated, non-empty
    /// inputs whose C rows are disjoint runs (as [`gemm_scratch`](super::gemm_scratch) does).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn blocked_with_tile(
        simd: SimdLevel,
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
    /// [`SimdLevel::Avx512`].
    #[doc(hidden)]
    fn direct_gemm(simd: SimdLevel, alpha: Self, a: MatRef<Self>, b: MatRef<Self>, beta: Self, c: MatMut<Self>)
    -> bool;

    /// `C ← A·B + bias` (every row) and `x ← max(C, 0)` in one pass of the [`direct`] kernel
    /// ([`direct::gemm_direct_bias_relu`]), returning `true` if it ran; f64 and products the
    /// kernel would not run on this thread alone return `false`, having done nothing.
    #[doc(hidden)]
    fn direct_bias_relu(
        simd: SimdLevel,
        a: MatRef<Self>,
        b: MatRef<Self>,
        bias: &[Self],
        c: MatMut<Self>,
        x: &mut [Self],
    ) -> bool;

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

// Micro-tiles `(MR, NR, relative speed)` per type and level, first = default; the relative
// speeds come from the `gemm` bench (`GEMM_TABLE=all`, see BENCHMARKS.md for the measurements):
//
// * AVX2, f32: 6×16 uses 12 of the 16 ymm registers for accumulators (2 per row) plus 2 for the B
//   row and 1 for the broadcast A value, the largest tile that does not spill, so on big products
//   it keeps the FMA units busy. 4×16 has fewer rows to pad when m is small (the weight gradient:
//   m = layer width), 8×8 fewer columns when n ≤ 8 (the 16→8 and 16→1 layers); both are a little
//   slower when nothing is padded. (12×8 was never the best; 16×8 and 8×16 are not offered
//   because, like wider AVX-512 tiles, their row loops were not fully unrolled and they ran far
//   slower.)
// * AVX2, f64: the same shapes at half the width (4 doubles per ymm).
// * Portable: SSE2's 16 xmm registers hold 4 floats, so 4×8 (f32) and 4×4 (f64) accumulators.
//
// Blocking, sized for a 32 KiB L1 and a 1 MiB L2 per core: KC = 256 keeps one B sliver
// (256 × 16 f32 = 16 KiB) plus one A sliver (6 KiB) in L1; MC = 120 puts the packed A block
// (120 KiB) in L2; NC = 1024 makes the B panel 1 MiB, for the L2/L3. The result is not sensitive
// to these values: nearby ones timed within noise (BENCHMARKS.md). f64, same budget at twice the
// bytes: B sliver 16 KiB + A sliver 12 KiB in L1, MC = 96 → 192 KiB in L2, NC = 512 → 1 MiB.

macro_rules! impl_cpu_float {
    ($t:ty, $mm:path, blocking: $blk:expr, direct: $direct:expr, direct_bias_relu: $dbr:expr,
     portable: [$(($pm:literal, $pn:literal, $ps:literal)),+],
     avx2: [$(($am:literal, $an:literal, $as:literal)),+]) => {
        impl CpuFloat for $t {
            #[inline(always)]
            fn mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }

            const BLOCKING: Blocking = $blk;

            fn tiles(simd: SimdLevel) -> &'static [Tile] {
                match simd {
                    SimdLevel::Portable => &[$(Tile { mr: $pm, nr: $pn, speed: $ps }),+],
                    SimdLevel::Avx2Fma | SimdLevel::Avx512 => &[$(Tile { mr: $am, nr: $an, speed: $as }),+],
                }
            }

            fn pick_tile(simd: SimdLevel, m: usize, n: usize) -> usize {
                match simd {
                    SimdLevel::Portable => pick_tile(&[$(Tile { mr: $pm, nr: $pn, speed: $ps }),+], m, n),
                    SimdLevel::Avx2Fma | SimdLevel::Avx512 => pick_tile(&[$(Tile { mr: $am, nr: $an, speed: $as }),+], m, n),
                }
            }

            fn blocked_with_tile(
                simd: SimdLevel,
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
                match blocked_level(simd) {
                    SimdLevel::Portable => {
                        $(
                            if tile <= i {
                                return blocked::<$t, $pm, $pn>(simd, blocking, alpha, a, b, beta, c);
                            }
                            i += 1;
                        )+
                    }
                    SimdLevel::Avx2Fma | SimdLevel::Avx512 => {
                        $(
                            if tile <= i {
                                return blocked::<$t, $am, $an>(SimdLevel::Avx2Fma, blocking, alpha, a, b, beta, c);
                            }
                            i += 1;
                        )+
                    }
                }
                let _ = i;
            }

            fn direct_gemm(simd: SimdLevel, alpha: $t, a: MatRef<$t>, b: MatRef<$t>, beta: $t, c: MatMut<$t>) -> bool {
                $direct(simd, alpha, a, b, beta, c)
            }

            fn direct_bias_relu(
                simd: SimdLevel,
                a: MatRef<$t>,
                b: MatRef<$t>,
                bias: &[$t],
                c: MatMut<$t>,
                x: &mut [$t],
            ) -> bool {
                $dbr(simd, a, b, bias, c, x)
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
    direct: |simd, alpha, a: MatRef<f32>, b: MatRef<f32>, beta, c: MatMut<f32>| {
        let ok = direct::is_available(simd) && direct::suits(a.cols, b.cols, b.cs, c.cs);
        if ok {
            direct::gemm_direct(simd, alpha, a, b, beta, c);
        }
        ok
    },
    direct_bias_relu: direct::gemm_direct_bias_relu,
    portable: [(4, 8, 1.0)],
    avx2: [(6, 16, 1.0), (4, 16, 0.93), (8, 8, 0.85)]);
impl_cpu_float!(f64, matrixmultiply::dgemm, blocking: Blocking { mc: 96, kc: 256, nc: 512 },
    direct: |_, _, _, _, _, _| false,
    direct_bias_relu: |_, _, _, _: &[f64], _, _: &mut [f64]| false,
    portable: [(4, 4, 1.0)],
    avx2: [(6, 8, 1.0), (4, 8, 0.93), (8, 4, 0.75)]);
