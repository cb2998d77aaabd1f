//! The scratch GEMM's general kernel: BLIS-style cache blocking, packing and a register-tiled
//! micro-kernel, in portable Rust that the compiler vectorizes (once per [`SimdLevel`]).
//!
//! Where the time goes in `C += A·B` is memory traffic, not arithmetic: the naive loop loads two
//! numbers per multiply-add. A modern core can issue two 8-wide FMAs per cycle but only two or
//! three loads, so the kernel must reuse every loaded value many times from registers. The BLIS
//! design gets there in three steps:
//!
//! 1. **Register tile (micro-kernel).** Compute an `MR × NR` tile of C at once, keeping its
//!    `MR·NR` partial sums in registers for the whole k loop. Per step `p` it loads `MR` values
//!    of A and `NR` values of B and does `MR·NR` multiply-adds: at 6×16 (f32, AVX2) that is 6
//!    broadcasts and 2 vector loads for 12 vector FMAs, so the FMA units, not the loads, set the
//!    pace. Several tile shapes are compiled; each call picks the one that pads C least
//!    ([`pick_tile`]).
//! 2. **Packing.** The micro-kernel wants, for each `p`, its `MR` values of A and `NR` values of B
//!    *next to each other*. Whatever the strides of A and B (transposed or not), we copy
//!    ("pack") them once into that order: A into slivers of `MR` rows, B into slivers of `NR`
//!    columns, zero-padding the last sliver. The micro-kernel then streams through contiguous
//!    memory, and edge tiles need no special code.
//! 3. **Cache blocking.** Packing costs a pass over the data, so it must pay for itself: we pack
//!    a `KC × NC` panel of B (reused by every row block of C) and an `MC × KC` block of A (reused
//!    by every column sliver of that B panel). KC is chosen so that one B sliver (KC × NR) stays in
//!    L1 while it sweeps the A block, and MC so that the packed A block stays in L2.
//!
//! The loops, outermost first (C is split along n by NC, along k by KC, along m by MC, then into
//! NR- and MR-wide tiles):
//!
//! ```text
//! for jc in (0..n).step_by(NC)              B panel columns
//!   for pc in (0..k).step_by(KC)            k block: pack B[pc.., jc..] → B̃  (KC × NC)
//!     for ic in (0..m).step_by(MC)          ← parallel: row blocks of C are independent
//!       pack A[ic.., pc..] → Ã (MC × KC)
//!       for jr in (0..NC).step_by(NR)       one B̃ sliver, stays in L1
//!         for ir in (0..MC).step_by(MR)     one Ã sliver
//!           micro-kernel: C[ic+ir.., jc+jr..] (MR × NR) = α·Ã_ir·B̃_jr + β·C
//! ```
//!
//! Determinism: every element `C[i,j]` is the sum over k blocks, in order, of one register
//! accumulator that runs `p` in order. Nothing about that depends on which thread ran the row
//! block, on MC, or on whether the tile was at an edge (edges compute the full zero-padded tile and
//! store only the valid part), so the result is bit-identical for any thread count.
//! (It does depend on KC and on the instruction set: FMA rounds once where mul+add rounds twice.)
//!
//! ## Instruction sets
//!
//! The kernel is compiled once per [`SimdLevel`] that has its own build ([`blocked_level`]):
//! the portable one and AVX2 + FMA, each inside a `#[target_feature]` wrapper at the end of this
//! file. It has no AVX-512 build: on a core whose 512-bit FMA occupies both 256-bit FMA pipes
//! (AMD Zen 4) such a build cannot beat AVX2, and with 32 registers the auto-vectorizer did not
//! fully unroll the wider tiles (such as 8×32 or 16×16) and vectorized across rows with gathers
//! and scatters instead, far below the AVX2 build (BENCHMARKS.md). On cores with full-width
//! 512-bit FMA units, where AVX-512 doubles the peak, the [`direct`](super::direct) kernel is
//! where that pays; at the AVX-512 level this kernel runs the products the direct kernel does
//! not take.

use super::dispatch::PAR_MIN_FLOPS;
use super::{CpuFloat, MatMut, MatRef};
use crate::simd::SimdLevel;
use ncf_core::Float;
use rayon::prelude::*;
use std::cell::Cell;
use std::thread::LocalKey;

/// The level whose blocked kernel `simd` uses: AVX-512 has none of its own and runs the AVX2
/// build.
pub(super) fn blocked_level(simd: SimdLevel) -> SimdLevel {
    if simd == SimdLevel::Avx512 { SimdLevel::Avx2Fma } else { simd }
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

/// A micro-tile shape that [`gemm_scratch`](super::gemm_scratch) has compiled, see [`CpuFloat::tiles`].
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
pub(super) fn pick_tile(tiles: &[Tile], m: usize, n: usize) -> usize {
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

/// The loop nest. Preconditions (established by `dispatch.rs`'s `scratch`): validated,
/// `m, n, k > 0`, and C's rows are disjoint runs of `c.data`.
pub(super) fn blocked<T: CpuFloat, const MR: usize, const NR: usize>(
    simd: SimdLevel,
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
/// runs many times slower; see the notes on tiles in `element.rs`.) Each accumulator is an
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
    simd: SimdLevel,
    data: &[T],
    base: usize,
    w: usize,
    lane_stride: usize,
    depth_stride: usize,
    dst: &mut [[T; W]],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2Fma if SimdLevel::Avx2Fma.is_available() => {
            // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
            unsafe { pack_sliver_avx2(data, base, w, lane_stride, depth_stride, dst) }
        }
        _ => pack_sliver(data, base, w, lane_stride, depth_stride, dst),
    }
}

/// Runs `row_block` compiled for `simd`.
#[inline(always)]
fn row_block_for<T: CpuFloat, const MR: usize, const NR: usize>(
    simd: SimdLevel,
    s: &Step<T, NR>,
    r0: usize,
    a_buf: &mut [T],
    c_rows: &mut [T],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2Fma if SimdLevel::Avx2Fma.is_available() => {
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
pub(super) fn with_pack_buffer<T: Float, R>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
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
